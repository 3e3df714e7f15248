"""Plugin discovery through the ``lwd_rules`` entry-point group, with every failure isolated and named.

Environment:
- ``LWD_RULES_PLUGINS``: comma-separated entry-point names to load (unset: all; empty: none).
- ``LWD_RULES_STRICT_PLUGINS=1``: a plugin that fails to import or raises in a hook is fatal.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from lwd_rules import hookspecs
from lwd_rules.errors import PluginError
from lwd_rules.rules.load import Registered

GROUP = "lwd_rules"
ENV_ONLY = "LWD_RULES_PLUGINS"
ENV_STRICT = "LWD_RULES_STRICT_PLUGINS"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be imported, or that raised inside a hook."""

    plugin: str
    distribution: str | None
    version: str | None
    reason: str
    hook: str | None = None

    def __str__(self) -> str:
        dist = f"{self.distribution} {self.version}" if self.distribution else "unknown distribution"
        where = f" in {self.hook}" if self.hook else ""
        return f"plugin {self.plugin!r} ({dist}) failed{where}: {self.reason}"


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its entry-point name, distribution, and the hooks it implements."""

    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]


@dataclass
class Registry:
    """A plugin manager plus what it knows: loaded plugins, failures, registered rule sets."""

    pm: pluggy.PluginManager
    strict: bool = False
    failures: list[PluginFailure] = field(default_factory=list)
    _dists: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    _rule_sets: dict[str, Registered] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, plugin: ModuleType | object, name: str, distribution: str | None = None, version: str | None = None) -> None:
        """Register a plugin object (module or instance) under ``name``."""
        self.pm.register(plugin, name=name)
        self._dists[name] = (distribution, version)
        self._rule_sets = None

    def fail(self, failure: PluginFailure, exc: BaseException | None = None) -> None:
        """Record a failure; raise it when strict."""
        self.failures.append(failure)
        if self.strict:
            raise PluginError(str(failure)) from exc

    def plugins(self) -> list[PluginInfo]:
        """Every loaded plugin, in registration order."""
        out = []
        for name, plugin in self.pm.list_name_plugin():
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or ()))
            dist, version = self._dists.get(name, (None, None))
            out.append(PluginInfo(name, dist, version, hooks))
        return out

    def _call_each(self, hook_name: str, **kwargs: Any) -> Iterable[tuple[str, Any]]:
        """Call each implementation separately (highest priority first) so one failing plugin spares the rest."""
        caller = getattr(self.pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            if impl.hookwrapper or impl.wrapper:
                continue  # wrappers observe a whole call; called one by one, there is none to wrap
            try:
                result = impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:  # noqa: BLE001 - a plugin's bug must not take the others down
                dist, version = self._dists.get(impl.plugin_name, (None, None))
                reason = f"{type(exc).__name__}: {exc}"
                self.fail(PluginFailure(impl.plugin_name, dist, version, reason, hook=hook_name), exc)
                continue
            yield impl.plugin_name, result

    def rule_sets(self) -> dict[str, Registered]:
        """Every registered rule set by name; a name provided twice is an error naming both plugins."""
        with self._lock:
            if self._rule_sets is None:
                self._rule_sets = self._collect_rule_sets()
            return self._rule_sets

    def _collect_rule_sets(self) -> dict[str, Registered]:
        found: dict[str, Registered] = {}
        for plugin, answer in self._call_each("lwd_rule_sets"):
            if answer is None:
                continue
            dist, version = self._dists.get(plugin, (None, None))
            for name, source in dict(answer).items():
                if name in found:
                    other = found[name].plugin
                    raise PluginError(f"rule set {name!r} is provided by two plugins: {other} and {dist or plugin}")
                value = source if isinstance(source, dict) else Path(source)
                found[name] = Registered(name, value, dist or plugin, version)
        return found

    def rule_set(self, name: str) -> Registered | None:
        """The registered rule set called ``name``, if any."""
        return self.rule_sets().get(name)

    def layer_variables(self, model: Any, rule_set: str) -> dict[str, Any]:
        """Merge every plugin's variables for ``rule_set``; conflicting values are an error."""
        merged: dict[str, Any] = {}
        owners: dict[str, str] = {}
        for plugin, answer in self._call_each("lwd_layer_variables", model=model, rule_set=rule_set):
            for key, value in (answer or {}).items():
                if key in merged and merged[key] != value:
                    raise PluginError(
                        f"plugins {owners[key]} and {plugin} give different values for variable {key!r}: {merged[key]!r} != {value!r}"
                    )
                merged[key] = value
                owners[key] = plugin
        return merged

    def layer_ids(self, model: Any, rule_set: str) -> tuple[dict[str, int], str] | None:
        """Merge every plugin's layer ids for ``rule_set`` and name who gave them; None if nobody answered."""
        merged: dict[str, int] = {}
        owners: list[str] = []
        for plugin, answer in self._call_each("lwd_layer_ids", model=model, rule_set=rule_set):
            if answer is None:
                continue
            dist, version = self._dists.get(plugin, (None, None))
            owners.append(f"{dist or plugin} {version or ''}".strip())
            for name, layer_id in answer.items():
                if merged.setdefault(name, layer_id) != layer_id:
                    raise PluginError(f"plugins {', '.join(owners)} place {name!r} at different layer ids ({merged[name]} and {layer_id})")
        return (merged, ", ".join(owners)) if owners else None

    def detect(self, model: Any) -> str | None:
        """The first rule-set name a plugin's ``lwd_detect`` gives for ``model``."""
        for _, answer in self._call_each("lwd_detect", model=model):
            if answer is not None:
                return answer
        return None


