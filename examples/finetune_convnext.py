"""Fine-tune a timm ConvNeXt with layer-wise lr decay for a few steps on random data (CPU, a few seconds).

    python examples/finetune_convnext.py

The optimizer comes from ``finetune-convnext.yaml`` (next to this script): the ConvNeXt plugin
detects the timm layout and supplies the layer ids, the file sets the decay rate, weight decay, a
10x head and AdamW at lr 4e-4. A timm ``CosineLRScheduler`` is stepped once per update.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.scheduler import CosineLRScheduler

from lwd_rules import create_optimizer

RULES = Path(__file__).resolve().parent / "finetune-convnext.yaml"
STEPS = 5             # this demo stops after 5 updates...
TOTAL_UPDATES = 100   # ...of a cosine schedule sized for a real run
BATCH, SIZE, CLASSES = 4, 32, 10


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a tiny model on 32x32 images: one thread is fastest
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=CLASSES)
    # Each group starts at lr x its layer's scale; the scale is kept in group["lwd_lr_scale"].
    optimizer = create_optimizer(model, RULES)
    scheduler = CosineLRScheduler(optimizer, t_initial=TOTAL_UPDATES, t_in_epochs=False)

    model.train()
    for step in range(STEPS):
        images = torch.randn(BATCH, 3, SIZE, SIZE)
        labels = torch.randint(0, CLASSES, (BATCH,))
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step_update(num_updates=step + 1)  # timm schedulers count updates, not epochs
        print(f"step {step + 1}/{STEPS}  loss {loss.item():.4f}")

    print(f"\n{len(optimizer.param_groups)} parameter groups after {STEPS} steps:")
    for group in optimizer.param_groups:
        print(f"  {group['group_name']:<22} lr {group['lr']:.3e}  (scale {group['lwd_lr_scale']:.4g}, wd {group['weight_decay']:g})")


if __name__ == "__main__":
    main()
