"""Fine-tune a tiny BERT with transformers.Trainer and layer-wise lr decay, on random tokens (CPU, seconds).

    pip install -e plugins/lwd-rules-transformers accelerate   # the plugin; Trainer needs accelerate
    python examples/finetune_bert_trainer.py

No rule set is named: the transformers plugin detects BERT from ``config.model_type`` and supplies
the layer ids (embeddings -> 0, encoder.layer.i -> i + 1, pooler and classifier -> N + 1) and the
usual weight-decay recipe (none for biases and LayerNorm weights). The optimizer goes to the
Trainer as is; the Trainer's default linear schedule scales every group's own lr by one factor,
so the layer-wise ratios hold at every step.
"""

from __future__ import annotations

import tempfile

import torch
import transformers

from lwd_rules import create_optimizer

STEPS, BATCH, LENGTH, VOCAB, LABELS = 5, 4, 16, 100, 2
LR, RATE = 1e-3, 0.8


class RandomTokens(torch.utils.data.Dataset):
    """Random token ids with random labels."""

    def __init__(self, size: int = 64) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, VOCAB, (size, LENGTH), generator=generator)
        self.labels = torch.randint(0, LABELS, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.ids[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[index]}


class PrintLrs(transformers.TrainerCallback):
    """After each step: the loss and the lr of the lowest (embeddings) and highest (head) layer."""

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        lrs = [group["lr"] for group in optimizer.param_groups]
        print(f"step {state.global_step}/{state.max_steps}  lr: embeddings {min(lrs):.3e}  head {max(lrs):.3e}")


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=VOCAB, num_labels=LABELS
    )
    model = transformers.BertForSequenceClassification(config)
    # Detected as hf-bert; each group starts at LR x its layer's scale (kept in group["lwd_lr_scale"]).
    optimizer = create_optimizer(model, {"layer_decay": {"rate": RATE}}, lr=LR)

    with tempfile.TemporaryDirectory() as output_dir:
        args = transformers.TrainingArguments(
            output_dir=output_dir, max_steps=STEPS, per_device_train_batch_size=BATCH, report_to=[], use_cpu=True,
            save_strategy="no", logging_strategy="no", disable_tqdm=True,
        )
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=RandomTokens(), optimizers=(optimizer, None), callbacks=[PrintLrs()]
        )
        result = trainer.train()
    print(f"training loss {result.training_loss:.4f}")

    # The linear schedule ends at 0 after the last step; initial_lr is each group's lr before it.
    print(f"\n{len(optimizer.param_groups)} parameter groups:")
    for group in optimizer.param_groups:
        print(
            f"  {group['group_name']:<18} lr {group['initial_lr']:.3e}"
            f"  (scale {group['lwd_lr_scale']:.4g}, wd {group['weight_decay']:g}, {len(group['params'])} tensors)"
        )


if __name__ == "__main__":
    main()
