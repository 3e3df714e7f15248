"""Load rule sets from files, dicts or registered names; follow ``extends``; validate and compile."""

from __future__ import annotations

import copy
import difflib
import functools
import os
import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Union, get_args

from pydantic import BaseModel, ValidationError

from lwd_rules.errors import Location, PluginError, Problem, RuleError
from lwd_rules.expr import FUNCTIONS, FormulaError, parse_formula
from lwd_rules.rules import ruleset as rs
from lwd_rules.rules.schema import WRAPPER_COMPONENTS, RuleFile
from lwd_rules.rules.source import SUFFIXES, FieldPath, RawRules, read_rule_file

MAX_EXTENDS_DEPTH = 32
DICT_FILE = "<dict>"


@dataclass(frozen=True)
class Registered:
    """A rule set a plugin registered: a rule-file path or a dict, and who provided it."""

    name: str
    source: Path | Mapping[str, Any]
    plugin: str | None = None
    version: str | None = None


class RuleSetSource(Protocol):
    """Where registered rule sets come from: ``lwd_rules.plugins.Registry`` or a test double."""

    def rule_set(self, name: str) -> Registered | None: ...

    def rule_sets(self) -> Mapping[str, Registered]: ...


Source = Union["rs.RuleSet", Mapping[str, Any], str, Path]


def _installed() -> RuleSetSource:
    """The process-wide plugin registry (loads plugins on first use)."""
    from lwd_rules.plugins import get_registry

    return get_registry()


def load_rules(source: Source, *, registry: RuleSetSource | None = None) -> rs.RuleSet:
    """Load a rule set from a path, a registered name, a dict shaped like a rule file, or a ``RuleSet``.

    Registered names are looked up in ``registry`` (default: the installed plugins).
    """
    if isinstance(source, rs.RuleSet):
        return source
    chain = _load_chain(source, registry or _installed(), stack=())
    return build(chain)


def extend(rules: rs.RuleSet, data: Mapping[str, Any], label: str) -> rs.RuleSet:
    """``rules`` with one more layer of settings on top (keyword shortcuts, a detected base...)."""
    raw = RawRules(_plain_dict(data), label, {})
    return build(rules.chain + ((raw, rs.Provenance(file=label)),))


def rebase(rules: rs.RuleSet, base: str | Path, *, registry: RuleSetSource | None = None) -> rs.RuleSet:
    """``rules`` as if it had started with ``extends: base`` (used when ``lwd_detect`` picks the base)."""
    base_chain = _load_chain(base, registry or _installed(), stack=())
    return build(base_chain + rules.chain)


def _plain_dict(data: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): (_plain_dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}


def _is_path_like(text: str) -> bool:
    return Path(text).suffix.lower() in SUFFIXES or "/" in text or "\\" in text


Chain = tuple[tuple[RawRules, "rs.Provenance"], ...]


def _load_chain(source: Mapping[str, Any] | str | Path, registry: RuleSetSource, stack: tuple[str, ...], *, base_dir: Path | None = None, at: Location | None = None) -> Chain:
    """The raw layers of ``source`` and everything it extends, base first."""
    raw, provenance = _read_one(source, registry, base_dir=base_dir, at=at)
    key = str(Path(raw.file).resolve()) if _real_file(raw.file) else raw.file
    if key in stack:
        cycle = " -> ".join(stack[stack.index(key):] + (key,))
        raise RuleError.single(at or raw.locate(("extends",)), "extends", f"extends cycle: {cycle}")
    if len(stack) >= MAX_EXTENDS_DEPTH:
        raise RuleError.single(raw.locate(("extends",)), "extends", f"extends chain deeper than {MAX_EXTENDS_DEPTH}")
    parent = raw.data.get("extends")
    if parent is None:
        return ((raw, provenance),)
    if not isinstance(parent, str):
        raise RuleError.single(raw.locate(("extends",)), "extends", "must be a rule-set name or a path")
    here = Path(raw.file).parent if _real_file(raw.file) else None
    parent_chain = _load_chain(parent, registry, stack + (key,), base_dir=here, at=raw.locate(("extends",)))
    return parent_chain + ((raw, provenance),)


def _real_file(name: str) -> bool:
    return not (name.startswith("<") and name.endswith(">"))


