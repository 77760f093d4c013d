"""What the sharding planner should know of the training data: how many ids a row holds on average
in each multi-valued feature (the planner's pooling factor), read from the first training rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds

from em3rec.data.schema import DatasetMeta


def mean_ids_per_row(
    folder: str | Path, meta: DatasetMeta, max_history: int, max_rows: int = 100_000
) -> dict[str, float]:
    """feature name -> mean ids per row over the first ``max_rows`` rows of the train split, for
    the history (at most ``max_history``: the loader keeps the latest) and the multi-valued side
    features (at most their ``max_length``). Single-valued features hold 1 and are not listed."""
    features = meta.features_of("history", "multi")
    if not features:
        return {}
    table = ds.dataset(Path(folder) / "train", format="parquet").head(max_rows, columns=[f.column for f in features])
    means = {}
    for f in features:
        lengths = pc.list_value_length(table.column(f.column)).to_numpy(zero_copy_only=False)  # nulls: NaN
        cap = max_history if f.kind == "history" else f.max_length
        means[f.name] = float(np.minimum(np.nan_to_num(lengths), cap).mean()) if len(lengths) else 1.0
    return means
