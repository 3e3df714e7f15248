"""The model walk behind resolve(): counts, shared and empty modules, models that list their own
modules, weight-decay caching by module name, and plan.params rebuilt on demand.

Every expectation is written out by hand from the model's structure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch
import torch.nn as nn

from lwd_rules import load_rules, resolve
from lwd_rules.plugins import new_registry

COUNTED = {
    "layers": {
        "count": {"blocks": r"^blocks\.(\d+)\."},
        "num_layers": "blocks",
        "rules": [{"match": r"^blocks\.(?P<i>\d+)\.", "layer": "i + 1"}],
        "default": "num_layers + 1",
    },
    "layer_decay": {"rate": 0.5},
    "weight_decay": {"value": 0.1, "exclude": [{"pattern": "ndim<=1", "allow_unused": True}]},
}


def resolved(model: nn.Module, rules: dict, **kwargs):
    """The plan for ``model`` and the rules ``rules``, with no plugin installed."""
    return resolve(model, load_rules(rules, registry=new_registry()), registry=new_registry(), **kwargs)


def run(model: nn.Module, rules: dict, **kwargs) -> dict[str, tuple[int, float, float]]:
    plan = resolved(model, rules, **kwargs)
    return {row.name: (row.layer_id, row.lr_scale, row.weight_decay) for row in plan.params}


class Deep(nn.Module):
    """A block whose only parameters are two levels down."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.ReLU(), nn.Sequential(nn.Linear(2, 2, bias=False)))


def test_counts_see_blocks_whose_parameters_are_deep_and_skip_blocks_without_any():
    model = nn.Module()
    model.blocks = nn.ModuleList([Deep(), nn.ReLU(), Deep(), nn.Identity()])  # blocks.1 and .3 hold nothing
    model.head = nn.Linear(2, 1, bias=False)
    rows = run(model, COUNTED)
    # blocks = 3 (blocks.2 is the highest block with a parameter), so N = 3 and the head is layer 4.
    assert rows == {
        "blocks.0.inner.1.0.weight": (1, 0.5**3, 0.1),
        "blocks.2.inner.1.0.weight": (3, 0.5**1, 0.1),
        "head.weight": (4, 1.0, 0.1),
    }


def test_a_module_shared_by_several_blocks_counts_where_it_first_appears():
    shared = nn.Linear(2, 2, bias=False)
    model = nn.Module()
    model.blocks = nn.ModuleList([shared, shared, shared])  # named_modules() lists it once, as blocks.0
    model.head = nn.Linear(2, 1, bias=False)
    assert run(model, COUNTED) == {"blocks.0.weight": (1, 0.5, 0.1), "head.weight": (2, 1.0, 0.1)}


