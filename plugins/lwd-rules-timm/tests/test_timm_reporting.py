"""The ``timm`` rule set is never silent, picks the right rule set by itself, and sees through wrappers.

- Never silent: a parameter timm's ``group_matcher`` leaves unmatched still gets timm's number (the
  last id L, as ``param_groups_layer_decay`` gives it) but is reported: a ``LwdRulesWarning`` naming
  it, a ``warning:`` line in ``lwd-rules explain``, and an error in strict mode. The classifier named
  by ``pretrained_cfg["classifier"]`` is last on purpose and not reported. Older timm releases left
  ViT's ``reg_token`` out of the matcher; ``OldTimmViT`` below brings that matcher back.
- Detection: with rules that say nothing about layers, a family plugin (ConvNeXt) answers first,
  other timm models get ``timm``, a plain torch module is an error listing the installed plugins.
- Wrappers: a DDP-like ``.module`` wrapper and ``torch.compile`` give the bare model's rows.
"""

from __future__ import annotations

import json
import math
import re
import sys
import textwrap
import warnings
from importlib.metadata import entry_points

import pytest
import timm
import torch
from timm.optim import param_groups_layer_decay
from typer.testing import CliRunner

from lwd_rules import LwdRulesWarning, RuleError, resolve
from lwd_rules.cli import app
from lwd_rules.plugins import use_registry

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
RATE = 0.8
WEIGHT_DECAY = 0.05

OLD_TIMM_MODULE = "lwd_old_timm_vit"
OLD_TIMM_SOURCE = textwrap.dedent(
    r'''
    """timm's VisionTransformer with the group_matcher of older timm releases: no reg_token in it."""
    from timm.models import build_model_with_cfg
    from timm.models.vision_transformer import VisionTransformer


    class OldTimmViT(VisionTransformer):
        def group_matcher(self, coarse=False):
            return dict(stem=r'^cls_token|pos_embed|patch_embed', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])


    def build():
        """Depth 3 with 4 register tokens; pretrained_cfg (classifier 'head') as timm's factories set it."""
        return build_model_with_cfg(
            OldTimmViT, "vit_tiny_patch16_224", pretrained=False,
            img_size=32, patch_size=8, embed_dim=16, depth=3, num_heads=2, num_classes=10, reg_tokens=4,
        )


    def plain_vit():
        import timm
        return timm.create_model("vit_small_patch16_224", pretrained=False)
    '''
)

# OldTimmViT at depth 3, as timm numbers it: stem 0, blocks.i -> i + 1, norm joins the last block
# (suffix 99999), and everything unmatched (reg_token, head) shares the next id, L = 4.
OLD_TIMM_L = 4


def old_timm_id(name: str) -> int:
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.startswith("norm."):
        return 3
    assert name == "reg_token" or name.startswith("head."), name
    return OLD_TIMM_L


@pytest.fixture(autouse=True)
def installed_plugins(monkeypatch: pytest.MonkeyPatch):
    """Every installed plugin, a fresh process-wide registry, a wide console for the CLI."""
    monkeypatch.delenv("LWD_RULES_PLUGINS", raising=False)
    monkeypatch.delenv("LWD_RULES_STRICT_PLUGINS", raising=False)
    monkeypatch.setenv("COLUMNS", "250")
    previous = use_registry(None)
    yield
    use_registry(previous)


@pytest.fixture
def old_timm(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """The factory module, importable as ``lwd_old_timm_vit`` (also by ``explain --model``)."""
    (tmp_path / f"{OLD_TIMM_MODULE}.py").write_text(OLD_TIMM_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, OLD_TIMM_MODULE, raising=False)
    module = __import__(OLD_TIMM_MODULE)
    yield module
    sys.modules.pop(OLD_TIMM_MODULE, None)


def build(factory):
    with torch.device("meta"):
        return factory()


def timm_model(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False)


def named_in(text: str, model: torch.nn.Module) -> set[str]:
    """The model's parameter names that ``text`` mentions as whole names."""
    return {name for name, _ in model.named_parameters() if re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.])", text)}


def resolve_recording(model, source="timm"):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = resolve(model, source, layer_decay=RATE, weight_decay=WEIGHT_DECAY)
    return plan, [w for w in caught if issubclass(w.category, LwdRulesWarning)], caught


def assert_timm_numbers(model, plan):
    """Every parameter's lr scale and weight decay equal timm's own param_groups_layer_decay."""
    groups = param_groups_layer_decay(model, weight_decay=WEIGHT_DECAY, no_weight_decay_list=model.no_weight_decay(), layer_decay=RATE)
    timm_of = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert len(timm_of) == len(plan.params) == len(params)
    for row in plan.params:
        scale, wd = timm_of[id(params[row.name])]
        assert math.isclose(row.lr_scale, scale, rel_tol=1e-12), (row.name, row.lr_scale, scale)
        assert row.weight_decay == wd, row.name


