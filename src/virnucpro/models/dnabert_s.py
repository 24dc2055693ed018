"""DNABERT-S implemented natively (MosaicBERT / DNABERT-2 architecture, SPEC 2.2).

The hub repo ships custom code that needs ``trust_remote_code``; virnucpro never runs it.
This module rebuilds the architecture (post-LN encoder, fused Wqkv, symmetric ALiBi,
gated-GELU MLP), loads the weights without executing pickle code, tokenizes with the
repo's ``tokenizer.json`` through the ``tokenizers`` library, and pools the way VirNucPro
did: the mean of the last layer over ALL token positions, [CLS] and [SEP] included.
Batches run packed (``models/packing.py``): the sequences are one token vector, attention
with its ALiBi bias stays inside each sequence (``models/alibi_attention.py``), and no padded
slot is computed, so a batch gives the same vectors as one sequence at a time. The padded
path (``forward_padded``) is kept as a reference.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, processors
from torch import nn

from virnucpro.errors import ModelError, NumericalError
from virnucpro.models.alibi_attention import (
    BiasCache,
    alibi_attention_for,
    alibi_bias,
    alibi_kernel,
)
from virnucpro.models.base import (
    Embedder,
    EmbedderSpec,
    EmbedOutput,
    resolve_dtype,
    uninitialised_embedding,
)
from virnucpro.models.packing import Attention, PackedBatch, mean_matrix, pack, to_host

HUB_ID = "zhihan1996/DNABERT-S"
CATALOG_NAME = "DNABERT-S"  # its name for `virnucpro download`
FAMILY = "dnabert_s"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # first one present wins
# ALiBi has no trained length limit (the original rebuilt its bias for longer inputs and
# never truncated; ``max_position_embeddings`` in config.json is an unused BERT leftover).
# BPE never gives more than one token per nucleotide, so with this cap every input up to
# 2046 nt (VirNucPro's are at most ~1.5 kb) is embedded whole, exactly like the original.
DEFAULT_MAX_TOKENS = 2048
NT_PER_TOKEN = 4  # rough BPE compression of DNA with the 4096-token vocabulary (planning only)
IGNORED_PREFIXES = ("pooler.", "cls.")


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi slopes (float64) for ``n_heads`` heads, non-power-of-two rule included."""
    return torch.tensor(_slope_values(n_heads), dtype=torch.float64)


def _slope_values(n_heads: int) -> list[float]:
    if n_heads < 1:
        raise ValueError(f"n_heads must be positive, not {n_heads}")

    def power_of_two(n: int) -> list[float]:  # start = 2^(-8/n), slope_h = start^(h+1)
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    base = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_two(base)
    if base != n_heads:
        slopes += power_of_two(2 * base)[0::2][: n_heads - base]
    return slopes


