"""Attention with symmetric ALiBi over packed sequences (DNABERT-S), each sequence alone.

The batch is one token vector (``models/packing.py``); every sequence attends to itself only,
with the bias ``-slope_h * |i - j|`` of its own positions. Three kernels compute it:

- ``sdpa-alibi-per-length``: exact SDPA over each run of equal-length sequences (consecutive
  in a length-sorted batch) with that length's (heads, L, L) bias, built once per length and
  dtype and cached. Every device and dtype; no padded slot and no mask.
- ``flash-varlen-alibi``: one FlashAttention varlen call with ALiBi slopes (the
  ``flash_attn`` package, CUDA, fp16/bf16), where installed; probed once against SDPA.
- ``flex-alibi``: FlexAttention with a document mask and an ALiBi score modifier (compiled;
  CUDA only, and only when asked for with ``VIRNUCPRO_DNABERT_ATTENTION=flex-alibi``: its
  compilation costs seconds per new batch geometry).

``VIRNUCPRO_DNABERT_ATTENTION`` forces one kernel (benchmarks); the default is the first of
flash-varlen-alibi (where it works) and sdpa-alibi-per-length, chosen by measurement
(docs/BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import os
from functools import cache

import torch
import torch.nn.functional as F

from virnucpro.models.packing import Attention, PackedBatch

log = logging.getLogger(__name__)

SDPA_ALIBI = "sdpa-alibi-per-length"
FLASH_ALIBI = "flash-varlen-alibi"
FLEX_ALIBI = "flex-alibi"
KERNELS = (SDPA_ALIBI, FLASH_ALIBI, FLEX_ALIBI)
ENV = "VIRNUCPRO_DNABERT_ATTENTION"


def alibi_bias(slopes: torch.Tensor, length: int) -> torch.Tensor:
    """Symmetric ALiBi bias of shape (heads, length, length): ``-slope * |i - j|``."""
    pos = torch.arange(length, device=slopes.device, dtype=slopes.dtype)
    return -slopes[:, None, None] * (pos[None, :] - pos[:, None]).abs()[None]


class BiasCache:
    """(1, heads, L, L) ALiBi biases per (length, dtype, device), computed in fp32 then cast.

    Four dimensions on purpose: CPU SDPA takes a slow path for a 3-D mask (measured 5-10x).
    """

    def __init__(self, slopes: list[float]) -> None:
        self.slopes = torch.tensor(slopes, dtype=torch.float32, device="cpu")
        self._cache: dict[tuple[int, torch.dtype, str], torch.Tensor] = {}

    def get(self, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (length, dtype, str(device))
        bias = self._cache.get(key)
        if bias is None:
            if len(self._cache) > 4096:  # lengths are bounded by max_tokens; be safe anyway
                self._cache.clear()
            bias = alibi_bias(self.slopes.to(device), length)[None].to(dtype)
            self._cache[key] = bias
        return bias


def alibi_attention_for(
    packed: PackedBatch, biases: BiasCache, dtype: torch.dtype, head_dim: int
) -> Attention:
    """Attention over ``packed``'s sequences with ALiBi, by the kernel ``alibi_kernel`` picks."""
    device = packed.tokens.device
    kernel = alibi_kernel(device, dtype, head_dim, len(biases.slopes))
    if kernel == FLASH_ALIBI:
        return _flash(packed, biases)
    if kernel == FLEX_ALIBI:
        return _flex(packed, biases)

    def by_runs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if len(packed.runs) == 1:  # the whole batch is one length: no copy into ``out``
            _, count, length = packed.runs[0]
            return _sdpa_run(q, k, v, count, length, biases.get(length, q.dtype, q.device))
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        for start, count, length in packed.runs:
            span = slice(start, start + count * length)
            bias = biases.get(length, q.dtype, q.device)
            result = _sdpa(q[span], k[span], v[span], count, length, bias)
            out[span].unflatten(0, (count, length)).copy_(result.transpose(1, 2))
        return out

    return by_runs


