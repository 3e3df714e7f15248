"""Training-loop guarantees: exact resume, the plan-mismatch guard, frozen and tied parameters, min_scale.

- Resume: 3 steps, save model + optimizer + scheduler, rebuild everything, load, 3 more steps: the
  same weights and optimizer state, bit for bit, as 6 uninterrupted steps.
- An optimizer state saved under another plan raises ``PlanMismatchError`` and changes nothing.
- Frozen parameters (``requires_grad=False`` or an override's ``freeze``) are in no group and shift
  nothing else; on a timm ViT the rest matches ``timm.optim.param_groups_layer_decay``.
- A tied embedding / output matrix is optimized once, under its first name, with its first id.
- ``layer_decay.min_scale`` clamps, and ``below_min: freeze`` leaves out what timm's ``no_opt_scale`` does.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import param_groups_layer_decay

from lwd_rules import PlanMismatchError, build_optimizer, create_optimizer, resolve

LR = 1e-2
DIM, CLASSES, DEPTH = 8, 4, 3


class Tiny(nn.Module):
    """stem (id 0), three blocks (ids 1-3), norm + head (id 4): five distinct lr scales."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, DIM)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(DIM, DIM), nn.GELU(), nn.LayerNorm(DIM)) for _ in range(DEPTH))
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.norm(x))


RULES: dict[str, Any] = {
    "version": 1,
    "layers": {
        "count": {"num_blocks": r"^blocks\.(\d+)\."},
        "num_layers": "num_blocks",
        "rules": [{"match": r"^stem\.", "layer": 0}, {"match": r"^blocks\.(?P<b>\d+)\.", "layer": "b + 1"}],
        "default": "num_layers + 1",
    },
    "layer_decay": {"rate": 0.6},
    "weight_decay": {"value": 0.1, "exclude": ["ndim<=1"]},
}


def make_scheduler(kind: str, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=8)  # eta_min 0: an absolute eta_min would be shared by all groups
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1.0 + step))