def new_registry(plugins: Iterable[tuple[str, object]] = (), *, entry_points_too: bool = False, strict: bool | None = None) -> Registry:
    """A fresh registry holding ``plugins`` (name, object), optionally plus the installed entry points."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry(pm, strict=_env_strict() if strict is None else strict)
    for name, plugin in plugins:
        registry.register(plugin, name)
    if entry_points_too:
        load_entry_points(registry)
    pm.check_pending()
    return registry


def _env_strict() -> bool:
    return os.environ.get(ENV_STRICT, "").strip().lower() in {"1", "true", "yes", "on"}


def _selected(points: Iterable[EntryPoint]) -> list[EntryPoint]:
    only = os.environ.get(ENV_ONLY)
    chosen = sorted(points, key=lambda ep: ep.name)
    if only is None:
        return chosen
    wanted = {part.strip() for part in only.split(",") if part.strip()}
    return [ep for ep in chosen if ep.name in wanted]


def load_entry_points(registry: Registry) -> None:
    """Import every selected ``lwd_rules`` entry point; a failing one is recorded, the rest load."""
    for point in _selected(entry_points(group=GROUP)):
        dist = point.dist
        dist_name, version = (dist.metadata["Name"], dist.version) if dist is not None else (None, None)
        if registry.pm.has_plugin(point.name):
            continue
        try:
            plugin = point.load()
            if registry.pm.is_registered(plugin):  # already passed in by hand (lwd_rules.testing)
                continue
            registry.register(plugin, point.name, dist_name, version)
            registry.pm.check_pending()
        except Exception as exc:  # noqa: BLE001 - named and kept; other plugins still load
            if registry.pm.has_plugin(point.name):
                registry.pm.unregister(name=point.name)
            registry.fail(PluginFailure(point.name, dist_name, version, f"{type(exc).__name__}: {exc}"), exc)


_registry: Registry | None = None
_registry_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, loading installed plugins once, on first use."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = new_registry(entry_points_too=True)
        return _registry


def use_registry(registry: Registry | None) -> Registry | None:
    """Replace the process-wide registry (tests, ``lwd_rules.testing``); returns the previous one."""
    global _registry
    with _registry_lock:
        previous, _registry = _registry, registry
        return previous

