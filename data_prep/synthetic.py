"""A SYNTHETIC prepared dataset for throughput work (never for quality claims).

Writes a folder in the ``em3rec/data/schema.py`` layout with ``meta.synthetic = True`` and protocol
``"synthetic"``. Items follow a Zipf popularity law, history lengths a configurable distribution
(clipped to ``--history-max``), modality tokens are random float16 with a random number of real
tokens per item (and a fraction of items missing each modality). Labels are Bernoulli draws with a
weak user + item signal. Rows are generated and written in chunks (bounded memory, vectorised numpy),
one Parquet file per chunk, while the previous chunk is written by a background thread.

``--token-signal S`` (S > 0; off by default) plants a label signal that only the item's *tokens*
carry, as a control of the end-to-end content path: each item gets a latent ``q ~ N(0, 1)`` that
adds ``S * q`` to the click logit, and the first modality's tokens of that item are spread along
one fixed direction ``w`` by ``exp(q / 2)`` about their mean (``x_k <- mean + e^(q/2) (x_k - mean)``
along ``w``). The pooled vector (the mean of the real tokens) is unchanged, and for Gaussian tokens
the mean is independent of the spread, so pooled content says nothing about ``q``; attention over
the tokens can read it. Items with fewer than 2 real tokens of that modality carry none.

Simplifications, stated so nobody mistakes this for real data: history items are independent Zipf
draws (not the user's earlier rows); raw ids and raw side features equal their indices (the raw
columns are written because the contract has them; the loader reads only ``*_idx`` and ``label``).

Example::

    python -m data_prep.synthetic --out data/synthetic_10m --rows 10000000 --items 1000000 \\
        --users 200000 --history-mean 50 --history-max 1000
"""

from __future__ import annotations

import argparse
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from em3rec.data.loader import jagged_take
from em3rec.data.schema import DatasetMeta, FeatureSpec, ModalitySpec, SplitSpec

logger = logging.getLogger(__name__)

HISTORY_DISTRIBUTIONS = ("lognormal", "geometric", "uniform", "fixed")
NUM_USER_GROUPS = 8
NUM_CATEGORIES = 100
NUM_TAGS = 50
MAX_TAGS = 4
ITEM_CHUNK = 32768  # items per chunk when writing the content arrays


@dataclass
class SyntheticConfig:
    """Knobs of the generator (see ``--help`` for each)."""

    out: Path
    rows: int = 1_000_000
    items: int = 100_000
    users: int = 50_000
    history_mean: float = 20.0
    history_max: int = 200
    history_dist: str = "lognormal"
    zipf: float = 1.1
    modalities: tuple[str, ...] = ("title", "meta")
    tokens: tuple[int, ...] = (8, 16)
    width: tuple[int, ...] = (64, 64)
    missing: float = 0.05
    valid_frac: float = 0.1
    test_frac: float = 0.1
    chunk_rows: int = 1_000_000
    row_group_rows: int = 131_072
    seed: int = 0
    token_signal: float = 0.0  # S: the token-level label signal (see the module docstring); 0 = none

    def __post_init__(self) -> None:
        n = len(self.modalities)
        if n == 0:
            self.tokens, self.width = (), ()
        if len(self.tokens) == 1:
            self.tokens = self.tokens * n
        if len(self.width) == 1:
            self.width = self.width * n
        if len(self.tokens) != n or len(self.width) != n:
            raise ValueError(
                f"--tokens {self.tokens} / --width {self.width}: give one value or one per modality {self.modalities}"
            )
        if self.history_dist not in HISTORY_DISTRIBUTIONS:
            raise ValueError(f"--history-dist {self.history_dist!r}: expected one of {HISTORY_DISTRIBUTIONS}")
        if min(self.rows, self.items, self.users, self.history_max, *self.tokens, *self.width) < 1:
            raise ValueError("--rows, --items, --users, --history-max, --tokens, --width must be >= 1")
        if not 0 <= self.valid_frac + self.test_frac < 1:
            raise ValueError("--valid-frac + --test-frac must be in [0, 1)")
        if self.token_signal < 0 or (self.token_signal > 0 and n == 0):
            raise ValueError("--token-signal must be >= 0, and > 0 needs at least one modality")

    def split_rows(self) -> dict[str, int]:
        valid, test = int(self.rows * self.valid_frac), int(self.rows * self.test_frac)
        return {"train": self.rows - valid - test, "valid": valid, "test": test}


