"""What a new matmul shape costs on this CPU: a Linear's forward and weight-gradient matmuls at a
shape seen before, at shapes never seen, at those shapes again, and at bucketed row counts
(``em3rec.modules.shape_buckets``), per dtype. On CPU, bf16 matmuls run through oneDNN, which builds
a kernel per shape; fp32 runs through MKL, which does not.

    python -m benchmarks.onednn_shapes [--threads 1] [--rows 2450] [--width 256] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.machine import results_head, write_results
from em3rec.modules.shape_buckets import bucket_size


def matmul_pair_ms(rows: int, width: int, out: int, dtype: torch.dtype) -> float:
    """Milliseconds of ``x (rows, width) @ w.T`` and the weight gradient ``g.T @ x``."""
    x, w, g = torch.randn(rows, width).to(dtype), torch.randn(out, width).to(dtype), torch.randn(rows, out).to(dtype)
    start = time.perf_counter()
    x @ w.T  # noqa: B018  (timed for its cost)
    g.T @ x  # noqa: B018
    return (time.perf_counter() - start) * 1e3


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", type=int, default=2450, help="the seen shape's row count; new ones start above it")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--out-width", type=int, default=64)
    p.add_argument("--calls", type=int, default=30)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.calls
    lines = [
        "| dtype | seen shape | new shapes | the same shapes again | new row counts, bucketed |",
        "|---|---:|---:|---:|---:|",
    ]
    for dtype in (torch.bfloat16, torch.float32):
        pair = [args.rows, args.width, args.out_width]
        for _ in range(5):
            matmul_pair_ms(*pair, dtype)
        seen = statistics.median(matmul_pair_ms(*pair, dtype) for _ in range(n))
        fresh_rows = [args.rows + 1 + 7 * i for i in range(n)]  # never seen in this dtype, ~4 % more rows
        fresh = statistics.median(matmul_pair_ms(r, args.width, args.out_width, dtype) for r in fresh_rows)
        again = statistics.median(matmul_pair_ms(r, args.width, args.out_width, dtype) for r in fresh_rows)
        bucket_rows = [bucket_size(r + 3) for r in fresh_rows]  # other new counts, padded to their buckets
        bucketed = statistics.median(matmul_pair_ms(r, args.width, args.out_width, dtype) for r in bucket_rows)
        lines.append(
            f"| {str(dtype).removeprefix('torch.')} | {seen:.2f} ms | {fresh:.2f} ms | {again:.2f} ms | "
            f"{bucketed:.2f} ms ({len(set(bucket_rows))} buckets for {n} counts) |"
        )
    note = (
        f"Matmul pair: the forward and weight gradient of a {args.width} -> {args.out_width} Linear at about "
        f"{args.rows} rows, median of {n} calls, {args.threads} thread(s)."
    )
    watched = ["em3rec/modules/shape_buckets.py", "benchmarks/onednn_shapes.py"]
    write_results(results_head("benchmarks.onednn_shapes", argv, watched, note) + "\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
