"""``resolve()`` and ``create_optimizer()``: the only place that wires rules, plugins and model together."""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import inspect
import re
import warnings
from array import array
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from lwd_rules import scaling
from lwd_rules.errors import Location, Problem, RuleError
from lwd_rules.grouping import Grouper
from lwd_rules.identify import (
    DEFAULT,
    PLUGIN,
    Answer,
    LayerIdentifier,
    ModuleEntry,
    ModuleState,
    Placed,
    Resolution,
    canonical_name,
    canonicalizer,
    class_names,
    collect_modules,
    count_variables,
    join_name,
    memo_by_identity,
    strip_parts,
    walks_like_module,
)
from lwd_rules.plan import Convention, ParamRow, Plan, Setting, Skipped, row_assignments
from lwd_rules.expr import parse_formula
from lwd_rules.rules.load import Source, extend, load_rules, rebase
from lwd_rules.rules.ruleset import Located, RuleSet
from lwd_rules.rules.schema import LayerDecay
from lwd_rules.training import stamp

if TYPE_CHECKING:
    import torch

    from lwd_rules.plugins import Registry

MAX_LISTED = 10
_T = TypeVar("_T")


class LwdRulesWarning(UserWarning):
    """A coverage problem the rules chose to report as a warning instead of an error."""


def resolve(
    model: torch.nn.Module,
    source: Source | None = None,
    *,
    layer_decay: float | None = None,
    weight_decay: float | None = None,
    lr: float | None = None,
    strict: bool = True,
    registry: Registry | None = None,
) -> Plan:
    """Assign every trainable parameter of ``model`` a layer id, lr scale, weight decay and group.

    ``source`` is a rule-file path, a registered rule-set name, a dict shaped like a rule file, or a
    ``RuleSet``; None (or rules that say nothing about layers) lets ``lwd_detect`` pick the rule set.
    ``layer_decay``/``weight_decay``/``lr`` override ``layer_decay.rate``/``weight_decay.value``/``optimizer.lr``.
    ``strict=False`` records coverage problems (unmatched parameters, patterns that match nothing,
    conflicting overrides) in ``plan.problems`` instead of raising; unmatched parameters are then
    left out of the optimizer and listed in ``plan.skipped``.
    """
    registry = registry or _default_registry()
    rules = load_rules({} if source is None else source, registry=registry)
    if not rules.maps_layers:
        rules = rebase(rules, _detect(unwrap(model), registry), registry=registry)
    shortcuts = _shortcuts(layer_decay, weight_decay, lr, chains=list(rules.config.chains))
    if shortcuts:
        rules = extend(rules, shortcuts, "<keyword arguments>")
    if rules.chains:
        return _resolve_chains(model, rules, registry, strict)
    return _Resolver(model, rules, registry, strict).run()


def _default_registry() -> Registry:
    from lwd_rules.plugins import get_registry

    return get_registry()


def _shortcuts(layer_decay: float | None, weight_decay: float | None, lr: float | None, chains: list[str]) -> dict[str, Any]:
    """The keyword arguments as a rule-file layer; ``layer_decay=`` sets every chain's rate too."""
    out: dict[str, Any] = {}
    if layer_decay is not None:
        out["layer_decay"] = {"rate": layer_decay}
        if chains:
            out["chains"] = {name: {"layer_decay": {"rate": layer_decay}} for name in chains}
    if weight_decay is not None:
        out["weight_decay"] = {"value": weight_decay}
    if lr is not None:
        out["optimizer"] = {"lr": lr}
    return out


def _detect(model: Any, registry: Registry) -> str:
    name = registry.detect(model)
    if name is not None:
        return name
    installed = ", ".join(p.name for p in registry.plugins()) or "none"
    raise RuleError.single(
        Location("<rules>"),
        "extends",
        f"no plugin recognizes {type(model).__name__}; set 'extends' or 'layers' (installed plugins: {installed})",
    )


def unwrap(model: Any) -> Any:
    """The module inside DDP (``.module``), ``torch.compile`` (``._orig_mod``) and PEFT (``get_base_model()``) wrappers."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        inner = _first_present(model, "_orig_mod", "module")  # no truth tests: some wrappers define __len__
        if inner is None:
            get_base_model = _first_present(model, "get_base_model")
            inner = get_base_model() if callable(get_base_model) else None
        if inner is None or not hasattr(inner, "named_parameters"):
            break
        model = inner
    return model


def _resolve_chains(model: Any, rules: RuleSet, registry: Registry, strict: bool) -> Plan:
    """One plan per decay chain (and for the parameters outside every chain), merged into one.

    Each chain is resolved with its own layers and curve over the parameters its regex matches; a
    parameter two chains match is an error. Groups are named ``<chain>/<group>``; rows keep the
    model's parameter order and say their chain.
    """
    modules = collect_modules(model, rules.strip_components)
    names = [join_name(cprefix, leaf) for _, cprefix, params, _, _ in modules for leaf, p in params.items() if p is not None]
    owners: dict[str, list[str]] = {}
    for chain in rules.chains:
        for name in names:
            if chain.pattern.search(name):
                owners.setdefault(name, []).append(chain.name)
    claimed = {chain for chains in owners.values() for chain in chains}
    check = _Resolver(model, rules, registry, strict)
    for chain in rules.chains:
        if chain.name not in claimed and not rules.config.chains[chain.name].allow_unused:
            message = f"{chain.pattern.pattern!r} matches no parameter: chain {chain.name!r} is empty"
            check.report(rules.config.checks.unused_patterns, Problem(chain.origin, f"chains.{chain.name}.match", message))
    check.fail_if_problems()
    shared = sorted(name for name, chains in owners.items() if len(chains) > 1)
    if shared:
        first = next(c for c in rules.chains if c.name in owners[shared[0]])
        listed = _listing([f"{name} ({' and '.join(owners[name])})" for name in shared])
        raise RuleError.single(first.origin, f"chains.{first.name}.match", f"{len(shared)} parameter(s) belong to several chains: {listed}")
    parts: list[tuple[str, _Resolver]] = []
    for chain in rules.chains:
        own = chain.layer_decay  # the chain's curve: its own fields, the top-level layer_decay for the rest
        decay = rules.config.layer_decay.model_copy(update={field: getattr(own, field) for field in own.model_fields_set})
        config = rules.config.model_copy(update={"layer_decay": decay, "layers": rules.config.chains[chain.name].layers})
        sub = dataclasses.replace(
            rules, config=config, chains=(), num_layers=chain.layers.num_layers, default=chain.layers.default,
            rules=chain.layers.rules, counts=chain.layers.counts,
        )
        parts.append((chain.name, _Resolver(model, sub, registry, strict, claim=chain.pattern.search)))
    if any(name not in owners for name in names):
        rest = dataclasses.replace(rules, chains=())
        if not rest.config.layers.rules and rest.default is None and not rest.config.layers.ids_from_plugins:
            full_rate = LayerDecay(curve="values", values=[1.0, 1.0])  # outside every chain: scale 1
            zero = Located(parse_formula(0), "layers.default", rules.chain[-1][0].locate(()))
            rest = dataclasses.replace(rest, config=rules.config.model_copy(update={"layer_decay": full_rate}), num_layers=zero, default=zero, rules=(), counts=())
        parts.append(("", _Resolver(model, rest, registry, strict, claim=lambda name: name not in owners)))
    plans = [(label, resolver.run()) for label, resolver in parts]
    exclusions = [any(resolver.usage[0][i] for _, resolver in parts) for i in range(len(rules.exclusions))]
    overrides = [any(resolver.usage[1][i] for _, resolver in parts) for i in range(len(rules.overrides))]
    check._report_unused([True] * len(rules.rules), exclusions, overrides)
    check.fail_if_problems()
    return _merge_plans(rules, plans, names, check)


def _merge_plans(rules: RuleSet, plans: list[tuple[str, Plan]], names: list[str], check: _Resolver) -> Plan:
    order = {name: index for index, name in enumerate(names)}
    strip = rules.strip_components
    groups: list[dict[str, Any]] = []
    rows: list[tuple[ParamRow, Any]] = []
    for label, plan in plans:
        prefix = f"{label}/" if label else ""
        groups += [{**group, "group_name": prefix + group["group_name"], "chain": label} for group in plan.param_groups]
        rows += [(dataclasses.replace(row, group=prefix + row.group, chain=label), tensor) for row, tensor in zip(plan.params, plan.params.tensors())]  # type: ignore[attr-defined]
    rows.sort(key=lambda pair: order[canonical_name(pair[0].name, strip)])
    rest = dict(plans).get("")
    return Plan(
        rules=rules,
        num_layers=rest.num_layers if rest else -1,
        scales=rest.scales if rest else (),
        param_groups=groups,
        params=RowList(row for row, _ in rows).with_tensors([tensor for _, tensor in rows]),
        skipped=[s for _, plan in plans for s in plan.skipped],
        variables={k: v for _, plan in plans for k, v in plan.variables.items()},
        warnings=[w for _, plan in plans for w in plan.warnings] + check.warnings,
        problems=[p for _, plan in plans for p in plan.problems] + check.coverage,
        unused=[u for _, plan in plans for u in plan.unused] + check.unused,
        allowed_unused=lambda: [u for _, plan in plans for u in plan.allowed_unused()] + check.allowed_unused(),
        lr=rules.config.optimizer.lr,
        chains={label: plan for label, plan in plans if label},
    )


class RowList(list):  # type: ignore[type-arg]
    """``plan.params`` of a merged plan: a list of rows that also knows each row's tensor."""

    def with_tensors(self, tensors: list[Any]) -> RowList:
        self._tensors = tensors
        return self

    def tensors(self) -> list[Any]:
        """The parameter of each row, in the same order."""
        return self._tensors


