"""Encoders (one per party), the top model and the active-only head. Plain PyTorch."""

from __future__ import annotations

import math

import torch
from torch import nn

from flwr_vproto.config import ConfigError, ModelConfig
from flwr_vproto.targets import call_target


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


def make_encoder(input_shape: tuple[int, ...], cfg: ModelConfig, party: str = "party") -> nn.Module:
    """The encoder for rows of ``input_shape``: ``cfg.encoder_target`` when set, else the one named by
    ``cfg.encoder``.

    Contract of ``encoder_target`` (``{_target_: dotted.path, **kwargs}``): the target (an ``nn.Module`` class or a
    factory) is called as ``target(input_shape=input_shape, embedding_dim=cfg.embedding_dim, **kwargs)`` and returns
    an ``nn.Module`` mapping a float32 batch of flattened rows ``(n, prod(input_shape))`` to ``(n, embedding_dim)``.
    ``party`` names the party in errors.
    """
    if cfg.encoder_target is not None:
        module = call_target(cfg.encoder_target, "model.encoder_target", party, input_shape=tuple(input_shape),
                             embedding_dim=cfg.embedding_dim)
        return _checked(module, (math.prod(input_shape),), cfg.embedding_dim, "model.encoder_target", party)
    if cfg.encoder == "cnn":
        return CNNEncoder(input_shape, cfg)
    return MLPEncoder(math.prod(input_shape), cfg)


def make_top_model(in_features: int, num_classes: int, cfg: ModelConfig, party: str = "active") -> nn.Module:
    """Top model ``g`` on the concatenated embeddings (or the active-only head on ``f_A`` alone).

    Contract of ``top_target``: called as ``target(in_features=in_features, num_classes=num_classes, **kwargs)``,
    returns an ``nn.Module`` mapping ``(n, in_features)`` to logits ``(n, num_classes)``. With
    ``method.research.joint_residual`` its last ``nn.Linear`` starts at zero (the joint model starts at the active-only
    head).
    """
    if cfg.top_target is not None:
        module = call_target(cfg.top_target, "model.top_target", party, in_features=in_features,
                             num_classes=num_classes)
        return _checked(module, (in_features,), num_classes, "model.top_target", party)
    return mlp([in_features, *cfg.top_hidden, num_classes], cfg.dropout)


def _checked(module: object, in_shape: tuple[int, ...], out_dim: int, option: str, party: str) -> nn.Module:
    """Refuse a built module that is not an ``nn.Module`` or maps two rows to the wrong width (one-line error).

    The check runs in eval mode without gradient, so it draws no random numbers (dropout is off in eval mode).
    """
    if not isinstance(module, nn.Module):
        raise ConfigError(f"{party}: {option} built a {type(module).__name__}, expected a torch.nn.Module")
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, *in_shape))
    except Exception as err:  # noqa: BLE001 - user code: say which option built it
        raise ConfigError(f"{party}: {option} module fails on a batch of shape {(2, *in_shape)}: "
                          f"{type(err).__name__}: {err}") from err
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, out_dim):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{party}: {option} module maps a batch of shape {(2, *in_shape)} to {shape}, expected "
                          f"{(2, out_dim)}")
    return module


def zero_output_layer(module: nn.Module, party: str = "active") -> None:
    """Zero the last ``nn.Linear`` of ``module`` (weights and bias): a residual top model starts as no correction."""
    last = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ConfigError(f"{party}: method.research.joint_residual needs a top model whose output layer is a "
                          f"torch.nn.Linear (to start it at zero); set method.research.joint_residual=false or add one "
                          f"to model.top_target")
    nn.init.zeros_(last[-1].weight)
    if last[-1].bias is not None:
        nn.init.zeros_(last[-1].bias)
