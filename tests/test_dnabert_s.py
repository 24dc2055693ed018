"""DNABERT-S, natively: ALiBi, tokenizer, safe weight loading, batching and a reference.

Every test builds a tiny random DNABERT-S folder in the real file formats (config.json with
the hub's auto_map, a BPE tokenizer.json, weights under the real key names) and runs the
real loading code on it. The reference is re-implemented in this file, because
transformers' ``BertModel`` has neither ALiBi nor the gated MLP and the hub's own code needs
``trust_remote_code``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from virnucpro.errors import ModelError, NumericalError
from virnucpro.models.alibi_attention import ENV as ATTENTION_ENV
from virnucpro.models.alibi_attention import SDPA_ALIBI
from virnucpro.models.base import load_embedder
from virnucpro.models.dnabert_s import (
    HUB_ID,
    DnabertEmbedder,
    alibi_bias,
    alibi_slopes,
    load_dnabert_embedder,
    resolve_dnabert,
)
from virnucpro.models.tiny_dnabert import write_tiny_dnabert_s

CPU = torch.device("cpu")
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ORIGINAL = SHARED / "fixtures" / "original"
# SPEC 2.2: the 12-head slopes, written out
SPEC_SLOPES_12 = [2.0**-k for k in range(1, 9)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]


def random_dna(rng: np.random.Generator, n: int, alphabet: str = "ACGT") -> str:
    return "".join(rng.choice(list(alphabet), size=n))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dnabert_s(tmp_path_factory.mktemp("dnabert") / "tiny")


@pytest.fixture(scope="module")
def embedder(tiny: Path) -> DnabertEmbedder:
    return load_dnabert_embedder(resolve_dnabert(str(tiny), precision="fp32"), CPU)


@pytest.fixture(scope="module")
def seqs() -> list[str]:
    rng = np.random.default_rng(7)
    lengths = [1, 5, 37, 120, 301, 64, 250, 0, 9]
    out = [random_dna(rng, n) for n in lengths]
    out.append(random_dna(rng, 90, "ACGTN"))  # N gives [UNK] or "N" tokens
    return out


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def reference_embedding(state: dict[str, torch.Tensor], cfg: dict, ids: list[int]) -> np.ndarray:
    """Plain DNABERT-S in float64, one unpadded sequence, explicit loop over heads."""
    t = {k.removeprefix("bert."): v.double() for k, v in state.items()}
    n_heads, hid, inter = cfg["num_attention_heads"], cfg["hidden_size"], cfg["intermediate_size"]
    d, eps = hid // n_heads, cfg["layer_norm_eps"]
    assert n_heads == 12
    pos = torch.arange(len(ids), dtype=torch.float64)
    dist = (pos[:, None] - pos[None, :]).abs()
    x = (
        t["embeddings.word_embeddings.weight"][ids]
        + t["embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"], eps)
    for n in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        qkv = x @ t[p + "attention.self.Wqkv.weight"].T + t[p + "attention.self.Wqkv.bias"]
        q, k, v = qkv[:, :hid], qkv[:, hid : 2 * hid], qkv[:, 2 * hid :]
        heads = []
        for h in range(n_heads):
            cols = slice(h * d, (h + 1) * d)
            scores = q[:, cols] @ k[:, cols].T / math.sqrt(d) - SPEC_SLOPES_12[h] * dist
            probs = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
            probs = probs / probs.sum(dim=1, keepdim=True)
            heads.append(probs @ v[:, cols])
        attn = torch.cat(heads, dim=1)
        attn = (
            attn @ t[p + "attention.output.dense.weight"].T + t[p + "attention.output.dense.bias"]
        )
        x = layer_norm(
            attn + x,
            t[p + "attention.output.LayerNorm.weight"],
            t[p + "attention.output.LayerNorm.bias"],
            eps,
        )
        both = x @ t[p + "mlp.gated_layers.weight"].T
        gate, value = both[:, :inter], both[:, inter:]
        act = 0.5 * gate * (1.0 + torch.erf(gate / math.sqrt(2.0))) * value
        out = act @ t[p + "mlp.wo.weight"].T + t[p + "mlp.wo.bias"]
        x = layer_norm(out + x, t[p + "mlp.layernorm.weight"], t[p + "mlp.layernorm.bias"], eps)
    return x.mean(dim=0).numpy()


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").exists():
        return load_file(str(folder / "model.safetensors"))
    return torch.load(folder / "pytorch_model.bin", weights_only=True)


# --- ALiBi -----------------------------------------------------------------------------


def test_alibi_slopes_12_heads_match_spec() -> None:
    assert alibi_slopes(12).tolist() == SPEC_SLOPES_12


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32])
def test_alibi_slopes_power_of_two_rule(n: int) -> None:
    start = 2.0 ** (-8.0 / n)
    np.testing.assert_allclose(alibi_slopes(n).numpy(), [start ** (h + 1) for h in range(n)])
    if n == 8:
        assert alibi_slopes(8).tolist() == [2.0**-k for k in range(1, 9)]


def test_alibi_slopes_non_power_of_two_takes_even_slopes_of_double() -> None:
    # 6 heads: 4 power-of-two slopes, then slopes 0 and 2 of the 8-head set
    assert alibi_slopes(6).tolist() == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]


def test_alibi_bias_is_symmetric_and_linear_in_distance() -> None:
    bias = alibi_bias(alibi_slopes(12), 7)
    assert bias.shape == (12, 7, 7)
    for h, slope in enumerate(SPEC_SLOPES_12):
        for i in range(7):
            for j in range(7):
                assert bias[h, i, j].item() == pytest.approx(-slope * abs(i - j))


# --- tokenizer -----------------------------------------------------------------------------


def test_encode_gives_cls_tokens_sep(tiny: Path, embedder: DnabertEmbedder) -> None:
    tok = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    seq = "ACGTTGCAAGGCTTANCGATCGATCGTAGCTAGCTAGGGCAT"
    ids = embedder.encode(seq).tolist()
    assert embedder.encode(seq).dtype == np.int64
    assert ids[0] == tok.token_to_id("[CLS]") == 1
    assert ids[-1] == tok.token_to_id("[SEP]") == 2
    assert ids[1:-1] == tok.encode(seq, add_special_tokens=False).ids
    assert tok.token_to_id("[PAD]") == 3 and tok.token_to_id("[UNK]") == 0
    assert tok.token_to_id("[MASK]") == 4
    assert embedder.encode("").tolist() == [1, 2]


def test_tokenizer_without_template_still_gets_cls_sep(tmp_path: Path) -> None:
    folder = write_tiny_dnabert_s(tmp_path / "m")
    raw = json.loads((folder / "tokenizer.json").read_text())
    raw["post_processor"] = None
    (folder / "tokenizer.json").write_text(json.dumps(raw))
    assert Tokenizer.from_file(str(folder / "tokenizer.json")).encode("ACGT").ids[0] != 1
    emb = load_dnabert_embedder(resolve_dnabert(str(folder)), CPU)
    ids = emb.encode("ACGTACGT").tolist()
    assert ids[0] == 1 and ids[-1] == 2 and 1 not in ids[1:-1] and 2 not in ids[1:-1]


def test_long_input_is_cut_and_reported(tiny: Path) -> None:
    spec = resolve_dnabert(str(tiny))
    emb = load_dnabert_embedder(
        type(spec)(**{**spec.__dict__, "extra": {**spec.extra, "max_tokens": 20}}), CPU
    )
    seq = random_dna(np.random.default_rng(1), 100)
    assert emb.truncated(100) and not emb.truncated(18)
    assert len(emb.encode(seq)) <= 20
    assert emb.encode(seq).tolist() == emb.encode(seq[:18]).tolist()
    assert emb.n_tokens(400) == 20 and emb.n_tokens(40) == 12


def test_default_cap_never_cuts_virnucpro_inputs(embedder: DnabertEmbedder) -> None:
    assert not embedder.truncated(1501)
    seq = random_dna(np.random.default_rng(2), 1501)
    ids = embedder.encode(seq)
    tok = embedder.tokenizer
    assert ids[1:-1].tolist() == tok.encode(seq, add_special_tokens=False).ids


# --- numerics ------------------------------------------------------------------------------


def test_matches_independent_reference(tiny: Path, embedder: DnabertEmbedder, seqs) -> None:
    """Batched native forward == plain float64 re-implementation from the file's tensors."""
    cfg = json.loads((tiny / "config.json").read_text())
    state = read_state(tiny)
    tok = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    got = embedder.forward([embedder.encode(s) for s in seqs]).pooled["embeddings"]
    assert got.shape == (len(seqs), 48) and got.dtype == np.float32
    for row, seq in enumerate(seqs):
        want = reference_embedding(state, cfg, tok.encode(seq).ids)
        np.testing.assert_allclose(got[row], want, rtol=0, atol=1e-5)


