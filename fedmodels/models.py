"""Model registry: named, Opacus-compatible torch modules sized for a dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedsim.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """What a model needs to know about its data to build itself."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int

    def to_dict(self) -> dict:
        """JSON-friendly form (sent to clients inside the run settings)."""
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        """Inverse of `to_dict`."""
        return cls(
            name=data["name"],
            input_shape=tuple(data["input_shape"]),
            num_classes=int(data["num_classes"]),
        )


class FedAvgCNN(nn.Module):
    """The FedAvg paper's CNN (McMahan et al. 2017), sized for any image shape.

    Two 5x5 convolutions (32, 64 channels, 'same' padding) each followed by ReLU and
    2x2 max pooling, a 512-unit fully connected layer and a linear classifier.
    For 28x28x1 input this is the paper's 1,663,370-parameter model.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = 64 * (height // 4) * (width // 4)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        return self.classifier(self.features(x))


def _build_cnn(spec: ModelSpec) -> nn.Module:
    if len(spec.input_shape) != 3:
        raise ConfigError(
            f"model 'cnn' needs image input (channels, height, width), "
            f"got shape {spec.input_shape}; use --model text for text datasets"
        )
    return FedAvgCNN(spec.input_shape, spec.num_classes)


_REGISTRY: dict[str, tuple[str, Callable[[ModelSpec], nn.Module]]] = {
    "cnn": ("FedAvg-paper CNN (2x conv5x5 32/64, FC 512), sized for the input", _build_cnn),
}


def register(name: str, description: str, builder: Callable[[ModelSpec], nn.Module]) -> None:
    """Add a model builder to the registry."""
    _REGISTRY[name] = (description, builder)


def model_names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def model_description(name: str) -> str:
    """One-line description of a registered model."""
    return _REGISTRY[name][0]


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the model `spec` names; unknown names raise a ConfigError."""
    if spec.name not in _REGISTRY:
        raise ConfigError(
            f"unknown model '{spec.name}'; choose one of: {', '.join(model_names())}"
        )
    return _REGISTRY[spec.name][1](spec)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