def _extends(prefix: str, parent: str) -> bool:
    """Whether a module's canonical prefix continues its parent's (not so below a stripped PEFT prefix)."""
    return not parent or prefix == parent or prefix.startswith(parent + ".")


@functools.lru_cache(maxsize=1024)
def _plain_getattr(kind: type) -> bool:
    """Whether ``kind`` looks attributes up as ``nn.Module`` does (its ``__getattr__`` finds no others)."""
    from torch import nn

    return getattr(kind, "__getattr__", None) is nn.Module.__getattr__


def _first_present(obj: Any, *names: str) -> Any:
    """The first of ``names`` that ``obj`` has; a module's submodules are looked up directly (a
    missing attribute costs ``nn.Module.__getattr__`` an exception)."""
    attributes = getattr(obj, "__dict__", {})
    children = attributes.get("_modules")
    for name in names:
        if children is None:
            value = getattr(obj, name, None)
        else:  # an nn.Module: the attribute is a submodule, an instance attribute, a class attribute
            value = children.get(name)  # or whatever a __getattr__ of its own forwards
            if value is None:
                value = attributes.get(name)
            if value is None and (hasattr(type(obj), name) or not _plain_getattr(type(obj))):
                value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


class _Resolver:
    """One resolve: collects problems instead of stopping at the first."""

    def __init__(
        self, model: Any, rules: RuleSet, registry: Registry, strict: bool, claim: Callable[[str], bool] | None = None
    ) -> None:
        self.model = model
        self.claim = claim  # for one chain of a multi-tower model: the canonical names it owns
        self.usage: tuple[list[bool], list[bool]] = ([], [])  # exclude entries and overrides used
        self.rules = rules
        self.registry = registry
        self.strict = strict
        self.problems: list[Problem] = []
        self.coverage: list[Problem] = []
        self.unused: list[str] = []
        self.bare = unwrap(model)  # what hooks see: DDP / torch.compile wrappers removed
        self.plugin_owner = ""
        self.allowed_unused: Callable[[], list[str]] = list
        self.warnings: list[str] = []

    @functools.cached_property
    def top(self) -> Location:
        """Where problems without a field of their own point: the top of the last rule file."""
        return self.rules.chain[-1][0].locate(())

    def report(self, mode: str | None, problem: Problem) -> None:
        if mode == "ignore":
            return
        if mode == "warn":
            self.warnings.append(str(problem))
            warnings.warn(str(problem), LwdRulesWarning, stacklevel=4)
        elif self.strict:
            self.problems.append(problem)
        else:
            self.coverage.append(problem)

    def fail_if_problems(self) -> None:
        if self.problems:
            raise RuleError(self.problems)

    def run(self) -> Plan:
        rules, config = self.rules, self.rules.config
        try:
            env, identifier, walk = self._walk()
        except RuleError:  # a name collision explains more than what followed from it
            self._check_collisions(collect_modules(self.model, rules.strip_components))
            raise
        if walk.renamed:
            self._check_collisions(collect_modules(self.model, rules.strip_components))
        if walk.unmatched:
            where = rules.rules[0].origin if rules.rules else self.top
            unmatched = [canon_name for _, canon_name in walk.unmatched]
            self.report(None, Problem(where, "layers.default", f"{len(unmatched)} parameter(s) match no rule and layers.default is not set: {_listing(unmatched)}"))
            self.fail_if_problems()
        if "num_layers" not in env:  # N = highest id - 1, frozen parameters included so freezing shifts nothing
            frozen_ids = (answer[0] for answer in walk.frozen_answers())
            override_ids = (layer_id for _, layer_id in walk.override_frozen)
            env["num_layers"] = max(max([*(key[0] for key in walk.keys), *frozen_ids, *override_ids], default=1) - 1, 0)
        num_layers = env["num_layers"]
        self._report_defaulted(walk)
        self._check_range(walk, num_layers)
        raw_scales = self._scales(num_layers)
        decay = config.layer_decay
        scales = scaling.clamp(raw_scales, decay.min_scale)
        self.usage = (walk.exclusion_used, walk.override_used)
        if self.claim is None:
            self._report_unused(identifier.used, walk.exclusion_used, walk.override_used)
        else:  # a chain: its own layer rules here; exclude entries and overrides once, over every chain
            self._report_unused(identifier.used, [True] * len(walk.exclusion_used), [True] * len(walk.override_used))
        self._report_conflicts(walk.conflicts)
        self.fail_if_problems()
        below = {key_index for key_index, key in enumerate(walk.keys) if decay.below_min == "freeze" and raw_scales[key[0]] < decay.min_scale}
        grouper = Grouper()
        final = grouper.add_keys(walk.keys, walk.members, scales, below)
        skipped = [Skipped(name, "requires_grad is False") for name in walk.frozen]
        skipped += [Skipped(name, "no rule matches") for name, _ in walk.unmatched]
        skipped += [Skipped(name, "frozen by an override") for name, _ in walk.override_frozen]
        if below:
            skipped += [
                Skipped(name, f"scale {raw_scales[walk.keys[k][0]]:.3g} of layer {walk.keys[k][0]} is below min_scale")
                for name, _, _, k in walk.rows(below)
            ]
        groups = grouper.param_groups()
        return Plan(
            rules=rules,
            num_layers=num_layers,
            scales=tuple(scales),
            param_groups=groups,
            params=_Rows(walk, final, groups, self._rule_labels),
            skipped=skipped,
            variables=dict(env),
            warnings=self.warnings,
            problems=self.coverage,
            unused=self.unused,
            allowed_unused=self.allowed_unused,
            lr=config.optimizer.lr,
        )

    def _walk(self) -> tuple[dict[str, Any], LayerIdentifier, _Walk]:
        """Variables, then the walk. The ``layers.count`` pre-pass assumes each module has one
        place in the model; when the walk met one twice (shared, or a cycle), the counts are taken
        again over every module and, if they differ, the walk is done again with them."""
        rules, config = self.rules, self.rules.config
        env = self._variables()
        plugin_ids = self._plugin_ids() if config.layers.ids_from_plugins else None
        while True:
            if rules.num_layers is not None:
                env["num_layers"] = self._num_layers(env)
            identifier = LayerIdentifier(rules.rules, rules.default, env, plugin_ids)
            walk = _Walk(self, identifier)
            try:
                held = walk.run(self.model, optimistic=True)
            except RuleError:  # perhaps at a leaf met again, which the checked walk skips: it decides
                held = False
            if not held:  # something tied, frozen or unmatched: walk with every check
                identifier = LayerIdentifier(rules.rules, rules.default, env, plugin_ids)
                walk = _Walk(self, identifier)
                if not walk.run(self.model):  # a class with its own named_modules: walk that instead
                    identifier = LayerIdentifier(rules.rules, rules.default, env, plugin_ids)
                    walk = _Walk(self, identifier)
                    walk.run_listed(self.model)
            walk.done()
            if not (walk.shared and rules.counts):
                return env, identifier, walk
            exact = count_variables(rules.counts, self.model, rules.strip_components, exact=True)
            if all(env[name] == value for name, value in exact.items()):
                return env, identifier, walk
            env.update(exact)

    def _rule_labels(self) -> dict[int, tuple[str, str]]:
        """``(file:line, provenance)`` of every layer rule, the plugin hook and the default."""
        rules = self.rules
        owners = {raw.file: str(provenance) for raw, provenance in rules.chain}
        labels = {index: (_label(rule.origin, rule.path), owners.get(rule.origin.file, "")) for index, rule in enumerate(rules.rules)}
        labels[PLUGIN] = ("lwd_layer_ids hook", self.plugin_owner)
        if rules.default is not None:
            labels[DEFAULT] = (_label(rules.default.origin, rules.default.path), owners.get(rules.default.origin.file, ""))
        return labels

    def _check_collisions(self, modules: list[ModuleEntry]) -> None:
        seen: dict[str, str] = {}
        for prefix, cprefix, params, _, _ in modules:
            for leaf in params:
                name, canon = join_name(prefix, leaf), join_name(cprefix, leaf)
                other = seen.setdefault(canon, name)
                if other != name:
                    self.problems.append(Problem(self.top, "names.strip_components", f"{other!r} and {name!r} both become {canon!r} once wrapper components are removed"))
        self.fail_if_problems()

    def _variables(self) -> dict[str, Any]:
        """``layers.variables`` from the ``lwd_layer_variables`` hook, and the ``layers.count`` ones."""
        rules = self.rules
        env: dict[str, Any] = {}
        if rules.config.layers.variables:
            seen = len(self.registry.failures)
            asked = rules.registered_name
            env.update(self.registry.layer_variables(self.bare, asked))
            missing = [v for v in rules.config.layers.variables if v not in env]
            if missing:
                where = rules.chain[-1][0]
                location = next((raw.locate(("layers", "variables")) for raw, _ in reversed(rules.chain) if "variables" in raw.data.get("layers", {})), where.locate(()))
                message = f"no plugin provided {', '.join(map(repr, missing))} for rule set {asked!r} and {type(self.bare).__name__}"
                self.problems.append(Problem(location, "layers.variables", message + self._failures_since(seen)))
        if rules.counts:
            env.update(count_variables(rules.counts, self.model, rules.strip_components))
        self.fail_if_problems()
        return env

    def _plugin_ids(self) -> dict[str, int]:
        """Layer ids from the ``lwd_layer_ids`` hook, by canonical name (``layers.ids_from_plugins``)."""
        name = self.rules.registered_name
        seen = len(self.registry.failures)
        answer = self.registry.layer_ids(self.bare, name)
        if answer is None:
            message = f"no plugin provides layer ids for rule set {name!r} and {type(self.bare).__name__}"
            raise RuleError.single(self.top, "layers.ids_from_plugins", message + self._failures_since(seen))
        ids, self.plugin_owner = answer
        return {canonical_name(k, self.rules.strip_components): v for k, v in ids.items()}

    def _failures_since(self, seen: int) -> str:
        """Plugin failures recorded while answering this resolve, to explain a missing answer."""
        failures = self.registry.failures[seen:]
        return "".join(f"; {failure}" for failure in failures)

    def _report_defaulted(self, walk: _Walk) -> None:
        """``checks.defaulted``: parameters that only ``layers.default`` placed (timm's silent fallback)."""
        mode = self.rules.config.checks.defaulted
        if mode == "ignore" or self.rules.default is None:
            return
        defaulted = {k for k, key in enumerate(walk.keys) if key[1] == DEFAULT}
        if not defaulted:
            return
        names = [canon for _, canon, _, _ in walk.rows(defaulted)]
        if names:
            default = self.rules.default
            self.report(mode, Problem(default.origin, default.path, f"{len(names)} parameter(s) matched no rule and took the default id: {_listing(names)}"))

    def _num_layers(self, env: dict[str, Any]) -> int:
        located = self.rules.num_layers
        assert located is not None
        value = LayerIdentifier._evaluate(located.formula, env, located.path, located.origin)
        if value < 0:
            raise RuleError.single(located.origin, located.path, f"num_layers must be >= 0, got {value}")
        return value

    def _check_range(self, walk: _Walk, num_layers: int) -> None:
        outside = {k for k, key in enumerate(walk.keys) if not 0 <= key[0] <= num_layers + 1}
        if not outside:
            return
        bad: dict[int, list[str]] = {}
        for _, canon, _, k in walk.rows(outside):
            bad.setdefault(walk.keys[k][1], []).append(f"{canon} -> {walk.keys[k][0]}")
        for source, names in bad.items():
            if source == PLUGIN:
                origin, path, who = self.top, "layers.ids_from_plugins", f" (from {self.plugin_owner})"
            elif source == DEFAULT:
                origin, path, who = self.rules.default.origin, "layers.default", ""  # type: ignore[union-attr]
            else:
                origin, path, who = self.rules.rules[source].origin, self.rules.rules[source].path + ".layer", ""
            self.problems.append(Problem(origin, path, f"layer ids must lie in 0..{num_layers + 1} (num_layers + 1){who}: {_listing(names)}"))
        self.fail_if_problems()

    def _scales(self, num_layers: int) -> list[float]:
        decay = self.rules.config.layer_decay
        try:
            return scaling.layer_scales(num_layers, rate=decay.rate, curve=decay.curve, values=decay.values)
        except ValueError as exc:
            origin = next((raw.locate(("layer_decay", "values")) for raw, _ in reversed(self.rules.chain) if "values" in raw.data.get("layer_decay", {})), self.top)
            raise RuleError.single(origin, "layer_decay.values", str(exc)) from None

    def _model_no_weight_decay(self) -> _NameSet:
        """``model.no_weight_decay()`` as a test on canonical names: exact names, and globs as timm reads them."""
        if not self.rules.config.weight_decay.use_model_no_weight_decay:
            return _NameSet(frozenset(), ())
        method = getattr(self.bare, "no_weight_decay", None)
        names: Iterable[str] = method() if callable(method) else ()
        strip = self.rules.strip_components
        canonical = set(map(memo_by_identity("canonicalizer", strip, lambda: canonicalizer(strip)), names))
        exact = frozenset(n for n in canonical if not _GLOB_CHARS & set(n))
        return _NameSet(exact, tuple(re.compile(fnmatch.translate(n)) for n in sorted(canonical - exact)))

    def _report_unused(self, rules_used: list[bool], excl_used: list[bool], override_used: list[bool]) -> None:
        mode = self.rules.config.checks.unused_patterns
        candidates = [
            *((r, r.path + ".match", r.pattern.pattern, lambda n, d, k, r=r: r.pattern.search(n)) for r, u in zip(self.rules.rules, rules_used) if not u),
            *((e, e.path, e.text, e.test) for e, u in zip(self.rules.exclusions, excl_used) if not u),
            *((o, o.path + ".match", o.pattern.pattern, lambda n, d, k, o=o: o.pattern.search(n)) for o, u in zip(self.rules.overrides, override_used) if not u),
        ]
        if not candidates:
            return

        def unmatched(chosen: list[Any]) -> list[tuple[Any, str, str]]:
            if not chosen:
                return []
            modules = collect_modules(self.model, self.rules.strip_components)
            named = [(join_name(cprefix, leaf), p.ndim, class_names(kind)) for _, cprefix, params, _, kind in modules for leaf, p in params.items() if p is not None]
            return [(entry, path, text) for entry, path, text, test in chosen if not any(test(n, d, k) for n, d, k in named)]

        for entry, path, text in unmatched([c for c in candidates if not c[0].allow_unused]):
            self.unused.append(f"{path} ({_label(entry.origin, path)}): {text!r}")
            self.report(mode, Problem(entry.origin, path, f"{text!r} matches no parameter (set allow_unused: true to keep it)"))
        allowed = [c for c in candidates if c[0].allow_unused]
        if allowed:  # listed by `explain` only: found when asked, not on every resolve
            self.allowed_unused = lambda: [f"{path} ({_label(e.origin, path)}): {text!r} (allowed)" for e, path, text in unmatched(allowed)]

    def _report_conflicts(self, conflicts: Mapping[tuple[int, int, str], list[str]]) -> None:
        mode = self.rules.config.checks.override_conflicts
        for (first, second, field), names in conflicts.items():
            a, b = self.rules.overrides[first], self.rules.overrides[second]
            self.report(mode, Problem(b.origin, f"{b.path}.{field}", f"conflicts with {a.path} ({a.origin}) on {_listing(names)}"))


