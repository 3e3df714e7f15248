"""Tiny transformers models and, independently of the plugin's rule files, what each parameter should get.

Every config is tiny (hidden size <= 64, 2-4 layers, vocabulary 100) and built locally; models are
built on the meta device. The expectations below are written from the plugin's spec with plain
string operations on the parameter names, HF's own ``base_model`` attribute to find the task
model's base model, and the module classes for weight decay; nothing here reads the rule files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers

VOCAB = 100
TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=VOCAB)
DECODER = dict(TEXT, num_key_value_heads=1, head_dim=16)
CONFIGS: dict[str, dict[str, Any]] = {
    "bert": TEXT,
    "roberta": dict(TEXT, num_hidden_layers=3),
    "xlm-roberta": TEXT,
    "electra": dict(TEXT, embedding_size=16),  # != hidden_size: ELECTRA adds embeddings_project
    "deberta-v2": TEXT,
    "distilbert": dict(dim=32, n_layers=3, n_heads=2, hidden_dim=37, vocab_size=VOCAB),
    "albert": dict(TEXT, embedding_size=16, num_hidden_layers=4),
    "modernbert": dict(TEXT, num_hidden_layers=3, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2),
    "gpt2": dict(n_embd=32, n_layer=3, n_head=2, vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0),
    "llama": DECODER,
    "mistral": DECODER,
    "qwen2": dict(DECODER, num_hidden_layers=3),
    "qwen3": DECODER,
    "gemma": DECODER,
    "gemma2": DECODER,
    "phi": dict(TEXT, num_hidden_layers=3),
    "phi3": dict(TEXT, num_key_value_heads=1, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "vit": dict(TEXT, num_hidden_layers=3, image_size=32, patch_size=8),
    "dinov2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
    "swin": dict(embed_dim=16, depths=[2, 2, 1], num_heads=[1, 2, 2], image_size=32, patch_size=4, window_size=4),
    "convnext": dict(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 2, 1], image_size=32),
}
# DeBERTa-v3's settings: relative position embeddings (normalized), no absolute positions, and the
# convolution of the v2 xlarge models.
DEBERTA_V3 = dict(
    relative_attention=True, position_buckets=16, max_relative_positions=-1, norm_rel_ebd="layer_norm",
    position_biased_input=False, pos_att_type=["p2c", "c2p"], share_att_key=True, conv_kernel_size=3,
)

RULE_SET = {
    "bert": "hf-bert", "roberta": "hf-bert", "xlm-roberta": "hf-bert", "electra": "hf-bert",
    "deberta-v2": "hf-deberta", "distilbert": "hf-distilbert", "albert": "hf-albert", "modernbert": "hf-modernbert",
    "gpt2": "hf-gpt2", "llama": "hf-llama", "mistral": "hf-llama", "qwen2": "hf-llama", "qwen3": "hf-llama",
    "gemma": "hf-llama", "gemma2": "hf-llama", "phi": "hf-llama", "phi3": "hf-llama",
    "vit": "hf-vit", "dinov2": "hf-vit", "swin": "hf-swin", "convnext": "convnext-hf",
}


@dataclass(frozen=True)
class Case:
    """One model to build: model type, class name and config overrides."""

    model_type: str
    cls: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.overrides.items() if k != "pos_att_type")
        return f"{self.cls}[{extra}]" if extra else self.cls

    def config(self) -> Any:
        return transformers.AutoConfig.for_model(self.model_type, **{**CONFIGS[self.model_type], **self.overrides})

    def build(self, device: str = "meta") -> Any:
        config = self.config()
        with torch.device(device):
            return getattr(transformers, self.cls)(config)


CASES = [
    Case("bert", "BertModel"),
    Case("bert", "BertForSequenceClassification"),
    Case("bert", "BertForMaskedLM"),
    Case("bert", "BertForPreTraining"),
    Case("roberta", "RobertaModel"),
    Case("roberta", "RobertaForMaskedLM"),
    Case("xlm-roberta", "XLMRobertaModel"),
    Case("xlm-roberta", "XLMRobertaForMaskedLM"),  # lm_head comes before roberta, tied
    Case("xlm-roberta", "XLMRobertaForTokenClassification"),
    Case("electra", "ElectraModel"),
    Case("electra", "ElectraForPreTraining"),
    Case("electra", "ElectraForMaskedLM"),
    Case("deberta-v2", "DebertaV2Model"),
    Case("deberta-v2", "DebertaV2ForSequenceClassification", DEBERTA_V3),
    Case("deberta-v2", "DebertaV2ForMaskedLM", DEBERTA_V3),
    Case("distilbert", "DistilBertModel"),
    Case("distilbert", "DistilBertForSequenceClassification"),
    Case("distilbert", "DistilBertForMaskedLM"),
    Case("albert", "AlbertModel"),
    Case("albert", "AlbertForSequenceClassification"),
    Case("albert", "AlbertForMaskedLM"),
    Case("albert", "AlbertForPreTraining", dict(num_hidden_groups=2, inner_group_num=2)),
    Case("modernbert", "ModernBertModel"),
    Case("modernbert", "ModernBertForSequenceClassification"),
    Case("modernbert", "ModernBertForMaskedLM"),
    Case("gpt2", "GPT2Model"),
    Case("gpt2", "GPT2LMHeadModel"),
    Case("gpt2", "GPT2ForSequenceClassification"),
    Case("llama", "LlamaModel"),
    Case("llama", "LlamaForCausalLM", dict(tie_word_embeddings=True)),
    Case("llama", "LlamaForCausalLM", dict(tie_word_embeddings=False)),
    Case("llama", "LlamaForQuestionAnswering"),  # under transformer., not model.
    Case("mistral", "MistralForCausalLM"),
    Case("qwen2", "Qwen2Model"),
    Case("qwen2", "Qwen2ForCausalLM"),
    Case("qwen3", "Qwen3ForCausalLM"),
    Case("qwen3", "Qwen3ForSequenceClassification"),
    Case("gemma", "GemmaForCausalLM"),
    Case("gemma2", "Gemma2ForCausalLM"),
    Case("phi", "PhiModel"),
    Case("phi", "PhiForCausalLM"),
    Case("phi3", "Phi3ForCausalLM"),
    Case("vit", "ViTModel"),
    Case("vit", "ViTForImageClassification"),
    Case("dinov2", "Dinov2Model"),
    Case("dinov2", "Dinov2ForImageClassification"),
    Case("swin", "SwinModel"),
    Case("swin", "SwinForImageClassification"),
    Case("swin", "SwinBackbone", dict(out_features=["stage1", "stage3"])),
]


# ---- layer ids, from the spec -------------------------------------------------------------------


def inner_name(model: Any, name: str) -> str | None:
    """``name`` inside the base model (``bert.encoder.x`` -> ``encoder.x``); None for task-head parameters."""
    base = model.base_model
    if base is model:
        return name
    prefix = next(child for child, module in model.named_children() if module is base)
    return name[len(prefix) + 1 :] if name.startswith(prefix + ".") else None


def _bert(parts: list[str], n: int, config: Any) -> int:
    if parts[0] in ("embeddings", "embeddings_project"):
        return 0
    if parts[:2] == ["encoder", "layer"]:
        return int(parts[2]) + 1
    return n + 1


def _deberta(parts: list[str], n: int, config: Any) -> int:
    if parts[:2] in (["encoder", "rel_embeddings"], ["encoder", "LayerNorm"]):
        return 0  # relative position embeddings, read by every layer
    if parts[:2] == ["encoder", "conv"]:
        return 1  # applied to layer 0's output
    return _bert(parts, n, config)


def _distilbert(parts: list[str], n: int, config: Any) -> int:
    if parts[0] == "embeddings":
        return 0
    if parts[:2] == ["transformer", "layer"]:
        return int(parts[2]) + 1
    return n + 1


def _albert(parts: list[str], n: int, config: Any) -> int:
    if parts[0] == "embeddings" or parts[:2] == ["encoder", "embedding_hidden_mapping_in"]:
        return 0
    if parts[:2] == ["encoder", "albert_layer_groups"] and parts[3] == "albert_layers":
        return int(parts[2]) * config.inner_group_num + int(parts[4]) + 1
    return n + 1


def _modernbert(parts: list[str], n: int, config: Any) -> int:
    if parts[0] == "embeddings":
        return 0
    if parts[0] == "layers":
        return int(parts[1]) + 1
    return n + 1


def _gpt2(parts: list[str], n: int, config: Any) -> int:
    if parts[0] in ("wte", "wpe"):
        return 0
    if parts[0] == "h":
        return int(parts[1]) + 1
    return n + 1


def _llama(parts: list[str], n: int, config: Any) -> int:
    if parts[0] == "embed_tokens":
        return 0
    if parts[0] == "layers":
        return int(parts[1]) + 1
    return n + 1


def _vit(parts: list[str], n: int, config: Any) -> int:
    if parts[0] == "embeddings":
        return 0
    if parts[:2] == ["encoder", "layer"]:
        return int(parts[2]) + 1
    if parts[0] == "layers":
        return int(parts[1]) + 1
    return n + 1


def _swin(parts: list[str], n: int, config: Any) -> int:
    depths = list(config.depths)
    if parts[0] == "embeddings":
        return 0
    if parts[:2] == ["encoder", "layers"]:
        stage = int(parts[2])
        if parts[3] == "blocks":
            return sum(depths[:stage]) + int(parts[4]) + 1
        if parts[3] == "downsample":
            return sum(depths[: stage + 1]) + 1  # feeds stage + 1: the id of its first block
    return n + 1


FAMILIES: dict[str, Callable[[list[str], int, Any], int]] = {
    "hf-bert": _bert, "hf-deberta": _deberta, "hf-distilbert": _distilbert, "hf-albert": _albert,
    "hf-modernbert": _modernbert, "hf-gpt2": _gpt2, "hf-llama": _llama, "hf-vit": _vit, "hf-swin": _swin,
}


def expected_num_layers(rule_set: str, config: Any) -> int:
    if rule_set == "hf-albert":
        return config.num_hidden_groups * config.inner_group_num  # distinct layers, not applications
    if rule_set == "hf-swin":
        return sum(config.depths)
    return config.num_hidden_layers


def expected_ids(model: Any, rule_set: str) -> dict[str, int]:
    """Every trainable parameter's id (names as ``named_parameters()`` gives them: a tied tensor once)."""
    config = model.config
    n = expected_num_layers(rule_set, config)
    family = FAMILIES[rule_set]
    embedding = model.get_input_embeddings()
    tied = getattr(embedding, "weight", None)
    out = {}
    for name, param in model.named_parameters():
        inner = inner_name(model, name)
        if param is tied:
            out[name] = 0  # the input embedding, whichever of its names comes first
        else:
            out[name] = n + 1 if inner is None else family(inner.split("."), n, config)
    return out


# ---- weight decay, by module type ---------------------------------------------------------------


def is_norm(module: torch.nn.Module) -> bool:
    """LayerNorm / RMSNorm modules, by type: torch's classes, or any class (or base) named like one."""
    if isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)):
        return True
    return any(cls.__name__.endswith(("LayerNorm", "RMSNorm")) for cls in type(module).__mro__)


def expected_weight_decay(model: Any, value: float) -> dict[str, float]:
    """0 for biases, norm weights and Swin's relative position bias tables; ``value`` elsewhere."""
    modules = dict(model.named_modules())
    out = {}
    for name, _ in model.named_parameters():
        owner = modules[name.rpartition(".")[0]]
        no_decay = name.endswith(".bias") or is_norm(owner) or name.endswith(".relative_position_bias_table")
        out[name] = 0.0 if no_decay else value
    return out
