"""Differentially private second prototypes (the Gaussian mechanism) and the run's privacy ledger. Plain PyTorch.

The second prototypes are the label-dependent thing a passive party receives under the third loss
(``method=vproto_seed``): per class, the mean of its own embeddings of the aligned users with that label. Together
they are a nearest-prototype classifier for the passive's rows, and, solved against the passive's own aligned
embeddings over the rounds, they give every shared label away. This module bounds them with (epsilon, delta)-label
differential privacy: the neighbouring relation is **changing one aligned training user's label** (what a passive
wants to learn), not adding or removing a user.

* **clip**: each embedding is scaled to L2 norm at most ``C`` (``privacy.clip_norm``, after
  ``method.research.normalize``);
* **sums**: one user's row lands in exactly one class sum, so changing its label takes ``<= C`` out of one row of
  the ``(classes, d)`` matrix of class sums and puts it into another: an L2 move of at most ``sqrt(2) C``
  (:data:`LABEL_CHANGE`). Each released matrix gets ``N(0, (sigma sqrt(2) C)^2)`` on every entry;
* **counts**: the per-class counts move by at most ``sqrt(2)`` (one down, one up) and get ``N(0, 2 sigma^2)`` once
  per round, shared by every passive's prototypes. The prototype is ``noisy sum / noisy count``: the true count is
  private (the label histogram of the aligned users), so the denominator is a noisy one. A class gets a prototype
  only when its noisy count ``n`` exceeds both twice the count noise's standard deviation (an absent class passes
  with probability 2.3 %) and ``s sqrt(d)`` (``s`` that standard deviation): below that the noise in its mean is
  larger than any mean of clipped rows, and such a prototype misleads more than it helps. The counts never leave
  the active party; the released class mask is computed from them (post-processing).

So each passive's sums and the shared counts are separate Gaussian releases with noise multiplier ``sigma`` for one
changed label; a round that sends prototypes to ``K`` passives is ``K + 1`` of them (sampling rate 1: all aligned
rows), and the last round's prototypes are never sent and not counted. A passive's embeddings of a round are a
function of its own data and of earlier DP releases only (no gradient row reaches it under the third loss: the
Gaussian gradient channel is refused with it, the default sends none), so the rounds compose adaptively. Everything
computed from the noisy values afterwards (division, the mask, EMA, the passives' third loss, this party's prototype
classifier, the test rows it asks for on a fixed schedule) is post-processing. Not covered: the scores the active
party reports to the server. :class:`Accountant` is the run's one ledger: Opacus's RDP accountant, every release
entered with its own noise standard deviation and sensitivity; a ``target_epsilon`` is turned into ``sigma`` with
Opacus's ``get_noise_multiplier`` for the planned number of releases.

Opacus is imported only when privacy is on (it pulls in much of its training stack).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from flwr_vproto import exchanges, optional
from flwr_vproto.config import Config, ConfigError

LABEL_CHANGE = math.sqrt(2.0)  # L2 move of the class sums (in units of C) and of the counts when one label changes
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
    calibrated so that one round's rows to all passives are ``defence.target_epsilon``-label-DP at ``defence.delta``
    *given that round's model* (the only bound the channel has: :func:`flwr_vproto.defences.release_epsilon`)."""
    from flwr_vproto import defences

    d = cfg.defence
    if d.target_epsilon is None:
        return float(d.noise_multiplier)
    steps = cfg.dataset.num_passive if defences.planned_releases(cfg) else 0
    return _calibrate(float(d.target_epsilon), float(d.delta), steps, "defence")


@functools.lru_cache(maxsize=64)
def per_release_epsilon(sigma: float, delta: float, releases: int) -> float:
    """Epsilon at ``delta`` of ``releases`` Gaussian mechanisms of noise multiplier ``sigma`` (0 when none)."""
    if releases == 0 or sigma <= 0:
        return 0.0 if releases == 0 else math.inf
    acc = Accountant(sigma, delta)
    acc.step(releases)
    return acc.epsilon()


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
        what = ("prototype releases" if section == "privacy"
                else "gradient-row releases (one round's rows, given that round's model)")
        raise ConfigError(f"{section}.target_epsilon={target_epsilon}: cannot be reached with delta={delta} over "
                          f"{steps} {what} ({err})") from None