def batches(count: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(42)
    return [(torch.randn(5, 6, generator=generator), torch.randint(0, CLASSES, (5,), generator=generator)) for _ in range(count)]


def setup(seed: int, scheduler: str, model_fn: Callable[[], nn.Module] = Tiny, **kwargs: Any) -> tuple[nn.Module, Any, Any]:
    torch.manual_seed(seed)
    model = model_fn()
    optimizer = create_optimizer(model, RULES, lr=LR, **kwargs)
    return model, optimizer, make_scheduler(scheduler, optimizer)


def train(model: nn.Module, optimizer: Any, scheduler: Any, data: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for inputs, labels in data:
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


def assert_state_equal(got: Any, expected: Any, where: str = "") -> None:
    """Nested dicts / lists / tensors, tensors compared with torch.equal."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == expected.dtype and torch.equal(got, expected), where
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), (where, sorted(map(str, got)), sorted(map(str, expected)))
        for key in expected:
            assert_state_equal(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert type(got) is type(expected) and len(got) == len(expected), where
        for index, (a, b) in enumerate(zip(got, expected)):
            assert_state_equal(a, b, f"{where}[{index}]")
    else:
        assert got == expected, (where, got, expected)


# --------------------------------------------------------------------------------------------
# Resume


def test_tiny_model_has_at_least_three_scales():
    plan = resolve(Tiny(), RULES, lr=LR)
    assert len(set(plan.scales)) == 5 and len({g["lr_scale"] for g in plan.param_groups}) == 5
    assert {row.layer_id for row in plan.params} == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("scheduler", ["cosine", "lambda"])
def test_resume_after_three_steps_equals_six_uninterrupted_steps(tmp_path, scheduler):
    data = batches(6)
    model, optimizer, sched = setup(0, scheduler)
    train(model, optimizer, sched, data)
    expected = (model.state_dict(), optimizer.state_dict(), sched.state_dict())

    model, optimizer, sched = setup(0, scheduler)
    train(model, optimizer, sched, data[:3])
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": sched.state_dict()}, tmp_path / "ckpt.pt")
    del model, optimizer, sched

    model, optimizer, sched = setup(1, scheduler)  # another init: only the checkpoint can make it match
    checkpoint = torch.load(tmp_path / "ckpt.pt")  # weights_only: the lwd-rules additions are plain data
    assert checkpoint["optimizer"]["lwd_rules"]["fingerprint"] == optimizer.lwd_rules_fingerprint
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    sched.load_state_dict(checkpoint["scheduler"])
    train(model, optimizer, sched, data[3:])

    assert_state_equal(model.state_dict(), expected[0], "model")
    got_optimizer = optimizer.state_dict()
    assert len(got_optimizer["state"]) == sum(1 for _ in model.parameters())
    assert_state_equal(got_optimizer, expected[1], "optimizer")
    assert_state_equal(sched.state_dict(), expected[2], "scheduler")
    scales = [g["lwd_lr_scale"] for g in optimizer.param_groups]
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert len(set(scales)) == 5
    for lr, scale in zip(lrs, scales):  # the scheduler kept every group at its own ratio
        assert math.isclose(lr / lrs[-1], scale / scales[-1], rel_tol=1e-9)


# --------------------------------------------------------------------------------------------
# Plan mismatch


class OneMoreFrozen(Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.blocks[1][0].bias.requires_grad_(False)


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"layer_decay": 0.7}, id="another-layer-decay-rate"),
        pytest.param({"model_fn": OneMoreFrozen}, id="one-more-frozen-parameter"),
    ],
)
def test_state_from_another_plan_raises_and_changes_nothing(other):
    data = batches(2)
    model, optimizer, sched = setup(0, "cosine")
    train(model, optimizer, sched, data)
    saved = optimizer.state_dict()

    other = dict(other)
    model_fn = other.pop("model_fn", Tiny)
    target_model, target, target_sched = setup(0, "cosine", model_fn, **other)
    train(target_model, target, target_sched, data[:1])  # a non-empty state that must survive
    assert target.lwd_rules_fingerprint != optimizer.lwd_rules_fingerprint
    before = copy.deepcopy(target.state_dict())
    groups_before = [{k: v for k, v in g.items() if k != "params"} for g in target.param_groups]
    tensors_before = [[id(p) for p in g["params"]] for g in target.param_groups]

    with pytest.raises(PlanMismatchError) as caught:
        target.load_state_dict(saved)
    message = str(caught.value)
    assert optimizer.lwd_rules_fingerprint in message and target.lwd_rules_fingerprint in message
    assert "plan" in message and ("rules" in message or "model" in message)

    assert_state_equal(target.state_dict(), before, "optimizer after the refused load")
    assert [{k: v for k, v in g.items() if k != "params"} for g in target.param_groups] == groups_before
    assert [[id(p) for p in g["params"]] for g in target.param_groups] == tensors_before
    assert saved["lwd_rules"]["fingerprint"] == optimizer.lwd_rules_fingerprint  # the caller's dict is intact too


def test_same_plan_from_a_fresh_model_loads():
    """The control for the test above: an identical plan on a new model object loads silently."""
    model, optimizer, sched = setup(0, "cosine")
    train(model, optimizer, sched, batches(1))
    _, fresh, _ = setup(3, "cosine")
    fresh.load_state_dict(optimizer.state_dict())
    assert_state_equal(fresh.state_dict(), optimizer.state_dict(), "optimizer")


# --------------------------------------------------------------------------------------------
# Freezing

FREEZE_RULES: dict[str, Any] = {  # no num_layers: it is derived from the highest layer id
    "version": 1,
    "layers": {"rules": [{"match": r"^stem\.", "layer": 0}, {"match": r"^blocks\.(?P<b>\d+)\.", "layer": "b + 1"}], "default": 4},
    "layer_decay": {"rate": 0.5},
    "weight_decay": {"value": 0.1, "exclude": ["ndim<=1"]},
}
FROZEN_PARTS = {"head (highest id)": r"^(?:norm|head)\.", "stem (id 0)": r"^stem\.", "blocks.1 (middle)": r"^blocks\.1\."}


def rows_by_name(plan: Any) -> dict[str, tuple[int, float, float]]:
    return {row.name: (row.layer_id, row.lr_scale, row.weight_decay) for row in plan.params}


@pytest.mark.parametrize("how", ["requires_grad", "override"])
@pytest.mark.parametrize("part", list(FROZEN_PARTS))
def test_frozen_parameters_are_in_no_group_and_shift_nothing(part, how):
    pattern = re.compile(FROZEN_PARTS[part])
    torch.manual_seed(0)
    model = Tiny()
    full = resolve(model, FREEZE_RULES, lr=LR)
    frozen_names = [name for name, _ in model.named_parameters() if pattern.search(name)]
    assert frozen_names
    if how == "requires_grad":
        for name, param in model.named_parameters():
            if pattern.search(name):
                param.requires_grad_(False)
        plan = resolve(model, FREEZE_RULES, lr=LR)
        reason = "requires_grad is False"
    else:
        plan = resolve(model, {**FREEZE_RULES, "overrides": [{"match": FROZEN_PARTS[part], "freeze": True}]}, lr=LR)
        reason = "frozen by an override"

    assert sorted((s.name, s.reason) for s in plan.skipped) == sorted((name, reason) for name in frozen_names)
    frozen_ids = {id(p) for name, p in model.named_parameters() if name in frozen_names}
    assert not frozen_ids & {id(p) for g in plan.param_groups for p in g["params"]}
    optimizer = build_optimizer(plan)
    assert not frozen_ids & {id(p) for g in optimizer.param_groups for p in g["params"]}
    expected = {name: value for name, value in rows_by_name(full).items() if name not in frozen_names}
    got = rows_by_name(plan)
    assert {n: v[0] for n, v in got.items()} == {n: v[0] for n, v in expected.items()}, f"freezing {part} by {how} moved layer ids"
    # num_layers (derived from the highest id, frozen parameters included) and so every scale stay put
    assert (plan.num_layers, plan.scales) == (full.num_layers, full.scales), f"freezing {part} by {how} changed num_layers / the scales"
    assert got == expected, f"freezing {part} by {how} changed the scales or weight decays of the others"


@pytest.mark.parametrize("how", ["requires_grad", "override"])
def test_frozen_patch_embed_and_first_block_match_timm(how):
    with torch.device("meta"):
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    reference = copy.deepcopy(model)
    for part in (reference.patch_embed, reference.blocks[0]):
        part.requires_grad_(False)
    groups = param_groups_layer_decay(reference, weight_decay=0.05, layer_decay=0.75, no_weight_decay_list=reference.no_weight_decay())
    by_tensor = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    expected = {name: by_tensor[id(p)] for name, p in reference.named_parameters() if id(p) in by_tensor}
    assert len(expected) == sum(p.requires_grad for p in reference.parameters())

    source: dict[str, Any] = {"extends": "timm", "layer_decay": {"rate": 0.75}, "weight_decay": {"value": 0.05}}
    if how == "requires_grad":
        for part in (model.patch_embed, model.blocks[0]):
            part.requires_grad_(False)
    else:
        source["overrides"] = [{"match": r"^(?:patch_embed|blocks\.0)\.", "freeze": True}]
    plan = resolve(model, source)
    rows = {row.name: row for row in plan.params}
    assert sorted(rows) == sorted(expected)
    for name, (scale, decay) in expected.items():
        assert math.isclose(rows[name].lr_scale, scale, rel_tol=1e-12), (name, rows[name].lr_scale, scale)
        assert rows[name].weight_decay == decay, name
    assert {rows[n].layer_id for n in rows if n.startswith("blocks.1.")} == {2}
    assert len(plan.skipped) == len(list(model.patch_embed.parameters())) + len(list(model.blocks[0].parameters()))


# --------------------------------------------------------------------------------------------
# Tied weights


class TiedLM(nn.Module):
    def __init__(self, vocab: int = 20, dim: int = DIM, depth: int = 2, head_first: bool = False) -> None:
        super().__init__()
        if head_first:
            self.head = nn.Linear(dim, vocab, bias=False)
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(nn.Linear(dim, dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        if not head_first:
            self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = x + torch.tanh(block(x))
        return self.head(self.norm(x))


TIED_RULES: dict[str, Any] = {
    "version": 1,
    "layers": {
        "rules": [{"match": r"^embed\.", "layer": 0}, {"match": r"^blocks\.(?P<b>\d+)\.", "layer": "b + 1"}],
        "default": 3,
    },
    "layer_decay": {"rate": 0.5},
    "weight_decay": {"value": 0.1, "exclude": ["ndim<=1"]},
}


@pytest.mark.parametrize(("head_first", "first_name", "layer_id"), [(False, "embed.weight", 0), (True, "head.weight", 3)])
def test_tied_weight_is_planned_once_under_its_first_name(head_first, first_name, layer_id):
    torch.manual_seed(0)
    model = TiedLM(head_first=head_first)
    shared = model.embed.weight
    assert model.head.weight is shared
    assert next(name for name, p in model.named_parameters() if p is shared) == first_name
    plan = resolve(model, TIED_RULES, lr=LR)
    names = [row.name for row in plan.params]
    assert names.count(first_name) == 1
    assert not {"embed.weight", "head.weight"} - {first_name} & set(names), "the second name is not a row"
    assert not plan.skipped
    row = next(row for row in plan.params if row.name == first_name)
    assert row.layer_id == layer_id and row.lr_scale == plan.scales[layer_id]
    assert sum(p is shared for g in plan.param_groups for p in g["params"]) == 1
    assert len(plan.params) == len(list(model.parameters()))


def test_tied_weight_is_updated_once_per_step():
    torch.manual_seed(0)
    model = TiedLM()
    shared = model.embed.weight
    plan = resolve(model, TIED_RULES, lr=LR)
    optimizer = build_optimizer(plan, foreach=False)
    assert sum(p is shared for g in optimizer.param_groups for p in g["params"]) == 1
    group = next(g for g in optimizer.param_groups if any(p is shared for p in g["params"]))
    assert group["lr"] == LR * plan.scales[0] and group["weight_decay"] == 0.1

    tokens = torch.randint(0, 20, (4, 5), generator=torch.Generator().manual_seed(1))
    F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
    # the manual step: AdamW on an untied copy holding the gradient summed over both uses
    copy_ = shared.detach().clone().requires_grad_(True)
    copy_.grad = shared.grad.detach().clone()
    manual = torch.optim.AdamW([copy_], lr=LR * plan.scales[0], weight_decay=0.1, foreach=False)
    optimizer.step()
    manual.step()
    assert torch.equal(shared.detach(), copy_.detach())
    assert float(optimizer.state[shared]["step"]) == 1.0
    assert len(optimizer.state) == len(list(model.parameters()))


# --------------------------------------------------------------------------------------------
# min_scale: clamp, and below_min: freeze (timm's no_opt_scale)

RATE, MIN_SCALE = 0.5, 0.5**6  # powers of two: the scales are exact, and one equals min_scale


def timm_kept(model: nn.Module, **kwargs: Any) -> tuple[dict[str, tuple[float, float]], set[str]]:
    """timm's (lr_scale, weight_decay) per optimized name, and the names it set requires_grad=False on."""
    model = copy.deepcopy(model)  # timm freezes what no_opt_scale drops
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=RATE, no_weight_decay_list=model.no_weight_decay(), **kwargs)
    by_tensor = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    kept = {name: by_tensor[id(p)] for name, p in model.named_parameters() if id(p) in by_tensor}
    return kept, {name for name, p in model.named_parameters() if not p.requires_grad}


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)


