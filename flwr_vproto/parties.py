"""The active and passive parties: all the learning of one round, and nothing about how messages travel.

Both the in-process trainer and the Flower ClientApp drive these classes the same way (design §4), so the two
engines give the same numbers:

* round ``t``, passive ``k``: ``PassiveParty.train_round(t, gradients, prototypes, mask)`` applies the embedding
  gradients of round ``t-1``, trains its encoder with the third loss on its non-aligned rows, and returns this
  round's embeddings of the aligned rows;
* round ``t``, active: ``ActiveParty.train_round(t, embeddings)`` runs the supervised steps and the first loss and
  returns, per passive, the embedding gradients and the second prototypes for round ``t+1``.

Randomness (initialisation, shuffling, dropout) is derived from ``(seed, party, round)`` only, so a round gives the
same result whether it runs in this process or in a fresh Flower ClientApp process.
"""

from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from flwr_vproto import privacy
from flwr_vproto import prototypes as P
from flwr_vproto.config import Config
from flwr_vproto.data.types import SPLITS, PartySplits
from flwr_vproto.models import make_encoder, make_top_model, mlp, resolve_device


@dataclass
class ActiveRoundOutput:
    """What the active party sends back after a round: one entry per passive party."""

    gradients: list[np.ndarray]  # (n_aligned, d_k) float32: dLoss/dz_k, mean over the visits of each row
    prototypes: list[np.ndarray]  # (C, d_k) float32: second prototypes in passive k's space
    prototype_mask: np.ndarray  # (C,) bool: classes with a prototype
    metrics: dict[str, float] = field(default_factory=dict)
    privacy: dict[str, float] = field(default_factory=dict)  # epsilon spent so far (privacy on only)


@dataclass
class PassiveRoundOutput:
    """What a passive party sends back after a round."""

    embeddings: np.ndarray  # (n_aligned_train, d) float32, shared order
    eval_embeddings: dict[str, np.ndarray]  # split -> (n_aligned_split, d), for the splits asked for
    metrics: dict[str, float] = field(default_factory=dict)


def _round_seed(seed: int, party: int, rnd: int) -> int:
    """A distinct, reproducible seed for every (run seed, party, round)."""
    return (seed * 1_000_003 + party * 10_007 + rnd * 101 + 17) % (2**63 - 1)


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> list[torch.Tensor]:
    """``steps`` index batches over ``n`` rows, reshuffling each time the rows are exhausted (cycling)."""
    if n == 0:
        return [torch.empty(0, dtype=torch.long)] * steps
    out: list[torch.Tensor] = []
    perm = torch.randperm(n, generator=gen)
    pos = 0
    for _ in range(steps):
        if pos >= n:
            perm, pos = torch.randperm(n, generator=gen), 0
        out.append(perm[pos : pos + batch_size])
        pos += batch_size
    return out


def _n_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size) if n > 0 else 0


def state_to_bytes(state: dict[str, Any]) -> bytes:
    """Serialise a party state dict (tensors, arrays, scalars) for Flower's ``context.state`` or a checkpoint."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def state_from_bytes(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`state_to_bytes`; refuses pickled code (``weights_only``)."""
    return torch.load(io.BytesIO(data), weights_only=True)