def test_batched_equals_one_at_a_time(embedder: DnabertEmbedder, seqs) -> None:
    encoded = [embedder.encode(s) for s in seqs]
    assert len({len(e) for e in encoded}) > 5  # mixed lengths, real padding
    batched = embedder.forward(encoded).pooled["embeddings"]
    order = np.random.default_rng(3).permutation(len(encoded))
    shuffled = embedder.forward([encoded[i] for i in order]).pooled["embeddings"]
    for row, ids in enumerate(encoded):
        single = embedder.forward([ids]).pooled["embeddings"][0]
        np.testing.assert_allclose(batched[row], single, rtol=0, atol=1e-5)
    np.testing.assert_allclose(shuffled, batched[order], rtol=0, atol=1e-5)


def test_packed_equals_padded_and_reference_from_1_to_512_tokens(
    tiny: Path, embedder: DnabertEmbedder
) -> None:
    """The packed forward (the engine's) == the padded path == the float64 one-at-a-time
    reference, on one batch mixing every kind of length from 1 token to the 512-token ALiBi
    table of the hub config, equal lengths side by side included (runs of one length)."""
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["alibi_starting_size"] == 512
    state = read_state(tiny)
    rng = np.random.default_rng(11)
    lengths = [512, 511, 300, 257, 256, 256, 256, 130, 64, 63, 17, 3, 2, 2, 1, 1]
    batch = [rng.integers(0, cfg["vocab_size"], size=n).astype(np.int64) for n in lengths]
    assert embedder.packed
    packed = embedder.forward(batch).pooled["embeddings"]
    padded = embedder.forward_padded(batch).pooled["embeddings"]
    np.testing.assert_allclose(packed, padded, rtol=0, atol=1e-5)
    for row, ids in enumerate(batch):
        want = reference_embedding(state, cfg, ids.tolist())
        np.testing.assert_allclose(packed[row], want, rtol=0, atol=1e-5)
        alone = embedder.forward([ids]).pooled["embeddings"][0]
        np.testing.assert_allclose(packed[row], alone, rtol=0, atol=1e-5)


