"""The VirNucPro MLP classifier and safe loading of its weight files.

Three file kinds load (detected by content, not by name):

* the ORIGINAL ``300_model.pth`` / ``500_model.pth``: a whole module pickled by
  ``torch.save(model)`` from a training script that defined ``MLPClassifier`` in ``__main__``
  (torch zip format or the legacy format);
* our own safetensors file written by :func:`save_classifier`;
* a plain state dict saved with ``torch.save(model.state_dict())``.

Pickles are read by a restricted unpickler: only the globals in ``_ALLOWED_GLOBALS`` and the
module classes in ``_MODULE_CLASSES`` resolve, the module classes resolve to inert records
that only store their attribute dict, and BUILD is allowed on those records and on
``OrderedDict`` only. Anything else is refused before it runs. torch's own weights-only
loader cannot serve here: it refuses the legacy format's module records and it forbids a
custom ``pickle_module``, so ``torch.load`` gets ours (stricter than weights-only).
"""

from __future__ import annotations

import os
import pickle
import sys
import types
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from virnucpro.errors import ModelError, NumericalError
from virnucpro.io.atomic import atomic_path

FORMAT_NAME = "virnucpro.mlp_classifier"
FORMAT_VERSION = "1"
DEFAULT_HIDDEN = 512
BN_EPS = 1e-5
PREDICT_BATCH_ROWS = 65536
CLASS_NAMES = ("others", "virus")
PUBLISHED_WIDTH = 3328  # DNABERT-S 768 + ESM-2 3B 2560


class MLPClassifier(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Dropout(0.5) -> Linear; class 0 others, 1 virus."""

    def __init__(
        self,
        input_dim: int,
        hidden: int = DEFAULT_HIDDEN,
        num_classes: int = len(CLASS_NAMES),
        *,
        bn_eps: float = BN_EPS,
    ) -> None:
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden)
        self.bn1 = nn.BatchNorm1d(hidden, eps=bn_eps)
        self.dropout = nn.Dropout(0.5)
        self.output_layer = nn.Linear(hidden, num_classes)
        self.input_dim = input_dim
        self.hidden = hidden
        self.num_classes = num_classes
        self.source = "<in-memory classifier>"  # the file it was loaded from, for messages
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for features (N, input_dim)."""
        x = F.relu(self.bn1(self.hidden_layer(x)))
        return self.output_layer(self.dropout(x))

    def predict_proba(
        self, features: np.ndarray, batch_size: int = PREDICT_BATCH_ROWS
    ) -> np.ndarray:
        """Softmax probabilities (N, num_classes), float32, computed in eval mode in fp32."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"features must be a 2-D (N, D) array, got shape {x.shape}")
        check_feature_width(self, x.shape[1], source="features given to the classifier")
        _check_finite_rows(x, self.source, "contains NaN or Inf")
        self.eval()
        weight = self.hidden_layer.weight
        out = np.empty((x.shape[0], self.num_classes), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, x.shape[0], batch_size):
                chunk = torch.from_numpy(x[start : start + batch_size])
                logits = self(chunk.to(weight.device, weight.dtype)).float()
                out[start : start + len(chunk)] = torch.softmax(logits, dim=1).cpu().numpy()
        _check_finite_rows(out, self.source, "gives NaN or Inf probabilities")
        return out


def _check_finite_rows(values: np.ndarray, source: str, what: str) -> None:
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise NumericalError(
            f"classifier {source}: feature row {row} {what} "
            f"({int((~finite).sum())} of {len(finite)} rows affected)"
        )


def check_feature_width(classifier: MLPClassifier, width: int, *, source: str) -> None:
    """Raise ModelError unless the features are as wide as the classifier's input.

    ``source`` says what the width is made of, e.g. ``"DNABERT-S 768 + ESM-2 32"``.
    """
    expected = classifier.input_dim
    if width == expected:
        return
    published = (
        f" (the published VirNucPro classifiers need DNABERT-S 768 + ESM-2 3B 2560 = "
        f"{PUBLISHED_WIDTH})"
        if expected == PUBLISHED_WIDTH
        else ""
    )
    raise ModelError(
        f"classifier {classifier.source} expects {expected}-d features, the embeddings give "
        f"{width}-d ({source}); embed with the models the classifier was trained on{published} "
        "or use a classifier trained on these features"
    )


# ---------------------------------------------------------------- our safetensors format


def save_classifier(
    model: MLPClassifier, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None
) -> Path:
    """Write ``model`` as safetensors with its geometry and format version in the metadata
    (plus ``extra_metadata``, e.g. a trained classifier's provenance)."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "input_dim": str(model.input_dim),
        "hidden": str(model.hidden),
        "num_classes": str(model.num_classes),
        "bn_eps": repr(float(model.bn1.eps)),
        **(extra_metadata or {}),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], float]:
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    if metadata.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise ModelError(
            f"classifier {path}: safetensors format {metadata['format']!r} is not {FORMAT_NAME!r}"
        )
    version = metadata.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ModelError(
            f"classifier {path}: format version {version} is not supported "
            f"(this virnucpro reads version {FORMAT_VERSION})"
        )
    state = _as_float32(tensors, path)
    for key, weight, axis in (
        ("input_dim", "hidden_layer.weight", 1),
        ("hidden", "hidden_layer.weight", 0),
        ("num_classes", "output_layer.weight", 0),
    ):
        if key in metadata and weight in state and state[weight].ndim == 2:
            if int(metadata[key]) != state[weight].shape[axis]:
                raise ModelError(
                    f"classifier {path}: metadata says {key}={metadata[key]} but the weights "
                    f"give {state[weight].shape[axis]}"
                )
    return state, float(metadata.get("bn_eps", BN_EPS))


