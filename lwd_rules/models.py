"""Build a model from a short spec on the meta device: names and shapes, no weights, no memory.

Specs: ``timm:convnext_tiny``, ``torchvision:convnext_tiny``, ``hf:<model_type>`` (the default
config of that model type, built locally with no download) or ``package.module:factory``.
"""

from __future__ import annotations

import importlib
from typing import Any


class ModelSpecError(ValueError):
    """A model spec that cannot be built, with a one-line reason."""


def build_model(spec: str, *, device: str = "meta") -> Any:
    """The ``torch.nn.Module`` that ``spec`` names, built on ``device`` without pretrained weights."""
    import torch

    kind, sep, name = spec.partition(":")
    if not sep or not name:
        raise ModelSpecError(f"bad model spec {spec!r}: use timm:NAME, torchvision:NAME, hf:MODEL_TYPE or package.module:factory")
    builders = {"timm": _timm, "torchvision": _torchvision, "hf": _hf}
    builder = builders.get(kind, lambda n: _factory(kind, n))
    with torch.device(device):
        try:
            model = builder(name)
        except ModelSpecError:
            raise
        except Exception as exc:  # noqa: BLE001 - any library failure becomes one readable line
            reason = " ".join(str(exc).split())
            raise ModelSpecError(f"cannot build {spec!r}: {type(exc).__name__}: {reason}") from None
    if not isinstance(model, torch.nn.Module):
        raise ModelSpecError(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _timm(name: str) -> Any:
    import timm

    if not timm.is_model(name):
        raise ModelSpecError(f"timm has no model {name!r}")
    return timm.create_model(name, pretrained=False)


def _torchvision(name: str) -> Any:
    import torchvision.models

    try:
        return torchvision.models.get_model(name, weights=None)
    except ValueError:
        raise ModelSpecError(f"torchvision has no model {name!r}") from None


def _hf(model_type: str) -> Any:
    try:
        import transformers
    except ImportError:
        raise ModelSpecError("hf: specs need transformers (pip install transformers)") from None
    try:
        config = transformers.AutoConfig.for_model(model_type)
    except ValueError:
        raise ModelSpecError(f"transformers has no model type {model_type!r}") from None
    return transformers.AutoModel.from_config(config)


def _factory(module_name: str, attribute: str) -> Any:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelSpecError(f"cannot import {module_name!r}: {exc}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ModelSpecError(f"{module_name!r} has no callable {attribute!r}")
    return factory()