@dataclass(frozen=True)
class _NameSet:
    """Exact names plus globs; calling it tests one name."""

    exact: frozenset[str]
    globs: tuple[re.Pattern[str], ...]

    def __call__(self, name: str) -> bool:
        return name in self.exact or any(glob.match(name) for glob in self.globs)


_GLOB_CHARS = frozenset("*?[")


def _tail_needed(text: str) -> int | None:
    """How many trailing module components an exclude entry looks at, besides ndim and the leaf name.

    ``ndim<=1`` and ``*.bias`` need 0, ``*.grn.weight`` needs 1; None for entries that may look at
    the whole name (``re:``, exact names, other globs). Suffix globs give the same answer for any
    name ending in the same components, so their result is cached per (tail, leaf, ndim).
    """
    text = text.strip()
    if text.startswith(("ndim", "module:")):
        return 0
    suffix = text[1:]
    if not text.startswith("*") or _GLOB_CHARS & set(suffix):
        return None
    return suffix.count(".") - (1 if suffix.startswith(".") else 0)


def _exclusion_reach(exclusions: Sequence[Any]) -> tuple[bool, int, frozenset[str] | None]:
    """What the exclude entries read: whether only (trailing module names, leaf, ndim, class), how
    many trailing module names, and which names the globs spell out (see ``_Walk._stub``)."""
    tails = [_tail_needed(e.text) for e in exclusions]
    tail = max((t for t in tails if t is not None), default=0)
    return None not in tails, tail, _named_components([e.text for e, t in zip(exclusions, tails) if t])


