"""Every scheduler × convention combination, run for real: does each group train at the schedule's
value for the base lr times its lr scale, and does ``check_optimizer`` tell the right ones from the
wrong ones?

The expected lr is computed independently of lwd-rules: the same scheduler is built on a separate
one-group optimizer (a dummy parameter) whose lr is the base lr, and its lr is read at every step
(for the reference loop, the schedule array is the formula itself). The model is a tiny float64 MLP
trained with plain SGD (no momentum), so besides ``group["lr"]`` the lr that ``optimizer.step()``
really applied is recovered from the weight update: ``Δp = -lr · (grad + weight_decay · p)``.

``RESULTS`` is the table in docs/training.md ("Which scheduler with which convention").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn as nn
from timm.scheduler import CosineLRScheduler, StepLRScheduler
from torch.optim import lr_scheduler
from transformers import get_cosine_schedule_with_warmup

import lwd_rules.plugins
from lwd_rules import LrScaleError, check_optimizer, create_optimizer, resolve
from lwd_rules.plan import Plan

BASE_LR = 1e-3
STEPS = 12
WARMUP = 3

RULES = {
    "layers": {
        "rules": [
            {"match": r"^stem\.", "layer": 0},
            {"match": r"^blocks\.(?P<i>\d+)\.", "layer": "i + 1"},
        ],
        "num_layers": 3,
        "default": "num_layers + 1",
    },
    "layer_decay": {"rate": 0.5},
    "weight_decay": {"value": 0.05, "exclude": ["ndim<=1"]},
}
# ids 0 (stem), 1..3 (blocks), 4 (head by default): scale 0.5 ** (4 - id); a decay and a no_decay group each.
GROUP_NAMES = [f"layer_{i}_{kind}" for i in range(5) for kind in ("decay", "no_decay")]
GROUP_SCALES = [0.5 ** (4 - i) for i in range(5) for _ in ("decay", "no_decay")]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.stem(x))
        for block in self.blocks:
            x = torch.tanh(block(x))
        return self.head(x)


def build(convention: str) -> tuple[Tiny, Plan, torch.optim.Optimizer]:
    """The documented usage: ``create_optimizer(model, rules, lr=..., convention=...)``."""
    torch.manual_seed(0)
    model = Tiny().double()
    registry = lwd_rules.plugins.new_registry()  # no installed plugin takes part
    plan = resolve(model, RULES, lr=BASE_LR, registry=registry)
    optimizer = create_optimizer(
        model, RULES, lr=BASE_LR, convention=convention, registry=registry,
        optimizer="sgd", momentum=0.0, nesterov=False,
    )
    assert type(optimizer) is torch.optim.SGD
    assert [g["group_name"] for g in optimizer.param_groups] == GROUP_NAMES
    assert [g["lr_scale"] for g in plan.param_groups] == GROUP_SCALES
    assert len(set(GROUP_SCALES)) == 5
    key, other = ("lwd_lr_scale", "lr_scale") if convention == "torch" else ("lr_scale", "lwd_lr_scale")
    assert [g[key] for g in optimizer.param_groups] == GROUP_SCALES
    assert all(other not in g for g in optimizer.param_groups)
    assert [g["lr"] for g in optimizer.param_groups] == [BASE_LR * s for s in GROUP_SCALES]
    return model, plan, optimizer


# --- the schedules --------------------------------------------------------------------------------


@dataclass
class Driver:
    """How a training loop drives one schedule: ``before(it)`` ahead of the step, ``after(it)`` after it."""

    before: Callable[[int], None]
    after: Callable[[int], None]


def torch_driver(scheduler: Any) -> Driver:
    return Driver(before=lambda it: None, after=lambda it: scheduler.step())


def timm_driver(scheduler: Any) -> Driver:
    return Driver(before=lambda it: None, after=lambda it: scheduler.step_update(it + 1))


def reference_schedule() -> list[float]:
    """The ConvNeXt-V2 / BEiT ``cosine_scheduler``: linear warmup from 0, then cosine to 0."""
    warmup = [BASE_LR * it / WARMUP for it in range(WARMUP)]
    decay = [0.5 * BASE_LR * (1 + math.cos(math.pi * it / (STEPS - WARMUP))) for it in range(STEPS - WARMUP)]
    return warmup + decay


def manual_driver(optimizer: torch.optim.Optimizer) -> Driver:
    schedule = reference_schedule()

    def before(it: int) -> None:
        for param_group in optimizer.param_groups:
            param_group["lr"] = schedule[it] * param_group["lr_scale"]

    return Driver(before=before, after=lambda it: None)


def sequential(optimizer: torch.optim.Optimizer) -> Any:
    warmup = lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=WARMUP)
    cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS - WARMUP)
    return lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[WARMUP])


SCHEDULES: dict[str, Callable[[torch.optim.Optimizer], Driver]] = {
    "timm-cosine": lambda o: timm_driver(CosineLRScheduler(o, t_initial=STEPS, t_in_epochs=False)),
    "timm-cosine-warmup-from-0": lambda o: timm_driver(
        CosineLRScheduler(o, t_initial=STEPS, warmup_t=WARMUP, t_in_epochs=False)
    ),
    "timm-cosine-warmup-from-1e-5": lambda o: timm_driver(
        CosineLRScheduler(o, t_initial=STEPS, warmup_t=WARMUP, warmup_lr_init=1e-5, t_in_epochs=False)
    ),
    "timm-cosine-lr_min-1e-5": lambda o: timm_driver(
        CosineLRScheduler(o, t_initial=STEPS, lr_min=1e-5, t_in_epochs=False)
    ),
    "timm-step": lambda o: timm_driver(StepLRScheduler(o, decay_t=4, decay_rate=0.5, t_in_epochs=False)),
    "torch-cosine": lambda o: torch_driver(lr_scheduler.CosineAnnealingLR(o, T_max=STEPS)),
    "torch-cosine-restarting": lambda o: torch_driver(lr_scheduler.CosineAnnealingLR(o, T_max=4)),
    "torch-cosine-eta_min-1e-5": lambda o: torch_driver(lr_scheduler.CosineAnnealingLR(o, T_max=STEPS, eta_min=1e-5)),
    "torch-onecycle-max_lr-per-group": lambda o: torch_driver(
        lr_scheduler.OneCycleLR(o, max_lr=[g["lr"] for g in o.param_groups], total_steps=STEPS, cycle_momentum=False)
    ),
    "torch-onecycle-max_lr-scalar": lambda o: torch_driver(
        lr_scheduler.OneCycleLR(o, max_lr=BASE_LR, total_steps=STEPS, cycle_momentum=False)
    ),
    "torch-lambda": lambda o: torch_driver(lr_scheduler.LambdaLR(o, lambda it: 1 - it / (2 * STEPS))),
    "torch-sequential-linear-cosine": lambda o: torch_driver(sequential(o)),
    "hf-cosine-with-warmup": lambda o: torch_driver(get_cosine_schedule_with_warmup(o, WARMUP, STEPS)),
    "manual-loop": manual_driver,
}

OK = "ok"
# (schedule, convention) -> OK, or (the first step, 0-based, whose lrs leave base × scale; the ratio
# check_optimizer then reports for group 0, whose scale is 0.0625).
RESULTS: dict[tuple[str, str], str | tuple[int, str]] = {
    ("timm-cosine", "torch"): OK,
    ("timm-cosine", "timm"): OK,
    ("timm-cosine-warmup-from-0", "torch"): OK,
    ("timm-cosine-warmup-from-0", "timm"): OK,
    ("timm-cosine-warmup-from-1e-5", "torch"): (0, "1"),  # every group warms up from the same absolute 1e-5
    ("timm-cosine-warmup-from-1e-5", "timm"): OK,
    ("timm-cosine-lr_min-1e-5", "torch"): (1, "0.0626625"),  # every group decays towards the same absolute 1e-5
    ("timm-cosine-lr_min-1e-5", "timm"): OK,
    ("timm-step", "torch"): OK,
    ("timm-step", "timm"): OK,
    ("torch-cosine", "torch"): OK,
    ("torch-cosine", "timm"): OK,  # chainable form: multiplies the current lr while no restart happens
    ("torch-cosine-restarting", "torch"): OK,
    ("torch-cosine-restarting", "timm"): (5, "1"),  # the restart adds the unscaled initial_lr
    ("torch-cosine-eta_min-1e-5", "torch"): (1, "0.0626625"),  # eta_min is absolute, the same for every group
    ("torch-cosine-eta_min-1e-5", "timm"): (1, "0.0626625"),
    ("torch-onecycle-max_lr-per-group", "torch"): OK,
    ("torch-onecycle-max_lr-per-group", "timm"): OK,  # OneCycleLR overwrites initial_lr from max_lr
    ("torch-onecycle-max_lr-scalar", "torch"): (0, "1"),
    ("torch-onecycle-max_lr-scalar", "timm"): (0, "1"),
    ("torch-lambda", "torch"): OK,
    ("torch-lambda", "timm"): (0, "1"),
    ("torch-sequential-linear-cosine", "torch"): OK,
    ("torch-sequential-linear-cosine", "timm"): (0, "1"),  # SequentialLR resets every lr to initial_lr
    ("hf-cosine-with-warmup", "torch"): OK,
    ("hf-cosine-with-warmup", "timm"): (1, "1"),  # step 0 is lr 0 everywhere: nothing to compare
    ("manual-loop", "timm"): OK,
    # ("manual-loop", "torch"): KeyError 'lr_scale', see test_manual_loop_needs_the_timm_convention
}


def reference_lrs(name: str) -> list[float]:
    """The schedule's lr for the base lr at each step, from a separate one-group optimizer."""
    if name == "manual-loop":
        return reference_schedule()
    dummy = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = torch.optim.SGD([dummy], lr=BASE_LR)
    driver = SCHEDULES[name](optimizer)
    out = []
    for it in range(STEPS):
        driver.before(it)
        out.append(optimizer.param_groups[0]["lr"])
        dummy.grad = torch.ones_like(dummy)
        optimizer.step()
        driver.after(it)
    return out


