"""ESM-2: our native model on mixed-length batches against independent references.

References run one sequence at a time in fp32: ``transformers.EsmModel`` (sdpa) loaded from
the same Hugging Face folder, and fair-esm's own ``ESM2`` built by fair-esm's own checkpoint
loader from the same ``.pt`` file. Tiny random models are written in the real file formats.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from virnucpro.errors import InputError, ModelError, NumericalError
from virnucpro.models.base import EmbedderSpec, load_embedder
from virnucpro.models.esm2 import (
    ALPHABET,
    MASK_IDX,
    MAX_RESIDUES,
    POOLING,
    encode_protein,
    load_esm2_embedder,
)
from virnucpro.models.packing import attention_kernel, mean_matrix, pack
from virnucpro.models.tiny import write_tiny_esm2_fairesm, write_tiny_esm2_hf

transformers = pytest.importorskip("transformers")
AMINO = "ACDEFGHIKLMNPQRSTVWY"
CPU = torch.device("cpu")
TOL = 1e-5  # absolute, fp32


def _random_protein(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(AMINO) for _ in range(n))


def _token_arrays() -> list[np.ndarray]:
    """1 residue, >1022 residues, unknown letters, lower case, a <mask>, and mixed lengths."""
    rng = random.Random(7)
    seqs = ["M", _random_protein(rng, 1100), "MKTJ*AYIakqrX", "BZUOX.-W", "AC"]
    seqs += [_random_protein(rng, n) for n in (5, 17, 33, 64, 120, 257, 400)]
    arrays = [encode_protein(s) for s in seqs]
    masked = encode_protein(_random_protein(rng, 40))
    masked[[3, 11, 12]] = MASK_IDX
    return arrays + [masked]


TOKENS = _token_arrays()
SHORT = [ids for ids in TOKENS if len(ids) < 200]  # for variants of an already-checked path


def _batched(embedder, arrays, sizes=(3, 5, 1, 4)) -> dict:
    """Run shuffled arrays through ``embedder`` in batches of mixed lengths; restore order."""
    order = list(range(len(arrays)))
    random.Random(3).shuffle(order)
    pooled: dict[str, np.ndarray] = {}
    per_token: list = [None] * len(arrays)
    start, k = 0, 0
    while start < len(order):
        idx = order[start : start + sizes[k % len(sizes)]]
        out = embedder.forward([arrays[i] for i in idx])
        for name, values in out.pooled.items():
            assert values.dtype == np.float32 and values.shape == (len(idx), embedder.dim)
            pooled.setdefault(name, np.zeros((len(arrays), embedder.dim), np.float32))[idx] = values
        by_output = out.per_token_by_output()
        for j, i in enumerate(idx):
            per_token[i] = None if by_output is None else {n: b[j] for n, b in by_output.items()}
        start, k = start + len(idx), k + 1
    return {"pooled": pooled, "per_token": per_token}


def _hf_reference(folder: Path):
    model = transformers.EsmModel.from_pretrained(
        str(folder), add_pooling_layer=False, attn_implementation="sdpa", dtype=torch.float32
    )
    return model.eval()


def _hf_hidden(model, ids: np.ndarray) -> tuple:
    with torch.no_grad():
        out = model(torch.from_numpy(ids)[None], output_hidden_states=True)
    return out.hidden_states, out.last_hidden_state


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("esm2")
    return {
        "hf": write_tiny_esm2_hf(root / "hf", num_layers=2, hidden=32, heads=4, seed=0),
        "hf_mlm": write_tiny_esm2_hf(root / "mlm", seed=0, masked_lm=True),
        "hf_direct": write_tiny_esm2_hf(root / "direct", seed=0, use_transformers=False),
        "pt": write_tiny_esm2_fairesm(root / "esm2_t2_tiny.pt", seed=0),
        "pt_direct": write_tiny_esm2_fairesm(root / "esm2_t2_direct.pt", seed=0, use_fairesm=False),
    }


def _spec(weights: Path, **kw) -> EmbedderSpec:
    return EmbedderSpec(family="esm2", weights=str(weights), name="tiny", **kw)


# --------------------------------------------------------------------------- encoding


def test_alphabet_and_encoding_match_fair_esm():
    esm = pytest.importorskip("esm")
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    assert tuple(alphabet.all_toks) == ALPHABET
    convert = alphabet.get_batch_converter()
    for seq in ("M", "MKTAYIAKQRQISFVKSHFSRQ", "BZUOX.-LAGV"):
        _, _, expected = convert([("x", seq)])
        assert encode_protein(seq).tolist() == expected[0].tolist()


def test_encoding_unknowns_truncation_and_empty():
    ids = encode_protein("MJ*ak")
    assert ids.dtype == np.int64
    assert ids.tolist() == [0, ALPHABET.index("M"), 3, 3, 3, 3, 2]
    long = encode_protein("A" * 1100)
    assert len(long) == MAX_RESIDUES + 2 and long[0] == 0 and long[-1] == 2
    with pytest.raises(InputError):
        encode_protein("")


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("kind", ["hf", "hf_mlm", "hf_direct"])
def test_hf_folder_matches_transformers_on_mixed_batches(models, kind):
    tokens = TOKENS if kind == "hf" else SHORT  # EsmForMaskedLM layout / directly written keys
    embedder = load_esm2_embedder(_spec(models[kind]), CPU)
    assert embedder.output_names == ["embeddings"] and embedder.dim == 32
    ours = _batched(embedder, tokens)["pooled"]["embeddings"]
    reference = _hf_reference(models[kind])
    for i, ids in enumerate(tokens):
        _, last = _hf_hidden(reference, ids)
        expected = last[0, 1:-1].mean(0).numpy()
        np.testing.assert_allclose(ours[i], expected, rtol=0, atol=TOL)


def test_several_layers_and_per_token_match_transformers(models):
    embedder = load_esm2_embedder(_spec(models["hf"], layers=(0, 1, -1), per_token=True), CPU)
    names = ["embeddings_layer_0", "embeddings_layer_1", "embeddings_layer_2"]
    assert embedder.output_names == names
    got = _batched(embedder, TOKENS)
    reference = _hf_reference(models["hf"])
    for i, ids in enumerate(TOKENS):
        hidden, last = _hf_hidden(reference, ids)
        assert torch.equal(hidden[-1], last)  # the last layer is after the final layer norm
        for name, layer in zip(names, (hidden[0], hidden[1], last), strict=True):
            expected = layer[0, 1:-1].mean(0).numpy()
            np.testing.assert_allclose(got["pooled"][name][i], expected, rtol=0, atol=TOL)
        assert list(got["per_token"][i]) == names  # every requested layer, as fair-esm's
        for name, layer in zip(names, (hidden[0], hidden[1], last), strict=True):
            rows = got["per_token"][i][name]
            assert rows.dtype == np.float32 and rows.shape == (len(ids) - 2, 32)
            np.testing.assert_allclose(rows, layer[0, 1:-1].numpy(), rtol=0, atol=TOL)


def test_equal_length_runs_in_a_packed_batch_match_transformers(models):
    """Length-sorted batches hold runs of equal lengths: each run is one attention call."""
    rng = random.Random(11)
    lengths = [60, 60, 60, 21, 21, 9, 9, 9, 9, 1]
    batch = [encode_protein(_random_protein(rng, n)) for n in lengths]
    packed = pack(batch, CPU)
    assert packed.runs == ((0, 3, 62), (186, 2, 23), (232, 4, 11), (276, 1, 3))
    assert packed.cu_seqlens.tolist()[-1] == packed.tokens.numel() == 279
    embedder = load_esm2_embedder(_spec(models["hf"], per_token=True), CPU)
    out = embedder.forward(batch)
    reference = _hf_reference(models["hf"])
    for i, ids in enumerate(batch):
        _, last = _hf_hidden(reference, ids)
        expected = last[0, 1:-1].mean(0).numpy()
        np.testing.assert_allclose(out.pooled["embeddings"][i], expected, rtol=0, atol=TOL)
        np.testing.assert_allclose(out.per_token[i], last[0, 1:-1].numpy(), rtol=0, atol=TOL)


def test_mean_matrix_averages_inner_tokens_of_each_sequence():
    packed = pack([np.arange(5), np.arange(3), np.arange(4)], CPU)
    hidden = torch.arange(12, dtype=torch.float32)[:, None]
    means = (mean_matrix(packed, skip_first=1, skip_last=1) @ hidden).squeeze(1)
    assert means.tolist() == [2.0, 6.0, 9.5]
    assert attention_kernel(CPU, torch.float32, 8) == "sdpa-per-length"


def test_fairesm_checkpoint_matches_fair_esm_own_model(models):
    esm = pytest.importorskip("esm")
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(models["pt"], weights_only=True)
    with pytest.warns(UserWarning, match="Regression weights not found"):
        reference, _ = esm.pretrained.load_model_and_alphabet_core("esm2_t2_tiny", data)
    reference.eval()
    embedder = load_esm2_embedder(_spec(models["pt"], layers=(1, -1)), CPU)
    got = _batched(embedder, TOKENS)["pooled"]
    for i, ids in enumerate(TOKENS):
        with torch.no_grad():
            reps = reference(torch.from_numpy(ids)[None], repr_layers=[1, 2])["representations"]
        for layer in (1, 2):
            expected = reps[layer][0, 1:-1].mean(0).numpy()
            actual = got[f"embeddings_layer_{layer}"][i]
            np.testing.assert_allclose(actual, expected, rtol=0, atol=TOL)


def test_both_loaders_and_both_writers_give_the_same_vectors(models):
    vectors = {
        kind: _batched(load_esm2_embedder(_spec(models[kind]), CPU), SHORT)["pooled"]
        for kind in ("hf", "hf_mlm", "hf_direct", "pt", "pt_direct")
    }
    for kind, pooled in vectors.items():
        np.testing.assert_allclose(
            pooled["embeddings"], vectors["hf"]["embeddings"], rtol=0, atol=TOL, err_msg=kind
        )


def test_checkpoint_without_rotary_frequencies(models, tmp_path):
    def drop(state):
        for key in [k for k in state if k.endswith("inv_freq")]:
            del state[key]

    folder = _edited_copy(models["hf"], tmp_path / "no_inv_freq", drop)
    a = load_esm2_embedder(_spec(folder), CPU).forward(SHORT).pooled["embeddings"]
    b = load_esm2_embedder(_spec(models["hf"]), CPU).forward(SHORT).pooled["embeddings"]
    np.testing.assert_array_equal(a, b)


def test_fairesm_args_namespace_layout(models, tmp_path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(models["pt"], weights_only=True)
    args = argparse.Namespace(layers=2, embed_dim=32, attention_heads=4, token_dropout=True)
    path = tmp_path / "args_style.pt"
    torch.save({"model": data["model"], "args": args}, path)
    a = load_esm2_embedder(_spec(path), CPU).forward(SHORT[:4]).pooled["embeddings"]
    b = load_esm2_embedder(_spec(models["pt"]), CPU).forward(SHORT[:4]).pooled["embeddings"]
    np.testing.assert_array_equal(a, b)


def test_sharded_bin_folder_loads_the_same_weights(models, tmp_path):
    state = load_file(str(models["hf"] / "model.safetensors"))
    keys = sorted(state)
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(models["hf"] / "config.json", folder / "config.json")
    weight_map = {}
    for n, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :]), start=1):
        name = f"pytorch_model-0000{n}-of-00002.bin"
        torch.save({k: state[k] for k in part}, folder / name)
        weight_map.update({k: name for k in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    a = load_esm2_embedder(_spec(folder), CPU).forward(SHORT[:5]).pooled["embeddings"]
    b = load_esm2_embedder(_spec(models["hf"]), CPU).forward(SHORT[:5]).pooled["embeddings"]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_runs_on_cpu(models, precision):
    embedder = load_esm2_embedder(_spec(models["hf"], precision=precision), CPU)
    assert embedder.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert embedder.describe()["precision"] == precision
    half = _batched(embedder, SHORT)["pooled"]["embeddings"]
    full = _batched(load_esm2_embedder(_spec(models["hf"]), CPU), SHORT)["pooled"]["embeddings"]
    assert half.dtype == np.float32 and np.isfinite(half).all()
    cosine = (half * full).sum(1) / np.linalg.norm(half, axis=1) / np.linalg.norm(full, axis=1)
    assert cosine.min() > 0.99  # a different precision, not a tolerance on the fp32 path


def test_nan_in_weights_raises_numerical_error(models, tmp_path):
    folder = tmp_path / "nan"
    shutil.copytree(models["hf"], folder)
    state = load_file(str(folder / "model.safetensors"))
    key = next(k for k in state if k.endswith("layer.0.intermediate.dense.weight"))
    state[key][0, 0] = float("nan")
    save_file(state, str(folder / "model.safetensors"))
    embedder = load_esm2_embedder(_spec(folder), CPU)
    batch = [encode_protein("MKTAYIAKQR"), encode_protein("MKT")]
    with pytest.raises(NumericalError, match=r"batch of 2 sequences \(longest 12 tokens\)"):
        embedder.forward(batch)


def test_empty_batch_keeps_the_vector_width(models):
    out = load_esm2_embedder(_spec(models["hf"], layers=(1, 2)), CPU).forward([])
    assert {k: v.shape for k, v in out.pooled.items()} == {
        "embeddings_layer_1": (0, 32),
        "embeddings_layer_2": (0, 32),
    }


def test_describe_and_interface(models):
    spec = _spec(models["hf"], revision="abc", checksum="123", layers=(-1,))
    embedder = load_embedder(spec, CPU)
    assert embedder.n_tokens(5) == 7 and embedder.n_tokens(5000) == MAX_RESIDUES + 2
    assert embedder.truncated(MAX_RESIDUES + 1) and not embedder.truncated(MAX_RESIDUES)
    attrs = embedder.describe()
    assert attrs["pooling"] == POOLING == "mean over residues (BOS/EOS/padding excluded)"
    assert attrs["layers"] == [2] and attrs["num_layers"] == 2 and attrs["truncation"] == 1022
    assert attrs["precision"] == "fp32" and attrs["model"] == "tiny"
    # revision and checksum are the file's model_revision / model_checksum (engine/report.py)
    assert "revision" not in attrs and "checksum" not in attrs


# --------------------------------------------------------------------------- refusals


def _touch_marker(path: str) -> None:
    Path(path).write_text("code ran")


class _Evil:
    """Unpickling this object calls ``_touch_marker``: arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch_marker, (self.marker,))


