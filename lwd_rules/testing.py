"""Helpers for plugin authors' tests: a registry holding just your plugins, plan assertions, and a
model of many small blocks for checking that rules scale."""

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


# Rules for many_blocks_model: stem -> 0, the blocks spread over ids 1..24 by a formula that reads
# their count, the head -> 25; decay 0.9, no weight decay for 1-D tensors and biases.
MANY_BLOCKS_RULES: dict[str, Any] = {
    "version": 1,
    "layers": {
        "count": {"blocks": r"^blocks\.(\d+)\."},
        "num_layers": 24,
        "rules": [
            {"match": r"^stem\.", "layer": 0},
            {"match": r"^blocks\.(?P<block>\d+)\.", "layer": "block * 24 // blocks + 1"},
        ],
        "default": "num_layers + 1",
    },
    "layer_decay": {"rate": 0.9},
    "weight_decay": {"value": 0.05, "exclude": ["ndim<=1", "*.bias"]},
    "optimizer": {"name": "adamw", "lr": 1e-3},
}


def many_blocks_model(blocks: int) -> Any:
    """``stem`` (Linear), ``blocks.0`` ... ``blocks.{blocks - 1}`` (each a Linear ``fc`` and a
    LayerNorm ``norm``) and ``head`` (Linear): ``4 * blocks + 4`` tensors of 2 or 4 numbers.

    Built on the current device, so ``with torch.device("meta"):`` makes 100,000 tensors cost no
    memory. ``make bench`` and the scaling guard in ``make test`` use it, with ``MANY_BLOCKS_RULES``.
    """
    from torch import nn

    def block() -> nn.Module:
        module = nn.Module()
        module.fc = nn.Linear(2, 2)
        module.norm = nn.LayerNorm(2)
        return module

    model = nn.Module()
    model.stem = nn.Linear(2, 2)
    model.blocks = nn.ModuleList(block() for _ in range(blocks))
    model.head = nn.Linear(2, 2)
    return model
