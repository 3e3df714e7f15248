"""``resolve()`` and ``create_optimizer()``: the only place that wires rules, plugins and model together."""

from __future__ import annotations

import fnmatch
import inspect
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from lwd_rules import scaling
from lwd_rules.errors import Location, Problem, RuleError
from lwd_rules.grouping import Grouper, Settings
from lwd_rules.identify import DEFAULT, PLUGIN, LayerIdentifier, canonical_name, count_variables
from lwd_rules.plan import Convention, ParamRow, Plan, Skipped
from lwd_rules.rules.load import Source, extend, load_rules, rebase
from lwd_rules.rules.ruleset import RuleSet

if TYPE_CHECKING:
    import torch

    from lwd_rules.plugins import Registry

MAX_LISTED = 10


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
    shortcuts = _shortcuts(layer_decay, weight_decay, lr)
    if shortcuts:
        rules = extend(rules, shortcuts, "<keyword arguments>")
    if not rules.maps_layers:
        rules = rebase(rules, _detect(unwrap(model), registry), registry=registry)
    return _Resolver(model, rules, registry, strict).run()


def _default_registry() -> Registry:
    from lwd_rules.plugins import get_registry

    return get_registry()


def _shortcuts(layer_decay: float | None, weight_decay: float | None, lr: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if layer_decay is not None:
        out["layer_decay"] = {"rate": layer_decay}
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
    """The module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None or not hasattr(inner, "named_parameters"):
            break
        model = inner
    return model


class _Resolver:
    """One resolve: collects problems instead of stopping at the first."""

    def __init__(self, model: Any, rules: RuleSet, registry: Registry, strict: bool) -> None:
        self.model = model
        self.rules = rules
        self.registry = registry
        self.strict = strict
        self.problems: list[Problem] = []
        self.coverage: list[Problem] = []
        self.unused: list[str] = []
        self.bare = unwrap(model)  # what hooks see: DDP / torch.compile wrappers removed
        self.plugin_owner = ""
        self.warnings: list[str] = []
        self.top = rules.chain[-1][0].locate(())

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
        named = [(canonical_name(name, rules.strip_components), name, p) for name, p in self.model.named_parameters()]
        self._check_collisions(named)
        env = self._variables(named)
        if rules.num_layers is not None:
            env["num_layers"] = self._num_layers(env)
        plugin_ids = self._plugin_ids() if config.layers.ids_from_plugins else None
        identifier = LayerIdentifier(rules.rules, rules.default, env, plugin_ids)
        trainable = [(canon, name, p) for canon, name, p in named if p.requires_grad]
        ids: list[int] = []
        sources: list[int] = []
        unmatched: list[str] = []
        for canon, _, _ in trainable:
            found = identifier.identify(canon)
            if found is None:
                unmatched.append(canon)
            else:
                ids.append(found[0])
                sources.append(found[1])
        skipped = [Skipped(name, "requires_grad is False") for canon, name, p in named if not p.requires_grad]
        if unmatched:
            where = rules.rules[0].origin if rules.rules else self.top
            self.report(None, Problem(where, "layers.default", f"{len(unmatched)} parameter(s) match no rule and layers.default is not set: {_listing(unmatched)}"))
            self.fail_if_problems()
            left_out = set(unmatched)
            skipped += [Skipped(name, "no rule matches") for canon, name, _ in trainable if canon in left_out]
            trainable = [entry for entry in trainable if entry[0] not in left_out]
        if "num_layers" not in env:  # N = highest id - 1, frozen parameters included so freezing shifts nothing
            frozen = (identifier.identify(canon) for canon, _, p in named if not p.requires_grad)
            env["num_layers"] = max(max([*ids, *(found[0] for found in frozen if found)], default=1) - 1, 0)
        num_layers = env["num_layers"]
        self._report_defaulted(trainable, sources)
        self._check_range(trainable, ids, sources, num_layers)
        raw_scales = self._scales(num_layers)
        decay = config.layer_decay
        scales = scaling.clamp(raw_scales, decay.min_scale)
        no_wd = self._model_no_weight_decay()
        base_wd = config.weight_decay.value
        exclusions = rules.exclusions
        excl_used = [False] * len(exclusions)
        overrides = rules.overrides
        override_used = [False] * len(overrides)
        grouper = Grouper()
        owners = {raw.file: str(provenance) for raw, provenance in rules.chain}
        rule_labels: dict[int, tuple[str, str]] = {index: (_label(rule.origin, rule.path), owners.get(rule.origin.file, "")) for index, rule in enumerate(rules.rules)}
        rule_labels[PLUGIN] = ("lwd_layer_ids hook", self.plugin_owner)
        if rules.default is not None:
            rule_labels[DEFAULT] = (_label(rules.default.origin, rules.default.path), owners.get(rules.default.origin.file, ""))
        rows: list[tuple[str, int, float, float, int, str, str, int, int]] = []
        conflicts: dict[tuple[int, int, str], list[str]] = {}
        for (canon, name, param), layer_id, source in zip(trainable, ids, sources):
            if decay.below_min == "freeze" and raw_scales[layer_id] < decay.min_scale:
                skipped.append(Skipped(name, f"scale {raw_scales[layer_id]:.3g} of layer {layer_id} is below min_scale"))
                continue
            ndim = param.ndim
            wd = base_wd
            if no_wd(canon):
                wd = 0.0
            else:
                for index, exclusion in enumerate(exclusions):
                    if exclusion.test(canon, ndim):
                        excl_used[index] = True
                        wd = 0.0
                        break
            lr_scale = scales[layer_id]
            frozen = False
            if overrides:
                lr_scale, wd, frozen = self._apply_overrides(canon, lr_scale, wd, override_used, conflicts)
            if frozen:
                skipped.append(Skipped(name, "frozen by an override"))
                continue
            group = grouper.add(param, Settings(lr_scale, wd), layer_id)
            rows.append((name, layer_id, lr_scale, wd, group, *rule_labels[source], param.numel(), ndim))
        self._report_unused(named, identifier.used, excl_used, override_used)
        self._report_conflicts(conflicts)
        self.fail_if_problems()
        groups = grouper.param_groups()
        params = [ParamRow(n, i, s, w, groups[g]["group_name"], r, o, numel, nd) for n, i, s, w, g, r, o, numel, nd in rows]
        return Plan(
            rules=rules,
            num_layers=num_layers,
            scales=tuple(scales),
            param_groups=groups,
            params=params,
            skipped=skipped,
            variables={k: v for k, v in env.items()},
            warnings=self.warnings,
            problems=self.coverage,
            unused=self.unused,
            lr=config.optimizer.lr,
        )

    def _check_collisions(self, named: list[tuple[str, str, Any]]) -> None:
        seen: dict[str, str] = {}
        for canon, name, _ in named:
            other = seen.setdefault(canon, name)
            if other != name:
                self.problems.append(Problem(self.top, "names.strip_components", f"{other!r} and {name!r} both become {canon!r} once wrapper components are removed"))
        self.fail_if_problems()

    def _variables(self, named: list[tuple[str, str, Any]]) -> dict[str, Any]:
        rules = self.rules
        env: dict[str, Any] = {}
        if rules.config.layers.variables:
            seen = len(self.registry.failures)
            env.update(self.registry.layer_variables(self.bare, rules.name or ""))
            missing = [v for v in rules.config.layers.variables if v not in env]
            if missing:
                where = rules.chain[-1][0]
                location = next((raw.locate(("layers", "variables")) for raw, _ in reversed(rules.chain) if "variables" in raw.data.get("layers", {})), where.locate(()))
                message = f"no plugin provided {', '.join(map(repr, missing))} for rule set {rules.name!r} and {type(self.bare).__name__}"
                self.problems.append(Problem(location, "layers.variables", message + self._failures_since(seen)))
        if rules.counts:
            env.update(count_variables(rules.counts, (canon for canon, _, _ in named)))
        self.fail_if_problems()
        return env

    def _plugin_ids(self) -> dict[str, int]:
        """Layer ids from the ``lwd_layer_ids`` hook, by canonical name (``layers.ids_from_plugins``)."""
        name = self.rules.name or ""
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

    def _report_defaulted(self, trainable: list[tuple[str, str, Any]], sources: list[int]) -> None:
        """``checks.defaulted``: parameters that only ``layers.default`` placed (timm's silent fallback)."""
        mode = self.rules.config.checks.defaulted
        if mode == "ignore" or self.rules.default is None:
            return
        names = [canon for (canon, _, _), source in zip(trainable, sources) if source == DEFAULT]
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

    def _check_range(self, trainable: list[tuple[str, str, Any]], ids: list[int], sources: list[int], num_layers: int) -> None:
        bad: dict[int, list[str]] = {}
        for (canon, _, _), layer_id, source in zip(trainable, ids, sources):
            if not 0 <= layer_id <= num_layers + 1:
                bad.setdefault(source, []).append(f"{canon} -> {layer_id}")
        for source, names in bad.items():
            rule = self.rules.rules[source] if source != DEFAULT else None
            origin, path = (rule.origin, rule.path + ".layer") if rule else (self.rules.default.origin, "layers.default")  # type: ignore[union-attr]
            self.problems.append(Problem(origin, path, f"layer ids must lie in 0..{num_layers + 1} (num_layers + 1): {_listing(names)}"))
        self.fail_if_problems()

    def _scales(self, num_layers: int) -> list[float]:
        decay = self.rules.config.layer_decay
        try:
            return scaling.layer_scales(num_layers, rate=decay.rate, curve=decay.curve, values=decay.values)
        except ValueError as exc:
            origin = next((raw.locate(("layer_decay", "values")) for raw, _ in reversed(self.rules.chain) if "values" in raw.data.get("layer_decay", {})), self.top)
            raise RuleError.single(origin, "layer_decay.values", str(exc)) from None

    def _model_no_weight_decay(self) -> Callable[[str], bool]:
        """``model.no_weight_decay()`` as a test on canonical names: exact names, and globs as timm reads them."""
        if not self.rules.config.weight_decay.use_model_no_weight_decay:
            return _never
        method = getattr(self.bare, "no_weight_decay", None)
        names: Iterable[str] = method() if callable(method) else ()
        canonical = {canonical_name(n, self.rules.strip_components) for n in names}
        exact = frozenset(n for n in canonical if not any(c in n for c in "*?["))
        globs = [re.compile(fnmatch.translate(n)) for n in canonical - exact]
        return lambda name: name in exact or any(g.match(name) for g in globs)

    def _apply_overrides(self, canon: str, lr_scale: float, wd: float, used: list[bool], conflicts: dict[tuple[int, int, str], list[str]]) -> tuple[float, float, bool]:
        mult = 1.0
        frozen = False
        set_by: dict[str, tuple[int, float]] = {}
        for index, override in enumerate(self.rules.overrides):
            if override.pattern.search(canon) is None:
                continue
            used[index] = True
            for field, value in (("lr_mult", override.lr_mult), ("weight_decay", override.weight_decay)):
                if value is None:
                    continue
                earlier = set_by.get(field)
                if earlier is not None and earlier[1] != value:
                    conflicts.setdefault((earlier[0], index, field), []).append(canon)
                set_by[field] = (index, value)
            frozen = frozen or override.freeze
        if "lr_mult" in set_by:
            mult = set_by["lr_mult"][1]
        if "weight_decay" in set_by:
            wd = set_by["weight_decay"][1]
        return lr_scale * mult, wd, frozen

    def _report_unused(self, named: list[tuple[str, str, Any]], rules_used: list[bool], excl_used: list[bool], override_used: list[bool]) -> None:
        mode = self.rules.config.checks.unused_patterns
        names = [canon for canon, _, _ in named]
        ndims = [p.ndim for _, _, p in named]
        candidates = [
            *((r, r.path + ".match", r.pattern.pattern, lambda n, d, r=r: r.pattern.search(n)) for r, u in zip(self.rules.rules, rules_used) if not u),
            *((e, e.path, e.text, e.test) for e, u in zip(self.rules.exclusions, excl_used) if not u),
            *((o, o.path + ".match", o.pattern.pattern, lambda n, d, o=o: o.pattern.search(n)) for o, u in zip(self.rules.overrides, override_used) if not u),
        ]
        for entry, path, text, test in candidates:
            if any(test(n, d) for n, d in zip(names, ndims)):
                continue  # matched only parameters that are frozen or left out
            self.unused.append(f"{path} ({_label(entry.origin, path)}): {text!r}")
            if not entry.allow_unused:
                self.report(mode, Problem(entry.origin, path, f"{text!r} matches no parameter (set allow_unused: true to keep it)"))

    def _report_conflicts(self, conflicts: Mapping[tuple[int, int, str], list[str]]) -> None:
        mode = self.rules.config.checks.override_conflicts
        for (first, second, field), names in conflicts.items():
            a, b = self.rules.overrides[first], self.rules.overrides[second]
            self.report(mode, Problem(b.origin, f"{b.path}.{field}", f"conflicts with {a.path} ({a.origin}) on {_listing(names)}"))


def _never(name: str) -> bool:
    return False


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


def build_optimizer(plan: Plan, *, optimizer: str | None = None, convention: Convention = "torch", **optimizer_kwargs: Any) -> torch.optim.Optimizer:
    """The optimizer for an existing plan (see ``create_optimizer``)."""
    config = plan.rules.config.optimizer
    name = optimizer or config.name or "adamw"
    kwargs = {**(config.model_extra or {}), **optimizer_kwargs}
    if plan.lr is None:
        raise RuleError.single(Location("<arguments>"), "optimizer.lr", "no learning rate: pass lr= or set optimizer.lr in the rules")
    _check_kwargs(name, _optimizer_class(name), kwargs)
    import timm.optim

    # timm's factory adds its per-optimizer defaults (momentum for sgd, lookahead_ prefixes).
    return timm.optim.create_optimizer_v2(plan.optimizer_groups(plan.lr, convention), opt=name, lr=plan.lr, **kwargs)


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