def _named_components(texts: list[str]) -> frozenset[str] | None:
    """The module names suffix globs (``*.grn.weight``) spell out; None when one starts mid-name
    (``*grn.weight``), which any component may end with."""
    names: set[str] = set()
    for text in texts:
        suffix = text.strip()[1:]
        if not suffix.startswith("."):
            return None
        names.update(suffix.split(".")[1:-1])
    return frozenset(names)


class _Walk:
    """The one pass over the model: each trainable parameter's layer id, weight decay and
    overrides, collected by key.

    Modules are visited in ``named_modules()`` order with an explicit stack; a module whose answer
    holds for its whole subtree (``LayerIdentifier.for_module``) passes it to its children, so a
    block's rules run once. Weight decay is looked up per (tail, leaf name, ndim, module class)
    when the exclude entries look at nothing else. No per-parameter name is built on this path:
    ``rows()`` makes them again when a report or ``plan.params`` asks, which keeps the walk near
    the cost and below the memory of ``named_parameters()`` itself.
    """

    def __init__(self, resolver: _Resolver, identifier: LayerIdentifier) -> None:
        self.model = resolver.model
        self.claim = resolver.claim
        self.identifier = identifier
        rules = resolver.rules
        self.strip_components = rules.strip_components
        self.strip = strip_parts(rules.strip_components)[0]
        self.base_wd = rules.config.weight_decay.value
        self.no_wd = resolver._model_no_weight_decay()
        self.exclusions = rules.exclusions
        self.overrides = rules.overrides
        names_only, self.tail, self.components = memo_by_identity("exclusions", self.exclusions, lambda: _exclusion_reach(self.exclusions))
        self.cacheable = not self.overrides and not self.no_wd.globs and names_only
        self.keys: list[tuple[int, int, float, float]] = []  # (layer id, rule index, weight decay, lr_mult)
        self.members: list[list[Any]] = []
        self.frozen: list[str] = []
        self._frozen_answers: set[Answer] = set()
        self._frozen_by_name: list[tuple[Callable[[str], Answer | None], str]] = []  # evaluated only if N is needed
        self._met: list[int] | array[int] = []  # the id of each tensor an optimistic walk grouped or listed, for verified()
        self.unmatched: list[tuple[str, str]] = []
        self.override_frozen: list[tuple[str, int]] = []  # (name, layer id)
        self.exclusion_used = [False] * len(self.exclusions)
        self.override_used = [False] * len(self.overrides)
        self.conflicts: dict[tuple[int, int, str], list[str]] = {}
        self.renamed = False  # some prefix lost a wrapper component: names may collide
        self.shared = False  # some module or parameter has two places in the model (or a module holds itself)
        self._seen: set[int] = set()
        self._key_index: dict[tuple[Answer, float, float], int] = {}
        self._wd_cache: dict[tuple[str, str, int, type], float] = {}
        self._no_wd_leaves: dict[str, set[str]] = {}  # model.no_weight_decay() names, by canonical module prefix
        for name in self.no_wd.exact:
            module_prefix, _, leaf = name.rpartition(".")
            self._no_wd_leaves.setdefault(module_prefix, set()).add(leaf)

    def run(self, model: Any, optimistic: bool = False) -> bool:
        """Walk ``model`` with an explicit stack; False (and nothing usable) when a module class
        overrides ``named_modules``/``named_parameters`` (``run_listed`` then honours it) or, when
        ``optimistic``, when ``verified()`` would not hold.

        ``optimistic`` leaves out what almost no model needs: the per-parameter check for tied
        parameters (the walk only notes each tensor's id, while the tensor is in the cache;
        ``verified()`` looks for repeats afterwards, in one C loop) and, below a module
        whose answer holds for its whole subtree, the module names: such modules carry only the
        stub their weight decay is cached by (``_stub``), made from their own name. A frozen
        parameter there, having no name to be listed under, gives up the walk.
        """
        strip, leads, renamers = strip_parts(self.strip_components)  # leads: e.g. PEFT's base_model.model
        for_module, for_children, rules_used = self.identifier.for_module, self.identifier.for_children, self.identifier.used
        fast = self.cacheable and self.claim is None
        optimistic = optimistic and fast
        tail, stub_of = self.tail, self._stub
        blanks = self.components if tail == 1 else None
        blank_ends = tuple(f".{name}" for name in blanks or ())
        seen, seen_add = self._seen, self._seen.add
        met_ids = self._met
        met = met_ids.append
        wd_cache, key_index, keys, members = self._wd_cache, self._key_index, self.keys, self.members
        no_wd_leaves = self._no_wd_leaves
        stubs_only = optimistic and tail <= 1  # subtrees with one answer may drop their names, unless they hold
        named_below = {  # a model.no_weight_decay() name or a leading prefix still to be cut
            name.rsplit(".", cut)[0] for name in [*no_wd_leaves, *leads] for cut in range(name.count(".") + 1)
        }
        checked: set[type] = set()  # module classes known to walk like nn.Module
        seen_modules: set[int] = set()  # containers (a leaf met twice is caught by its parameters)
        move_at = 1 << 16  # the optimistic walk's ids: in a list up to 2**16, then in an array (see verified)
        bucket_answer: Answer | None = None
        bucket: dict[float, list[Any]] = {}  # weight decay -> members, for bucket_answer
        # (module, prefix, canonical prefix, state inherited or Placed with its list, or None);
        # below a module whose answer holds for its subtree, when stubs_only: (module, None, stub, answer)
        stack: list[tuple[Any, str | None, str, Any]] = [(model, "", "", None)]
        pop, push = stack.pop, stack.append
        while stack:
            module, prefix, cprefix, state = pop()
            children = module._modules
            if children:  # a container met twice (shared, or a cycle) is walked once; a leaf met
                if id(module) in seen_modules:  # twice adds nothing, its parameters being seen already
                    self.shared = True
                    continue
                seen_modules.add(id(module))
                if len(met_ids) > move_at:  # a large model: its ids as raw numbers from now on
                    met_ids = self._met = array("Q", met_ids)
                    met, move_at = met_ids.append, 1 << 62  # moved once
            kind = type(module)
            if kind not in checked:
                if not walks_like_module(kind):
                    return False
                checked.add(kind)
            params = module._parameters
            if prefix is None:  # in a subtree with one answer: cprefix is the stub
                answer, stub, module_no_wd, by_stub = state, cprefix, (), True
            else:
                if state is None or state.__class__ is Placed:  # to be asked of the rules, or placed with its list
                    if not children:  # a leaf with nothing new (empty, or met before): no rule may count it as used
                        if not params:
                            continue
                        first = next(iter(params.values()))
                        if (first is None or id(first) in seen) and all(p is None or id(p) in seen for p in params.values()):
                            self.shared = self.shared or any(p is not None for p in params.values())  # a leaf with two places
                            continue
                    if state is None:
                        state = for_module(cprefix)
                    else:
                        rules_used[state[0][1]] = True
                answer = state[0]
                by_stub = stubs_only and state[1] and answer is not None and cprefix and cprefix not in named_below
                if params:
                    if fast and answer is not None and not callable(answer):
                        module_no_wd = no_wd_leaves.get(cprefix, ()) if no_wd_leaves else ()
                        if not cprefix:  # as _stub() gives, inline for the common cases
                            stub = ""
                        elif not tail:
                            stub = "x."
                        elif blanks is not None:  # a module no exclude glob names: its last name is blanked
                            stub = stub_of(cprefix) if cprefix in blanks or cprefix.endswith(blank_ends) else "x.."
                        else:
                            stub = stub_of(cprefix)
                    else:
                        self._params(params, prefix, cprefix, answer, kind)
                        params = None
            if params:  # the common case: nothing here needs the full name
                if answer is not bucket_answer:
                    bucket_answer, bucket = answer, {}
                for leaf, param in params.items():
                    if param is None:
                        continue
                    if optimistic:
                        met(id(param))  # while the tensor is in the cache; verified() looks for repeats
                        if not param.requires_grad:  # read here too
                            if prefix is None:  # no name to list it under: walk again with every check
                                return False
                            self.frozen.append(join_name(prefix, leaf))
                            self._frozen_answers.add(answer)
                            continue
                    else:
                        pid = id(param)
                        if pid in seen:
                            self.shared = True  # tied, or a shared leaf module
                            continue
                        seen_add(pid)
                        if not param.requires_grad:
                            self.frozen.append(join_name(prefix, leaf))  # type: ignore[arg-type]
                            self._frozen_answers.add(answer)
                            continue
                    if leaf in module_no_wd:
                        wd = 0.0
                    else:
                        wd_key = (stub, leaf, param.ndim, kind)
                        wd = wd_cache.get(wd_key)  # type: ignore[assignment]
                        if wd is None:
                            wd = wd_cache[wd_key] = self._weight_decay(stub + leaf, wd_key[2], class_names(kind), mark_all=True)
                    target = bucket.get(wd)
                    if target is None:  # first parameter of this answer with this weight decay
                        key = (answer, wd, 1.0)
                        k = key_index.get(key)
                        if k is None:  # a new key (as _key makes it)
                            key_index[key] = len(keys)
                            keys.append((answer[0], answer[1], wd, 1.0))
                            target = []
                            members.append(target)
                        else:
                            target = members[k]
                        bucket[wd] = target
                    target.append(param)
            if not children:
                continue
            # Children with neither parameters nor children (activations, dropouts, identities:
            # about half of a timm model's modules) add nothing, so they are not visited once
            # their class is known to list nothing else (see walks_like_module).
            if by_stub:
                for name, child in reversed(children.items()):
                    if child is not None and (child._parameters or child._modules or type(child) not in checked):
                        if name in strip:  # a wrapper component: the child keeps this module's name (or stub)
                            self.renamed = True
                            push((child, None, cprefix if prefix is None else stub_of(cprefix), answer))
                        else:
                            push((child, None, "x." if not tail else "x.." if blanks is not None and name not in blanks else f"x.{name}.", answer))
                continue
            inherited = state if state[1] else None
            dot, cdot = (prefix + "." if prefix else ""), (cprefix + "." if cprefix else "")
            if dot == cdot and children.keys().isdisjoint(renamers):  # nothing renamed: share the strings (a keys view looks up the few renamers, not every child)
                # a list of blocks: one search places them all (LayerIdentifier.for_children)
                placed = for_children(cprefix, children) if optimistic and inherited is None and cprefix and len(children) > 2 else None
                pending: Any = children.items()
                if placed and stubs_only:
                    # Blocks whose children are all leaves of known classes (a list of small blocks,
                    # the shape of a very large model) are grouped here, in order, as popping each
                    # block and then each leaf would group them, without those pushes and pops:
                    # 15% of resolve() on 25,000 such blocks. From the first other block on, the
                    # rest are pushed. (The loop over each leaf's tensors is the one above, less
                    # what a leaf below a stub never needs: a name, model.no_weight_decay().)
                    for taken, (name, block) in enumerate(pending):
                        if block is None:
                            continue
                        state = placed.get(name)
                        if state is None or not state[1] or block._parameters or id(block) in seen_modules:
                            break
                        if named_below and dot + name in named_below:
                            break
                        leaves = block._modules
                        plain = type(block) in checked or _known(type(block), checked)
                        for leaf_name, leaf in leaves.items():
                            if leaf is not None and (leaf._modules or leaf_name in strip or (type(leaf) not in checked and not _known(type(leaf), checked))):
                                plain = False
                                break
                        if not plain:
                            break
                        if not leaves:
                            continue  # holds nothing: the rule is not used by it
                        seen_modules.add(id(block))
                        if len(met_ids) > move_at:
                            met_ids = self._met = array("Q", met_ids)
                            met, move_at = met_ids.append, 1 << 62
                        block_answer = state[0]
                        rules_used[block_answer[1]] = True
                        if block_answer is not bucket_answer:
                            bucket_answer, bucket = block_answer, {}
                        for leaf_name, leaf in leaves.items():
                            if leaf is None or not leaf._parameters:
                                continue
                            leaf_stub = "x." if not tail else "x.." if blanks is not None and leaf_name not in blanks else f"x.{leaf_name}."
                            leaf_kind = type(leaf)
                            for param_name, param in leaf._parameters.items():  # as the loop above, for a leaf below a stub
                                if param is None:
                                    continue
                                met(id(param))
                                if not param.requires_grad:
                                    return False  # no name to list it under
                                wd_key = (leaf_stub, param_name, param.ndim, leaf_kind)
                                wd = wd_cache.get(wd_key)  # type: ignore[assignment]
                                if wd is None:
                                    wd = wd_cache[wd_key] = self._weight_decay(leaf_stub + param_name, wd_key[2], class_names(leaf_kind), mark_all=True)
                                target = bucket.get(wd)
                                if target is None:
                                    target = bucket[wd] = self._members_of(block_answer, wd)
                                target.append(param)
                    else:
                        taken = len(children)
                    if taken:
                        pending = list(pending)[taken:]
                for name, child in reversed(pending):
                    if child is not None and (child._parameters or child._modules or type(child) not in checked):
                        child_prefix = dot + name
                        push((child, child_prefix, child_prefix, placed.get(name) if placed else inherited))
            else:
                for name, child in reversed(children.items()):
                    if child is not None and (child._parameters or child._modules or type(child) not in checked):
                        push((child, dot + name, *self._child_prefix(cprefix, cdot, name, inherited, leads)))
        return not optimistic or self.verified()

    def verified(self) -> bool:
        """What an optimistic walk assumed: each parameter it grouped or listed as frozen was met
        once, and none was left unmatched (a tied one might hide behind it).

        The ids, with those of the tensors ``_params()`` saw (it keeps them in ``self._seen``),
        are counted in a set or, once ``run`` has moved them into an array (past 65,536), by
        ``torch.unique`` as one int64 tensor: a set of 100k ids costs several times as much, its
        table being larger than the cache."""
        if self.unmatched:
            return False
        met = self._met
        if met.__class__ is list:  # a small model: a set is quicker than a call into torch
            return len(self._seen.union(met)) == len(met) + len(self._seen)
        import torch

        ids = met + array("Q", self._seen)
        return len(torch.unique(torch.frombuffer(ids, dtype=torch.int64))) == len(ids)

    def _child_prefix(self, cprefix: str, cdot: str, name: str, inherited: ModuleState | None, leads: tuple[str, ...]) -> tuple[str, ModuleState | None]:
        """A child's canonical prefix, and the state it inherits (none once a leading prefix is cut)."""
        if name in self.strip:
            self.renamed = True
            return cprefix, inherited
        child = cdot + name
        if leads and child.startswith(leads):
            self.renamed = True
            return canonical_name(child, self.strip), None
        return child, inherited

    def run_listed(self, model: Any) -> None:
        """The walk through ``model.named_modules()``, for models with a class that overrides it."""
        canonical = canonicalizer(self.strip)
        self.shared = True  # named_modules() hides repeats: let the counts be checked over every module
        states: dict[str, tuple[str, ModuleState]] = {}  # prefix -> (canonical prefix, state)
        for prefix, module in model.named_modules():
            cprefix = canonical(prefix)
            self.renamed = self.renamed or cprefix != prefix
            parent = states.get(prefix.rpartition(".")[0]) if prefix else None
            inherit = parent is not None and parent[1][1] and _extends(cprefix, parent[0])
            state = parent[1] if inherit else self.identifier.for_module(cprefix)  # type: ignore[index]
            states[prefix] = (cprefix, state)
            if module._parameters:
                self._params(module._parameters, prefix, cprefix, state[0], type(module))

    def _params(self, params: Mapping[str, Any], prefix: str, cprefix: str, answer: Resolution, kind: type) -> None:
        """One module's own parameters, for everything the fast path leaves out: answers that
        depend on the full name, overrides, chains and exclude entries that read the name."""
        seen = self._seen
        kinds = class_names(kind)
        stub = self._stub(cprefix)
        claim = self.claim
        for leaf, param in params.items():
            if param is None:
                continue
            if id(param) in seen:
                self.shared = True
                continue
            seen.add(id(param))
            name, cname = join_name(prefix, leaf), join_name(cprefix, leaf)
            if claim is not None and not claim(cname):
                continue  # another chain's parameter
            if not param.requires_grad:
                self.frozen.append(name)
                if callable(answer):
                    self._frozen_by_name.append((answer, cname))
                elif answer is not None:
                    self._frozen_answers.add(answer)
                continue
            found = answer(cname) if callable(answer) else answer
            if found is None:
                self.unmatched.append((name, cname))
                continue
            wd = 0.0 if self.no_wd(cname) else self._weight_decay(stub + leaf if self.cacheable else cname, param.ndim, kinds)
            mult = 1.0
            if self.overrides:
                mult, wd, frozen = self._apply_overrides(cname, wd)
                if frozen:
                    self.override_frozen.append((name, found[0]))
                    continue
            k = self._key_index.get((found, wd, mult))
            self.members[self._key(found, wd, mult) if k is None else k].append(param)

    def frozen_answers(self) -> set[Answer]:
        """The answers of the frozen parameters (for ``num_layers`` = highest id - 1)."""
        by_name = (answer(name) for answer, name in self._frozen_by_name)
        return self._frozen_answers | {found for found in by_name if found is not None}

    def done(self) -> None:
        """Drop what only the walk needed (every parameter's id)."""
        self._seen = set()
        self._met = []
        self._wd_cache.clear()

    def _members_of(self, answer: Answer, wd: float) -> list[Any]:
        """The members of key (answer, wd, no lr_mult), a new key if there is none yet."""
        k = self._key_index.get((answer, wd, 1.0))
        return self.members[self._key(answer, wd, 1.0) if k is None else k]

    def _key(self, found: Answer, wd: float, mult: float) -> int:
        """A new (layer id, rule index, weight decay, lr_mult) key; returns its index."""
        self._key_index[(found, wd, mult)] = len(self.keys)
        self.keys.append((found[0], found[1], wd, mult))
        self.members.append([])
        return len(self.keys) - 1

    def rows(self, wanted: Collection[int] | None = None) -> Iterator[tuple[str, str, Any, int]]:
        """``(name, canonical name, tensor, key index)`` of the grouped parameters (of the keys in
        ``wanted``), in model order: a second walk, for reports and ``plan.params``."""
        key_of = self._key_of(wanted)
        for prefix, cprefix, params, _, _ in collect_modules(self.model, self.strip):
            for leaf, param in params.items():
                k = key_of.pop(id(param), None)  # popped: a tensor met again further on is not listed again
                if k is not None:
                    yield join_name(prefix, leaf), join_name(cprefix, leaf), param, k

    def canonical_keys(self, wanted: Collection[int]) -> tuple[list[str], list[int]]:
        """The canonical name and the key index of each tensor ``rows(wanted)`` lists, in the same
        order: all ``Plan.fingerprint`` needs, without the generator, the raw names and the tensors."""
        key_of = self._key_of(wanted)
        names: list[str] = []
        keys: list[int] = []
        for _, cprefix, params, _, _ in collect_modules(self.model, self.strip):
            if params:
                dot = f"{cprefix}." if cprefix else ""
                for leaf, param in params.items():
                    k = key_of.pop(id(param), None)
                    if k is not None:
                        names.append(dot + leaf)
                        keys.append(k)
        return names, keys

    def _key_of(self, wanted: Collection[int] | None) -> dict[int, int]:
        """Each grouped tensor's id, mapped to its key index (keys in ``wanted`` only)."""
        return {id(param): k for k, params in enumerate(self.members) if wanted is None or k in wanted for param in params}

    def _stub(self, cprefix: str) -> str:
        """A stand-in prefix that every cacheable exclude entry answers as it answers ``cprefix``:
        its last ``self.tail`` components, each blanked unless an entry names it (``"x.grn."`` or
        ``"x.."`` for ``*.grn.weight``), so a block index does not make a new cache entry."""
        if not cprefix:
            return ""
        if not self.tail:
            return "x."
        if self.tail == 1:
            _, dot, last = cprefix.rpartition(".")
            if self.components is not None and last not in self.components:
                return "x.."  # wherever it is: every cacheable entry starts with "*"
            return f"x.{last}." if dot else f"{last}."
        parts = cprefix.split(".")
        kept = parts[-self.tail :]
        if self.components is not None:
            kept = [part if part in self.components else "" for part in kept]
        return ("x." if len(parts) > len(kept) else "") + "".join(f"{part}." for part in kept)

    def _weight_decay(self, name: str, ndim: int, kinds: tuple[str, ...], mark_all: bool = False) -> float:
        """0 when an exclude entry matches, else the configured value; ``mark_all`` records every
        matching entry as used (cheap when the result is cached), not just the first."""
        wd = self.base_wd
        for index, exclusion in enumerate(self.exclusions):
            if exclusion.test(name, ndim, kinds):
                self.exclusion_used[index] = True
                wd = 0.0
                if not mark_all:
                    break
        return wd

    def _apply_overrides(self, canon: str, wd: float) -> tuple[float, float, bool]:
        mult = 1.0
        frozen = False
        set_by: dict[str, tuple[int, float]] = {}
        for index, override in enumerate(self.overrides):
            if override.pattern.search(canon) is None:
                continue
            self.override_used[index] = True
            for field, value in (("lr_mult", override.lr_mult), ("weight_decay", override.weight_decay)):
                if value is None:
                    continue
                earlier = set_by.get(field)
                if earlier is not None and earlier[1] != value:
                    self.conflicts.setdefault((earlier[0], index, field), []).append(canon)
                set_by[field] = (index, value)
            frozen = frozen or override.freeze
        if "lr_mult" in set_by:
            mult = set_by["lr_mult"][1]
        if "weight_decay" in set_by:
            wd = set_by["weight_decay"][1]
        return mult, wd, frozen


