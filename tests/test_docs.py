"""Docs are part of done: the generated reference is fresh, every hook is documented, examples validate."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from lwd_rules import docgen, hookspecs, load_rules

ROOT = Path(__file__).resolve().parents[1]


def test_reference_is_generated_from_the_current_schema():
    committed = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    assert committed == docgen.render(), "docs/reference.md is stale: run `make docs`"


def hookspec_names() -> list[str]:
    return [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("lwd_")]


def test_every_hookspec_has_a_section_in_hooks_md():
    text = (ROOT / "docs" / "plugins" / "hooks.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^## (\w+)", text, flags=re.MULTILINE))
    assert hookspec_names() == sorted(["lwd_detect", "lwd_layer_ids", "lwd_layer_variables", "lwd_rule_sets"])
    assert set(hookspec_names()) <= sections, f"undocumented hooks: {set(hookspec_names()) - sections}"


def test_every_hookspec_has_a_docstring():
    for name in hookspec_names():
        assert (getattr(hookspecs, name).__doc__ or "").strip(), name


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")) + sorted((ROOT / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_example_rule_files_validate(path):
    load_rules(path)


def test_readme_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    block = lines[lines.index("```sh") + 1 : lines.index("```sh") + 3]
    assert [line.split("#")[0].strip() for line in block] == ["make demo", "make test"]


def test_readme_quickstart_runs(monkeypatch):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(ROOT)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    optimizer = namespace["optimizer"]
    groups = {g["group_name"]: g for g in optimizer.param_groups}
    # convnext_atto: 12 layers, rate 0.8 -> the stem (id 1) trains at 4e-4 * 0.8 ** 12.
    assert groups["layer_1_decay"]["lr"] == pytest.approx(4.0e-4 * 0.8**12, rel=1e-12)
    assert groups["layer_13_decay"]["lr"] == pytest.approx(4.0e-4 * 10.0, rel=1e-12)


def test_example_finetuning_script_runs_and_prints_per_group_lrs():
    import subprocess
    import sys

    script = ROOT / "examples" / "finetune_convnext.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "layer_1_decay" in done.stdout and "layer_13_decay" in done.stdout


def test_relative_links_in_the_docs_point_at_files_that_exist():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "mailto:", "#")):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_the_scaling_example_in_the_plugin_testing_guide_runs():
    text = (ROOT / "docs" / "plugins" / "testing.md").read_text(encoding="utf-8")
    section = text.split("## Checking that rules scale", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/plugins/testing.md", "exec"), {})  # noqa: S102 - our own docs
