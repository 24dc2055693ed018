"""The VirNucPro MLP classifier: original pickled files, safetensors, state dicts, refusals."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from virnucpro.errors import ModelError, NumericalError
from virnucpro.models.classifier import (
    MLPClassifier,
    check_feature_width,
    load_classifier,
    save_classifier,
    write_original_format_classifier,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_OUTPUTS = SHARED / "fixtures" / "original" / "real_model_outputs"
DIM, HIDDEN = 24, 16

# What a training / prediction script of the original does: MLPClassifier is defined in
# __main__ (copied from the original train.py), trained a little (weights and BatchNorm
# statistics move), saved whole with torch.save(model); files are read back with a plain
# torch.load, exactly like the original prediction.py, and evaluated in eval mode.
ORIGINAL_SCRIPT = """
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class MLPClassifier(nn.Module):
    def __init__(self, input_dim, hidden_dim, num_class):
        super(MLPClassifier, self).__init__()

        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)

        self.output_layer = nn.Linear(hidden_dim, num_class)

        self.dropout = nn.Dropout(0.5)
        self.init_weights()

    def init_weights(self):
        nn.init.xavier_uniform_(self.hidden_layer.weight)
        nn.init.xavier_uniform_(self.output_layer.weight)

    def forward(self, x):
        x = self.hidden_layer(x)
        x = self.bn1(x)
        x = F.relu(x)
        x = self.dropout(x)
        x = self.output_layer(x)
        return x


def probabilities(model, x):
    model.eval()
    with torch.no_grad():
        return F.softmax(model(torch.from_numpy(x)), dim=1).numpy()