@dataclass
class Step:
    lrs: list[float]  # group["lr"] during optimizer.step()
    applied: list[float]  # the lr optimizer.step() really applied, from the weight update
    error: str | None  # check_optimizer's LrScaleError, if any


def train(name: str, convention: str) -> tuple[Plan, list[Step]]:
    """STEPS real training steps (forward, backward, optimizer.step, scheduler step)."""
    model, plan, optimizer = build(convention)
    driver = SCHEDULES[name](optimizer)
    data = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    steps = []
    for it in range(STEPS):
        driver.before(it)
        try:
            check_optimizer(optimizer, plan)
            error = None
        except LrScaleError as exc:
            error = str(exc)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(data), target).backward()
        before = [[(p.detach().clone(), p.grad.detach().clone()) for p in g["params"]] for g in optimizer.param_groups]
        lrs = [g["lr"] for g in optimizer.param_groups]
        optimizer.step()
        applied = []
        for group, saved in zip(optimizer.param_groups, before, strict=True):
            # SGD without momentum: p_new = p - lr * (grad + weight_decay * p); solve for lr.
            num = den = 0.0
            for p, (old, grad) in zip(group["params"], saved, strict=True):
                direction = grad + group["weight_decay"] * old
                num += float(((old - p.detach()) * direction).sum())
                den += float((direction * direction).sum())
            assert den > 0.0
            applied.append(num / den)
        steps.append(Step(lrs, applied, error))
        driver.after(it)
    return plan, steps


