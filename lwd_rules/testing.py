"""Helpers for plugin authors' tests: a registry holding just your plugins, and plan assertions."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from lwd_rules.orchestrator import resolve
from lwd_rules.plan import Plan
from lwd_rules.plugins import Registry, new_registry, use_registry
from lwd_rules.rules.load import Source


def make_registry(*plugins: object, installed: bool = False) -> Registry:
    """A fresh registry with ``plugins`` (modules or objects with hookimpls), plus installed ones if asked."""
    named = [(getattr(p, "__name__", type(p).__name__), p) for p in plugins]
    return new_registry(named, entry_points_too=installed, strict=True)


@contextmanager
def registry_for(*plugins: object, installed: bool = False) -> Iterator[Registry]:
    """Make ``resolve()``/``load_rules()`` see exactly ``plugins`` inside the ``with`` block."""
    registry = make_registry(*plugins, installed=installed)
    previous = use_registry(registry)
    try:
        yield registry
    finally:
        use_registry(previous)


def assert_layer_ids(model: Any, source: Source | None, expected: Mapping[str, int], *, registry: Registry | None = None) -> Plan:
    """Resolve ``model`` and assert every trainable parameter's layer id equals ``expected[name]``.

    ``expected`` must name every trainable parameter; the message lists each difference.
    """
    plan = resolve(model, source, registry=registry)
    got = {row.name: row.layer_id for row in plan.params}
    missing = sorted(set(got) - set(expected))
    extra = sorted(set(expected) - set(got))
    wrong = [f"{name}: expected {expected[name]}, got {got[name]}" for name in got if name in expected and got[name] != expected[name]]
    problems = (
        [f"not in expected: {', '.join(missing)}"] if missing else []
    ) + ([f"not trainable in the plan: {', '.join(extra)}"] if extra else []) + wrong
    assert not problems, "layer ids differ:\n" + "\n".join(problems)
    return plan
