"""A tiny prepared set whose ``title`` features are real all-MiniLM-L6-v2 outputs of real texts.

The interactions are synthetic (``data_prep.synthetic``); the item texts are three words each from a
small vocabulary, encoded by the real frozen encoder as data preparation encodes them, so that code
which re-runs the encoder (fine-tuning, the trainable top layers) can be checked against the stored
features. For tests only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.synthetic import SyntheticConfig, generate
from data_prep.text_encoder import TextEncoder
from data_prep.writer import masked_mean

WORDS = ["space", "love", "war", "comedy", "horror", "drama", "music", "crime", "family", "history"]
TEXTLESS_ITEM = 7  # an item without text: an all-False mask, zero features


def write_text_set(out: Path, cache: Path, items: int = 60, tokens: int = 8) -> Path:
    """Write the set to ``out`` (the encoder's per-text cache in ``cache``) and return ``out``."""
    generate(
        SyntheticConfig(
            out=out, rows=4000, items=items, users=40, modalities=("title",), tokens=(tokens,), width=(384,), seed=5
        )
    )
    rng = np.random.default_rng(0)
    texts = [None] + [" ".join(rng.choice(WORDS, size=3)) for _ in range(items)]
    texts[TEXTLESS_ITEM] = None
    folder = out / "items"
    table = pq.read_table(folder / "items.parquet")
    pq.write_table(table.append_column("title_text", pa.array(texts, pa.string())), folder / "items.parquet")
    features, mask = TextEncoder(max_tokens=tokens, cache_dir=cache, progress=False).encode(texts)
    np.save(folder / "title.tokens.npy", features)
    np.save(folder / "title.mask.npy", mask)
    np.save(folder / "title.pooled.npy", masked_mean(features, mask))
    return out
