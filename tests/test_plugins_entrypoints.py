"""Entry-point loading in this process: laziness, selection, failures, and the installed convnext plugin.

Selection and failure tests replace ``lwd_rules.plugins.entry_points`` with fake entry points (objects
with ``name``, ``dist`` and ``load``) so they do not depend on what else is installed; the convnext
tests use the real, installed entry point (``LWD_RULES_PLUGINS=convnext`` keeps others out).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import lwd_rules.plugins as plugins_module
import lwd_rules_convnext
from lwd_rules import PluginError, RuleError, hookimpl, load_rules, resolve
from lwd_rules.plugins import PluginFailure, PluginInfo, get_registry, new_registry, use_registry
from lwd_rules.rules.ruleset import Provenance

RULES_DIR = Path(lwd_rules_convnext.__file__).parent / "rules"
CONVNEXT_FILE = str(RULES_DIR / "convnext.yaml")
GROUP_FILE = str(RULES_DIR / "convnext-group.yaml")
HOOKS = ("lwd_detect", "lwd_layer_variables", "lwd_rule_sets")


class ConvNeXtMini(torch.nn.Module):
    """Official ConvNeXt layout in miniature: depths [1, 2]."""

    def __init__(self) -> None:
        super().__init__()
        self.downsample_layers = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])
        self.stages = torch.nn.ModuleList(
            [torch.nn.ModuleList([torch.nn.Linear(2, 2)]), torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])]
        )
        self.head = torch.nn.Linear(2, 1)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("LWD_RULES_STRICT_PLUGINS", raising=False)
    monkeypatch.setenv("LWD_RULES_PLUGINS", "convnext")
    previous = use_registry(None)
    yield
    use_registry(previous)


def fake_point(name: str, load: Callable[[], Any], dist: str | None = None, version: str = "1.0") -> SimpleNamespace:
    distribution = SimpleNamespace(metadata={"Name": dist}, version=version) if dist else None
    return SimpleNamespace(name=name, dist=distribution, load=load, group="lwd_rules")


def detector(answer: str) -> SimpleNamespace:
    return SimpleNamespace(lwd_detect=hookimpl(lambda model: answer))


@pytest.fixture
def fake_points(monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, int]]:
    """Install fake entry points; returns a dict counting each one's loads."""

    def install(*points: SimpleNamespace) -> dict[str, int]:
        loads = {p.name: 0 for p in points}

        def counted(point: SimpleNamespace) -> SimpleNamespace:
            def load() -> Any:
                loads[point.name] += 1
                return point.load()

            return SimpleNamespace(name=point.name, dist=point.dist, load=load, group=point.group)

        wrapped = [counted(p) for p in points]

        def entry_points(*, group: str) -> list[SimpleNamespace]:
            return list(wrapped) if group == "lwd_rules" else []

        monkeypatch.setattr(plugins_module, "entry_points", entry_points)
        return loads

    return install


# ---------------------------------------------------------------------------------------------
# lazily, once
# ---------------------------------------------------------------------------------------------


def test_entry_points_are_read_once_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    real = plugins_module.entry_points

    def counting(*, group: str) -> Any:
        reads.append(group)
        return real(group=group)

    monkeypatch.setattr(plugins_module, "entry_points", counting)
    assert reads == []
    registry = get_registry()
    assert reads == ["lwd_rules"]
    resolve(ConvNeXtMini())
    resolve(ConvNeXtMini(), "convnext")
    load_rules("convnext-group")
    assert get_registry() is registry
    assert reads == ["lwd_rules"]


