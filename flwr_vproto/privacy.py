"""Differentially private second prototypes (the Gaussian mechanism) and their privacy accounting. Plain PyTorch.

The second prototypes are the one label-dependent thing a passive party receives: per class, the mean of its own
embeddings of the aligned users with that label. Together they are a nearest-prototype classifier for the passive's
rows, i.e. a label-leakage channel. This module bounds it with (epsilon, delta)-differential privacy with respect
to adding or removing one aligned user (Opacus's neighbouring relation):

* **clip**: each embedding is scaled to L2 norm at most ``C`` (``privacy.clip_norm``, after ``method.normalize``);
* **sums**: one user's row lands in exactly one class sum, so adding or removing it moves the ``(classes, d)``
  matrix of class sums by at most ``C`` in L2 norm (sensitivity ``C``); each released matrix gets
  ``N(0, (sigma C)^2)`` on every entry;
* **counts**: the per-class counts (sensitivity 1) get ``N(0, sigma^2)`` once per round and are shared by every
  passive's prototypes. The prototype is ``noisy sum / noisy count``: the true count is private (it is the label
  histogram of the aligned users) and no public count exists, so the denominator is a noisy one. A class gets a
  prototype only when its noisy count ``n`` exceeds both ``2 sigma`` (an absent class passes with probability
  2.3 %) and ``sigma sqrt(d)``: below that the noise in its mean (expected norm about ``sigma C sqrt(d) / n``) is
  larger than any mean of clipped rows (norm at most ``C``), and such a prototype misleads more than it helps. The
  counts themselves never leave the active party; the released class mask is computed from them
  (post-processing).

Every passive's sums and the shared counts are separate Gaussian releases over the same users, so a round that
sends prototypes to ``K`` passives is ``K + 1`` steps of the Gaussian mechanism with noise multiplier ``sigma`` and
sampling rate 1 (all aligned rows, no subsampling); the last round's prototypes are never sent and are not counted.
Everything computed from the noisy values afterwards (division, EMA, the passives' training, the active party's
prototype classifier) is post-processing. Accounting is Opacus's :class:`~opacus.accountants.RDPAccountant`; a
``target_epsilon`` is turned into ``sigma`` with Opacus's ``get_noise_multiplier`` for the planned number of steps.

Opacus is imported only when privacy is on (it pulls in much of its training stack).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import torch

from flwr_vproto import exchanges, optional
from flwr_vproto.config import Config, ConfigError

COUNT_THRESHOLD_SIGMAS = 2.0  # a class is released when its noisy count exceeds this many count-noise std devs
# RDP orders: Opacus's defaults (up to 63) plus larger ones, which the first few full-batch releases at a large
# sigma need for a tight bound (the optimal order grows like sigma * sqrt(2 log(1/delta) / steps)).
ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 96, 128, 160, 192, 256, 384, 512, 768, 1024]


def enabled(cfg: Config) -> bool:
    """Whether the second prototypes are privatised (a noise multiplier or a target epsilon is set)."""
    return cfg.privacy.gaussian


def releases_per_round(cfg: Config) -> int:
    """Gaussian-mechanism steps per round that sends prototypes: one per passive's sums plus one for the counts
    (none when the passives are not sent prototypes: ``MethodConfig.shares_prototypes``)."""
    return cfg.dataset.num_passive + 1 if cfg.method.shares_prototypes else 0


def planned_steps(cfg: Config) -> int:
    """Steps over the whole run: every exchange but the last sends prototypes (the last one's are never used)."""
    return releases_per_round(cfg) * (exchanges.count(cfg) - 1)


def noise_multiplier(cfg: Config) -> float:
    """``sigma``: configured, or calibrated so the run spends at most ``privacy.target_epsilon`` (0 = off)."""
    p = cfg.privacy
    if p.target_epsilon is None:
        return float(p.noise_multiplier)
    return _calibrate(float(p.target_epsilon), float(p.delta), planned_steps(cfg))


def gradient_noise_multiplier(cfg: Config) -> float:
    """``sigma`` of the Gaussian gradient channel (``defence.*``, :mod:`flwr_vproto.defences`): configured, or
    calibrated so the run's planned releases spend at most ``defence.target_epsilon`` at ``defence.delta``."""
    from flwr_vproto import defences

    d = cfg.defence
    if d.target_epsilon is None:
        return float(d.noise_multiplier)
    return _calibrate(float(d.target_epsilon), float(d.delta), defences.planned_releases(cfg), "defence")


@functools.lru_cache(maxsize=64)
def _calibrate(target_epsilon: float, delta: float, steps: int, section: str = "privacy") -> float:
    if steps == 0:
        return 0.0  # nothing is ever released
    optional.require("opacus", f"{section}.target_epsilon")
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=1.0,
                                              steps=steps, accountant="rdp", epsilon_tolerance=0.01, alphas=ALPHAS))
    except ValueError as err:
        what = "prototype" if section == "privacy" else "gradient-row"
        raise ConfigError(f"{section}.target_epsilon={target_epsilon}: cannot be reached with delta={delta} over "
                          f"{steps} {what} releases ({err})") from None