class Flattening(nn.Module):
    """Overrides named_parameters the way FSDP (1) does, to hide its wrapper component."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._fsdp_wrapped_module = inner

    def named_parameters(self, *args, **kwargs) -> Iterator[tuple[str, nn.Parameter]]:
        for name, param in super().named_parameters(*args, **kwargs):
            yield name.replace("_fsdp_wrapped_module.", ""), param


def blocks_model(depth: int = 3) -> nn.Module:
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(depth)])
    model.head = nn.Linear(2, 1)
    return model


def test_a_model_with_its_own_named_parameters_resolves_like_the_bare_model():
    bare = blocks_model()
    wrapped = Flattening(bare)
    expected = {  # blocks = 3: block i -> i + 1, head -> 4; biases without decay
        **{f"blocks.{i}.weight": (i + 1, 0.5 ** (3 - i), 0.1) for i in range(3)},
        **{f"blocks.{i}.bias": (i + 1, 0.5 ** (3 - i), 0.0) for i in range(3)},
        "head.weight": (4, 1.0, 0.1),
        "head.bias": (4, 1.0, 0.0),
    }
    assert run(bare, COUNTED) == expected
    rows = run(wrapped, COUNTED)
    assert rows == {f"_fsdp_wrapped_module.{name}": value for name, value in expected.items()}
    registry = new_registry()
    rules = load_rules(COUNTED, registry=registry)
    assert resolve(wrapped, rules, registry=registry).fingerprint() == resolve(bare, rules, registry=registry).fingerprint()


def test_modules_without_parameters_or_children_change_nothing():
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Sequential(nn.ReLU(), nn.Linear(2, 2, bias=False), nn.Dropout()) for _ in range(2)])
    model.act = nn.GELU()
    model.head = nn.Linear(2, 1, bias=False)
    assert run(model, COUNTED) == {
        "blocks.0.1.weight": (1, 0.25, 0.1),
        "blocks.1.1.weight": (2, 0.5, 0.1),
        "head.weight": (3, 1.0, 0.1),
    }


class GrnBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.grn = nn.Linear(2, 2)
        self.mygrn = nn.Linear(2, 2, bias=False)
        self.fc = nn.Linear(2, 2, bias=False)


def grn_model() -> nn.Module:
    model = nn.Module()
    model.grn = nn.Linear(2, 2, bias=False)  # top level: "grn.weight" has no dot before grn
    model.blocks = nn.ModuleList([GrnBlock() for _ in range(2)])
    return model


@pytest.mark.parametrize(
    ("exclude", "without_decay"),
    [
        # A suffix glob reads the module's own name: only blocks.i.grn.weight, not the top-level grn.
        (["*.grn.weight"], {"blocks.0.grn.weight", "blocks.1.grn.weight"}),
        # A glob that starts mid-name matches any module name ending in "grn", the top level too.
        (["*grn.weight"], {"grn.weight", "blocks.0.grn.weight", "blocks.1.grn.weight", "blocks.0.mygrn.weight", "blocks.1.mygrn.weight"}),
        (["*.bias"], {"blocks.0.grn.bias", "blocks.1.grn.bias"}),
    ],
)
def test_weight_decay_globs_read_module_names_whatever_the_block_index(exclude, without_decay):
    rules = {
        "layers": {"num_layers": 2, "rules": [{"match": r"^blocks\.(?P<i>\d+)\.", "layer": "i + 1"}], "default": 0},
        "layer_decay": {"rate": 0.5},
        "weight_decay": {"value": 0.1, "exclude": exclude},
    }
    rows = run(grn_model(), rules)
    assert {name for name, (_, _, wd) in rows.items() if wd == 0.0} == without_decay
    assert all(wd == 0.1 for name, (_, _, wd) in rows.items() if name not in without_decay)


def test_plan_params_after_the_model_changed_is_an_error_not_a_wrong_list():
    model = blocks_model()
    registry = new_registry()
    plan = resolve(model, load_rules(COUNTED, registry=registry), registry=registry)
    model.head = nn.Linear(2, 1)  # new tensors: the plan's groups no longer hold the model's parameters
    with pytest.raises(RuntimeError, match=r"changed after resolve\(\)"):
        list(plan.params)


def test_plan_params_is_built_once_and_keeps_the_model_order():
    model = blocks_model(2)
    registry = new_registry()
    plan = resolve(model, load_rules(COUNTED, registry=registry), registry=registry)
    names = [row.name for row in plan.params]
    assert names == [name for name, _ in model.named_parameters()]
    assert plan.params.tensors() == [param for _, param in model.named_parameters()]  # type: ignore[attr-defined]
    model.head = nn.Linear(2, 1)  # once built, the rows are the plan's own
    assert [row.name for row in plan.params] == names


def test_frozen_parameters_keep_their_layer_in_num_layers():
    model = blocks_model(3)
    for param in model.blocks[2].parameters():
        param.requires_grad_(False)
    rules = {**COUNTED, "layers": {k: v for k, v in COUNTED["layers"].items() if k not in ("count", "num_layers")}}
    rules["layers"]["default"] = 9  # the head sits above every block; N = max id - 1
    registry = new_registry()
    plan = resolve(model, load_rules(rules, registry=registry), registry=registry)
    assert plan.num_layers == 8
    assert [s.name for s in plan.skipped] == ["blocks.2.weight", "blocks.2.bias"]


def test_tied_parameters_are_grouped_once_under_their_first_name():
    model = blocks_model(2)
    model.head = nn.Linear(2, 2)
    model.head.weight = model.blocks[0].weight  # tied, as an LM head to its embedding
    rows = run(model, COUNTED)
    assert "head.weight" not in rows
    assert rows["blocks.0.weight"] == (1, 0.25, 0.1)
    assert rows["head.bias"] == (3, 1.0, 0.0)


def test_meta_models_of_many_blocks_resolve_every_parameter():
    with torch.device("meta"):
        model = blocks_model(500)
    rows = run(model, COUNTED)
    assert len(rows) == 2 * 500 + 2
    assert rows["blocks.499.weight"] == (500, 0.5, 0.1)
    assert rows["blocks.0.bias"] == (1, 0.5**500, 0.0)


def one_dot_count(count: str, rule: str) -> dict:
    return {
        "layers": {"count": {"n": count}, "num_layers": "n", "rules": [{"match": rule, "layer": "i + 1"}], "default": "num_layers + 1"},
        "layer_decay": {"rate": 0.5},
    }


class Layers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer0, self.layer1, self.layer2 = (nn.Linear(2, 2, bias=False) for _ in range(3))
        self.head = nn.Linear(2, 1, bias=False)


def test_counts_read_below_a_leading_prefix_that_is_cut_off():
    peft_like = nn.Module()  # PEFT's PeftModel.base_model.model prefix, removed only at the start
    peft_like.base_model = nn.Module()
    peft_like.base_model.model = Layers()
    rows = run(peft_like, one_dot_count(r"^layer(\d+)\.", r"^layer(?P<i>\d+)\."))
    assert rows == {
        "base_model.model.layer0.weight": (1, 0.125, 0.0),
        "base_model.model.layer1.weight": (2, 0.25, 0.0),
        "base_model.model.layer2.weight": (3, 0.5, 0.0),
        "base_model.model.head.weight": (4, 1.0, 0.0),
    }


def test_a_module_shared_inside_two_blocks_counts_only_in_the_first():
    shared = nn.Linear(2, 2, bias=False)
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Sequential(shared), nn.Sequential(shared)])  # blocks.1 lists nothing new
    model.head = nn.Linear(2, 1, bias=False)
    rows = run(model, one_dot_count(r"^blocks\.(\d+)\.", r"^blocks\.(?P<i>\d+)\."))
    assert rows == {"blocks.0.0.weight": (1, 0.5, 0.0), "head.weight": (2, 1.0, 0.0)}


def test_a_module_that_contains_itself_is_walked_once():
    model = nn.Module()
    inner = nn.Sequential(nn.ReLU())
    model.blocks = nn.ModuleList([nn.Sequential(inner), nn.Linear(2, 2, bias=False)])
    inner.add_module("loop", model.blocks[0])  # a cycle: blocks.0.0.loop is blocks.0
    model.head = nn.Linear(2, 1, bias=False)
    rows = run(model, one_dot_count(r"^blocks\.(\d+)\.", r"^blocks\.(?P<i>\d+)\."))
    assert rows == {"blocks.1.weight": (2, 0.5, 0.0), "head.weight": (3, 1.0, 0.0)}


class EqualByValue(nn.Linear):
    """A module class comparing equal to every other of its kind (as a dataclass-like __eq__ would)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EqualByValue)

    def __hash__(self) -> int:
        return 1


def test_modules_equal_by_value_are_still_distinct_modules():
    model = nn.Module()
    model.blocks = nn.ModuleList([EqualByValue(2, 2, bias=False) for _ in range(3)])
    model.head = nn.Linear(2, 1, bias=False)
    rows = run(model, COUNTED)
    assert sorted(rows) == ["blocks.0.weight", "blocks.1.weight", "blocks.2.weight", "head.weight"]


class ListsAnother(nn.Module):
    """No parameters or children of its own, but its named_modules() lists a module it keeps aside."""

    def __init__(self, other: nn.Module) -> None:
        super().__init__()
        self.__dict__["other"] = other

    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        yield prefix, self
        yield from self.other.named_modules(memo, prefix + ".other", remove_duplicate)


def test_an_empty_module_with_its_own_named_modules_is_honoured():
    model = nn.Module()
    model.side = ListsAnother(nn.Linear(2, 2, bias=False))
    model.head = nn.Linear(2, 1, bias=False)
    rows = run(model, {"layers": {"num_layers": 0, "default": 0}})
    assert sorted(rows) == ["head.weight", "side.other.weight"]