def test_pickled_callable_is_refused_and_never_run(models, tmp_path):
    from virnucpro.models.hub import resolve_esm2

    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(models["pt"], weights_only=True)
    marker = tmp_path / "marker.txt"
    path = tmp_path / "esm2_evil.pt"
    torch.save({"model": data["model"], "cfg": {"model": _Evil(marker)}}, path)
    torch.load(path, weights_only=False)  # proves the file really runs code when unpickled
    assert marker.read_text() == "code ran"
    marker.unlink()
    with pytest.raises(ModelError, match="refused to load") as excinfo:
        load_esm2_embedder(_spec(path), CPU)
    assert str(path) in str(excinfo.value) and "_touch_marker" in str(excinfo.value)
    assert "\n" not in str(excinfo.value)
    with pytest.raises(ModelError, match="refused to load"):
        resolve_esm2(str(path))
    assert not marker.exists()


def _edited_copy(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"))
    return dst


def test_missing_tensor_names_file_and_key(models, tmp_path):
    def drop(state):
        del state["encoder.layer.1.output.dense.bias"]

    folder = _edited_copy(models["hf"], tmp_path / "m", drop)
    with pytest.raises(ModelError) as excinfo:
        load_esm2_embedder(_spec(folder), CPU)
    message = str(excinfo.value)
    assert str(folder / "model.safetensors") in message
    assert "encoder.layer.1.output.dense.bias" in message and "\n" not in message


def test_unexpected_tensor_names_file_and_key(models, tmp_path):
    def add(state):
        state["encoder.layer.0.attention.self.extra.weight"] = torch.zeros(2)

    folder = _edited_copy(models["hf"], tmp_path / "u", add)
    with pytest.raises(ModelError, match="unexpected tensor") as excinfo:
        load_esm2_embedder(_spec(folder), CPU)
    assert "encoder.layer.0.attention.self.extra.weight" in str(excinfo.value)
    assert str(folder / "model.safetensors") in str(excinfo.value)


def test_config_geometry_is_checked_against_the_weights(models, tmp_path):
    folder = tmp_path / "geometry"
    shutil.copytree(models["hf"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"for 3 layers \(the weights hold 2 layers\)"):
        load_esm2_embedder(_spec(folder), CPU)
    config.update(num_hidden_layers=2, num_attention_heads=5)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="not 5 heads"):
        load_esm2_embedder(_spec(folder), CPU)


@pytest.mark.parametrize("layers", [(3,), (-4,), (2, 3)])
def test_bad_layer_requests_are_refused(models, layers):
    with pytest.raises(ModelError, match="layer"):
        load_esm2_embedder(_spec(models["hf"], layers=layers), CPU)