def zipf_ranks(rng: np.random.Generator, n: int, size: int, exponent: float) -> np.ndarray:
    """``(size,)`` int64 ranks in ``[0, n)`` with ``P(rank = r) ~ (r + 1) ** -exponent``.

    Inverse CDF of the continuous bounded power law, floored: vectorised and O(1) per draw.
    """
    u = rng.random(size)
    if abs(exponent - 1.0) < 1e-9:
        x = np.power(float(n + 1), u)
    else:
        e = 1.0 - exponent
        x = np.power((float(n + 1) ** e - 1.0) * u + 1.0, 1.0 / e)
    return np.minimum(x.astype(np.int64), n) - 1


def history_lengths(rng: np.random.Generator, size: int, mean: float, maximum: int, dist: str) -> np.ndarray:
    """``(size,)`` int64 history lengths in ``[0, maximum]`` with (pre-clipping) mean ``mean``."""
    if dist == "fixed":
        lengths = np.full(size, round(mean))
    elif dist == "uniform":
        lengths = rng.integers(0, int(2 * mean) + 1, size)
    elif dist == "geometric":
        lengths = rng.geometric(1.0 / (mean + 1.0), size) - 1
    else:  # lognormal: heavy tail, a few very long histories
        sigma = 1.0
        lengths = np.rint(rng.lognormal(np.log(max(mean, 1e-3)) - sigma**2 / 2, sigma, size))
    return np.clip(lengths, 0, maximum).astype(np.int64)


class World:
    """Per-user and per-item attributes shared by all rows (the generator's fixed 'world')."""

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator) -> None:
        self.item_of_rank = rng.permutation(cfg.items).astype(np.int64) + 1  # popularity rank -> item index
        self.user_bias = rng.normal(0.0, 1.0, cfg.users + 1).astype(np.float32)
        self.item_bias = rng.normal(0.0, 1.0, cfg.items + 1).astype(np.float32)
        self.user_group = rng.integers(1, NUM_USER_GROUPS + 1, cfg.users + 1)
        self.item_category = rng.integers(1, NUM_CATEGORIES + 1, cfg.items + 1)
        tag_counts = rng.integers(0, MAX_TAGS + 1, cfg.items + 1)
        self.tag_offsets = np.concatenate([[0], np.cumsum(tag_counts)])
        self.tag_values = rng.integers(1, NUM_TAGS + 1, int(self.tag_offsets[-1]))
        # The token-level signal draws from a generator of its own: without it, every other array
        # is the same as it always was for a seed.
        signal_rng = np.random.default_rng([cfg.seed, 1])
        self.token_latent = np.zeros(cfg.items + 1, np.float32)  # q per item
        self.signal_direction = np.zeros(cfg.width[0] if cfg.width else 0, np.float32)  # w, unit
        if cfg.token_signal > 0:
            self.token_latent = signal_rng.standard_normal(cfg.items + 1).astype(np.float32)
            w = signal_rng.standard_normal(cfg.width[0]).astype(np.float32)
            self.signal_direction = w / np.linalg.norm(w)


def world_of(cfg: SyntheticConfig) -> World:
    """The world ``generate(cfg)`` drew: it is the first draw from the seed's generator."""
    return World(cfg, np.random.default_rng(cfg.seed))


def logit_terms(cfg: SyntheticConfig, world: World, users: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
    """The click logit of rows ``(users, items)`` term by term (``user``, ``item``, ``q``); the
    logit is ``-0.3`` plus their sum."""
    return {
        "user": 0.5 * world.user_bias[users],
        "item": 0.5 * world.item_bias[items],
        "q": cfg.token_signal * world.token_latent[items],
    }


def _chunk_table(cfg: SyntheticConfig, world: World, rng: np.random.Generator, first_row: int, n: int) -> pa.Table:
    users = rng.integers(1, cfg.users + 1, n)
    items = world.item_of_rank[zipf_ranks(rng, cfg.items, n, cfg.zipf)]
    lengths = history_lengths(rng, n, cfg.history_mean, cfg.history_max, cfg.history_dist)
    hist_offsets = np.concatenate([[0], np.cumsum(lengths)])
    hist_values = world.item_of_rank[zipf_ranks(rng, cfg.items, int(hist_offsets[-1]), cfg.zipf)]
    tag_offsets, tag_values = jagged_take(world.tag_offsets, world.tag_values, items)
    terms = logit_terms(cfg, world, users, items)
    logit = -0.3 + terms["user"] + terms["item"] + terms["q"]
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)

    def lists(offsets: np.ndarray, values: np.ndarray) -> pa.ListArray:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, pa.int64()))

    tags = lists(tag_offsets, tag_values)
    history = lists(hist_offsets, hist_values)
    groups, categories = world.user_group[users], world.item_category[items]
    return pa.table(
        {
            "label": pa.array(labels),
            "user_id": pa.array(users),
            "item_id": pa.array(items),
            "timestamp": pa.array(np.arange(first_row, first_row + n, dtype=np.int64) + 1_600_000_000),
            "hist_item_ids": history,
            "user_group": pa.array(groups),
            "item_category": pa.array(categories),
            "item_tags": tags,
            "user_id_idx": pa.array(users),
            "item_id_idx": pa.array(items),
            "hist_item_ids_idx": history,
            "user_group_idx": pa.array(groups),
            "item_category_idx": pa.array(categories),
            "item_tags_idx": tags,
        }
    )


