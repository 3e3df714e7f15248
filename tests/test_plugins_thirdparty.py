"""A real third-party plugin, pip-installed into this environment and discovered through entry points.

The module fixture writes three throwaway distributions to a temporary directory and installs them
with one ``pip install --no-deps --no-build-isolation`` (no network):

- ``lwd-rules-toyplug 0.3.0`` (entry point ``toyplug``): a YAML rule set shipped as package data
  (``toy``), a dict rule set extending it (``toy-fast``), ``lwd_layer_variables`` (``depth``) and
  ``lwd_detect`` for its own ``ToyNet`` model class;
- ``lwd-rules-brokenplug 0.0.1`` (entry point ``brokenplug``): its module raises ImportError on import;
- ``lwd-rules-typoplug 0.0.2`` (entry point ``typoplug``): implements the misspelled hook ``lwd_rule_set``.

Each scenario then runs ``probe.py`` in a fresh interpreter (so entry points are read anew) with its
own environment, all scenarios at once, and the tests compare the JSON it prints with expectations
written by hand. The distributions are uninstalled at teardown, leaving the venv as it was.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

import lwd_rules_convnext
import lwd_rules_timm

DISTRIBUTIONS = ("lwd-rules-toyplug", "lwd-rules-brokenplug", "lwd-rules-typoplug")
ENV_VARS = ("LWD_RULES_PLUGINS", "LWD_RULES_STRICT_PLUGINS")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "{version}"
description = "Throwaway lwd-rules plugin written by tests/test_plugins_thirdparty.py"
requires-python = ">=3.10"

[project.entry-points.lwd_rules]
{entry} = "{package}"

[tool.setuptools]
packages = ["{package}"]

[tool.setuptools.package-data]
{package} = ["rules/*.yaml"]
"""

# Line numbers matter: rows' ``rule`` is ``file:line`` of the rule that matched.
TOY_YAML = """\
# Toy rule set, shipped as package data of lwd-rules-toyplug.
version: 1
name: toy
description: ToyNet, one layer id per block
layers:
  variables: [depth]
  num_layers: depth
  rules:
    - match: '^embed\\.'
      layer: 0
    - match: '^blocks\\.(?P<block>\\d+)\\.'
      layer: block + 1
  default: num_layers + 1
layer_decay:
  rate: 0.5
weight_decay:
  value: 0.1
  exclude: ['ndim<=1']
"""
EMBED_LINE, BLOCKS_LINE, DEFAULT_LINE = 9, 11, 13

TOY_INIT = '''\
"""Throwaway third-party lwd-rules plugin: rule sets, variables and detection for ToyNet."""

from pathlib import Path

from lwd_rules import hookimpl

RULES = Path(__file__).parent / "rules"
CALLS = {"lwd_rule_sets": 0, "lwd_layer_variables": 0, "lwd_detect": 0}
SEEN_RULE_SETS = []


@hookimpl
def lwd_rule_sets():
    CALLS["lwd_rule_sets"] += 1
    return {
        "toy": str(RULES / "toy.yaml"),
        "toy-fast": {
            "version": 1,
            "name": "toy-fast",
            "extends": "toy",
            "layer_decay": {"rate": 0.8},
            "weight_decay": {"value": 0.2},
        },
    }


@hookimpl
def lwd_layer_variables(model, rule_set):
    CALLS["lwd_layer_variables"] += 1
    SEEN_RULE_SETS.append(rule_set)
    if rule_set not in ("toy", "toy-fast"):
        return None
    return {"depth": len(model.blocks)}


@hookimpl
def lwd_detect(model):
    CALLS["lwd_detect"] += 1
    cls = type(model)
    if cls.__module__ == "lwd_rules_toyplug.models" and cls.__name__ == "ToyNet":
        return "toy"
    return None
'''

TOY_MODELS = '''\
import torch


class ToyNet(torch.nn.Module):
    def __init__(self, depth: int = 3) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(2, 4)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(depth))
        self.norm = torch.nn.LayerNorm(4)
        self.head = torch.nn.Linear(4, 3)
'''

