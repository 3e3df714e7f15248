"""CLIP, SigLIP and T5: one decay chain per tower, detected from config.model_type, every parameter checked."""

from __future__ import annotations

import pytest
import torch
import transformers

from lwd_rules import resolve

RATE = 0.5
TEXT, VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=100), dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8
)


def tower(name: str, n_text: int = 2, n_vision: int = 3) -> tuple[str, int, int]:
    """(chain, layer id, N) for a CLIP / SigLIP name, written from the rule files' comments."""
    parts = name.split(".")
    if parts[0] in ("vision_model", "text_model"):
        chain = parts[0].removesuffix("_model")
        n = n_vision if chain == "vision" else n_text
        if parts[1] in ("embeddings", "pre_layrnorm"):
            return chain, 0, n
        if parts[1] == "encoder":
            return chain, int(parts[3]) + 1, n
        return chain, n + 1, n  # post / final layernorm, the tower's head
    return "", 0, -1  # logit_scale, logit_bias, projections: outside the towers, full rate


def t5_stack(name: str, n_encoder: int = 2, n_decoder: int = 3) -> tuple[str, int, int]:
    parts = name.split(".")
    if parts[0] == "shared":
        return "encoder", 0, n_encoder
    if parts[0] in ("encoder", "decoder"):
        n = n_encoder if parts[0] == "encoder" else n_decoder
        return parts[0], (int(parts[2]) + 1 if parts[1] == "block" else n + 1), n
    return "", 0, -1  # an untied lm_head


def no_decay(model: torch.nn.Module) -> set[str]:
    """Biases and the weights of LayerNorm / RMSNorm modules (by class name), found independently."""
    out = set()
    for module_name, module in model.named_modules():
        norm = any(cls.__name__.endswith(("LayerNorm", "RMSNorm")) for cls in type(module).__mro__)
        for leaf, _ in module.named_parameters(recurse=False):
            if norm or leaf == "bias":
                out.add(f"{module_name}.{leaf}" if module_name else leaf)
    return out


def check(model: torch.nn.Module, rule_set: str, place) -> None:
    plan = resolve(model, {"layer_decay": {"rate": RATE}, "weight_decay": {"value": 0.1}}, layer_decay=RATE)
    assert plan.rules.name == rule_set
    skip = no_decay(model)
    assert [row.name for row in plan.params] == [name for name, _ in model.named_parameters()]
    for row in plan.params:
        chain, layer, n = place(row.name)
        assert (row.chain, row.layer_id) == (chain, layer), row.name
        scale = 1.0 if n < 0 else RATE ** (n + 1 - layer)
        assert row.lr_scale == pytest.approx(scale, rel=1e-12), row.name
        assert row.weight_decay == (0.0 if row.name in skip or row.name.endswith(".bias") else 0.1), row.name


@pytest.mark.parametrize("cls", ["CLIPModel", "CLIPVisionModel", "CLIPTextModel"])
def test_clip(cls):
    config = transformers.CLIPConfig(text_config={**TEXT, "bos_token_id": 0, "eos_token_id": 1}, vision_config=VISION, projection_dim=16)
    config = {"CLIPModel": config, "CLIPVisionModel": config.vision_config, "CLIPTextModel": config.text_config}[cls]
    with torch.device("meta"):
        model = getattr(transformers, cls)(config)
    check(model, "hf-clip", tower)


@pytest.mark.parametrize("cls", ["SiglipModel", "SiglipVisionModel"])
def test_siglip(cls):
    config = transformers.SiglipConfig(text_config=TEXT, vision_config=VISION)
    config = {"SiglipModel": config, "SiglipVisionModel": config.vision_config}[cls]
    with torch.device("meta"):
        model = getattr(transformers, cls)(config)
    check(model, "hf-siglip", tower)


@pytest.mark.parametrize("tied", [True, False])
def test_t5(tied):
    config = transformers.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3, num_heads=2)
    with torch.device("meta"):
        model = transformers.T5ForConditionalGeneration(config)
        if not tied:  # T5 v1.1 style: an lm_head of its own, outside both stacks
            model.lm_head.weight = torch.nn.Parameter(torch.empty(100, 32))
    assert ("lm_head.weight" in dict(model.named_parameters())) is not tied
    check(model, "hf-t5", t5_stack)
