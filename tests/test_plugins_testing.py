"""lwd_rules.testing: the helpers plugin authors use in their own tests."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch

import lwd_rules.plugins as plugins_module
from lwd_rules import PluginError, hookimpl, load_rules, resolve
from lwd_rules.plugins import get_registry, new_registry, use_registry
from lwd_rules.rules.ruleset import Provenance
from lwd_rules.testing import assert_layer_ids, make_registry, registry_for

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
}

# ToyNet(3) under TOY: embed 0, blocks.i i + 1, norm and head num_layers + 1 = 4.
EXPECTED = {
    "embed.weight": 0, "embed.bias": 0,
    "blocks.0.weight": 1, "blocks.0.bias": 1,
    "blocks.1.weight": 2, "blocks.1.bias": 2,
    "blocks.2.weight": 3, "blocks.2.bias": 3,
    "norm.weight": 4, "norm.bias": 4,
    "head.weight": 4, "head.bias": 4,
}


class ToyNet(torch.nn.Module):
    def __init__(self, depth: int = 3) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(2, 4)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(depth))
        self.norm = torch.nn.LayerNorm(4)
        self.head = torch.nn.Linear(4, 3)


class ToyPlugin:
    """A plugin as a class instance."""

    @hookimpl
    def lwd_rule_sets(self) -> dict[str, Any]:
        return {"toy": TOY}

    @hookimpl
    def lwd_layer_variables(self, model: Any, rule_set: str) -> dict[str, Any] | None:
        return {"depth": len(model.blocks)} if rule_set == "toy" else None

    @hookimpl
    def lwd_detect(self, model: Any) -> str | None:
        return "toy" if isinstance(model, ToyNet) else None


def module_plugin() -> types.ModuleType:
    """A plugin as a module (what an entry point gives)."""
    module = types.ModuleType("lwd_rules_fake_module_plugin")

    @hookimpl
    def lwd_rule_sets() -> dict[str, Any]:
        return {"toy-fast": {"version": 1, "name": "toy-fast", "extends": "toy", "layer_decay": {"rate": 0.25}}}

    @hookimpl
    def lwd_layer_variables(model: Any, rule_set: str) -> dict[str, Any] | None:
        return {"depth": len(model.blocks)} if rule_set == "toy-fast" else None

    module.lwd_rule_sets = lwd_rule_sets  # type: ignore[attr-defined]
    module.lwd_layer_variables = lwd_layer_variables  # type: ignore[attr-defined]
    return module


class Broken:
    @hookimpl
    def lwd_detect(self, model: Any) -> str | None:
        raise RuntimeError("detector is broken")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("LWD_RULES_STRICT_PLUGINS", raising=False)
    monkeypatch.setenv("LWD_RULES_PLUGINS", "convnext")  # installed=True sees only the in-repo plugin
    previous = use_registry(None)
    yield
    use_registry(previous)


# ---------------------------------------------------------------------------------------------
# make_registry
# ---------------------------------------------------------------------------------------------


def test_make_registry_holds_exactly_the_given_plugins() -> None:
    registry = make_registry(ToyPlugin(), module_plugin())
    assert [(p.name, p.distribution, p.version, p.hooks) for p in registry.plugins()] == [
        ("ToyPlugin", None, None, ("lwd_detect", "lwd_layer_variables", "lwd_rule_sets")),
        ("lwd_rules_fake_module_plugin", None, None, ("lwd_layer_variables", "lwd_rule_sets")),
    ]
    assert sorted(registry.rule_sets()) == ["toy", "toy-fast"]
    assert registry.strict is True
    plan = resolve(ToyNet(), "toy-fast", registry=registry)
    assert plan.scales == (0.25**4, 0.25**3, 0.25**2, 0.25, 1.0)
    assert plan.rules.provenance == (
        Provenance("<toy>", "toy", "ToyPlugin", None),
        Provenance("<toy-fast>", "toy-fast", "lwd_rules_fake_module_plugin", None),
    )


def test_make_registry_is_strict() -> None:
    registry = make_registry(ToyPlugin(), Broken())
    with pytest.raises(PluginError) as info:
        resolve(ToyNet(), registry=registry)
    assert str(info.value) == "plugin 'Broken' (unknown distribution) failed in lwd_detect: RuntimeError: detector is broken"


def test_make_registry_does_not_touch_the_process_wide_registry() -> None:
    sentinel = new_registry()
    use_registry(sentinel)
    make_registry(ToyPlugin())
    assert get_registry() is sentinel


def test_make_registry_with_installed_plugins() -> None:
    registry = make_registry(ToyPlugin(), installed=True)
    assert [p.name for p in registry.plugins()] == ["ToyPlugin", "convnext"]
    assert registry.plugins()[1].distribution == "lwd-rules-convnext"
    assert {"toy", "convnext"} <= set(registry.rule_sets())
    assert registry.failures == []


def test_make_registry_with_an_installed_plugin_passed_in_again() -> None:
    """A plugin author's usual case: their own plugin is installed (pip install -e .) and also passed in."""
    import lwd_rules_convnext

    registry = make_registry(lwd_rules_convnext, installed=True)
    assert registry.failures == []
    assert len([p for _, p in registry.pm.list_name_plugin() if p is lwd_rules_convnext]) == 1
    assert "convnext" in registry.rule_sets()


