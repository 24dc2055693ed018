"""ESM-2 protein embeddings: a native model, safe weight loaders and the ``Embedder``.

The model follows fair-esm's ``ESM2`` exactly (pre-LN blocks, rotary attention with the query
scaled before rotation, exact GELU, token-dropout scaling of 0.88 at inference, final
``emb_layer_norm_after``); attention runs through ``scaled_dot_product_attention`` with a key
padding mask, rotary in fp32. Weights come from a Hugging Face ``EsmModel``/``EsmForMaskedLM``
folder or a fair-esm ``.pt`` checkpoint, read without executing pickled code.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.errors import InputError, ModelError, NumericalError
from virnucpro.models.base import (
    Embedder,
    EmbedderSpec,
    EmbedOutput,
    resolve_dtype,
    uninitialised_embedding,
)
from virnucpro.models.packing import (
    Attention,
    PackedBatch,
    attention_for,
    attention_kernel,
    mean_matrix,
    pack,
    to_host,
)

ALPHABET: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y",
    "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
)  # fmt: skip
CLS_IDX, PAD_IDX, EOS_IDX, UNK_IDX, MASK_IDX = 0, 1, 2, 3, 32
MAX_RESIDUES = 1022  # trained context is 1024 tokens including <cls> and <eos>
MASK_RATIO_TRAIN = 0.15 * 0.8
POOLING = "mean over residues (BOS/EOS/padding excluded)"

_LOOKUP = np.full(256, UNK_IDX, dtype=np.int64)
for _i, _tok in enumerate(ALPHABET):
    if len(_tok) == 1:
        _LOOKUP[ord(_tok)] = _i


def strip_stop(seq: str) -> str:
    """``seq`` without one trailing ``*`` (a stop codon, not a residue); ``*`` alone is kept."""
    return seq[:-1] if len(seq) > 1 and seq.endswith("*") else seq


def encode_protein(seq: str) -> np.ndarray:
    """``<cls>`` + residues (first 1022; unknown or lower-case letters -> ``<unk>``) + ``<eos>``."""
    if not seq:
        raise InputError("empty protein sequence: there is nothing to embed")
    raw = seq[:MAX_RESIDUES].encode("ascii", errors="replace")
    ids = _LOOKUP[np.frombuffer(raw, dtype=np.uint8)]
    return np.concatenate(([CLS_IDX], ids, [EOS_IDX])).astype(np.int64)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Esm2Config:
    """Geometry of an ESM-2 model."""

    num_layers: int
    embed_dim: int
    heads: int
    ffn_dim: int
    vocab_size: int = len(ALPHABET)
    token_dropout: bool = True
    layer_norm_eps: float = 1e-5

    def check(self, source: Path) -> None:
        """Refuse geometries this implementation cannot run."""
        problems = []
        if self.num_layers < 1 or self.embed_dim < 1 or self.heads < 1 or self.ffn_dim < 1:
            problems.append("layers, dim, heads and FFN size must be positive")
        elif self.embed_dim % self.heads or (self.embed_dim // self.heads) % 2:
            problems.append(f"dim {self.embed_dim} is not {self.heads} heads of an even size")
        if self.vocab_size != len(ALPHABET):
            problems.append(f"vocabulary of {self.vocab_size} tokens, expected {len(ALPHABET)}")
        if problems:
            raise ModelError(f"{source}: unsupported ESM-2 configuration: {'; '.join(problems)}")

    def resolve_layer(self, layer: int) -> int:
        """fair-esm numbering: 0 = embeddings, i = after block i, -1 = last (after final LN)."""
        resolved = layer + self.num_layers + 1 if layer < 0 else layer
        if not 0 <= resolved <= self.num_layers:
            raise ModelError(
                f"ESM-2 layer {layer} does not exist: the model has {self.num_layers} layers "
                f"(use 0..{self.num_layers}, or -1 for the last)"
            )
        return resolved


def resolve_layers(cfg: Esm2Config, layers: Sequence[int]) -> tuple[int, ...]:
    """Non-negative layer numbers in the order asked; a layer named twice is kept once (the
    parent says so: ``api.resolve_model``)."""
    if not layers:
        raise ModelError("no ESM-2 layer requested")
    resolved = tuple(cfg.resolve_layer(int(layer)) for layer in layers)
    return tuple(dict.fromkeys(resolved))


def distinct_layers(layers: Sequence[int], num_layers: int) -> tuple[tuple[int, ...], list[str]]:
    """The requested layers without repeats (first naming kept), and one note per repeat."""
    kept: dict[int, int] = {}
    notes = []
    for layer in layers:
        number = layer + num_layers + 1 if layer < 0 else layer
        if number in kept:
            same = "" if kept[number] == layer else f" (as {kept[number]})"
            notes.append(f"layer {layer} is named twice{same}; it is computed and stored once")
        else:
            kept[number] = layer
    return tuple(kept.values()), notes


# --------------------------------------------------------------------------- model


def _rotate(qk: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotary positions for queries and keys together, in fp32, returned in their own dtype.

    ``qk`` is (N, 2, heads, head_dim) with each head's channels interleaved as
    (x1_0, x2_0, x1_1, x2_1, ...) (see ``interleave_rotary_channels``), so that fair-esm's
    ``x * cos + rotate_half(x) * sin`` is one complex product with ``rope`` (N, 1, 1, head_dim/2).
    """
    pairs = qk.float().contiguous().unflatten(-1, (-1, 2))
    rotated = torch.view_as_real(torch.view_as_complex(pairs) * rope)
    return rotated.flatten(-2).to(qk.dtype)