def _known(kind: type, checked: set[type]) -> bool:
    """Whether modules of class ``kind`` walk like nn.Module, noted in ``checked`` once it is known."""
    if walks_like_module(kind):
        checked.add(kind)
        return True
    return False


class _Rows(Sequence[ParamRow]):
    """``plan.params``: built on first access by walking the model again, so ``resolve()`` itself
    keeps no per-parameter names."""

    def __init__(self, walk: _Walk, final: list[int], groups: list[dict[str, Any]], labels: Callable[[], Mapping[int, tuple[str, str]]]) -> None:
        self._source = (walk, final, groups, labels)
        self._rows: list[ParamRow] | None = None
        self._tensors: list[Any] = []

    def _walked(self) -> list[tuple[str, str, Any, int]]:
        """``(name, canonical name, tensor, key)`` of every grouped parameter, from a second walk of
        the model, which must still hold the parameters it held at ``resolve()``."""
        walk, grouped = self._source[0], self._grouped()
        return self._complete(list(walk.rows(grouped)), grouped)

    def _grouped(self) -> set[int]:
        return {k for k, group in enumerate(self._source[1]) if group >= 0}

    def _complete(self, walked: list[_T], grouped: set[int]) -> list[_T]:
        """``walked``, once it is known to list every grouped parameter."""
        if len(walked) != sum(len(self._source[0].members[k]) for k in grouped):
            raise RuntimeError("the model's parameters changed after resolve(): resolve it again to list them")
        return walked

    def _built(self) -> list[ParamRow]:
        if self._rows is None:
            walk, final, groups, rule_labels = self._source
            labels = rule_labels()
            rows = []
            tensors = []
            for name, _, param, k in self._walked():
                layer_id, source, wd, _ = walk.keys[k]
                entry = groups[final[k]]
                rows.append(ParamRow(name, layer_id, entry["lr_scale"], wd, entry["group_name"], *labels[source], param.numel(), param.ndim))
                tensors.append(param)
            self._rows, self._tensors = rows, tensors
        return self._rows

    def tensors(self) -> list[Any]:
        """The parameter of each row, in the same order."""
        self._built()
        return self._tensors

    def assignments(self) -> tuple[list[str], list[Setting], list[int]]:
        """``row_assignments`` of these rows: from the built rows when there are some, else from a
        walk for names and key indices only, which never makes a setting per parameter."""
        walk, final, groups, _ = self._source
        if self._rows is not None:
            return row_assignments(self._rows, canonicalizer(walk.strip))
        grouped = self._grouped()
        names, keys = walk.canonical_keys(grouped)
        self._complete(names, grouped)
        setting_of = {k: (walk.keys[k][0], repr(groups[final[k]]["lr_scale"]), repr(walk.keys[k][2]), groups[final[k]]["group_name"]) for k in grouped}
        table = sorted(set(setting_of.values()))
        index_of_key = {k: table.index(setting) for k, setting in setting_of.items()}
        return names, table, [index_of_key[k] for k in keys]

    def __len__(self) -> int:
        return len(self._built())

    def __getitem__(self, index: Any) -> Any:
        return self._built()[index]

    def __iter__(self) -> Iterator[ParamRow]:
        return iter(self._built())

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented

    def __repr__(self) -> str:
        return repr(self._built())