class _Party:
    """What both roles share: data, encoder, optimizer, alignment, round seeding and state."""

    def __init__(self, data: PartySplits, cfg: Config, index: int) -> None:
        self.data, self.cfg, self.index = data, cfg, index
        self.device = resolve_device(cfg.device)
        self.aligned: dict[str, np.ndarray] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_round_seed(cfg.seed, index, 0))
            self.encoder = make_encoder(data.input_shape, cfg.model).to(self.device)
            self._build_extra()
        self.optimizer = torch.optim.Adam(
            [p for m in self._modules() for p in m.parameters()], lr=cfg.method.lr, weight_decay=cfg.method.weight_decay
        )
        self._x = {s: torch.as_tensor(data.split(s).x, dtype=torch.float32, device=self.device) for s in SPLITS}

    def _build_extra(self) -> None:
        """Subclasses create their other modules here, under the same seeded RNG."""

    def _modules(self) -> list[torch.nn.Module]:
        return [self.encoder]

    def set_alignment(self, rows: dict[str, np.ndarray]) -> None:
        """Row indices of this party's aligned users per split, in the shared order PSI agreed on."""
        for split in SPLITS:
            if split not in rows:
                raise ValueError(f"party {self.data.name}: alignment lacks split {split!r}")
            r = np.asarray(rows[split], dtype=np.int64)
            n = len(self.data.split(split))
            if r.size and (r.min() < 0 or r.max() >= n or np.unique(r).size != r.size):
                raise ValueError(f"party {self.data.name}: aligned rows of split {split!r} are not distinct "
                                 f"indices into its {n} rows")
            self.aligned[split] = r

    def nonaligned_train_rows(self) -> np.ndarray:
        """Training rows that PSI did not align: the rows other VFL systems throw away."""
        mask = np.ones(len(self.data.train), dtype=bool)
        mask[self.aligned["train"]] = False
        return np.flatnonzero(mask)

    def _set_train(self, mode: bool) -> None:
        for m in self._modules():
            m.train(mode)

    def _embed(self, x: torch.Tensor, encoder: torch.nn.Module | None = None) -> torch.Tensor:
        """Encoder output in batches (no grad), for evaluation and for the embeddings a passive sends."""
        self._set_train(False)
        enc = self.encoder if encoder is None else encoder
        with torch.no_grad():
            bs = max(self.cfg.method.batch_size, 1024)
            out = [enc(x[i : i + bs]) for i in range(0, x.shape[0], bs)]
        return torch.cat(out) if out else torch.zeros(0, self.cfg.model.embedding_dim, device=self.device)

    def embed(self, split: str) -> np.ndarray:
        """Embeddings of this party's aligned rows of ``split``, in the shared order."""
        x = self._x[split][torch.as_tensor(self.aligned[split], device=self.device)]
        return self._embed(x).cpu().numpy().astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """Models, optimizer and alignment: all a fresh process needs to continue this party."""
        return {
            "modules": [m.state_dict() for m in self._modules()],
            "optimizer": self.optimizer.state_dict(),
            "aligned": {s: torch.as_tensor(r) for s, r in self.aligned.items()},
            **self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for m, s in zip(self._modules(), state["modules"], strict=True):
            m.load_state_dict(s)
        self.optimizer.load_state_dict(state["optimizer"])
        self.aligned = {s: np.asarray(r.cpu().numpy(), dtype=np.int64) for s, r in state["aligned"].items()}
        self._load_extra_state(state)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Subclasses restore what :meth:`_extra_state` saved."""


class PassiveParty(_Party):
    """A party with features and no labels: trains its encoder from embedding gradients and the third loss."""

    def __init__(self, data: PartySplits, cfg: Config, index: int, num_classes: int) -> None:
        if index < 1:
            raise ValueError("passive parties have index >= 1 (0 is the active party)")
        super().__init__(data, cfg, index)
        self.num_classes = num_classes

    def train_round(
        self,
        rnd: int,
        gradients: np.ndarray | None = None,
        prototypes: np.ndarray | None = None,
        prototype_mask: np.ndarray | None = None,
        embed_splits: tuple[str, ...] = (),
        pseudo_threshold: float | None = None,
    ) -> PassiveRoundOutput:
        """One round: apply last round's embedding gradients plus the third loss, then embed the aligned rows.

        ``gradients`` are the active party's dLoss/dz for the embeddings this party sent last round (``None`` in the
        first round). ``prototypes`` are the second prototypes in this party's space; the third loss uses them from
        round ``warmup_rounds + 1`` on. ``pseudo_threshold`` is the confidence threshold the active party's gate
        sent (``method.pseudo_gate``); ``None`` means ``method.confidence_threshold``.
        """
        m = self.cfg.method
        al = self.aligned["train"]
        gen = torch.Generator().manual_seed(_round_seed(self.cfg.seed, self.index, rnd))
        metrics: dict[str, float] = {}
        use_proto = (
            m.name == "vproto" and rnd > m.warmup_rounds and prototypes is not None and prototype_mask is not None
            and m.lambda_passive > 0 and bool(np.any(prototype_mask))
        )
        if gradients is not None and gradients.shape != (len(al), self.cfg.model.embedding_dim):
            raise ValueError(f"party {self.data.name}, round {rnd}: gradients of shape {gradients.shape}, expected "
                             f"{(len(al), self.cfg.model.embedding_dim)}")
        if rnd == 1 and m.name == "vproto" and m.passive_pretrain_epochs > 0:
            metrics["pretrain_loss"] = self._pretrain(m.passive_pretrain_epochs)
        non = self.nonaligned_train_rows() if use_proto else np.zeros(0, dtype=np.int64)
        steps = max(_n_batches(len(al), m.batch_size) if gradients is not None else 0,
                    _n_batches(len(non), m.batch_size))
        if steps:
            threshold = m.confidence_threshold if pseudo_threshold is None else float(pseudo_threshold)
            self._train_steps(rnd, steps, gen, gradients, prototypes, prototype_mask, non, metrics, threshold)
            if pseudo_threshold is not None and "pseudo_coverage" in metrics:
                metrics["pseudo_threshold"] = threshold
        out = PassiveRoundOutput(self.embed("train"), {s: self.embed(s) for s in embed_splits}, metrics)
        return out

    def _pretrain(self, epochs: int) -> float:
        """``method.passive_pretrain_epochs``: train the encoder as a denoising autoencoder on all this party's
        training rows (they need no labels), so the few aligned rows fine-tune features instead of learning them.

        The decoder and its optimizer live only here; returns the last epoch's mean reconstruction loss.
        """
        m = self.cfg.method
        x = self._x["train"].flatten(1)
        seed = _round_seed(self.cfg.seed, self.index, 0) + 3
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            decoder = mlp([self.cfg.model.embedding_dim, *reversed(self.cfg.model.hidden), x.shape[1]]).to(self.device)
            opt = torch.optim.Adam([*self.encoder.parameters(), *decoder.parameters()], lr=m.lr)
            self._set_train(True)
            last = 0.0
            for _ in range(epochs):
                total, batches = 0.0, _batches(len(x), m.batch_size, _n_batches(len(x), m.batch_size), gen)
                for b in batches:
                    keep = (torch.rand(len(b), x.shape[1], generator=gen) > 0.2).to(self.device)
                    loss = F.mse_loss(decoder(self.encoder(x[b] * keep)), x[b])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach())
                last = total / max(len(batches), 1)
        return last

    def _train_steps(
        self, rnd: int, steps: int, gen: torch.Generator, gradients: np.ndarray | None,
        prototypes: np.ndarray | None, prototype_mask: np.ndarray | None, non: np.ndarray, metrics: dict[str, float],
        threshold: float,
    ) -> None:
        m = self.cfg.method
        x_tr = self._x["train"]
        al = torch.as_tensor(self.aligned["train"], device=self.device)
        non_t = torch.as_tensor(non, device=self.device)
        g = torch.as_tensor(gradients, device=self.device) if gradients is not None else None
        if prototypes is not None and prototype_mask is not None:
            protos = torch.as_tensor(prototypes, dtype=torch.float32, device=self.device)
            pmask = torch.as_tensor(prototype_mask, dtype=torch.bool, device=self.device)
        y_true = self.data.train.y_true
        truth = torch.as_tensor(y_true, device=self.device) if y_true is not None else None
        # Each row's gradient is applied once per round (one pass over the aligned rows, spread over the first
        # steps): re-applying a stale gradient many times overshoots and destabilised training in measurements.
        al_batches = _batches(len(al), m.batch_size, _n_batches(len(al), m.batch_size), gen) if g is not None else []
        non_batches = _batches(len(non_t), m.batch_size, steps, gen) if len(non_t) else []
        seen = kept = correct = known = 0
        third_sum = 0.0
        fixed: tuple[torch.Tensor, torch.Tensor] | None = None
        if m.pseudo_label_once and len(non_t):  # label every non-aligned row once, with the round-start encoder
            z0 = P.maybe_normalize(self._embed(x_tr[non_t]), m.normalize)
            fixed = P.pseudo_labels(z0, protos, pmask, m.distance, m.tau, threshold)
        self._set_train(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_round_seed(self.cfg.seed, self.index, rnd) + 1)
            for i in range(steps):
                loss = torch.zeros((), device=self.device)
                if i < len(al_batches):
                    b = al_batches[i]
                    loss = loss + (self.encoder(x_tr[al[b]]) * g[b]).sum()
                if len(non_batches):
                    rows = non_t[non_batches[i]]
                    z = P.maybe_normalize(self.encoder(x_tr[rows]), m.normalize)
                    if fixed is not None:
                        lab, keep = fixed[0][non_batches[i]], fixed[1][non_batches[i]]
                    else:
                        with torch.no_grad():
                            lab, keep = P.pseudo_labels(z, protos, pmask, m.distance, m.tau, threshold)
                    lab = torch.where(keep, lab, torch.full_like(lab, -1))
                    third = P.prototype_loss(z, lab, protos, pmask, kind=m.distance, form=m.loss_form, tau=m.tau)
                    loss = loss + m.lambda_passive * third
                    third_sum += float(third.detach())
                    seen += len(rows)
                    kept += int(keep.sum())
                    if truth is not None:
                        t = truth[rows]
                        ok = keep & (t >= 0)
                        known += int(ok.sum())
                        correct += int((lab[ok] == t[ok]).sum())
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        metrics["steps"] = float(steps)
        if seen:
            metrics["third_loss"] = third_sum / steps
            metrics["pseudo_coverage"] = kept / seen
            if known:
                metrics["pseudo_accuracy"] = correct / known


class ActiveParty(_Party):
    """The label holder: encoder ``f_A``, top model ``g`` and (optionally) an active-only head ``h``."""

    def __init__(self, data: PartySplits, cfg: Config, num_classes: int, passive_dims: list[int]) -> None:
        if data.train.y is None:
            raise ValueError(f"party {data.name}: the active party needs labels")
        joint = cfg.method.name in ("vproto", "vanilla")  # "local" never uses the passives' embeddings
        if joint and len(passive_dims) != cfg.dataset.num_passive:
            raise ValueError(f"the active party expects dataset.num_passive={cfg.dataset.num_passive} passive "
                             f"parties, got embedding dimensions for {len(passive_dims)}")
        for k, dim in enumerate(passive_dims, start=1):
            if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim != cfg.model.embedding_dim:
                raise ValueError(f"passive{k}: embedding dimension {dim!r} differs from model.embedding_dim="
                                 f"{cfg.model.embedding_dim}; every party must run with the same model config")
        self.num_classes = num_classes
        self.passive_dims = list(passive_dims) if cfg.method.name in ("vproto", "vanilla") else []
        super().__init__(data, cfg, 0)
        self._y = {s: torch.as_tensor(data.split(s).y, dtype=torch.long, device=self.device) for s in SPLITS}
        bad = [(s, int(v)) for s in SPLITS for v in torch.unique(self._y[s]).tolist() if v < -1 or v >= num_classes]
        if bad:
            raise ValueError(f"party {data.name}: label {bad[0][1]} in split {bad[0][0]!r} is outside the "
                             f"{num_classes} classes 0..{num_classes - 1}")
        self._auto_weight = 0.5  # combine_weight=auto before the first validation
        self.protos: torch.Tensor | None = None  # first prototypes (own space), EMA state
        self.proto_mask: torch.Tensor | None = None
        self.second: list[torch.Tensor | None] = [None] * len(self.passive_dims)  # EMA state per passive
        self.second_mask: list[torch.Tensor | None] = [None] * len(self.passive_dims)
        # Differential privacy of the second prototypes (privacy.py); the accountant is party state, so a saved
        # party carries the budget it has spent.
        self.accountant = (privacy.Accountant(privacy.noise_multiplier(cfg), cfg.privacy.delta)
                           if privacy.enabled(cfg) else None)
        # method.pseudo_gate: each passive's confidence threshold, set at every validation; keep nothing until then.
        self.gates: list[float] = [1.0] * len(self.passive_dims)
        # method.residual_base=best_val: the lowest validation loss of the active-only head so far, whether ``base``
        # holds a model yet, and whether the last validation set a new best (copied at the next round's start).
        self._base_loss, self._base_ready, self._base_pending = math.inf, False, False

    @property
    def joint(self) -> bool:
        """Whether this run trains a split model with passive parties (vproto, vanilla) or the active party alone."""
        return bool(self.passive_dims)

    @property
    def uses_local_head(self) -> bool:
        """``local`` trains only this head; ``vproto`` adds it when ``local_head`` is on; ``vanilla`` never has one."""
        return not self.joint or (self.vproto and self.cfg.method.local_head)

    @property
    def vproto(self) -> bool:
        """The vproto-only knobs (prototype losses, residual head, prototype logits) apply to this run."""
        return self.cfg.method.name == "vproto"

    @property
    def residual(self) -> bool:
        return self.uses_local_head and self.joint and self.cfg.method.joint_residual

    def _build_extra(self) -> None:
        d = self.cfg.model.embedding_dim
        self.top = make_top_model(d + sum(self.passive_dims), self.num_classes, self.cfg.model).to(self.device)
        self.head = make_top_model(d, self.num_classes, self.cfg.model).to(self.device)
        # One weight per passive for its prototype classifier's log-probabilities (prototype_logits).
        self.proto_weight = _ParamHolder(torch.nn.Parameter(torch.ones(len(self.passive_dims), device=self.device)))
        # method.joint_encoder: the joint model's own active encoder (trained end-to-end on the aligned rows).
        self.joint_enc = (make_encoder(self.data.input_shape, self.cfg.model).to(self.device)
                          if self.vproto and self.joint and self.cfg.method.joint_encoder else None)
        # method.residual_weight=learned: the joint model learns how much of the active-only head's logits to keep
        # (all of them at first), so with many aligned rows it can lean on its own active encoder instead.
        self.residual_weight = (_ParamHolder(torch.nn.Parameter(torch.ones(1, device=self.device)))
                                if self.residual and self.cfg.method.residual_weight == "learned" else None)
        # method.residual_base=best_val: frozen copies of the shared encoder and the head, taken when the head's
        # validation loss is the lowest so far; never trained (not in _modules, hence not in the optimizer).
        self.base = (copy.deepcopy(torch.nn.ModuleList([self.encoder, self.head])).eval().requires_grad_(False)
                     if self.residual and self.cfg.method.residual_base == "best_val" else None)
        if self.residual:
            last = self.top[-1]
            torch.nn.init.zeros_(last.weight)
            torch.nn.init.zeros_(last.bias)

    def _joint_logits(
        self, h: torch.Tensor, zs: list[torch.Tensor], protos: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        hj: torch.Tensor | None = None, hb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Joint logits: top model, plus the active-only head (``joint_residual``) and each passive's prototype
        classifier (``prototype_logits``, with the second prototypes ``protos``) when enabled.

        ``h`` is the shared active encoder's output; ``hj`` the joint encoder's (``method.joint_encoder``), which then
        feeds the top model in place of ``h``; ``hb`` the frozen base encoder's (``method.residual_base=best_val``),
        whose head then gives the residual's logits in place of the live head's."""
        m = self.cfg.method
        if not m.joint_trains_active_encoder and self.uses_local_head:
            h = h.detach()
        logits = self.top(torch.cat([h if hj is None else hj, *zs], dim=1))
        if self.residual:
            w = self.residual_weight.param if self.residual_weight is not None else 1.0
            base = self.head(h) if hb is None else self.base[1](hb)
            logits = logits + w * base.detach()
        if self.vproto and m.prototype_logits and protos is not None:
            for k, (z, (pk, mask)) in enumerate(zip(zs, protos, strict=True)):
                if not bool(mask.any()):
                    continue
                t = -P.distances(P.maybe_normalize(z, m.normalize), pk, m.distance) / m.tau
                # Classes without a prototype get the mean of the others: no vote rather than a veto.
                fill = (t * mask).sum(1, keepdim=True) / mask.sum()
                t = torch.where(mask.unsqueeze(0), t, fill)
                logits = logits + self.proto_weight.param[k] * torch.log_softmax(t, dim=1)
        return logits

    @property
    def gated(self) -> bool:
        """Whether this run gates the passives' pseudo-labels (``method.pseudo_gate`` not ``off``)."""
        return self.vproto and self.joint and self.cfg.method.pseudo_gate != "off" and self.cfg.method.shares_prototypes

    def pseudo_gates(self) -> list[float] | None:
        """Per passive, the confidence threshold to send with its next round (``None`` when gating is off)."""
        return list(self.gates) if self.gated else None

    def _fit_gates(self, passive_embeddings: list[np.ndarray], y: np.ndarray) -> None:
        """``method.pseudo_gate``: per passive, the lowest confidence threshold at which its nearest-second-prototype
        pseudo-labels reach the precision target on these labelled (validation) rows; 1.0 (keep nothing) if none.

        Scored on validation rows, not the aligned training rows whose gradients shaped the passive encoder, so the
        estimate is not inflated by that fit. The configured ``confidence_threshold`` stays a floor.
        """
        m = self.cfg.method
        if any(p is None for p in self.second):
            return
        masks = [mk for mk in self.second_mask if mk is not None]
        mask = masks[0].clone()
        for mk in masks[1:]:
            mask &= mk
        target = self._majority_share() if m.pseudo_gate == "majority" else float(m.pseudo_gate)
        yt = torch.as_tensor(y, dtype=torch.long, device=self.device)
        for k, e in enumerate(passive_embeddings):
            z = P.maybe_normalize(torch.as_tensor(e, dtype=torch.float32, device=self.device), m.normalize)
            t = P.gate_threshold(z, yt, self.second[k], mask, kind=m.distance, tau=m.tau, target=target)
            self.gates[k] = max(float(m.confidence_threshold), t)

    def _majority_share(self) -> float:
        """Share of the most frequent class among the labelled aligned training rows (the trivial classifier)."""
        y = self._y["train"][torch.as_tensor(self.aligned["train"], device=self.device)]
        y = y[y >= 0]
        return float(torch.bincount(y, minlength=self.num_classes).max()) / max(len(y), 1)

    def _second_list(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        if any(p is None for p in self.second):
            return None
        return list(zip(self.second, self.second_mask, strict=True))  # type: ignore[arg-type]

    def _modules(self) -> list[torch.nn.Module]:
        return [self.encoder, self.top, self.head, self.proto_weight,
                *([self.joint_enc] if self.joint_enc is not None else []),
                *([self.residual_weight] if self.residual_weight is not None else [])]

    # ---------------------------------------------------------------- training
    def train_round(self, rnd: int, passive_embeddings: list[np.ndarray], release: bool = True) -> ActiveRoundOutput:
        """One round of supervised split learning on the aligned rows plus the first loss on non-aligned rows.

        ``passive_embeddings[k]`` are passive ``k``'s embeddings of the aligned training rows (shared order) from
        this round. Returns each passive's gradients and second prototypes, used by that passive next round.
        ``release``: whether this round's prototypes will be sent (false in the last round; never unless
        ``method.shares_prototypes``); with privacy on, only released prototypes are charged to the privacy budget.
        """
        m = self.cfg.method
        release = release and m.shares_prototypes
        al = torch.as_tensor(self.aligned["train"], device=self.device)
        if len(passive_embeddings) != len(self.passive_dims):
            raise ValueError(f"round {rnd}: got embeddings from {len(passive_embeddings)} passive parties, "
                             f"expected {len(self.passive_dims)}")
        zs = []
        for k, (e, d) in enumerate(zip(passive_embeddings, self.passive_dims, strict=True)):
            if e.shape != (len(al), d):
                raise ValueError(f"round {rnd}: embeddings of passive{k + 1} have shape {e.shape}, expected "
                                 f"{(len(al), d)}")
            if not np.isfinite(e).all():
                raise ValueError(f"round {rnd}: embeddings of passive{k + 1} contain NaN or inf")
            zs.append(torch.as_tensor(e, dtype=torch.float32, device=self.device))
        if self.joint_enc is not None and m.joint_warm_start and rnd == m.warmup_rounds + 1:
            self.joint_enc.load_state_dict(self.encoder.state_dict())  # warm start from the active party's own rows
        if self.base is not None and self._base_pending:  # the model the last validation scored best, unchanged since
            self.base[0].load_state_dict(self.encoder.state_dict())
            self.base[1].load_state_dict(self.head.state_dict())
            self._base_ready, self._base_pending = True, False
        gen = torch.Generator().manual_seed(_round_seed(self.cfg.seed, 0, rnd))
        y_tr = self._y["train"]
        use_proto = m.name == "vproto" and rnd > m.warmup_rounds and m.lambda_active > 0
        if self.joint:
            self._update_first_prototypes(al)
            protos, mask = self._second_prototypes(zs, y_tr[al], rnd, release)
        else:
            protos, mask = [], np.zeros(self.num_classes, dtype=bool)
        second = self._second_list()
        # Rows beyond the aligned ones: labelled rows for the active-only head, all of them for the first loss.
        if self.joint:
            non = torch.as_tensor(self.nonaligned_train_rows(), device=self.device)
            extra = non if (use_proto or self.uses_local_head) else non[:0]
            if not use_proto:
                extra = extra[y_tr[extra] >= 0]
            main = al
        else:  # local: every labelled training row
            main = torch.nonzero(y_tr >= 0).flatten()
            extra = main[:0]
        steps = max(_n_batches(len(main), m.batch_size), _n_batches(len(extra), m.batch_size))
        main_b = _batches(len(main), m.batch_size, steps, gen)
        # method.aligned_passes: the supervised loss sees the aligned rows only this many times per round.
        sup_steps = steps if (m.aligned_passes is None or not self.joint) else min(
            steps, m.aligned_passes * _n_batches(len(main), m.batch_size))
        extra_b = _batches(len(extra), m.batch_size, steps, gen) if len(extra) else []
        # The residual's base is frozen all round: one forward pass over the rows of the joint loss.
        hb_main = self._base_features(self._x["train"][main]) if self.joint else None
        grad_sum = [torch.zeros_like(z) for z in zs]
        visits = torch.zeros(len(main), device=self.device)
        sums = {"sup_loss": 0.0, "local_loss": 0.0, "first_loss": 0.0}
        pseudo_seen = pseudo_kept = 0
        x_tr = self._x["train"]
        self._set_train(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_round_seed(self.cfg.seed, 0, rnd) + 1)
            for i in range(steps):
                aligned_step = i < sup_steps  # later steps train on non-aligned rows only
                loss = torch.zeros((), device=self.device)
                local_rows_h: list[tuple[torch.Tensor, torch.Tensor]] = []
                if aligned_step:
                    b = main_b[i]
                    rows = main[b]
                    h = self.encoder(x_tr[rows])
                    z_in = [z[b].clone().requires_grad_(True) for z in zs]
                    if self.joint:
                        hj = self.joint_enc(x_tr[rows]) if self.joint_enc is not None else None
                        hb = None if hb_main is None else hb_main[b]
                        sup = F.cross_entropy(self._joint_logits(h, z_in, second, hj, hb), y_tr[rows], ignore_index=-1)
                        loss = loss + sup
                        sums["sup_loss"] += float(sup.detach())
                    if self.uses_local_head:
                        local_rows_h.append((h, y_tr[rows]))
                if len(extra_b):
                    erows = extra[extra_b[i]]
                    he = self.encoder(x_tr[erows])
                    ye = y_tr[erows]
                    if self.uses_local_head:
                        local_rows_h.append((he, ye))
                    if use_proto and self.protos is not None:
                        hn = P.maybe_normalize(he, m.normalize)
                        lab = ye.clone()
                        unknown = lab < 0
                        if bool(unknown.any()):
                            with torch.no_grad():
                                pl, keep = P.pseudo_labels(hn[unknown], self.protos, self.proto_mask, m.distance,
                                                           m.tau, m.confidence_threshold)
                            lab[unknown] = torch.where(keep, pl, torch.full_like(pl, -1))
                            pseudo_seen += int(unknown.sum())
                            pseudo_kept += int(keep.sum())
                        first = P.prototype_loss(hn, lab, self.protos, self.proto_mask, kind=m.distance,
                                                 form=m.loss_form, tau=m.tau)
                        loss = loss + m.lambda_active * first
                        sums["first_loss"] += float(first.detach())
                if local_rows_h:
                    hh = torch.cat([a for a, _ in local_rows_h])
                    yy = torch.cat([c for _, c in local_rows_h])
                    if bool((yy >= 0).any()):
                        loc = F.cross_entropy(self.head(hh), yy, ignore_index=-1)
                        loss = loss + loc
                        sums["local_loss"] += float(loc.detach())
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                if aligned_step:
                    for k, zi in enumerate(z_in):
                        if zi.grad is not None:
                            grad_sum[k].index_add_(0, b, zi.grad)
                    visits.index_add_(0, b, torch.ones(len(b), device=self.device))
        grads = [(gs / visits.clamp(min=1).unsqueeze(1)).cpu().numpy().astype(np.float32) for gs in grad_sum]
        metrics = {k: v / steps for k, v in sums.items() if steps and v != 0.0}
        metrics["steps"] = float(steps)
        if pseudo_seen:
            metrics["active_pseudo_coverage"] = pseudo_kept / pseudo_seen
        if self.joint:
            metrics["sup_steps"] = float(sup_steps)
            metrics["prototype_classes"] = float(mask.sum())
        spent = {"epsilon": self.accountant.epsilon()} if self.accountant is not None else {}
        return ActiveRoundOutput(grads, protos, mask, metrics, spent)

    def _update_first_prototypes(self, al: torch.Tensor) -> None:
        """First prototypes: class means of ``f_A`` over the labelled aligned rows, optionally EMA-smoothed."""
        m = self.cfg.method
        h = P.maybe_normalize(self._embed(self._x["train"][al]), m.normalize)
        new, mask = P.class_means(h, self._y["train"][al], self.num_classes)
        self.protos, self.proto_mask = P.ema_update(self.protos, self.proto_mask, new, mask, m.ema_momentum)

    def _second_prototypes(
        self, zs: list[torch.Tensor], y_al: torch.Tensor, rnd: int, release: bool
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Second prototypes: per passive, class means of its received embeddings, in its own space.

        With privacy on, the means come from clipped, noised class sums and noised counts (privacy.py), and a
        round whose prototypes are released is charged ``K + 1`` Gaussian steps. The EMA and everything downstream
        (the passives' third loss, this party's prototype classifier) see only the noisy values.
        """
        m = self.cfg.method
        out: list[np.ndarray] = []
        masks = []
        acc = self.accountant
        if acc is not None:
            gen = torch.Generator().manual_seed(_round_seed(self.cfg.seed, 0, rnd) + 2)
            counts = privacy.noisy_counts(y_al, self.num_classes, acc.sigma, gen)
            if release and zs:
                acc.step(len(zs) + 1)
        for k, z in enumerate(zs):
            zn = P.maybe_normalize(z, m.normalize)
            if acc is not None:
                sums = privacy.noisy_class_sums(zn, y_al, self.num_classes, self.cfg.privacy.clip_norm, acc.sigma, gen)
                new, mask = privacy.prototypes_from_noisy(sums, counts, acc.sigma, self.cfg.privacy.clip_norm)
            else:
                new, mask = P.class_means(zn, y_al, self.num_classes)
            self.second[k], self.second_mask[k] = P.ema_update(self.second[k], self.second_mask[k], new, mask,
                                                               m.ema_momentum)
            out.append(self.second[k].cpu().numpy().astype(np.float32))
            masks.append(self.second_mask[k].cpu().numpy())
        mask_all = np.logical_and.reduce(masks) if masks else np.zeros(self.num_classes, dtype=bool)
        return out, mask_all

    # ---------------------------------------------------------------- evaluation
    def predict_proba(self, split: str, passive_embeddings: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Class probabilities for the aligned rows of ``split``: joint, active-only and their combination."""
        rows = torch.as_tensor(self.aligned[split], device=self.device)
        h = self._embed(self._x[split][rows])
        out: dict[str, np.ndarray] = {}
        with torch.no_grad():
            if self.uses_local_head:
                out["local"] = torch.softmax(self.head(h), 1).cpu().numpy()
            if self.joint:
                zs = [torch.as_tensor(e, dtype=torch.float32, device=self.device) for e in passive_embeddings]
                hj = self._embed(self._x[split][rows], self.joint_enc) if self.joint_enc is not None else None
                hb = self._base_features(self._x[split][rows])
                out["joint"] = torch.softmax(self._joint_logits(h, zs, self._second_list(), hj, hb), 1).cpu().numpy()
        if self.joint and self.uses_local_head:
            w = self.combine_weight
            out["combined"] = w * out["joint"] + (1 - w) * out["local"]
        else:
            out["combined"] = out["joint"] if self.joint else out["local"]
        return out

    def _base_features(self, x: torch.Tensor) -> torch.Tensor | None:
        """The frozen base encoder's output on ``x`` (``method.residual_base=best_val``), or ``None`` while the
        residual uses the live head (that option off, or no validation yet)."""
        if self.base is None or not self._base_ready:
            return None
        return self._embed(x, self.base[0])

    def _track_base(self, local_probs: np.ndarray, y: np.ndarray) -> float:
        """``method.residual_base=best_val``: after a validation, mark the active-only model for copying into the
        base if its validation loss is the lowest so far; returns 1.0 if so, else 0.0.

        The copy happens at the start of the next round, so every score of this round, val and test alike, comes
        from the model that was trained.
        """
        loss = _scores(local_probs, y, self.num_classes).get("loss", math.inf)
        if loss < self._base_loss:
            self._base_loss, self._base_pending = loss, True
            return 1.0
        return 0.0

    @property
    def combine_weight(self) -> float:
        """Weight of the joint model in the shipped prediction: configured, or last fitted on validation rows."""
        w = self.cfg.method.combine_weight
        return self._auto_weight if w == "auto" else float(w)

    def _fit_combine_weight(self, probs: dict[str, np.ndarray], y: np.ndarray) -> None:
        """``combine_weight=auto``: the weight on a 0.1 grid with the best validation accuracy (then log-loss).

        Validation rows are how every method picks its round already; picking this one number on them too lets the
        active-only head win where the aligned rows are too few for the joint model, and the joint model elsewhere.
        """
        keep = y >= 0
        if not keep.any():
            return
        yk = y[keep]
        best = (np.inf, np.inf, 1.0)
        for w in np.linspace(0.0, 1.0, 11):
            p = w * probs["joint"][keep] + (1 - w) * probs["local"][keep]
            nll = float(-np.log(np.clip(p[np.arange(yk.size), yk], 1e-12, None)).mean())
            err = float((p.argmax(1) != yk).mean())
            best = min(best, (err, nll, float(w)))
        self._auto_weight = best[2]

    def calibrate(self, passive_embeddings: list[np.ndarray]) -> dict[str, float]:
        """Placeholder until calibration moves out of ``evaluate("val")`` (which still fits everything)."""
        return {}

    def evaluate(self, split: str, passive_embeddings: list[np.ndarray]) -> dict[str, float]:
        """Accuracy (and AUC for two classes) on the aligned rows of ``split``, plus the active-only fallback.

        ``accuracy`` scores the prediction this method ships (combined joint + active-only head when enabled) on
        users every party holds; ``active_only_accuracy`` scores the active-only head on the users only the active
        party holds.
        """
        y = self._y[split][torch.as_tensor(self.aligned[split], device=self.device)].cpu().numpy()
        probs = self.predict_proba(split, passive_embeddings)
        if split == "val" and self.cfg.method.combine_weight == "auto" and "joint" in probs and "local" in probs:
            self._fit_combine_weight(probs, y)
            w = self.combine_weight
            probs["combined"] = w * probs["joint"] + (1 - w) * probs["local"]
        if split == "val" and self.gated:
            self._fit_gates(passive_embeddings, y)
        metrics = _scores(probs["combined"], y, self.num_classes)
        if split == "val" and self.base is not None:
            metrics["residual_base_update"] = self._track_base(probs["local"], y)
        if "joint" in probs and "local" in probs:
            metrics["combine_weight"] = self.combine_weight
        if split == "val" and self.gated:
            metrics.update({f"pseudo_gate{k + 1}": g for k, g in enumerate(self.gates)})
        for name in ("joint", "local"):
            if name in probs and len(probs) > 2:
                metrics[f"{name}_accuracy"] = _scores(probs[name], y, self.num_classes)["accuracy"]
        if self.uses_local_head:
            mask = np.ones(len(self.data.split(split)), dtype=bool)
            mask[self.aligned[split]] = False
            only = np.flatnonzero(mask & (self.data.split(split).y >= 0))
            if only.size:
                h = self._embed(self._x[split][torch.as_tensor(only, device=self.device)])
                with torch.no_grad():
                    p = torch.softmax(self.head(h), 1).cpu().numpy()
                metrics["active_only_accuracy"] = float((p.argmax(1) == self.data.split(split).y[only]).mean())
        return metrics

    def _extra_state(self) -> dict[str, Any]:
        return {"protos": self.protos, "proto_mask": self.proto_mask, "second": self.second,
                "second_mask": self.second_mask, "auto_weight": self._auto_weight, "gates": list(self.gates),
                "base": None if self.base is None else self.base.state_dict(),
                "base_tracking": [self._base_loss, self._base_ready, self._base_pending],
                "privacy": None if self.accountant is None else self.accountant.state_dict()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.protos, self.proto_mask = state["protos"], state["proto_mask"]
        self.second, self.second_mask = list(state["second"]), list(state["second_mask"])
        self._auto_weight = float(state["auto_weight"])
        if self.accountant is not None and state.get("privacy") is not None:
            self.accountant.load_state_dict(state["privacy"])
        self.gates = [float(g) for g in state.get("gates", self.gates)]
        if self.base is not None and state.get("base") is not None:
            self.base.load_state_dict(state["base"])
            loss, ready, pending = state["base_tracking"]
            self._base_loss, self._base_ready, self._base_pending = float(loss), bool(ready), bool(pending)


class _ParamHolder(torch.nn.Module):
    """Wraps loose parameters so that state dicts, train/eval and the optimizer treat them like a module."""

    def __init__(self, param: torch.nn.Parameter) -> None:
        super().__init__()
        self.param = param


def _scores(probs: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy, log-loss and (binary tasks) AUC on rows with a known label."""
    keep = y >= 0
    probs, y = probs[keep], y[keep]
    if y.size == 0:
        return {}
    out = {
        "accuracy": float((probs.argmax(1) == y).mean()),
        "loss": float(-np.log(np.clip(probs[np.arange(y.size), y], 1e-12, None)).mean()),
    }
    if num_classes == 2 and np.unique(y).size == 2:
        from sklearn.metrics import roc_auc_score  # here, not at import: a ClientApp process starts per message

        out["auc"] = float(roc_auc_score(y, probs[:, 1]))
    return out
