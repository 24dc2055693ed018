"""Sequences packed back to back (no padding) and attention over them.

A batch of encoded sequences becomes one token vector of N = sum(lengths) entries, so the
projections, norms and FFN of a transformer never compute padding. Attention stays within
each sequence: on a CUDA device in half precision it is one FlashAttention varlen call
(``torch.nn.attention.varlen``, PyTorch >= 2.10); elsewhere it is exact SDPA over each run
of equal-length sequences (consecutive in a length-sorted batch), with no mask at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(q, k, v), each (N, heads, head_dim), to the attention output (N, heads, head_dim)."""

FLASH_VARLEN = "flash-varlen"
SDPA_RUNS = "sdpa-per-length"


@dataclass(frozen=True)
class PackedBatch:
    """One batch, token ids concatenated, with the offsets that delimit its sequences."""

    tokens: torch.Tensor  # (N,) int64
    lengths: tuple[int, ...]  # tokens per sequence, in batch order
    cu_seqlens: torch.Tensor  # (B + 1,) int32 offsets into tokens
    seq_ids: torch.Tensor  # (N,) int64: which sequence each token belongs to
    positions: torch.Tensor  # (N,) int64: position of each token within its sequence
    runs: tuple[tuple[int, int, int], ...]  # (first token, sequences, length) of equal lengths

    @property
    def max_len(self) -> int:
        return max(self.lengths)

    def starts(self) -> np.ndarray:
        """Offset of each sequence's first token."""
        return np.concatenate(([0], np.cumsum(self.lengths)[:-1])).astype(np.int64)


def pack(batch: list[np.ndarray], device: torch.device) -> PackedBatch:
    """Concatenate encoded sequences and move the ids and offsets to ``device``."""
    lengths = np.fromiter((len(ids) for ids in batch), dtype=np.int64, count=len(batch))
    cu = np.concatenate(([0], np.cumsum(lengths)))
    seq_ids = np.repeat(np.arange(len(batch)), lengths)
    positions = np.arange(int(cu[-1])) - np.repeat(cu[:-1], lengths)
    runs = []
    first = 0
    for index in range(1, len(batch) + 1):
        if index == len(batch) or lengths[index] != lengths[first]:
            runs.append((int(cu[first]), index - first, int(lengths[first])))
            first = index

    cuda = torch.device(device).type == "cuda"

    def put(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        host = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
        if cuda:  # from pinned memory, queued behind the kernels already launched
            return host.pin_memory().to(device, non_blocking=True)
        return host.to(device)

    return PackedBatch(
        tokens=put(np.concatenate(batch), torch.int64),
        lengths=tuple(int(n) for n in lengths),
        cu_seqlens=put(cu, torch.int32),
        seq_ids=put(seq_ids, torch.int64),
        positions=put(positions, torch.int64),
        runs=tuple(runs),
    )


def mean_matrix(packed: PackedBatch, skip_first: int, skip_last: int) -> torch.Tensor:
    """(B, N) fp32 weights whose product with (N, C) hidden states gives per-sequence means.

    Each sequence averages its tokens except the first ``skip_first`` and last ``skip_last``
    (special tokens). A matrix product, unlike a scatter-add, is deterministic on GPUs.
    """
    device = packed.tokens.device
    lengths = torch.tensor(packed.lengths, device=device)
    kept = lengths - skip_first - skip_last
    inside = (packed.positions >= skip_first) & (
        packed.positions < lengths[packed.seq_ids] - skip_last
    )
    rows = torch.arange(len(packed.lengths), device=device)
    weights = (rows[:, None] == packed.seq_ids[None, :]) & inside[None, :]
    return weights.float() / kept.clamp(min=1).float()[:, None]


def attention_for(packed: PackedBatch, dtype: torch.dtype, head_dim: int) -> Attention:
    """The attention over ``packed``'s sequences: FlashAttention varlen where it runs."""
    device = packed.tokens.device
    if attention_kernel(device, dtype, head_dim) == FLASH_VARLEN:
        from torch.nn.attention.varlen import varlen_attn

        cu, longest = packed.cu_seqlens, packed.max_len

        def flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            # Scale defaults to head_dim ** -0.5, which is also ESM-2's.
            return varlen_attn(q, k, v, cu, cu, longest, longest)

        return flash

    def by_runs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        for start, count, length in packed.runs:
            span = slice(start, start + count * length)
            q_run, k_run, v_run = (
                t[span].unflatten(0, (count, length)).transpose(1, 2) for t in (q, k, v)
            )
            result = F.scaled_dot_product_attention(q_run, k_run, v_run)
            out[span] = result.transpose(1, 2).flatten(0, 1)
        return out

    return by_runs


def attention_kernel(device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    """Which attention ``attention_for`` uses on this device and dtype (for reports)."""
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return SDPA_RUNS
    return FLASH_VARLEN if _flash_varlen_works(str(device), dtype, head_dim) else SDPA_RUNS


@cache
def _flash_varlen_works(device: str, dtype: torch.dtype, head_dim: int) -> bool:
    """Probe FlashAttention varlen once (PyTorch >= 2.10 and a GPU the kernel supports)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        log.info("torch %s has no varlen attention: using SDPA per length", torch.__version__)
        return False
    try:
        qkv = torch.randn(8, 3, 2, head_dim, device=device, dtype=dtype)
        cu = torch.tensor([0, 3, 8], device=device, dtype=torch.int32)
        out = varlen_attn(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, cu, 5, 5)
        reference = F.scaled_dot_product_attention(
            *(t[:3].transpose(0, 1) for t in qkv.unbind(1))
        ).transpose(0, 1)
        ok = bool(torch.allclose(out[:3].float(), reference.float(), atol=2e-2, rtol=2e-2))
    except (RuntimeError, TypeError, ValueError) as exc:
        log.info("FlashAttention varlen unavailable on %s (%s): using SDPA per length", device, exc)
        return False
    if not ok:
        log.warning("FlashAttention varlen disagrees with SDPA on %s: not used", device)
    return ok


def to_host(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """fp32 host copies of (B, C) results. On CUDA: non-blocking copies into pinned memory,
    then one wait for the stream (no separate synchronising check before the copy)."""
    values = [t.float() for t in tensors.values()]
    if not values or values[0].device.type != "cuda":
        return {name: t.cpu().numpy() for name, t in zip(tensors, values, strict=True)}
    host = [torch.empty(t.shape, dtype=torch.float32, pin_memory=True) for t in values]
    for target, source in zip(host, values, strict=True):
        target.copy_(source, non_blocking=True)
    torch.cuda.current_stream(values[0].device).synchronize()
    return {name: h.numpy() for name, h in zip(tensors, host, strict=True)}