def explain(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, ANSI.sub("", result.stdout), ANSI.sub("", result.stderr)


# ---- never silent ----------------------------------------------------------------------------------


def test_old_timm_reg_token_gets_timms_number_and_a_warning(old_timm):
    model = build(old_timm.build)
    assert model.pretrained_cfg["classifier"] == "head"
    with pytest.warns(LwdRulesWarning) as record:
        plan = resolve(model, "timm", layer_decay=RATE, weight_decay=WEIGHT_DECAY)
    messages = [str(w.message) for w in record if issubclass(w.category, LwdRulesWarning)]
    assert len(messages) == 1
    assert named_in(messages[0], model) == {"reg_token"}  # the head is last on purpose: not named
    assert len(plan.warnings) == 1 and named_in(plan.warnings[0], model) == {"reg_token"}
    rows = {row.name: row for row in plan.params}
    assert set(rows) == {name for name, _ in model.named_parameters()}
    for name, row in rows.items():
        assert row.layer_id == old_timm_id(name), name
        assert math.isclose(row.lr_scale, RATE ** (OLD_TIMM_L - row.layer_id), rel_tol=1e-12), name
    assert rows["reg_token"].layer_id == rows["head.weight"].layer_id == OLD_TIMM_L
    assert rows["reg_token"].lr_scale == 1.0
    assert rows["reg_token"].weight_decay == 0.0  # in VisionTransformer.no_weight_decay()
    assert plan.num_layers == OLD_TIMM_L - 1
    assert_timm_numbers(model, plan)


def test_old_timm_strict_by_warning_filter(old_timm):
    model = build(old_timm.build)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LwdRulesWarning)
        with pytest.raises(LwdRulesWarning) as raised:
            resolve(model, "timm")
    assert named_in(str(raised.value), model) == {"reg_token"}


def test_old_timm_strict_by_rule_file(old_timm, tmp_path):
    model = build(old_timm.build)
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"extends": "timm", "checks": {"defaulted": "error"}}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuleError) as raised:
            resolve(model, strict)
    assert named_in(str(raised.value), model) == {"reg_token"}
    assert [w for w in caught if issubclass(w.category, LwdRulesWarning)] == []  # an error, not also a warning


def test_old_timm_in_explain(old_timm):
    code, stdout, stderr = explain("explain", "--model", f"{OLD_TIMM_MODULE}:build", "timm")
    assert code == 0, stdout + stderr
    warning_lines = [line for line in stdout.splitlines() if line.startswith("warning:")]
    assert len(warning_lines) == 1, stdout
    model = build(old_timm.build)
    assert named_in(warning_lines[0], model) == {"reg_token"}


def test_old_timm_in_explain_strict_rule_file(old_timm, tmp_path):
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"extends": "timm", "checks": {"defaulted": "error"}}))
    code, stdout, stderr = explain("explain", "--model", f"{OLD_TIMM_MODULE}:build", str(strict))
    assert code == 1, stdout + stderr
    model = build(old_timm.build)
    problem_lines = [line for line in stdout.splitlines() if line.startswith("problem:")]
    assert len(problem_lines) == 1, stdout
    assert named_in(problem_lines[0], model) == {"reg_token"}


def test_plain_vit_is_silent(old_timm, tmp_path):
    model = timm_model("vit_small_patch16_224")
    plan, ours, caught = resolve_recording(model)
    assert ours == [] and caught == [] and plan.warnings == []
    assert_timm_numbers(model, plan)
    rows = {row.name: row for row in plan.params}
    assert rows["head.weight"].layer_id == 13 and rows["norm.weight"].layer_id == 12
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"extends": "timm", "checks": {"defaulted": "error"}}))
    assert [row.layer_id for row in resolve(model, strict, layer_decay=RATE).params] == [row.layer_id for row in plan.params]
    code, stdout, stderr = explain("explain", "--model", f"{OLD_TIMM_MODULE}:plain_vit", "timm")
    assert code == 0, stdout + stderr
    assert "warning" not in stdout.lower() and "problem:" not in stdout


