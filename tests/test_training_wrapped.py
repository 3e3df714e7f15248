"""Wrapped models get the bare model's plan: torch.compile, activation checkpointing, DDP and FSDP2.

"Same plan" means the same rows (canonical name, layer id, lr scale, weight decay, group), the same
groups in the same order (name, lr scale, weight decay, size), the same skipped list and the same
``plan.fingerprint()``. DDP and FSDP2 run for real: two processes on CPU with gloo
(``tests/workers/wrapped_worker.py``), started once for the whole module; each rank exchanges its
fingerprint with ``all_gather_object`` and the test compares both with the bare model's, computed
here. DDP also trains two steps through ``create_optimizer(ddp_model, ...)``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing, checkpoint_wrapper

from lwd_rules import canonical_name, create_optimizer, resolve

DIST = Path(__file__).parent / "workers"
WORKER = DIST / "wrapped_worker.py"


def _load_worker() -> Any:
    spec = importlib.util.spec_from_file_location("lwd_rules_tests_wrapped_worker", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()  # summary(), build() and batch() are shared with the subprocesses

LR = 1e-3
CONFIG: dict[str, Any] = {
    "lr": LR,
    "vit": {"name": "vit_tiny_patch16_224", "kwargs": {"img_size": 32}, "seed": 0, "rules": "vit"},
    "vit_timm": {"name": "vit_tiny_patch16_224", "kwargs": {"img_size": 32}, "seed": 0, "rules": "timm"},  # ids from timm's matcher
    "convnext": {"name": "convnext_atto", "kwargs": {}, "seed": 0},  # rule set by detection
    "steps": 2,
    "batch": 2,
    "num_classes": 1000,
    "data_seed": 1234,
    "collective_timeout": 120,
}
RUN_TIMEOUT = 240  # seconds for the whole 2-process run: the suite never hangs on a stuck collective
WORLD = 2
KINDS = ("vit", "vit_timm", "convnext")


def bare_plan(kind: str) -> dict[str, Any]:
    model = worker.build(CONFIG[kind])
    return worker.summary(resolve(model, CONFIG[kind].get("rules"), lr=LR))


@pytest.fixture(scope="module")
def bare() -> dict[str, dict[str, Any]]:
    return {kind: bare_plan(kind) for kind in KINDS}


def test_bare_plans_are_what_the_wrappers_are_compared_with(bare):
    assert bare["vit"]["rule_set"] == "vit"
    assert bare["vit_timm"]["rule_set"] == "timm"
    assert [row[1:] for row in bare["vit_timm"]["params"]] != [row[1:] for row in bare["vit"]["params"]]  # two numberings
    assert bare["convnext"]["rule_set"] == "convnext-timm"  # found by detection
    for plan in bare.values():
        assert len({scale for _, scale, _, _ in plan["groups"]}) >= 3
        assert not plan["skipped"]


def assert_same_plan(got: dict[str, Any], expected: dict[str, Any], what: str) -> None:
    assert got["rule_set"] == expected["rule_set"], what
    assert got["params"] == expected["params"], f"{what}: rows differ"
    assert got["groups"] == expected["groups"], f"{what}: groups differ"
    assert got["skipped"] == expected["skipped"], what
    assert got["fingerprint"] == expected["fingerprint"], what


# --------------------------------------------------------------------------------------------
# In process: torch.compile and activation checkpointing


def blocks_of(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Module]]:
    """(parent, attribute, block) for every transformer / ConvNeXt block."""
    if hasattr(model, "blocks"):
        return [(model.blocks, str(i), block) for i, block in enumerate(model.blocks)]
    return [(stage.blocks, str(i), block) for stage in model.stages for i, block in enumerate(stage.blocks)]


def block_class(model: torch.nn.Module) -> type:
    return type(blocks_of(model)[0][2])


def compile_whole(model: torch.nn.Module) -> torch.nn.Module:
    return torch.compile(model)


def compile_blocks(model: torch.nn.Module) -> torch.nn.Module:
    for parent, attr, block in blocks_of(model):
        setattr(parent, attr, torch.compile(block))
    return model


def checkpoint_applied(model: torch.nn.Module) -> torch.nn.Module:
    kind = block_class(model)
    apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper, check_fn=lambda m: isinstance(m, kind))
    return model


def checkpoint_each_block(model: torch.nn.Module) -> torch.nn.Module:
    for parent, attr, block in blocks_of(model):
        setattr(parent, attr, checkpoint_wrapper(block))
    return model


def checkpoint_then_compile(model: torch.nn.Module) -> torch.nn.Module:
    return torch.compile(checkpoint_applied(model))


WRAPPERS = {
    "torch.compile": compile_whole,
    "torch.compile per block": compile_blocks,
    "apply_activation_checkpointing": checkpoint_applied,
    "checkpoint_wrapper per block": checkpoint_each_block,
    "checkpointing + torch.compile": checkpoint_then_compile,
}
MARKERS = {
    "torch.compile": "_orig_mod.",
    "torch.compile per block": "._orig_mod.",
    "apply_activation_checkpointing": "._checkpoint_wrapped_module.",
    "checkpoint_wrapper per block": "._checkpoint_wrapped_module.",
    "checkpointing + torch.compile": "._checkpoint_wrapped_module.",
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_wrapped_model_gets_the_bare_plan(bare, kind, wrapper):
    model = WRAPPERS[wrapper](worker.build(CONFIG[kind]))
    names = [name for name, _ in model.named_modules()] + [name for name, _ in model.named_parameters()]
    assert any(MARKERS[wrapper] in name or name.startswith(MARKERS[wrapper]) for name in names), "the wrapper is in the names"
    plan = resolve(model, CONFIG[kind].get("rules"), lr=LR)
    assert_same_plan(worker.summary(plan), bare[kind], f"{kind} under {wrapper}")


@pytest.mark.parametrize("wrapper", ["torch.compile", "apply_activation_checkpointing"])
def test_optimizer_from_the_wrapper_holds_the_bare_tensors(bare, wrapper):
    """create_optimizer(wrapped) optimizes the model's own tensors, at lr × the bare plan's scales."""
    model = worker.build(CONFIG["vit"])
    tensors = [id(p) for p in model.parameters()]
    wrapped = WRAPPERS[wrapper](model)
    optimizer = create_optimizer(wrapped, "vit", lr=LR)
    held = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(held) == sorted(tensors)
    assert [[g["group_name"], g["lr"], g["weight_decay"], len(g["params"])] for g in optimizer.param_groups] == [
        [name, LR * scale, wd, size] for name, scale, wd, size in bare["vit"]["groups"]
    ]
    assert optimizer.state_dict()["lwd_rules"]["fingerprint"] == bare["vit"]["fingerprint"]


def test_checkpointed_model_trains_one_step_like_the_bare_model():
    """The wrapper changes names only: a step through it equals a step on the bare model."""
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([3, 7])
    results = []
    for wrap in (lambda m: m, checkpoint_applied):
        model = wrap(worker.build(CONFIG["vit"]))
        optimizer = create_optimizer(model, "vit", lr=LR)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        results.append({canonical_name(k): v for k, v in model.state_dict().items()})
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        torch.testing.assert_close(results[1][key], results[0][key], rtol=0, atol=1e-6, msg=key)


# --------------------------------------------------------------------------------------------
# Two processes, CPU, gloo: DDP and FSDP2


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(out: Path, config_file: Path) -> list[subprocess.CompletedProcess[str]]:
    port = free_port()
    procs = []
    for rank in range(WORLD):
        env = dict(os.environ)
        env.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            WORLD_SIZE=str(WORLD),
            LOCAL_RANK=str(rank),
            OMP_NUM_THREADS="1",
            CUDA_VISIBLE_DEVICES="",
            LWD_RULES_PLUGINS="convnext,timm",
            LWD_RULES_STRICT_PLUGINS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), str(config_file), str(out)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
                cwd=DIST,
            )
        )
    finished = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
            finished.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        outputs = []
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            outputs.append(stderr[-3000:])
        pytest.fail(f"the 2-process run did not finish in {RUN_TIMEOUT}s:\n" + "\n---\n".join(outputs))
    return finished


@pytest.fixture(scope="module")
def dist_run(tmp_path_factory) -> dict[str, Any]:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no torch.distributed gloo backend (torch.distributed.is_gloo_available() is False)")
    failures: list[str] = []
    for attempt in range(2):  # once more after any failure: the free port can be taken between
        out = tmp_path_factory.mktemp("dist")  # free_port() and the rendezvous, whatever the message
        config_file = out / "config.json"
        config_file.write_text(json.dumps(CONFIG))
        runs = launch(out, config_file)
        if all(run.returncode == 0 for run in runs):
            break
        failures += [f"attempt {attempt + 1}, rank {i} exit {r.returncode}:\n{r.stderr[-4000:]}" for i, r in enumerate(runs)]
        if attempt == 1:  # a real fault fails both times
            pytest.fail("a rank failed:\n" + "\n---\n".join(failures))
    ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(WORLD)]
    return {"dir": out, "ranks": ranks}


def check_result(result: dict[str, Any], what: str) -> dict[str, Any]:
    assert result["ok"], f"{what} failed: {result['type']}: {result['message']}\n{result['traceback']}"
    assert result["peers_ok"] == [True] * WORLD, what
    return result


@pytest.mark.parametrize("kind", KINDS)
def test_ddp_both_ranks_build_the_bare_plan(bare, dist_run, kind):
    for rank, results in enumerate(dist_run["ranks"]):
        assert results["world_size"] == WORLD
        got = check_result(results[f"ddp_{kind}_plan"], f"rank {rank}: resolve(DDP({kind}))")
        assert_same_plan(got, bare[kind], f"rank {rank}, DDP({kind})")
        assert got["all_fingerprints"] == [bare[kind]["fingerprint"]] * WORLD


def test_ddp_optimizer_groups_have_lr_times_scale(bare, dist_run):
    for rank, results in enumerate(dist_run["ranks"]):
        got = check_result(results["ddp_train"], f"rank {rank}: create_optimizer(DDP) and two steps")
        expected = [[name, LR * scale, scale, wd, size] for name, scale, wd, size in bare["vit"]["groups"]]
        assert got["groups"] == expected
        assert got["groups_after"] == [row[:3] for row in expected]  # no scheduler: the lrs stay lr × scale
        assert got["plan_scales"] == [scale for _, scale, _, _ in bare["vit"]["groups"]]
        assert got["same_tensors_as_model"]
        assert got["tensors_in_optimizer"] == got["distinct_tensors_in_optimizer"] == len(bare["vit"]["params"])
        assert got["fingerprint"] == got["state_dict_fingerprint"] == bare["vit"]["fingerprint"]
        assert got["all_fingerprints"] == [bare["vit"]["fingerprint"]] * WORLD


def reference_training() -> dict[str, torch.Tensor]:
    """Two steps in one process on both ranks' batches at once: what DDP's averaged gradients give."""
    model = worker.build(CONFIG["vit"])
    optimizer = create_optimizer(model, "vit", lr=LR)
    for step in range(CONFIG["steps"]):
        parts = [worker.batch(CONFIG, rank, step) for rank in range(WORLD)]
        images, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model.state_dict()


def test_ddp_two_steps_leave_identical_weights_on_both_ranks(dist_run):
    for rank, results in enumerate(dist_run["ranks"]):
        check_result(results["ddp_train"], f"rank {rank}: two DDP steps")
    weights = [torch.load(dist_run["dir"] / f"ddp_rank{rank}.pt") for rank in range(WORLD)]
    initial = worker.build(CONFIG["vit"]).state_dict()
    assert weights[0].keys() == weights[1].keys() == initial.keys()
    for key in initial:
        assert torch.equal(weights[0][key], weights[1][key]), key
    changed = [key for key in initial if not torch.equal(weights[0][key], initial[key])]
    assert len(changed) == len(initial), f"not trained: {sorted(set(initial) - set(changed))}"
    # the ranks trained on different batches: the result is one step on both batches, not on either
    # (compared as a whole: AdamW's first steps amplify float noise in near-zero gradients, such as
    # the attention key biases', so single elements may differ by up to lr × scale)
    reference = reference_training()
    flat = lambda state: torch.cat([state[key].flatten() for key in sorted(initial)])  # noqa: E731
    distance = (flat(weights[0]) - flat(reference)).norm() / (flat(reference) - flat(initial)).norm()
    assert distance < 1e-2, f"DDP's weights are {distance:.3g} × the update away from one step on both batches"


def fsdp2(dist_run: dict[str, Any]) -> list[dict[str, Any]]:
    per_rank = [results["fsdp2"] for results in dist_run["ranks"]]
    if "unavailable" in per_rank[0]:
        pytest.skip(f"this torch build lacks torch.distributed.fsdp.fully_shard / init_device_mesh: {per_rank[0]['unavailable']}")
    return per_rank


def test_fsdp2_fully_shard_on_cpu_gloo_gives_the_bare_plan(bare, dist_run):
    """fully_shard swaps the model's class and turns parameters into DTensors; names stay."""
    for rank, fsdp in enumerate(fsdp2(dist_run)):
        got = check_result(fsdp["vit_plan"], f"rank {rank}: resolve(fully_shard(vit))")
        assert got["class"].endswith("FSDPVisionTransformer"), got["class"]
        assert got["param_types"] == ["DTensor"]
        assert_same_plan(got, bare["vit"], f"rank {rank}, fully_shard(vit)")
        assert got["all_fingerprints"] == [bare["vit"]["fingerprint"]] * WORLD
        got = check_result(fsdp["vit_timm_plan"], f"rank {rank}: resolve(fully_shard(vit), 'timm')")
        assert_same_plan(got, bare["vit_timm"], f"rank {rank}, fully_shard(vit) under 'timm'")
        assert got["all_fingerprints"] == [bare["vit_timm"]["fingerprint"]] * WORLD


