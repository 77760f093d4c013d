"""Derive an item-cold-start variant of a prepared dataset: hold some test items out of train.

    python -m data_prep.cold_holdout --src data/ml100k --out data/ml100k_cold20 --fraction 0.2 --seed 0

Picks ``fraction`` of the distinct items that occur in test (uniformly, seeded), removes every
train row whose target is one of them and removes them from every train row's history, so their
ID embeddings are never trained: all of their valid and test rows are item-cold rows. Valid,
test, the item arrays and the vocabularies are copied unchanged (valid/test histories come from
all earlier rows, as for the cold items of ml100k-ctr-v1), so a model's cold-item AUC is
measured on many more rows than ml100k-ctr-v1's 149. A diagnostic for the cold-start claim, not a
replacement of the protocol: its train split is smaller and its test items differ in kind.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from em3rec.data.schema import DatasetError, DatasetMeta

log = logging.getLogger(__name__)


def _drop_from_lists(lists: pa.ChunkedArray, drop: np.ndarray) -> tuple[pa.Array, int]:
    """``lists`` without the values in ``drop``; also how many values were removed."""
    array = lists.combine_chunks()
    values = array.flatten().to_numpy(zero_copy_only=False)
    keep = ~np.isin(values, drop)  # (V,)
    rows = pc.list_parent_indices(array).to_numpy()  # (V,) the row of every value
    lengths = np.bincount(rows[keep], minlength=len(array))  # (N,)
    offsets = np.zeros(len(array) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    out = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[keep], type=array.type.value_type))
    return out, int((~keep).sum())


def hold_out_items(src: str | Path, out: str | Path, fraction: float, seed: int = 0) -> dict:
    """Write the cold-start variant of ``src`` to ``out``; returns what was held out (also in meta.json)."""
    src, out = Path(src), Path(out)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--fraction {fraction}: expected a value in (0, 1)")
    if out.resolve() == src.resolve():
        raise ValueError(f"--out {out} is the source folder; give a new folder")
    meta = DatasetMeta.load(src)
    raw_meta = json.loads((src / "meta.json").read_text())
    item, history = meta.features_of("item")[0], meta.features_of("history")[0]
    train = pq.read_table(src / "train")
    test_items = pq.read_table(src / "test", columns=[item.column]).column(item.column).to_numpy()
    for column in (item.column, history.column):
        if column not in train.column_names:
            raise DatasetError(f"{src / 'train'}: column {column!r} (from meta.json) missing")

    candidates = np.unique(test_items)
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(candidates, size=max(1, round(fraction * len(candidates))), replace=False))
    targets = train.column(item.column).to_numpy()
    keep_rows = ~np.isin(targets, held)
    kept = train.filter(pa.array(keep_rows))
    lists, history_removed = _drop_from_lists(kept.column(history.column), held)
    kept = kept.set_column(kept.schema.get_field_index(history.column), kept.schema.field(history.column), lists)
    if item.name in train.column_names and history.name in train.column_names:  # the raw-id history too
        held_raw = np.unique(train.column(item.name).to_numpy()[~keep_rows])
        lists, _ = _drop_from_lists(kept.column(history.name), held_raw)
        kept = kept.set_column(kept.schema.get_field_index(history.name), kept.schema.field(history.name), lists)

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for entry in src.iterdir():  # valid, test, items, vocabularies: unchanged
        if entry.name not in ("train", "meta.json"):
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, out / entry.name)
    (out / "train").mkdir()
    pq.write_table(kept, out / "train" / "part-00000.parquet")

    cold_test_rows = int(np.isin(test_items, held).sum())
    report = {
        "source": str(src),
        "fraction": fraction,
        "seed": seed,
        "items_held_out": int(len(held)),
        "of_test_items": int(len(candidates)),
        "train_rows_removed": int((~keep_rows).sum()),
        "history_positions_removed": history_removed,
        "cold_test_rows_from_held_items": cold_test_rows,
    }
    labels = kept.column("label").to_numpy()
    raw_meta["name"] = out.name
    raw_meta["protocol"] = f"{meta.protocol}+cold-holdout"
    raw_meta["splits"]["train"] = {"rows": kept.num_rows, "positive_rate": round(float(labels.mean()), 4)}
    raw_meta.setdefault("extra", {})["cold_holdout"] = report
    (out / "meta.json").write_text(json.dumps(raw_meta, indent=2))
    DatasetMeta.load(out)  # the result must load like any prepared dataset
    log.info(
        "%s: held out %d of %d test items: %d train rows and %d history positions removed; %d test rows are now cold",
        out,
        len(held),
        len(candidates),
        report["train_rows_removed"],
        history_removed,
        cold_test_rows,
    )
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.cold_holdout", description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, required=True, help="a prepared dataset folder (e.g. data/ml100k)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fraction", type=float, default=0.2, help="share of the test items to hold out of train")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(json.dumps(hold_out_items(args.src, args.out, args.fraction, args.seed), indent=2))


if __name__ == "__main__":
    main()