def clip_rows(z: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Scale each row to L2 norm at most ``clip_norm`` (rows already inside are unchanged)."""
    norms = z.norm(dim=1, keepdim=True)
    return z * torch.clamp(clip_norm / norms.clamp(min=1e-12), max=1.0)


def noisy_class_sums(
    z: torch.Tensor, labels: torch.Tensor, num_classes: int, clip_norm: float, sigma: float, gen: torch.Generator
) -> torch.Tensor:
    """Per-class sums of the clipped rows plus ``N(0, (sigma * sqrt(2) * clip_norm)^2)`` on every entry, ``(C, d)``:
    noise multiplier ``sigma`` for one changed label (sensitivity ``sqrt(2) clip_norm``).

    Noise is drawn on the CPU from ``gen`` so that every engine and device draws the same numbers.
    """
    keep = labels >= 0
    zc, lab = clip_rows(z[keep], clip_norm), labels[keep]
    sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, lab, zc)
    noise = torch.randn(sums.shape, generator=gen, dtype=torch.float32) * (sigma * LABEL_CHANGE * clip_norm)
    return sums + noise.to(device=z.device, dtype=z.dtype)


def noisy_counts(labels: torch.Tensor, num_classes: int, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Per-class counts of the labelled rows plus ``N(0, 2 sigma^2)`` (sensitivity ``sqrt(2)`` for one changed
    label), as float."""
    counts = torch.bincount(labels[labels >= 0], minlength=num_classes).to(torch.float32).cpu()
    return counts + torch.randn(num_classes, generator=gen) * (sigma * LABEL_CHANGE)


def prototypes_from_noisy(
    sums: torch.Tensor, counts: torch.Tensor, sigma: float, clip_norm: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(means, mask)`` from noisy sums ``(C, d)`` and counts: classes whose noisy count exceeds ``2 s`` and
    ``s sqrt(d)`` (and 0), ``s = sigma sqrt(2)`` the counts' noise standard deviation; see the module docstring.

    Each mean is projected back onto the ball of radius ``clip_norm``, where the true mean of clipped rows lies:
    projecting onto a convex set that holds the true value never moves an estimate further from it, and it keeps a
    class with a small noisy count from getting a prototype far off the embeddings' scale (post-processing).
    """
    counts = counts.to(sums.device)
    s = sigma * LABEL_CHANGE
    mask = counts > max(COUNT_THRESHOLD_SIGMAS * s, s * math.sqrt(sums.shape[1]), 0.0)
    means = clip_rows(sums / counts.clamp(min=1.0).unsqueeze(1), clip_norm)
    return torch.where(mask.unsqueeze(1), means, torch.zeros_like(means)), mask


class Accountant:
    """The run's privacy ledger: Opacus's RDP accountant over every Gaussian release about the aligned users'
    labels, each entered with its own noise multiplier (noise standard deviation / label-change sensitivity), so
    releases of different channels compose into one label-change epsilon. Its state travels with the active party.
    """

    def __init__(self, sigma: float, delta: float) -> None:
        optional.require("opacus", "accounting a Gaussian release (privacy.* or defence.*)")
        from opacus.accountants import RDPAccountant

        self.sigma, self.delta = float(sigma), float(delta)
        self._rdp = RDPAccountant()

    def step(self, releases: int, noise_multiplier: float | None = None) -> None:
        """Record ``releases`` Gaussian-mechanism steps with ``noise_multiplier`` (default ``sigma``; sampling rate 1:
        every aligned row)."""
        sigma = self.sigma if noise_multiplier is None else float(noise_multiplier)
        for _ in range(releases):
            self._rdp.step(noise_multiplier=sigma, sample_rate=1.0)

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
    """``results.json``'s ``privacy`` entry where second prototypes leave the active party: the mechanism's
    parameters and the label-change epsilon spent (``neighbouring``: what one step of the relation changes), or,
    with ``privacy=none``, that they left in clear (``epsilon`` null: no bound)."""
    if not enabled(cfg):
        if cfg.method.shares_prototypes and planned_steps(cfg) > 0 and cfg.privacy.clear_prototypes:
            return {"privacy": {"clear_prototypes": True, "epsilon": None, "steps": planned_steps(cfg)}}
        return {}
    spent = [h["privacy/epsilon"] for h in history if "privacy/epsilon" in h]
    return {"privacy": {
        "noise_multiplier": noise_multiplier(cfg), "clip_norm": cfg.privacy.clip_norm, "delta": cfg.privacy.delta,
        "target_epsilon": cfg.privacy.target_epsilon, "steps": planned_steps(cfg),
        "neighbouring": "one aligned training user's label changed", "epsilon": spent[-1] if spent else 0.0,
    }}


def describe(summary: Mapping[str, Any]) -> str | None:
    """One line for the run's closing summary about the second prototypes (``None``: none left the active party)."""
    p = summary.get("privacy")
    if not p:
        return None
    if p.get("clear_prototypes"):
        return (f"second prototypes: sent in clear {p['steps']} times (privacy=none acknowledged): a passive can "
                "recover its shared users' labels from them; no bound")
    return (f"second prototypes: Gaussian, sigma {p['noise_multiplier']:.3g}, clip {p['clip_norm']:g}; label-change "
            f"epsilon {p['epsilon']:.3g} at delta {p['delta']:g} over {p['steps']} releases (every round, all "
            "passives; the class mask is post-processing; no threshold, no selection flag)")
