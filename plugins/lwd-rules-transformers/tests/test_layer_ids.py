"""Every parameter of every supported architecture, bare and with task heads: id, lr scale, weight decay, detection.

Each model is built from a tiny config on the meta device and resolved with no rule set (so
``lwd_detect`` picks one) at rate 0.8 and weight decay 0.05. Expectations come from ``hf_cases``,
written from the spec without reading the rule files; weight decay is also compared with the
recipe of transformers' own ``Trainer.get_decay_parameter_names``.
"""

from __future__ import annotations

import pytest
import transformers

import lwd_rules_transformers
from hf_cases import CASES, RULE_SET, Case, expected_ids, expected_num_layers, expected_weight_decay
from lwd_rules import resolve
from lwd_rules.testing import make_registry

RATE, WD = 0.8, 0.05


@pytest.fixture(scope="module")
def registry():
    """This plugin plus the installed ones (ConvNeXt asked first, timm last), strict."""
    return make_registry(lwd_rules_transformers, installed=True)


@pytest.fixture(scope="module", params=CASES, ids=lambda case: case.id)
def resolved(request, registry):
    case: Case = request.param
    model = case.build()
    return case, model, resolve(model, {"layer_decay": {"rate": RATE}, "weight_decay": {"value": WD}}, registry=registry)


def test_detected_rule_set(resolved):
    case, model, plan = resolved
    assert plan.rules.name == RULE_SET[case.model_type]
    assert plan.num_layers == expected_num_layers(plan.rules.name, model.config)


def test_every_parameter_id_scale_and_weight_decay(resolved):
    case, model, plan = resolved
    ids = expected_ids(model, plan.rules.name)
    decay = expected_weight_decay(model, WD)
    n = plan.num_layers
    rows = {row.name: row for row in plan.params}
    assert list(rows) == [name for name, _ in model.named_parameters()]  # every trainable tensor, once
    assert plan.skipped == [] and plan.problems == []
    wrong = [f"{name}: id {row.layer_id} != {ids[name]}" for name, row in rows.items() if row.layer_id != ids[name]]
    wrong += [f"{name}: wd {row.weight_decay} != {decay[name]}" for name, row in rows.items() if row.weight_decay != decay[name]]
    assert not wrong, "\n".join(wrong)
    for name, row in rows.items():
        assert row.lr_scale == pytest.approx(RATE ** (n + 1 - ids[name]), rel=1e-12), name
    used = {row.layer_id for row in plan.params}
    assert set(range(n + 1)) <= used <= set(range(n + 2))  # every layer has parameters (bare encoders have no head)


def test_weight_decay_matches_the_hf_trainer_recipe(resolved):
    """transformers.Trainer decays what get_decay_parameter_names returns: the same split."""
    case, model, plan = resolved
    decayed = set(transformers.Trainer.get_decay_parameter_names(None, model))
    assert {row.name for row in plan.params if row.weight_decay > 0} == {row.name for row in plan.params if row.name in decayed}


def test_optimizer_holds_each_tensor_once(resolved):
    case, model, plan = resolved
    tensors = [p for group in plan.param_groups for p in group["params"]]
    assert len({id(p) for p in tensors}) == len(tensors) == len({id(p) for p in model.parameters()})