work = Path(sys.argv[1])
x = np.load(work / "features.npy")
torch.manual_seed(0)
model = MLPClassifier(x.shape[1], int(sys.argv[2]), 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
model.train()
for _ in range(5):
    batch = torch.randn(64, x.shape[1]) * 2 + 1
    loss = F.cross_entropy(model(batch), torch.randint(0, 2, (64,)))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
model.eval()
torch.save(model, work / "script_zip.pth")
torch.save(model, work / "script_legacy.pth", _use_new_zipfile_serialization=False)
np.save(work / "script.npy", probabilities(model, x))
for path in sorted(work.glob("writer_*.pth")):
    np.save(path.with_suffix(".npy"), probabilities(torch.load(path, weights_only=False), x))
"""


def _features(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, dim)) * 2 + 1).astype(np.float32)


def _random_classifier(dim: int = DIM, hidden: int = HIDDEN, seed: int = 0) -> MLPClassifier:
    torch.manual_seed(seed)
    model = MLPClassifier(dim, hidden)
    with torch.no_grad():
        model.bn1.running_mean.normal_(0, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
    return model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# ---------------------------------------------------------------- original format


@pytest.fixture(scope="module")
def original_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Writer files plus a real original-style script run over them (one subprocess)."""
    work = tmp_path_factory.mktemp("original")
    np.save(work / "features.npy", _features(50))
    write_original_format_classifier(work / "writer_zip.pth", DIM, hidden=HIDDEN, seed=3)
    write_original_format_classifier(
        work / "writer_legacy.pth", DIM, hidden=HIDDEN, seed=3, legacy=True
    )
    script = work / "train_like_original.py"
    script.write_text(ORIGINAL_SCRIPT)
    subprocess.run(
        [sys.executable, str(script), str(work), str(HIDDEN)],
        check=True,
        capture_output=True,
        cwd=work,
        timeout=300,
    )
    return work


@pytest.mark.parametrize(
    ("model_file", "reference"),
    [
        ("writer_zip.pth", "writer_zip.npy"),
        ("writer_legacy.pth", "writer_legacy.npy"),
        ("script_zip.pth", "script.npy"),
        ("script_legacy.pth", "script.npy"),
    ],
)
def test_original_pickled_module_matches_the_original_code(
    original_run: Path, model_file: str, reference: str
) -> None:
    classifier = load_classifier(original_run / model_file)
    assert (classifier.input_dim, classifier.hidden, classifier.num_classes) == (DIM, HIDDEN, 2)
    assert classifier.source == str(original_run / model_file)
    expected = np.load(original_run / reference)
    got = classifier.predict_proba(np.load(original_run / "features.npy"))
    assert got.dtype == np.float32 and got.shape == (50, 2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_training_script_statistics_are_loaded(original_run: Path) -> None:
    """The script's BatchNorm statistics moved during training and come back as saved."""
    zipped = load_classifier(original_run / "script_zip.pth")
    legacy = load_classifier(original_run / "script_legacy.pth")
    _assert_same_state(zipped, legacy)
    assert int(zipped.bn1.num_batches_tracked) == 5
    assert not torch.allclose(zipped.bn1.running_mean, torch.zeros(HIDDEN))


def test_writer_batchnorm_statistics_matter(tmp_path: Path) -> None:
    path = write_original_format_classifier(tmp_path / "m.pth", DIM, hidden=HIDDEN, seed=1)
    classifier = load_classifier(path)
    x = _features(20)
    loaded = classifier.predict_proba(x)
    classifier.bn1.reset_running_stats()
    assert np.abs(classifier.predict_proba(x) - loaded).max() > 1e-3


def test_writer_leaves_main_untouched(tmp_path: Path) -> None:
    main = sys.modules["__main__"]
    before = main.__dict__.get("MLPClassifier", None)
    write_original_format_classifier(tmp_path / "m.pth", DIM, hidden=HIDDEN)
    assert main.__dict__.get("MLPClassifier", None) is before
    with zipfile.ZipFile(tmp_path / "m.pth") as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"__main__\nMLPClassifier" in pickled


def _relocate_to_cuda(data: bytes) -> bytes:
    """Mark every storage as saved on cuda:0, as the original's GPU-trained files are."""
    cpu, cuda = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"
    assert cpu in data
    return data.replace(cpu, cuda)


def test_gpu_saved_files_load_on_cpu(tmp_path: Path) -> None:
    zipped = write_original_format_classifier(tmp_path / "z.pth", DIM, hidden=HIDDEN, seed=2)
    legacy = write_original_format_classifier(
        tmp_path / "l.pth", DIM, hidden=HIDDEN, seed=2, legacy=True
    )
    with zipfile.ZipFile(zipped) as archive:
        records = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(tmp_path / "z_cuda.pth", "w", zipfile.ZIP_STORED) as archive:
        for name, data in records.items():
            archive.writestr(name, _relocate_to_cuda(data) if name.endswith("data.pkl") else data)
    (tmp_path / "l_cuda.pth").write_bytes(_relocate_to_cuda(legacy.read_bytes()))
    reference = load_classifier(zipped)
    for path in (tmp_path / "z_cuda.pth", tmp_path / "l_cuda.pth"):
        _assert_same_state(load_classifier(path), reference)


def test_published_geometry_on_real_features(tmp_path: Path) -> None:
    merged = torch.load(REAL_OUTPUTS / "output_1_merged.pt", weights_only=True)
    features = merged["data"].numpy()
    classifier = load_classifier(write_original_format_classifier(tmp_path / "m.pth", 3328))
    assert (classifier.input_dim, classifier.hidden, classifier.num_classes) == (3328, 512, 2)
    check_feature_width(classifier, features.shape[1], source="DNABERT-S 768 + ESM-2 2560")
    probs = classifier.predict_proba(features)
    assert probs.shape == (4, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-6)


@pytest.mark.skipif(
    not os.environ.get("VIRNUCPRO_REAL_CLASSIFIER_500"),
    reason="set VIRNUCPRO_REAL_CLASSIFIER_500 to a local 500_model.pth",
)
def test_real_500_model_reproduces_the_original_predictions() -> None:
    classifier = load_classifier(os.environ["VIRNUCPRO_REAL_CLASSIFIER_500"])
    merged = torch.load(REAL_OUTPUTS / "output_1_merged.pt", weights_only=True)
    rows = [
        line.split("\t")
        for line in (REAL_OUTPUTS / "prediction_results.txt").read_text().splitlines()[1:]
    ]
    assert [r[0] for r in rows] == list(merged["ids"])
    probs = classifier.predict_proba(merged["data"].numpy())
    expected = np.array([[float(r[2]), float(r[3])] for r in rows], dtype=np.float32)
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-5)  # their GPU vs our CPU
    assert [("virus" if p[1] > p[0] else "others") for p in probs] == [r[1] for r in rows]


# ---------------------------------------------------------------- our formats


def test_safetensors_round_trip(tmp_path: Path) -> None:
    original = load_classifier(write_original_format_classifier(tmp_path / "m.pth", DIM, seed=4))
    path = save_classifier(original, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["format"] == "virnucpro.mlp_classifier"
    assert metadata["format_version"] == "1"
    assert (metadata["input_dim"], metadata["hidden"]) == (str(DIM), "512")
    reloaded = load_classifier(path)
    _assert_same_state(reloaded, original)
    assert reloaded.bn1.eps == original.bn1.eps
    x = _features(30)
    np.testing.assert_array_equal(reloaded.predict_proba(x), original.predict_proba(x))
    assert not list(tmp_path.glob(".m.safetensors*"))  # no temporary file left behind


def test_safetensors_with_an_unknown_format_version_is_refused(tmp_path: Path) -> None:
    model = _random_classifier()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "v9.safetensors"), metadata={"format_version": "9"})
    with pytest.raises(ModelError, match=r"v9\.safetensors: format version 9"):
        load_classifier(tmp_path / "v9.safetensors")


