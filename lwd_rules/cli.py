"""The ``lwd-rules`` command: validate, explain, plugins, rules, schema.

Exit codes: 0 ok, 1 problems found, 2 usage error. ``validate``, ``rules``, ``schema`` and
``plugins`` never import torch; only ``explain`` builds a model. No command prints a traceback.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lwd_rules import __version__
from lwd_rules.errors import PluginError, Problem, RuleError

app = typer.Typer(
    name="lwd-rules",
    help="Declarative layer-wise lr decay: check rule files and see the plan they give a model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_OK, EXIT_PROBLEMS = 0, 1


class ProblemFormat(str, Enum):
    text = "text"
    json = "json"


class PlanFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


def _version(value: bool) -> None:
    if value:
        out.print(f"lwd-rules {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """Declarative layer-wise lr decay rules → optimizer parameter groups."""


def _print_problems(problems: list[Problem], fmt: ProblemFormat) -> None:
    if fmt is ProblemFormat.json:
        out.print_json(json.dumps([p.as_dict() for p in problems]))
    else:
        for problem in problems:
            out.print(str(problem), markup=False)


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Rule files (.yaml/.yml/.toml/.json).", show_default=False)],
    fmt: Annotated[ProblemFormat, typer.Option("--format", help="text: one line per problem; json: a list.")] = ProblemFormat.text,
) -> None:
    """Check rule files: schema, extends, regexes and formulas. One `ok` line per valid file."""
    from lwd_rules.rules.load import load_rules

    problems: list[Problem] = []
    for path in files:
        try:
            load_rules(path)
        except RuleError as exc:
            problems.extend(exc.problems)
        else:
            if fmt is ProblemFormat.text:
                out.print(f"{path}: ok", markup=False)
    _print_problems(problems, fmt) if problems or fmt is ProblemFormat.json else None
    raise typer.Exit(EXIT_PROBLEMS if problems else EXIT_OK)


@app.command()
def explain(
    model: Annotated[str, typer.Option("--model", "-m", help="timm:NAME, torchvision:NAME, hf:MODEL_TYPE or package.module:factory.", show_default=False)],
    rules: Annotated[Optional[str], typer.Argument(help="Rule file or registered rule-set name; omitted: detected from the model.")] = None,
    fmt: Annotated[PlanFormat, typer.Option("--format", help="table (per layer id), json (everything) or csv (per parameter).")] = PlanFormat.table,
    layer_decay: Annotated[Optional[float], typer.Option(help="Override layer_decay.rate.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Override weight_decay.value.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Also draw lr scale per layer id to this PNG (needs matplotlib).")] = None,
) -> None:
    """Build MODEL on the meta device and show each layer id's lr scale, weight decay and rule."""
    from lwd_rules.models import ModelSpecError, build_model
    from lwd_rules.orchestrator import LwdRulesWarning, resolve

    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        err.print("--plot needs matplotlib: pip install 'lwd-rules[plot]'", markup=False)
        raise typer.Exit(EXIT_PROBLEMS)
    try:
        module = build_model(model)
        with warnings.catch_warnings():  # they are in plan.warnings, printed below
            warnings.simplefilter("ignore", LwdRulesWarning)
            plan = resolve(module, rules, layer_decay=layer_decay, weight_decay=weight_decay, strict=False)
    except (RuleError, PluginError, ModelSpecError) as exc:
        for line in str(exc).splitlines():
            err.print(line, markup=False)
        raise typer.Exit(EXIT_PROBLEMS) from None
    if fmt is PlanFormat.table:
        _print_table(plan, model)
    elif fmt is PlanFormat.json:
        out.print_json(json.dumps(_plan_json(plan, model)))
    else:
        sys.stdout.write(_plan_csv(plan))
    if plot is not None:
        _plot(plan, plot, model)
    raise typer.Exit(EXIT_PROBLEMS if plan.problems else EXIT_OK)


def _print_table(plan: Any, model: str) -> None:
    sources = " <- ".join(str(p) for p in reversed(plan.rules.provenance))
    if plan.chains:
        out.print(f"[bold]{escape(model)}[/bold]  rules: {escape(sources)}")
        for label, sub in plan.chains.items():
            out.print(f"chain [bold]{escape(label)}[/bold]  num_layers: {sub.num_layers}")
            out.print(_layer_table(sub))
        outside = [row for row in plan.params if not row.chain]
        if outside:
            out.print(f"outside every chain: {len(outside)} tensors")
            out.print(_layer_table(plan, lambda row: not row.chain))
    else:
        out.print(f"[bold]{escape(model)}[/bold]  rules: {escape(sources)}  num_layers: {plan.num_layers}")
        out.print(_layer_table(plan))
    left_out = [s for s in plan.skipped if s.reason == "no rule matches"]
    out.print(f"unmatched parameters: {len(left_out)}" + "".join(f"\n  {s.name}" for s in left_out), markup=False)
    unused = plan.unmatched_patterns()
    out.print(f"rules that matched nothing: {len(unused)}" + "".join(f"\n  {u}" for u in unused), markup=False)
    out.print(f"groups: {len(plan.param_groups)}  trainable tensors: {len(plan.params)}  left out: {len(plan.skipped)}")
    for warning in plan.warnings:
        out.print(f"warning: {warning}", markup=False)
    for problem in plan.problems:
        out.print(f"problem: {problem}", markup=False)