# ---------------------------------------------------------------- restricted unpickling


class _ModuleRecord:
    """Inert stand-in for a pickled ``nn.Module``: it only keeps the attribute dict."""

    qualified_name = ""
    dump_patches = False  # read by torch's legacy loader when it compares saved source

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.qualified_name} state is not a dict")
        self.state = state


def _record_class(qualified_name: str) -> type[_ModuleRecord]:
    name = "Record_" + qualified_name.rsplit(".", 1)[-1]
    return type(name, (_ModuleRecord,), {"qualified_name": qualified_name})


_MODULE_CLASSES: dict[str, type[_ModuleRecord]] = {
    name: _record_class(name)
    for name in (
        "__main__.MLPClassifier",
        "torch.nn.modules.linear.Linear",
        "torch.nn.modules.batchnorm.BatchNorm1d",
        "torch.nn.modules.dropout.Dropout",
        "torch.nn.modules.activation.ReLU",
    )
}

_ALLOWED_GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
}


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for something outside the allow-list."""


class _RestrictedUnpickler(pickle._Unpickler):
    """Allow-listed globals and a guarded BUILD.

    Built on the pure-Python unpickler because only its opcode table can be guarded; the
    pickles here are a few kilobytes (the tensor data is read by torch, not by pickle).
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module
        full = f"{module}.{name}"
        found = _MODULE_CLASSES.get(full) or _ALLOWED_GLOBALS.get(full)
        if found is None:
            raise _RefusedGlobal(full)
        return found

    def _load_build(self) -> None:
        inst = self.stack[-2]
        if not isinstance(inst, _ModuleRecord) and type(inst) is not OrderedDict:
            raise _RefusedGlobal(f"BUILD on {type(inst).__module__}.{type(inst).__qualname__}")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


_RESTRICTED_PICKLE = types.ModuleType("virnucpro_restricted_pickle")
_RESTRICTED_PICKLE.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
_RESTRICTED_PICKLE.load = _restricted_load  # type: ignore[attr-defined]


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in archive.namelist())


def _read_torch_pickle(path: Path) -> Any:
    """Unpickle a torch file with the restricted unpickler, tensors mapped to the CPU."""
    if _is_torchscript(path):
        raise ModelError(
            f"refusing to load classifier {path}: it is a TorchScript archive, which holds code"
        )
    try:
        with warnings.catch_warnings():
            # The legacy format stores the module's source; ours differs by design.
            warnings.simplefilter("ignore", torch.serialization.SourceChangeWarning)
            warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
            return torch.load(
                path, map_location="cpu", pickle_module=_RESTRICTED_PICKLE, weights_only=False
            )
    except _RefusedGlobal as exc:
        raise ModelError(
            f"refusing to load classifier {path}: its pickle asks for {exc}, which is not on "
            "the allow-list of plain weights (loading it could run code)"
        ) from None


def _flatten_record(record: _ModuleRecord, prefix: str, out: dict[str, Any], path: Path) -> None:
    state = getattr(record, "state", {})
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers", "_modules"):
        entries = state.get(kind) or {}
        if not isinstance(entries, dict):
            raise ModelError(
                f"classifier {path}: {prefix}{kind} of the pickled module is not a dict"
            )
        for name, value in entries.items():
            if value is None or (kind == "_buffers" and name in non_persistent):
                continue
            if kind != "_modules":
                out[f"{prefix}{name}"] = value
            elif isinstance(value, _ModuleRecord):
                _flatten_record(value, f"{prefix}{name}.", out, path)
            else:
                raise ModelError(f"classifier {path}: submodule {prefix}{name} is not a module")


def _pickled_state(path: Path) -> tuple[dict[str, torch.Tensor], float]:
    """State dict and BatchNorm eps from a whole pickled module or a plain state dict."""
    obj = _read_torch_pickle(path)
    eps = BN_EPS
    if isinstance(obj, _ModuleRecord):
        if obj.qualified_name != "__main__.MLPClassifier":
            raise ModelError(
                f"classifier {path} holds a pickled {obj.qualified_name}, not an MLPClassifier"
            )
        raw: dict[str, Any] = {}
        _flatten_record(obj, "", raw, path)
        bn1 = (getattr(obj, "state", {}).get("_modules") or {}).get("bn1")
        bn1_eps = getattr(bn1, "state", {}).get("eps")
        if isinstance(bn1_eps, float):
            eps = bn1_eps
    elif isinstance(obj, dict):
        raw = dict(obj)
    else:
        raise ModelError(
            f"classifier {path} holds an object of type {type(obj).__name__}, "
            "not a module or a state dict"
        )
    return _as_float32(raw, path), eps


