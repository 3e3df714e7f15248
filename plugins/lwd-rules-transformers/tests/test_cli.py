"""``lwd-rules explain --model hf:bert`` works offline: the default BERT config, built on meta, detected as hf-bert."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from lwd_rules.cli import app
from lwd_rules.testing import registry_for

ANSI = re.compile(r"\x1b\[[0-9;]*m")
ROW = re.compile(r"^│ (\d+) +│ ([0-9.e-]+) +│ (\d+) +│ ([\d,]+) +│ ([^│]+?) +│ ([^│]+?) +│$")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # AutoConfig.for_model must not need the network
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("LWD_RULES_PLUGINS", raising=False)  # every installed plugin, as a user has them


def test_explain_hf_bert_shows_14_layer_ids():
    with registry_for(installed=True):  # a fresh, strict registry of the installed entry points
        result = CliRunner().invoke(app, ["explain", "--model", "hf:bert"])
    out = ANSI.sub("", result.stdout)
    assert result.exit_code == 0, out + result.stderr
    assert "rules: <dict> <- hf-bert (lwd-rules-transformers 0.1.0) <- hf-base (lwd-rules-transformers 0.1.0)  num_layers: 12" in out
    rows = [m.groups() for m in map(ROW.match, out.splitlines()) if m]
    assert [int(r[0]) for r in rows] == list(range(14))  # embeddings, 12 layers, pooler
    assert [float(r[1]) for r in rows] == pytest.approx([0.9 ** (13 - i) for i in range(14)], rel=1e-5)  # hf-base's rate
    assert [int(r[2]) for r in rows] == [5] + [16] * 12 + [2]
    assert [r[4] for r in rows] == ["0, 0.01"] * 14
    assert rows[0][5] == "hf-bert.yaml:10" and rows[1][5] == "hf-bert.yaml:22" and rows[13][5] == "hf-base.yaml:26"
    assert "unmatched parameters: 0" in out and "trainable tensors: 199  left out: 0" in out


@pytest.mark.parametrize(
    ("spec", "rule_set", "num_layers"),
    [("hf:gpt2", "hf-gpt2", 12), ("hf:llama", "hf-llama", 32), ("hf:vit", "hf-vit", 12), ("hf:swin", "hf-swin", 12), ("hf:albert", "hf-albert", 1)],
)
def test_explain_other_default_configs_offline(spec, rule_set, num_layers):
    """Each family's default config (the published base size), built on meta, detected, all covered."""
    import json

    with registry_for(installed=True):
        result = CliRunner().invoke(app, ["explain", "--model", spec, "--format", "json"])
    assert result.exit_code == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["rules"][-2]["name"] == rule_set
    assert data["num_layers"] == num_layers
    assert data["skipped"] == [] and data["problems"] == []


@pytest.mark.parametrize(("spec", "chains"), [("hf:clip", {"vision": 12, "text": 12}), ("hf:siglip", {"vision": 12, "text": 12}), ("hf:t5", {"encoder": 6, "decoder": 6})])
def test_explain_multi_tower_default_configs_offline(spec, chains):
    import json

    with registry_for(installed=True):
        result = CliRunner().invoke(app, ["explain", "--model", spec, "--format", "json"])
    assert result.exit_code == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert {name: chain["num_layers"] for name, chain in data["chains"].items()} == chains
    assert data["skipped"] == [] and data["problems"] == []
