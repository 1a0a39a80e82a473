"""Model registry: named, Opacus-compatible torch modules sized for a dataset.

Every model passes `opacus.validators.ModuleValidator.validate(model, strict=True)`:
no BatchNorm (GroupNorm where a norm layer is wanted), only layers Opacus computes
per-sample gradients for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedsim.errors import ConfigError
from fedsim.fedmodels.text import PAD_ID

TEXT_EMBED_DIM = 32


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """What a model needs to know about its data to build itself."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    vocab_size: int | None = None  # text models: number of token ids

    def to_dict(self) -> dict:
        """JSON-friendly form (sent to clients inside the run settings)."""
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        """Inverse of `to_dict`."""
        return cls(
            name=data["name"],
            input_shape=tuple(data["input_shape"]),
            num_classes=int(data["num_classes"]),
            vocab_size=None if data.get("vocab_size") is None
            else int(data["vocab_size"]),
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


class TanhCNN(nn.Module):
    """A small tanh CNN for DP-SGD: tempered sigmoids (Papernot et al. 2021).

    Under DP-SGD the clipped gradient must stand out of noise fixed at sigma x clip,
    and bounded activations keep gradients from being clipped away; 26k parameters
    for 28x28 input (the FedAvg CNN has 1.66M). Images of 16x16 and more: 8x8/2 and
    4x4/2 convolutions (16, 32 channels) each with 2x2/1 max pooling, FC 32, linear
    head; smaller images: 3x3 convolutions, the first of stride 1.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        big = min(height, width) >= 16
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, kernel_size=8 if big else 3, stride=2 if big else 1,
                      padding=3 if big else 1),
            nn.Tanh(),
            nn.MaxPool2d(2, 1),
            nn.Conv2d(16, 32, kernel_size=4 if big else 3, stride=2),
            nn.Tanh(),
            nn.MaxPool2d(2, 1),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *input_shape)).shape[1]
        self.classifier = nn.Sequential(nn.Linear(flat, 32), nn.Tanh(),
                                        nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        return self.classifier(self.features(x))


def _image_model(name: str, model: type[nn.Module], min_side: int, why: str
                 ) -> Callable[[ModelSpec], nn.Module]:
    """A builder of `model` that names what is wrong with a spec it cannot fit."""

    def build(spec: ModelSpec) -> nn.Module:
        if len(spec.input_shape) != 3:
            raise ConfigError(
                f"model '{name}' needs image input (channels, height, width), "
                f"got shape {spec.input_shape}; use --model text for text datasets"
            )
        if min(spec.input_shape[1:]) < min_side:
            raise ConfigError(
                f"model '{name}' {why}, so images must be at least {min_side}x{min_side}, "
                f"got {spec.input_shape[1]}x{spec.input_shape[2]}; use larger images"
            )
        return model(spec.input_shape, spec.num_classes)

    return build


def distinct_token_mask(tokens: torch.Tensor) -> torch.Tensor:
    """True at the first occurrence of each non-padding token id in its row."""
    same = tokens.unsqueeze(2) == tokens.unsqueeze(1)  # [b, i, j]: token i == token j
    seen_before = same.tril(diagonal=-1).any(dim=-1)  # equal to some earlier j < i
    return (tokens != PAD_ID) & ~seen_before


class TextClassifier(nn.Module):
    """Bag-of-embeddings text classifier (fastText-style), made for (DP-)SGD.

    The embeddings of the distinct words of a text are summed, divided by the square
    root of their number and fed to one linear layer. Counting each word once keeps
    frequent words ('the', 'said') from dominating long texts, which makes plain SGD
    converge steadily (BBC articles: 90% vs. collapses with repeated counts); the
    square-root scaling keeps short and long texts on one scale. No recurrence or
    norm layers, so it is fast on CPU and Opacus computes exact per-sample gradients
    for both layers. Padding is masked in the forward pass (not via `padding_idx`),
    so DP noise landing on the padding row changes nothing. Small initial embeddings
    (std 0.01) let SGD shape them quickly.
    """

    def __init__(self, vocab_size: int, num_classes: int, *,
                 embed_dim: int = TEXT_EMBED_DIM) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        nn.init.normal_(self.embedding.weight, std=0.01)
        self.classifier = nn.Linear(embed_dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of token ids, shape (batch, length)."""
        mask = distinct_token_mask(tokens).unsqueeze(-1).to(self.embedding.weight.dtype)
        summed = (self.embedding(tokens) * mask).sum(dim=1)
        count = mask.sum(dim=1).clamp(min=1.0)
        return self.classifier(summed / count.sqrt())


def _build_text(spec: ModelSpec) -> nn.Module:
    if spec.vocab_size is None or len(spec.input_shape) != 1:
        raise ConfigError(
            f"model 'text' needs a text dataset (token ids and a vocabulary), got "
            f"input shape {spec.input_shape}; use --model cnn for images or a text "
            "dataset such as bbc-news or ag_news"
        )
    return TextClassifier(spec.vocab_size, spec.num_classes)


_REGISTRY: dict[str, tuple[str, Callable[[ModelSpec], nn.Module]]] = {
    "cnn": ("FedAvg-paper CNN (2x conv5x5 32/64, FC 512), sized for the input",
            _image_model("cnn", FedAvgCNN, 4, "pools twice by 2")),
    "dp-cnn": ("small tanh CNN for DP-SGD (conv 16/32, FC 32; Papernot et al. 2021); "
               "--dp's default for images",
               _image_model("dp-cnn", TanhCNN, 6, "convolves and pools twice")),
    "text": (f"bag-of-embeddings text classifier ({TEXT_EMBED_DIM}-dim embeddings of "
             "the distinct words, sqrt pooling, linear head)", _build_text),
}


def register(
    name: str, description: str, builder: Callable[[ModelSpec], nn.Module]
) -> None:
    """Add a model builder to the registry."""
    _REGISTRY[name] = (description, builder)


def unregister(name: str) -> None:
    """Remove a model builder from the registry (no error when it is absent)."""
    _REGISTRY.pop(name, None)


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


def parameter_count(spec: ModelSpec) -> int:
    """Trainable parameters of the model `spec` names, never allocated (meta device)."""
    with torch.device("meta"):
        return count_parameters(build_model(spec))
