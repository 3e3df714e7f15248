"""What the rule sets mean where a model is unusual: tied embeddings, ALBERT's shared layer, Swin's
stages, configs that disagree with the model, other layouts, wrappers, and which models are detected."""

from __future__ import annotations

import pytest
import torch
import transformers

import lwd_rules_transformers
from hf_cases import CONFIGS, Case
from lwd_rules import PluginError, RuleError, load_rules, resolve
from lwd_rules.testing import make_registry, registry_for

RATE = 0.8


@pytest.fixture(scope="module")
def registry():
    return make_registry(lwd_rules_transformers)


def rows_by_name(plan):
    return {row.name: row for row in plan.params}


# ---- tied embeddings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, embedding, head",
    [
        (Case("gpt2", "GPT2LMHeadModel"), "transformer.wte.weight", "lm_head.weight"),
        (Case("llama", "LlamaForCausalLM", dict(tie_word_embeddings=True)), "model.embed_tokens.weight", "lm_head.weight"),
        (Case("gemma", "GemmaForCausalLM"), "model.embed_tokens.weight", "lm_head.weight"),
        (Case("bert", "BertForMaskedLM"), "bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"),
        (Case("modernbert", "ModernBertForMaskedLM"), "model.embeddings.tok_embeddings.weight", "decoder.weight"),
    ],
    ids=lambda v: v.id if isinstance(v, Case) else None,
)
def test_tied_lm_head_is_the_embedding_once_at_id_0(registry, case, embedding, head):
    """The core optimizes a shared tensor once, under its first name: the embedding's, id 0."""
    model = case.build()
    assert model.get_input_embeddings().weight is model.get_parameter(head)  # really tied
    plan = resolve(model, {"layer_decay": {"rate": RATE}}, registry=registry)
    rows = rows_by_name(plan)
    assert head not in rows
    assert rows[embedding].layer_id == 0
    assert rows[embedding].lr_scale == pytest.approx(RATE ** (plan.num_layers + 1), rel=1e-12)
    shared = model.get_input_embeddings().weight
    assert sum(p is shared for group in plan.param_groups for p in group["params"]) == 1


def test_untied_lm_head_trains_with_the_head(registry):
    model = Case("llama", "LlamaForCausalLM", dict(tie_word_embeddings=False)).build()
    plan = resolve(model, {"layer_decay": {"rate": RATE}}, registry=registry)
    rows = rows_by_name(plan)
    assert (rows["model.embed_tokens.weight"].layer_id, rows["lm_head.weight"].layer_id) == (0, plan.num_layers + 1)
    assert rows["lm_head.weight"].lr_scale == 1.0 and rows["model.norm.weight"].lr_scale == 1.0


def test_tied_embedding_seen_first_under_the_head_name_still_gets_id_0(registry):
    """XLMRobertaForMaskedLM lists lm_head before roberta: the shared tensor's first name is the
    head's, which no rule matches; the plugin's lwd_layer_ids gives it the embedding's id 0."""
    model = Case("xlm-roberta", "XLMRobertaForMaskedLM").build()
    plan = resolve(model, {"layer_decay": {"rate": RATE}}, registry=registry)
    rows = rows_by_name(plan)
    assert "roberta.embeddings.word_embeddings.weight" not in rows
    row = rows["lm_head.decoder.weight"]
    assert (row.layer_id, row.rule) == (0, "lwd_layer_ids hook")
    assert rows["lm_head.dense.weight"].layer_id == plan.num_layers + 1
    assert lwd_rules_transformers.lwd_layer_ids(model, "hf-bert") == {
        "lm_head.decoder.weight": 0,
        "roberta.embeddings.word_embeddings.weight": 0,
    }
    untied = Case("xlm-roberta", "XLMRobertaForMaskedLM", dict(tie_word_embeddings=False)).build()
    assert lwd_rules_transformers.lwd_layer_ids(untied, "hf-bert") == {}
    assert rows_by_name(resolve(untied, None, registry=registry))["lm_head.decoder.weight"].layer_id == 3


# ---- ALBERT -------------------------------------------------------------------------------------


def test_albert_shared_layer_is_one_layer_id(registry):
    """One shared layer applied num_hidden_layers times: N = 1, three ids, one lr for every application."""
    model = Case("albert", "AlbertForSequenceClassification").build()
    assert model.config.num_hidden_layers == 4 and model.config.num_hidden_groups == 1
    plan = resolve(model, {"layer_decay": {"rate": RATE}}, registry=registry)
    assert plan.num_layers == 1
    assert plan.scales == pytest.approx((RATE**2, RATE, 1.0), rel=1e-12)
    by_id: dict[int, set[str]] = {}
    for row in plan.params:
        by_id.setdefault(row.layer_id, set()).add(row.name.split(".")[1] if row.name.startswith("albert.") else row.name.split(".")[0])
    assert by_id == {0: {"embeddings", "encoder"}, 1: {"encoder"}, 2: {"pooler", "classifier"}}
    shared = [row for row in plan.params if ".albert_layer_groups.0.albert_layers.0." in row.name]
    assert shared and {row.lr_scale for row in shared} == {RATE}