def test_min_scale_clamps_like_timm(vit):
    expected, dropped = timm_kept(vit, min_scale=MIN_SCALE)
    assert not dropped
    plan = resolve(vit, {"extends": "timm", "layer_decay": {"rate": RATE, "min_scale": MIN_SCALE}, "weight_decay": {"value": 0.05}})
    rows = {row.name: row for row in plan.params}
    assert sorted(rows) == sorted(expected) and not plan.skipped
    for name, (scale, decay) in expected.items():
        assert rows[name].lr_scale == scale and rows[name].weight_decay == decay, name
    raw = [RATE ** (plan.num_layers + 1 - i) for i in range(plan.num_layers + 2)]
    assert list(plan.scales) == [max(s, MIN_SCALE) for s in raw]
    assert sum(s < MIN_SCALE for s in raw) >= 3, "the clamp is exercised"
    assert min(row.lr_scale for row in plan.params) == MIN_SCALE


def test_below_min_freeze_keeps_what_timms_no_opt_scale_keeps(vit):
    expected, dropped = timm_kept(vit, no_opt_scale=MIN_SCALE)
    assert dropped and expected
    source = {"extends": "timm", "layer_decay": {"rate": RATE, "min_scale": MIN_SCALE, "below_min": "freeze"}, "weight_decay": {"value": 0.05}}
    plan = resolve(vit, source, lr=LR)
    rows = {row.name: row for row in plan.params}
    assert sorted(rows) == sorted(expected)
    for name, (scale, decay) in expected.items():
        assert rows[name].lr_scale == scale and rows[name].weight_decay == decay, name
    assert min(row.lr_scale for row in plan.params) == MIN_SCALE  # exactly min_scale is kept, as in timm
    assert {s.name for s in plan.skipped} == dropped
    assert all("below min_scale" in s.reason for s in plan.skipped)
    assert all(p.requires_grad for p in vit.parameters()), "lwd-rules leaves requires_grad alone"
    optimizer = build_optimizer(plan)
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for name, p in vit.named_parameters() if name in expected}
