"""Tiny random models written in the real file formats, for tests and the offline check.

Each writer produces exactly the layout the real loaders read (a Hugging Face model folder, a
fair-esm ``.pt`` checkpoint, ...). Values are random but deterministic for a given seed and
large enough (O(1) activations) that a wrong formula shows up as a real difference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

ESM_VOCAB_SIZE = 33


# --------------------------------------------------------------------------- ESM-2


def tiny_esm2_config(num_layers: int, hidden: int, heads: int) -> dict:
    """The ``config.json`` of an ESM-2 ``EsmModel`` of this geometry (real ESM-2 settings)."""
    return {
        "architectures": ["EsmModel"],
        "model_type": "esm",
        "vocab_size": ESM_VOCAB_SIZE,
        "hidden_size": hidden,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": 1026,
        "position_embedding_type": "rotary",
        "layer_norm_eps": 1e-5,
        "emb_layer_norm_before": False,
        "token_dropout": True,
        "pad_token_id": 1,
        "mask_token_id": 32,
        "initializer_range": 0.02,
    }


def tiny_esm2_tensors(num_layers: int, hidden: int, heads: int, seed: int) -> dict:
    """Random ESM-2 weights in fair-esm naming (``layers.N.self_attn.q_proj.weight``, ...)."""
    from virnucpro.models.esm2 import Esm2Config, param_shapes

    cfg = Esm2Config(num_layers=num_layers, embed_dim=hidden, heads=heads, ffn_dim=4 * hidden)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in param_shapes(cfg).items():
        noise = torch.randn(shape, generator=gen)
        if "layer_norm" in name:
            value = 1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise
        elif name.endswith("bias"):
            value = 0.1 * noise
        elif name == "embed_tokens.weight":
            value = noise
        else:
            value = noise / shape[1] ** 0.5
        tensors[name] = value.contiguous()
    return tensors


def _hf_direct_state(num_layers: int, hidden: int, heads: int, seed: int) -> dict:
    """The tensors ``EsmModel(add_pooling_layer=False).save_pretrained`` writes, built directly."""
    from virnucpro.models.esm2 import default_inv_freq, fairesm_to_hf_name

    state = {
        fairesm_to_hf_name(name): tensor
        for name, tensor in tiny_esm2_tensors(num_layers, hidden, heads, seed).items()
    }
    state["rotary_embeddings.inv_freq"] = default_inv_freq(hidden // heads)
    gen = torch.Generator().manual_seed(seed + 1)
    state["contact_head.regression.weight"] = torch.randn(1, num_layers * heads, generator=gen)
    state["contact_head.regression.bias"] = torch.randn(1, generator=gen)
    return state


def write_tiny_esm2_hf(
    folder: str | Path,
    *,
    num_layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    seed: int = 0,
    masked_lm: bool = False,
    use_transformers: bool = True,
) -> Path:
    """Write a Hugging Face ESM-2 folder (``config.json`` + ``model.safetensors``).

    With transformers installed the folder is saved by ``EsmModel`` (or ``EsmForMaskedLM``,
    keys under ``esm.`` plus ``lm_head.*``) itself; otherwise the same keys are written
    directly with safetensors (``masked_lm`` then only adds the ``esm.`` prefix).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_esm2_config(num_layers, hidden, heads)
    if use_transformers:
        try:
            import transformers
        except ImportError:
            use_transformers = False
    if use_transformers:
        _save_with_transformers(transformers, folder, config, seed, masked_lm)
        return folder
    from safetensors.torch import save_file

    state = _hf_direct_state(num_layers, hidden, heads, seed)
    if masked_lm:
        state = {f"esm.{key}": value for key, value in state.items()}
        config["architectures"] = ["EsmForMaskedLM"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def _save_with_transformers(
    transformers: object, folder: Path, config: dict, seed: int, masked_lm: bool
) -> None:
    from virnucpro.models.esm2 import fairesm_to_hf_name

    esm_config = transformers.EsmConfig(**{k: v for k, v in config.items() if k != "model_type"})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if masked_lm:
            model = transformers.EsmForMaskedLM(esm_config)
        else:
            model = transformers.EsmModel(esm_config, add_pooling_layer=False)
    prefix = "esm." if masked_lm else ""
    tensors = tiny_esm2_tensors(
        config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"], seed
    )
    state = {prefix + fairesm_to_hf_name(name): value for name, value in tensors.items()}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"transformers EsmModel lacks {result.unexpected_keys}")
    model.save_pretrained(str(folder))


def write_tiny_esm2_fairesm(
    path: str | Path,
    *,
    num_layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    seed: int = 0,
    use_fairesm: bool = True,
) -> Path:
    """Write a fair-esm ESM-2 checkpoint: ``{"model": encoder.sentence_encoder.* state, "cfg"}``.

    The layout is what ``esm.pretrained.load_model_and_alphabet_local`` reads: the state dict
    under ``encoder.sentence_encoder.`` (LM head under ``encoder.lm_head.``) and the geometry
    in ``cfg["model"]``, an ``argparse.Namespace``. Built from fair-esm's own ``ESM2`` when
    it is installed, else the encoder tensors are written directly.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = tiny_esm2_tensors(num_layers, hidden, heads, seed)
    if use_fairesm:
        try:
            from esm.model.esm2 import ESM2
        except ImportError:
            use_fairesm = False
    if use_fairesm:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ESM2(num_layers, hidden, heads, alphabet="ESM-1b", token_dropout=True)
        result = model.load_state_dict(tensors, strict=False)
        if result.unexpected_keys:
            raise RuntimeError(f"fair-esm ESM2 lacks {result.unexpected_keys}")
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("contact_head.")}
    else:
        from virnucpro.models.esm2 import default_inv_freq

        state = dict(tensors)
        for i in range(num_layers):
            state[f"layers.{i}.self_attn.rot_emb.inv_freq"] = default_inv_freq(hidden // heads)
    model_state = {
        (f"encoder.{k}" if k.startswith("lm_head.") else f"encoder.sentence_encoder.{k}"): v
        for k, v in state.items()
    }
    cfg = argparse.Namespace(
        encoder_layers=num_layers,
        encoder_embed_dim=hidden,
        encoder_ffn_embed_dim=4 * hidden,
        encoder_attention_heads=heads,
        token_dropout=True,
    )
    torch.save({"model": model_state, "cfg": {"model": cfg}}, path)
    return path


__all__ = [
    "tiny_esm2_config",
    "tiny_esm2_tensors",
    "write_tiny_esm2_fairesm",
    "write_tiny_esm2_hf",
]
