"""A loaded, validated and compiled rule set: what ``load_rules`` returns and ``resolve`` consumes."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lwd_rules.errors import Location
from lwd_rules.expr import Formula
from lwd_rules.rules.schema import RuleFile
from lwd_rules.rules.source import RawRules


@dataclass(frozen=True)
class Provenance:
    """Where one layer of a rule set came from: a file or dict, and the plugin that registered it."""

    file: str
    name: str | None = None
    plugin: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        owner = f" ({self.plugin} {self.version})" if self.plugin else ""
        return f"{self.name or self.file}{owner}"


@dataclass(frozen=True)
class LayerRule:
    """A compiled ``layers.rules`` entry."""

    path: str
    pattern: re.Pattern[str]
    layer: Formula
    origin: Location
    allow_unused: bool


@dataclass(frozen=True)
class Exclusion:
    """A compiled ``weight_decay.exclude`` entry: a test on (canonical name, ndim, module class names)."""

    path: str
    text: str
    test: Callable[[str, int, tuple[str, ...]], bool] = field(compare=False)
    origin: Location
    allow_unused: bool


@dataclass(frozen=True)
class Override:
    """A compiled ``overrides`` entry."""

    path: str
    pattern: re.Pattern[str]
    lr_mult: float | None
    weight_decay: float | None
    freeze: bool
    origin: Location
    allow_unused: bool


@dataclass(frozen=True)
class Count:
    """A ``layers.count`` variable: counted from the model's parameter names."""

    name: str
    pattern: re.Pattern[str]
    origin: Location


@dataclass(frozen=True)
class Located:
    """A formula with the place it was written."""

    formula: Formula
    path: str
    origin: Location


@dataclass(frozen=True)
class CompiledLayers:
    """A compiled ``layers`` section: the top level's, or one chain's."""

    num_layers: Located | None
    default: Located | None
    rules: tuple[LayerRule, ...]
    counts: tuple[Count, ...]


@dataclass(frozen=True)
class Chain:
    """A decay chain of a multi-tower model: the parameters ``pattern`` matches, with their own ids and curve."""

    name: str
    pattern: re.Pattern[str]
    origin: Location
    layers: CompiledLayers
    layer_decay: Any  # schema.LayerDecay


NDIM_OPS: dict[str, Callable[[int, int], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    ">=": operator.ge,
    ">": operator.gt,
}


@dataclass(frozen=True)
class RuleSet:
    """Validated, compiled rules plus the chain of files they were merged from (base first)."""

    config: RuleFile
    chain: tuple[tuple[RawRules, Provenance], ...] = field(repr=False)
    num_layers: Located | None
    default: Located | None
    rules: tuple[LayerRule, ...]
    counts: tuple[Count, ...]
    chains: tuple[Chain, ...]
    exclusions: tuple[Exclusion, ...]
    overrides: tuple[Override, ...]
    strip_components: frozenset[str]
    data: dict[str, Any] = field(repr=False)

    @property
    def name(self) -> str | None:
        """The rule set's own name, or that of the nearest named file it extends."""
        for _, provenance in reversed(self.chain):
            if provenance.name:
                return provenance.name
        return self.config.name

    @property
    def registered_name(self) -> str:
        """The nearest rule set in the chain that a plugin registered: the name plugin hooks are
        asked about, so a user's own ``name:`` on top of ``extends: convnext-timm`` still reaches
        the plugin serving ``convnext-timm``."""
        for _, provenance in reversed(self.chain):
            if provenance.plugin and provenance.name:
                return provenance.name
        return self.name or ""

    @property
    def provenance(self) -> tuple[Provenance, ...]:
        """Every file of the ``extends`` chain, base first."""
        return tuple(p for _, p in self.chain)

    @property
    def maps_layers(self) -> bool:
        """Whether the rules say anything about layer ids (otherwise ``lwd_detect`` picks a rule set)."""
        layers = self.config.layers
        mapped = bool(layers.rules) or layers.default is not None or layers.num_layers is not None or layers.ids_from_plugins
        return mapped or bool(self.config.chains)
