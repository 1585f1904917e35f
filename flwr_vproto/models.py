"""Encoders (one per party), the top model and the active-only head. Plain PyTorch."""

from __future__ import annotations

import math

import torch
from torch import nn

from flwr_vproto.config import ModelConfig


def resolve_device(name: str) -> torch.device:
    """``auto`` picks a GPU when one is present; nothing requires one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but no CUDA GPU is available; use device=auto or device=cpu")
    return torch.device(name)


def mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear layers of the given widths with ReLU (and dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Tabular or flattened-image encoder: ``input -> hidden... -> embedding_dim``."""

    def __init__(self, in_features: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.net = mlp([in_features, *cfg.hidden, cfg.embedding_dim], cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class CNNEncoder(nn.Module):
    """Small CNN for an image strip ``(C, H, W)``; rows arrive flattened and are reshaped here."""

    def __init__(self, input_shape: tuple[int, ...], cfg: ModelConfig) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"cnn encoder needs image input (C, H, W), got input shape {input_shape}")
        self.input_shape = tuple(input_shape)
        c = input_shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d((4, 4)), nn.Flatten(),
        )
        self.head = mlp([32 * 16, *cfg.hidden, cfg.embedding_dim], cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, *self.input_shape)))


def make_encoder(input_shape: tuple[int, ...], cfg: ModelConfig) -> nn.Module:
    """The encoder named by ``cfg.encoder`` for rows of ``input_shape``."""
    if cfg.encoder == "cnn":
        return CNNEncoder(input_shape, cfg)
    return MLPEncoder(math.prod(input_shape), cfg)


def make_top_model(in_features: int, num_classes: int, cfg: ModelConfig) -> nn.Sequential:
    """Top model ``g`` on the concatenated embeddings (or the active-only head on ``f_A`` alone)."""
    return mlp([in_features, *cfg.top_hidden, num_classes], cfg.dropout)
