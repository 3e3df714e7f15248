"""In-process tests of the plugin registry: small plugins defined here, registered with new_registry()."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pluggy
import pytest
import torch

from lwd_rules import PluginError, RuleError, hookimpl, load_rules, resolve
from lwd_rules.plugins import PluginFailure, PluginInfo, Registry, new_registry, use_registry
from lwd_rules.rules.ruleset import Provenance

HOOKS = ("lwd_detect", "lwd_layer_variables", "lwd_rule_sets")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LWD_RULES_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("LWD_RULES_PLUGINS", raising=False)


@pytest.fixture
def global_registry() -> Any:
    """Lets a test replace the process-wide registry; the previous one is put back afterwards."""
    previous = use_registry(None)
    yield
    use_registry(previous)


class ToyNet(torch.nn.Module):
    def __init__(self, depth: int = 3) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(2, 4)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(depth))
        self.norm = torch.nn.LayerNorm(4)
        self.head = torch.nn.Linear(4, 3)


class Other(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)


TOY = {
    "version": 1,
    "name": "toy",
    "layers": {
        "variables": ["depth"],
        "num_layers": "depth",
        "rules": [
            {"match": r"^embed\.", "layer": 0},
            {"match": r"^blocks\.(?P<block>\d+)\.", "layer": "block + 1"},
        ],
        "default": "num_layers + 1",
    },
    "layer_decay": {"rate": 0.5},
    "weight_decay": {"value": 0.1, "exclude": ["ndim<=1"]},
}


def plugin(*, tryfirst: bool = False, trylast: bool = False, **hooks: Callable[..., Any]) -> SimpleNamespace:
    """A plugin object whose attributes are the given hook functions, marked as hookimpls."""
    mark = hookimpl(tryfirst=tryfirst, trylast=trylast)
    return SimpleNamespace(**{name: mark(function) for name, function in hooks.items()})


def toy_plugin(**extra: Callable[..., Any]) -> SimpleNamespace:
    """Provides ``toy`` as a dict, ``depth`` for ToyNet, and recognizes ToyNet."""
    hooks: dict[str, Callable[..., Any]] = {
        "lwd_rule_sets": lambda: {"toy": TOY},
        "lwd_layer_variables": lambda model, rule_set: {"depth": len(model.blocks)} if rule_set == "toy" else None,
        "lwd_detect": lambda model: "toy" if isinstance(model, ToyNet) else None,
    }
    hooks.update(extra)
    return plugin(**hooks)


def boom(exc: Exception) -> Callable[..., Any]:
    def raise_it(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return raise_it


def rows(plan: Any) -> list[tuple[Any, ...]]:
    return [(r.name, r.layer_id, r.lr_scale, r.weight_decay, r.group, r.rule) for r in plan.params]


def toy_rows(rule_file: str, scales: list[float], wd: float, lines: tuple[str, str, str] | None = None) -> list[tuple[Any, ...]]:
    """ToyNet(3) under TOY-like rules: embed 0, blocks.i i+1, norm/head 4; groups in first-seen order."""
    embed, blocks, default = lines or tuple(f"{rule_file}:{p}" for p in ("layers.rules[0]", "layers.rules[1]", "layers.default"))
    out = [
        ("embed.weight", 0, scales[0], wd, "layer_0_decay", embed),
        ("embed.bias", 0, scales[0], 0.0, "layer_0_no_decay", embed),
    ]
    for i in range(3):
        out += [
            (f"blocks.{i}.weight", i + 1, scales[i + 1], wd, f"layer_{i + 1}_decay", blocks),
            (f"blocks.{i}.bias", i + 1, scales[i + 1], 0.0, f"layer_{i + 1}_no_decay", blocks),
        ]
    out += [
        ("norm.weight", 4, 1.0, 0.0, "layer_4_no_decay", default),
        ("norm.bias", 4, 1.0, 0.0, "layer_4_no_decay", default),
        ("head.weight", 4, 1.0, wd, "layer_4_decay", default),
        ("head.bias", 4, 1.0, 0.0, "layer_4_no_decay", default),
    ]
    return out


HALF = [0.0625, 0.125, 0.25, 0.5, 1.0]  # 0.5 ** (4 - id)
EIGHT_TENTHS = [0.8**4, 0.8**3, 0.8**2, 0.8, 1.0]  # 0.8 ** (4 - id)


# ---------------------------------------------------------------------------------------------
# lwd_rule_sets
# ---------------------------------------------------------------------------------------------


def test_duplicate_rule_set_name_names_both_plugins() -> None:
    registry = new_registry([
        ("alpha", plugin(lwd_rule_sets=lambda: {"shared": TOY, "alpha-only": TOY})),
        ("beta", plugin(lwd_rule_sets=lambda: {"shared": TOY})),
    ], strict=False)
    with pytest.raises(PluginError) as info:
        registry.rule_sets()
    message = str(info.value)
    assert "'shared'" in message and "alpha" in message and "beta" in message, message
    assert "alpha-only" not in message
    # every lookup goes through the merged table, so resolve() reports it too
    with pytest.raises(PluginError, match="shared"):
        resolve(ToyNet(), "alpha-only", registry=registry)


def test_duplicate_rule_set_name_names_both_distributions() -> None:
    registry = new_registry()
    registry.register(plugin(lwd_rule_sets=lambda: {"shared": TOY}), "alpha", "lwd-rules-alpha", "1.0")
    registry.register(plugin(lwd_rule_sets=lambda: {"shared": TOY}), "beta", "lwd-rules-beta", "2.0")
    with pytest.raises(PluginError) as info:
        registry.rule_sets()
    message = str(info.value)
    assert "'shared'" in message and "lwd-rules-alpha" in message and "lwd-rules-beta" in message, message


def test_rule_sets_are_collected_once_and_again_after_a_registration() -> None:
    calls = []
    registry = new_registry([("toyplugin", toy_plugin(lwd_rule_sets=lambda: calls.append(1) or {"toy": TOY}))])
    assert calls == []  # building the registry asks nothing
    for _ in range(3):
        resolve(ToyNet(), "toy", registry=registry)
    resolve(ToyNet(), registry=registry)
    assert registry.rule_set("missing") is None
    assert calls == [1]
    registry.register(plugin(lwd_rule_sets=lambda: {"second": TOY}), "second")
    assert sorted(registry.rule_sets()) == ["second", "toy"]
    assert calls == [1, 1]


def test_a_plugin_without_rule_sets_answers_none() -> None:
    registry = new_registry([("quiet", plugin(lwd_rule_sets=lambda: None)), ("toyplugin", toy_plugin())])
    assert list(registry.rule_sets()) == ["toy"]
    assert registry.failures == []


def test_rule_set_from_a_file_records_file_line_and_plugin(tmp_path: Path) -> None:
    rule_file = tmp_path / "toy.yaml"
    rule_file.write_text(
        "version: 1\n"                                    # 1
        "name: toy\n"                                     # 2
        "layers:\n"                                       # 3
        "  variables: [depth]\n"                          # 4
        "  num_layers: depth\n"                           # 5
        "  rules:\n"                                      # 6
        "    - match: '^embed\\.'\n"                      # 7
        "      layer: 0\n"                                # 8
        "    - match: '^blocks\\.(?P<block>\\d+)\\.'\n"   # 9
        "      layer: block + 1\n"                        # 10
        "  default: num_layers + 1\n"                     # 11
        "layer_decay: {rate: 0.5}\n"                      # 12
        "weight_decay: {value: 0.1, exclude: ['ndim<=1']}\n",
        encoding="utf-8",
    )
    registry = new_registry()
    registry.register(toy_plugin(lwd_rule_sets=lambda: {"toy": rule_file}), "toyplugin", "lwd-rules-toy", "2.0.1")
    plan = resolve(ToyNet(), "toy", registry=registry)
    file = str(rule_file)
    assert rows(plan) == toy_rows(file, HALF, 0.1, (f"{file}:7", f"{file}:9", f"{file}:11"))
    assert plan.rules.provenance == (Provenance(file, "toy", "lwd-rules-toy", "2.0.1"),)


# ---------------------------------------------------------------------------------------------
# resolve() with registry=
# ---------------------------------------------------------------------------------------------


def test_resolve_a_dict_rule_set_by_name() -> None:
    registry = new_registry([("toyplugin", toy_plugin())])
    plan = resolve(ToyNet(), "toy", registry=registry)
    assert plan.rules.name == "toy"
    assert plan.num_layers == 3
    assert plan.variables == {"depth": 3, "num_layers": 3}
    assert plan.scales == tuple(HALF)
    assert rows(plan) == toy_rows("<toy>", HALF, 0.1)
    assert plan.rules.provenance == (Provenance("<toy>", "toy", "toyplugin", None),)
    assert load_rules("toy", registry=registry).provenance == plan.rules.provenance


def test_resolve_with_only_a_rate_detects_the_rule_set() -> None:
    registry = new_registry([("toyplugin", toy_plugin())])
    plan = resolve(ToyNet(), {"layer_decay": {"rate": 0.8}}, registry=registry)
    assert plan.rules.name == "toy"
    assert [r[:2] + r[3:] for r in rows(plan)] == [r[:2] + r[3:] for r in toy_rows("<toy>", EIGHT_TENTHS, 0.1)]
    assert [r.lr_scale for r in plan.params] == pytest.approx([r[2] for r in toy_rows("<toy>", EIGHT_TENTHS, 0.1)], rel=1e-12)
    assert plan.rules.provenance == (Provenance("<toy>", "toy", "toyplugin", None), Provenance("<dict>"))


def test_resolve_keyword_shortcut_detects_the_rule_set() -> None:
    registry = new_registry([("toyplugin", toy_plugin())])
    plan = resolve(ToyNet(), layer_decay=0.5, weight_decay=0.3, registry=registry)
    assert rows(plan) == toy_rows("<toy>", HALF, 0.3)


def test_dict_rule_set_extending_another_plugins_rule_set() -> None:
    fast = {"version": 1, "name": "toy-fast", "extends": "toy", "layer_decay": {"rate": 0.8}}
    registry = new_registry()
    registry.register(toy_plugin(), "toyplugin", "lwd-rules-toy", "2.0.1")
    registry.register(plugin(lwd_rule_sets=lambda: {"toy-fast": fast}), "fastplugin", "lwd-rules-fast", "0.1")
    # the variables hook of toyplugin only knows "toy": resolve asks with the name in use, toy-fast
    with pytest.raises(RuleError) as info:
        resolve(ToyNet(), "toy-fast", registry=registry)
    assert str(info.value) == "<toy>: layers.variables: no plugin provided 'depth' for rule set 'toy-fast' and ToyNet"
    registry.register(plugin(lwd_layer_variables=lambda model, rule_set: {"depth": 3} if rule_set == "toy-fast" else None), "fastvars")
    plan = resolve(ToyNet(), "toy-fast", registry=registry)
    assert plan.rules.provenance == (
        Provenance("<toy>", "toy", "lwd-rules-toy", "2.0.1"),
        Provenance("<toy-fast>", "toy-fast", "lwd-rules-fast", "0.1"),
    )
    assert [r.lr_scale for r in plan.params] == pytest.approx([r[2] for r in toy_rows("<toy>", EIGHT_TENTHS, 0.1)], rel=1e-12)


def test_rule_set_name_typo_suggests_the_registered_name() -> None:
    registry = new_registry([("toyplugin", toy_plugin())])
    with pytest.raises(RuleError) as info:
        resolve(ToyNet(), "tyo", registry=registry)
    assert str(info.value) == "<arguments>: <root>: no rule set named 'tyo' (did you mean 'toy'?)"


def test_rule_set_name_typo_suggests_with_the_process_wide_registry(global_registry: None) -> None:
    use_registry(new_registry([("toyplugin", toy_plugin())]))
    with pytest.raises(RuleError) as info:
        load_rules("tyo")
    assert str(info.value) == "<arguments>: <root>: no rule set named 'tyo' (did you mean 'toy'?)"
    with pytest.raises(RuleError) as info:
        resolve(ToyNet(), "tyo")
    assert str(info.value) == "<arguments>: <root>: no rule set named 'tyo' (did you mean 'toy'?)"


def test_extends_typo_suggests_the_registered_name() -> None:
    registry = new_registry([("toyplugin", toy_plugin())])
    with pytest.raises(RuleError) as info:
        resolve(ToyNet(), {"extends": "tyo"}, registry=registry)
    assert str(info.value) == "<dict>: extends: no rule set named 'tyo' (did you mean 'toy'?)"


def test_unknown_rule_set_name_lists_the_registered_ones() -> None:
    registry = new_registry([("toyplugin", toy_plugin(lwd_rule_sets=lambda: {"toy": TOY, "toy-fast": TOY}))])
    with pytest.raises(RuleError) as info:
        resolve(ToyNet(), "resnet", registry=registry)
    assert str(info.value) == "<arguments>: <root>: no rule set named 'resnet'; registered: toy, toy-fast"


# ---------------------------------------------------------------------------------------------
# failures inside hooks
# ---------------------------------------------------------------------------------------------


def test_raising_hooks_are_recorded_and_the_other_plugins_answer() -> None:
    bad = plugin(
        tryfirst=True,  # asked before the good plugin, so its failure must not stop the others
        lwd_rule_sets=boom(ValueError("no rules today")),
        lwd_layer_variables=boom(KeyError("depth")),
        lwd_detect=boom(RuntimeError("confused")),
    )
    registry = new_registry([("toyplugin", toy_plugin()), ("bad", bad)], strict=False)
    plan = resolve(ToyNet(), registry=registry)
    assert rows(plan) == toy_rows("<toy>", HALF, 0.1)
    assert sorted(registry.failures, key=lambda f: f.hook or "") == [
        PluginFailure("bad", None, None, "RuntimeError: confused", hook="lwd_detect"),
        PluginFailure("bad", None, None, "KeyError: 'depth'", hook="lwd_layer_variables"),
        PluginFailure("bad", None, None, "ValueError: no rules today", hook="lwd_rule_sets"),
    ]


def test_failure_names_distribution_version_hook_and_reason() -> None:
    registry = new_registry(strict=False)
    registry.register(toy_plugin(), "toyplugin")
    registry.register(plugin(tryfirst=True, lwd_detect=boom(RuntimeError("confused"))), "bad", "lwd-rules-bad", "1.2.3")
    assert registry.detect(ToyNet()) == "toy"
    assert [str(f) for f in registry.failures] == ["plugin 'bad' (lwd-rules-bad 1.2.3) failed in lwd_detect: RuntimeError: confused"]
    failure = registry.failures[0]
    assert (failure.plugin, failure.distribution, failure.version, failure.hook) == ("bad", "lwd-rules-bad", "1.2.3", "lwd_detect")


def test_strict_registry_raises_plugin_error() -> None:
    error = RuntimeError("confused")
    registry = new_registry([("toyplugin", toy_plugin()), ("bad", plugin(tryfirst=True, lwd_detect=boom(error)))], strict=True)
    with pytest.raises(PluginError) as info:
        resolve(ToyNet(), registry=registry)
    assert str(info.value) == "plugin 'bad' (unknown distribution) failed in lwd_detect: RuntimeError: confused"
    assert info.value.__cause__ is error
    assert len(registry.failures) == 1


@pytest.mark.parametrize("hook", ["lwd_rule_sets", "lwd_layer_variables"])
def test_strict_registry_raises_for_every_hook(hook: str) -> None:
    bad = plugin(**{hook: boom(ValueError("nope"))})
    registry = new_registry([("toyplugin", toy_plugin()), ("bad", bad)], strict=True)
    with pytest.raises(PluginError) as info:
        resolve(ToyNet(), "toy", registry=registry)
    assert str(info.value) == f"plugin 'bad' (unknown distribution) failed in {hook}: ValueError: nope"


@pytest.mark.parametrize(("value", "strict"), [("1", True), ("true", True), ("YES", True), (" on ", True), ("0", False), ("", False), ("no", False)])
def test_strict_environment_variable(monkeypatch: pytest.MonkeyPatch, value: str, strict: bool) -> None:
    monkeypatch.setenv("LWD_RULES_STRICT_PLUGINS", value)
    assert new_registry().strict is strict
    assert new_registry(strict=False).strict is False  # an explicit argument wins
    registry = new_registry([("toyplugin", toy_plugin()), ("bad", plugin(tryfirst=True, lwd_detect=boom(RuntimeError("x"))))])
    if strict:
        with pytest.raises(PluginError, match="'bad'"):
            resolve(ToyNet(), registry=registry)
    else:
        assert resolve(ToyNet(), registry=registry).rules.name == "toy"


# ---------------------------------------------------------------------------------------------
# misspelled hooks
# ---------------------------------------------------------------------------------------------


def test_misspelled_hook_is_reported_not_ignored() -> None:
    typo = plugin(lwd_rule_set=lambda: {"toy": TOY})
    with pytest.raises((PluginError, pluggy.PluginValidationError)) as info:
        new_registry([("typo", typo)])
    assert "lwd_rule_set" in str(info.value)


def test_misspelled_argument_is_reported() -> None:
    typo = plugin(lwd_detect=lambda modle: None)
    with pytest.raises((PluginError, pluggy.PluginValidationError)) as info:
        new_registry([("typo", typo)])
    assert "modle" in str(info.value)


# ---------------------------------------------------------------------------------------------
# lwd_detect: order and first result
# ---------------------------------------------------------------------------------------------


def _detector(answer: str | None, calls: list[str], name: str, **marks: bool) -> SimpleNamespace:
    return plugin(lwd_detect=lambda model: calls.append(name) or answer, **marks)


@pytest.mark.parametrize(
    ("first_marks", "second_marks", "expected", "asked"),
    [
        # same priority: pluggy asks the plugin registered last first
        ({}, {}, "second-set", ["second"]),
        ({"tryfirst": True}, {}, "first-set", ["first"]),
        ({}, {"trylast": True}, "first-set", ["first"]),
        ({"trylast": True}, {"tryfirst": True}, "second-set", ["second"]),
    ],
)
def test_detect_order_and_first_result(first_marks: dict[str, bool], second_marks: dict[str, bool], expected: str, asked: list[str]) -> None:
    calls: list[str] = []
    registry = new_registry([
        ("first", _detector("first-set", calls, "first", **first_marks)),
        ("second", _detector("second-set", calls, "second", **second_marks)),
    ])
    assert registry.detect(Other()) == expected
    assert calls == asked  # the first answer wins: the other plugin is not asked
    calls.clear()
    assert registry.pm.hook.lwd_detect(model=Other()) == expected  # same order as pluggy's own call


def test_detect_skips_none_answers() -> None:
    calls: list[str] = []
    registry = new_registry([
        ("late", _detector("late-set", calls, "late", trylast=True)),
        ("unsure", _detector(None, calls, "unsure", tryfirst=True)),
        ("middle", _detector(None, calls, "middle")),
    ])
    assert registry.detect(Other()) == "late-set"
    assert calls == ["unsure", "middle", "late"]


def test_detect_with_a_hook_wrapper_matches_pluggy() -> None:
    """pluggy wrappers (``@hookimpl(wrapper=True)``) wrap the call; they are not answers themselves."""
    wrapped: list[Any] = []

    def observe(model: Any) -> Any:
        result = yield
        wrapped.append(result)
        return result

    registry = new_registry([
        ("answer", plugin(lwd_detect=lambda model: "toy")),
        ("observer", SimpleNamespace(lwd_detect=hookimpl(wrapper=True)(observe))),
    ])
    assert registry.pm.hook.lwd_detect(model=Other()) == "toy"
    assert registry.detect(Other()) == "toy"


def test_nobody_recognizing_the_model_lists_the_installed_plugins() -> None:
    registry = new_registry([("toyplugin", toy_plugin()), ("unsure", plugin(lwd_detect=lambda model: None))])
    with pytest.raises(RuleError) as info:
        resolve(Other(), {"layer_decay": {"rate": 0.8}}, registry=registry)
    assert str(info.value) == (
        "<rules>: extends: no plugin recognizes Other; set 'extends' or 'layers' (installed plugins: toyplugin, unsure)"
    )
    with pytest.raises(RuleError, match=r"installed plugins: none\)$"):
        resolve(Other(), registry=new_registry())


def test_detection_is_skipped_when_the_rules_map_layers() -> None:
    calls: list[str] = []
    registry = new_registry([("toyplugin", toy_plugin(lwd_detect=lambda model: calls.append("asked") or "toy"))])
    resolve(ToyNet(), "toy", registry=registry)
    resolve(Other(), {"layers": {"default": 0}}, registry=registry)
    assert calls == []


# ---------------------------------------------------------------------------------------------
# lwd_layer_variables
# ---------------------------------------------------------------------------------------------


def test_layer_variables_merge() -> None:
    seen: list[tuple[str, str]] = []
    registry = new_registry([
        ("alpha", plugin(lwd_layer_variables=lambda model, rule_set: seen.append(("alpha", rule_set)) or {"depth": 3, "width": 4})),
        ("beta", plugin(lwd_layer_variables=lambda model, rule_set: seen.append(("beta", rule_set)) or {"depth": 3, "heads": 2})),
        ("gamma", plugin(lwd_layer_variables=lambda model, rule_set: None)),
    ])
    assert registry.layer_variables(ToyNet(), "toy") == {"depth": 3, "width": 4, "heads": 2}
    assert sorted(seen) == [("alpha", "toy"), ("beta", "toy")]


def test_layer_variables_conflict_names_both_plugins() -> None:
    registry = new_registry([
        ("toyplugin", toy_plugin()),
        ("rival", plugin(lwd_layer_variables=lambda model, rule_set: {"depth": 5})),
    ])
    with pytest.raises(PluginError) as info:
        registry.layer_variables(ToyNet(), "toy")
    message = str(info.value)
    assert "toyplugin" in message and "rival" in message and "'depth'" in message and "3" in message and "5" in message, message
    with pytest.raises(PluginError, match="'depth'"):
        resolve(ToyNet(), "toy", registry=registry)


def test_resolve_passes_the_rule_set_name_and_model_to_layer_variables() -> None:
    seen: list[tuple[Any, str]] = []
    model = ToyNet()
    spy = plugin(lwd_layer_variables=lambda model, rule_set: seen.append((model, rule_set)) or None)
    registry = new_registry([("toyplugin", toy_plugin()), ("spy", spy)])
    resolve(model, "toy", registry=registry)
    resolve(model, registry=registry)
    assert seen == [(model, "toy"), (model, "toy")]


# ---------------------------------------------------------------------------------------------
# what the registry reports about itself
# ---------------------------------------------------------------------------------------------


def test_plugins_lists_names_distributions_and_hooks() -> None:
    registry = new_registry([("toyplugin", toy_plugin())])
    registry.register(plugin(lwd_detect=lambda model: None), "detector", "lwd-rules-detector", "0.9")
    assert registry.plugins() == [
        PluginInfo("toyplugin", None, None, HOOKS),
        PluginInfo("detector", "lwd-rules-detector", "0.9", ("lwd_detect",)),
    ]
    assert isinstance(registry, Registry)