def _sdpa(q, k, v, count: int, length: int, bias: torch.Tensor) -> torch.Tensor:
    """SDPA over ``count`` sequences of ``length`` tokens: (count*length, heads, d) in,
    (count, heads, length, d) out."""
    q, k, v = (t.unflatten(0, (count, length)).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def _sdpa_run(q, k, v, count: int, length: int, bias: torch.Tensor) -> torch.Tensor:
    """SDPA over ``count`` sequences of ``length`` tokens, (count*length, heads, d) in and out."""
    return _sdpa(q, k, v, count, length, bias).transpose(1, 2).flatten(0, 1)


def _flash(packed: PackedBatch, biases: BiasCache) -> Attention:
    from flash_attn import flash_attn_varlen_func

    cu, longest = packed.cu_seqlens, packed.max_len
    slopes = biases.slopes.to(packed.tokens.device)  # fp32, as the kernel requires

    def flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # flash_attn adds -slope * |i + Lk - Lq - j|, which is -slope * |i - j| here.
        return flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, alibi_slopes=slopes)

    return flash


def _flex(packed: PackedBatch, biases: BiasCache) -> Attention:
    from torch.nn.attention.flex_attention import create_block_mask

    doc, pos = packed.seq_ids, packed.positions
    slopes = biases.slopes.to(packed.tokens.device)
    n = int(doc.shape[0])

    def same_sequence(b, h, q_idx, kv_idx):  # noqa: ARG001 - the signature flex expects
        return doc[q_idx] == doc[kv_idx]

    def alibi(score, b, h, q_idx, kv_idx):  # noqa: ARG001
        return score - slopes[h] * (pos[q_idx] - pos[kv_idx]).abs()

    mask = create_block_mask(same_sequence, None, None, n, n, device=str(doc.device))

    def flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))  # (1, heads, N, d)
        out = _compiled_flex()(q, k, v, score_mod=alibi, block_mask=mask)
        return out[0].transpose(0, 1)

    return flex


@cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def alibi_kernel(device: torch.device, dtype: torch.dtype, head_dim: int, heads: int) -> str:
    """Which kernel ``alibi_attention_for`` uses on this device and dtype (for reports)."""
    forced = os.environ.get(ENV)
    if forced:
        if forced not in KERNELS:
            raise ValueError(f"{ENV} must be one of {', '.join(KERNELS)}, not {forced!r}")
        return forced
    half = dtype in (torch.float16, torch.bfloat16)
    if device.type == "cuda" and half and _flash_alibi_works(str(device), dtype, head_dim, heads):
        return FLASH_ALIBI
    return SDPA_ALIBI


@cache
def _flash_alibi_works(device: str, dtype: torch.dtype, head_dim: int, heads: int) -> bool:
    """Probe the ``flash_attn`` varlen kernel with ALiBi once against SDPA with the bias."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return False
    try:
        slopes = torch.linspace(0.5, 0.01, heads, device=device, dtype=torch.float32)
        qkv = torch.randn(8, 3, heads, head_dim, device=device, dtype=dtype)
        cu = torch.tensor([0, 3, 8], device=device, dtype=torch.int32)
        q, k, v = qkv.unbind(1)
        out = flash_attn_varlen_func(q, k, v, cu, cu, 5, 5, alibi_slopes=slopes)
        bias = alibi_bias(slopes, 3)[None].to(dtype)
        reference = _sdpa_run(q[:3], k[:3], v[:3], 1, 3, bias)
        ok = bool(torch.allclose(out[:3].float(), reference.float(), atol=2e-2, rtol=2e-2))
    except (RuntimeError, TypeError, ValueError) as exc:
        log.info("flash_attn varlen with ALiBi unavailable on %s (%s)", device, exc)
        return False
    if not ok:
        log.warning("flash_attn varlen with ALiBi disagrees with SDPA on %s: not used", device)
    return ok