def test_concurrent_first_use_loads_once(fake_points: Callable[..., dict[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LWD_RULES_PLUGINS", "alpha")
    loads = fake_points(fake_point("alpha", lambda: detector("alpha-set"), "lwd-rules-alpha"))
    barrier = threading.Barrier(8)
    seen: list[Any] = []

    def worker() -> None:
        barrier.wait()
        seen.append(get_registry())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8 and all(r is seen[0] for r in seen)
    assert loads == {"alpha": 1}


# ---------------------------------------------------------------------------------------------
# LWD_RULES_PLUGINS
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "loaded"),
    [
        (None, ["alpha", "beta", "gamma"]),  # unset: all, in name order
        ("", []),
        ("gamma,alpha", ["alpha", "gamma"]),
        (" beta , ", ["beta"]),
        ("delta", []),
    ],
)
def test_plugins_variable_selects_entry_points(
    fake_points: Callable[..., dict[str, int]], monkeypatch: pytest.MonkeyPatch, value: str | None, loaded: list[str]
) -> None:
    if value is None:
        monkeypatch.delenv("LWD_RULES_PLUGINS")
    else:
        monkeypatch.setenv("LWD_RULES_PLUGINS", value)
    loads = fake_points(
        fake_point("gamma", lambda: detector("gamma-set"), "lwd-rules-gamma", "3.0"),
        fake_point("alpha", lambda: detector("alpha-set"), "lwd-rules-alpha", "1.0"),
        fake_point("beta", lambda: detector("beta-set"), "lwd-rules-beta", "2.0"),
    )
    registry = get_registry()
    versions = {"alpha": "1.0", "beta": "2.0", "gamma": "3.0"}
    assert registry.plugins() == [PluginInfo(n, f"lwd-rules-{n}", versions[n], ("lwd_detect",)) for n in loaded]
    assert loads == {n: int(n in loaded) for n in ("gamma", "alpha", "beta")}  # the others are never imported
    assert registry.failures == []


def test_no_plugins_loaded_means_detection_lists_none(fake_points: Callable[..., dict[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LWD_RULES_PLUGINS", "")
    fake_points(fake_point("alpha", lambda: detector("alpha-set"), "lwd-rules-alpha"))
    with pytest.raises(RuleError) as info:
        resolve(ConvNeXtMini(), {"layer_decay": {"rate": 0.8}})
    assert str(info.value) == (
        "<rules>: extends: no plugin recognizes ConvNeXtMini; set 'extends' or 'layers' (installed plugins: none)"
    )


# ---------------------------------------------------------------------------------------------
# failing entry points
# ---------------------------------------------------------------------------------------------


def _raise_import_error() -> Any:
    raise ImportError("needs the package 'missing_dependency'")


def test_import_failure_is_recorded_and_the_others_load(fake_points: Callable[..., dict[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LWD_RULES_PLUGINS", "alpha,broken,omega")
    fake_points(
        fake_point("alpha", lambda: detector("alpha-set"), "lwd-rules-alpha", "1.0"),
        fake_point("broken", _raise_import_error, "lwd-rules-broken", "0.5.0"),
        fake_point("omega", lambda: SimpleNamespace(lwd_rule_sets=hookimpl(lambda: {"omega": {"version": 1}})), "lwd-rules-omega", "9.0"),
    )
    registry = get_registry()
    assert [p.name for p in registry.plugins()] == ["alpha", "omega"]
    assert registry.failures == [
        PluginFailure("broken", "lwd-rules-broken", "0.5.0", "ImportError: needs the package 'missing_dependency'")
    ]
    assert str(registry.failures[0]) == "plugin 'broken' (lwd-rules-broken 0.5.0) failed: ImportError: needs the package 'missing_dependency'"
    assert list(registry.rule_sets()) == ["omega"]
    assert registry.detect(ConvNeXtMini()) == "alpha-set"


def test_import_failure_is_fatal_when_strict(fake_points: Callable[..., dict[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LWD_RULES_PLUGINS", "alpha,broken")
    monkeypatch.setenv("LWD_RULES_STRICT_PLUGINS", "1")
    fake_points(
        fake_point("alpha", lambda: detector("alpha-set"), "lwd-rules-alpha", "1.0"),
        fake_point("broken", _raise_import_error, "lwd-rules-broken", "0.5.0"),
    )
    expected = "plugin 'broken' (lwd-rules-broken 0.5.0) failed: ImportError: needs the package 'missing_dependency'"
    with pytest.raises(PluginError) as info:
        get_registry()
    assert str(info.value) == expected
    assert isinstance(info.value.__cause__, ImportError)
    with pytest.raises(PluginError) as info:
        resolve(ConvNeXtMini())
    assert str(info.value) == expected


def test_real_entry_point_without_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LWD_RULES_PLUGINS", "ghost")
    point = EntryPoint("ghost", "lwd_rules_no_such_module_for_tests", "lwd_rules")
    monkeypatch.setattr(plugins_module, "entry_points", lambda *, group: [point])
    registry = get_registry()
    assert registry.plugins() == []
    assert [str(f) for f in registry.failures] == [
        "plugin 'ghost' (unknown distribution) failed: ModuleNotFoundError: No module named 'lwd_rules_no_such_module_for_tests'"
    ]


def test_misspelled_hook_through_an_entry_point_is_a_named_failure(fake_points: Callable[..., dict[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LWD_RULES_PLUGINS", "alpha,typo")
    typo = SimpleNamespace(lwd_rule_set=hookimpl(lambda: {"typo-set": {"version": 1}}))
    fake_points(
        fake_point("alpha", lambda: detector("alpha-set"), "lwd-rules-alpha", "1.0"),
        fake_point("typo", lambda: typo, "lwd-rules-typo", "0.0.1"),
    )
    registry = get_registry()
    assert [p.name for p in registry.plugins()] == ["alpha"]
    assert not registry.pm.has_plugin("typo")
    assert len(registry.failures) == 1
    failure = registry.failures[0]
    assert (failure.plugin, failure.distribution, failure.version, failure.hook) == ("typo", "lwd-rules-typo", "0.0.1", None)
    assert failure.reason.startswith("PluginValidationError: unknown hook 'lwd_rule_set'"), failure.reason
    assert str(failure).startswith("plugin 'typo' (lwd-rules-typo 0.0.1) failed: PluginValidationError: unknown hook 'lwd_rule_set'")
    registry.pm.check_pending()  # nothing of the rejected plugin is left behind
    assert "typo-set" not in registry.rule_sets()


def test_misspelled_hook_through_an_entry_point_is_fatal_when_strict(
    fake_points: Callable[..., dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LWD_RULES_PLUGINS", "typo")
    monkeypatch.setenv("LWD_RULES_STRICT_PLUGINS", "1")
    typo = SimpleNamespace(lwd_rule_set=hookimpl(lambda: {}))
    fake_points(fake_point("typo", lambda: typo, "lwd-rules-typo", "0.0.1"))
    with pytest.raises(PluginError, match=r"^plugin 'typo' \(lwd-rules-typo 0.0.1\) failed: PluginValidationError: unknown hook 'lwd_rule_set'"):
        get_registry()


def test_new_registry_can_add_entry_points_to_given_plugins(fake_points: Callable[..., dict[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LWD_RULES_PLUGINS", "alpha")
    fake_points(fake_point("alpha", lambda: detector("alpha-set"), "lwd-rules-alpha", "1.0"))
    registry = new_registry([("mine", detector("mine-set"))], entry_points_too=True)
    assert [(p.name, p.distribution) for p in registry.plugins()] == [("mine", None), ("alpha", "lwd-rules-alpha")]
    assert registry.detect(ConvNeXtMini()) == "alpha-set"  # same priority: registered last, asked first
    assert new_registry([("mine", detector("mine-set"))]).plugins() == [PluginInfo("mine", None, None, ("lwd_detect",))]


# ---------------------------------------------------------------------------------------------
# the installed convnext plugin: distribution, provenance, rows
# ---------------------------------------------------------------------------------------------

# depths [1, 2] -> num_layers 3; downsample_layers.S -> sum(depths[:S]) + 1, stages.S.B -> sum(depths[:S]) + B + 1,
# head -> num_layers + 1 = 4 (rule lines 10, 12 and default line 14 of convnext.yaml); wd 0.05, 0 for biases.
CONVNEXT_IDS = [
    ("downsample_layers.0.weight", 1, 0.05, 10), ("downsample_layers.0.bias", 1, 0.0, 10),
    ("downsample_layers.1.weight", 2, 0.05, 10), ("downsample_layers.1.bias", 2, 0.0, 10),
    ("stages.0.0.weight", 1, 0.05, 12), ("stages.0.0.bias", 1, 0.0, 12),
    ("stages.1.0.weight", 2, 0.05, 12), ("stages.1.0.bias", 2, 0.0, 12),
    ("stages.1.1.weight", 3, 0.05, 12), ("stages.1.1.bias", 3, 0.0, 12),
    ("head.weight", 4, 0.05, 14), ("head.bias", 4, 0.0, 14),
]


def convnext_rows(rate: float) -> list[tuple[Any, ...]]:
    return [(name, layer, rate ** (4 - layer), wd, f"{CONVNEXT_FILE}:{line}") for name, layer, wd, line in CONVNEXT_IDS]


def plan_rows(plan: Any) -> list[tuple[Any, ...]]:
    return [(r.name, r.layer_id, r.lr_scale, r.weight_decay, r.rule) for r in plan.params]


def assert_rows(plan: Any, expected: list[tuple[Any, ...]]) -> None:
    got = plan_rows(plan)
    assert [(g[0], g[1], g[3], g[4]) for g in got] == [(e[0], e[1], e[3], e[4]) for e in expected]
    assert [g[2] for g in got] == pytest.approx([e[2] for e in expected], rel=1e-12)


def test_convnext_plugin_is_listed_with_its_distribution() -> None:
    assert get_registry().plugins() == [PluginInfo("convnext", "lwd-rules-convnext", "0.1.0", HOOKS)]
    assert get_registry().failures == []


def test_registered_rule_set_records_plugin_and_file() -> None:
    registered = get_registry().rule_set("convnext")
    assert registered is not None
    assert (registered.name, str(registered.source), registered.plugin, registered.version) == (
        "convnext", CONVNEXT_FILE, "lwd-rules-convnext", "0.1.0"
    )


def test_rule_set_provenance_follows_extends() -> None:
    assert load_rules("convnext-group").provenance == (
        Provenance(CONVNEXT_FILE, "convnext", "lwd-rules-convnext", "0.1.0"),
        Provenance(GROUP_FILE, "convnext-group", "lwd-rules-convnext", "0.1.0"),
    )
    assert load_rules("convnext").provenance == (Provenance(CONVNEXT_FILE, "convnext", "lwd-rules-convnext", "0.1.0"),)
    assert str(load_rules("convnext").provenance[0]) == "convnext (lwd-rules-convnext 0.1.0)"


def test_resolve_with_only_a_rate_detects_convnext() -> None:
    plan = resolve(ConvNeXtMini(), {"layer_decay": {"rate": 0.8}})
    assert plan.rules.name == "convnext"
    assert plan.variables == {"depths": [1, 2], "num_layers": 3}
    assert plan.rules.provenance == (
        Provenance(CONVNEXT_FILE, "convnext", "lwd-rules-convnext", "0.1.0"),
        Provenance("<dict>"),
    )
    assert_rows(plan, convnext_rows(0.8))


def test_resolve_convnext_by_name_and_by_detection() -> None:
    by_name = resolve(ConvNeXtMini(), "convnext")
    assert by_name.rules.provenance == (Provenance(CONVNEXT_FILE, "convnext", "lwd-rules-convnext", "0.1.0"),)
    assert_rows(by_name, convnext_rows(0.9))
    assert_rows(resolve(ConvNeXtMini()), convnext_rows(0.9))


def test_extending_convnext_from_a_user_file(tmp_path: Path) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text("extends: convnext\nlayer_decay:\n  rate: 0.5\n", encoding="utf-8")
    plan = resolve(ConvNeXtMini(), user)
    assert plan.rules.provenance == (
        Provenance(CONVNEXT_FILE, "convnext", "lwd-rules-convnext", "0.1.0"),
        Provenance(str(user), None, None, None),
    )
    assert_rows(plan, convnext_rows(0.5))