def test_make_registry_rejects_a_misspelled_hook() -> None:
    class Typo:
        @hookimpl
        def lwd_detects(self, model: Any) -> str | None:
            return None

    with pytest.raises(Exception, match="lwd_detects"):
        make_registry(Typo())


# ---------------------------------------------------------------------------------------------
# registry_for
# ---------------------------------------------------------------------------------------------


def test_registry_for_makes_resolve_see_exactly_those_plugins() -> None:
    before = plugins_module._registry
    with registry_for(ToyPlugin()) as registry:
        assert get_registry() is registry
        assert [p.name for p in registry.plugins()] == ["ToyPlugin"]
        assert_layer_ids(ToyNet(), None, EXPECTED)
        assert resolve(ToyNet(), "toy").rules.provenance == (Provenance("<toy>", "toy", "ToyPlugin", None),)
        assert load_rules("toy").name == "toy"
        with pytest.raises(Exception, match="no rule set named 'convnext'"):
            load_rules("convnext")  # installed plugins are not seen
    assert plugins_module._registry is before


def test_registry_for_restores_the_previous_registry_on_error() -> None:
    sentinel = new_registry()
    use_registry(sentinel)
    with pytest.raises(ZeroDivisionError):
        with registry_for(ToyPlugin()):
            1 / 0
    assert get_registry() is sentinel


def test_registry_for_nests() -> None:
    with registry_for(ToyPlugin()) as outer:
        with registry_for(module_plugin()) as inner:
            assert get_registry() is inner
        assert get_registry() is outer


def test_registry_for_with_installed_plugins() -> None:
    with registry_for(ToyPlugin(), installed=True) as registry:
        assert [p.name for p in registry.plugins()] == ["ToyPlugin", "convnext"]
        assert load_rules("convnext").provenance[0].plugin == "lwd-rules-convnext"


# ---------------------------------------------------------------------------------------------
# assert_layer_ids
# ---------------------------------------------------------------------------------------------


def test_assert_layer_ids_passes_and_returns_the_plan() -> None:
    registry = make_registry(ToyPlugin())
    plan = assert_layer_ids(ToyNet(), "toy", EXPECTED, registry=registry)
    assert {row.name: row.layer_id for row in plan.params} == EXPECTED
    assert plan.rules.name == "toy"


def test_assert_layer_ids_with_a_dict_source_and_detection() -> None:
    registry = make_registry(ToyPlugin())
    assert_layer_ids(ToyNet(), {"layer_decay": {"rate": 0.9}}, EXPECTED, registry=registry)
    two = {k: v for k, v in EXPECTED.items() if not k.startswith("blocks.2.")}
    two.update({"norm.weight": 3, "norm.bias": 3, "head.weight": 3, "head.bias": 3})
    assert_layer_ids(ToyNet(2), None, two, registry=registry)


def test_assert_layer_ids_lists_every_difference() -> None:
    registry = make_registry(ToyPlugin())
    expected = {k: v for k, v in EXPECTED.items() if not k.startswith("head.")}
    expected["blocks.0.weight"] = 5
    expected["norm.bias"] = 0
    expected["ghost.weight"] = 1
    with pytest.raises(AssertionError) as info:
        assert_layer_ids(ToyNet(), "toy", expected, registry=registry)
    assert str(info.value) == (
        "layer ids differ:\n"
        "not in expected: head.bias, head.weight\n"
        "not trainable in the plan: ghost.weight\n"
        "blocks.0.weight: expected 5, got 1\n"
        "norm.bias: expected 0, got 4"
    )


def test_assert_layer_ids_ignores_frozen_parameters_and_reports_them_if_expected() -> None:
    registry = make_registry(ToyPlugin())
    model = ToyNet()
    model.embed.requires_grad_(False)
    trainable = {k: v for k, v in EXPECTED.items() if not k.startswith("embed.")}
    assert_layer_ids(model, "toy", trainable, registry=registry)
    with pytest.raises(AssertionError) as info:
        assert_layer_ids(model, "toy", EXPECTED, registry=registry)
    assert str(info.value) == "layer ids differ:\nnot trainable in the plan: embed.bias, embed.weight"


def test_assert_layer_ids_uses_the_process_wide_registry_by_default() -> None:
    with registry_for(ToyPlugin()):
        assert_layer_ids(ToyNet(), "toy", EXPECTED)
