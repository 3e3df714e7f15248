"""Speed and memory of ``resolve()`` / ``create_optimizer()`` against the floor and timm, in one process.

Run ``make bench`` (or ``python benchmarks/bench.py``); prints a table and writes
``benchmarks/RESULTS.md`` with the machine and versions. All figures are ratios measured in the
same run, models on the meta device, rules loaded once beforehand:

- floor: ``list(model.named_parameters())``, the least any resolve must do;
- timm: ``timm.optim.param_groups_layer_decay`` on the same model (the anchor);
- memory: tracemalloc peak of ``resolve`` against that of building the floor's list.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import re
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from timm.optim import param_groups_layer_decay
from torch import nn

import lwd_rules
from lwd_rules import create_optimizer, load_rules, resolve
from lwd_rules.testing import MANY_BLOCKS_RULES, many_blocks_model

HERE = Path(__file__).parent

def best_of_each(fns: Mapping[str, Callable[[], Any]], *, budget: float = 1.0, least: int = 5, batch_seconds: float = 0.02) -> dict[str, float]:
    """The fastest run of each function, measured in alternation: rounds in which each function
    runs a batch of consecutive runs (as many as fill about ``batch_seconds``), until each has had
    ``budget`` seconds and ``least`` runs. A slow spell of the machine then lands on every
    function, not on one, so the ratios between them hold from run to run.

    Measured like ``timeit``: the garbage collector is off while timing (a collection in the
    middle of one run would bill it for earlier garbage) and nothing is collected between runs (a
    forced full collection empties CPython's free lists, so the next run would measure the
    allocator's cold start rather than the code). Each function's first run sizes its batch and
    is not counted."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    enabled = gc.isenabled()
    gc.disable()
    try:
        batch = {}
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            batch[name] = max(1, int(batch_seconds / max(time.perf_counter() - start, 1e-9)))
        while any(len(runs) < least or sum(runs) < budget for runs in times.values()):
            for name, fn in fns.items():
                for _ in range(batch[name]):
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
    finally:
        if enabled:
            gc.enable()
    return {name: min(runs) for name, runs in times.items()}


def peak_bytes(fn: Callable[[], Any]) -> int:
    """tracemalloc peak while ``fn`` runs, keeping its result alive (as a caller would)."""
    gc.collect()
    tracemalloc.start()
    result = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del result
    return peak


def timm_groups(model: nn.Module, rate: float) -> list[dict[str, Any]]:
    no_wd = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    return param_groups_layer_decay(model, weight_decay=0.05, layer_decay=rate, no_weight_decay_list=no_wd)


def give_timm_the_same_layers(model: nn.Module) -> None:
    """A ``group_matcher``, as every timm model carries one, placing ``many_blocks_model``'s names
    where ``MANY_BLOCKS_RULES`` does: stem 0, block i at i * 24 // blocks + 1, head 25. Without
    it timm falls back to one layer for the whole model (and logs that layer decay has no
    effect), which is not the job lwd-rules is timed on."""
    blocks = len(model.blocks)
    block = re.compile(r"^blocks\.(\d+)\.")

    def layer(name: str) -> int:
        if name.startswith("stem."):
            return 0
        found = block.match(name)
        return int(found.group(1)) * 24 // blocks + 1 if found else 25

    model.group_matcher = lambda coarse=False: layer


def same_groups(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> bool:
    """Whether two lists of param groups hold the same tensors, in the same order, at the same lr_scale and weight decay."""

    def by_setting(groups: list[dict[str, Any]]) -> dict[tuple[float, float], list[int]]:
        return {(round(g["lr_scale"], 12), g["weight_decay"]): [id(p) for p in g["params"]] for g in groups}

    return by_setting(ours) == by_setting(theirs)


def measure(label: str, model: nn.Module, rules: Any, *, check_same_groups: bool = False, budget: float = 1.0) -> dict[str, Any]:
    """One row of the resolve() table; ``check_same_groups``: fail unless timm's groups equal ours,
    so both did one job; ``budget``: seconds of repeated runs for each timing (at least 5 runs)."""
    plan = resolve(model, rules)
    rate = rules.config.layer_decay.rate
    if check_same_groups and not same_groups(plan.param_groups, timm_groups(model, rate)):
        raise SystemExit(f"{label}: timm's param groups differ from lwd-rules', the timings would compare different jobs")
    best = best_of_each(
        {"floor": lambda: list(model.named_parameters()), "ours": lambda: resolve(model, rules), "timm": lambda: timm_groups(model, rate)},
        budget=budget,
    )
    floor, ours, anchor = best["floor"], best["ours"], best["timm"]
    memory = peak_bytes(lambda: resolve(model, rules)) / peak_bytes(lambda: list(model.named_parameters()))
    scales = {g["lr_scale"] for g in plan.param_groups}
    return {
        "model": label,
        "rules": plan.rules.name or "inline",
        "tensors": len(plan.params),
        "floor_ms": floor * 1e3,
        "ours_ms": ours * 1e3,
        "timm_ms": anchor * 1e3,
        "vs_floor": ours / floor,
        "timm_vs_floor": anchor / floor,
        "speedup_vs_timm": anchor / ours,
        "groups": len(plan.param_groups),
        "distinct_scales": len(scales),
        "memory_vs_floor": memory,
    }


def optimizer_scaling(sizes: list[int]) -> list[dict[str, Any]]:
    rules = load_rules(MANY_BLOCKS_RULES)
    out = []
    for size in sizes:
        with torch.device("meta"):
            model = many_blocks_model((size - 4) // 4)
        optimizer = create_optimizer(model, rules)
        plan = resolve(model, rules)
        groups = plan.optimizer_groups(1e-3)
        best = best_of_each(
            {
                "create_optimizer": lambda model=model: create_optimizer(model, rules),
                "resolve": lambda model=model: resolve(model, rules),
                "fingerprint": plan.fingerprint,
                "floor": lambda model=model: list(model.named_parameters()),
                # torch's own constructor on the same groups: its add_param_group checks every new
                # group against all earlier ones, the part of create_optimizer lwd-rules does not run.
                "torch": lambda groups=groups: torch.optim.AdamW(fresh_copies(groups), lr=1e-3),
            },
            budget=3.0,
            least=3,
        )
        seconds, constructor = best["create_optimizer"], best["torch"]
        hashes = hash_calls(lambda groups=groups: torch.optim.AdamW(fresh_copies(groups), lr=1e-3))
        out.append(
            {
                "tensors": size,
                "seconds": seconds,
                "resolve": best["resolve"],
                "fingerprint": best["fingerprint"],
                "floor": best["floor"],
                "torch": constructor,
                "ours": seconds - constructor,
                "rest": seconds - best["resolve"] - best["fingerprint"] - constructor,
                "hashes_per_tensor": hashes / size,
                "ns_per_hash": constructor / hashes * 1e9,
                "groups": len(optimizer.param_groups),
                "per_10k": seconds / size * 1e4,
            }
        )
    return out


def fresh_copies(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The groups as create_optimizer hands them over: new dicts and lists, which the constructor fills in."""
    return [{**group, "params": list(group["params"])} for group in groups]


def hash_calls(fn: Callable[[], Any]) -> int:
    """How often ``fn`` hashes a tensor: torch's constructor puts every earlier group's tensors
    in a set for each new group, so this is its work, counted rather than timed."""
    original = torch.Tensor.__hash__
    calls = 0

    def counting(tensor: torch.Tensor) -> int:
        nonlocal calls
        calls += 1
        return original(tensor)

    torch.Tensor.__hash__ = counting  # type: ignore[method-assign]
    try:
        fn()
    finally:
        torch.Tensor.__hash__ = original  # type: ignore[method-assign]
    return calls


def grown(scaling: list[dict[str, Any]], key: str) -> float:
    """How many times ``key`` grew from the smallest model to the largest."""
    return float(scaling[-1][key] / scaling[0][key])


def cpu_name() -> str:
    """The processor's model name (``platform.processor()`` is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def targets(rows: list[dict[str, Any]], scaling: list[dict[str, Any]]) -> list[str]:
    """The targets of the benchmark issue, each with the figure measured in this run and whether it holds."""

    def line(target: str, measured: str, holds: bool) -> str:
        return f"| {target} | {measured} | {'met' if holds else '**not met**'} |"

    floor_growth = grown(scaling, "floor")  # what "linear" costs here
    ours_growth = grown(scaling, "ours") / floor_growth
    resolve_growth = grown(scaling, "resolve") / floor_growth
    hashes_growth = grown(scaling, "hashes_per_tensor")
    out = ["## Targets", "", "| target | measured | |", "|---|---|---|"]
    for r in rows:
        out.append(line(f"{r['model']}: resolve ≤ 1.5× the floor", f"{r['vs_floor']:.2f}×", r["vs_floor"] <= 1.5))
        out.append(line(f"{r['model']}: ≥ 3× faster than timm", f"{r['speedup_vs_timm']:.2f}×", r["speedup_vs_timm"] >= 3))
        out.append(line(f"{r['model']}: peak memory ≤ 1.2× the floor's", f"{r['memory_vs_floor']:.2f}×", r["memory_vs_floor"] <= 1.2))
        out.append(line(f"{r['model']}: groups ≤ 2 × distinct scales", f"{r['groups']} ≤ {2 * r['distinct_scales']}", r["groups"] <= 2 * r["distinct_scales"]))
    small, large = scaling[0]["tensors"] // 1000, scaling[-1]["tensors"] // 1000
    out.append(line(f"create_optimizer() on {scaling[-1]['tensors']:,} tensors < 2 s", f"{scaling[-1]['seconds']:.2f} s", scaling[-1]["seconds"] < 2))
    out.append(line(f"create_optimizer(), all but torch's constructor: grows {small}k → {large}k like the floor (within 25%)", f"{ours_growth:.2f}× the floor's growth", ours_growth <= 1.25))
    out.append(line("… of which resolve() grows like the floor (within 25%)", f"{resolve_growth:.2f}× the floor's growth", resolve_growth <= 1.25))
    out.append(line(f"torch's constructor on lwd-rules' groups: linear work, the same tensor hashes per tensor at {small}k and {large}k (within 5%)", f"{scaling[0]['hashes_per_tensor']:.2f} and {scaling[-1]['hashes_per_tensor']:.2f}", abs(hashes_growth - 1) <= 0.05))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--synthetic", type=int, default=100_000, help="tensors in the synthetic model")
    args = parser.parse_args()
    cases = [
        ("convnext_base", "convnext-timm"),
        ("vit_base_patch16_224", "vit"),
        ("swin_base_patch4_window7_224", "swin"),
        ("eva02_large_patch14_224", "vit"),
    ]
    rows = []
    for name, rule_set in cases:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        rows.append(measure(name, model, load_rules(rule_set)))
        print(rows[-1], file=sys.stderr)
    with torch.device("meta"):
        synthetic = many_blocks_model((args.synthetic - 4) // 4)
    give_timm_the_same_layers(synthetic)
    rows.append(measure(f"synthetic ({args.synthetic:,} tensors)", synthetic, load_rules(MANY_BLOCKS_RULES), check_same_groups=True, budget=5.0))
    print(rows[-1], file=sys.stderr)
    del synthetic
    scaling = optimizer_scaling(sorted({10_000, 50_000, args.synthetic}))
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`python benchmarks/bench.py`): {platform.machine()}, {cpu_name()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, Python {platform.python_version()}, torch {torch.__version__}, "
        f"timm {timm.__version__}, lwd-rules {lwd_rules.__version__}. Models on the meta device; rules loaded once; "
        "times are the fastest of repeated runs, taken in alternation (rounds in which floor, lwd-rules and timm each run a batch, "
        "until each has had 1 s of runs, 5 s on the synthetic model, and at least 5) with the "
        "garbage collector off, as `timeit` measures (docs/performance.md); "
        "every ratio compares figures measured in this same run.",
        "",
        "## resolve()",
        "",
        "floor = `list(model.named_parameters())`; timm = `param_groups_layer_decay` at the rule set's rate (on the synthetic model "
        "through a `group_matcher` placing each name where the rules do; the bench checks that timm's groups then equal lwd-rules'); "
        "memory = tracemalloc peak of resolve ÷ that of the floor's list.",
        "",
        "| model | rules | tensors | floor ms | lwd-rules ms | timm ms | lwd-rules ÷ floor | timm ÷ floor | timm ÷ lwd-rules | groups | distinct scales | memory ÷ floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['rules']} | {r['tensors']:,} | {r['floor_ms']:.2f} | {r['ours_ms']:.2f} | {r['timm_ms']:.2f} | "
            f"{r['vs_floor']:.2f}× | {r['timm_vs_floor']:.2f}× | {r['speedup_vs_timm']:.2f}× | {r['groups']} | {r['distinct_scales']} | {r['memory_vs_floor']:.2f}× |"
        )
    lines += [
        "",
        "## create_optimizer() on the synthetic model (AdamW, timm registry)",
        "",
        "| tensors | seconds | seconds per 10k tensors | of which resolve() | fingerprint | torch's optimizer constructor | the rest (group copies, timm's factory) | floor (`named_parameters()`) | groups | torch's constructor: tensor hashes per tensor | ns per hash |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {s['tensors']:,} | {s['seconds']:.3f} | {s['per_10k']:.3f} | {s['resolve']:.3f} | {s['fingerprint']:.3f} | {s['torch']:.3f} | {s['rest']:.3f} | "
            f"{s['floor']:.3f} | {s['groups']} | {s['hashes_per_tensor']:.2f} | {s['ns_per_hash']:.0f} |"
            for s in scaling
        ),
        "",
        f"Growth 10k → {scaling[-1]['tensors'] // 1000}k for {scaling[-1]['tensors'] / scaling[0]['tensors']:.0f}× tensors: "
        f"{grown(scaling, 'seconds'):.1f}× in all ({grown(scaling, 'seconds') / grown(scaling, 'floor'):.2f}× the floor's growth); "
        f"{grown(scaling, 'ours'):.1f}× for lwd-rules' part (all but torch's constructor), "
        f"of which {grown(scaling, 'resolve'):.1f}× for resolve() and {grown(scaling, 'fingerprint'):.1f}× for the fingerprint; "
        f"{grown(scaling, 'floor'):.1f}× for the floor itself; and {grown(scaling, 'torch'):.1f}× for torch's constructor, which is "
        f"{grown(scaling, 'hashes_per_tensor') * scaling[-1]['tensors'] / scaling[0]['tensors']:.1f}× the tensor hashes "
        f"(the same {scaling[-1]['hashes_per_tensor']:.2f} per tensor at every size: it puts each earlier group's tensors in a set for every new group, "
        f"O(groups × tensors) with the groups fixed) at {grown(scaling, 'ns_per_hash'):.2f}× the cost per hash, as its sets outgrow the caches. "
        "On this machine even listing the parameters grows faster than the count, so time growth is judged against the floor's; "
        "torch's constructor, which lwd-rules calls but does not run, is judged by its work, counted. "
        "Each part is the fastest of its runs, taken in alternation with the others until each has had 3 s of runs (at least 3); "
        "the rest is what remains of the total, so it carries the noise of all four.",
        "",
        f"median lwd-rules ÷ floor over the models above: {statistics.median(r['vs_floor'] for r in rows):.2f}×",
        "",
        *targets(rows, scaling),
    ]
    args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
