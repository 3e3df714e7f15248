"""One rank of the 2-process CPU / gloo run behind ``tests/test_training_wrapped.py``.

Started twice by that test (``RANK`` 0 and 1, ``WORLD_SIZE`` 2, ``MASTER_ADDR`` / ``MASTER_PORT``
set), as ``python wrapped_worker.py CONFIG.json OUT_DIR``. Every check runs in its own
``try`` block and records either its data or the traceback, so one failing check never hides the
others; all collectives are reached by both ranks in the same order whatever happens. Results go
to ``OUT_DIR/rank{RANK}.json``; tensors to ``OUT_DIR/*.pt``. Nothing is asserted here: the test
process compares everything with the bare model it builds itself.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F

from lwd_rules import canonical_name, check_optimizer, create_optimizer, resolve


def summary(plan: Any) -> dict[str, Any]:
    """What must match the bare model: rows with canonical names, groups, fingerprint."""
    return {
        "rule_set": plan.rules.name,
        "params": [[canonical_name(r.name), r.layer_id, r.lr_scale, r.weight_decay, r.group] for r in plan.params],
        "groups": [[g["group_name"], g["lr_scale"], g["weight_decay"], len(g["params"])] for g in plan.param_groups],
        "skipped": [[canonical_name(s.name), s.reason] for s in plan.skipped],
        "fingerprint": plan.fingerprint(),
    }


def build(spec: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(spec["seed"])
    return timm.create_model(spec["name"], pretrained=False, **spec.get("kwargs", {}))


def batch(config: dict[str, Any], rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch rank ``rank`` trains on at ``step``; the test regenerates the same ones."""
    generator = torch.Generator().manual_seed(config["data_seed"] + 1000 * step + rank)
    size = config["vit"]["kwargs"]["img_size"]
    images = torch.randn(config["batch"], 3, size, size, generator=generator)
    labels = torch.randint(0, config["num_classes"], (config["batch"],), generator=generator)
    return images, labels