@pytest.mark.parametrize("legacy", [False, True])
def test_plain_state_dict(tmp_path: Path, legacy: bool) -> None:
    model = _random_classifier(seed=5)
    path = tmp_path / "state.pt"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    loaded = load_classifier(path)
    _assert_same_state(loaded, model)
    x = _features(40)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))


def test_predict_proba_batches_and_empty_input() -> None:
    model = _random_classifier(seed=6)
    x = _features(100)
    whole = model.predict_proba(x)
    np.testing.assert_allclose(model.predict_proba(x, batch_size=7), whole, rtol=0, atol=1e-6)
    np.testing.assert_allclose(whole.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    assert model.predict_proba(np.zeros((0, DIM), np.float32)).shape == (0, 2)
    model.train()  # predict_proba always runs in eval mode (no dropout, running statistics)
    np.testing.assert_array_equal(model.predict_proba(x), whole)


# ---------------------------------------------------------------- refusals


class _SystemCall:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


class _Exec:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple:
        return (exec, (self.code,))


class _TrojanMLP(nn.Module):
    """Looks like the original module; one submodule is a payload."""

    def __init__(self, payload: object) -> None:
        super().__init__()
        self.hidden_layer = nn.Linear(DIM, HIDDEN)
        self.bn1 = nn.BatchNorm1d(HIDDEN)
        self.output_layer = nn.Linear(HIDDEN, 2)
        self._modules["dropout"] = payload  # type: ignore[assignment]


SAVE_VARIANTS = {
    "zip": {},
    "legacy": {"_use_new_zipfile_serialization": False},
    "zip-protocol4": {"pickle_protocol": 4},
}


def _assert_refused(path: Path, marker: Path, global_name: str) -> None:
    with pytest.raises(ModelError) as info:
        load_classifier(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and global_name in message and "refusing" in message
    assert not marker.exists()


@pytest.mark.parametrize("variant", SAVE_VARIANTS)
def test_pickle_calling_os_system_is_refused(tmp_path: Path, variant: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save(_SystemCall(f"touch {marker}"), path, **SAVE_VARIANTS[variant])
    _assert_refused(path, marker, f"{os.system.__module__}.system")


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")
@pytest.mark.parametrize("variant", SAVE_VARIANTS)
def test_payload_inside_an_original_looking_module_is_refused(
    tmp_path: Path, variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    trojan = type("MLPClassifier", (_TrojanMLP,), {"__module__": "__main__"})
    monkeypatch.setattr(sys.modules["__main__"], "MLPClassifier", trojan, raising=False)
    path = tmp_path / "trojan.pth"
    torch.save(trojan(_Exec(f"open({str(marker)!r}, 'w').close()")), path, **SAVE_VARIANTS[variant])
    _assert_refused(path, marker, "builtins.exec")


def _legacy_container(path: Path, main_pickle: bytes) -> Path:
    """A legacy-format torch file whose main pickle is ``main_pickle`` (no storages)."""
    with open(path, "wb") as f:
        for header in (torch.serialization.MAGIC_NUMBER, torch.serialization.PROTOCOL_VERSION, {}):
            pickle.dump(header, f, protocol=2)
        f.write(main_pickle)
        pickle.dump([], f, protocol=2)
    return path


def _call_pickle(module: str, name: str, argument: str) -> bytes:
    """Hand-made pickle: module.name(argument)."""
    arg = argument.encode()
    head = b"\x80\x02c" + f"{module}\n{name}\n".encode()
    return head + b"X" + len(arg).to_bytes(4, "little") + arg + b"\x85R."


@pytest.mark.parametrize(
    ("module", "name", "command"),
    [
        ("posix", "system", "touch {marker}"),
        ("__builtin__", "eval", "open({marker!r}, 'w').close()"),
        ("subprocess", "getoutput", "touch {marker}"),
        ("torch", "load", "{marker}"),
    ],
)
def test_crafted_globals_are_refused(tmp_path: Path, module: str, name: str, command: str) -> None:
    marker = tmp_path / "pwned"
    argument = command.format(marker=str(marker))
    path = _legacy_container(tmp_path / "crafted.pth", _call_pickle(module, name, argument))
    shown = "builtins" if module == "__builtin__" else module
    _assert_refused(path, marker, f"{shown}.{name}")


def test_build_on_an_allowed_function_is_refused(tmp_path: Path) -> None:
    """BUILD may only fill module records: no setting attributes on torch's functions."""
    tamper = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x08\x00\x00\x00tamperedK\x01sb."
    path = _legacy_container(tmp_path / "tamper.pth", tamper)
    with pytest.raises(ModelError, match="BUILD on builtins.function"):
        load_classifier(path)
    assert not hasattr(torch._utils._rebuild_tensor_v2, "tampered")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(DIM, 2)), str(path))
    with pytest.raises(ModelError, match="TorchScript archive"):
        load_classifier(path)


def test_other_module_classes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "sequential.pth"
    torch.save(nn.Sequential(nn.Linear(DIM, HIDDEN), nn.Linear(HIDDEN, 2)), path)
    _assert_refused(path, tmp_path / "none", "torch.nn.modules.container.Sequential")


# ---------------------------------------------------------------- bad files and inputs


def test_width_mismatch_message(tmp_path: Path) -> None:
    classifier = load_classifier(write_original_format_classifier(tmp_path / "500.pth", 3328))
    check_feature_width(classifier, 3328, source="DNABERT-S 768 + ESM-2 2560")
    with pytest.raises(ModelError) as info:
        check_feature_width(classifier, 800, source="DNABERT-S 768 + ESM-2 32")
    message = str(info.value)
    assert message.startswith(f"classifier {tmp_path / '500.pth'} expects 3328-d features")
    assert "the embeddings give 800-d (DNABERT-S 768 + ESM-2 32)" in message
    assert "ESM-2 3B 2560" in message and "\n" not in message
    with pytest.raises(ModelError, match="expects 3328-d features, the embeddings give 10-d"):
        classifier.predict_proba(np.zeros((3, 10), np.float32))


def test_non_finite_features_name_the_row() -> None:
    x = _features(10)
    x[7, 3] = np.nan
    with pytest.raises(NumericalError, match="feature row 7 contains NaN or Inf"):
        _random_classifier().predict_proba(x)


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_classifier(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"this is not a model file at all")
    with pytest.raises(ModelError, match=r"cannot read classifier .*junk\.pth") as info:
        load_classifier(tmp_path / "junk.pth")
    assert "\n" not in str(info.value)


def test_state_dict_that_is_not_the_mlp(tmp_path: Path) -> None:
    state = _state(_random_classifier())
    del state["bn1.running_var"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(ModelError, match=r"missing \['bn1.running_var'\]"):
        load_classifier(tmp_path / "partial.pt")
    torch.save(_state(MLPClassifier(DIM, HIDDEN, 3)), tmp_path / "three.pt")
    with pytest.raises(ModelError, match="has 3 outputs; VirNucPro needs 2"):
        load_classifier(tmp_path / "three.pt")
    state = _state(_random_classifier())
    state["output_layer.bias"][0] = float("inf")
    torch.save(state, tmp_path / "inf.pt")
    with pytest.raises(ModelError, match="'output_layer.bias' contains NaN or Inf"):
        load_classifier(tmp_path / "inf.pt")