def test_fsdp2_optimizer_trains_like_ddp(bare, dist_run):
    for rank, fsdp in enumerate(fsdp2(dist_run)):
        got = check_result(fsdp["vit_train"], f"rank {rank}: create_optimizer(fully_shard(vit)) and two steps")
        assert got["groups"] == [[name, LR * scale, scale, wd, size] for name, scale, wd, size in bare["vit"]["groups"]]
        assert got["same_tensors_as_model"] and got["tensors_in_optimizer"] == got["distinct_tensors_in_optimizer"]
        assert got["fingerprint"] == bare["vit"]["fingerprint"]
    sharded = [torch.load(dist_run["dir"] / f"fsdp_rank{rank}.pt") for rank in range(WORLD)]
    ddp = torch.load(dist_run["dir"] / "ddp_rank0.pt")
    assert sharded[0].keys() == ddp.keys()
    for key in ddp:
        assert torch.equal(sharded[0][key], sharded[1][key]), key
    flat = lambda state: torch.cat([state[key].flatten() for key in sorted(ddp)])  # noqa: E731
    initial = worker.build(CONFIG["vit"]).state_dict()
    distance = (flat(sharded[0]) - flat(ddp)).norm() / (flat(ddp) - flat(initial)).norm()
    assert distance < 1e-2, f"FSDP2's weights are {distance:.3g} × the update away from DDP's"


def test_fsdp2_model_is_still_detected(bare, dist_run):
    """Detection through fully_shard: the class becomes ``FSDPConvNeXt`` (a subclass of ConvNeXt,
    defined in torch.distributed.fsdp), the same ConvNeXt for every hook."""
    for rank, fsdp in enumerate(fsdp2(dist_run)):
        got = check_result(fsdp["convnext_plan"], f"rank {rank}: resolve(fully_shard(convnext_atto)) with detection")
        assert_same_plan(got, bare["convnext"], f"rank {rank}, fully_shard(convnext)")
        assert got["all_fingerprints"] == [bare["convnext"]["fingerprint"]] * WORLD


def test_resolve_leaves_the_wrapped_model_untouched():
    """resolve() leaves the wrapped model untouched (no parameter frozen, renamed or moved)."""
    model = checkpoint_applied(worker.build(CONFIG["vit"]))
    before = {name: (p.requires_grad, p.data_ptr()) for name, p in model.named_parameters()}
    snapshot = copy.deepcopy(model.state_dict())
    resolve(model, "vit", lr=LR)
    assert {name: (p.requires_grad, p.data_ptr()) for name, p in model.named_parameters()} == before
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshot[key])