def _label(origin: Location, path: str) -> str:
    """``file:line`` of a rule, or ``<dict>:layers.rules[2]`` when it has no line."""
    return str(origin) if origin.line is not None else f"{origin.file}:{path}"


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def create_optimizer(
    model: torch.nn.Module,
    source: Source | None = None,
    *,
    lr: float | None = None,
    optimizer: str | None = None,
    layer_decay: float | None = None,
    weight_decay: float | None = None,
    convention: Convention = "torch",
    registry: Registry | None = None,
    **optimizer_kwargs: Any,
) -> torch.optim.Optimizer:
    """Resolve ``model`` against the rules and build the optimizer by name from timm's registry.

    The name and keyword arguments come from the rules' ``optimizer`` section, overridden by
    ``optimizer=`` and ``**optimizer_kwargs``. Each group starts at ``lr × lr_scale``; see
    ``Plan.optimizer_groups`` for ``convention``.
    """
    plan = resolve(model, source, layer_decay=layer_decay, weight_decay=weight_decay, lr=lr, registry=registry)
    return build_optimizer(plan, optimizer=optimizer, convention=convention, **optimizer_kwargs)


def create_optimizers(
    model: torch.nn.Module,
    source: Source | None = None,
    *,
    lr: float | None = None,
    optimizer: str | None = None,
    layer_decay: float | None = None,
    weight_decay: float | None = None,
    convention: Convention = "torch",
    registry: Registry | None = None,
    **optimizer_kwargs: Any,
) -> list[torch.optim.Optimizer]:
    """Like ``create_optimizer``, for rules that route parameters to two torch optimizers
    (``optimizer: {name: torch.Muon, fallback: adamw}``): returns ``[primary, fallback]``."""
    plan = resolve(model, source, layer_decay=layer_decay, weight_decay=weight_decay, lr=lr, registry=registry)
    return build_optimizers(plan, optimizer=optimizer, convention=convention, **optimizer_kwargs)