def clip_rows(z: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Scale each row to L2 norm at most ``clip_norm`` (rows already inside are unchanged)."""
    norms = z.norm(dim=1, keepdim=True)
    return z * torch.clamp(clip_norm / norms.clamp(min=1e-12), max=1.0)


def noisy_class_sums(
    z: torch.Tensor, labels: torch.Tensor, num_classes: int, clip_norm: float, sigma: float, gen: torch.Generator
) -> torch.Tensor:
    """Per-class sums of the clipped rows plus ``N(0, (sigma * clip_norm)^2)`` on every entry, ``(C, d)``.

    Noise is drawn on the CPU from ``gen`` so that every engine and device draws the same numbers.
    """
    keep = labels >= 0
    zc, lab = clip_rows(z[keep], clip_norm), labels[keep]
    sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, lab, zc)
    noise = torch.randn(sums.shape, generator=gen, dtype=torch.float32) * (sigma * clip_norm)
    return sums + noise.to(device=z.device, dtype=z.dtype)


def noisy_counts(labels: torch.Tensor, num_classes: int, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Per-class counts of the labelled rows plus ``N(0, sigma^2)`` (sensitivity 1), as float."""
    counts = torch.bincount(labels[labels >= 0], minlength=num_classes).to(torch.float32).cpu()
    return counts + torch.randn(num_classes, generator=gen) * sigma


def prototypes_from_noisy(
    sums: torch.Tensor, counts: torch.Tensor, sigma: float, clip_norm: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(means, mask)`` from noisy sums ``(C, d)`` and counts: classes whose noisy count exceeds ``2 sigma`` and
    ``sigma sqrt(d)`` (and 0), see the module docstring.

    Each mean is projected back onto the ball of radius ``clip_norm``, where the true mean of clipped rows lies:
    projecting onto a convex set that holds the true value never moves an estimate further from it, and it keeps a
    class with a small noisy count from getting a prototype far off the embeddings' scale (post-processing).
    """
    counts = counts.to(sums.device)
    mask = counts > max(COUNT_THRESHOLD_SIGMAS * sigma, sigma * math.sqrt(sums.shape[1]), 0.0)
    means = clip_rows(sums / counts.clamp(min=1.0).unsqueeze(1), clip_norm)
    return torch.where(mask.unsqueeze(1), means, torch.zeros_like(means)), mask


class Accountant:
    """Opacus's RDP accountant for the prototype releases of one run; its state travels with the active party."""

    def __init__(self, sigma: float, delta: float) -> None:
        optional.require("opacus", "accounting a Gaussian release (privacy.* or defence.*)")
        from opacus.accountants import RDPAccountant

        self.sigma, self.delta = float(sigma), float(delta)
        self._rdp = RDPAccountant()

    def step(self, releases: int) -> None:
        """Record ``releases`` Gaussian-mechanism steps (noise ``sigma``, sampling rate 1: every aligned row)."""
        for _ in range(releases):
            self._rdp.step(noise_multiplier=self.sigma, sample_rate=1.0)

    @property
    def steps(self) -> int:
        return sum(int(n) for _, _, n in self._rdp.history)

    def epsilon(self) -> float:
        """Epsilon spent so far at ``delta`` (0 before the first release).

        When the best order is the largest one tried, the bound is looser than it could be but still valid, so
        Opacus's warning about it is silenced.
        """
        if not self._rdp.history:
            return 0.0
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return float(self._rdp.get_epsilon(delta=self.delta, alphas=ALPHAS))

    def state_dict(self) -> dict[str, Any]:
        """Plain lists and floats (loadable with ``torch.load(weights_only=True)``)."""
        return {"history": [[float(s), float(q), int(n)] for s, q, n in self._rdp.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rdp.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]


def privacy_summary(cfg: Config, history: list[dict[str, float]]) -> dict[str, Any]:
    """``results.json``'s ``privacy`` entry (privacy on only): the mechanism's parameters and the epsilon spent."""
    if not enabled(cfg):
        return {}
    spent = [h["privacy/epsilon"] for h in history if "privacy/epsilon" in h]
    return {"privacy": {
        "noise_multiplier": noise_multiplier(cfg), "clip_norm": cfg.privacy.clip_norm, "delta": cfg.privacy.delta,
        "target_epsilon": cfg.privacy.target_epsilon, "steps": planned_steps(cfg),
        "epsilon": spent[-1] if spent else 0.0,
    }}
