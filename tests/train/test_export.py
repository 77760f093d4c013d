"""Exported item embeddings are the model's own target-branch content embeddings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from em3rec.data.item_store import ItemStore
from em3rec.data.loader import ImpressionLoader
from em3rec.export import item_embeddings, write_embeddings
from em3rec.factory import batch_options, local_model
from em3rec.modules.model import uses_pooled_vectors
from em3rec.train import Recipe


@pytest.mark.parametrize("pooled_content", [True, False], ids=["pooled-content", "tokens"])
def test_export_matches_forward_item_content(recipe: Recipe, tmp_path: Path, pooled_content: bool) -> None:
    model = local_model(recipe.model)
    data = dataclasses.replace(recipe.config.data, pooled_content=pooled_content)
    store = ItemStore(data.path, data.modalities, recipe.meta)
    pooled_vectors = uses_pooled_vectors(recipe.config.model)
    assert pooled_vectors  # EM3 with the pooled base: the export must read what training reads
    embeddings = item_embeddings(
        model, store, pooled=pooled_content, device=torch.device("cpu"), chunk=64, pooled_vectors=pooled_vectors
    )
    assert embeddings.shape == (store.num_rows, recipe.config.model.embedding_dim)

    # The store's float16 tokens as they are (the recipe's loader casts them to its precision's dtype),
    # so that the forward and the export both compute in fp32 and agree to float32 rounding.
    loader = ImpressionLoader.from_config(data, "valid", **batch_options(recipe.config.model, "valid"))
    batch = next(iter(loader))
    assert batch.content_tokens[recipe.config.data.modalities[0]].dtype == torch.float16
    model.eval()
    with torch.no_grad():
        out = model(batch)
    np.testing.assert_allclose(embeddings[out.item_ids.numpy()], out.item_content.numpy(), rtol=1e-4, atol=1e-5)

    write_embeddings(tmp_path / "items.parquet", embeddings, None)
    table = pq.read_table(tmp_path / "items.parquet")
    assert table.column_names == ["item_idx", "content_embedding"]
    np.testing.assert_array_equal(np.stack(table["content_embedding"].to_numpy(zero_copy_only=False)), embeddings)