def test_a_frozen_parameter_is_not_evaluated_by_a_rule_that_reads_its_name():
    model = nn.Module()
    model.emb = nn.Embedding(4, 2)
    model.emb.weight.requires_grad_(False)
    model.blocks = nn.ModuleList([nn.Linear(2, 2, bias=False)])
    rules = {
        "layers": {
            "num_layers": 3,
            "rules": [{"match": r"emb\.weight$", "layer": "num_layers / 2"}, {"match": r"^blocks\.(?P<i>\d+)\.", "layer": "i + 1"}],
            "default": 4,
        },
        "checks": {"unused_patterns": "ignore"},
    }
    registry = new_registry()
    plan = resolve(model, load_rules(rules, registry=registry), registry=registry)  # 1.5 would be an error, were it used
    assert [(s.name, s.reason) for s in plan.skipped] == [("emb.weight", "requires_grad is False")]


def test_a_name_collision_is_reported_before_what_follows_from_it():
    model = nn.Module()
    model.x = nn.Linear(2, 2)
    model.x.module = nn.Linear(2, 2)  # x.module.weight becomes x.weight
    rules = {"layers": {"num_layers": 1, "rules": [{"match": r"^(?P<x>x)\.", "layer": "num_layers / 2"}]}}
    with pytest.raises(Exception, match="'x.weight' and 'x.module.weight' both become 'x.weight'"):
        run(model, rules)


def test_a_formula_error_names_the_parameter():
    model = nn.Module()
    model.cls_token = nn.Parameter(torch.zeros(1))
    model.blocks = nn.ModuleList([nn.Linear(2, 2)])
    rules = {"layers": {"num_layers": 1, "rules": [{"match": "cls_token", "layer": 0}, {"match": r"^blocks\.(?P<i>\d+)\.", "layer": "i + 0.5"}], "default": 1}}
    with pytest.raises(Exception, match=r"layer id must be an integer, got 0.5 for 'blocks.0.weight'"):
        run(model, rules)


def test_a_group_that_is_not_a_decimal_number_is_no_number():
    model = nn.Module()
    model.blocks = nn.Module()
    model.blocks.add_module("\u00b2", nn.Linear(2, 2, bias=False))  # "²": a digit, not a decimal
    rules = {"layers": {"num_layers": 1, "rules": [{"match": r"^blocks\.(?P<i>[^.]+)\.", "layer": 1}], "default": 1}}
    assert run(model, rules) == {"blocks.\u00b2.weight": (1, 1.0, 0.0)}  # i is None, never int("²")


def test_parameters_in_a_group_keep_the_model_order_across_wrapper_names():
    model = nn.Module()
    model.a, model.module, model.b = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)  # "module" is stripped
    names = {id(p): n for n, p in model.named_parameters()}
    registry = new_registry()
    rules = {"layers": {"num_layers": 0, "default": 0}, "weight_decay": {"value": 0.1, "exclude": ["ndim<=1"]}}
    plan = resolve(model, load_rules(rules, registry=registry), registry=registry)
    assert [(g["group_name"], [names[id(p)] for p in g["params"]]) for g in plan.param_groups] == [
        ("layer_0_decay", ["a.weight", "module.weight", "b.weight"]),
        ("layer_0_no_decay", ["a.bias", "module.bias", "b.bias"]),
    ]


def test_what_a_rule_set_implies_is_worked_out_once_per_loaded_rule_set():
    from lwd_rules.identify import memo_by_identity

    calls = []
    key, twin = ("a", "b"), tuple(["a", "b"])  # equal, but another object
    first = memo_by_identity("test", key, lambda: calls.append(1) or ["built"])
    assert memo_by_identity("test", key, lambda: calls.append(1) or ["again"]) is first
    assert memo_by_identity("test", twin, lambda: calls.append(1) or ["twin"]) == ["twin"]
    assert len(calls) == 2


def test_a_rule_that_matches_only_the_second_place_of_a_shared_module_is_unused():
    shared = nn.Linear(2, 2, bias=False)
    model = nn.Module()
    model.first, model.second = shared, shared  # named_parameters() lists first.weight only
    rules = {"layers": {"num_layers": 0, "rules": [{"match": r"^second\.", "layer": 0}], "default": 0}}
    with pytest.raises(Exception, match=r"'\^second\\\\\.' matches no parameter"):
        run(model, rules)


def _walked(model: nn.Module, rules, optimistic: bool):
    """One walk of ``model`` (optimistic or with every check), as comparable values."""
    from lwd_rules.identify import LayerIdentifier
    from lwd_rules.orchestrator import _Resolver, _Walk

    from lwd_rules.plugins import get_registry

    registry = get_registry() if isinstance(rules, str) else new_registry()
    loaded = load_rules(rules, registry=registry)
    resolver = _Resolver(model, loaded, registry, True)
    env = resolver._variables()
    if loaded.num_layers is not None:
        env["num_layers"] = resolver._num_layers(env)
    identifier = LayerIdentifier(loaded.rules, loaded.default, env)
    walk = _Walk(resolver, identifier)
    held = walk.run(model, optimistic=optimistic)
    members = [[id(p) for p in params] for params in walk.members]
    return held, (walk.keys, members, walk.renamed, walk.exclusion_used, identifier.used, walk.frozen)


class Wrapped(nn.Module):
    """A block whose layers sit behind a wrapper component (``module``) and a named norm."""

    def __init__(self) -> None:
        super().__init__()
        self.module = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
        self.grn = nn.LayerNorm(2)


def _wrapped_model() -> nn.Module:
    model = nn.Module()
    model.stem = nn.Linear(2, 2)
    model.blocks = nn.ModuleList([Wrapped() for _ in range(3)])
    return model


def _frozen_head_model() -> nn.Module:
    """A frozen tensor outside any subtree with one answer: listed by name, no second walk."""
    model = _wrapped_model()
    model.head = nn.Linear(2, 2)
    model.head.weight.requires_grad_(False)
    return model


def _peft_like_model() -> nn.Module:
    """The wrapped model behind PEFT's leading ``base_model.model`` prefix, which is cut off."""
    outer = nn.Module()
    outer.base_model = nn.Module()
    outer.base_model.model = _wrapped_model()
    return outer


TAIL_RULES = {
    **COUNTED,
    "weight_decay": {"value": 0.1, "exclude": ["ndim<=1", {"pattern": "*.grn.weight", "allow_unused": True}, {"pattern": "*.fc.weight", "allow_unused": True}]},
    "layers": {**COUNTED["layers"], "rules": [{"match": r"^stem\.", "layer": 0}, *COUNTED["layers"]["rules"]]},
}


