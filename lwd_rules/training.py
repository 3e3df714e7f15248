"""Guards for the training loop: the optimizer really trains each group at the plan's lr ratio, and
an optimizer state saved under one plan is never loaded into another."""

from __future__ import annotations

import math
from typing import Any

from lwd_rules.plan import Plan

STATE_KEY = "lwd_rules"


class LrScaleError(ValueError):
    """The live optimizer's learning rates do not have the plan's per-group ratios."""


class PlanMismatchError(ValueError):
    """An optimizer state saved under a different plan (other rules, model or grouping)."""


def check_optimizer(optimizer: Any, plan: Plan, *, rel_tol: float = 1e-9) -> None:
    """Raise ``LrScaleError`` naming the first group whose lr is not ``lr_scale ×`` the others'.

    Call it after a scheduler step (or in a test) to catch the two silent mistakes: a scheduler that
    ignores ``lr_scale`` (every group at the same lr) and one that applies it twice (``scale²``).
    Groups are matched to the plan by ``group_name``; a group the plan lacks, or (unrouted) a
    different number of groups, is an error too.
    """
    groups = optimizer.param_groups
    planned = {g["group_name"]: g["lr_scale"] for g in plan.param_groups}
    full_names = [str(g.get("group_name", "")) for g in groups]
    routed = any(":" in n for n in full_names)  # "<plan group>:matrix" / ":fallback" when parameters are routed
    names = [n.split(":")[0] for n in full_names]
    if not routed and len(groups) != len(plan.param_groups):
        raise LrScaleError(f"the optimizer has {len(groups)} param groups, the plan {len(plan.param_groups)}: was it built from this plan?")
    unknown = [n for n in names if n not in planned]
    if unknown:
        raise LrScaleError(f"optimizer group {unknown[0]!r} is not in the plan: was it built from this plan?")
    scales = [planned[n] for n in names]
    reference = max(range(len(groups)), key=lambda i: scales[i])
    base = _lr(groups[reference]) / scales[reference]
    if base == 0.0:
        return  # every group at lr 0 (e.g. the first warmup step): nothing to compare
    for index, (group, scale) in enumerate(zip(groups, scales)):
        ratio = _lr(group) / base
        if not math.isclose(ratio, scale, rel_tol=rel_tol, abs_tol=1e-300):
            name = group.get("group_name", names[index])
            hint = ""
            if math.isclose(ratio, 1.0, rel_tol=rel_tol) and scale != 1.0:
                if "lwd_lr_scale" in group:  # already the torch convention: a value shared by all groups
                    hint = (
                        " (the scheduler ignores lr_scale: a fixed lr shared by every group, such as timm's "
                        "warmup_lr_init or a single OneCycleLR max_lr; use convention='timm' or per-group values)"
                    )
                else:
                    hint = " (the scheduler ignores lr_scale: use convention='torch' with torch / Hugging Face schedulers)"
            elif math.isclose(ratio, scale * scale, rel_tol=rel_tol):
                hint = " (lr_scale applied twice: use convention='timm' with timm schedulers or the reference loop)"
            raise LrScaleError(f"group {index} {name!r} trains at {ratio:.6g} × the base lr, the plan says {scale:.6g}{hint}")


def _lr(group: dict[str, Any]) -> float:
    lr = group["lr"]
    return float(lr.item() if hasattr(lr, "item") else lr)


def stamp(optimizer: Any, plan: Plan) -> None:
    """Record the plan's fingerprint in ``optimizer.state_dict()`` and refuse to load a state saved
    under another plan (which would silently pair moments with the wrong parameters)."""
    fingerprint = plan.fingerprint()

    def save(opt: Any, state: dict[str, Any]) -> dict[str, Any]:
        state[STATE_KEY] = {"fingerprint": fingerprint}
        return state

    def load(opt: Any, state: dict[str, Any]) -> dict[str, Any]:
        saved = state.pop(STATE_KEY, {}).get("fingerprint")
        if saved is not None and saved != fingerprint:
            raise PlanMismatchError(
                f"this optimizer state was saved under plan {saved}, but the optimizer was built from plan {fingerprint}: "
                "the rules, the model or its trainable parameters differ, so its groups would not line up"
            )
        return state

    optimizer.register_state_dict_post_hook(save)
    optimizer.register_load_state_dict_pre_hook(load)
    optimizer.lwd_rules_fingerprint = fingerprint