def gathered(value: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def guarded(results: dict[str, Any], key: str, check: Callable[[], dict[str, Any]]) -> None:
    try:
        results[key] = {"ok": True, **check()}
    except Exception as exc:  # noqa: BLE001 - recorded for the test to report
        results[key] = {"ok": False, "type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}
    # a collective after every check: a rank whose check failed before reaching a collective still
    # meets its peer here, and the exchange shows whether both ranks fared the same
    results[key]["peers_ok"] = gathered(results[key]["ok"])


def optimizer_report(optimizer: torch.optim.Optimizer, plan_groups: list[dict[str, Any]], model: torch.nn.Module) -> dict[str, Any]:
    in_optimizer = [id(p) for g in optimizer.param_groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    return {
        "groups": [
            [g["group_name"], g["lr"], g["lwd_lr_scale"], g["weight_decay"], len(g["params"])] for g in optimizer.param_groups
        ],
        "plan_scales": [g["lr_scale"] for g in plan_groups],
        "tensors_in_optimizer": len(in_optimizer),
        "distinct_tensors_in_optimizer": len(set(in_optimizer)),
        "same_tensors_as_model": set(in_optimizer) == set(trainable),
        "fingerprint": optimizer.lwd_rules_fingerprint,
        "state_dict_fingerprint": optimizer.state_dict().get("lwd_rules", {}).get("fingerprint"),
    }


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: dict[str, Any], rank: int) -> list[float]:
    losses = []
    for step in range(config["steps"]):
        images, labels = batch(config, rank, step)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # torch/timm deprecation chatter; lwd-rules problems raise anyway
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=config["collective_timeout"]))
    lr = config["lr"]
    results: dict[str, Any] = {"rank": rank, "world_size": world, "torch": torch.__version__}
    from torch.nn.parallel import DistributedDataParallel as DDP

    # ---- DDP: plans (explicit rule set, and detection through .module) ----
    ddp_vit = DDP(build(config["vit"]))

    def ddp_vit_plan() -> dict[str, Any]:
        data = summary(resolve(ddp_vit, config["vit"]["rules"], lr=lr))
        data["all_fingerprints"] = gathered(data["fingerprint"])
        return data

    def ddp_convnext_plan() -> dict[str, Any]:
        ddp = DDP(build(config["convnext"]))
        data = summary(resolve(ddp, lr=lr))
        data["all_fingerprints"] = gathered(data["fingerprint"])
        return data

    def ddp_vit_timm_plan() -> dict[str, Any]:  # the same DDP model, under timm's own numbering
        data = summary(resolve(ddp_vit, config["vit_timm"]["rules"], lr=lr))
        data["all_fingerprints"] = gathered(data["fingerprint"])
        return data

    guarded(results, "ddp_vit_plan", ddp_vit_plan)
    guarded(results, "ddp_vit_timm_plan", ddp_vit_timm_plan)
    guarded(results, "ddp_convnext_plan", ddp_convnext_plan)

    # ---- DDP: two real optimizer steps through create_optimizer(ddp_model, ...) ----
    def ddp_train() -> dict[str, Any]:
        plan = resolve(ddp_vit, config["vit"]["rules"], lr=lr)
        optimizer = create_optimizer(ddp_vit, config["vit"]["rules"], lr=lr)
        data = optimizer_report(optimizer, plan.param_groups, ddp_vit)
        data["losses"] = train(ddp_vit, optimizer, config, rank)
        data["groups_after"] = [[g["group_name"], g["lr"], g["lwd_lr_scale"]] for g in optimizer.param_groups]
        check_optimizer(optimizer, plan)
        torch.save({k: v.detach().clone() for k, v in ddp_vit.module.state_dict().items()}, out / f"ddp_rank{rank}.pt")
        data["all_fingerprints"] = gathered(optimizer.lwd_rules_fingerprint)
        return data

    guarded(results, "ddp_train", ddp_train)

    # ---- FSDP2: fully_shard on a 2-process CPU mesh ----
    fsdp: dict[str, Any] = {}
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
    except ImportError as exc:
        fsdp = {"unavailable": f"{type(exc).__name__}: {exc}"}
    results["fsdp2"] = fsdp
    if not fsdp:
        state: dict[str, Any] = {}

        def shard(model: torch.nn.Module, children: Any) -> torch.nn.Module:
            if "mesh" not in state:
                state["mesh"] = init_device_mesh("cpu", (world,))
            for child in children:
                fully_shard(child, mesh=state["mesh"])
            fully_shard(model, mesh=state["mesh"])
            return model

        def fsdp_vit_plan() -> dict[str, Any]:
            model = build(config["vit"])
            state["vit"] = shard(model, model.blocks)
            params = list(model.parameters())
            data = summary(resolve(model, config["vit"]["rules"], lr=lr))
            data["class"] = f"{type(model).__module__}.{type(model).__qualname__}"
            data["param_types"] = sorted({type(p).__name__ for p in params})
            data["all_fingerprints"] = gathered(data["fingerprint"])
            return data

        def fsdp_vit_timm_plan() -> dict[str, Any]:
            data = summary(resolve(state["vit"], config["vit_timm"]["rules"], lr=lr))
            data["all_fingerprints"] = gathered(data["fingerprint"])
            return data

        def fsdp_vit_train() -> dict[str, Any]:
            model = state["vit"]
            plan = resolve(model, config["vit"]["rules"], lr=lr)
            optimizer = create_optimizer(model, config["vit"]["rules"], lr=lr)
            data = optimizer_report(optimizer, plan.param_groups, model)
            data["losses"] = train(model, optimizer, config, rank)
            check_optimizer(optimizer, plan)
            full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in model.state_dict().items()}
            torch.save(full, out / f"fsdp_rank{rank}.pt")
            return data

        def fsdp_convnext_plan() -> dict[str, Any]:
            model = build(config["convnext"])
            shard(model, model.stages)
            data = summary(resolve(model, lr=lr))
            data["class"] = f"{type(model).__module__}.{type(model).__qualname__}"
            data["all_fingerprints"] = gathered(data["fingerprint"])
            return data

        guarded(fsdp, "vit_plan", fsdp_vit_plan)
        if all(fsdp["vit_plan"]["peers_ok"]):
            guarded(fsdp, "vit_timm_plan", fsdp_vit_timm_plan)
            guarded(fsdp, "vit_train", fsdp_vit_train)
        guarded(fsdp, "convnext_plan", fsdp_convnext_plan)

    (out / f"rank{rank}.json").write_text(json.dumps(results, indent=1, default=repr))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