@pytest.mark.parametrize(
    ("build", "rules"),
    [
        (lambda: __import__("timm").create_model("convnextv2_atto", pretrained=False), "convnext-timm"),
        (lambda: __import__("timm").create_model("vit_tiny_patch16_224", pretrained=False), "vit"),
        (lambda: __import__("timm").create_model("swin_tiny_patch4_window7_224", pretrained=False), "swin"),
        (_wrapped_model, TAIL_RULES),
        (_peft_like_model, TAIL_RULES),
        (_frozen_head_model, TAIL_RULES),
    ],
    ids=["convnextv2-grn", "vit-no_weight_decay", "swin", "wrapper-inside-blocks", "peft-leading-prefix", "frozen-head"],
)
def test_the_optimistic_walk_gives_what_the_checked_walk_gives(build, rules):
    """Same keys, same tensors in the same order, same flags and used entries."""
    with torch.device("meta"):
        model = build()
    fast_held, fast = _walked(model, rules, optimistic=True)
    checked_held, checked = _walked(model, rules, optimistic=False)
    assert fast_held and checked_held
    assert fast == checked
    assert fast[0], "the walk grouped something"


def _tied_inside_a_block() -> nn.Module:
    model = _wrapped_model()
    model.blocks[2].grn.weight = model.blocks[1].grn.weight
    return model


def _frozen_and_tied_outside_blocks() -> nn.Module:
    model = _frozen_head_model()
    model.tail = nn.Linear(2, 2)
    model.tail.weight = model.head.weight
    return model


def _frozen_inside_a_block() -> nn.Module:
    model = _wrapped_model()
    model.blocks[1].module[0].bias.requires_grad_(False)
    return model


def _leaf_shared_by_two_blocks() -> nn.Module:
    model = _wrapped_model()
    model.blocks[2].grn = model.blocks[0].grn
    return model


def _container_shared_by_two_blocks() -> nn.Module:
    model = _wrapped_model()
    model.blocks[2].module = model.blocks[0].module
    return model


def _empty_container_shared_by_two_blocks() -> nn.Module:
    model = _wrapped_model()
    model.blocks[0].act = model.blocks[2].act = nn.Sequential(nn.ReLU())
    return model


def _cycle_inside_a_block() -> nn.Module:
    model = _wrapped_model()
    model.blocks[1].again = model.blocks  # blocks.1.again.1.again...: the walk must still end
    return model


def _cycle_through_named_modules() -> nn.Module:
    """A module that holds itself, where names are built: each trip round would make them longer."""
    model = _wrapped_model()
    loop = nn.Module()
    loop.itself = loop
    loop.head = nn.Sequential(nn.Linear(2, 2))
    model.loop = loop
    return model


def _every_block_refers_to_the_model() -> nn.Module:
    model = _wrapped_model()
    for block in model.blocks:
        block.owner = model  # each trip round would push the whole list of blocks again
    return model


@pytest.mark.parametrize(
    "build",
    [_container_shared_by_two_blocks, _empty_container_shared_by_two_blocks, _cycle_inside_a_block, _cycle_through_named_modules, _every_block_refers_to_the_model],
)
def test_a_container_met_again_is_walked_once(build):
    """Shared or on a cycle, a container is walked where named_modules() lists it, by both walks
    alike: the optimistic one holds, and no trip round a cycle is taken (found by a review, when
    a change had let the optimistic walk go round until its ids showed a repeat)."""
    model = build()
    fast_held, fast = _walked(model, TAIL_RULES, optimistic=True)
    checked_held, checked = _walked(model, TAIL_RULES, optimistic=False)
    assert fast_held and checked_held
    assert fast == checked
    assert set(run(model, TAIL_RULES)) == {name for name, _ in model.named_parameters()}


@pytest.mark.parametrize(
    ("build", "left_out"),
    [
        (_tied_inside_a_block, {"blocks.2.grn.weight"}),  # grouped once, under its first name
        (_frozen_inside_a_block, {"blocks.1.module.0.bias"}),
        (_leaf_shared_by_two_blocks, {"blocks.2.grn.weight", "blocks.2.grn.bias"}),  # named_modules() lists it once
    ],
)
def test_the_optimistic_walk_gives_way_to_the_checked_one_when_its_assumptions_fail(build, left_out):
    held, _ = _walked(build(), TAIL_RULES, optimistic=True)
    assert not held
    every = {name for name, _ in _wrapped_model().named_parameters()}
    assert set(run(build(), TAIL_RULES)) == every - left_out


def test_a_two_level_count_skips_the_highest_blocks_that_hold_nothing():
    def stage(*blocks: nn.Module) -> nn.Module:
        module = nn.Module()
        module.blocks = nn.ModuleList(blocks)
        return module

    model = nn.Module()
    model.stages = nn.ModuleList(
        [
            stage(nn.Linear(2, 2), nn.Linear(2, 2), nn.ReLU()),  # 2 blocks hold parameters
            stage(nn.ReLU(), nn.Linear(2, 2), Deep(), nn.Identity(), nn.Sequential(nn.ReLU())),  # up to blocks.2 (deep)
            stage(nn.ReLU()),  # none
        ]
    )
    rules = {
        "layers": {
            "count": {"depths": r"^stages\.(\d+)\.blocks\.(\d+)\."},
            "num_layers": "sum(depths)",
            "rules": [{"match": r"^stages\.(?P<stage>\d+)\.blocks\.(?P<block>\d+)\.", "layer": "sum(depths[:stage]) + block + 1"}],
        },
        "layer_decay": {"rate": 0.5},
        "weight_decay": {"value": 0.1, "exclude": [{"pattern": "ndim<=1", "allow_unused": True}]},
    }
    plan = resolved(model, rules)
    assert plan.variables["depths"] == [2, 3]
    assert {row.name: row.layer_id for row in plan.params if row.name.endswith("weight")} == {
        "stages.0.blocks.0.weight": 1,
        "stages.0.blocks.1.weight": 2,
        "stages.1.blocks.1.weight": 4,
        "stages.1.blocks.2.inner.1.0.weight": 5,
    }


def test_a_frozen_tied_parameter_is_skipped_once_under_its_first_name():
    model = nn.Module()
    model.stem = nn.Linear(2, 2)
    model.enc = nn.Linear(2, 2)
    model.enc.weight = model.stem.weight
    model.stem.weight.requires_grad_(False)
    plan = resolved(model, COUNTED, strict=False)
    assert [skipped.name for skipped in plan.skipped] == ["stem.weight"]
    assert sorted(row.name for row in plan.params) == ["enc.bias", "stem.bias"]


