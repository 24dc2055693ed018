"""Write a tiny random DNABERT-S folder in the real file formats (tests and offline demos).

The folder looks like the hub repo ``zhihan1996/DNABERT-S``: ``config.json`` (with the
``auto_map`` of the custom code, which virnucpro never runs), a BPE ``tokenizer.json`` built
with the ``tokenizers`` library, and the weights under the real key names, either as
``model.safetensors`` or as a plain-state-dict ``pytorch_model.bin`` (``torch.save``).
The tensors are written by key name here, independently of ``virnucpro.models.dnabert_s``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
WEIGHT_FORMATS = ("safetensors", "bin")


def tiny_dnabert_config(
    *, num_layers: int, hidden: int, heads: int, intermediate: int, vocab_size: int
) -> dict:
    """A ``config.json`` shaped like the hub's, with tiny geometry."""
    return {
        "_name_or_path": "zhihan1996/DNABERT-S",
        "alibi_starting_size": 512,
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_bert.BertConfig",
            "AutoModel": "bert_layers.BertModel",
            "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM",
            "AutoModelForSequenceClassification": "bert_layers.BertForSequenceClassification",
        },
        "classifier_dropout": None,
        "gradient_checkpointing": False,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": heads,
        "num_hidden_layers": num_layers,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "transformers_version": "4.28.0",
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def build_dna_tokenizer(vocab_size: int, seed: int = 0) -> Tokenizer:
    """Train a small BPE on random DNA; specials [UNK]=0 [CLS]=1 [SEP]=2 [PAD]=3 [MASK]=4."""
    rng = np.random.default_rng(seed)
    corpus = ["".join(rng.choice(list("ACGT"), size=300)) for _ in range(200)]
    corpus += ["ATGAAACGCATTAGCACCACCATTACCACCACCATCACCATTACCACAGGTAACGGTGCGGGCTGA"] * 20
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=list("ACGTN"),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return tok


def tiny_dnabert_state_dict(
    cfg: dict, *, seed: int = 0, prefix: bool = True, extras: bool = True
) -> dict[str, torch.Tensor]:
    """Random tensors under the real DNABERT-S key names (``bert.`` prefix optional)."""
    gen = torch.Generator().manual_seed(seed)
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]

    def rnd(*shape: int, scale: float | None = None, base: float = 0.0) -> torch.Tensor:
        # matrices default to std 1/sqrt(fan_in): O(1) activations and attention scores at any
        # width (a fixed larger std makes a deep random network chaotic: every layer then
        # amplifies rounding ~10x and batched/unbatched results diverge for no real reason)
        std = scale if scale is not None else shape[-1] ** -0.5
        return base + std * torch.randn(*shape, generator=gen)

    sd: dict[str, torch.Tensor] = {
        "embeddings.word_embeddings.weight": rnd(v, h, scale=1.0),
        "embeddings.token_type_embeddings.weight": rnd(cfg["type_vocab_size"], h, scale=1.0),
        "embeddings.LayerNorm.weight": rnd(h, scale=0.1, base=1.0),
        "embeddings.LayerNorm.bias": rnd(h, scale=0.1),
    }
    for n in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        sd[p + "attention.self.Wqkv.weight"] = rnd(3 * h, h)
        sd[p + "attention.self.Wqkv.bias"] = rnd(3 * h, scale=0.1)
        sd[p + "attention.output.dense.weight"] = rnd(h, h)
        sd[p + "attention.output.dense.bias"] = rnd(h, scale=0.1)
        sd[p + "attention.output.LayerNorm.weight"] = rnd(h, scale=0.1, base=1.0)
        sd[p + "attention.output.LayerNorm.bias"] = rnd(h, scale=0.1)
        sd[p + "mlp.gated_layers.weight"] = rnd(2 * i, h)
        sd[p + "mlp.wo.weight"] = rnd(h, i)
        sd[p + "mlp.wo.bias"] = rnd(h, scale=0.1)
        sd[p + "mlp.layernorm.weight"] = rnd(h, scale=0.1, base=1.0)
        sd[p + "mlp.layernorm.bias"] = rnd(h, scale=0.1)
    if extras:  # present in the hub checkpoint, unused for features
        sd["pooler.dense.weight"] = rnd(h, h)
        sd["pooler.dense.bias"] = rnd(h)
        sd["cls.predictions.transform.dense.weight"] = rnd(h, h)
        sd["cls.predictions.decoder.bias"] = rnd(v)
    if prefix:
        sd = {("bert." + k if not k.startswith("cls.") else k): t for k, t in sd.items()}
    return sd


def write_tiny_dnabert_s(
    folder: str | Path,
    *,
    num_layers: int = 2,
    hidden: int = 48,
    heads: int = 12,
    intermediate: int = 96,
    vocab_size: int = 96,
    seed: int = 0,
    weights_format: str = "safetensors",
    prefix: bool = True,
) -> Path:
    """Write config.json, tokenizer.json and weights of a tiny random DNABERT-S; return folder.

    ``heads=12`` exercises the non-power-of-two ALiBi slopes, like the real model.
    ``weights_format`` is ``"safetensors"`` (model.safetensors) or ``"bin"``
    (pytorch_model.bin, a plain state dict loadable with ``torch.load(weights_only=True)``).
    """
    if weights_format not in WEIGHT_FORMATS:
        raise ValueError(f"weights_format must be one of {WEIGHT_FORMATS}, not {weights_format!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_dna_tokenizer(vocab_size, seed=seed)
    tok.save(str(folder / "tokenizer.json"))
    cfg = tiny_dnabert_config(
        num_layers=num_layers,
        hidden=hidden,
        heads=heads,
        intermediate=intermediate,
        vocab_size=tok.get_vocab_size(),
    )
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    sd = tiny_dnabert_state_dict(cfg, seed=seed, prefix=prefix)
    if weights_format == "safetensors":
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(sd, folder / "pytorch_model.bin")
    return folder