def build_optimizer(plan: Plan, *, optimizer: str | None = None, convention: Convention = "torch", **optimizer_kwargs: Any) -> torch.optim.Optimizer:
    """The optimizer for an existing plan (see ``create_optimizer``).

    With ``optimizer.fallback`` and one of timm's hybrid optimizers (``muon``, ``adamuon``,
    ``nadamuon``, ``nmuon``), the hidden matrices go to Muon and every other parameter to its
    built-in AdamW (``use_fallback`` groups), all with layer-wise decay. Its ``state_dict()``
    carries the plan's fingerprint; loading a state saved under another plan raises
    ``PlanMismatchError``.
    """
    optimizers = build_optimizers(plan, optimizer=optimizer, convention=convention, **optimizer_kwargs)
    if len(optimizers) != 1:
        raise ValueError("these rules route parameters to two optimizers (a torch.* optimizer with a fallback): use create_optimizers()")
    return optimizers[0]


TIMM_HYBRIDS = frozenset({"muon", "adamuon", "nadamuon", "nmuon"})


def build_optimizers(plan: Plan, *, optimizer: str | None = None, convention: Convention = "torch", **optimizer_kwargs: Any) -> list[torch.optim.Optimizer]:
    """The optimizer(s) for a plan: one, or two when ``optimizer.fallback`` routes parameters.

    Routing sends each "hidden matrix" (``ndim == 2``, or ``>= 2`` for timm's Muon which flattens
    convolutions, with a layer id in ``1..num_layers``: not the stem or embeddings at 0, not the
    head at ``num_layers + 1``) to ``optimizer.name`` and everything else to ``optimizer.fallback``.
    timm's hybrids hold both routes in one optimizer; a ``torch.*`` optimizer (``torch.Muon``) and
    its fallback are two optimizers, returned in that order.
    """
    config = plan.rules.config.optimizer
    name = optimizer or config.name or "adamw"
    extra = {k: v for k, v in (config.model_extra or {}).items()}
    kwargs = {**extra, **optimizer_kwargs}
    if plan.lr is None:
        raise RuleError.single(Location("<arguments>"), "optimizer.lr", "no learning rate: pass lr= or set optimizer.lr in the rules")
    groups = plan.optimizer_groups(plan.lr, convention)
    fallback = config.fallback
    if fallback is None:
        built = [_construct(name, groups, plan.lr, kwargs)]
    elif name.lower() in TIMM_HYBRIDS:
        if fallback.lower() != "adamw":
            raise ValueError(f"timm's {name} has AdamW built in as its fallback; got fallback {fallback!r}")
        primary, secondary = _route(plan, groups, min_ndim=2, exact_2d=False)
        built = [_construct(name, primary + [{**g, "use_fallback": True} for g in secondary], plan.lr, kwargs)]
    else:
        primary, secondary = _route(plan, groups, min_ndim=2, exact_2d=True)
        built = [_construct(name, primary, plan.lr, kwargs), _construct(fallback, secondary, plan.lr, {})]
    for opt in built:
        stamp(opt, plan)
    return built