def interleave_rotary_channels(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder a q or k projection's output rows per head from halves to interleaved pairs.

    fair-esm rotates channel j with channel j + head_dim/2; interleaving them makes the rotation
    a complex product. Queries and keys are permuted alike, so attention scores are unchanged.
    """
    head_dim = tensor.shape[0] // heads
    within = torch.arange(head_dim).view(2, head_dim // 2).t().reshape(-1)
    order = (torch.arange(heads)[:, None] * head_dim + within).reshape(-1)
    return tensor[order.to(tensor.device)]


class Esm2Block(nn.Module):
    """One pre-LN transformer block; q, k and v are one fused projection."""

    def __init__(self, cfg: Esm2Config, device: torch.device | str | None = None) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.heads = cfg.heads
        self.scaling = (dim // cfg.heads) ** -0.5
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps, device=device)
        self.qkv = nn.Linear(dim, 3 * dim, device=device)
        self.out_proj = nn.Linear(dim, dim, device=device)
        self.final_layer_norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps, device=device)
        self.fc1 = nn.Linear(dim, cfg.ffn_dim, device=device)
        self.fc2 = nn.Linear(cfg.ffn_dim, dim, device=device)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, attend: Attention) -> torch.Tensor:
        """``x`` is (N, C): the batch's sequences packed back to back."""
        tokens, dim = x.shape
        qkv = self.qkv(self.self_attn_layer_norm(x)).view(tokens, 3, self.heads, -1)
        qk = _rotate(qkv[:, :2], rope)
        attn = attend(qk[:, 0], qk[:, 1], qkv[:, 2])  # scaled by head_dim ** -0.5
        x = x + self.out_proj(attn.reshape(tokens, dim))
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class Esm2Model(nn.Module):
    """ESM-2 encoder returning the hidden states of the requested layers."""

    def __init__(self, cfg: Esm2Config, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.head_dim = cfg.embed_dim // cfg.heads
        self.embed_tokens = uninitialised_embedding(
            cfg.vocab_size, cfg.embed_dim, padding_idx=PAD_IDX, device=device
        )
        self.layers = nn.ModuleList(Esm2Block(cfg, device) for _ in range(cfg.num_layers))
        self.emb_layer_norm_after = nn.LayerNorm(
            cfg.embed_dim, eps=cfg.layer_norm_eps, device=device
        )
        # Plain fp32 attribute, not a buffer, so that casting the model never rounds it.
        self.inv_freq = default_inv_freq(self.head_dim)
        self._rope: torch.Tensor | None = None

    def set_inv_freq(self, inv_freq: torch.Tensor) -> None:
        """Use the checkpoint's rotary frequencies (kept in fp32)."""
        self.inv_freq = inv_freq.detach().float().cpu()
        self._rope = None

    def _rotary_table(self, length: int, device: torch.device) -> torch.Tensor:
        """exp(i * position * inv_freq) in complex64, shaped (length, 1, 1, head_dim/2)."""
        rope = self._rope
        if rope is None or rope.shape[0] < length or rope.device != device:
            size = max(length, 64 if rope is None else rope.shape[0])
            positions = torch.arange(size, device=device, dtype=torch.float32)
            angles = torch.outer(positions, self.inv_freq.to(device))
            rope = self._rope = torch.polar(torch.ones_like(angles), angles)[:, None, None, :]
        return rope[:length]

    def forward(self, packed: PackedBatch, repr_layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Hidden states (N, C) of the packed tokens by fair-esm layer number.

        Layer 0 is the scaled embeddings; the last layer is taken after the final layer norm.
        """
        wanted = set(repr_layers)
        tokens = packed.tokens
        x = self.embed_tokens(tokens)
        if self.cfg.token_dropout:
            masked = tokens.eq(MASK_IDX)
            x = x.masked_fill(masked.unsqueeze(-1), 0.0)
            counts = torch.zeros(len(packed.lengths), device=tokens.device)
            counts.index_add_(0, packed.seq_ids, masked.float())  # small integers: exact
            lengths = torch.tensor(packed.lengths, device=tokens.device, dtype=torch.float32)
            scale = (1.0 - MASK_RATIO_TRAIN) / (1.0 - counts / lengths)
            x = (x.float() * scale[packed.seq_ids, None]).to(x.dtype)
        out: dict[int, torch.Tensor] = {}
        if 0 in wanted:
            out[0] = x
        rope = self._rotary_table(packed.max_len, tokens.device)[packed.positions]
        attend = attention_for(packed, x.dtype, self.head_dim)
        last = len(self.layers)
        for index, layer in enumerate(self.layers, start=1):
            if len(out) == len(wanted):
                break
            x = layer(x, rope, attend)
            if index == last:
                x = self.emb_layer_norm_after(x)
            if index in wanted:
                out[index] = x
        return out


def default_inv_freq(head_dim: int) -> torch.Tensor:
    """Rotary inverse frequencies 1 / 10000^(2i/d), as fair-esm and transformers compute them."""
    steps = torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu")
    return 1.0 / (10000 ** (steps / head_dim))


# --------------------------------------------------------------------------- loading


def param_shapes(cfg: Esm2Config) -> dict[str, tuple[int, ...]]:
    """Expected tensors in fair-esm naming (q, k, v separate)."""
    d, f = cfg.embed_dim, cfg.ffn_dim
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (cfg.vocab_size, d)}
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (d, d)
            shapes[f"{p}self_attn.{proj}.bias"] = (d,)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes[f"{p}{norm}.weight"] = (d,)
            shapes[f"{p}{norm}.bias"] = (d,)
        shapes.update({f"{p}fc1.weight": (f, d), f"{p}fc1.bias": (f,)})
        shapes.update({f"{p}fc2.weight": (d, f), f"{p}fc2.bias": (d,)})
    shapes.update({"emb_layer_norm_after.weight": (d,), "emb_layer_norm_after.bias": (d,)})
    return shapes


_HF_LAYER = {
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.out_proj",
    "attention.LayerNorm": "self_attn_layer_norm",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
    "LayerNorm": "final_layer_norm",
}
_HF_IGNORED = re.compile(r"^(lm_head\.|contact_head\.|pooler\.|embeddings\.position_ids$)")
_HF_KEY = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
_FAIR_IGNORED = re.compile(r"^(lm_head\.|contact_head\.)")
# transformers writes (and old checkpoints hold) LayerNorm parameters as gamma/beta.
_LEGACY_NORM = re.compile(r"\.(gamma|beta)$")
_INV_FREQ = re.compile(r"(^|\.)(rotary_embeddings|rot_emb)\.inv_freq$")


def _legacy_norm_name(match: re.Match) -> str:
    return ".weight" if match.group(1) == "gamma" else ".bias"


def hf_to_fairesm_name(key: str) -> str | None:
    """fair-esm name of a Hugging Face ``EsmModel`` key (``esm.`` prefix removed), or None."""
    if key == "embeddings.word_embeddings.weight":
        return "embed_tokens.weight"
    if key.startswith("encoder.emb_layer_norm_after."):
        return key[len("encoder.") :]
    match = _HF_KEY.match(key)
    if match and match.group(2) in _HF_LAYER:
        return f"layers.{match.group(1)}.{_HF_LAYER[match.group(2)]}.{match.group(3)}"
    return None


def fairesm_to_hf_name(name: str) -> str:
    """Inverse of ``hf_to_fairesm_name`` (used to write Hugging Face files)."""
    if name == "embed_tokens.weight":
        return "embeddings.word_embeddings.weight"
    if name.startswith("emb_layer_norm_after."):
        return "encoder." + name
    _, index, rest = name.split(".", 2)
    module, kind = rest.rsplit(".", 1)
    hf_module = {v: k for k, v in _HF_LAYER.items()}[module]
    return f"encoder.layer.{index}.{hf_module}.{kind}"


def _torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)`` allowing only ``argparse.Namespace`` beyond tensors."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"'{found.group(1)}'" if found else "an object"
        raise ModelError(
            f"{path}: refused to load: it would run {what}, which is not allowed "
            "(only tensors, plain containers and argparse.Namespace are accepted)"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({first})") from None


def _read_tensor_file(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of one weights file; safetensors are read straight onto ``device``."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=device)
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None
    data = _torch_load(path)
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelError(f"{path}: expected a plain state dict of tensors")
    return data


def hf_weight_files(folder: Path) -> list[Path]:
    """The weight file(s) of a Hugging Face folder: safetensors first, shards via the index."""
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ModelError(f"{folder / index}: unreadable shard index ({exc})") from None
            shards = [folder / name for name in sorted(set(weight_map.values()))]
            for shard in shards:
                if not shard.is_file():
                    raise ModelError(f"{shard}: shard named by {index} is missing")
            return shards
    raise ModelError(
        f"{folder}: no model.safetensors or pytorch_model.bin (nor a sharded index) in this folder"
    )


def read_hf_config(folder: Path) -> Esm2Config:
    """Geometry from a Hugging Face ``config.json`` (ESM-2: rotary, no embedding LN)."""
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: missing (not a Hugging Face model folder)") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable ({exc})") from None
    if raw.get("model_type", "esm") != "esm":
        raise ModelError(f"{path}: model_type is {raw.get('model_type')!r}, not 'esm'")
    unsupported = []
    if raw.get("position_embedding_type", "absolute") != "rotary":
        unsupported.append("positions are not rotary (ESM-1 models are not supported)")
    if raw.get("emb_layer_norm_before"):
        unsupported.append("emb_layer_norm_before is set (ESM-1b, not ESM-2)")
    if raw.get("is_folding_model"):
        unsupported.append("this is an ESMFold model")
    if raw.get("hidden_act", "gelu") != "gelu":
        unsupported.append(f"hidden_act is {raw.get('hidden_act')!r}")
    if (
        raw.get("pad_token_id", PAD_IDX) != PAD_IDX
        or raw.get("mask_token_id", MASK_IDX) != MASK_IDX
    ):
        unsupported.append("pad/mask token ids differ from the ESM alphabet")
    if unsupported:
        raise ModelError(f"{path}: unsupported ESM model: {'; '.join(unsupported)}")
    try:
        cfg = Esm2Config(
            num_layers=int(raw["num_hidden_layers"]),
            embed_dim=int(raw["hidden_size"]),
            heads=int(raw["num_attention_heads"]),
            ffn_dim=int(raw["intermediate_size"]),
            vocab_size=int(raw["vocab_size"]),
            token_dropout=bool(raw.get("token_dropout", False)),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: missing or invalid field {exc}") from None
    cfg.check(path)
    return cfg


def _first(values: dict, *names: str) -> object:
    return next((values[n] for n in names if values.get(n) is not None), None)


def _namespace_config(data: dict, path: Path) -> Esm2Config:
    """Geometry from a fair-esm checkpoint's ``cfg['model']`` / ``cfg`` / ``args`` Namespace."""
    candidates = []
    cfg = data.get("cfg")
    if isinstance(cfg, dict):
        candidates.append(cfg.get("model"))
    candidates += [cfg, data.get("args")]
    for ns in candidates:
        if not isinstance(ns, argparse.Namespace):
            continue
        values = vars(ns)
        layers = _first(values, "encoder_layers", "layers", "num_layers")
        dim = _first(values, "encoder_embed_dim", "embed_dim")
        heads = _first(values, "encoder_attention_heads", "attention_heads")
        if layers is None or dim is None or heads is None:
            continue
        result = Esm2Config(
            num_layers=int(layers),
            embed_dim=int(dim),
            heads=int(heads),
            ffn_dim=4 * int(dim),  # fair-esm's ESM2 always uses 4 * dim
            token_dropout=bool(values.get("token_dropout", True)),
        )
        result.check(path)
        return result
    raise ModelError(
        f"{path}: no model configuration (cfg['model'] or args with layers, dim and heads)"
    )


def read_fairesm_config(path: Path) -> Esm2Config:
    """Geometry of a fair-esm ``.pt`` checkpoint (its tensors are memory-mapped, not read)."""
    data = _torch_load(path)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ModelError(f"{path}: not a fair-esm checkpoint (no 'model' state dict)")
    return _namespace_config(data, path)


def read_esm2_config(weights: Path) -> Esm2Config:
    """Geometry of a Hugging Face folder or a fair-esm ``.pt`` file."""
    if weights.is_dir():
        return read_hf_config(weights)
    if weights.is_file():
        return read_fairesm_config(weights)
    raise ModelError(f"{weights}: no such ESM-2 model folder or file")


def _canonical(
    raw: dict[str, tuple[torch.Tensor, Path]], cfg: Esm2Config, where: Path, hf: bool
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Map checkpoint keys to fair-esm names; any missing or unexpected tensor is an error."""
    state: dict[str, torch.Tensor] = {}
    inv_freq = None
    expected = param_shapes(cfg)
    for key, (tensor, source) in raw.items():
        if _INV_FREQ.search(key):
            inv_freq = tensor if inv_freq is None else inv_freq
            continue
        if hf:
            key = key[len("esm.") :] if key.startswith("esm.") else key
            if _HF_IGNORED.match(key):
                continue
            name = hf_to_fairesm_name(_LEGACY_NORM.sub(_legacy_norm_name, key))
        else:
            if _FAIR_IGNORED.match(key):
                continue
            name = key
        if name is None or name not in expected:
            raise ModelError(f"{source}: unexpected tensor {key!r} for an ESM-2 model")
        if tuple(tensor.shape) != expected[name]:
            raise ModelError(
                f"{source}: tensor {key!r} has shape {tuple(tensor.shape)}, expected "
                f"{expected[name]} for {cfg.num_layers} layers of dim {cfg.embed_dim}"
            )
        state[name] = tensor
    missing = [name for name in expected if name not in state]
    if missing:
        layer_ids = {int(n.split(".")[1]) for n in state if n.startswith("layers.")}
        held = f" (the weights hold {len(layer_ids)} layers)" if layer_ids else ""
        shown = fairesm_to_hf_name(missing[0]) if hf else missing[0]
        raise ModelError(
            f"{where}: missing tensor {shown!r} for {cfg.num_layers} layers{held}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    return state, inv_freq


def load_esm2_weights(
    weights: Path, device: str = "cpu"
) -> tuple[Esm2Config, dict[str, torch.Tensor], torch.Tensor | None]:
    """Config, fair-esm-named state dict and checkpoint rotary frequencies (if stored).

    Safetensors files are read straight onto ``device`` (no host copy of the whole model).
    """
    if weights.is_dir():
        cfg = read_hf_config(weights)
        raw = {}
        files = hf_weight_files(weights)
        for file in files:
            raw.update({k: (v, file) for k, v in _read_tensor_file(file, device).items()})
        state, inv_freq = _canonical(raw, cfg, files[0] if len(files) == 1 else weights, hf=True)
        return cfg, state, inv_freq
    if not weights.is_file():
        raise ModelError(f"{weights}: no such ESM-2 model folder or file")
    data = _torch_load(weights)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ModelError(f"{weights}: not a fair-esm checkpoint (no 'model' state dict)")
    cfg = _namespace_config(data, weights)
    prefix = re.compile(r"^(encoder\.sentence_encoder\.|encoder\.)")
    raw = {prefix.sub("", k): (v, weights) for k, v in data["model"].items()}
    if not all(isinstance(v, torch.Tensor) for v, _ in raw.values()):
        raise ModelError(f"{weights}: the 'model' entry holds something other than tensors")
    state, inv_freq = _canonical(raw, cfg, weights, hf=False)
    return cfg, state, inv_freq


def build_esm2_model(
    cfg: Esm2Config,
    state: dict[str, torch.Tensor],
    inv_freq: torch.Tensor | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Esm2Model:
    """Materialise the model on ``device`` in ``dtype`` without an fp32 CPU copy first."""
    with torch.device("meta"):
        model = Esm2Model(cfg)

    def put(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype)

    fused: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if ".self_attn.q_proj." in name or ".self_attn.k_proj." in name:
            continue
        if ".self_attn.v_proj." in name:
            head, kind = name.split(".self_attn.v_proj.")
            q, k, v = (put(state[f"{head}.self_attn.{p}_proj.{kind}"]) for p in "qkv")
            q, k = (interleave_rotary_channels(t, cfg.heads) for t in (q, k))
            fused[f"{head}.qkv.{kind}"] = torch.cat([q, k, v])
        elif ".self_attn.out_proj." in name:
            fused[name.replace(".self_attn.out_proj.", ".out_proj.")] = put(tensor)
        else:
            fused[name] = put(tensor)
    model.load_state_dict(fused, strict=True, assign=True)
    if inv_freq is None:
        inv_freq = default_inv_freq(cfg.embed_dim // cfg.heads)
    elif tuple(inv_freq.shape) != (cfg.embed_dim // cfg.heads // 2,):
        raise ModelError(f"rotary frequencies of shape {tuple(inv_freq.shape)} do not fit")
    model.set_inv_freq(inv_freq)
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------- embedder


class Esm2Embedder(Embedder):
    """Mean ESM-2 vectors over residue positions for one or several layers."""

    packed = True

    def __init__(self, model: Esm2Model, spec: EmbedderSpec, device: torch.device) -> None:
        self.model = model
        self.spec = spec
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self.dim = model.cfg.embed_dim
        self.layers = resolve_layers(model.cfg, spec.layers)
        if len(self.layers) == 1:
            self.output_names = ["embeddings"]
        else:
            self.output_names = [f"embeddings_layer_{layer}" for layer in self.layers]

    def residues(self, seq: str) -> str:
        """One trailing ``*`` (a stop codon, as Prodigal writes on every gene) is dropped."""
        return strip_stop(seq)

    def encode(self, seq: str) -> np.ndarray:
        return encode_protein(seq)

    def n_tokens(self, length: int) -> int:
        return min(length, MAX_RESIDUES) + 2

    def truncated(self, length: int) -> bool:
        return length > MAX_RESIDUES

    def forward(self, batch: list[np.ndarray]) -> EmbedOutput:
        return self.forward_prepared(self.prepare(batch))

    def prepare(self, batch: list[np.ndarray]) -> PackedBatch | None:
        """The batch packed on the device (None for an empty batch)."""
        if not batch:
            return None
        if min(len(ids) for ids in batch) < 3:
            raise InputError("an encoded protein needs <cls>, at least one residue and <eos>")
        return pack(batch, self.device)

    def forward_prepared(self, packed: PackedBatch | None) -> EmbedOutput:
        if packed is None:
            empty = {name: np.zeros((0, self.dim), np.float32) for name in self.output_names}
            return EmbedOutput(empty, [] if self.spec.per_token else None)
        lengths = list(packed.lengths)
        with torch.inference_mode():
            hidden = self.model(packed, self.layers)
            weights = mean_matrix(packed, skip_first=1, skip_last=1)  # residues only
            pooled = {
                name: weights @ hidden[layer].float()
                for name, layer in zip(self.output_names, self.layers, strict=True)
            }
            arrays = to_host(pooled)  # one wait for the device per batch
            if not all(np.isfinite(a).all() for a in arrays.values()):
                raise NumericalError(
                    f"ESM-2 produced NaN/Inf for a batch of {len(lengths)} sequences "
                    f"(longest {max(lengths)} tokens) in {_precision_name(self.dtype)}"
                )
            per_token = None
            if self.spec.per_token:  # every requested layer, as fair-esm's extract does
                starts = packed.starts()
                per_token = {}
                for name, layer in zip(self.output_names, self.layers, strict=True):
                    rows = hidden[layer].float().cpu().numpy()
                    spans = zip(starts, lengths, strict=True)
                    per_token[name] = [rows[s + 1 : s + n - 1].copy() for s, n in spans]
                if len(per_token) == 1:
                    per_token = per_token[self.output_names[0]]
        return EmbedOutput(arrays, per_token)

    def describe(self) -> dict:
        attrs = {
            "model": self.spec.name,
            "model_family": "esm2",
            "num_layers": self.model.cfg.num_layers,
            "embed_dim": self.dim,
            "layers": list(self.layers),
            "pooling": POOLING,
            "precision": _precision_name(self.dtype),
            "truncation": MAX_RESIDUES,
            "attention": attention_kernel(self.device, self.dtype, self.model.head_dim),
            "token_dropout": self.model.cfg.token_dropout,
        }
        return {key: value for key, value in attrs.items() if value is not None}


def _precision_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def load_esm2_embedder(spec: EmbedderSpec, device: torch.device) -> Esm2Embedder:
    """Load the weights a resolved spec points at and build the embedder on ``device``."""
    cfg, state, inv_freq = load_esm2_weights(Path(spec.weights), str(device))
    resolve_layers(cfg, spec.layers)
    dtype = resolve_dtype(spec.precision, device)
    model = build_esm2_model(cfg, state, inv_freq, device, dtype)
    del state
    return Esm2Embedder(model, spec, device)


__all__ = [
    "ALPHABET",
    "MAX_RESIDUES",
    "POOLING",
    "Esm2Config",
    "Esm2Embedder",
    "Esm2Model",
    "build_esm2_model",
    "encode_protein",
    "load_esm2_embedder",
    "load_esm2_weights",
    "read_esm2_config",
    "resolve_layers",
]