def _features(cfg: SyntheticConfig) -> tuple[FeatureSpec, ...]:
    items = cfg.items + 1
    return (
        FeatureSpec("user_id", "user_id_idx", "user", cfg.users + 1, "user_id"),
        FeatureSpec("item_id", "item_id_idx", "item", items, "item"),
        FeatureSpec("hist_item_ids", "hist_item_ids_idx", "history", items, "item", max_length=cfg.history_max),
        FeatureSpec("user_group", "user_group_idx", "single", NUM_USER_GROUPS + 1, "user_group"),
        FeatureSpec("item_category", "item_category_idx", "single", NUM_CATEGORIES + 1, "item_category"),
        FeatureSpec("item_tags", "item_tags_idx", "multi", NUM_TAGS + 1, "item_tags", max_length=MAX_TAGS),
    )


def _write_splits(cfg: SyntheticConfig, world: World, rng: np.random.Generator) -> dict[str, SplitSpec]:
    chunk = max(1, min(cfg.chunk_rows, int(50_000_000 / max(cfg.history_mean, 1.0))))  # ~50M history ids per chunk
    splits: dict[str, SplitSpec] = {}
    first_row = 0
    pending: Future | None = None
    with ThreadPoolExecutor(1) as writer, tqdm(total=cfg.rows, unit="row", desc="impressions") as bar:
        for split, rows in cfg.split_rows().items():
            folder = cfg.out / split
            folder.mkdir(parents=True, exist_ok=True)
            positives = 0.0
            for part, start in enumerate(range(0, max(rows, 1), chunk)):
                n = min(chunk, rows - start)
                table = _chunk_table(cfg, world, rng, first_row, n)
                positives += float(np.sum(table.column("label").to_numpy()))
                if pending is not None:
                    pending.result()  # at most one chunk waits to be written: bounded memory
                path = folder / f"part-{part:05d}.parquet"
                pending = writer.submit(
                    pq.write_table, table, path, row_group_size=cfg.row_group_rows, use_dictionary=False
                )
                first_row += n
                bar.update(n)
            splits[split] = SplitSpec(rows=rows, positive_rate=positives / max(rows, 1))
        if pending is not None:
            pending.result()
    return splits


