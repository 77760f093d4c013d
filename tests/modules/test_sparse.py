import torch
from torchrec.modules.embedding_configs import PoolingType

from em3rec.modules.sparse import ITEM_TABLE, IdArch, build_embedding_collections


def test_collections_share_the_item_table(meta):
    ebc, ec = build_embedding_collections(meta, 8)
    (item_config,) = ec.embedding_configs()
    assert item_config.name == ITEM_TABLE
    assert item_config.feature_names == ["item_id", "hist_item_ids"]
    assert {c.name for c in ebc.embedding_bag_configs()} == {"user_id", "gender", "genres"}
    assert all(c.pooling == PoolingType.MEAN for c in ebc.embedding_bag_configs())


def test_meta_device_builds_no_storage(meta):
    ebc, ec = build_embedding_collections(meta, 8, device=torch.device("meta"))
    assert all(p.is_meta for p in [*ebc.parameters(), *ec.parameters()])


def test_lookups_give_target_and_padded_history(meta, batch):
    ebc, ec = build_embedding_collections(meta, 8)
    arch = IdArch(ebc, ec, "item_id", "hist_item_ids")
    B, L = batch.history_mask.shape
    ids = arch(batch.sparse_features, batch.sequence_features, L)
    table = ec.embeddings[ITEM_TABLE].weight
    assert ids.pooled.shape == (B, 3, 8)
    torch.testing.assert_close(ids.target, table[batch.item_ids])
    history_items = batch.content_item_ids[batch.history_content_index]  # (B, L)
    expected = torch.where(batch.history_mask[..., None], table[history_items], torch.zeros(()))
    torch.testing.assert_close(ids.history, expected)
    # genres (multi-valued) are MEAN-pooled; an empty bag gives zeros
    genres = batch.sparse_features["genres"]
    weight = ebc.embedding_bags["genres"].weight
    for b, values in enumerate(genres.to_dense()):
        want = weight[values].mean(0) if len(values) else torch.zeros(8)
        torch.testing.assert_close(ids.pooled[b, arch.pooled_feature_names.index("genres")], want)
