"""What the engine needs from a model: the ``Embedder`` interface and its picklable spec.

The parent process resolves and verifies weights once (``EmbedderSpec.weights`` is then a
local path) and sends the spec to every worker; each worker calls ``load_embedder`` once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where a model is built: commands that do not compute
    import torch  # (translate, merge, report, make-dataset) never load it
    from torch import nn

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def uninitialised_embedding(
    num: int, dim: int, padding_idx: int | None = None, device: torch.device | str | None = None
) -> nn.Embedding:
    """An ``nn.Embedding`` whose weight is left uninitialised (for meta-device construction).

    Our models are built on the meta device and filled by ``load_state_dict(assign=True)``;
    ``nn.Embedding``'s own random initialisation would pull in ``torch._dynamo`` there (about
    1.5 s of import in every worker) for values that are thrown away.
    """
    import torch
    from torch import nn

    weight = torch.empty(num, dim, device=device)
    return nn.Embedding(num, dim, padding_idx=padding_idx, _weight=weight)


@dataclass(frozen=True)
class EmbedderSpec:
    """Everything a worker needs to build an embedder; small and picklable."""

    family: str  # "esm2" or "dnabert_s"
    weights: str  # local path: a Hugging Face folder or a fair-esm .pt file
    name: str  # what the user asked for (fair-esm name, hub id or path)
    revision: str | None = None  # hub commit the weights came from, when known
    checksum: str | None = None  # sha256 of the weights file(s)
    layers: tuple[int, ...] = (-1,)  # ESM-2 layers to pool; negative counts from the end
    per_token: bool = False  # also return per-residue vectors
    precision: str = "auto"
    extra: dict = field(default_factory=dict)

    def fingerprint_fields(self) -> dict:
        """Fields that change the numbers (used to refuse mixing results on resume)."""
        return {
            "family": self.family,
            "name": self.name,
            "revision": self.revision,
            "checksum": self.checksum,
            "layers": list(self.layers),
            "per_token": self.per_token,
            "precision": self.precision,
        }


@dataclass
class EmbedOutput:
    """Result of one forward pass over a batch.

    ``pooled`` maps each output name (see ``Embedder.output_names``) to a float32 array of
    shape (B, dim). ``per_token`` is None unless requested; otherwise one float32 array of
    shape (L_i, dim) per sequence (residue positions only): a list when there is one output,
    a dict output name -> list when there are several (one per requested layer).
    """

    pooled: dict[str, np.ndarray]
    per_token: list[np.ndarray] | dict[str, list[np.ndarray]] | None = None

    def per_token_by_output(self) -> dict[str, list[np.ndarray]] | None:
        """``per_token`` as output name -> per-sequence blocks (None when not requested)."""
        if self.per_token is None or isinstance(self.per_token, dict):
            return self.per_token
        return {next(iter(self.pooled)): self.per_token}


def per_token_dataset(output: str) -> str:
    """HDF5 name of an output's per-token vectors: ``per_token`` for ``embeddings``,
    ``per_token_layer_L`` for ``embeddings_layer_L``."""
    return "per_token" + output[len("embeddings") :]


class Embedder(ABC):
    """A loaded model on one device that turns token-id arrays into pooled vectors."""

    dim: int
    output_names: list[str]
    device: torch.device
    dtype: torch.dtype
    packed: bool = False  # forward computes real tokens only (sequences back to back)

    def residues(self, seq: str) -> str:
        """The residues to embed of an input sequence (its stored length is then this one's)."""
        return seq

    @abstractmethod
    def encode(self, seq: str) -> np.ndarray:
        """Token ids (int64) for one sequence, special tokens included, truncated if needed."""

    @abstractmethod
    def n_tokens(self, length: int) -> int:
        """Estimated encoded length of a sequence of ``length`` residues (for planning)."""

    def truncated(self, length: int) -> bool:
        """True when a sequence of ``length`` residues is cut by ``encode``."""
        return False

    @abstractmethod
    def forward(self, batch: list[np.ndarray]) -> EmbedOutput:
        """Embed a batch of encoded sequences (any lengths; padding is handled here)."""

    def prepare(self, batch: list[np.ndarray]) -> object:
        """The host-side work of a batch (packing, copy to the device), for
        ``forward_prepared``; may run in a background thread (``engine/overlap.py``)."""
        return batch

    def forward_prepared(self, prepared: object) -> EmbedOutput:
        """``forward`` of a batch that ``prepare`` returned."""
        return self.forward(prepared)

    def describe(self) -> dict:
        """Attributes recorded in the output file (model name, layers, pooling, ...)."""
        return {}


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` is fp32 on CPU and bf16 (or fp16 where bf16 is unsupported) on GPU."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_embedder(spec: EmbedderSpec, device: torch.device) -> Embedder:
    """Build the embedder a spec describes on ``device`` (called once per worker)."""
    if spec.family == "esm2":
        from virnucpro.models.esm2 import load_esm2_embedder

        return load_esm2_embedder(spec, device)
    if spec.family == "dnabert_s":
        from virnucpro.models.dnabert_s import load_dnabert_embedder

        return load_dnabert_embedder(spec, device)
    raise ValueError(f"unknown model family {spec.family!r}")


ESM2_MAX_RESIDUES = 1022
DNABERT_MAX_TOKENS = 2048


def planning_tokens(spec: EmbedderSpec, lengths: np.ndarray) -> np.ndarray:
    """Token cost of each sequence for planning units, without loading the model.

    ESM-2 is exact (residues, truncated at 1022, plus BOS/EOS). DNABERT-S's BPE averages
    about 4 to 5 nucleotides per token, so ``ceil(length / 4) + 2`` (capped at 2048) slightly
    over-estimates; the worker batches by the real token counts.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if spec.family == "esm2":
        return np.minimum(lengths, ESM2_MAX_RESIDUES) + 2
    return np.minimum((lengths + 3) // 4 + 2, DNABERT_MAX_TOKENS)