def _layer_table(plan: Any, keep: Any = None) -> Table:
    """One row per layer id: lr scale, tensors, parameters, weight decay, the rules that placed them."""
    table = Table("id", "lr scale", "tensors", "parameters", "weight decay", "rule")
    for layer in plan.layers(keep):
        table.add_row(
            str(layer.layer_id),
            ", ".join(f"{s:.6g}" for s in layer.lr_scales),
            str(layer.tensors),
            f"{layer.numel:,}",
            ", ".join(f"{w:g}" for w in sorted(layer.weight_decays)),
            escape("\n".join(_short(r) for r in layer.rules)),
        )
    return table


def _short(label: str) -> str:
    """Rule labels shortened to the file name (plugin files live deep in site-packages)."""
    path, sep, rest = label.rpartition(":")
    return f"{Path(path).name}:{rest}" if sep and "/" in path else label


def _plan_json(plan: Any, model: str) -> dict[str, Any]:
    return {
        "model": model,
        "rules": [p.__dict__ for p in plan.rules.provenance],
        "num_layers": plan.num_layers,
        "fingerprint": plan.fingerprint(),
        "layers": [layer.__dict__ for layer in plan.layers()],
        "chains": {label: {"num_layers": sub.num_layers, "layers": [layer.__dict__ for layer in sub.layers()]} for label, sub in plan.chains.items()},
        "groups": [{k: v for k, v in g.items() if k != "params"} | {"tensors": len(g["params"])} for g in plan.param_groups],
        "params": [{f: getattr(row, f) for f in row.__slots__} for row in plan.params],
        "skipped": [{"name": s.name, "reason": s.reason} for s in plan.skipped],
        "unused": plan.unmatched_patterns(),
        "problems": [p.as_dict() for p in plan.problems],
    }


def _plan_csv(plan: Any) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    fields = ["name", "layer_id", "lr_scale", "weight_decay", "group", "rule", "source", "numel", "ndim", "chain"]
    writer.writerow(fields)
    for row in plan.params:
        writer.writerow([getattr(row, f) for f in fields])
    return buffer.getvalue()


def _plot(plan: Any, path: Path, model: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        err.print("--plot needs matplotlib: pip install 'lwd-rules[plot]'", markup=False)
        raise typer.Exit(EXIT_PROBLEMS) from None
    layers = plan.layers()
    figure, axes = plt.subplots(figsize=(7, 3.5))
    axes.plot([layer.layer_id for layer in layers], [max(layer.lr_scales) for layer in layers], marker="o")
    axes.set(xlabel="layer id", ylabel="lr scale", title=f"{model}: layer-wise lr decay")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    out.print(f"wrote {path}", markup=False)


@app.command()
def plugins(
    fmt: Annotated[ProblemFormat, typer.Option("--format", help="text or json.")] = ProblemFormat.text,
) -> None:
    """List installed plugins: distribution, version, hooks, rule sets; and plugins that failed."""
    from lwd_rules.plugins import get_registry

    registry = get_registry()
    try:
        rule_sets = registry.rule_sets()
    except PluginError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(EXIT_PROBLEMS) from None
    rows = []
    for info in registry.plugins():
        provided = sorted(name for name, reg in rule_sets.items() if reg.plugin in (info.distribution, info.name))
        rows.append({"name": info.name, "distribution": info.distribution, "version": info.version, "hooks": list(info.hooks), "rule_sets": provided})
    failures = [f.__dict__ for f in registry.failures]
    if fmt is ProblemFormat.json:
        out.print_json(json.dumps({"plugins": rows, "failed": failures}))
    else:
        for row in rows:
            out.print(f"{row['name']}: {row['distribution']} {row['version']}", markup=False)
            out.print(f"  hooks: {', '.join(row['hooks'])}", markup=False)
            out.print(f"  rule sets: {', '.join(row['rule_sets']) or '-'}", markup=False)
        if not rows:
            out.print("no plugins installed")
        for failure in registry.failures:
            out.print(f"FAILED {failure}", markup=False)
    raise typer.Exit(EXIT_PROBLEMS if registry.failures else EXIT_OK)


@app.command()
def rules(
    name: Annotated[Optional[str], typer.Argument(help="A rule set to print fully resolved (after extends), as YAML.")] = None,
) -> None:
    """List registered rule sets with their provenance, or print one resolved."""
    from lwd_rules.plugins import get_registry
    from lwd_rules.rules.load import load_rules

    try:
        if name is None:
            for rule_name, registered in sorted(get_registry().rule_sets().items()):
                where = registered.source if isinstance(registered.source, Path) else "<dict>"
                out.print(f"{rule_name}  ({registered.plugin} {registered.version})  {where}", markup=False)
            raise typer.Exit(EXIT_OK)
        rule_set = load_rules(name)
    except (RuleError, PluginError) as exc:
        for line in str(exc).splitlines():
            err.print(line, markup=False)
        raise typer.Exit(EXIT_PROBLEMS) from None
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.default_flow_style = False
    out.print(f"# {name}: " + " <- ".join(str(p) for p in reversed(rule_set.provenance)), markup=False)
    buffer = io.StringIO()
    yaml.dump(rule_set.data, buffer)
    out.print(buffer.getvalue().rstrip(), markup=False)


@app.command()
def schema(
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the JSON Schema of a rule file (for editor completion and validation)."""
    from lwd_rules.rules.schema import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            err.print(f"{output}: cannot write: {exc.strerror or exc}", markup=False)
            raise typer.Exit(EXIT_PROBLEMS) from None
        out.print(f"wrote {output}", markup=False)