def test_counts_skip_blocks_whose_parameter_slots_are_all_empty():
    """``named_parameters()`` skips ``None`` slots (a LayerNorm without affine parameters), so
    such a block names no parameter and is not counted, wherever it stands or however often."""
    norm = nn.LayerNorm(2, elementwise_affine=False)
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False), norm, norm])
    model.head = nn.Linear(2, 1, bias=False)
    # blocks = 2 (blocks.1 is the highest with a parameter name), so N = 2 and the head is layer 3.
    assert run(model, COUNTED) == {
        "blocks.0.weight": (1, 0.5**2, 0.1),
        "blocks.1.weight": (2, 0.5**1, 0.1),
        "head.weight": (3, 1.0, 0.1),
    }
    by_name = {**COUNTED, "layers": {**COUNTED["layers"], "count": {"blocks": r"blocks\.(\d+)\."}}}  # read per name
    assert run(model, by_name) == run(model, COUNTED)


def test_a_frozen_tensor_tied_outside_the_blocks_is_listed_once():
    """Frozen outside any subtree with one answer the optimistic walk lists it by name; met again
    (tied), it gives way, and the checked walk lists it once, under its first name."""
    held, _ = _walked(_frozen_and_tied_outside_blocks(), TAIL_RULES, optimistic=True)
    assert not held
    plan = resolved(_frozen_and_tied_outside_blocks(), TAIL_RULES)
    assert [skipped.name for skipped in plan.skipped] == ["head.weight"]
    every = {name for name, _ in _wrapped_model().named_parameters()}
    assert {row.name for row in plan.params} == every | {"head.bias", "tail.bias"}


@pytest.mark.parametrize("change", ["none", "tie", "cycle"])
def test_on_a_large_model_the_ids_are_looked_over_as_an_array(change):
    """Past 65,536 ids the optimistic walk keeps them in an array and verified() counts them with
    torch.unique: a tensor tied between the first and the last block still makes it give way; a
    block that refers back to the model is walked once."""
    from lwd_rules.testing import MANY_BLOCKS_RULES, many_blocks_model

    with torch.device("meta"):
        model = many_blocks_model(20_000)  # 80,004 tensors
    if change == "tie":
        model.blocks[-1].fc.weight = model.blocks[0].fc.weight
    elif change == "cycle":
        model.blocks[5].back = model
    held, (_, members, *_) = _walked(model, MANY_BLOCKS_RULES, optimistic=True)
    assert held is (change != "tie")
    if held:
        assert sum(map(len, members)) == 80_004
    plan = resolved(model, MANY_BLOCKS_RULES)
    assert sum(len(group["params"]) for group in plan.param_groups) == 80_004 - (change == "tie")


@pytest.mark.parametrize(
    ("pattern", "places_a_list"),
    [
        (r"^blocks\.(?P<block>\d+)\.", True),
        (r"^blocks\.(\d+)\.", True),
        (r"^(\d+)\.", True),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.", True),  # the last group is the component
        (r"^blocks\.(\d{1,})\.", True),
        (r"(?i)^Blocks\.(\d+)\.", True),  # case folds the literal part only
        (r"^blocks\.(\d+?)\.", False),
        (r"^blocks\.(\d)\.", False),  # one digit: blocks.12 does not match
        (r"^blocks\.([0-9]+)\.", False),  # narrower than \d for non-ASCII digits
        (r"(?a)^blocks\.(\d+)\.", False),
        (r"^blocks\.x(\d+)\.", False),  # the group is not a whole component
        (r"^blocks\.(\d+)x\.", False),
        (r"^blocks\.((\d+))\.", False),
        (r"^blocks\.(?:\d+)\.", False),
        (r"^blocks\.(\d+)\.(?:mlp)\.", False),
        (r"blocks\.(\d+)\.", False),  # unanchored: reads the whole name
        (r"^stem\.", False),
    ],
)
def test_which_patterns_place_a_list_of_blocks_with_one_search(pattern, places_a_list):
    import re

    from lwd_rules.identify import ends_in_component

    assert ends_in_component(re.compile(pattern)) is places_a_list


def _identifier(rules: list[dict], env: dict | None = None):
    from lwd_rules.identify import LayerIdentifier

    loaded = load_rules({"layers": {"num_layers": 9, "rules": rules, "default": 9}}, registry=new_registry())
    return LayerIdentifier(loaded.rules, loaded.default, {"num_layers": 9, **(env or {})})


STAGE_RULES = [
    {"match": r"^stem\.", "layer": 0},
    {"match": r"^stages\.(?P<s>\d+)\.blocks\.(?P<b>\d+)\.mlp\.", "layer": 8},  # needs a dot more than a block
    {"match": r"^stages\.(?P<s>\d+)\.blocks\.(?P<b>\d+)\.", "layer": "s * 4 + b + 1"},
]


def _blocks(names: list[str]) -> dict[str, nn.Module]:
    return nn.ModuleDict({name: nn.Linear(2, 2) for name in names})._modules


def test_a_list_of_blocks_is_placed_with_one_search_as_each_block_would_be():
    placed = _identifier(STAGE_RULES).for_children("stages.1.blocks", _blocks(["0", "1", "x", "07", "٣"]))
    not_final = False  # the mlp rule may still match below each block
    # "07" and "٣" are decimal; "x" is not: left to for_module.
    assert placed == {"0": ((5, 2), not_final), "1": ((6, 2), not_final), "07": ((12, 2), not_final), "٣": ((8, 2), not_final)}
    one_by_one = _identifier(STAGE_RULES)
    assert {name: one_by_one.for_module(f"stages.1.blocks.{name}") for name in placed} == placed


def test_a_rule_is_used_only_once_the_walk_takes_a_block():
    identifier = _identifier(STAGE_RULES)
    placed = identifier.for_children("stages.1.blocks", _blocks(["0", "1"]))
    assert len(placed) == 2
    assert identifier.used == [False, False, False]  # the walk may skip every block (shared, or holding nothing)