def test_packed_per_token_equals_padded(tiny: Path) -> None:
    spec = resolve_dnabert(str(tiny))
    emb = load_dnabert_embedder(type(spec)(**{**spec.__dict__, "per_token": True}), CPU)
    ids = [emb.encode("ACGTACGGCTAGC" * 7), emb.encode("ACG" * 30), emb.encode("ACG" * 30)]
    packed, padded = emb.forward(ids), emb.forward_padded(ids)
    assert [t.shape for t in packed.per_token] == [t.shape for t in padded.per_token]
    for a, b in zip(packed.per_token, padded.per_token, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_attention_kernel_is_recorded(embedder: DnabertEmbedder, monkeypatch) -> None:
    assert embedder.describe()["attention"] == SDPA_ALIBI  # CPU, fp32
    monkeypatch.setenv(ATTENTION_ENV, "no-such-kernel")
    with pytest.raises(ValueError, match=ATTENTION_ENV):
        embedder.describe()


def test_padding_content_does_not_leak(embedder: DnabertEmbedder) -> None:
    short = embedder.encode("ACGTAC")
    a = embedder.forward([short, embedder.encode("A" * 200)]).pooled["embeddings"][0]
    b = embedder.forward([short, embedder.encode("GCT" * 90)]).pooled["embeddings"][0]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_per_token_rows_are_inner_tokens(tiny: Path) -> None:
    spec = resolve_dnabert(str(tiny))
    emb = load_dnabert_embedder(type(spec)(**{**spec.__dict__, "per_token": True}), CPU)
    ids = [emb.encode("ACGTACGGCTAGC"), emb.encode("ACG" * 30)]
    out = emb.forward(ids)
    assert [t.shape for t in out.per_token] == [(len(i) - 2, 48) for i in ids]
    assert all(t.dtype == np.float32 for t in out.per_token)


def test_bf16_runs_close_to_fp32(tiny: Path, embedder: DnabertEmbedder, seqs) -> None:
    emb = load_dnabert_embedder(resolve_dnabert(str(tiny), precision="bf16"), CPU)
    assert emb.dtype == torch.bfloat16
    ids = [embedder.encode(s) for s in seqs]
    lo = emb.forward(ids).pooled["embeddings"]
    hi = embedder.forward(ids).pooled["embeddings"]
    assert lo.dtype == np.float32
    cos = (lo * hi).sum(1) / np.linalg.norm(lo, axis=1) / np.linalg.norm(hi, axis=1)
    assert cos.min() > 0.99  # bf16 keeps 8 mantissa bits; this only checks the path is sane


def test_nan_weights_raise_numerical_error(tmp_path: Path) -> None:
    folder = write_tiny_dnabert_s(tmp_path / "m")
    state = load_file(str(folder / "model.safetensors"))
    state["bert.encoder.layer.1.mlp.wo.bias"][3] = float("nan")
    save_file(state, str(folder / "model.safetensors"))
    emb = load_dnabert_embedder(resolve_dnabert(str(folder)), CPU)
    with pytest.raises(NumericalError, match="NaN/Inf"):
        emb.forward([emb.encode("ACGTACGT")])


# --- files and loading -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("prefix", [True, False])
def test_weight_files_with_real_key_names_load(
    tmp_path: Path, embedder: DnabertEmbedder, fmt: str, prefix: bool
) -> None:
    folder = write_tiny_dnabert_s(tmp_path / "m", weights_format=fmt, prefix=prefix)
    keys = list(read_state(folder))
    assert any(k.startswith("bert.") for k in keys) == prefix
    assert any("pooler." in k for k in keys) and any(k.startswith("cls.") for k in keys)
    spec = resolve_dnabert(str(folder))
    weights = folder / ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")
    assert spec.family == "dnabert_s" and spec.extra["weights_file"] == weights.name
    assert spec.checksum == hashlib.sha256(weights.read_bytes()).hexdigest()
    emb = load_embedder(spec, CPU)  # through the engine's entry point
    ids = [emb.encode("ACGTTAGC" * 9), emb.encode("GGCA")]
    want = embedder.forward(ids).pooled["embeddings"]  # same seed, same tensors
    np.testing.assert_allclose(emb.forward(ids).pooled["embeddings"], want, rtol=0, atol=1e-6)


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    folder = write_tiny_dnabert_s(tmp_path / "m", weights_format="bin")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["bert.encoder.layer.1.mlp.wo.bias"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"pytorch_model\.bin.*'encoder\.layer\.1\.mlp\.wo\.bias'"):
        resolve_dnabert(str(folder))


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    folder = write_tiny_dnabert_s(tmp_path / "m")
    state = load_file(str(folder / "model.safetensors"))
    state["bert.encoder.layer.0.mlp.gated_layers.weight"] = torch.zeros(10, 48)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match=r"model\.safetensors.*'encoder\.layer\.0\.mlp\.gated"):
        resolve_dnabert(str(folder))