@dataclass(frozen=True)
class DnabertConfig:
    """Model geometry read from a DNABERT-S ``config.json``."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2

    @classmethod
    def from_file(cls, path: Path) -> DnabertConfig:
        """Parse and check ``config.json``; ModelError naming the file and key otherwise."""
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: cannot read model config ({exc})") from None
        if not isinstance(raw, dict):
            raise ModelError(f"{path}: model config is not a JSON object")

        def get(key: str, kind: type, default: object = None) -> object:
            value = raw.get(key, default)
            if value is None or isinstance(value, bool) or not isinstance(value, kind):
                raise ModelError(f"{path}: '{key}' must be a {kind.__name__}, got {value!r}")
            return value

        cfg = cls(
            vocab_size=get("vocab_size", int),
            hidden_size=get("hidden_size", int),
            num_layers=get("num_hidden_layers", int),
            num_heads=get("num_attention_heads", int),
            intermediate_size=get("intermediate_size", int),
            layer_norm_eps=float(get("layer_norm_eps", (int, float), 1e-12)),
            type_vocab_size=get("type_vocab_size", int, 2),
        )
        if min(cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads) < 1:
            raise ModelError(f"{path}: sizes must be positive ({cfg})")
        if cfg.intermediate_size < 1 or cfg.type_vocab_size < 1:
            raise ModelError(f"{path}: sizes must be positive ({cfg})")
        if cfg.hidden_size % cfg.num_heads:
            raise ModelError(
                f"{path}: hidden_size {cfg.hidden_size} is not a multiple of "
                f"num_attention_heads {cfg.num_heads}"
            )
        return cfg


class _Layer(nn.Module):
    """One post-LN MosaicBERT layer; submodule names mirror the checkpoint keys."""

    def __init__(self, cfg: DnabertConfig) -> None:
        super().__init__()
        h, i, eps = cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps
        self.heads = cfg.num_heads
        self.attention = nn.ModuleDict(
            {
                "self": nn.ModuleDict({"Wqkv": nn.Linear(h, 3 * h)}),
                "output": nn.ModuleDict(
                    {"dense": nn.Linear(h, h), "LayerNorm": nn.LayerNorm(h, eps=eps)}
                ),
            }
        )
        self.mlp = nn.ModuleDict(
            {
                "gated_layers": nn.Linear(h, 2 * i, bias=False),
                "wo": nn.Linear(i, h),
                "layernorm": nn.LayerNorm(h, eps=eps),
            }
        )

    def forward(self, x: torch.Tensor, attend: Attention) -> torch.Tensor:
        """``x`` (N, H): the batch's tokens packed back to back; ``attend`` keeps each
        sequence to itself with its ALiBi bias."""
        n, h = x.shape
        qkv = self.attention["self"]["Wqkv"](x).view(n, 3, self.heads, h // self.heads)
        ctx = attend(qkv[:, 0], qkv[:, 1], qkv[:, 2]).reshape(n, h)
        return self._rest(x, ctx)

    def forward_padded(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``x`` (B, L, H); ``bias`` additive attention bias broadcastable to (B, heads, L, L)."""
        b, n, h = x.shape
        qkv = self.attention["self"]["Wqkv"](x).view(b, n, 3, self.heads, h // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, d)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self._rest(x, ctx.transpose(1, 2).reshape(b, n, h))

    def _rest(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Output projection, post-LN residuals and the gated-GELU MLP (any leading shape)."""
        out = self.attention["output"]
        x = out["LayerNorm"](out["dense"](ctx) + x)
        gate, value = self.mlp["gated_layers"](x).chunk(2, dim=-1)
        return self.mlp["layernorm"](self.mlp["wo"](F.gelu(gate) * value) + x)


class DnabertModel(nn.Module):
    """Embeddings + encoder of DNABERT-S; returns the last layer's hidden states."""

    def __init__(self, cfg: DnabertConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.cfg = cfg
        self.embeddings = nn.ModuleDict(
            {
                "word_embeddings": uninitialised_embedding(cfg.vocab_size, h),
                "token_type_embeddings": uninitialised_embedding(cfg.type_vocab_size, h),
                "LayerNorm": nn.LayerNorm(h, eps=cfg.layer_norm_eps),
            }
        )
        self.encoder = nn.ModuleDict(
            {"layer": nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_layers))}
        )
        self.register_buffer("slopes", alibi_slopes(cfg.num_heads).float(), persistent=False)
        self.head_dim = h // cfg.num_heads
        self.biases = BiasCache(_slope_values(cfg.num_heads))

    def set_slopes(self, slopes: torch.Tensor) -> None:
        """The ALiBi slopes (fp32, kept in fp32 whatever the model's dtype)."""
        self.slopes = slopes.float()
        self.biases = BiasCache(slopes.tolist())

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.embeddings
        x = emb["word_embeddings"](ids) + emb["token_type_embeddings"].weight[0]
        return emb["LayerNorm"](x)

    def forward(self, packed: PackedBatch) -> torch.Tensor:
        """Last-layer hidden states (N, H) of the packed tokens; no padded slot computed."""
        x = self._embed(packed.tokens)
        attend = alibi_attention_for(packed, self.biases, x.dtype, self.head_dim)
        for layer in self.encoder["layer"]:
            x = layer(x, attend)
        return x

    def forward_padded(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The padded path (reference and benchmarks): ``ids`` (B, L) token ids, ``mask``
        (B, L) bool, True on real tokens; a dense (B, heads, L, L) ALiBi + padding bias."""
        x = self._embed(ids)
        bias = alibi_bias(self.slopes, ids.shape[1])[None]  # fp32 (1, heads, L, L)
        if not bool(mask.all()):
            pad = torch.zeros(mask.shape, dtype=bias.dtype, device=bias.device)
            bias = bias + pad.masked_fill(~mask, float("-inf"))[:, None, None, :]
        bias = bias.to(x.dtype)
        for layer in self.encoder["layer"]:
            x = layer.forward_padded(x, bias)
        return x


def find_weights(folder: Path) -> Path:
    """The weights file of a DNABERT-S folder (safetensors preferred)."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ModelError(f"{folder}: no DNABERT-S weights found (expected {' or '.join(WEIGHT_FILES)})")


def read_weights(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (read straight onto ``device``) or a weights-only
    ``.bin``; never runs pickle code."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path), device=device)
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{path}: cannot load weights safely (only plain tensors are accepted, "
            f"no pickled code): {reason}"
        ) from None
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()
    ):
        raise ModelError(f"{path}: expected a flat mapping of tensor names to tensors")
    return raw


def model_state(path: Path, model: DnabertModel, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Checkpoint tensors renamed to ``model``'s keys; ModelError naming file and key."""
    found: dict[str, torch.Tensor] = {}
    for key, tensor in read_weights(path, device).items():
        name = key.removeprefix("bert.")
        if name.startswith(IGNORED_PREFIXES):
            continue
        found[name] = tensor
    expected = model.state_dict()
    for key, ref in expected.items():
        if key not in found:
            raise ModelError(f"{path}: missing tensor '{key}' (with or without 'bert.' prefix)")
        if tuple(found[key].shape) != tuple(ref.shape):
            raise ModelError(
                f"{path}: tensor '{key}' has shape {tuple(found[key].shape)}, "
                f"config.json implies {tuple(ref.shape)}"
            )
    for key, tensor in found.items():  # integer buffers (ids) are harmless leftovers
        if key not in expected and tensor.is_floating_point():
            raise ModelError(f"{path}: unexpected tensor '{key}' (does config.json match?)")
    return {key: found[key] for key in expected}


def load_model(
    folder: Path, weights: Path, device: torch.device, dtype: torch.dtype
) -> DnabertModel:
    """Build the model from ``config.json`` and load ``weights`` into it, in eval mode."""
    cfg = DnabertConfig.from_file(folder / "config.json")
    with torch.device("meta"):
        model = DnabertModel(cfg)
    state = {k: t.to(dtype) for k, t in model_state(weights, model, str(device)).items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.set_slopes(alibi_slopes(cfg.num_heads).float())
    return model.to(device).eval()


def load_tokenizer(path: Path) -> Tokenizer:
    """The repo's BPE tokenizer, untruncated and unpadded, checked to add [CLS] ... [SEP]."""
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the library raises plain Exceptions
        raise ModelError(f"{path}: cannot read tokenizer ({exc})") from None
    tok.no_truncation()
    tok.no_padding()
    ids = {name: tok.token_to_id(name) for name in ("[CLS]", "[SEP]", "[PAD]")}
    missing = [name for name, i in ids.items() if i is None]
    if missing:
        raise ModelError(f"{path}: tokenizer lacks special token(s) {', '.join(missing)}")
    probe = tok.encode("ACGT").ids
    if probe[:1] != [ids["[CLS]"]] or probe[-1:] != [ids["[SEP]"]]:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
        )
        probe = tok.encode("ACGT").ids
        if probe[:1] != [ids["[CLS]"]] or probe[-1:] != [ids["[SEP]"]]:
            raise ModelError(f"{path}: tokenizer does not produce [CLS] ... [SEP]")
    return tok


class DnabertEmbedder(Embedder):
    """DNABERT-S on one device: mean of the last layer over all tokens, [CLS]/[SEP] included."""

    output_names = ["embeddings"]
    packed = True  # sequences back to back: budgets count real tokens

    def __init__(self, spec: EmbedderSpec, device: torch.device) -> None:
        folder = Path(spec.weights)
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = resolve_dtype(spec.precision, self.device)
        weights = folder / spec.extra.get("weights_file", find_weights(folder).name)
        self.model = load_model(folder, weights, self.device, self.dtype)
        self.dim = self.model.cfg.hidden_size
        self.tokenizer = load_tokenizer(folder / "tokenizer.json")
        if self.tokenizer.get_vocab_size(with_added_tokens=True) > self.model.cfg.vocab_size:
            raise ModelError(
                f"{folder}: tokenizer.json has {self.tokenizer.get_vocab_size()} tokens, "
                f"config.json vocab_size is {self.model.cfg.vocab_size}"
            )
        self.pad_id = self.tokenizer.token_to_id("[PAD]")
        self.max_tokens = int(spec.extra.get("max_tokens", DEFAULT_MAX_TOKENS))
        if self.max_tokens < 3:
            raise ModelError(f"max_tokens must be at least 3, not {self.max_tokens}")

    def encode(self, seq: str) -> np.ndarray:
        """Token ids ``[CLS] ... [SEP]``; inputs longer than ``max_tokens - 2`` nt are cut first.

        Cutting nucleotides (not tokens) keeps ``truncated`` exact: BPE gives at most one token
        per nucleotide, so the result never exceeds ``max_tokens``.
        """
        ids = self.tokenizer.encode(seq.upper()[: self.max_tokens - 2]).ids
        return np.asarray(ids, dtype=np.int64)

    def n_tokens(self, length: int) -> int:
        """Planning estimate only: ~4 nt per BPE token plus [CLS]/[SEP] (true count varies)."""
        return min(math.ceil(length / NT_PER_TOKEN) + 2, self.max_tokens)

    def truncated(self, length: int) -> bool:
        """True when ``encode`` cuts a sequence of ``length`` nucleotides."""
        return length > self.max_tokens - 2

    def forward(self, batch: list[np.ndarray]) -> EmbedOutput:
        """Packed: the batch is one token vector, attention and ALiBi stay inside each
        sequence, no padded slot is computed; fp32 pooling over all tokens."""
        return self.forward_prepared(self.prepare(batch))

    def prepare(self, batch: list[np.ndarray]) -> PackedBatch | None:
        """The batch packed on the device (None for an empty batch)."""
        return pack(batch, self.device) if batch else None

    @torch.inference_mode()
    def forward_prepared(self, packed: PackedBatch | None) -> EmbedOutput:
        if packed is None:
            return self._empty()
        hidden = self.model(packed).float()
        pooled = mean_matrix(packed, skip_first=0, skip_last=0) @ hidden
        vectors = to_host({"embeddings": pooled})["embeddings"]  # one wait per batch
        self._check_finite(torch.from_numpy(vectors), len(packed.lengths))
        per_token = None
        if self.spec.per_token:  # BPE tokens between [CLS] and [SEP], not nucleotides
            host = hidden.cpu().numpy()
            spans = zip(packed.starts().tolist(), packed.lengths, strict=True)
            per_token = [host[start + 1 : start + n - 1].copy() for start, n in spans]
        return EmbedOutput(pooled={"embeddings": vectors}, per_token=per_token)

    @torch.inference_mode()
    def forward_padded(self, batch: list[np.ndarray]) -> EmbedOutput:
        """The padded path (before packing; kept as a reference): pad with [PAD], mask padding
        out of attention and mean."""
        if not batch:
            return self._empty()
        lengths = torch.tensor([len(ids) for ids in batch], device=self.device)
        ids = torch.full((len(batch), int(lengths.max())), self.pad_id, dtype=torch.long)
        for row, seq_ids in enumerate(batch):
            ids[row, : len(seq_ids)] = torch.as_tensor(seq_ids, dtype=torch.long)
        ids = ids.to(self.device)
        mask = torch.arange(ids.shape[1], device=self.device)[None, :] < lengths[:, None]
        hidden = self.model.forward_padded(ids, mask).float()
        pooled = (hidden * mask[..., None]).sum(dim=1) / lengths[:, None].float()
        self._check_finite(pooled, len(batch))
        per_token = None
        if self.spec.per_token:
            per_token = [hidden[r, 1 : int(n) - 1].cpu().numpy() for r, n in enumerate(lengths)]
        return EmbedOutput(pooled={"embeddings": pooled.cpu().numpy()}, per_token=per_token)

    def _empty(self) -> EmbedOutput:
        empty = {"embeddings": np.zeros((0, self.dim), np.float32)}
        return EmbedOutput(pooled=empty, per_token=[] if self.spec.per_token else None)

    def _check_finite(self, pooled: torch.Tensor, size: int) -> None:
        if not bool(torch.isfinite(pooled).all()):
            bad = (~torch.isfinite(pooled).all(dim=1)).nonzero().flatten().tolist()
            raise NumericalError(
                f"DNABERT-S ({self.spec.name}, {self.dtype}) produced NaN/Inf for "
                f"{len(bad)} of {size} sequences in a batch (rows {bad[:5]})"
            )

    def describe(self) -> dict:
        """Attributes recorded in the output file (the names of docs/FORMATS.md)."""
        return {
            "model": self.spec.name,
            "model_family": FAMILY,
            "num_layers": self.model.cfg.num_layers,
            "embed_dim": self.dim,
            "pooling": "mean over all tokens including [CLS] and [SEP]",
            "truncation": self.max_tokens - 2,  # nucleotides kept ([CLS] and [SEP] added)
            "attention": alibi_kernel(
                self.device, self.dtype, self.model.head_dim, self.model.cfg.num_heads
            ),
        }


def load_dnabert_embedder(spec: EmbedderSpec, device: torch.device) -> DnabertEmbedder:
    """Build the DNABERT-S embedder a resolved spec describes (once per worker)."""
    return DnabertEmbedder(spec, device)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (``hub.sha256_file``: read once per process)."""
    from virnucpro.models.hub import sha256_file as _sha256

    return _sha256(path)


def check_folder(folder: Path, flag: str | None) -> Path:
    """Verify a DNABERT-S folder (files, config, every tensor) and return its weights file."""
    for name in ("config.json", "tokenizer.json"):
        if not (folder / name).is_file():
            raise ModelError(
                f"{flag or 'model'} {folder}: missing {name} (a DNABERT-S folder needs it)"
            )
    cfg = DnabertConfig.from_file(folder / "config.json")
    weights = find_weights(folder)
    with torch.device("meta"):
        model_state(weights, DnabertModel(cfg))  # every tensor present, with the right shape
    return weights


def _fetch_from_hub(flag: str | None) -> tuple[Path, str]:
    """The pinned hub revision from the cache (downloading it once); (folder, revision)."""
    from virnucpro.models import hub, registry

    pin = registry.dnabert_pin()
    folder = hub.fetch_files(
        pin.repo_id, pin.revision, dict(pin.files), flag=flag, model=CATALOG_NAME
    )
    return folder, pin.revision


def resolve_dnabert(
    name_or_path: str, *, precision: str = "auto", flag: str | None = "--dnabert-model"
) -> EmbedderSpec:
    """Resolve a local folder or the hub id ``zhihan1996/DNABERT-S`` to a verified spec.

    Runs once in the parent before any worker starts; the checksum is the sha256 of the
    weights file, which workers then load by name (``extra["weights_file"]``).
    """
    path = Path(name_or_path).expanduser()
    revision: str | None = None
    label = flag or "model"
    if path.is_dir():
        folder = path.resolve()
    elif name_or_path.strip().lower() in (HUB_ID.lower(), CATALOG_NAME.lower()):
        folder, revision = _fetch_from_hub(flag)
    elif path.exists():
        raise ModelError(f"{label} {name_or_path}: expected a DNABERT-S folder, not a file")
    else:
        raise ModelError(
            f"{label} {name_or_path}: no such folder (give a DNABERT-S folder with config.json, "
            f"tokenizer.json and weights, or the hub id {HUB_ID})"
        )
    weights = check_folder(folder, flag)
    return EmbedderSpec(
        family=FAMILY,
        weights=str(folder),
        name=name_or_path,
        revision=revision,
        checksum=sha256_file(weights),
        precision=precision,
        extra={"weights_file": weights.name},
    )
