"""The loader against a naive per-row reading of the same Parquet files."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from em3rec.config import DataConfig
from em3rec.data.batch import Batch
from em3rec.data.item_store import ItemStore
from em3rec.data.loader import ImpressionLoader, Rows, jagged_tail, jagged_take, prefetch, shard_bounds
from em3rec.data.schema import DatasetMeta
from tests.data.conftest import batch_rows, expected_row, reference_rows

L = 10  # < the dataset's 30: truncation to the most recent items is exercised


def _loader(path: Path, split: str, **kwargs: object) -> ImpressionLoader:
    kwargs.setdefault("batch_size", 128)
    kwargs.setdefault("max_history", L)
    return ImpressionLoader(path, split, **kwargs)


def test_jagged_helpers_match_python() -> None:
    rng = np.random.default_rng(0)
    lists = [list(rng.integers(0, 9, rng.integers(0, 6))) for _ in range(50)]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    values = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists])
    rows = rng.integers(0, 50, 30)
    o, v = jagged_take(offsets, values, rows)
    assert [list(v[o[i] : o[i + 1]]) for i in range(30)] == [lists[r] for r in rows]
    o, v = jagged_tail(offsets, values, 3)
    assert [list(v[o[i] : o[i + 1]]) for i in range(50)] == [x[-3:] for x in lists]


def test_batches_match_reference_rows(tiny_dataset: Path) -> None:
    """Eval order: every field of every row against a naive per-row reading."""
    meta = DatasetMeta.load(tiny_dataset)
    store = ItemStore(tiny_dataset)
    loader = _loader(tiny_dataset, "valid", modalities=["title", "meta"], prefetch=0)
    reference = reference_rows(tiny_dataset, "valid")
    hist_col = meta.features_of("history")[0].column
    seen = 0
    for batch in loader:
        assert batch.batch_size == 128 and batch.history_mask.shape == (128, L)
        rows = batch_rows(batch, meta)
        ref = reference[seen : seen + len(rows)]
        assert rows == [expected_row(r, meta, L) for r in ref]
        real = batch.weights == 1
        assert batch.user_ids[real].tolist() == [r["user_id_idx"] for r in ref]
        assert batch.item_ids[real].tolist() == [r["item_id_idx"] for r in ref]
        lengths = [min(len(r[hist_col]), L) for r in ref]
        expected_mask = [[j < n for j in range(L)] for n in lengths]
        assert batch.history_mask[real].tolist() == expected_mask
        # content dedup round trip
        ids = batch.content_item_ids
        assert torch.equal(ids, torch.unique(ids)), "distinct and sorted"
        assert torch.equal(ids[batch.target_content_index], batch.item_ids)
        hist_values = batch.sequence_features.to_dict()["hist_item_ids"].values()
        assert torch.equal(ids[batch.history_content_index][batch.history_mask], hist_values)
        assert (batch.history_content_index[~batch.history_mask] == 0).all()
        assert set(ids.tolist()) == set(batch.item_ids.tolist()) | set(hist_values.tolist())
        for m in ("title", "meta"):
            assert batch.content_tokens[m].dtype == torch.float16
            np.testing.assert_array_equal(batch.content_tokens[m].numpy(), store.array(m, "tokens")[ids.numpy()])
            np.testing.assert_array_equal(batch.content_token_mask[m].numpy(), store.array(m, "mask")[ids.numpy()])
        seen += len(rows)
    assert seen == len(reference) == 300


def test_padding_rows(tiny_dataset: Path) -> None:
    batches = list(_loader(tiny_dataset, "valid"))  # 300 rows = 2 x 128 + 44
    last = batches[-1]
    assert len(batches) == 3 and last.weights.sum() == 44
    pad = last.weights == 0
    assert (last.labels[pad] == 0).all() and (last.item_ids[pad] == 0).all() and (last.user_ids[pad] == 0).all()
    assert not last.history_mask[pad].any()
    lengths = last.sparse_features.to_dict()["user_group"].lengths()
    assert (lengths == 1).all(), "single-valued features keep one (reserved) value per padding row"
    assert (last.sequence_features.to_dict()["hist_item_ids"].lengths()[pad] == 0).all()


def test_pooled_content(tiny_dataset: Path) -> None:
    store = ItemStore(tiny_dataset)
    batch = next(iter(_loader(tiny_dataset, "valid", modalities=["title"], pooled_content=True)))
    ids = batch.content_item_ids.numpy()
    assert batch.content_tokens["title"].shape == (len(ids), 1, 8)
    assert batch.content_token_mask["title"].shape == (len(ids), 1)
    np.testing.assert_array_equal(batch.content_tokens["title"][:, 0].numpy(), store.array("title", "pooled")[ids])
    np.testing.assert_array_equal(
        batch.content_token_mask["title"][:, 0].numpy(), store.array("title", "mask")[ids].any(1)
    )


def test_pooled_vectors_beside_the_tokens(tiny_dataset: Path) -> None:
    store = ItemStore(tiny_dataset)
    batch = next(iter(_loader(tiny_dataset, "valid", modalities=["title"], pooled_vectors=True)))
    ids = batch.content_item_ids.numpy()
    assert batch.content_tokens["title"].shape[:2] == store.array("title", "tokens")[ids].shape[:2]  # tokens too
    np.testing.assert_array_equal(batch.content_pooled["title"].numpy(), store.array("title", "pooled")[ids])
    tokens, mask = batch.content_tokens["title"].float(), batch.content_token_mask["title"]
    mean = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)  # (U, W)
    torch.testing.assert_close(batch.content_pooled["title"].float(), mean, rtol=1e-2, atol=1e-2)
    assert not next(iter(_loader(tiny_dataset, "valid", modalities=["title"]))).content_pooled  # off by default


@pytest.mark.parametrize("batch_size, read_rows", [(64, 8192), (128, 37), (1000, 8192)])
def test_equal_batch_counts_and_exact_eval_coverage(tiny_dataset: Path, batch_size: int, read_rows: int) -> None:
    meta = DatasetMeta.load(tiny_dataset)
    reference = reference_rows(tiny_dataset, "valid")
    loaders = [
        _loader(tiny_dataset, "valid", batch_size=batch_size, rank=r, world_size=2, read_rows=read_rows) for r in (0, 1)
    ]
    outputs = [list(loader) for loader in loaders]
    assert len(outputs[0]) == len(outputs[1]) == loaders[0].num_batches == loaders[1].num_batches
    assert all(b.batch_size == batch_size for out in outputs for b in out)
    got = [row for out in outputs for b in out for row in batch_rows(b, meta)]
    assert got == [expected_row(r, meta, L) for r in reference], "each row exactly once, in order"


def test_eval_all_padding_batch(tiny_dataset: Path) -> None:
    """300 rows on 7 ranks: shards of 42 or 43 rows; with B = 42 every rank runs 2 batches, and the
    rank with 42 rows makes its second batch entirely of weight-0 rows."""
    assert [hi - lo for lo, hi in shard_bounds(300, 7, training=False)] == [42] + [43] * 6
    outs = [list(_loader(tiny_dataset, "valid", batch_size=42, rank=r, world_size=7)) for r in range(7)]
    assert [len(o) for o in outs] == [2] * 7
    assert [float(o[1].weights.sum()) for o in outs] == [0.0] + [1.0] * 6
    assert outs[0][1].batch_size == 42 and not outs[0][1].history_mask.any()


def test_train_equal_counts_drop_remainder(tiny_dataset: Path) -> None:
    meta = DatasetMeta.load(tiny_dataset)
    reference = reference_rows(tiny_dataset, "train")  # 2401 rows
    loaders = [_loader(tiny_dataset, "train", batch_size=64, rank=r, world_size=2) for r in (0, 1)]
    assert loaders[0].num_batches == loaders[1].num_batches == 1200 // 64
    assert loaders[0].dropped_rows == 2401 - 2 * 18 * 64
    for rank, loader in enumerate(loaders):
        batches = list(loader)
        assert len(batches) == 18 and all(b.batch_size == 64 and bool((b.weights == 1).all()) for b in batches)
        got = Counter(row for b in batches for row in batch_rows(b, meta))
        shard = Counter(expected_row(r, meta, L) for r in reference[rank * 1200 : (rank + 1) * 1200])
        assert got <= shard, "a rank reads only its contiguous shard"
        assert sum(got.values()) == 18 * 64


def test_shuffle_determinism(tiny_dataset: Path) -> None:
    def order(seed: int, epoch: int, **kw: object) -> list[int]:
        loader = _loader(tiny_dataset, "train", batch_size=100, seed=seed, shuffle_buffer=600, **kw)
        loader.set_epoch(epoch)
        return torch.cat([b.item_ids for b in loader]).tolist()

    first = order(0, 0)
    assert first == order(0, 0) == order(0, 0, prefetch=0)
    assert first != order(0, 1) and first != order(1, 0)
    unshuffled = order(0, 0, shuffle=False)
    assert first != unshuffled and len(first) == len(unshuffled) == 2400


@pytest.mark.parametrize("read_rows", [37, 8192])
def test_shuffle_covers_rows_without_drop(tiny_dataset: Path, read_rows: int) -> None:
    meta = DatasetMeta.load(tiny_dataset)
    loader = _loader(tiny_dataset, "train", batch_size=49, shuffle_buffer=300, read_rows=read_rows)  # 2401 = 49 * 49
    assert loader.dropped_rows == 0
    got = Counter(row for b in loader for row in batch_rows(b, meta))
    assert got == Counter(expected_row(r, meta, L) for r in reference_rows(tiny_dataset, "train"))


@pytest.mark.parametrize("split", ["train", "valid"])
def test_resume_mid_epoch(tiny_dataset: Path, split: str) -> None:
    loader = _loader(tiny_dataset, split, batch_size=64, rank=1, world_size=2, seed=3)
    loader.set_epoch(2)
    full = [b.item_ids.tolist() for b in loader]
    loader.set_epoch(2, start_batch=len(full) - 2)
    assert [b.item_ids.tolist() for b in loader] == full[-2:]
    with pytest.raises(ValueError, match="start_batch 99 is outside"):
        loader.set_epoch(0, start_batch=99)


def test_max_batches_from_config_and_dataloader(tiny_dataset: Path) -> None:
    config = DataConfig(path=str(tiny_dataset), batch_size=32, eval_batch_size=64, max_history=5, modalities=["meta"])
    train = ImpressionLoader.from_config(config, "train", rank=1, world_size=2, max_batches=3)
    assert len(train) == 3 and train.batch_size == 32 and train.max_history == 5
    batches = list(DataLoader(train, batch_size=None))
    assert len(batches) == 3 and isinstance(batches[0], Batch)
    assert set(batches[0].content_tokens) == {"meta"} and batches[0].history_mask.shape == (32, 5)
    valid = ImpressionLoader.from_config(config, "valid", modalities=())
    assert valid.batch_size == 64 and not valid.training and len(valid) == 5
    assert next(iter(valid)).content_tokens == {}
    shared = dataclasses.replace(config, batch_scope="global")  # 32 rows per step over both ranks
    assert ImpressionLoader.from_config(shared, "train", rank=1, world_size=2).batch_size == 16
    assert ImpressionLoader.from_config(shared, "valid", rank=1, world_size=2).batch_size == 64  # eval: per rank


def test_kjt_keys_follow_meta(tiny_dataset: Path) -> None:
    batch = next(iter(_loader(tiny_dataset, "valid")))
    assert batch.sparse_features.keys() == ["user_id", "user_group", "item_category", "item_tags"]
    assert batch.sequence_features.keys() == ["item_id", "hist_item_ids"]
    assert batch.sparse_features.values().dtype == torch.int64
    assert batch.sequence_features.lengths().dtype == torch.int32


def test_batch_to_and_pin_memory(tiny_dataset: Path) -> None:
    batch = next(iter(_loader(tiny_dataset, "valid", modalities=["title"])))
    moved = batch.to(torch.device("cpu"))
    for name in ("labels", "weights", "history_mask", "content_item_ids", "history_content_index"):
        assert getattr(moved, name).shape == getattr(batch, name).shape
    assert moved.content_tokens["title"].shape == batch.content_tokens["title"].shape
    assert torch.equal(moved.sparse_features.values(), batch.sparse_features.values())
    if not torch.cuda.is_available():
        pytest.skip("pin_memory / record_stream need CUDA")
    pinned = batch.pin_memory()
    assert pinned.labels.is_pinned() and pinned.content_tokens["title"].is_pinned()
    on_gpu = pinned.to(torch.device("cuda"), non_blocking=True)
    on_gpu.record_stream(torch.cuda.current_stream())
    assert on_gpu.history_mask.shape == batch.history_mask.shape and on_gpu.labels.is_cuda


def test_pin_memory_pins_every_batch_where_it_is_built(tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = list(_loader(tiny_dataset, "valid", modalities=["title"]))
    if torch.cuda.is_available():
        pinned = list(_loader(tiny_dataset, "valid", modalities=["title"], pin_memory=True))
        assert all(b.labels.is_pinned() and b.content_tokens["title"].is_pinned() for b in pinned)
    else:  # pinning needs an accelerator: count the calls (in the prefetch thread) instead
        monkeypatch.setattr(Batch, "pin_memory", lambda self: dataclasses.replace(self, weights=self.weights + 1.0))
        pinned = list(_loader(tiny_dataset, "valid", modalities=["title"], pin_memory=True))
        assert [torch.equal(b.weights, p.weights - 1.0) for b, p in zip(plain, pinned)] == [True] * len(plain)
    assert len(pinned) == len(plain) and all(torch.equal(b.labels, p.labels) for b, p in zip(plain, pinned))


def test_max_history_above_dataset_is_an_error(tiny_dataset: Path) -> None:
    with pytest.raises(ValueError, match="data.max_history = 31"):
        _loader(tiny_dataset, "train", max_history=31)


def test_training_batch_larger_than_shard_is_an_error(tiny_dataset: Path) -> None:
    with pytest.raises(ValueError, match="no full batch of data.batch_size = 2000"):
        _loader(tiny_dataset, "train", batch_size=2000, world_size=2)


def test_rows_concat_slice_roundtrip() -> None:
    rows = Rows({"label": np.arange(5.0)}, {"h": (np.array([0, 1, 3, 3, 4, 6]), np.arange(6))})
    parts = [rows.slice(0, 2), rows.slice(2, 5)]
    joined = Rows.concat(parts)
    assert joined.scalars["label"].tolist() == rows.scalars["label"].tolist()
    assert joined.lists["h"][0].tolist() == rows.lists["h"][0].tolist()
    assert joined.lists["h"][1].tolist() == rows.lists["h"][1].tolist()


def test_catalogue_sample_for_cic(tiny_dataset: Path) -> None:
    from em3rec.data.batch import CATALOGUE_FEATURE

    meta = DatasetMeta.load(tiny_dataset)
    loader = _loader(tiny_dataset, "train", batch_size=64, seed=3, modalities=["meta"], catalogue_samples=9)
    loader.set_epoch(1)
    batches = list(loader)
    sampled = []
    for batch in batches:
        sequence = batch.sequence_features.to_dict()
        assert batch.sequence_features.keys()[-1] == CATALOGUE_FEATURE
        lengths = sequence[CATALOGUE_FEATURE].lengths()
        assert lengths[0] == 9 and lengths[1:].sum() == 0  # all K ids in the first row
        ids = sequence[CATALOGUE_FEATURE].values()
        assert ((ids >= 1) & (ids < meta.features_of("item")[0].vocab_size)).all()
        # the content side indexes the same items, with their tokens among the batch's distinct items
        assert torch.equal(batch.content_item_ids[batch.catalogue_content_index], ids)
        assert torch.equal(batch.content_item_ids[batch.target_content_index], batch.item_ids)
        sampled.append(ids.tolist())
    assert len({tuple(s) for s in sampled}) == len(sampled)  # a new draw per batch
    loader.set_epoch(1, start_batch=len(batches) - 1)  # a resumed epoch draws the same items
    assert next(iter(loader)).sequence_features.to_dict()[CATALOGUE_FEATURE].values().tolist() == sampled[-1]
    evaluation = next(iter(_loader(tiny_dataset, "valid", catalogue_samples=0)))
    assert evaluation.sequence_features.keys()[-1] == CATALOGUE_FEATURE
    assert evaluation.catalogue_content_index.numel() == 0
    plain = next(iter(_loader(tiny_dataset, "valid")))
    assert plain.sequence_features.keys() == ["item_id", "hist_item_ids"]


def test_tokens_of_targets_and_catalogue_only(tiny_dataset: Path) -> None:
    # A model that reads no history tokens (EM3 with seq_content_mode = pooled) gets tokens of the
    # targets and the catalogue sample only, first among the distinct items; every item keeps its
    # pooled vector, and every index still points at the right item.
    store = ItemStore(tiny_dataset)
    options = dict(batch_size=64, seed=3, modalities=["title"], catalogue_samples=5, pooled_vectors=True)
    full = next(iter(_loader(tiny_dataset, "train", **options)))
    lean = next(iter(_loader(tiny_dataset, "train", history_tokens=False, **options)))
    ids = lean.content_item_ids
    assert sorted(ids.tolist()) == full.content_item_ids.tolist()  # the same items, reordered
    assert torch.equal(ids[lean.target_content_index], full.item_ids)
    assert torch.equal(ids[lean.catalogue_content_index], full.content_item_ids[full.catalogue_content_index])
    history = lean.history_content_index[lean.history_mask]
    assert torch.equal(ids[history], full.content_item_ids[full.history_content_index[full.history_mask]])
    first = torch.cat([lean.target_content_index, lean.catalogue_content_index]).unique()
    U_t = lean.content_tokens["title"].shape[0]
    assert torch.equal(first, torch.arange(U_t)) and U_t < len(ids)  # exactly those, first
    np.testing.assert_array_equal(lean.content_tokens["title"].numpy(), store.array("title", "tokens")[ids[:U_t]])
    np.testing.assert_array_equal(lean.content_pooled["title"].numpy(), store.array("title", "pooled")[ids])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_tokens_arrive_in_the_dtype_the_tower_computes_in(tiny_dataset: Path, dtype: torch.dtype) -> None:
    plain = next(iter(_loader(tiny_dataset, "valid", modalities=["title"])))
    cast = next(iter(_loader(tiny_dataset, "valid", modalities=["title"], token_dtype=dtype)))
    assert plain.content_tokens["title"].dtype == torch.float16
    assert cast.content_tokens["title"].dtype == dtype
    torch.testing.assert_close(cast.content_tokens["title"], plain.content_tokens["title"].to(dtype), rtol=0, atol=0)


def test_prefetch_thread_runs_its_torch_ops_serially():
    # One OpenMP team per process: the prefetch thread's torch ops run on one thread, and the
    # consumer keeps its intra-op thread count, also when prefetch is its first torch call (a
    # thread takes torch's process-wide count at its first parallel op).
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen, consumer = [], []

    def make():
        seen.append(torch.get_num_threads())
        yield from range(3)

    def consume():  # a fresh thread: no torch op before the prefetch
        consumer.append(list(prefetch(make, depth=2)))
        consumer.append(torch.get_num_threads())

    try:
        thread = threading.Thread(target=consume)
        thread.start()
        thread.join()
        assert consumer == [[0, 1, 2], 2] and seen == [1]
    finally:
        torch.set_num_threads(before)