def plant_spread(values: np.ndarray, mask: np.ndarray, latent: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Scale each item's real tokens about their mean along ``direction`` by ``exp(latent / 2)``.

    ``values`` (n, T, W) with padded tokens zero, ``mask`` (n, T) bool, ``latent`` (n,),
    ``direction`` (W,) unit. Returns new (n, T, W) values with the same masked mean per item.
    """
    counts = np.maximum(mask.sum(axis=1), 1)[:, None]  # (n, 1)
    along = values @ direction  # (n, T)
    mean = along.sum(axis=1, keepdims=True) / counts  # (n, 1)
    shift = (np.exp(latent / 2)[:, None] - 1.0) * (along - mean) * mask  # (n, T): deviation change
    return values + shift[:, :, None] * direction[None, None, :]


def _write_items(cfg: SyntheticConfig, world: World, rng: np.random.Generator) -> None:
    """``items/<m>.{tokens,mask,pooled}.npy`` (row 0 = reserved item, all masked) and ``items.parquet``."""
    folder = cfg.out / "items"
    folder.mkdir(parents=True, exist_ok=True)
    rows = cfg.items + 1
    for m, (name, tokens, width) in enumerate(zip(cfg.modalities, cfg.tokens, cfg.width)):
        arrays = {
            "tokens": np.lib.format.open_memmap(folder / f"{name}.tokens.npy", "w+", np.float16, (rows, tokens, width)),
            "mask": np.lib.format.open_memmap(folder / f"{name}.mask.npy", "w+", np.bool_, (rows, tokens)),
            "pooled": np.lib.format.open_memmap(folder / f"{name}.pooled.npy", "w+", np.float16, (rows, width)),
        }
        for start in tqdm(range(0, rows, ITEM_CHUNK), desc=f"items/{name}", unit="chunk"):
            n = min(ITEM_CHUNK, rows - start)
            counts = rng.integers(1, tokens + 1, n)
            counts[rng.random(n) < cfg.missing] = 0
            if start == 0:
                counts[0] = 0  # the reserved index has no content
            mask = np.arange(tokens)[None, :] < counts[:, None]  # (n, T)
            values = rng.standard_normal((n, tokens, width), dtype=np.float32) * mask[:, :, None]  # (n, T, W)
            if m == 0 and cfg.token_signal > 0:
                latent = world.token_latent[start : start + n]
                values = plant_spread(values, mask, latent, world.signal_direction)
            pooled = values.sum(axis=1) / np.maximum(counts, 1)[:, None]  # (n, W)
            arrays["tokens"][start : start + n] = values.astype(np.float16)
            arrays["mask"][start : start + n] = mask
            arrays["pooled"][start : start + n] = pooled.astype(np.float16)
        for array in arrays.values():
            array.flush()
    index = np.arange(rows, dtype=np.int64)
    raw = pa.array(index, mask=index == 0)  # the reserved row 0 has no raw id
    pq.write_table(pa.table({"item_idx": index, "item_id": raw}), folder / "items.parquet")


def generate(cfg: SyntheticConfig) -> DatasetMeta:
    """Write the synthetic dataset to ``cfg.out`` and return its meta."""
    started = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    world = World(cfg, rng)  # first: world_of(cfg) rebuilds it
    splits = _write_splits(cfg, world, rng)
    _write_items(cfg, world, rng)
    meta = DatasetMeta(
        name=cfg.out.name,
        protocol="synthetic",
        num_items=cfg.items + 1,  # like every vocabulary size, counts the reserved index 0
        num_users=cfg.users + 1,
        features=_features(cfg),
        modalities=tuple(
            ModalitySpec(name, tokens, width, encoder="random-normal-float16")
            for name, tokens, width in zip(cfg.modalities, cfg.tokens, cfg.width)
        ),
        splits=splits,
        synthetic=True,
        extra={
            "generator": "data_prep.synthetic",
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
            "note": "SYNTHETIC: random ids, tokens and labels; for throughput measurements"
            + (f" and the token-signal control (S = {cfg.token_signal})" if cfg.token_signal > 0 else " only"),
        },
    )
    meta.save(cfg.out)
    logger.info("wrote %s (%d rows) in %.1fs", cfg.out, cfg.rows, time.perf_counter() - started)
    return meta


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--rows", type=int, default=1_000_000, help="impressions over all splits")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--history-mean", type=float, default=20.0, help="mean history length before clipping")
    p.add_argument("--history-max", type=int, default=200, help="longest history (meta max_length)")
    p.add_argument("--history-dist", choices=HISTORY_DISTRIBUTIONS, default="lognormal")
    p.add_argument("--zipf", type=float, default=1.1, help="item popularity exponent")
    p.add_argument("--modalities", default="title,meta", help="comma-separated modality names")
    p.add_argument("--tokens", type=_ints, default=(8, 16), help="tokens per item: one value or one per modality")
    p.add_argument("--width", type=_ints, default=(64,), help="token width: one value or one per modality")
    p.add_argument("--missing", type=float, default=0.05, help="fraction of items missing each modality")
    p.add_argument("--valid-frac", type=float, default=0.1)
    p.add_argument("--test-frac", type=float, default=0.1)
    p.add_argument("--chunk-rows", type=int, default=1_000_000, help="rows generated and written per file")
    p.add_argument("--row-group-rows", type=int, default=131_072)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--token-signal",
        type=float,
        default=0.0,
        help="S > 0: a click-logit term S * q per item that only the first modality's token spread carries",
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = SyntheticConfig(
        out=a.out,
        rows=a.rows,
        items=a.items,
        users=a.users,
        history_mean=a.history_mean,
        history_max=a.history_max,
        history_dist=a.history_dist,
        zipf=a.zipf,
        modalities=tuple(m for m in a.modalities.split(",") if m),
        tokens=a.tokens,
        width=a.width,
        missing=a.missing,
        valid_frac=a.valid_frac,
        test_frac=a.test_frac,
        chunk_rows=a.chunk_rows,
        row_group_rows=a.row_group_rows,
        seed=a.seed,
        token_signal=a.token_signal,
    )
    generate(cfg)


if __name__ == "__main__":
    main()