BROKEN_INIT = '''\
"""A plugin whose import fails, as when one of its dependencies is missing."""

raise ImportError("lwd_rules_brokenplug needs the package 'toy_missing_dependency'")
'''

TYPO_INIT = '''\
"""A plugin that misspells its hook: lwd_rule_set instead of lwd_rule_sets."""

from lwd_rules import hookimpl


@hookimpl
def lwd_rule_set():
    return {"typo-set": {"version": 1}}
'''

BROKEN_REASON = "ImportError: lwd_rules_brokenplug needs the package 'toy_missing_dependency'"

# Runs in a fresh interpreter; prints one JSON object. Every action is wrapped so that a library error
# becomes data the tests can assert on instead of a crash.
PROBE = '''\
import json
import os
import sys


def plugin_modules():
    return sorted(m for m in sys.modules if m.startswith("lwd_rules_"))


results = {}
out = {}
import lwd_rules
from lwd_rules import resolve
from lwd_rules.plugins import get_registry, use_registry

out["modules_after_import"] = plugin_modules()

import torch


class ConvNeXtMini(torch.nn.Module):
    """Official ConvNeXt layout in miniature: depths [1, 2]."""

    def __init__(self):
        super().__init__()
        self.downsample_layers = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])
        self.stages = torch.nn.ModuleList(
            [torch.nn.ModuleList([torch.nn.Linear(2, 2)]), torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])]
        )
        self.head = torch.nn.Linear(2, 1)


def attempt(fn):
    try:
        return {"ok": fn()}
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}


def plan_json(plan):
    return {
        "rows": [[r.name, r.layer_id, r.lr_scale, r.weight_decay, r.group, r.rule] for r in plan.params],
        "provenance": [[p.file, p.name, p.plugin, p.version] for p in plan.rules.provenance],
        "rule_set": plan.rules.name,
        "num_layers": plan.num_layers,
        "variables": plan.variables,
    }


def registry_summary():
    registry = get_registry()
    return {
        "same_object": get_registry() is registry,
        "plugins": [[p.name, p.distribution, p.version, list(p.hooks)] for p in registry.plugins()],
        "failures": [[f.plugin, f.distribution, f.version, f.reason, f.hook, str(f)] for f in registry.failures],
    }


def rule_sets():
    return {name: [str(r.source) if not isinstance(r.source, dict) else "<dict>", r.plugin, r.version] for name, r in get_registry().rule_sets().items()}


def toy(depth=3):
    from lwd_rules_toyplug.models import ToyNet

    return ToyNet(depth)


def scenario(env):
    for key in ("LWD_RULES_PLUGINS", "LWD_RULES_STRICT_PLUGINS"):
        os.environ.pop(key, None)
    os.environ.update(env)
    use_registry(None)  # the next get_registry() reads the entry points and the variables again
    toyplug = sys.modules.get("lwd_rules_toyplug")
    calls_before = dict(toyplug.CALLS) if toyplug else {}
    seen_before = len(toyplug.SEEN_RULE_SETS) if toyplug else 0
    out = {"modules_before": plugin_modules()}
    out["registry"] = attempt(registry_summary)
    out["modules_after_registry"] = plugin_modules()
    toyplug = sys.modules.get("lwd_rules_toyplug")
    out["rule_sets_calls_before_lookup"] = toyplug.CALLS["lwd_rule_sets"] - calls_before.get("lwd_rule_sets", 0) if toyplug else None
    out["rule_sets"] = attempt(rule_sets)
    out["convnext_by_detection"] = attempt(lambda: plan_json(resolve(ConvNeXtMini())))
    out["toy_by_name"] = attempt(lambda: plan_json(resolve(toy(), "toy")))
    out["toy_fast_by_name"] = attempt(lambda: plan_json(resolve(toy(2), "toy-fast")))
    out["toy_by_detection"] = attempt(lambda: plan_json(resolve(toy())))
    out["toy_by_detection_rate"] = attempt(lambda: plan_json(resolve(toy(), {"layer_decay": {"rate": 0.8}})))
    out["convnext_name"] = attempt(lambda: plan_json(resolve(ConvNeXtMini(), "convnext")))
    out["modules_at_end"] = plugin_modules()
    toyplug = sys.modules.get("lwd_rules_toyplug")
    if toyplug is not None:
        out["toyplug_file"] = toyplug.__file__
        out["toyplug_calls"] = {k: v - calls_before.get(k, 0) for k, v in toyplug.CALLS.items()}
        out["toyplug_seen_rule_sets"] = list(toyplug.SEEN_RULE_SETS[seen_before:])
    return out


first = True
for name, env in json.loads(sys.argv[1]):
    if not first:
        out = {}
    out.update(scenario(env))
    results[name] = out
    first = False
print(json.dumps(results))
'''

