"""Fine-tune a tiny BERT for 3 steps with transformers.Trainer and an lwd-rules optimizer (CPU, real weights).

The Trainer builds its default linear schedule over the optimizer's groups: a LambdaLR that scales
every group's own initial lr by the same factor, so the layer-wise ratios hold at every step.
"""

from __future__ import annotations

import pytest
import torch
import transformers

import lwd_rules_transformers
from lwd_rules import create_optimizer
from lwd_rules.testing import registry_for

LR, RATE, STEPS = 1e-3, 0.8, 3


class RandomTokens(torch.utils.data.Dataset):
    """Random token ids and labels: enough for a few optimizer steps."""

    def __init__(self, size: int = 16, length: int = 12, vocab: int = 100, labels: int = 2) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (size, length), generator=generator)
        self.labels = torch.randint(0, labels, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.ids[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[index]}


class RecordLrs(transformers.TrainerCallback):
    """Every group's lr after each step (the Trainer steps its scheduler before on_step_end)."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append([group["lr"] for group in optimizer.param_groups])


def test_trainer_keeps_the_layer_wise_ratios(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=100, num_labels=2
    )
    model = transformers.BertForSequenceClassification(config)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    with registry_for(lwd_rules_transformers):
        optimizer = create_optimizer(model, {"layer_decay": {"rate": RATE}}, lr=LR)
    scales = [group["lwd_lr_scale"] for group in optimizer.param_groups]
    assert sorted(set(scales)) == pytest.approx([RATE**3, RATE**2, RATE, 1.0], rel=1e-12)  # N = 2: ids 0..3

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4, report_to=[], use_cpu=True,
        save_strategy="no", logging_strategy="no", disable_tqdm=True,
    )
    record = RecordLrs()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=RandomTokens(), optimizers=(optimizer, None), callbacks=[record])
    trainer.train()

    groups = trainer.optimizer.param_groups
    assert [group["lwd_lr_scale"] for group in groups] == scales  # the Trainer kept our groups
    assert [group["initial_lr"] for group in groups] == pytest.approx([LR * s for s in scales], rel=1e-12)
    assert len(record.lrs) == STEPS
    head = scales.index(1.0)
    for step, lrs in enumerate(record.lrs, start=1):
        factor = (STEPS - step) / STEPS  # linear decay to 0, no warmup
        assert lrs[head] == pytest.approx(LR * factor, rel=1e-12, abs=1e-15)
        if factor:
            assert [lr / lrs[head] for lr in lrs] == pytest.approx(scales, rel=1e-12)  # group lr / head lr = scale ratio
        else:
            assert lrs == [0.0] * len(lrs)

    after = dict(model.named_parameters())
    unchanged = [name for name, value in before.items() if torch.equal(value, after[name].detach())]
    assert not unchanged, f"parameters that did not change: {unchanged}"


def test_example_script_runs_and_prints_per_group_lrs():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    script = root / "examples" / "finetune_bert_trainer.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 0, done.stderr
    assert "step 5/5" in done.stdout
    assert "layer_0_decay      lr 5.120e-04  (scale 0.512" in done.stdout  # 1e-3 * 0.8 ** 3
    assert "layer_3_no_decay   lr 1.000e-03  (scale 1," in done.stdout
