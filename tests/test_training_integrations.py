"""Hugging Face Trainer with lwd-rules' optimizer and scheduler: a few real steps, ratios kept."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

from lwd_rules import check_optimizer, resolve
from lwd_rules.integrations import hf_trainer_optimizers
from lwd_rules.plugins import new_registry

BERT_RULES = {  # written here so the test needs no plugin: embeddings 0, layer i -> i + 1, rest N + 1
    "layers": {
        "num_layers": 2,
        "rules": [
            {"match": r"^bert\.embeddings\.", "layer": 0},
            {"match": r"^bert\.encoder\.layer\.(?P<i>\d+)\.", "layer": "i + 1"},
        ],
        "default": "num_layers + 1",
    },
    "layer_decay": {"rate": 0.5},
    "weight_decay": {"value": 0.01, "exclude": ["ndim<=1", "*.bias"]},
}
LR, STEPS = 1e-3, 4


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, count: int = 16) -> None:
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randint(0, 100, (count, 12), generator=generator)
        self.labels = torch.randint(0, 2, (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.inputs[index], "labels": self.labels[index]}


def test_trainer_keeps_layerwise_ratios_with_a_cosine_schedule(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    registry = new_registry()
    optimizer, scheduler = hf_trainer_optimizers(
        model, BERT_RULES, lr=LR, num_training_steps=STEPS, num_warmup_steps=1, scheduler="cosine", registry=registry
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4, report_to=[], use_cpu=True,
        save_strategy="no", logging_strategy="no", disable_tqdm=True,
    )
    seen: list[tuple[int, list[float]]] = []

    class Record(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # after optimizer.step() and scheduler.step()
            seen.append((state.global_step, [g["lr"] for g in optimizer.param_groups]))

    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=RandomTokens(), optimizers=(optimizer, scheduler), callbacks=[Record()]
    )
    trainer.train()
    plan = resolve(model, BERT_RULES, registry=registry)
    scales = [g["lr_scale"] for g in plan.param_groups]
    assert [step for step, _ in seen] == list(range(1, STEPS + 1))
    for step, lrs in seen:
        # transformers' cosine with 1 warmup step: factor = 0.5 * (1 + cos(pi * (step - 1) / (STEPS - 1)))
        factor = 0.5 * (1 + math.cos(math.pi * (step - 1) / (STEPS - 1)))
        assert lrs == pytest.approx([LR * scale * factor for scale in scales], rel=1e-9, abs=1e-18)
    assert seen[1][1][0] > 0  # a step with non-zero lrs was checked
    check_optimizer(optimizer, plan)
    rows = {row.name: row.lr_scale for row in plan.params}
    assert rows["bert.embeddings.word_embeddings.weight"] == 0.5**3
    assert rows["bert.encoder.layer.1.output.dense.weight"] == 0.5
    assert rows["classifier.weight"] == 1.0
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert "classifier.weight" in changed and "bert.encoder.layer.0.attention.self.query.weight" in changed
