"""Several decay chains in one model (multi-tower): each chain its own ids, N and rate; the rest at full rate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from lwd_rules import RuleError, check_optimizer, create_optimizer, resolve
from lwd_rules.plugins import new_registry

TEXT_LAYERS, VISION_LAYERS = 2, 3
TEXT_RATE, VISION_RATE, WD = 0.8, 0.5, 0.1

RULES = {
    "chains": {
        "vision": {
            "match": r"^vision_model\.",
            "layers": {
                "num_layers": VISION_LAYERS,
                "rules": [
                    {"match": r"^vision_model\.(?:embeddings|pre_layrnorm)\.", "layer": 0},
                    {"match": r"^vision_model\.encoder\.layers\.(?P<i>\d+)\.", "layer": "i + 1"},
                ],
                "default": "num_layers + 1",
            },
            "layer_decay": {"rate": VISION_RATE},
        },
        "text": {
            "match": r"^text_model\.",
            "layers": {
                "num_layers": TEXT_LAYERS,
                "rules": [
                    {"match": r"^text_model\.embeddings\.", "layer": 0},
                    {"match": r"^text_model\.encoder\.layers\.(?P<i>\d+)\.", "layer": "i + 1"},
                ],
                "default": "num_layers + 1",
            },
            "layer_decay": {"rate": TEXT_RATE},
        },
    },
    "weight_decay": {"value": WD, "exclude": ["ndim<=1"]},
    "optimizer": {"name": "adamw", "lr": 1e-3},
}


def tiny_clip(device: str = "meta") -> torch.nn.Module:
    config = transformers.CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": TEXT_LAYERS, "num_attention_heads": 2, "vocab_size": 100, "bos_token_id": 0, "eos_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": VISION_LAYERS, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    with torch.device(device):
        return transformers.CLIPModel(config)


def expected(name: str) -> tuple[str, int, float]:
    """(chain, layer id, lr scale) written from the rules above, independently of the implementation."""
    parts = name.split(".")
    if parts[0] == "vision_model":
        n, rate = VISION_LAYERS, VISION_RATE
        layer = 0 if parts[1] in ("embeddings", "pre_layrnorm") else int(parts[3]) + 1 if parts[1] == "encoder" else n + 1
        return "vision", layer, rate ** (n + 1 - layer)
    if parts[0] == "text_model":
        n, rate = TEXT_LAYERS, TEXT_RATE
        layer = 0 if parts[1] == "embeddings" else int(parts[3]) + 1 if parts[1] == "encoder" else n + 1
        return "text", layer, rate ** (n + 1 - layer)
    return "", 0, 1.0  # logit_scale, visual_projection, text_projection: outside every chain, full rate


def test_every_parameter_gets_its_chains_id_and_scale():
    model = tiny_clip()
    plan = resolve(model, RULES, registry=new_registry())
    names = [name for name, _ in model.named_parameters()]
    assert [row.name for row in plan.params] == names
    for row in plan.params:
        chain, layer, scale = expected(row.name)
        assert (row.chain, row.layer_id) == (chain, layer), row.name
        assert row.lr_scale == pytest.approx(scale, rel=1e-12), row.name
        assert row.weight_decay == (0.0 if row.ndim <= 1 else WD), row.name
        assert row.group.startswith(f"{chain}/" if chain else "layer_"), row.name
    assert set(plan.chains) == {"vision", "text"}
    assert plan.chains["vision"].num_layers == VISION_LAYERS and plan.chains["text"].num_layers == TEXT_LAYERS
    members = [id(p) for g in plan.param_groups for p in g["params"]]
    assert sorted(members) == sorted(id(p) for p in model.parameters())  # each parameter in exactly one group


def test_parts_outside_every_chain_follow_the_top_level_layers_when_given():
    rules = {**RULES, "layers": {"default": 0, "num_layers": 0}, "layer_decay": {"rate": 0.5}}
    plan = resolve(tiny_clip(), rules, registry=new_registry())
    outside = {row.name: row.lr_scale for row in plan.params if not row.chain}
    assert outside == {"logit_scale": 0.5, "visual_projection.weight": 0.5, "text_projection.weight": 0.5}


def test_a_parameter_claimed_by_two_chains_is_an_error():
    rules = {**RULES, "chains": {**RULES["chains"], "all": {"match": r"^(?:text|vision)_model\.embeddings\.", "layers": {"default": 0}}}}
    with pytest.raises(RuleError) as info:
        resolve(tiny_clip(), rules, registry=new_registry())
    assert str(info.value) == (
        "<dict>: chains.text.match: 5 parameter(s) belong to several chains: "
        "text_model.embeddings.position_embedding.weight (text and all), text_model.embeddings.token_embedding.weight (text and all), "
        "vision_model.embeddings.class_embedding (vision and all), vision_model.embeddings.patch_embedding.weight (vision and all), "
        "vision_model.embeddings.position_embedding.weight (vision and all)"
    )


def test_chain_sections_are_validated_with_file_and_line(tmp_path: Path):
    path = tmp_path / "clip.yaml"
    path.write_text(
        "chains:\n"
        "  vision:\n"
        "    match: '^vision_model\\.'\n"
        "    layers:\n"
        "      rules:\n"
        "        - match: '^vision_model\\.encoder\\.layers\\.(?P<i>\\d+'\n"
        "          layer: i + 1\n"
        "    layer_decay:\n"
        "      rat: 0.5\n",
        encoding="utf-8",
    )
    with pytest.raises(RuleError) as info:
        resolve(tiny_clip(), path, registry=new_registry())
    got = {(p.location.line, p.path) for p in info.value.problems}
    assert got == {(6, "chains.vision.layers.rules[0].match"), (9, "chains.vision.layer_decay.rat")}


def test_optimizer_trains_each_chain_at_its_own_rates():
    torch.manual_seed(0)
    model = tiny_clip(device="cpu")
    registry = new_registry()
    optimizer = create_optimizer(model, RULES, registry=registry)
    plan = resolve(model, RULES, registry=registry)
    check_optimizer(optimizer, plan)
    lrs = {g["group_name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["vision/layer_0_decay"] == pytest.approx(1e-3 * VISION_RATE**4, rel=1e-12)
    assert lrs["text/layer_0_decay"] == pytest.approx(1e-3 * TEXT_RATE**3, rel=1e-12)
    assert lrs["layer_0_no_decay"] == pytest.approx(1e-3, rel=1e-12)  # logit_scale, outside every chain
    assert plan.fingerprint() == resolve(model, RULES, registry=registry).fingerprint()


def test_keyword_layer_decay_sets_every_chains_rate_and_top_level_fields_are_inherited():
    rules = {**RULES, "layer_decay": {"min_scale": 0.3}}
    plan = resolve(tiny_clip(), rules, layer_decay=0.5, registry=new_registry())
    for row in plan.params:
        chain, layer, _ = expected(row.name)
        n = {"vision": VISION_LAYERS, "text": TEXT_LAYERS}.get(chain)
        scale = 1.0 if n is None else max(0.5 ** (n + 1 - layer), 0.3)  # rate from the keyword, min_scale from the top level
        assert row.lr_scale == pytest.approx(scale, rel=1e-12), row.name


def test_explain_shows_one_table_per_chain():
    import json

    from typer.testing import CliRunner

    from lwd_rules.cli import app

    result = CliRunner().invoke(app, ["explain", "--model", "hf:t5"])
    assert result.exit_code == 0, result.output
    assert "chain encoder  num_layers: 6" in result.output and "chain decoder  num_layers: 6" in result.output
    data = json.loads(CliRunner().invoke(app, ["explain", "--model", "hf:t5", "--format", "json"]).output)
    assert sorted(data["chains"]) == ["decoder", "encoder"]
    encoder = {layer["layer_id"]: layer["lr_scales"] for layer in data["chains"]["encoder"]["layers"]}
    assert encoder[0] == [pytest.approx(0.8**7)] and encoder[7] == [1.0]  # t5-small: 6 blocks, rate 0.8


def test_a_chain_that_matches_nothing_is_reported_like_an_unused_pattern():
    rules = {**RULES, "chains": {**RULES["chains"], "audio": {"match": r"^audio_model\.", "layers": {"default": 0}}}}
    with pytest.raises(RuleError) as info:
        resolve(tiny_clip(), rules, registry=new_registry())
    assert str(info.value) == "<dict>: chains.audio.match: '^audio_model\\\\.' matches no parameter: chain 'audio' is empty"
    quiet = {**rules, "checks": {"unused_patterns": "ignore"}}
    plan = resolve(tiny_clip(), quiet, registry=new_registry())
    assert len(plan.chains["audio"].params) == 0
    assert len(plan.params) == sum(1 for _ in tiny_clip().parameters())
