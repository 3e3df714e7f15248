"""PyTorch Lightning: ``configure_optimizers`` with lwd-rules, a few real steps, ratios kept."""

from __future__ import annotations

import math

import lightning
import pytest
import torch
from torch import nn

from lwd_rules import check_optimizer, create_optimizer, resolve
from lwd_rules.plugins import new_registry

RULES = {
    "layers": {
        "num_layers": 2,
        "rules": [{"match": r"^stem\.", "layer": 0}, {"match": r"^blocks\.(?P<i>\d+)\.", "layer": "i + 1"}],
        "default": "num_layers + 1",
    },
    "layer_decay": {"rate": 0.5},
    "weight_decay": {"value": 0.01, "exclude": ["ndim<=1"]},
    "optimizer": {"name": "adamw", "lr": 1e-2},
}
REGISTRY = new_registry()
STEPS, T_MAX = 3, 10


class Tiny(lightning.LightningModule):
    """The documented pattern: the rules give the groups, a torch scheduler steps per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
        self.head = nn.Linear(8, 1)
        self.seen: list[list[float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.head(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def on_train_batch_end(self, outputs, batch, index) -> None:  # after the optimizer and scheduler steps
        self.seen.append([g["lr"] for g in self.trainer.optimizers[0].param_groups])

    def configure_optimizers(self):
        optimizer = create_optimizer(self, RULES, registry=REGISTRY)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=T_MAX)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def test_lightning_trains_each_group_at_its_scaled_lr():
    torch.manual_seed(0)
    model = Tiny()
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    trainer = lightning.Trainer(
        max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8))
    plan = resolve(model, RULES, registry=REGISTRY)
    scales = [g["lr_scale"] for g in plan.param_groups]
    assert sorted(set(scales)) == [0.125, 0.25, 0.5, 1.0]
    assert len(model.seen) == STEPS
    for step, lrs in enumerate(model.seen, start=1):
        factor = (1 + math.cos(math.pi * step / T_MAX)) / 2
        assert lrs == pytest.approx([1e-2 * scale * factor for scale in scales], rel=1e-9)
    check_optimizer(trainer.optimizers[0], plan)
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
