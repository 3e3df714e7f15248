"""The rule-file schema: pydantic models, every one closed to unknown keys.

These models only check shape and ranges. Regexes and formulas are compiled by ``compile.py``,
which needs several fields at once (a formula may use the named groups of its rule's regex).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Formula = Annotated[int | str, Field(description="A formula (see docs/formulas.md) or an integer.")]
Check = Literal["error", "warn", "ignore"]

WRAPPER_COMPONENTS = (
    "module",  # DistributedDataParallel, DataParallel
    "_orig_mod",  # torch.compile
    "_fsdp_wrapped_module",  # FSDP (1)
    "_checkpoint_wrapped_module",  # checkpoint_wrapper
    "base_model.model",  # PEFT: the PeftModel / LoraModel prefix (dotted: removed only at the start)
)


class Strict(BaseModel):
    """Base for every section: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class LayerRule(Strict):
    """Parameters whose canonical name the regex ``match`` searches get the id ``layer``."""

    match: str = Field(description="Regex searched in the canonical parameter name; named groups become integer variables.")
    layer: Formula = Field(description="Formula for the layer id; may use the regex's named groups.")
    allow_unused: bool = Field(False, description="Do not report this rule when it matches no parameter.")


class Layers(Strict):
    """How parameter names map to layer ids."""

    num_layers: Formula | None = Field(None, description="Formula for N: ids run 0..N+1 and the head (N+1) gets scale 1.")
    variables: list[str] = Field(
        default_factory=list,
        description="Names of variables a plugin's lwd_layer_variables hook provides (e.g. depths).",
    )
    count: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Variables counted from the model's parameter names: a regex with one integer group gives "
            "max+1 of that group; with two groups, a list indexed by the first of max+1 of the second."
        ),
    )
    rules: list[LayerRule] = Field(default_factory=list, description="Ordered rules; the first that matches wins.")
    ids_from_plugins: bool = Field(
        False, description="Names no rule matches take the id a plugin's lwd_layer_ids hook gives (before default)."
    )
    default: Formula | None = Field(
        None, description="Layer id for names no rule matches; absent means such parameters are an error."
    )


class LayerDecay(Strict):
    """The lr scale of each layer id."""

    rate: float = Field(1.0, gt=0, le=1, description="Decay per layer: scale(id) = rate ** (N + 1 - id); 1 = no decay.")
    curve: Literal["exponential", "linear", "values"] = Field(
        "exponential",
        description=(
            "exponential: rate ** (N + 1 - id); linear: 1 - (1 - rate) * (N + 1 - id) / (N + 1); "
            "values: the explicit list `values`, indexed by id."
        ),
    )
    values: list[Annotated[float, Field(ge=0)]] | None = Field(
        None, description="Explicit scales for ids 0..N+1 (curve: values)."
    )
    min_scale: float = Field(0.0, ge=0, le=1, description="Scales below this are raised to it (or frozen, see below_min).")
    below_min: Literal["clamp", "freeze"] = Field(
        "clamp", description="clamp: raise to min_scale; freeze: leave those parameters out of the optimizer."
    )

    @model_validator(mode="after")
    def _values_match_curve(self) -> LayerDecay:
        if self.curve == "values" and self.values is None:
            raise ValueError("curve 'values' needs a 'values' list")
        if self.curve != "values" and self.values is not None:
            raise ValueError("'values' is only used with curve: values")
        return self


class ExcludeEntry(Strict):
    """A weight-decay exclusion with options."""

    pattern: str = Field(
        description="ndim<=K / ndim==K / ndim<K, a glob on names, 're:<regex>' on names, or 'module:<regex>' on the owning module's class names."
    )
    allow_unused: bool = Field(False, description="Do not report this entry when it matches no parameter.")


class WeightDecay(Strict):
    """Which parameters decay, and by how much."""

    value: float = Field(0.0, ge=0, description="Weight decay of every parameter not excluded.")
    exclude: list[str | ExcludeEntry] = Field(
        default_factory=list,
        description=(
            "Parameters that get weight decay 0: ndim<=1, globs like '*.bias', 're:<regex>', exact names, or "
            "'module:<regex>' searched in the class names (base classes included) of the module owning the parameter."
        ),
    )
    use_model_no_weight_decay: bool = Field(False, description="Names returned by model.no_weight_decay() get weight decay 0.")


