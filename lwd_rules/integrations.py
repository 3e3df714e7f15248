"""Ready-made wiring for training frameworks, so their schedulers keep each group's lr ratio."""

from __future__ import annotations

from typing import Any

from lwd_rules.orchestrator import create_optimizer
from lwd_rules.rules.load import Source


def hf_trainer_optimizers(
    model: Any,
    source: Source | None = None,
    *,
    num_training_steps: int,
    num_warmup_steps: int = 0,
    scheduler: str = "linear",
    lr: float | None = None,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """``(optimizer, scheduler)`` for ``transformers.Trainer(optimizers=...)``.

    The optimizer uses the torch convention (each group starts at ``lr × lr_scale``), which is what
    Hugging Face schedulers scale; ``scheduler`` is any ``transformers.get_scheduler`` name
    (``linear``, ``cosine``, ``constant_with_warmup``, ...). ``kwargs`` go to ``create_optimizer``.
    """
    from transformers import get_scheduler

    optimizer = create_optimizer(model, source, lr=lr, convention="torch", **kwargs)
    schedule = get_scheduler(scheduler, optimizer, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps)
    return optimizer, schedule