def _read_one(source: Mapping[str, Any] | str | Path, registry: RuleSetSource, *, base_dir: Path | None, at: Location | None) -> tuple[RawRules, rs.Provenance]:
    if isinstance(source, Mapping):
        return RawRules(_plain_dict(source), DICT_FILE, {}), rs.Provenance(file=DICT_FILE)
    text = str(source)
    if isinstance(source, Path) or _is_path_like(text):
        path = Path(text)
        if base_dir is not None and not path.is_absolute():
            path = Path(os.path.normpath(base_dir / path))
        if at is not None and not path.exists():
            raise RuleError.single(at, "extends", f"no such rule file: {path}")
        raw = read_rule_file(path)
        return raw, rs.Provenance(file=raw.file, name=_name_of(raw))
    try:
        registered = registry.rule_set(text)
        names = sorted(registry.rule_sets()) if registered is None else []
    except PluginError as exc:
        if at is None:
            raise
        raise RuleError.single(at, "extends", str(exc)) from None  # inside a file: point at its extends line
    if registered is None:
        message = f"no rule set named {text!r}"
        close = difflib.get_close_matches(text, names, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        elif names:
            message += f"; registered: {', '.join(names)}"
        else:
            message += "; no plugin registers any rule set (pip install a plugin such as lwd-rules-convnext)"
        raise RuleError.single(at or Location("<arguments>"), "extends" if at else "", message)
    if isinstance(registered.source, Mapping):
        raw = RawRules(_plain_dict(registered.source), f"<{registered.name}>", {})
    else:
        raw = _read_registered(Path(registered.source))
    return raw, rs.Provenance(file=raw.file, name=registered.name, plugin=registered.plugin, version=registered.version)


def _read_registered(path: Path) -> RawRules:
    """A plugin's rule file, parsed once per version of the file (detection resolves it on every call)."""
    stat = path.stat() if path.exists() else None
    return _read_cached(path, stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)


@functools.lru_cache(maxsize=256)
def _read_cached(path: Path, mtime_ns: int, size: int) -> RawRules:
    return read_rule_file(path)


def _name_of(raw: RawRules) -> str | None:
    name = raw.data.get("name")
    return name if isinstance(name, str) else None


def merge(chain: Chain) -> tuple[dict[str, Any], dict[FieldPath, Location]]:
    """Deep-merge the chain's data (mappings merge by key, anything else replaces) with each value's origin."""
    data: dict[str, Any] = {}
    origins: dict[FieldPath, Location] = {}
    for raw, _ in chain:
        layer = {k: v for k, v in raw.data.items() if k != "extends"}
        _merge_into(data, layer, (), raw, origins)
    return data, origins


def _merge_into(target: dict[str, Any], layer: Mapping[str, Any], path: FieldPath, raw: RawRules, origins: dict[FieldPath, Location]) -> None:
    for key, value in layer.items():
        here = path + (key,)
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            origins.setdefault(here, raw.locate(here))
            _merge_into(target[key], value, here, raw, origins)
            continue
        for stale in [p for p in origins if p[: len(here)] == here]:
            del origins[stale]
        target[key] = copy.deepcopy(value)  # the merged data never aliases a (cached) file's own lists
        origins[here] = raw.locate(here)
        for sub, line in raw.lines.items():
            if sub[: len(here)] == here and len(sub) > len(here):
                origins[sub] = Location(raw.file, line)


def _locate(origins: Mapping[FieldPath, Location], path: FieldPath, fallback: Location) -> Location:
    for end in range(len(path), 0, -1):
        found = origins.get(tuple(path[:end]))
        if found is not None:
            return found
    return fallback


def dotted(path: FieldPath) -> str:
    """``("layers", "rules", 2, "match")`` → ``layers.rules[2].match``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def build(chain: Chain) -> rs.RuleSet:
    """Merge, validate and compile a chain of raw layers into a ``RuleSet``; every problem at once."""
    data, origins = merge(chain)
    fallback = chain[-1][0].locate(())
    problems: list[Problem] = []
    try:
        config = RuleFile.model_validate(data)
    except ValidationError as exc:
        problems.extend(_validation_problems(exc, origins, fallback))
    compiler = _Compiler(data, origins, fallback)
    compiled = compiler.compile()
    problems.extend(compiler.problems)
    if problems:
        raise RuleError(sorted(problems, key=_reading_order))
    overrides = tuple(
        rs.Override(f"overrides[{i}]", pattern, o.lr_mult, o.weight_decay, o.freeze, origin, o.allow_unused)
        for i, (o, (pattern, origin)) in enumerate(zip(config.overrides, compiled.overrides))
    )
    strip = config.names.strip_components
    chains = tuple(
        rs.Chain(name, pattern, origin, layers, config.chains[name].layer_decay) for name, pattern, origin, layers in compiled.chains
    )
    return rs.RuleSet(
        config=config,
        chain=chain,
        num_layers=compiled.layers.num_layers,
        default=compiled.layers.default,
        rules=compiled.layers.rules,
        counts=compiled.layers.counts,
        chains=chains,
        exclusions=tuple(compiled.exclusions),
        overrides=overrides,
        strip_components=frozenset(WRAPPER_COMPONENTS if strip is None else strip),
        data=data,
    )


def _reading_order(problem: Problem) -> tuple[str, int]:
    return problem.location.file, problem.location.line or 0


def _validation_problems(exc: ValidationError, origins: Mapping[FieldPath, Location], fallback: Location) -> list[Problem]:
    problems = []
    for error in exc.errors():
        loc = tuple(part for part in error["loc"] if not (isinstance(part, str) and _is_union_tag(part)))
        location = _locate(origins, loc, fallback)
        if error["type"] == "extra_forbidden":
            key = str(loc[-1])
            message = f"unknown key {key!r}"
            allowed = _allowed_keys(loc[:-1])
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            if close:
                message += f" (did you mean {close[0]!r}?)"
            elif allowed:
                message += f"; allowed: {', '.join(allowed)}"
        else:
            message = error["msg"]
            if error["type"] not in ("missing",) and "input" in error and not isinstance(error["input"], (dict, list)):
                message += f" (got {error['input']!r})"
        problems.append(Problem(location, dotted(loc), message))
    return problems


def _is_union_tag(part: str) -> bool:
    """pydantic inserts the union member's type (``str``, ``ExcludeEntry``, ``int``) into error locations."""
    return part in {"str", "int", "float", "bool"} or part[:1].isupper() or part.startswith("list[") or "[" in part


def _allowed_keys(path: FieldPath) -> list[str]:
    """Field names of the schema model at ``path`` (for "did you mean" on unknown keys)."""
    model: Any = RuleFile
    for part in path:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _model_in(field.annotation)
        if model is None:
            return []
    return sorted(getattr(model, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


_NDIM = re.compile(r"^ndim\s*(<=|<|==|>=|>)\s*(\d+)$")


class _Compiler:
    """Compiles regexes and formulas straight from the merged data, so that a file with schema errors
    still gets its regex and formula problems reported in the same run. Values of the wrong type
    are skipped here: the schema reports them."""

    def __init__(self, data: Mapping[str, Any], origins: Mapping[FieldPath, Location], fallback: Location) -> None:
        self.data = data
        self.origins = origins
        self.fallback = fallback
        self.problems: list[Problem] = []

    def where(self, path: FieldPath) -> Location:
        return _locate(self.origins, path, self.fallback)

    def problem(self, path: FieldPath, message: str) -> None:
        self.problems.append(Problem(self.where(path), dotted(path), message))

    def regex(self, text: Any, path: FieldPath) -> re.Pattern[str] | None:
        if not isinstance(text, str):
            return None
        try:
            return re.compile(text)
        except re.error as exc:
            self.problem(path, f"invalid regex: {exc.msg} at position {exc.pos}")
        except (OverflowError, RecursionError, MemoryError):
            self.problem(path, "invalid regex: too large or too deeply nested")
        return None

    def formula(self, value: Any, path: FieldPath, known: set[str]) -> rs.Located | None:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            return None
        try:
            formula = parse_formula(value)
            formula.check(known)
        except FormulaError as exc:
            self.problem(path, str(exc))
            return None
        return rs.Located(formula, dotted(path), self.where(path))

    def compile(self) -> _Compiled:
        top = self.layers(_mapping(self.data.get("layers")), ("layers",), _mapping(self.data.get("layer_decay")), ("layer_decay",))
        chains = []
        for name, chain in _mapping(self.data.get("chains")).items():
            chain = _mapping(chain)
            base = ("chains", name)
            pattern = self.regex(chain.get("match"), base + ("match",))
            layers = self.layers(_mapping(chain.get("layers")), base + ("layers",), _mapping(chain.get("layer_decay")), base + ("layer_decay",))
            if pattern is not None:
                chains.append((name, pattern, self.where(base), layers))
        overrides = []
        for index, override in enumerate(_sequence(self.data.get("overrides"))):
            path = ("overrides", index)
            override = _mapping(override)
            pattern = self.regex(override.get("match"), path + ("match",))
            if pattern is not None:
                overrides.append((pattern, self.where(path)))
        return _Compiled(top, chains, self.exclusions(), overrides)

    def layers(self, layers: Mapping[str, Any], base: FieldPath, decay: Mapping[str, Any], decay_path: FieldPath) -> rs.CompiledLayers:
        """Compile one ``layers`` section (the top level's or a chain's)."""
        count_spec = _mapping(layers.get("count"))
        variables = [v for v in _sequence(layers.get("variables")) if isinstance(v, str)]
        provided = set(variables) | set(count_spec)
        counts = []
        for name, text in count_spec.items():
            path = base + ("count", name)
            pattern = self.regex(text, path)
            if pattern is not None and not 1 <= pattern.groups <= 2:
                self.problem(path, f"a count regex needs one or two groups, this one has {pattern.groups}")
            elif pattern is not None:
                counts.append(rs.Count(name, pattern, self.where(path)))
        for name in sorted(provided & FUNCTIONS):
            self.problem(base, f"variable name {name!r} is a function name")
        has_num_layers = layers.get("num_layers") is not None
        num_layers = self.formula(layers.get("num_layers"), base + ("num_layers",), provided) if has_num_layers else None
        known = provided | ({"num_layers"} if has_num_layers else set())
        default = self.formula(layers.get("default"), base + ("default",), known) if layers.get("default") is not None else None
        rules = []
        for index, rule in enumerate(_sequence(layers.get("rules"))):
            path = base + ("rules", index)
            rule = _mapping(rule)
            pattern = self.regex(rule.get("match"), path + ("match",))
            if pattern is None:
                continue
            groups = set(pattern.groupindex)
            for shadowed in sorted(groups & known):
                self.problem(path + ("match",), f"named group {shadowed!r} hides a variable of the same name")
            layer = self.formula(rule.get("layer"), path + ("layer",), known | groups)
            if layer is not None:
                rules.append(rs.LayerRule(dotted(path), pattern, layer.formula, self.where(path), rule.get("allow_unused") is True))
        if decay.get("curve") == "values" and not has_num_layers:
            self.problem(decay_path + ("curve",), "curve 'values' needs layers.num_layers to check the list length")
        return rs.CompiledLayers(num_layers, default, tuple(rules), tuple(counts))

    def exclusions(self) -> list[rs.Exclusion]:
        out = []
        weight_decay = _mapping(self.data.get("weight_decay"))
        for index, entry in enumerate(_sequence(weight_decay.get("exclude"))):
            path = ("weight_decay", "exclude", index)
            if isinstance(entry, Mapping):
                text, allow_unused = entry.get("pattern"), entry.get("allow_unused") is True
            else:
                text, allow_unused = entry, False
            if not isinstance(text, str):
                continue
            test = self.exclusion_test(text.strip(), path)
            if test is not None:
                out.append(rs.Exclusion(dotted(path), text, test, self.where(path), allow_unused))
        return out

    def exclusion_test(self, text: str, path: FieldPath) -> Callable[[str, int, tuple[str, ...]], bool] | None:
        """A test on (canonical name, ndim, class names of the owning module) for one exclude entry."""
        ndim = _NDIM.match(text)
        if ndim:
            compare, bound = rs.NDIM_OPS[ndim.group(1)], int(ndim.group(2))
            return lambda name, dims, kinds: compare(dims, bound)
        if text.startswith("ndim"):
            self.problem(path, f"bad ndim test {text!r} (write e.g. ndim<=1)")
            return None
        if text.startswith("module:"):
            pattern = self.regex(text[len("module:") :], path)
            return None if pattern is None else (lambda name, dims, kinds: any(pattern.search(k) for k in kinds))
        if text.startswith("re:"):
            pattern = self.regex(text[3:], path)
            return None if pattern is None else (lambda name, dims, kinds: pattern.search(name) is not None)
        if any(c in text for c in "*?["):
            pattern = self.regex(fnmatch.translate(text), path)
            return None if pattern is None else (lambda name, dims, kinds: pattern.match(name) is not None)
        return lambda name, dims, kinds: name == text


@dataclass
class _Compiled:
    layers: rs.CompiledLayers
    chains: list[tuple[str, re.Pattern[str], Location, rs.CompiledLayers]]
    exclusions: list[rs.Exclusion]
    overrides: list[tuple[re.Pattern[str], Location]]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _sequence(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