def test_albert_groups_and_inner_layers_number_distinct_layers(registry):
    model = Case("albert", "AlbertModel", dict(num_hidden_groups=2, inner_group_num=2)).build()
    plan = resolve(model, None, registry=registry)
    assert plan.variables["albert_groups"] == plan.variables["albert_inner_layers"] == 2
    assert plan.num_layers == 4
    ids = {}
    for row in plan.params:  # encoder.albert_layer_groups.{g}.albert_layers.{j}.* -> "gj"
        parts = row.name.split(".")
        if "albert_layers" in parts:
            ids[parts[2] + parts[4]] = row.layer_id
    assert ids == {"00": 1, "01": 2, "10": 3, "11": 4}


# ---- Swin ---------------------------------------------------------------------------------------


def test_swin_ids_follow_cumulative_depths(registry):
    model = Case("swin", "SwinForImageClassification").build()  # depths [2, 2, 1]
    plan = resolve(model, None, registry=registry)
    assert plan.variables["depths"] == [2, 2, 1] and plan.num_layers == 5
    first = {}
    for row in plan.params:
        first.setdefault(".".join(row.name.split(".")[:6]), row.layer_id)
    assert first == {
        "swin.embeddings.patch_embeddings.projection.weight": 0,
        "swin.embeddings.patch_embeddings.projection.bias": 0,
        "swin.embeddings.norm.weight": 0,
        "swin.embeddings.norm.bias": 0,
        "swin.encoder.layers.0.blocks.0": 1,
        "swin.encoder.layers.0.blocks.1": 2,
        "swin.encoder.layers.0.downsample.reduction": 3,  # feeds stage 1: its first block's id
        "swin.encoder.layers.0.downsample.norm": 3,
        "swin.encoder.layers.1.blocks.0": 3,
        "swin.encoder.layers.1.blocks.1": 4,
        "swin.encoder.layers.1.downsample.reduction": 5,
        "swin.encoder.layers.1.downsample.norm": 5,
        "swin.encoder.layers.2.blocks.0": 5,
        "swin.layernorm.weight": 6,
        "swin.layernorm.bias": 6,
        "classifier.weight": 6,
        "classifier.bias": 6,
    }
    tables = [row for row in plan.params if row.name.endswith("relative_position_bias_table")]
    assert len(tables) == 5 and {row.weight_decay for row in tables} == {0.0}


# ---- weight decay by module class ------------------------------------------------------------


def _module_named(name: str, dim: int = 8) -> torch.nn.Module:
    """An instance of a new module class called ``name`` holding a 1-D ``weight``, like the norms transformers defines per model."""
    module = type(name, (torch.nn.Module,), {})()
    module.weight = torch.nn.Parameter(torch.ones(dim))
    return module


def test_norm_weights_are_found_by_their_module_class_not_their_name(registry):
    """Norms under names without 'norm' get 0, by class (own or base); other 1-D weights decay."""
    norms = [
        "T5LayerNorm", "DebertaV2LayerNorm", "LlamaRMSNorm", "Qwen2RMSNorm", "GemmaRMSNorm", "MambaRMSNormGated", "NemotronLayerNorm1P"
    ]

    class Layer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(8, 8, bias=False)
            for index, name in enumerate(norms):
                setattr(self, f"n{index}", _module_named(name))
            self.scale = _module_named("LayerScale")  # 1-D, not a norm: decays
            self.fancy = type("Fancy", (torch.nn.LayerNorm,), {})(8)  # a LayerNorm by its base class
            self.rms = torch.nn.RMSNorm(8)

    class Toy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed_tokens = torch.nn.Embedding(10, 8)
            self.layers = torch.nn.ModuleList([Layer(), Layer()])
            self.out = torch.nn.Linear(8, 10)

    plan = resolve(Toy(), {"extends": "hf-llama", "weight_decay": {"value": 0.1}}, registry=registry)
    decay = {row.name.split(".", 2)[-1] if row.name.startswith("layers.") else row.name: row.weight_decay for row in plan.params}
    assert decay == {
        "embed_tokens.weight": 0.1, "proj.weight": 0.1, "scale.weight": 0.1, "out.weight": 0.1, "out.bias": 0.0,
        **{f"n{index}.weight": 0.0 for index in range(len(norms))},
        "fancy.weight": 0.0, "fancy.bias": 0.0, "rms.weight": 0.0,
    }
    assert plan.num_layers == 2  # no config: the layers.{i} modules are counted


# ---- the number of layers ----------------------------------------------------------------------


