"""Optimizer routing: hidden 2-D weights to Muon, everything else to AdamW, both with layer-wise decay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lwd_rules import build_optimizer, check_optimizer, create_optimizer, create_optimizers, resolve
from lwd_rules.plugins import new_registry

RATE, LR = 0.5, 0.01


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16)) for _ in range(3))
        self.head = nn.Linear(16, 50)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(tokens)
        for block in self.blocks:
            hidden = hidden + block(hidden)
        return self.head(hidden)


def rules(name: str) -> dict:
    return {
        "layers": {
            "num_layers": 3,
            "rules": [{"match": r"^embed\.", "layer": 0}, {"match": r"^blocks\.(?P<i>\d+)\.", "layer": "i + 1"}],
            "default": "num_layers + 1",
        },
        "layer_decay": {"rate": RATE},
        "weight_decay": {"value": 0.01, "exclude": ["ndim<=1"]},
        "optimizer": {"name": name, "fallback": "adamw", "lr": LR},
    }


# Written from the spec: the three hidden Linear weights (layers 1..3) are the only "hidden matrices";
# the embedding (id 0) and the head (id 4) are 2-D but go to AdamW, as do all 1-D tensors.
MATRIX = {f"blocks.{i}.1.weight": LR * RATE ** (4 - (i + 1)) for i in range(3)}
FALLBACK = {
    "embed.weight": LR * RATE**4,
    **{f"blocks.{i}.{part}": LR * RATE ** (4 - (i + 1)) for i in range(3) for part in ("0.weight", "0.bias", "1.bias")},
    "head.weight": LR,
    "head.bias": LR,
}


def held(optimizer: torch.optim.Optimizer, model: nn.Module, *, fallback: bool | None = None) -> dict[str, float]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        names[id(p)]: group["lr"]
        for group in optimizer.param_groups
        if fallback is None or group.get("use_fallback", False) == fallback
        for p in group["params"]
    }


def train(model: nn.Module, optimizers: list[torch.optim.Optimizer], steps: int = 3) -> None:
    tokens = torch.randint(0, 50, (4, 8), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        loss = model(tokens).logsumexp(-1).mean()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()


def assert_lrs(got: dict[str, float], expected: dict[str, float]) -> None:
    assert sorted(got) == sorted(expected)
    for name, lr in expected.items():
        assert got[name] == pytest.approx(lr, rel=1e-12), name


def test_timm_muon_holds_both_routes_in_one_optimizer():
    torch.manual_seed(0)
    model = TinyLM()
    optimizer = create_optimizer(model, rules("muon"), registry=new_registry())
    assert type(optimizer).__module__.startswith("timm.optim")
    assert_lrs(held(optimizer, model, fallback=False), MATRIX)
    assert_lrs(held(optimizer, model, fallback=True), FALLBACK)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, [optimizer])
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    check_optimizer(optimizer, resolve(model, rules("muon"), registry=new_registry()))


def test_torch_muon_and_adamw_are_two_optimizers():
    torch.manual_seed(0)
    model = TinyLM()
    muon, adamw = create_optimizers(model, rules("torch.Muon"), registry=new_registry())
    assert (type(muon), type(adamw)) == (torch.optim.Muon, type(adamw))
    assert type(adamw).__name__ == "AdamW"
    assert_lrs(held(muon, model), MATRIX)
    assert_lrs(held(adamw, model), FALLBACK)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, [muon, adamw])
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    plan = resolve(model, rules("torch.Muon"), registry=new_registry())
    check_optimizer(muon, plan)
    check_optimizer(adamw, plan)


def test_two_optimizer_routing_needs_create_optimizers():
    plan = resolve(TinyLM(), rules("torch.Muon"), registry=new_registry())
    with pytest.raises(ValueError, match="use create_optimizers"):
        build_optimizer(plan)


def test_timm_hybrid_fallback_must_be_adamw():
    bad = rules("muon")
    bad["optimizer"]["fallback"] = "sgd"
    with pytest.raises(ValueError, match="AdamW built in"):
        create_optimizer(TinyLM(), bad, registry=new_registry())