def test_a_constant_rule_places_every_block_alike_and_a_rule_before_it_can_place_the_whole_list():
    placed = _identifier([{"match": r"^blocks\.(\d+)\.", "layer": 3}]).for_children("blocks", _blocks(["0", "1", "2"]))
    assert placed == {"0": ((3, 0), True), "1": ((3, 0), True), "2": ((3, 0), True)}
    assert placed["0"] is placed["1"] is placed["2"]  # one answer object: the walk keeps one bucket for them
    whole = _identifier([{"match": r"^blocks\.", "layer": 2}, {"match": r"^blocks\.(\d+)\.", "layer": 3}])
    assert whole.for_children("blocks", _blocks(["0", "1"])) is None  # blocks. itself matches: for_module says so
    by_name = _identifier([{"match": r"weight$", "layer": 2}, {"match": r"^blocks\.(\d+)\.", "layer": 3}])
    assert by_name.for_children("blocks", _blocks(["0", "1"])) is None  # a rule reading each name comes first
    other_list = _identifier([{"match": r"^heads\.(\d+)\.", "layer": 3}])
    assert other_list.for_children("blocks", _blocks(["0", "1"])) is None  # only the default: for_module


def test_a_block_whose_formula_fails_is_left_to_for_module():
    from lwd_rules.errors import RuleError

    identifier = _identifier([{"match": r"^blocks\.(?P<i>\d+)\.", "layer": "10 // (i - 1)"}])
    placed = identifier.for_children("blocks", _blocks(["0", "1", "2"]))
    assert placed == {"0": ((-10, 0), True), "2": ((10, 0), True)}
    with pytest.raises(RuleError, match=r"division by zero for 'blocks\.1\.'"):
        identifier.for_module("blocks.1")  # what the walk asks when it gets to blocks.1


def test_a_block_the_walk_skips_is_not_evaluated():
    """Blocks holding nothing get no layer id: a formula that fails there (here: no depths entry
    for a last stage without parameters, and a division by zero) is never evaluated."""
    rules = {
        "layers": {
            "count": {"depths": r"^stages\.(\d+)\.blocks\.(\d+)\."},
            "rules": [
                {"match": r"^stages\.(?P<s>\d+)\.blocks\.(?P<b>\d+)\.", "layer": "sum(depths[:s]) + b + 1"},
                {"match": r"^stages\.(?P<s>\d+)\.", "layer": "sum(depths[:s]) + depths[s] + 10 // (3 - s)"},
            ],
            "default": 0,
        },
    }

    def stage(depth: int) -> nn.Module:
        module = nn.Module()
        module.blocks = nn.ModuleList([nn.Linear(2, 2, bias=False) for _ in range(depth)])
        module.down = nn.Linear(2, 2, bias=False)
        return module

    model = nn.Module()
    model.stages = nn.ModuleList([stage(2), stage(1), stage(2), nn.Identity(), nn.LayerNorm(2, elementwise_affine=False)])
    ids = {row.name: row.layer_id for row in resolved(model, rules).params}
    # down: sum(depths[:s]) + depths[s] + 10 // (3 - s) = 2 + 3, 3 + 5, 5 + 10
    assert ids == {
        "stages.0.blocks.0.weight": 1, "stages.0.blocks.1.weight": 2, "stages.0.down.weight": 5,
        "stages.1.blocks.0.weight": 3, "stages.1.down.weight": 8,
        "stages.2.blocks.0.weight": 4, "stages.2.blocks.1.weight": 5, "stages.2.down.weight": 15,
    }


def test_blocks_met_again_under_a_second_list_leave_its_rule_unused():
    """The blocks of ``blocks`` are the modules of ``enc``, met first there: the walk does not
    place them again, so the rule for ``blocks`` matches no parameter, which is an error."""
    from lwd_rules.errors import RuleError

    rules = {"layers": {"rules": [{"match": r"^enc\.(?P<i>\d+)\.", "layer": "i + 1"}, {"match": r"^blocks\.(?P<i>\d+)\.", "layer": "i + 1"}], "default": 0}}
    model = nn.Module()
    model.enc = nn.ModuleList([nn.Sequential(nn.Linear(2, 2)) for _ in range(3)])
    model.blocks = nn.ModuleList(list(model.enc))
    with pytest.raises(RuleError, match=r"layers\.rules\[1\]\.match: .* matches no parameter"):
        resolved(model, rules)


def test_the_first_failing_formula_in_model_order_is_the_one_reported():
    """blocks.0.sub (rule 0) comes before blocks.1 (rule 1) in the model: its error is reported."""
    from lwd_rules.errors import RuleError

    rules = {
        "layers": {
            "rules": [{"match": r"^blocks\.(?P<i>\d+)\.sub\.", "layer": "10 // i"}, {"match": r"^blocks\.(?P<i>\d+)\.", "layer": "10 // (i - 1)"}],
            "default": 0,
        }
    }
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Module() for _ in range(3)])
    for block in model.blocks:
        block.sub = nn.Linear(2, 2)
    with pytest.raises(RuleError, match=r"for 'blocks\.0\.sub\.'"):
        resolved(model, rules)


def test_counts_over_a_list_with_names_that_are_not_numbers():
    model = nn.Module()
    model.blocks = nn.ModuleDict(
        {"0": nn.Linear(2, 2), "x9": nn.Linear(2, 2), "7": nn.ReLU(), "07": nn.Linear(2, 2), "٣": nn.Linear(2, 2), "12": nn.ReLU(), "30": nn.LayerNorm(2, elementwise_affine=False)}
    )
    model.head = nn.Linear(2, 1)
    from lwd_rules.identify import count_variables
    import re

    counts = load_rules({**COUNTED, "layers": {**COUNTED["layers"], "count": {"blocks": r"^blocks\.(\d+)\.", "xs": r"^blocks\.x(\d+)\."}}}, registry=new_registry()).counts
    # blocks.07 is the highest decimal block with a parameter (30 holds only empty slots, 12 and 7
    # nothing); blocks.x9 counts only for the pattern that reads it.
    assert count_variables(counts, model, ()) == {"blocks": 8, "xs": 10}
    assert count_variables(counts, model, (), exact=True) == {"blocks": 8, "xs": 10}
    assert re.compile(r"^blocks\.(\d+)\.").search("blocks.٣.").group(1) == "٣"  # \d reads it too: 3 < 7


def _draw_list(data, depth: int) -> nn.Module:
    names = data.draw(st.lists(st.sampled_from(["0", "1", "2", "3", "07", "٣", "a", "mlp"]), min_size=1, max_size=5, unique=True), label="names")
    return nn.ModuleDict({name: _draw_block(data, depth + 1) for name in names})


