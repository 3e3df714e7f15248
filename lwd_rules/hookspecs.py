"""The hooks a plugin may implement. Each docstring says when it is called and how answers combine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("lwd_rules")
hookimpl = HookimplMarker("lwd_rules")


@hookspec
def lwd_rule_sets() -> dict[str, str | Path | dict[str, Any]]:
    """Return the rule sets this plugin provides, by name.

    Called once, the first time any rule set is looked up. A value is a path to a rule file shipped
    as package data, or a dict shaped like a rule file. Answers from all plugins are merged; two
    plugins providing the same name is an error naming both.
    """


@hookspec
def lwd_layer_variables(model: Any, rule_set: str) -> dict[str, Any] | None:
    """Return variables for the formulas of ``rule_set`` (e.g. ``depths``), computed from ``model``.

    Called by ``resolve()`` when the rule set lists ``layers.variables``, with the name of the rule
    set in use and the bare model (DDP / ``torch.compile`` wrappers removed). Return None when
    the rule set is not yours. Dicts from all plugins are merged; two plugins giving different
    values for one variable is an error.
    """


@hookspec(firstresult=True)
def lwd_detect(model: Any) -> str | None:
    """Return the name of the rule set that fits ``model``, or None if you do not recognize it.

    Called by ``resolve()`` when the rules say nothing about layer ids (no ``extends``, no
    ``layers``). The first non-None answer wins; plugins marked ``tryfirst`` are asked first.
    """


@hookspec
def lwd_layer_ids(model: Any, rule_set: str) -> dict[str, int] | None:
    """Return ``{parameter name: layer id}`` for what a regex cannot express (e.g. timm's ``group_matcher``).

    Called by ``resolve()`` when the rule set sets ``layers.ids_from_plugins: true``, with the bare
    model (DDP / ``torch.compile`` wrappers removed). Names may omit parameters you cannot place:
    ``layers.rules`` are tried before these ids and ``layers.default`` after them. Return None when
    the rule set is not yours. Two plugins placing one name at different ids is an error.
    """
