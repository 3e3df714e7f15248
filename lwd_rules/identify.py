"""Parameter name → layer id: canonical names, first-matching rule, formulas evaluated once per match."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from lwd_rules.errors import Problem, RuleError
from lwd_rules.expr import FormulaError
from lwd_rules.rules.ruleset import Count, LayerRule, Located
from lwd_rules.rules.schema import WRAPPER_COMPONENTS

DEFAULT = -1  # rule index reported for names the default formula covers
PLUGIN = -2  # rule index reported for names placed by the lwd_layer_ids hook


def canonical_name(name: str, strip: Collection[str] = WRAPPER_COMPONENTS) -> str:
    """``name`` with wrapper components (``module``, ``_orig_mod``, ...) removed wherever they occur."""
    parts = name.split(".")
    kept = [part for part in parts if part not in strip]
    return name if len(kept) == len(parts) else ".".join(kept)


def count_variables(counts: Sequence[Count], names: Iterable[str]) -> dict[str, int | list[int]]:
    """Evaluate ``layers.count``: max+1 of one group, or per first group a list of max+1 of the second."""
    names = list(names)
    out: dict[str, int | list[int]] = {}
    for count in counts:
        matches = [m.groups() for m in map(count.pattern.search, names) if m]
        numbers = [tuple(int(g) for g in groups) for groups in matches if all(g is not None and g.isdigit() for g in groups)]
        if count.pattern.groups == 1:
            out[count.name] = max(n[0] for n in numbers) + 1 if numbers else 0
            continue
        per: dict[int, int] = {}
        for outer, inner in numbers:
            per[outer] = max(per.get(outer, 0), inner + 1)
        out[count.name] = [per.get(i, 0) for i in range(max(per) + 1)] if per else []
    return out


class LayerIdentifier:
    """Maps canonical names to layer ids with the first rule that matches, else the default.

    Formulas run once per distinct (rule, named groups) pair: the thousands of parameters of one
    block share a single evaluation.
    """

    def __init__(
        self, rules: Sequence[LayerRule], default: Located | None, env: Mapping[str, Any], plugin_ids: Mapping[str, int] | None = None
    ) -> None:
        self.rules = rules
        self.plugin_ids = plugin_ids or {}
        self.env = dict(env)
        self.used = [False] * len(rules)
        self._searches = [rule.pattern.search for rule in rules]
        self._cache: dict[tuple[int, tuple[str | None, ...]], int] = {}
        self._default_id = self._evaluate(default.formula, self.env, default.path, default.origin) if default else None

    def identify(self, name: str) -> tuple[int, int] | None:
        """``(layer_id, rule index, PLUGIN or DEFAULT)`` for ``name``: rules first, then plugin ids, then the default."""
        for index, search in enumerate(self._searches):
            match = search(name)
            if match is None:
                continue
            self.used[index] = True
            groups = match.groups()
            key = (index, groups)
            layer_id = self._cache.get(key)
            if layer_id is None:
                rule = self.rules[index]
                env = self.env
                named = match.groupdict()
                if named:
                    env = {**env, **{k: _as_int(v) for k, v in named.items()}}
                layer_id = self._cache[key] = self._evaluate(rule.layer, env, rule.path + ".layer", rule.origin, name)
            return layer_id, index
        plugin_id = self.plugin_ids.get(name)
        if plugin_id is not None:
            return plugin_id, PLUGIN
        if self._default_id is not None:
            return self._default_id, DEFAULT
        return None

    @staticmethod
    def _evaluate(formula: Any, env: Mapping[str, Any], path: str, origin: Any, name: str | None = None) -> int:
        try:
            value = formula(env)
        except FormulaError as exc:
            about = f" for {name!r}" if name else ""
            raise RuleError([Problem(origin, path, f"{exc}{about}")]) from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            about = f" for {name!r}" if name else ""
            raise RuleError([Problem(origin, path, f"layer id must be an integer, got {value!r}{about}")])
        return value


def _as_int(text: str | None) -> int | None:
    """Regex groups become integers (``None`` when the group did not take part)."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None