def _draw_block(data, depth: int) -> nn.Module:
    kind = data.draw(st.sampled_from(["linear", "empty norm", "relu", "module", "list"] if depth < 3 else ["linear", "empty norm", "relu"]), label="kind")
    if kind == "linear":
        return nn.Linear(2, 2, bias=data.draw(st.booleans(), label="bias"))
    if kind == "empty norm":
        return nn.LayerNorm(2, elementwise_affine=False)
    if kind == "relu":
        return nn.ReLU()
    if kind == "list":
        return _draw_list(data, depth)
    module = nn.Module()
    for name in data.draw(st.lists(st.sampled_from(["mlp", "norm", "blocks"]), min_size=1, max_size=2, unique=True), label="children"):
        module.add_module(name, _draw_block(data, depth + 1))
    return module


def _draw_prefix_rules(data, model: nn.Module) -> list[dict]:
    """Anchored rules made from the model's own module names, a decimal component kept, or read
    by a named or an unnamed group; formulas read the named groups."""
    import re

    prefixes = sorted(name for name, _ in model.named_modules() if name)
    rules = []
    for prefix in data.draw(st.lists(st.sampled_from(prefixes), max_size=4), label="rule prefixes") if prefixes else []:
        parts, groups = [], []
        for part in prefix.split("."):
            how = data.draw(st.sampled_from(["keep", "named", "unnamed"]), label="component") if part.isdecimal() else "keep"
            if how == "named":
                groups.append(f"g{len(groups)}")
                parts.append(f"(?P<{groups[-1]}>\\d+)")
            else:
                parts.append(r"(\d+)" if how == "unnamed" else re.escape(part))
        formula = data.draw(st.sampled_from(["constant", "sum", "fails at 1"]) if groups else st.just("constant"), label="formula")
        if formula == "sum":
            layer = f"({' + '.join(groups)}) % 5 + 1"
        elif formula == "fails at 1":  # division by zero for a block numbered 1
            layer = f"10 // ({groups[-1]} - 1) % 5 + 1"
        else:
            layer = data.draw(st.integers(0, 6), label="layer")
        rules.append({"match": "^" + r"\.".join(parts) + r"\.", "layer": layer})
    return rules


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_lists_of_blocks_are_placed_as_one_module_at_a_time_would_be(data):
    """The optimistic walk places lists of blocks together (for_children); the checked walk asks
    for_module of each block: same keys, tensors, flags and used rules, or the same error, on
    random lists, some of whose blocks are met again in a second list."""
    from lwd_rules.errors import RuleError

    model = nn.Module()
    model.stem = nn.Linear(2, 2)
    model.blocks = _draw_list(data, 0)
    model.stages = nn.ModuleList([_draw_block(data, 1) for _ in range(data.draw(st.integers(0, 3), label="stages"))])
    if data.draw(st.booleans(), label="shared blocks"):
        model.again = nn.ModuleList([block for block in model.blocks.values() if block._modules])
    rules = {
        "layers": {"num_layers": 5, "rules": _draw_prefix_rules(data, model), "default": "num_layers + 1"},
        "layer_decay": {"rate": 0.5},
        "weight_decay": {"value": 0.1, "exclude": [{"pattern": "ndim<=1", "allow_unused": True}]},
        "checks": {"unused_patterns": "ignore"},
    }

    def outcome(optimistic: bool):
        try:
            return _walked(model, rules, optimistic=optimistic)
        except RuleError as error:
            return str(error)

    fast, checked = outcome(True), outcome(False)
    if isinstance(checked, tuple):
        assert checked[0]
        assert fast == checked
    else:  # the optimistic walk may give up before it gets to the error; never another error
        assert fast == checked or (isinstance(fast, tuple) and not fast[0])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_counts_over_lists_of_blocks_equal_counts_over_every_module(data):
    """layers.count reads the numbers of a list of blocks from their names and opens the highest
    first; exact=True probes every module with a parameter: the same counts on random lists."""
    import re

    from lwd_rules.identify import count_variables

    model = nn.Module()
    model.blocks = _draw_list(data, 0)
    model.stages = nn.ModuleList([_draw_block(data, 1) for _ in range(data.draw(st.integers(0, 3), label="stages"))])
    patterns = set()
    for prefix in sorted(name for name, _ in model.named_modules() if name):
        parts = [r"(\d+)" if part.isdecimal() else re.escape(part) for part in prefix.split(".")]
        pattern = "^" + r"\.".join(parts) + r"\."
        if 1 <= re.compile(pattern).groups <= 2:
            patterns.add(pattern)
    if not patterns:
        return
    chosen = data.draw(st.lists(st.sampled_from(sorted(patterns)), min_size=1, max_size=3, unique=True), label="counts")
    rules = {**COUNTED, "layers": {**COUNTED["layers"], "count": {f"c{i}": pattern for i, pattern in enumerate(chosen)}, "num_layers": 4}}
    counts = load_rules(rules, registry=new_registry()).counts
    assert count_variables(counts, model, ()) == count_variables(counts, model, (), exact=True)


def test_a_tensor_tied_across_a_block_and_a_module_placed_by_name_gives_way():
    """Tied between a module the optimistic walk groups on its fast path and one whose rule reads
    each parameter's name (grouped by _params): met twice, so the checked walk runs and groups it
    once, under its first name."""
    rules = {
        "layers": {"num_layers": 2, "rules": [{"match": r"^blocks\.(?P<i>\d+)\.", "layer": "i + 1"}, {"match": r"weight$", "layer": 2}], "default": 3},
        "weight_decay": {"value": 0.1, "exclude": [{"pattern": "ndim<=1", "allow_unused": True}]},
    }
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Linear(2, 2, bias=False)])
    model.head = nn.Linear(2, 2, bias=False)
    model.head.weight = model.blocks[0].weight
    held, _ = _walked(model, rules, optimistic=True)
    assert not held
    assert run(model, rules) == {"blocks.0.weight": (1, 1.0, 0.1)}


def test_a_leaf_met_again_where_the_formula_fails_is_not_evaluated():
    """blocks.3 is blocks.0: named_parameters() never names blocks.3, so its formula (which fails
    there) is not evaluated; the optimistic walk, which does not track tensors, meets it and gives
    way to the checked walk instead of reporting the error."""
    rules = {"layers": {"rules": [{"match": r"^blocks\.(?P<i>\d+)\.", "layer": "10 // (i - 3) * 0 + i + 1"}], "default": 0}}
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Linear(2, 2, bias=False) for _ in range(4)])
    model.blocks[3] = model.blocks[0]
    assert {row.name: row.layer_id for row in resolved(model, rules).params} == {"blocks.0.weight": 1, "blocks.1.weight": 2, "blocks.2.weight": 3}