def _route(plan: Plan, groups: list[dict[str, Any]], *, min_ndim: int, exact_2d: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split every group into its hidden-matrix part and the rest (empty parts dropped)."""
    hidden = {
        id(tensor)
        for row, tensor in zip(plan.params, plan.params.tensors())  # type: ignore[attr-defined]
        if (row.ndim == 2 if exact_2d else row.ndim >= min_ndim) and 0 < row.layer_id <= _num_layers_of(plan, row)
    }
    primary, secondary = [], []
    for group in groups:
        inside = [p for p in group["params"] if id(p) in hidden]
        outside = [p for p in group["params"] if id(p) not in hidden]
        if inside:
            primary.append({**group, "params": inside, "group_name": f"{group['group_name']}:matrix"})
        if outside:
            secondary.append({**group, "params": outside, "group_name": f"{group['group_name']}:fallback"})
    return primary, secondary


def _num_layers_of(plan: Plan, row: ParamRow) -> int:
    """N of the chain a row belongs to (the plan's own N outside chains)."""
    return plan.chains[row.chain].num_layers if row.chain else plan.num_layers


def _construct(name: str, groups: list[dict[str, Any]], lr: float, kwargs: Mapping[str, Any]) -> torch.optim.Optimizer:
    """One optimizer by name: ``torch.<Class>`` from torch.optim, anything else from timm's registry."""
    if name.startswith("torch."):
        import torch

        cls = {n.lower(): getattr(torch.optim, n) for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)}.get(name[6:].lower())
        if cls is None or not issubclass(cls, torch.optim.Optimizer):
            raise ValueError(f"torch.optim has no optimizer {name[6:]!r}")
        _check_kwargs(name, cls, kwargs)
        return cls(groups, lr=lr, **kwargs)
    _check_kwargs(name, _optimizer_class(name), kwargs)
    import timm.optim

    # timm's factory adds its per-optimizer defaults (momentum for sgd, lookahead_ prefixes).
    return timm.optim.create_optimizer_v2(groups, opt=name, lr=lr, **kwargs)


def optimizer_names() -> list[str]:
    """Every optimizer name timm's registry knows."""
    import timm.optim

    return sorted(timm.optim.list_optimizers())


def _optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    import timm.optim

    try:
        return timm.optim.get_optimizer_class(name.lower().removeprefix("lookahead_"), bind_defaults=True)  # type: ignore[return-value]
    except (ValueError, KeyError):
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(optimizer_names())}") from None


def _check_kwargs(name: str, opt_class: Any, kwargs: Mapping[str, Any]) -> None:
    target = getattr(opt_class, "func", opt_class)
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [p for p in parameters if p not in ("self", "params")]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise ValueError(f"optimizer {name!r} does not accept {', '.join(map(repr, unknown))}; its options: {', '.join(accepted)}")
