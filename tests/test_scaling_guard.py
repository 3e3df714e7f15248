"""A guard against accidental quadratic paths in resolve() and create_optimizer(): it counts work, it times nothing.

On models of 10,000 and 100,000 parameter tensors the number of rule evaluations per module,
formula evaluations, weight-decay tests and groups must stay within bounds proportional to the
model (or constant), so a change that re-runs regexes per parameter per rule, or makes one group
per parameter, fails here long before anyone measures it.
"""

from __future__ import annotations

import pytest
import torch

from lwd_rules import create_optimizer, load_rules, resolve
from lwd_rules.expr import Formula
from lwd_rules.grouping import Grouper
from lwd_rules import identify
from lwd_rules.identify import LayerIdentifier
from lwd_rules.orchestrator import _Walk
from lwd_rules.plugins import new_registry
from lwd_rules.testing import MANY_BLOCKS_RULES, many_blocks_model

def counted(monkeypatch: pytest.MonkeyPatch, owner: type, name: str, calls: dict[str, int]) -> None:
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def work(monkeypatch: pytest.MonkeyPatch, blocks: int) -> tuple[dict[str, int], int, int]:
    with torch.device("meta"):
        model = many_blocks_model(blocks)
    calls: dict[str, int] = {}
    with monkeypatch.context() as patch:
        for owner, name in [(LayerIdentifier, "for_module"), (LayerIdentifier, "for_children"), (LayerIdentifier, "_place_children"), (LayerIdentifier, "_layer_id"), (Formula, "__call__"), (LayerIdentifier, "identify"), (_Walk, "_weight_decay")]:
            counted(patch, owner, name, calls)
        counted(patch, identify, "_holds_parameters", calls)
        add_keys = Grouper.add_keys

        def keys_counted(self, keys, *args):
            calls["keys"] = calls.get("keys", 0) + len(keys)
            return add_keys(self, keys, *args)

        patch.setattr(Grouper, "add_keys", keys_counted)
        plan = resolve(model, load_rules(MANY_BLOCKS_RULES, registry=new_registry()), registry=new_registry())
    tensors = len(plan.params)
    assert tensors == 4 * blocks + 4
    return calls, tensors, len(plan.param_groups)


@pytest.mark.parametrize("blocks", [2_500, 25_000])
def test_work_is_linear_in_modules_and_groups_are_bounded(monkeypatch, blocks):
    calls, tensors, groups = work(monkeypatch, blocks)
    # layers.count reads the block names, and looks inside blocks only until the highest-numbered
    # one holding a parameter is found: here the last one.
    assert calls["_holds_parameters"] == 1
    # Rules are searched per module above the blocks, once for the whole list of blocks (their
    # rule ends in (\d+)\., so the block's number is its name), never per block or per parameter.
    assert calls["for_module"] == 4  # the root, stem, blocks container and head
    assert calls["for_children"] == calls["_place_children"] == 1  # one search for the whole list of blocks
    assert calls.get("identify", 0) == 0  # no parameter needed its full name matched
    # A layer id through the cache only for the stem: each block's formula runs once, in
    # _place_children; Formula.__call__ only for the default and num_layers.
    assert calls["_layer_id"] == 1
    assert calls["__call__"] <= 2
    # Weight decay is decided once per distinct (leaf name, ndim), not per parameter.
    assert calls["_weight_decay"] <= 8
    # 26 layer ids (0..25), each with and without decay: groups never grow with the model.
    assert groups <= 2 * 26
    # Grouping gets one key per (layer id, weight decay) the walk met, not one per parameter.
    assert calls["keys"] <= 2 * 26 + 2


def test_create_optimizer_hashes_each_tensor_as_often_at_100k_tensors_as_at_10k(monkeypatch):
    """The whole of create_optimizer(), torch's constructor included, does linear work. torch
    hashes each new group's tensors twice (a set to find repeats in it, one to compare with the
    earlier groups) and every earlier group's once more, so its hashes per tensor follow the
    number of groups, which stays fixed; lwd-rules keys tensors by id and hashes none itself."""
    rules = load_rules(MANY_BLOCKS_RULES, registry=new_registry())
    per_tensor = {}
    for blocks in (2_500, 25_000):
        with torch.device("meta"):
            model = many_blocks_model(blocks)
        calls: dict[str, int] = {}
        with monkeypatch.context() as patch:
            counted(patch, torch.Tensor, "__hash__", calls)
            optimizer = create_optimizer(model, rules, registry=new_registry())
        sizes = [len(group["params"]) for group in optimizer.param_groups]
        assert len(sizes) == 52 and sum(sizes) == 4 * blocks + 4
        assert calls["__hash__"] == sum(2 * size + sum(sizes[:k]) for k, size in enumerate(sizes))
        per_tensor[blocks] = calls["__hash__"] / sum(sizes)
    assert per_tensor[2_500] == pytest.approx(per_tensor[25_000], rel=1e-3)