@pytest.mark.parametrize(
    "build",
    [
        _wrapped_model,
        _peft_like_model,
        _frozen_and_tied_outside_blocks,
        _tied_inside_a_block,
        _leaf_shared_by_two_blocks,
        _container_shared_by_two_blocks,
        _cycle_through_named_modules,
    ],
)
def test_the_fingerprint_reads_a_walk_or_the_built_rows_alike(build):
    """Without rows, the fingerprint walks the model for canonical names and keys only; with rows
    built, it reads them. Both list each trainable tensor once, under its first name, in model order."""
    registry = new_registry()
    rules = load_rules(TAIL_RULES, registry=registry)
    model = build()
    fresh = resolve(model, rules, registry=registry)
    listed = resolve(model, rules, registry=registry)
    first_names = [name for name, param in model.named_parameters() if param.requires_grad]
    assert [row.name for row in listed.params] == first_names  # rows built
    # canonical: PEFT's leading base_model.model and the wrapper component "module" cut off
    canonical = [name.removeprefix("base_model.model.").replace(".module.", ".") for name in first_names]
    assert fresh.params.assignments()[0] == canonical  # type: ignore[attr-defined]
    assert fresh.params.assignments() == listed.params.assignments()  # type: ignore[attr-defined]
    assert fresh.fingerprint() == listed.fingerprint()


def test_the_fingerprint_after_the_model_changed_is_an_error_not_a_wrong_hash():
    model = blocks_model()
    registry = new_registry()
    plan = resolve(model, load_rules(COUNTED, registry=registry), registry=registry)
    model.head = nn.Linear(2, 1)
    with pytest.raises(RuntimeError, match=r"changed after resolve\(\)"):
        plan.fingerprint()


def test_the_fingerprint_tells_apart_plans_that_differ_only_in_names_or_in_one_setting():
    registry = new_registry()
    rules = load_rules(TAIL_RULES, registry=registry)
    model = _wrapped_model()
    renamed = _wrapped_model()
    renamed.blocks[1].gnorm = renamed.blocks[1].grn  # same tensors, settings and groups, another name
    del renamed.blocks[1].grn
    plan, other_names = resolve(model, rules, registry=registry), resolve(renamed, rules, registry=registry)
    assert [len(g["params"]) for g in plan.param_groups] == [len(g["params"]) for g in other_names.param_groups]
    assert plan.fingerprint() != other_names.fingerprint()
    list(other_names.params)  # rows built: the fingerprint reads them, and still tells the names apart
    assert plan.fingerprint() != other_names.fingerprint()
    undecayed = _wrapped_model()
    undecayed.blocks[1].module[0].weight = nn.Parameter(torch.zeros(2))  # 1-d: same rules and names, its decay goes
    assert plan.fingerprint() != resolve(undecayed, rules, registry=registry).fingerprint()


class ListsItsOwn(nn.Linear):
    """A leaf class with its own ``named_parameters``: the walk must not take it as nn.Module would."""

    def named_parameters(self, *args, **kwargs):  # type: ignore[override]
        return super().named_parameters(*args, **kwargs)


def _leaf_blocks_model(blocks: int = 6) -> nn.Module:
    """``stem``, then blocks holding only leaves (``fc``, an activation and ``norm``), then ``head``:
    the blocks the walk groups where it meets the list, in order, without pushing them."""
    model = nn.Module()
    model.stem = nn.Linear(2, 2)
    model.blocks = nn.ModuleList(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.LayerNorm(2)) for _ in range(blocks))
    model.head = nn.Linear(2, 2)
    return model


def _leaf_blocks_with(change) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model = _leaf_blocks_model()
        change(model)
        return model

    return build


LEAF_RULES = {
    **COUNTED,
    "layers": {**COUNTED["layers"], "rules": [{"match": r"^stem\.", "layer": 0}, *COUNTED["layers"]["rules"]]},
    "weight_decay": {"value": 0.1, "exclude": ["ndim<=1", {"pattern": "*.0.bias", "allow_unused": True}]},
}


@pytest.mark.parametrize(
    ("build", "holds"),
    [
        (_leaf_blocks_model, True),
        # from the third block on, a block with a container: the rest are pushed, in order
        (_leaf_blocks_with(lambda m: m.blocks[2].append(nn.Sequential(nn.Linear(2, 2)))), True),
        (_leaf_blocks_with(lambda m: m.blocks.insert(3, nn.ReLU())), True),  # a block holding nothing
        (_leaf_blocks_with(lambda m: m.blocks[1].__setitem__(0, ListsItsOwn(2, 2))), False),  # a leaf class that lists its own
        (_leaf_blocks_with(lambda m: m.blocks[4].add_module("module", nn.Linear(2, 2))), True),  # a wrapper component inside
        (_leaf_blocks_with(lambda m: m.blocks[4][2].weight.requires_grad_(False)), False),  # frozen: no name to list it under
        (_leaf_blocks_with(lambda m: m.blocks[5].__setitem__(0, m.blocks[0][0])), False),  # a leaf shared by two blocks
        (_leaf_blocks_with(lambda m: m.blocks.append(m.blocks[1])), True),  # one block twice in the list
    ],
    ids=["leaves-only", "container-in-block-2", "empty-block", "own-named_parameters", "wrapper-leaf", "frozen", "shared-leaf", "block-twice"],
)
def test_blocks_of_leaves_are_grouped_in_order_as_the_checked_walk_groups_them(build, holds):
    """Where the optimistic walk holds, it gives what the checked walk gives (keys, the tensors of
    each in model order, used entries); where it cannot, it gives way. Either way the plan lists
    what named_parameters() lists, less what is frozen, and places block i at layer i + 1 (a class
    with its own named_parameters() is walked through it, by neither walk)."""
    model = build()
    fast_held, fast = _walked(model, LEAF_RULES, optimistic=True)
    checked_held, checked = _walked(model, LEAF_RULES, optimistic=False)
    assert fast_held is holds
    if holds:
        assert checked_held and fast == checked
    rows = run(model, LEAF_RULES)
    assert list(rows) == [name for name, param in model.named_parameters() if param.requires_grad]
    for name, (layer_id, _, _) in rows.items():
        if name.startswith("blocks."):
            assert layer_id == int(name.split(".")[1]) + 1, name