class Override(Strict):
    """Change the settings of the parameters a regex matches (applied in order; later wins per field)."""

    match: str = Field(description="Regex searched in the canonical parameter name.")
    lr_mult: float | None = Field(None, gt=0, description="Multiplies the layer's lr scale.")
    weight_decay: float | None = Field(None, ge=0, description="Replaces the weight decay.")
    freeze: bool = Field(False, description="Leave these parameters out of the optimizer.")
    allow_unused: bool = Field(False, description="Do not report this override when it matches no parameter.")


class Optimizer(BaseModel):
    """The optimizer, by timm registry name; any other key is passed to its constructor."""

    model_config = ConfigDict(extra="allow")

    name: str | None = Field(
        None, description="Name in timm's optimizer registry (adamw, sgd, lamb, lion, muon, ...) or torch.<Class> (torch.Muon)."
    )
    lr: float | None = Field(None, gt=0, description="Base learning rate (the head's).")
    fallback: str | None = Field(
        None,
        description=(
            "Route hidden 2-D weights to `name` and everything else (embeddings, norms, biases, head) here: "
            "adamw for timm's muon family (one optimizer), any name for a torch.* optimizer (create_optimizers)."
        ),
    )


class Checks(Strict):
    """How loudly to report coverage problems (default: error)."""

    unused_patterns: Check = Field(
        "error", description="A layers.rules / overrides / exclude pattern that matches no parameter."
    )
    defaulted: Check = Field(
        "ignore", description="A trainable parameter that only layers.default placed (no rule, no plugin id)."
    )
    override_conflicts: Check = Field(
        "error", description="Two overrides setting one field of one parameter to different values."
    )


class Names(Strict):
    """How parameter names are canonicalized before matching."""

    strip_components: list[str] | None = Field(
        None,
        description=(
            "Wrapper name components removed before matching: a plain entry wherever it occurs, a dotted entry only "
            f"at the start of the name (default: {', '.join(WRAPPER_COMPONENTS)})."
        ),
    )


class ChainSpec(Strict):
    """One decay chain of a multi-tower model (CLIP's vision and text towers, T5's encoder and decoder)."""

    match: str = Field(description="Regex searched in canonical names: the parameters of this chain.")
    allow_unused: bool = Field(False, description="Do not report this chain when it matches no parameter (a one-tower model).")
    layers: Layers = Field(default_factory=Layers, description="Name → layer id within this chain.")
    layer_decay: LayerDecay = Field(
        default_factory=LayerDecay, description="This chain's curve and rate; fields it does not set come from the top-level layer_decay."
    )


class RuleFile(Strict):
    """A rule file: how names map to layer ids, the decay curve, weight decay, overrides, optimizer."""

    version: Literal[1] = Field(1, description="Rule-file format version.")
    name: str | None = Field(None, description="The rule set's name (for files a plugin registers).")
    description: str | None = Field(None, description="Free text shown by `lwd-rules rules`.")
    extends: str | None = Field(None, description="A registered rule-set name or a path (relative to this file).")
    names: Names = Field(default_factory=Names, description="How parameter names are canonicalized.")
    layers: Layers = Field(
        default_factory=Layers, description="Name → layer id; absent (and no extends) lets lwd_detect pick a rule set."
    )
    layer_decay: LayerDecay = Field(default_factory=LayerDecay, description="The lr scale of each layer id.")
    weight_decay: WeightDecay = Field(default_factory=WeightDecay, description="Weight decay and its exclusions.")
    chains: dict[str, ChainSpec] = Field(
        default_factory=dict,
        description=(
            "Named decay chains, each with its own layers and layer_decay; a parameter two chains match is an error, "
            "one no chain matches follows the top-level layers (or trains at full rate when those map nothing)."
        ),
    )
    overrides: list[Override] = Field(default_factory=list, description="Per-name changes, applied in order.")
    optimizer: Optimizer = Field(default_factory=Optimizer, description="Optimizer name, lr and keyword arguments.")
    checks: Checks = Field(default_factory=Checks, description="How loudly coverage problems are reported.")


def json_schema() -> dict[str, object]:
    """The JSON Schema of a rule file, titled for editors."""
    schema = RuleFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "lwd-rules rule file"
    return schema
