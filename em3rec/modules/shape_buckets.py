"""Row counts rounded up to a few sizes, so that CPU bf16 matmuls see shapes they have seen before.

On CPU, bf16 / fp16 matmuls run through oneDNN, which builds (JIT-compiles) a kernel for each new
shape and caches it. The content tower's row counts change with every batch (distinct items,
real tokens), so without help almost every matmul of every step pays that build: measured on a
2-core AMX CPU, a (2450 x 256) @ (256 x 64) matmul and its weight gradient take 0.5 ms for a shape
seen before and 5 ms for a new one. Padding a row count up to the next of a few sizes per octave
(:func:`bucket_size`) makes shapes repeat at the cost of at most ``1 / per_octave`` extra rows.

fp32 on CPU (MKL) and CUDA (cuBLAS) have no per-shape build, so :func:`wants_buckets` is False there.
"""

from __future__ import annotations

import torch

PER_OCTAVE = 8  # bucket sizes per doubling of the row count: at most 12.5 % padding
SMALLEST = 64  # counts up to this are rounded up to a multiple of 8


def bucket_size(n: int, per_octave: int = PER_OCTAVE) -> int:
    """The smallest bucket ``>= n``: a multiple of ``2^floor(log2 n) / per_octave`` (of 8 up to
    ``SMALLEST``; 0 stays 0, so nothing is padded to encode nothing).

    Example::

        [bucket_size(n) for n in (0, 1, 100, 1000, 1025, 17330)]  # [0, 8, 104, 1024, 1152, 18432]
    """
    if n <= SMALLEST:
        return -(-n // 8) * 8
    step = max(1, (1 << (n.bit_length() - 1)) // per_octave)
    return -(-n // step) * step


def wants_buckets(x: torch.Tensor) -> bool:
    """Whether matmuls on ``x``'s device build a kernel per shape: CPU under bf16 / fp16 autocast
    (oneDNN). Not while torch.compile or torch.fx (TorchRec's train pipeline) traces."""
    if isinstance(x, torch.fx.Proxy) or torch.compiler.is_compiling() or x.device.type != "cpu":
        return False
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in (torch.bfloat16, torch.float16)


def pad_index(index: torch.Tensor, size: int) -> torch.Tensor:
    """``index (n,)`` extended to ``(size,)`` by repeating its first entry (a valid row, so the
    extra rows compute real, discarded values). ``n = 0`` stays empty."""
    n = index.shape[0]
    if n == 0 or size <= n:
        return index
    return torch.cat([index, index[:1].expand(size - n)])


def bucket_rows(x: torch.Tensor) -> torch.Tensor:
    """``x (n, ...)`` padded to ``(bucket_size(n), ...)`` by repeating its first row where
    :func:`wants_buckets` (else ``x`` itself, the same object): for a matmul whose row count changes
    from batch to batch. The caller keeps the first ``n`` rows of the result."""
    n = x.shape[0] if wants_buckets(x) else 0
    if n == 0 or bucket_size(n) == n:
        return x
    return torch.cat([x, x[:1].expand(bucket_size(n) - n, *x.shape[1:])])


def concat_into_bucket(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """``parts`` ``(n, W_i)`` concatenated on the last dim into a new ``(bucket_size(n), sum W_i)``
    buffer of ``dtype`` (the dtype the matmul computes in), its padding rows 0: the input of a
    matmul whose row count changes with every batch, written once (no separate padding copy, no
    copy in another dtype). The caller keeps the first ``n`` rows of the matmul."""
    n = parts[0].shape[0]
    buffer = parts[0].new_empty(bucket_size(n), sum(p.shape[1] for p in parts), dtype=dtype)
    buffer[n:].zero_()
    start = 0
    for p in parts:
        buffer[:n, start : start + p.shape[1]].copy_(p)
        start += p.shape[1]
    return buffer