SCENARIOS: dict[str, dict[str, str]] = {
    "default": {},
    "strict": {"LWD_RULES_STRICT_PLUGINS": "1"},
    "none": {"LWD_RULES_PLUGINS": ""},
    "only_toyplug": {"LWD_RULES_PLUGINS": " toyplug ,"},
    "strict_typo": {"LWD_RULES_STRICT_PLUGINS": "1", "LWD_RULES_PLUGINS": "convnext,typoplug"},
    "strict_healthy": {"LWD_RULES_STRICT_PLUGINS": "1", "LWD_RULES_PLUGINS": "convnext,toyplug"},
}
# One fresh interpreter per group (importing torch dominates the runtime). The first scenario of a group
# gets its variables from the process environment; later ones set os.environ and reset the registry.
PROCESSES = (("default",), ("strict",), ("none", "only_toyplug", "strict_typo", "strict_healthy"))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _distribution(root: Path, dist: str, version: str, entry: str, package: str, files: dict[str, str]) -> Path:
    where = root / dist
    _write(where / "pyproject.toml", PYPROJECT.format(dist=dist, version=version, entry=entry, package=package))
    for relative, text in files.items():
        _write(where / package / relative, text)
    return where


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)


def _uninstall() -> None:
    _pip("uninstall", "-y", "-q", *DISTRIBUTIONS)


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Install the three distributions once, run every scenario's probe in parallel, uninstall."""
    root = tmp_path_factory.mktemp("thirdparty")
    dists = [
        _distribution(root, "lwd-rules-toyplug", "0.3.0", "toyplug", "lwd_rules_toyplug",
                      {"__init__.py": TOY_INIT, "models.py": TOY_MODELS, "rules/toy.yaml": TOY_YAML}),
        _distribution(root, "lwd-rules-brokenplug", "0.0.1", "brokenplug", "lwd_rules_brokenplug", {"__init__.py": BROKEN_INIT}),
        _distribution(root, "lwd-rules-typoplug", "0.0.2", "typoplug", "lwd_rules_typoplug", {"__init__.py": TYPO_INIT}),
    ]
    probe = root / "probe.py"
    _write(probe, PROBE)
    workdir = root / "cwd"  # not a source dir: the plugins must be imported from site-packages
    workdir.mkdir()
    try:
        installed = _pip("install", "--no-deps", "--no-build-isolation", "-q", *map(str, dists))
        assert installed.returncode == 0, f"pip install failed:\n{installed.stdout}\n{installed.stderr}"
        base_env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
        base_env["PYTHONDONTWRITEBYTECODE"] = "1"
        running = [
            subprocess.Popen([sys.executable, str(probe), json.dumps([[name, SCENARIOS[name]] for name in group])],
                             cwd=workdir, env={**base_env, **SCENARIOS[group[0]]},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for group in PROCESSES
        ]
        out = {}
        for group, process in zip(PROCESSES, running):
            stdout, stderr = process.communicate(timeout=240)
            assert process.returncode == 0, f"probe for {group} crashed:\n{stderr}"
            out.update(json.loads(stdout.strip().splitlines()[-1]))
        yield out
    finally:
        _uninstall()
    left = [d for d in DISTRIBUTIONS if _installed(d)]
    assert not left, f"still installed after teardown: {left}"


def test_distributions_are_installed_in_the_running_environment(reports: Any) -> None:
    for dist, version in (("lwd-rules-toyplug", "0.3.0"), ("lwd-rules-brokenplug", "0.0.1"), ("lwd-rules-typoplug", "0.0.2")):
        assert importlib.metadata.version(dist) == version


# ---------------------------------------------------------------------------------------------
# expectations, derived by hand
# ---------------------------------------------------------------------------------------------

SITE = Path(sysconfig.get_paths()["purelib"]).resolve()
TOY_FILE = str(SITE / "lwd_rules_toyplug" / "rules" / "toy.yaml")
CONVNEXT_FILE = str(Path(lwd_rules_convnext.__file__).parent / "rules" / "convnext.yaml")
HOOKS = ["lwd_detect", "lwd_layer_variables", "lwd_rule_sets"]
CONVNEXT_INFO = ["convnext", "lwd-rules-convnext", "0.1.0", HOOKS]
TOYPLUG_INFO = ["toyplug", "lwd-rules-toyplug", "0.3.0", HOOKS]
# the bundled timm plugin is installed too (make test installs every plugins/* distribution)
# distributions of the bundled plugins, each a directory of plugins/ with its own pyproject.toml
BUNDLED = {
    line.split("=", 1)[1].strip().strip('"')
    for pyproject in (Path(__file__).resolve().parents[1] / "plugins").glob("*/pyproject.toml")
    for line in pyproject.read_text(encoding="utf-8").splitlines()
    if line.startswith("name =")
}
TIMM_INFO = ["timm", "lwd-rules-timm", "0.1.0", ["lwd_detect", "lwd_layer_ids", "lwd_layer_variables", "lwd_rule_sets"]]
TOY_PROVENANCE = [TOY_FILE, "toy", "lwd-rules-toyplug", "0.3.0"]


def toy_rows(depth: int, scales: list[float], wd: float) -> list[list[Any]]:
    """ToyNet(depth) under ``toy``: embed -> 0, blocks.i -> i + 1, norm/head -> default depth + 1.

    Groups are formed in first-seen order by (scale, weight decay); 1-D parameters get no decay.
    """
    embed, blocks, default = (f"{TOY_FILE}:{line}" for line in (EMBED_LINE, BLOCKS_LINE, DEFAULT_LINE))
    top = depth + 1
    rows = [
        ["embed.weight", 0, scales[0], wd, "layer_0_decay", embed],
        ["embed.bias", 0, scales[0], 0.0, "layer_0_no_decay", embed],
    ]
    for i in range(depth):
        rows += [
            [f"blocks.{i}.weight", i + 1, scales[i + 1], wd, f"layer_{i + 1}_decay", blocks],
            [f"blocks.{i}.bias", i + 1, scales[i + 1], 0.0, f"layer_{i + 1}_no_decay", blocks],
        ]
    rows += [
        ["norm.weight", top, 1.0, 0.0, f"layer_{top}_no_decay", default],
        ["norm.bias", top, 1.0, 0.0, f"layer_{top}_no_decay", default],
        ["head.weight", top, 1.0, wd, f"layer_{top}_decay", default],
        ["head.bias", top, 1.0, 0.0, f"layer_{top}_no_decay", default],
    ]
    return rows


def same_rows(got: list[list[Any]], expected: list[list[Any]]) -> bool:
    """Rows equal, scales compared to 1e-12 (0.8 ** 4 is not exactly 0.4096)."""
    assert [r[0] for r in got] == [r[0] for r in expected]
    for g, e in zip(got, expected):
        assert g[0:2] == e[0:2] and g[3:] == e[3:], (g, e)
        assert g[2] == pytest.approx(e[2], rel=1e-12, abs=0), (g, e)
    return True


# rate 0.5, depth 3: scale(i) = 0.5 ** (4 - i)
TOY_RATE_HALF = [0.0625, 0.125, 0.25, 0.5, 1.0]
# rate 0.8, depth 3: 0.8 ** (4 - i)
TOY_RATE_08_DEPTH3 = [0.4096, 0.512, 0.64, 0.8, 1.0]
# rate 0.8, depth 2: 0.8 ** (3 - i)
TOY_RATE_08_DEPTH2 = [0.512, 0.64, 0.8, 1.0]

# ConvNeXtMini with depths [1, 2]: num_layers 3; downsample_layers.S -> sum(depths[:S]) + 1,
# stages.S.B -> sum(depths[:S]) + B + 1, head -> num_layers + 1; scale 0.9 ** (4 - id); wd 0.05.
CONVNEXT_ROWS = [
    ["downsample_layers.0.weight", 1, 0.729, 0.05, "layer_1_decay", f"{CONVNEXT_FILE}:10"],
    ["downsample_layers.0.bias", 1, 0.729, 0.0, "layer_1_no_decay", f"{CONVNEXT_FILE}:10"],
    ["downsample_layers.1.weight", 2, 0.81, 0.05, "layer_2_decay", f"{CONVNEXT_FILE}:10"],
    ["downsample_layers.1.bias", 2, 0.81, 0.0, "layer_2_no_decay", f"{CONVNEXT_FILE}:10"],
    ["stages.0.0.weight", 1, 0.729, 0.05, "layer_1_decay", f"{CONVNEXT_FILE}:12"],
    ["stages.0.0.bias", 1, 0.729, 0.0, "layer_1_no_decay", f"{CONVNEXT_FILE}:12"],
    ["stages.1.0.weight", 2, 0.81, 0.05, "layer_2_decay", f"{CONVNEXT_FILE}:12"],
    ["stages.1.0.bias", 2, 0.81, 0.0, "layer_2_no_decay", f"{CONVNEXT_FILE}:12"],
    ["stages.1.1.weight", 3, 0.9, 0.05, "layer_3_decay", f"{CONVNEXT_FILE}:12"],
    ["stages.1.1.bias", 3, 0.9, 0.0, "layer_3_no_decay", f"{CONVNEXT_FILE}:12"],
    ["head.weight", 4, 1.0, 0.05, "layer_4_decay", f"{CONVNEXT_FILE}:14"],
    ["head.bias", 4, 1.0, 0.0, "layer_4_no_decay", f"{CONVNEXT_FILE}:14"],
]
CONVNEXT_PROVENANCE = [CONVNEXT_FILE, "convnext", "lwd-rules-convnext", "0.1.0"]


def ok(entry: dict[str, Any]) -> Any:
    assert "ok" in entry, f"expected success, got {entry.get('error')}: {entry.get('message')}"
    return entry["ok"]


def error(entry: dict[str, Any]) -> tuple[str, str]:
    assert "error" in entry, f"expected an error, got {entry.get('ok')!r}"
    return entry["error"], entry["message"]


# ---------------------------------------------------------------------------------------------
# default environment: every entry point, two of them broken
# ---------------------------------------------------------------------------------------------


def test_installed_plugin_is_listed_with_distribution_and_version(reports: Any) -> None:
    registry = ok(reports["default"]["registry"])
    assert registry["same_object"] is True
    listed = registry["plugins"]
    assert [p for p in listed if p[0] in ("convnext", "timm", "toyplug")] == [CONVNEXT_INFO, TIMM_INFO, TOYPLUG_INFO]
    # any other entry is another bundled plugin from plugins/ (make test installs them all)
    assert {p[1] for p in listed} - {"lwd-rules-convnext", "lwd-rules-timm", "lwd-rules-toyplug"} <= BUNDLED


def test_plugin_is_imported_from_site_packages(reports: Any) -> None:
    assert Path(reports["default"]["toyplug_file"]).resolve() == SITE / "lwd_rules_toyplug" / "__init__.py"
    assert Path(TOY_FILE).is_file()  # the YAML was shipped as package data


def test_plugins_load_lazily_and_rule_sets_are_collected_once(reports: Any) -> None:
    default = reports["default"]
    assert default["modules_after_import"] == []
    assert "lwd_rules_convnext" in default["modules_after_registry"]
    assert "lwd_rules_toyplug" in default["modules_after_registry"]
    assert default["rule_sets_calls_before_lookup"] == 0
    # five resolves and one listing later, lwd_rule_sets has still been called exactly once
    assert default["toyplug_calls"]["lwd_rule_sets"] == 1


def test_registered_rule_sets_record_their_distribution(reports: Any) -> None:
    sets = ok(reports["default"]["rule_sets"])
    assert sets["toy"] == [TOY_FILE, "lwd-rules-toyplug", "0.3.0"]
    assert sets["toy-fast"] == ["<dict>", "lwd-rules-toyplug", "0.3.0"]
    assert sets["convnext"] == [CONVNEXT_FILE, "lwd-rules-convnext", "0.1.0"]
    assert "typo-set" not in sets
    expected = ["toy", "toy-fast"] + [
        p.stem for plugin in (lwd_rules_convnext, lwd_rules_timm) for p in (Path(plugin.__file__).parent / "rules").glob("*.yaml")
    ]
    assert set(expected) <= set(sets)
    assert {entry[1] for name, entry in sets.items() if name not in expected} <= BUNDLED


def test_toy_by_rule_set_name(reports: Any) -> None:
    plan = ok(reports["default"]["toy_by_name"])
    assert plan["rule_set"] == "toy"
    assert plan["num_layers"] == 3
    assert plan["variables"] == {"depth": 3, "num_layers": 3}
    assert plan["provenance"] == [TOY_PROVENANCE]
    assert same_rows(plan["rows"], toy_rows(3, TOY_RATE_HALF, 0.1))


def test_toy_dict_rule_set_extending_the_yaml_one(reports: Any) -> None:
    plan = ok(reports["default"]["toy_fast_by_name"])
    assert plan["rule_set"] == "toy-fast"
    assert plan["num_layers"] == 2
    assert plan["provenance"] == [TOY_PROVENANCE, ["<toy-fast>", "toy-fast", "lwd-rules-toyplug", "0.3.0"]]
    assert same_rows(plan["rows"], toy_rows(2, TOY_RATE_08_DEPTH2, 0.2))


def test_toy_by_detection(reports: Any) -> None:
    plan = ok(reports["default"]["toy_by_detection"])
    assert plan["rule_set"] == "toy"
    assert plan["provenance"][0] == TOY_PROVENANCE  # then the (empty) rules given to resolve()
    assert same_rows(plan["rows"], toy_rows(3, TOY_RATE_HALF, 0.1))


def test_toy_by_detection_with_only_a_rate(reports: Any) -> None:
    plan = ok(reports["default"]["toy_by_detection_rate"])
    assert plan["rule_set"] == "toy"
    assert plan["provenance"] == [TOY_PROVENANCE, ["<dict>", None, None, None]]
    assert same_rows(plan["rows"], toy_rows(3, TOY_RATE_08_DEPTH3, 0.1))


def test_layer_variables_hook_receives_the_rule_set_name(reports: Any) -> None:
    # toy, toy-fast, toy (detected), toy (detected + rate), then convnext twice
    assert reports["default"]["toyplug_seen_rule_sets"] == ["convnext", "toy", "toy-fast", "toy", "toy", "convnext"]


def test_convnext_keeps_working_next_to_broken_plugins(reports: Any) -> None:
    default = reports["default"]
    for key in ("convnext_by_detection", "convnext_name"):
        plan = ok(default[key])
        assert plan["rule_set"] == "convnext"
        assert plan["variables"] == {"depths": [1, 2], "num_layers": 3}
        assert plan["provenance"][0] == CONVNEXT_PROVENANCE
        assert same_rows(plan["rows"], CONVNEXT_ROWS)
    assert ok(default["convnext_name"])["provenance"] == [CONVNEXT_PROVENANCE]


def test_broken_and_misspelled_plugins_are_recorded_by_distribution(reports: Any) -> None:
    failures = ok(reports["default"]["registry"])["failures"]
    assert len(failures) == 2
    broken, typo = failures
    assert broken == [
        "brokenplug", "lwd-rules-brokenplug", "0.0.1", BROKEN_REASON, None,
        f"plugin 'brokenplug' (lwd-rules-brokenplug 0.0.1) failed: {BROKEN_REASON}",
    ]
    assert typo[:3] == ["typoplug", "lwd-rules-typoplug", "0.0.2"]
    assert typo[3].startswith("PluginValidationError: unknown hook 'lwd_rule_set' in plugin <module 'lwd_rules_typoplug'"), typo[3]
    assert typo[4] is None
    assert typo[5].startswith("plugin 'typoplug' (lwd-rules-typoplug 0.0.2) failed: PluginValidationError: unknown hook 'lwd_rule_set'")


# ---------------------------------------------------------------------------------------------
# LWD_RULES_STRICT_PLUGINS and LWD_RULES_PLUGINS
# ---------------------------------------------------------------------------------------------


def test_strict_makes_an_import_failure_fatal(reports: Any) -> None:
    strict = reports["strict"]
    expected = f"plugin 'brokenplug' (lwd-rules-brokenplug 0.0.1) failed: {BROKEN_REASON}"
    assert error(strict["registry"]) == ("PluginError", expected)
    for key in ("convnext_by_detection", "toy_by_name", "toy_by_detection", "convnext_name"):
        assert error(strict[key]) == ("PluginError", expected), key


def test_strict_makes_a_misspelled_hook_fatal(reports: Any) -> None:
    kind, message = error(reports["strict_typo"]["toy_by_name"])
    assert kind == "PluginError"
    assert message.startswith("plugin 'typoplug' (lwd-rules-typoplug 0.0.2) failed: PluginValidationError: unknown hook 'lwd_rule_set'"), message
    assert error(reports["strict_typo"]["registry"])[0] == "PluginError"


def test_strict_with_healthy_plugins_works(reports: Any) -> None:
    healthy = reports["strict_healthy"]
    registry = ok(healthy["registry"])
    assert registry["plugins"] == [CONVNEXT_INFO, TOYPLUG_INFO]
    assert registry["failures"] == []
    assert same_rows(ok(healthy["toy_by_name"])["rows"], toy_rows(3, TOY_RATE_HALF, 0.1))
    assert same_rows(ok(healthy["convnext_by_detection"])["rows"], CONVNEXT_ROWS)


def test_plugins_variable_limits_the_entry_points(reports: Any) -> None:
    only = reports["only_toyplug"]
    registry = ok(only["registry"])
    assert registry["plugins"] == [TOYPLUG_INFO]
    assert registry["failures"] == []  # brokenplug and typoplug were never imported
    assert "lwd_rules_brokenplug" not in only["modules_at_end"]
    assert "lwd_rules_convnext" not in only["modules_at_end"]
    assert sorted(ok(only["rule_sets"])) == ["toy", "toy-fast"]
    assert same_rows(ok(only["toy_by_name"])["rows"], toy_rows(3, TOY_RATE_HALF, 0.1))
    assert error(only["convnext_by_detection"]) == (
        "RuleError",
        "<rules>: extends: no plugin recognizes ConvNeXtMini; set 'extends' or 'layers' (installed plugins: toyplug)",
    )
    kind, message = error(only["convnext_name"])
    assert kind == "RuleError" and "no rule set named 'convnext'" in message


def test_empty_plugins_variable_loads_none(reports: Any) -> None:
    none = reports["none"]
    registry = ok(none["registry"])
    assert registry["plugins"] == []
    assert registry["failures"] == []
    assert ok(none["rule_sets"]) == {}
    assert none["modules_after_registry"] == []
    assert error(none["toy_by_detection"]) == (
        "RuleError",
        "<rules>: extends: no plugin recognizes ToyNet; set 'extends' or 'layers' (installed plugins: none)",
    )
    assert "lwd_rules_convnext" not in none["modules_at_end"]