def test_extra_layer_in_checkpoint_is_refused(tmp_path: Path) -> None:
    folder = write_tiny_dnabert_s(tmp_path / "m", num_layers=3)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_hidden_layers"] = 2
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"unexpected tensor 'encoder\.layer\.2\."):
        resolve_dnabert(str(folder))


class _Payload:
    """Pickles as a call to os.makedirs: proves whether unpickling ran code."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (str(self.target),))


def test_pickled_code_bin_is_refused(tmp_path: Path) -> None:
    folder = write_tiny_dnabert_s(tmp_path / "m", weights_format="bin")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    marker = tmp_path / "code_ran"
    torch.save({**state, "payload": _Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"pytorch_model\.bin: cannot load weights safely") as err:
        resolve_dnabert(str(folder))
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_config_with_bad_geometry_is_named(tmp_path: Path) -> None:
    folder = write_tiny_dnabert_s(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_attention_heads"] = 5
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"config\.json: hidden_size 48 .* 5"):
        resolve_dnabert(str(folder))
    cfg.pop("hidden_size")
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"config\.json: 'hidden_size'"):
        resolve_dnabert(str(folder))


def test_resolve_errors_name_the_flag_and_the_missing_piece(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"^--dnabert-model .*nope: no such folder"):
        resolve_dnabert(str(tmp_path / "nope"))
    folder = write_tiny_dnabert_s(tmp_path / "m")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"^--model .*: missing tokenizer\.json"):
        resolve_dnabert(str(folder), flag="--model")
    (folder / "model.safetensors").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((folder / "config.json").read_text())
    (empty / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelError, match="no DNABERT-S weights found"):
        resolve_dnabert(str(empty))


def test_custom_code_in_folder_is_never_run(tmp_path: Path) -> None:
    folder = write_tiny_dnabert_s(tmp_path / "m")
    marker = tmp_path / "custom_code_ran"
    (folder / "bert_layers.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (folder / "configuration_bert.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    emb = load_dnabert_embedder(resolve_dnabert(str(folder)), CPU)
    emb.forward([emb.encode("ACGT")])
    assert not marker.exists()


def test_hub_id_offline_names_the_file_and_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VIRNUCPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ModelError) as err:
        resolve_dnabert("zhihan1996/DNABERT-S", flag="--dnabert-model")
    msg = str(err.value)
    assert "zhihan1996/DNABERT-S" in msg and "--dnabert-model" in msg
    assert "virnucpro download --models DNABERT-S" in msg and len(msg.splitlines()) <= 4
    assert "config.json" in msg  # the first pinned file that is missing


def real_weights_spec():
    """Real DNABERT-S from $VIRNUCPRO_DNABERT_S (a folder) or the offline cache; else None."""
    folder = os.environ.get("VIRNUCPRO_DNABERT_S")
    if folder:
        return resolve_dnabert(folder, precision="fp32")
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return resolve_dnabert(HUB_ID, precision="fp32")
    except ModelError:
        return None
    finally:
        if saved is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


def read_fasta(path: Path) -> dict[str, str]:
    records: dict[str, str] = {}
    name = None
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            name = line[1:].split()[0]
            records[name] = ""
        elif name is not None:
            records[name] += line.strip()
    return records


def test_real_weights_match_the_original_outputs() -> None:
    """With the real model present locally: cosine >= 0.999 to the original's vectors."""
    spec = real_weights_spec()
    if spec is None:
        pytest.skip("real DNABERT-S weights not available (set VIRNUCPRO_DNABERT_S=folder)")
    expected = torch.load(
        ORIGINAL / "real_model_outputs" / "output_1_DNABERT_S.pt", weights_only=True
    )
    want = {row["label"]: np.asarray(row["mean_representation"]) for row in expected["data"]}
    seqs = read_fasta(ORIGINAL / "test_with_orfs_identified_nucleotide.fa")
    emb = load_dnabert_embedder(spec, CPU)
    names = sorted(want)
    got = emb.forward([emb.encode(seqs[n]) for n in names]).pooled["embeddings"]
    assert got.shape == (len(names), 768)
    for row, name in enumerate(names):
        w = want[name]
        cos = float(got[row] @ w / np.linalg.norm(got[row]) / np.linalg.norm(w))
        assert cos >= 0.999, (name, cos)