def test_reg4_gap_reports_exactly_fc_norm(tmp_path):
    model = timm_model("vit_base_patch16_reg4_gap_256")
    plan, ours, _ = resolve_recording(model)
    assert len(ours) == 1
    assert named_in(str(ours[0].message), model) == {"fc_norm.weight", "fc_norm.bias"}
    rows = {row.name: row for row in plan.params}
    # timm: stem (reg_token included) 0, blocks 1..12, fc_norm and head unmatched -> L = 13.
    assert rows["reg_token"].layer_id == 0
    assert rows["fc_norm.weight"].layer_id == rows["fc_norm.bias"].layer_id == rows["head.weight"].layer_id == 13
    assert_timm_numbers(model, plan)
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"extends": "timm", "checks": {"defaulted": "error"}}))
    with pytest.raises(RuleError) as raised:
        resolve(model, strict)
    assert named_in(str(raised.value), model) == {"fc_norm.weight", "fc_norm.bias"}


# ---- detection -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rule_set"),
    [("convnext_atto", "convnext-timm"), ("vit_tiny_patch16_224", "timm"), ("resnet18", "timm")],
)
def test_detection(name, rule_set):
    model = timm_model(name)
    plan = resolve(model, {"layer_decay": {"rate": 0.8}})
    assert plan.rules.name == rule_set
    assert plan.params and all(0.0 < row.lr_scale <= 1.0 for row in plan.params)
    assert max(row.lr_scale for row in plan.params) == 1.0


def test_detection_of_a_plain_module_lists_installed_plugins():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    with pytest.raises(RuleError) as raised:
        resolve(model, {"layer_decay": {"rate": 0.8}})
    installed = sorted(ep.name for ep in entry_points(group="lwd_rules"))
    assert {"convnext", "timm"} <= set(installed)
    listed = re.search(r"installed plugins: ([^)\n]*)", str(raised.value))
    assert listed is not None, str(raised.value)
    assert sorted(part.strip() for part in listed.group(1).split(",")) == installed


# ---- wrappers --------------------------------------------------------------------------------------


class DDPLike(torch.nn.Module):
    """What DistributedDataParallel looks like to lwd-rules: the model under ``.module``."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module


WRAPPERS = {
    "ddp": (DDPLike, "module."),
    "compile": (torch.compile, "_orig_mod."),
    "compile_ddp": (lambda m: torch.compile(DDPLike(m)), "_orig_mod.module."),
}


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize("name", ["vit_small_patch16_224", "vit_base_patch16_reg4_gap_256"])
def test_wrapped_model_same_rows(name, wrapper):
    model = timm_model(name)
    wrap, prefix = WRAPPERS[wrapper]
    wrapped = wrap(model)
    bare_plan, bare_warnings, _ = resolve_recording(model)
    plan, wrapped_warnings, _ = resolve_recording(wrapped)
    assert plan.rules.name == bare_plan.rules.name == "timm"
    assert plan.num_layers == bare_plan.num_layers
    assert [row.name for row in plan.params] == [prefix + row.name for row in bare_plan.params]
    assert [(r.layer_id, r.lr_scale, r.weight_decay, r.group) for r in plan.params] == [
        (r.layer_id, r.lr_scale, r.weight_decay, r.group) for r in bare_plan.params
    ]
    assert [[id(p) for p in g["params"]] for g in plan.param_groups] == [[id(p) for p in g["params"]] for g in bare_plan.param_groups]
    assert [str(w.message) for w in wrapped_warnings] == [str(w.message) for w in bare_warnings]
    assert_timm_numbers(model, bare_plan)
    # detection sees through the wrapper too
    detected, _, _ = resolve_recording(wrapped, None)
    assert detected.rules.name == "timm"
    assert [(r.name, r.layer_id) for r in detected.params] == [(r.name, r.layer_id) for r in plan.params]


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize("rule_set", ["vit", "beit"])
def test_wrapped_model_same_rows_reference_rule_sets(rule_set, wrapper):
    """The ``vit`` / ``beit`` rule sets count blocks and read no_weight_decay() through wrappers too."""
    model = timm_model("beit_base_patch16_224")
    wrap, prefix = WRAPPERS[wrapper]
    bare_plan = resolve(model, rule_set, layer_decay=RATE, weight_decay=WEIGHT_DECAY)
    plan = resolve(wrap(model), rule_set, layer_decay=RATE, weight_decay=WEIGHT_DECAY)
    assert plan.num_layers == bare_plan.num_layers == 12
    assert [(r.name, r.layer_id, r.lr_scale, r.weight_decay) for r in plan.params] == [
        (prefix + r.name, r.layer_id, r.lr_scale, r.weight_decay) for r in bare_plan.params
    ]
    rows = {r.name: r for r in bare_plan.params}
    assert rows["blocks.0.attn.relative_position_bias_table"].weight_decay == 0.0  # timm BEiT's no_weight_decay()
    assert rows["head.weight"].layer_id == 13 and rows["cls_token"].layer_id == 0