def test_num_layers_comes_from_the_config(registry):
    cases = [
        (Case("gpt2", "GPT2Model"), "n_layer"),
        (Case("distilbert", "DistilBertModel"), "n_layers"),
        (Case("llama", "LlamaModel"), "num_hidden_layers"),
    ]
    for case, key in cases:
        model = case.build()
        plan = resolve(model, None, registry=registry)
        assert plan.variables["hf_num_layers"] == plan.num_layers == getattr(model.config, key) == CONFIGS[case.model_type][key]


def test_a_pruned_model_uses_its_modules_and_warns(registry):
    model = Case("roberta", "RobertaForSequenceClassification").build()
    model.roberta.encoder.layer = model.roberta.encoder.layer[:2]  # config still says 3
    with pytest.warns(lwd_rules_transformers.LayerCountWarning, match="config says hf_num_layers=3 but the model has hf_num_layers=2"):
        plan = resolve(model, None, registry=registry)
    assert plan.num_layers == 2
    assert rows_by_name(plan)["classifier.out_proj.weight"].layer_id == 3


def test_a_model_without_config_counts_its_layers(registry):
    """A plain module holding a BertModel: extends hf-bert, its attribute as the name prefix."""

    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = transformers.BertModel(Case("bert", "BertModel").config(), add_pooling_layer=False)
            self.tagger = torch.nn.Linear(32, 5)

    with torch.device("meta"):
        model = Tagger()
    assert registry.detect(model) is None  # not a transformers class: say so
    plan = resolve(model, {"extends": "hf-bert", "layer_decay": {"rate": RATE}}, registry=registry)
    ids = {row.name: row.layer_id for row in plan.params}
    assert plan.num_layers == 2
    assert ids["backbone.embeddings.word_embeddings.weight"] == 0
    assert ids["backbone.encoder.layer.1.output.dense.weight"] == 2
    assert ids["tagger.weight"] == 3


def test_the_wrong_family_is_an_error_not_a_silent_default(registry):
    model = Case("bert", "BertModel").build()
    with pytest.raises(PluginError, match=r"rule set 'hf-llama' expects layers\.\{i\} modules and BertModel has none"):
        resolve(model, "hf-llama", registry=registry)


def test_hf_base_alone_is_refused(registry):
    with pytest.raises(RuleError, match="no plugin provided 'hf_num_layers' for rule set 'hf-base' and BertModel"):
        resolve(Case("bert", "BertModel").build(), "hf-base", registry=registry)


# ---- wrappers and detection ---------------------------------------------------------------------


def test_a_ddp_style_wrapper_gets_the_bare_models_ids(registry):
    class Wrapper(torch.nn.Module):
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    model = Case("gpt2", "GPT2LMHeadModel").build()
    bare = resolve(model, None, registry=registry)
    wrapped = resolve(Wrapper(model), None, registry=registry)
    assert wrapped.rules.name == "hf-gpt2"
    assert [(r.name.removeprefix("module."), r.layer_id, r.lr_scale, r.weight_decay) for r in wrapped.params] == [
        (r.name, r.layer_id, r.lr_scale, r.weight_decay) for r in bare.params
    ]


def test_a_subclass_of_a_transformers_model_is_detected(registry):
    class MyBert(transformers.BertForSequenceClassification):
        pass

    with torch.device("meta"):
        model = MyBert(Case("bert", "BertModel").config())
    assert type(model).__module__ != "transformers.models.bert.modeling_bert"
    assert registry.detect(model) == "hf-bert"


@pytest.mark.parametrize("cls", ["ConvNextModel", "ConvNextForImageClassification"])
def test_hf_convnext_is_left_to_the_convnext_plugin(registry, cls):
    model = Case("convnext", cls).build()
    assert registry.detect(model) is None
    installed = make_registry(lwd_rules_transformers, installed=True)
    assert installed.detect(model) == "convnext-hf"
    assert resolve(model, {"layer_decay": {"rate": RATE}}, registry=installed).rules.name == "convnext-hf"


def test_other_models_are_not_detected(registry):
    assert registry.detect(torch.nn.Linear(2, 2)) is None
    with torch.device("meta"):
        bart = transformers.BartModel(
            transformers.BartConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                                    encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=100)
        )
    assert registry.detect(bart) is None  # a transformers model of a family not served here


def test_rule_sets_load():
    names = sorted(make_registry(lwd_rules_transformers).rule_sets())
    assert names == [
        "hf-albert", "hf-base", "hf-bert", "hf-clip", "hf-deberta", "hf-distilbert", "hf-gpt2", "hf-llama", "hf-modernbert",
        "hf-siglip", "hf-swin", "hf-t5", "hf-vit",
    ]
    with registry_for(lwd_rules_transformers):
        for name in names:
            rules = load_rules(name)
            assert rules.name == name and rules.config.description
            assert rules.config.weight_decay.value == 0.01
            rates = [c.layer_decay.rate for c in rules.config.chains.values()] or [rules.config.layer_decay.rate]
            assert set(rates) == ({0.8} if rules.config.chains else {0.9})
    assert set(lwd_rules_transformers.MODEL_TYPES.values()) == set(names) - {"hf-base"}