def first_wrong_step(steps: list[Step], expected: list[float]) -> int | None:
    for it, step in enumerate(steps):
        wanted = [expected[it] * scale for scale in GROUP_SCALES]
        pairs = zip(step.lrs, wanted, strict=True)
        if not all(math.isclose(lr, want, rel_tol=1e-9, abs_tol=0.0) for lr, want in pairs):
            return it
    return None


def test_the_reference_lrs_are_real_schedules():
    # Guard the independent references themselves: they move, and match their closed forms.
    cosine = [0.5 * BASE_LR * (1 + math.cos(math.pi * t / STEPS)) for t in range(STEPS)]
    for name in ("timm-cosine", "torch-cosine"):
        assert reference_lrs(name) == pytest.approx(cosine, rel=1e-12, abs=0.0)
    step = [BASE_LR * 0.5 ** (t // 4) for t in range(STEPS)]
    assert reference_lrs("timm-step") == pytest.approx(step, rel=1e-12, abs=0.0)
    linear = [BASE_LR * (1 - t / (2 * STEPS)) for t in range(STEPS)]
    assert reference_lrs("torch-lambda") == pytest.approx(linear, rel=1e-12, abs=0.0)
    warm = [1e-5 + t * (BASE_LR - 1e-5) / WARMUP for t in range(WARMUP)]
    assert reference_lrs("timm-cosine-warmup-from-1e-5")[:WARMUP] == pytest.approx(warm, rel=1e-12, abs=0.0)
    hf = reference_lrs("hf-cosine-with-warmup")
    assert hf[:WARMUP] == pytest.approx([BASE_LR * t / WARMUP for t in range(WARMUP)], rel=1e-12, abs=0.0)
    for name in SCHEDULES:
        assert len(set(reference_lrs(name))) >= 3, name


def combinations(ok: bool) -> list[Any]:
    return [pytest.param(*key, id=f"{key[0]}:{key[1]}") for key, result in RESULTS.items() if (result == OK) == ok]


@pytest.mark.parametrize(("name", "convention"), combinations(ok=True))
def test_each_group_trains_at_the_schedule_times_its_scale(name, convention):
    expected = reference_lrs(name)
    plan, steps = train(name, convention)
    for it, step in enumerate(steps):
        wanted = [expected[it] * scale for scale in GROUP_SCALES]
        assert step.lrs == pytest.approx(wanted, rel=1e-9, abs=0.0), f"step {it}"
        # float64 weight updates lose a few digits to cancellation (p_new - p_old), hence 1e-6.
        assert step.applied == pytest.approx(wanted, rel=1e-6, abs=1e-15), f"step {it}"
        assert step.error is None, f"step {it}: {step.error}"
    assert any(lr > 0 for lr in steps[-1].lrs)


@pytest.mark.parametrize(("name", "convention"), combinations(ok=False))
def test_check_optimizer_stops_the_first_step_that_loses_the_ratio(name, convention):
    expected = reference_lrs(name)
    plan, steps = train(name, convention)
    wrong = first_wrong_step(steps, expected)
    step, ratio = RESULTS[name, convention]
    assert wrong == step
    assert [s.error is not None for s in steps[: step + 1]] == [False] * step + [True]
    error = steps[step].error
    assert error.startswith(f"group 0 'layer_0_decay' trains at {ratio} × the base lr, the plan says 0.0625")
    assert ("(the scheduler ignores lr_scale" in error) == (ratio == "1")


def test_manual_loop_needs_the_timm_convention():
    model, plan, optimizer = build("torch")
    driver = manual_driver(optimizer)
    with pytest.raises(KeyError, match="^'lr_scale'$"):
        driver.before(0)


def test_check_optimizer_names_a_scheduler_that_ignores_lr_scale():
    # convention="timm" sets initial_lr = base lr, which LambdaLR schedules every group from.
    model, plan, optimizer = build("timm")
    lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    assert [g["lr"] for g in optimizer.param_groups] == [BASE_LR] * len(GROUP_NAMES)
    with pytest.raises(LrScaleError) as info:
        check_optimizer(optimizer, plan)
    assert str(info.value) == (
        "group 0 'layer_0_decay' trains at 1 × the base lr, the plan says 0.0625 "
        "(the scheduler ignores lr_scale: use convention='torch' with torch / Hugging Face schedulers)"
    )
    assert "ignores lr_scale" in str(info.value)


def test_check_optimizer_names_a_scale_applied_twice():
    # lr already base × scale AND an lr_scale key: timm's scheduler takes initial_lr = lr, then × lr_scale.
    model, plan, _ = build("timm")
    groups = plan.optimizer_groups(BASE_LR, "timm")
    for group in groups:
        del group["initial_lr"]
    optimizer = torch.optim.SGD(groups, lr=BASE_LR)
    CosineLRScheduler(optimizer, t_initial=STEPS, t_in_epochs=False)
    squared = [BASE_LR * s * s for s in GROUP_SCALES]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(squared, rel=1e-12)
    with pytest.raises(LrScaleError) as info:
        check_optimizer(optimizer, plan)
    assert str(info.value) == (
        "group 0 'layer_0_decay' trains at 0.00390625 × the base lr, the plan says 0.0625 "
        "(lr_scale applied twice: use convention='timm' with timm schedulers or the reference loop)"
    )
    assert "twice" in str(info.value)


def test_check_optimizer_rejects_an_optimizer_with_other_groups():
    model, plan, _ = build("torch")
    with pytest.raises(LrScaleError) as info:
        check_optimizer(torch.optim.SGD(model.parameters(), lr=BASE_LR), plan)
    assert str(info.value) == "the optimizer has 1 param groups, the plan 10: was it built from this plan?"
    with pytest.raises(LrScaleError, match=r"^the optimizer has 9 param groups, the plan 10: "):
        check_optimizer(torch.optim.SGD(plan.optimizer_groups(BASE_LR)[:-1], lr=BASE_LR), plan)