# ---------------------------------------------------------------- building the model


def _as_float32(raw: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelError(f"classifier {path}: entry {key!r} is not a named tensor")
        value = value.detach()
        if value.is_floating_point():
            if not torch.isfinite(value).all():
                raise ModelError(f"classifier {path}: weight {key!r} contains NaN or Inf")
            value = value.float()
        state[key] = value
    return state


def _build(state: dict[str, torch.Tensor], bn_eps: float, path: Path) -> MLPClassifier:
    """An MLPClassifier whose geometry comes from the weights' shapes."""
    for key in ("hidden_layer.weight", "output_layer.weight"):
        if key not in state or state[key].ndim != 2:
            raise ModelError(f"classifier {path} has no 2-D weight {key!r}")
    hidden, input_dim = state["hidden_layer.weight"].shape
    num_classes = state["output_layer.weight"].shape[0]
    if num_classes != len(CLASS_NAMES):
        raise ModelError(
            f"classifier {path} has {num_classes} outputs; VirNucPro needs 2 (others, virus)"
        )
    model = MLPClassifier(input_dim, hidden, num_classes, bn_eps=bn_eps)
    expected = model.state_dict()
    state = dict(state)
    state.setdefault("bn1.num_batches_tracked", torch.tensor(0, dtype=torch.long))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelError(
            f"classifier {path} does not match the VirNucPro MLP: "
            f"missing {missing or 'nothing'}, unexpected {unexpected or 'nothing'}"
        )
    for key, want in expected.items():
        if state[key].shape != want.shape:
            raise ModelError(
                f"classifier {path}: weight {key!r} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(want.shape)}"
            )
    model.load_state_dict(state, strict=True)
    model.source = str(path)
    return model.eval()


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < size <= path.stat().st_size - 8


def load_classifier(path: str | os.PathLike) -> MLPClassifier:
    """Load an original pickled classifier, our safetensors file or a plain state dict."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"classifier file {path} does not exist")
    try:
        if _is_safetensors(path):
            state, eps = _read_safetensors(path)
        else:
            state, eps = _pickled_state(path)
    except ModelError:
        raise
    except Exception as exc:  # a corrupt or foreign file: report it on one line
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelError(f"cannot read classifier {path}: {detail}") from None
    return _build(state, eps, path)


# ---------------------------------------------------------------- original-format writer


class _OriginalMLP(nn.Module):
    """The training script's module: same attributes, order and forward as the original."""

    def __init__(self, input_dim: int, hidden_dim: int, num_class: int) -> None:
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.hidden_layer(x)))
        return self.output_layer(self.dropout(x))


@contextmanager
def _registered_as_main_mlp(cls: type) -> Iterator[None]:
    """Make ``cls`` pickle as ``__main__.MLPClassifier``; undo everything afterwards."""
    main = sys.modules["__main__"]
    missing = object()
    saved = (cls.__module__, cls.__qualname__, main.__dict__.get("MLPClassifier", missing))
    cls.__module__, cls.__qualname__ = "__main__", "MLPClassifier"
    main.MLPClassifier = cls  # type: ignore[attr-defined]
    try:
        yield
    finally:
        cls.__module__, cls.__qualname__ = saved[0], saved[1]
        if saved[2] is missing:
            del main.MLPClassifier  # type: ignore[attr-defined]
        else:
            main.MLPClassifier = saved[2]  # type: ignore[attr-defined]


def write_original_format_classifier(
    path: str | os.PathLike,
    input_dim: int,
    *,
    hidden: int = DEFAULT_HIDDEN,
    seed: int = 0,
    legacy: bool = False,
) -> Path:
    """Write a random classifier exactly as the original did: ``torch.save(model)`` of a
    ``__main__.MLPClassifier`` (zip format, or the pre-1.6 format with ``legacy=True``).

    BatchNorm running statistics are random so a test can tell they were loaded. For tests
    and the offline demo; not thread-safe (it briefly registers a class in ``__main__``).
    """
    path = Path(path)
    gen = torch.Generator().manual_seed(seed)
    model = _OriginalMLP(input_dim, hidden, len(CLASS_NAMES))
    with torch.no_grad():
        nn.init.xavier_uniform_(model.hidden_layer.weight, generator=gen)
        nn.init.xavier_uniform_(model.output_layer.weight, generator=gen)
        for bias in (model.hidden_layer.bias, model.output_layer.bias, model.bn1.bias):
            bias.copy_(torch.randn(bias.shape, generator=gen) * 0.1)
        model.bn1.weight.copy_(torch.rand(hidden, generator=gen) + 0.5)
        model.bn1.running_mean.copy_(torch.randn(hidden, generator=gen) * 0.5)
        model.bn1.running_var.copy_(torch.rand(hidden, generator=gen) * 1.5 + 0.5)
        model.bn1.num_batches_tracked.fill_(1000)
    model.eval()
    with _registered_as_main_mlp(_OriginalMLP), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(model, f, _use_new_zipfile_serialization=not legacy)
    return path
