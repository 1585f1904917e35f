"""The active and passive parties: they orchestrate the named parts of the method for one round, and know nothing
about how messages travel.

The parts themselves (losses, joint logits, calibration, prediction and scores) are small pure functions in
:mod:`flwr_vproto.method`; a party decides which rows, batches and modules each part gets. Both the in-process
trainer and the Flower ClientApp drive these classes the same way (design §4), so the two engines give the same
numbers:

* round ``t``, passive ``k``: ``PassiveParty.train_round(t, gradients, prototypes, mask)`` applies the embedding
  gradients of round ``t-1``, trains its encoder with the third loss on its non-aligned rows, and returns this
  round's embeddings of the aligned rows;
* round ``t``, active: ``ActiveParty.train_round(t, embeddings)`` runs the supervised steps and the first loss and
  returns, per passive, the embedding gradients and the second prototypes for round ``t+1``;
* on evaluation rounds, active: its scoring part (``ActiveParty.scoring``, :mod:`flwr_vproto.scoring`) runs
  ``calibrate`` (fits on the validation rows), then ``evaluate`` per split (scores only), then ``pseudo_gates``
  (what the calibration fitted for the passives), reading the party through ``logits`` and ``labels``.

Randomness (initialisation, shuffling, dropout) is derived from ``(seed, party, round)`` only, so a round gives the
same result whether it runs in this process or in a fresh Flower ClientApp process.
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import torch

from flwr_vproto import defences, exchanges, privacy, prototypes, trees
from flwr_vproto.config import Config
from flwr_vproto.data.types import SPLITS, PartySplits
from flwr_vproto.method import pretrain
from flwr_vproto.method.batching import index_batches, num_batches, round_seed
from flwr_vproto.method.calibration import BestValidation
from flwr_vproto.method.extra import LossBatch, extra_loss_total, load_extra_losses
from flwr_vproto.method.joint import JointLogits, average_of, joint_logits
from flwr_vproto.method.losses import (
    FirstLoss,
    PrototypeGeometry,
    PseudoTally,
    ThirdLoss,
    ThirdLossRound,
    first_prototype_loss,
    gradient_loss,
    local_head_loss,
    proximal_gradient_loss,
    proximal_scale,
    supervised_joint_loss,
)
from flwr_vproto.models import make_encoder, make_top_model, resolve_device, zero_output_layer
from flwr_vproto.scoring import ActiveScoring

# method.research.passive_pretrain_min_steps=null with few or no gradient rows (§9, §10)
PRETRAIN_STEPS_WITHOUT_ROWS = 500


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


def state_to_bytes(state: dict[str, Any]) -> bytes:
    """Serialise a party state dict (tensors, arrays, scalars) for Flower's ``context.state`` or a checkpoint."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def state_from_bytes(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`state_to_bytes`; refuses pickled code (``weights_only``)."""
    return torch.load(io.BytesIO(data), weights_only=True)


@overload
def bytes_tensor(data: bytes) -> torch.Tensor: ...
@overload
def bytes_tensor(data: None) -> None: ...
def bytes_tensor(data: bytes | None) -> torch.Tensor | None:
    """Bytes (a secret, LightGBM's model text, a digest) as a uint8 tensor, the form party state keeps them in
    (``weights_only`` loads tensors, not ``bytes``); ``None`` kept."""
    return None if data is None else torch.as_tensor(np.frombuffer(data, dtype=np.uint8).copy())


@overload
def tensor_bytes(value: torch.Tensor) -> bytes: ...
@overload
def tensor_bytes(value: None) -> None: ...
def tensor_bytes(value: torch.Tensor | None) -> bytes | None:
    """Inverse of :func:`bytes_tensor`."""
    return None if value is None else bytes(value.cpu().numpy().astype(np.uint8).tobytes())
class _Party:
    """What both roles share: data, encoder, optimizer, alignment, round seeding and state."""

    def __init__(self, data: PartySplits, cfg: Config, index: int) -> None:
        self.data, self.cfg, self.index = data, cfg, index
        self.device = resolve_device(cfg.device)
        self.aligned: dict[str, np.ndarray] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(round_seed(cfg.seed, index, 0))
            self.encoder = make_encoder(data.input_shape, cfg.model, data.name).to(self.device)
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
        self.third = ThirdLoss.from_method(cfg.method)

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
        sent (``method.research.pseudo_gate``); ``None`` means ``method.confidence_threshold``.
        """
        m = self.cfg.method
        n_aligned = len(self.aligned["train"])
        gen = torch.Generator().manual_seed(round_seed(self.cfg.seed, self.index, rnd))
        metrics: dict[str, float] = {}
        use_third = m.name == "vproto" and prototypes is not None and self.third.active(rnd, prototype_mask)
        if gradients is not None and gradients.shape != (n_aligned, self.cfg.model.embedding_dim):
            raise ValueError(f"party {self.data.name}, round {rnd}: gradients of shape {gradients.shape}, expected "
                             f"{(n_aligned, self.cfg.model.embedding_dim)}")
        if rnd == 1 and m.name == "vproto" and m.research.passive_pretrain != "none" and m.passive_pretrain_epochs > 0:
            metrics["pretrain_loss"] = self._pretrain(self._pretrain_epochs())
        non = self.nonaligned_train_rows() if use_third else np.zeros(0, dtype=np.int64)
        passes = self.cfg.exchange.passive_passes
        steps = max(passes * num_batches(n_aligned, m.batch_size) if gradients is not None else 0,
                    num_batches(len(non), m.batch_size))
        if steps:
            threshold = self.third.threshold if pseudo_threshold is None else float(pseudo_threshold)
            metrics.update(self._train_steps(rnd, steps, gen, gradients, prototypes, prototype_mask, non, threshold))
            if pseudo_threshold is not None and "pseudo_coverage" in metrics:
                metrics["pseudo_threshold"] = threshold
        return PassiveRoundOutput(self.embed("train"), {s: self.embed(s) for s in embed_splits}, metrics)

    def _pretrain_epochs(self) -> int:
        """``method.passive_pretrain_epochs``, raised to reach ``passive_pretrain_min_steps`` optimiser steps (auto:
        500 when no gradient row will ever reach this party, whose pre-training is then all it learns, or when it
        gets fewer gradient messages than rounds (``exchange.count < num_rounds``: a few messages cannot make up for
        a short pre-training, BENCHMARKS §10); else 0, the method as designed, one gradient message per round)."""
        m = self.cfg.method
        floor = m.research.passive_pretrain_min_steps
        if floor is None:
            few = defences.planned_releases(self.cfg) == 0 or exchanges.blockwise(self.cfg)
            floor = PRETRAIN_STEPS_WITHOUT_ROWS if few else 0
        per_epoch = max(num_batches(len(self.data.train), m.batch_size), 1)
        return max(m.passive_pretrain_epochs, math.ceil(floor / per_epoch))

    def _pretrain(self, epochs: int) -> float:
        """``method.research.passive_pretrain`` for ``method.passive_pretrain_epochs`` epochs on all this party's
        training rows (they need no labels), so the few aligned rows fine-tune features instead of learning them
        (:mod:`flwr_vproto.method.pretrain`). ``dae+contrastive`` runs the autoencoder, then the contrastive epochs.

        The helper modules and their optimisers live only there; returns the last epoch's mean loss (of the last
        stage). Seeded from ``(seed, party)`` alone, under a forked torch RNG, so a fresh process repeats it.
        """
        m, mc = self.cfg.method, self.cfg.model
        x = self._x["train"].flatten(1)
        seed = round_seed(self.cfg.seed, self.index, 0) + 3
        gen = torch.Generator().manual_seed(seed)
        last = 0.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            args = (self.encoder, x, mc.embedding_dim, list(mc.hidden), epochs, m.batch_size, m.lr, gen, self.device)
            if m.research.passive_pretrain in ("dae", "dae+contrastive"):
                last = pretrain.denoising_autoencoder(*args)
            if m.research.passive_pretrain in ("contrastive", "dae+contrastive"):
                last = pretrain.contrastive(*args, input_shape=tuple(self.data.input_shape))
        return last

    def _third_loss_round(
        self, non: np.ndarray, steps: int, gen: torch.Generator, prototypes: np.ndarray | None,
        prototype_mask: np.ndarray | None, threshold: float,
    ) -> ThirdLossRound | None:
        """This round's third loss over the non-aligned rows ``non`` (``None`` without rows): batches drawn from
        ``gen`` and, with ``pseudo_label_once``, every row labelled now by the round-start encoder."""
        if not len(non) or prototypes is None or prototype_mask is None:
            return None
        rows = torch.as_tensor(non, device=self.device)
        y_true = self.data.train.y_true
        third = ThirdLossRound(
            self.third, rows, index_batches(len(rows), self.cfg.method.batch_size, steps, gen),
            torch.as_tensor(prototypes, dtype=torch.float32, device=self.device),
            torch.as_tensor(prototype_mask, dtype=torch.bool, device=self.device), threshold,
            torch.as_tensor(y_true, device=self.device) if y_true is not None else None)
        if self.third.label_once:
            third.label_all(self._embed(self._x["train"][rows]))
        return third

    def _train_steps(
        self, rnd: int, steps: int, gen: torch.Generator, gradients: np.ndarray | None,
        prototypes: np.ndarray | None, prototype_mask: np.ndarray | None, non: np.ndarray, threshold: float,
    ) -> dict[str, float]:
        """The round's optimizer steps: the embedding gradients plus the weighted third loss.

        With ``exchange.passive_passes=1`` each row's gradient is applied once (one pass over the aligned rows,
        spread over the first steps): re-applying a stale gradient many times overshoots and destabilised training
        in measurements. More passes minimise the proximal linearised loss instead, around the embeddings the
        gradients were computed at (:func:`~flwr_vproto.method.losses.proximal_gradient_loss`).
        """
        bs, passes = self.cfg.method.batch_size, self.cfg.exchange.passive_passes
        x_tr = self._x["train"]
        al = torch.as_tensor(self.aligned["train"], device=self.device)
        g = torch.as_tensor(gradients, device=self.device) if gradients is not None else None
        al_batches = index_batches(len(al), bs, passes * num_batches(len(al), bs), gen) if g is not None else []
        z0, eta = None, 0.0
        if g is not None and passes > 1:  # what was sent (and the gradients were computed at)
            z0 = self._embed(x_tr[al])
            eta = proximal_scale(z0, g, self.cfg.exchange.passive_reach)
        third = self._third_loss_round(non, steps, gen, prototypes, prototype_mask, threshold)
        self._set_train(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(round_seed(self.cfg.seed, self.index, rnd) + 1)
            for i in range(steps):
                loss = torch.zeros((), device=self.device)
                if i < len(al_batches):
                    b = al_batches[i]
                    z = self.encoder(x_tr[al[b]])
                    loss = loss + (gradient_loss(z, g[b]) if z0 is None  # type: ignore[index]
                                   else proximal_gradient_loss(z, g[b], z0[b], eta))  # type: ignore[index]
                if third is not None:
                    loss = loss + self.third.weight * third.step(i, self.encoder, x_tr)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        return {"steps": float(steps), **(third.metrics(steps) if third is not None else {})}


@dataclass
class _RoundPlan:
    """Which rows the active party trains on this round, and in which batches.

    ``main``: the rows of the supervised step (aligned rows; every labelled row for ``local``), cycled in
    ``main_batches``, used by the supervised loss for the first ``sup_steps`` steps only
    (``method.research.aligned_passes``);
    ``extra``: the non-aligned rows of the first loss and the active-only head, in ``extra_batches``.
    """

    main: torch.Tensor
    main_batches: list[torch.Tensor]
    extra: torch.Tensor
    extra_batches: list[torch.Tensor]
    steps: int
    sup_steps: int
    use_first: bool


@dataclass
class _RoundTally:
    """Running sums of one active round: loss values for the metrics and the embedding gradients per passive."""

    grad_sum: list[torch.Tensor]
    visits: torch.Tensor
    sums: dict[str, float] = field(default_factory=lambda: {"sup_loss": 0.0, "local_loss": 0.0, "first_loss": 0.0})
    pseudo: PseudoTally = field(default_factory=PseudoTally)


class ActiveParty(_Party):
    """The label holder: encoder ``f_A``, top model ``g`` and (optionally) an active-only head ``h``.

    This class trains them (:meth:`train_round`) and holds the state of training (prototypes, privacy accountants,
    the residual's frozen base). What the trained modules do on validation, test and new rows (calibration,
    evaluation, prediction) is :attr:`scoring`, an :class:`~flwr_vproto.scoring.ActiveScoring` that reads this party
    through :meth:`logits`, :meth:`labels` and :meth:`second_pairs`.
    """

    def __init__(self, data: PartySplits, cfg: Config, num_classes: int, passive_dims: list[int],
                 secret: bytes | None = None) -> None:
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
        # The key of every random draw whose result leaves this party (defences.py): never derived from the run
        # config, which every passive knows. Party state, so a fresh process or a resumed run draws the same.
        self.secret = secret if secret is not None else defences.new_secret()
        super().__init__(data, cfg, 0)
        self._y = {s: torch.as_tensor(data.split(s).y, dtype=torch.long, device=self.device) for s in SPLITS}
        bad = [(s, int(v)) for s in SPLITS for v in torch.unique(self._y[s]).tolist() if v < -1 or v >= num_classes]
        if bad:
            raise ValueError(f"party {data.name}: label {bad[0][1]} in split {bad[0][0]!r} is outside the "
                             f"{num_classes} classes 0..{num_classes - 1}")
        # The named parts of the method, each with the keys it reads (flwr_vproto/method/).
        self.geometry = PrototypeGeometry.from_method(cfg.method)
        self.first = FirstLoss.from_method(cfg.method)
        self.joint_part = JointLogits.from_method(cfg.method, has_local_head=self.uses_local_head, joint=self.joint)
        self.extra_losses = load_extra_losses(cfg.method.extra_losses, data.name)
        self.protos: torch.Tensor | None = None  # first prototypes (own space), EMA state
        self.proto_mask: torch.Tensor | None = None
        self.second: list[torch.Tensor | None] = [None] * len(self.passive_dims)  # EMA state per passive
        self.second_mask: list[torch.Tensor | None] = [None] * len(self.passive_dims)
        # Differential privacy of the second prototypes (privacy.py); the accountant is party state, so a saved
        # party carries the budget it has spent.
        self.accountant = (privacy.Accountant(privacy.noise_multiplier(cfg), cfg.privacy.delta)
                           if privacy.enabled(cfg) else None)
        # The Gaussian gradient channel's accountant (defence.noise_multiplier / target_epsilon).
        self.gradient_accountant = (privacy.Accountant(privacy.gradient_noise_multiplier(cfg), cfg.defence.delta)
                                    if defences.gradient_dp(cfg) else None)
        # method.research.residual_base=best_val: which validation loss the frozen base is from
        # (calibration.BestValidation).
        self.best_val = BestValidation()
        # The active-only model that predicts the users only this party holds: frozen copies of the shared encoder and
        # the head from the evaluation that scored best on all this party's labelled validation users
        # (scoring.ActiveScoring.select_active_only); the live head until the first evaluation.
        self.chosen_only: torch.nn.ModuleList | None = None
        self.chosen_only_score: tuple[float, float] = (-math.inf, math.inf)  # its validation accuracy and loss
        # method.head=gbdt: the tree head's model (LightGBM's text) and its logits per split (_tree_logits).
        self._tree_bytes: bytes | None = None
        self._tree_cache: dict[str, torch.Tensor] = {}
        # method.research.joint_trees: the joint trees (LightGBM's text), the digest of the training embeddings they
        # were fitted on, each passive's unmixing (independent components, trees.fit_unmixing), the loaded booster,
        # and this process's latest training embeddings (fit_joint_trees).
        self._joint_tree_bytes: bytes | None = None
        self._joint_unmixing: list[trees.Unmixing | None] = []
        self._joint_tree_key: bytes | None = None
        self._joint_tree_setting: dict[str, int] | None = None
        self._joint_booster: Any = None
        self._train_embeddings: list[np.ndarray] | None = None
        # Calibration, evaluation and prediction (scoring.py): what the trained modules do on val, test and new rows.
        self.scoring = ActiveScoring(self)

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
        return self.uses_local_head and self.joint and self.cfg.method.research.joint_residual

    @property
    def tree_head(self) -> bool:
        """``method.head=gbdt``: the active-only logits are a LightGBM model's margin on this party's own columns
        (:meth:`_tree_logits`); the network head still trains the shared encoder (first prototypes, the joint
        encoder's warm start) but no longer predicts."""
        return self.uses_local_head and self.joint and self.cfg.method.head == "gbdt"

    @property
    def joint_trees(self) -> bool:
        """``method.research.joint_trees``: with the tree head, the joint model is the average of the network and
        the joint trees (:meth:`fit_joint_trees`)."""
        return self.tree_head and self.cfg.method.research.joint_trees

    def _build_extra(self) -> None:
        d, name = self.cfg.model.embedding_dim, self.data.name
        self.top = make_top_model(d + sum(self.passive_dims), self.num_classes, self.cfg.model, name).to(self.device)
        self.head = make_top_model(d, self.num_classes, self.cfg.model, name).to(self.device)
        # One weight per passive for its prototype classifier's log-probabilities (prototype_logits).
        self.proto_weight = _ParamHolder(torch.nn.Parameter(torch.ones(len(self.passive_dims), device=self.device)))
        # method.research.joint_encoder: the joint model's own active encoder (trained end-to-end on the aligned rows).
        self.joint_enc = (make_encoder(self.data.input_shape, self.cfg.model, name).to(self.device)
                          if self.vproto and self.joint and self.cfg.method.research.joint_encoder else None)
        # method.research.residual_weight=learned: the joint model learns how much of the active-only head's logits to
        # keep (all of them at first), so with many aligned rows it can lean on its own active encoder instead.
        self.residual_weight = (_ParamHolder(torch.nn.Parameter(torch.ones(1, device=self.device)))
                                if self.residual and self.cfg.method.research.residual_weight == "learned" else None)
        # method.research.residual_base=best_val: frozen copies of the shared encoder and the head, taken when the
        # head's validation loss is the lowest so far; never trained (not in _modules, hence not in the optimizer).
        self.base = (copy.deepcopy(torch.nn.ModuleList([self.encoder, self.head])).eval().requires_grad_(False)
                     if self.residual and self.cfg.method.research.residual_base == "best_val" and not self.tree_head
                     else None)
        if self.residual:
            zero_output_layer(self.top, name)

    def _modules(self) -> list[torch.nn.Module]:
        return [self.encoder, self.top, self.head, self.proto_weight,
                *([self.joint_enc] if self.joint_enc is not None else []),
                *([self.residual_weight] if self.residual_weight is not None else [])]

    # ---------------------------------------------------------------- forward passes (training and scoring)
    def keep_active_only(self, accuracy: float, loss: float) -> None:
        """Copy the shared encoder and the head as they are now into :attr:`chosen_only` (their validation accuracy
        and loss on all this party's labelled validation users): the model shipped for the users only it holds."""
        if self.chosen_only is None:
            pair = torch.nn.ModuleList([self.encoder, self.head])
            self.chosen_only = copy.deepcopy(pair).eval().requires_grad_(False)
        else:
            self.chosen_only[0].load_state_dict(self.encoder.state_dict())
            self.chosen_only[1].load_state_dict(self.head.state_dict())
        self.chosen_only_score = (float(accuracy), float(loss))

    def chosen_only_logits(self, split: str, rows: np.ndarray) -> torch.Tensor:
        """Rows ``rows`` of ``split`` through :attr:`chosen_only` (the live encoder and head before any is kept);
        with ``method.head=gbdt`` the trees, which are the active-only model and never change after fitting."""
        tm = self._tree_logits(split, rows)
        if tm is not None:
            return tm
        if self.chosen_only is None:
            return self.logits(split, rows)[0]
        x = self._x[split][torch.as_tensor(rows, device=self.device)]
        h = self._embed(x, self.chosen_only[0])
        with torch.no_grad():
            return self.chosen_only[1](h)

    def _joint_logits(
        self, h: torch.Tensor, zs: list[torch.Tensor], protos: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        hj: torch.Tensor | None = None, hb: torch.Tensor | None = None, tm: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Joint logits with this party's modules (:func:`flwr_vproto.method.joint.joint_logits`).

        ``h`` is the shared active encoder's output; ``hj`` the joint encoder's (``method.research.joint_encoder``);
        ``hb`` the frozen base encoder's (``method.research.residual_base=best_val``), whose head then gives the
        residual's logits in place of the live head's; ``tm`` the tree head's logits of the same rows
        (``method.head=gbdt``), which then are the residual's base; ``protos`` the second prototypes and masks."""
        def residual(hd: torch.Tensor) -> torch.Tensor:
            if tm is not None:
                return tm
            return self.head(hd) if hb is None else self.base[1](hb)  # type: ignore[index]

        w = self.residual_weight.param if self.residual_weight is not None else 1.0
        return joint_logits(self.joint_part, self.top, h, zs, joint_features=hj, residual_logits=residual,
                            residual_weight=w, second=protos, prototype_weights=self.proto_weight.param)

    def _tree_logits(self, split: str, rows: np.ndarray | torch.Tensor) -> torch.Tensor | None:
        """The tree head's logits of rows ``rows`` of ``split`` (``None`` without a tree head): its margin, computed
        once per split over every row of this party and kept (the trees never change after their fit)."""
        if not self.tree_head:
            return None
        if split not in self._tree_cache:
            booster = trees.head_from_bytes(self._tree_model())
            self._tree_cache[split] = torch.as_tensor(
                trees.head_margin(booster, self.data.split(split).x, self.num_classes), device=self.device)
        return self._tree_cache[split][torch.as_tensor(rows, device=self.device)]

    def _tree_model(self) -> bytes:
        """The tree head's model (``method.head=gbdt``), fitted at first use on this party's own columns: every
        labelled training row it holds (aligned or not), early-stopped on its labelled validation rows, with the
        labels it trains on (randomised ones under ``defence.label_epsilon``). Deterministic, so a party rebuilt
        elsewhere would fit the same trees; it loads them from its state instead."""
        if self._tree_bytes is None:
            view = {}
            for split in ("train", "val"):
                y = self._y[split].cpu().numpy()
                keep = np.flatnonzero(y >= 0)
                view[split] = (np.asarray(self.data.split(split).x)[keep], y[keep])
            booster = trees.fit_head(view["train"], view["val"], self.num_classes, self.cfg.seed)
            self._tree_bytes = trees.head_to_bytes(booster)
        return self._tree_bytes

    def _base_features(self, x: torch.Tensor) -> torch.Tensor | None:
        """The frozen base encoder's output on ``x`` (``method.research.residual_base=best_val``), or ``None`` while the
        residual uses the live head (that option off, or no calibration yet)."""
        if self.base is None or not self.best_val.ready:
            return None
        return self._embed(x, self.base[0])

    def second_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Each passive's second prototypes with their class mask (``None`` until every passive has some)."""
        pairs = []
        for second, mask in zip(self.second, self.second_mask, strict=True):
            if second is None or mask is None:
                return None
            pairs.append((second, mask))
        return pairs

    def logits(
        self, split: str, rows: np.ndarray, passive_embeddings: list[np.ndarray] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows ``rows`` of ``split`` through the modules as they are now (eval mode, no grad): the active-only
        head's logits and, given the passives' embeddings of the same rows, the joint model's (``None`` without, or
        without passives). The one forward pass that calibration, scores and prediction (:mod:`flwr_vproto.scoring`)
        read, so they see exactly the model that trains."""
        x = self._x[split][torch.as_tensor(rows, device=self.device)]
        h = self._embed(x)
        tm = self._tree_logits(split, rows)
        with torch.no_grad():
            head = self.head(h) if tm is None else tm
            if passive_embeddings is None or not self.joint:
                return head, None
            zs = [torch.as_tensor(e, dtype=torch.float32, device=self.device) for e in passive_embeddings]
            hj = self._embed(x, self.joint_enc) if self.joint_enc is not None else None
            joint = self._joint_logits(h, zs, self.second_pairs(), hj, self._base_features(x), tm)
            trees_joint = self._joint_tree_logits(split, rows, passive_embeddings, tm)
            return head, joint if trees_joint is None else average_of(joint, trees_joint)

    # ---------------------------------------------------------------- the joint trees (method.research.joint_trees)
    def fit_joint_trees(self, val_embeddings: list[np.ndarray]) -> bool:
        """Fit the joint trees (:func:`flwr_vproto.trees.fit_joint`) on the aligned training users' [own columns,
        the passives' embeddings of this process's latest round], from the tree head's margin, early-stopped on the
        aligned validation users (``val_embeddings``, the calibration's), unless they were fitted on these very
        training embeddings: by default the passives never change after pre-training, so that is once a run; with
        gradient rows released, at every calibration after the embeddings moved, with the setting the first fit chose.
        Labels as this party trains on them. Returns whether it fitted."""
        if not self.joint_trees or self._train_embeddings is None:
            return False
        key = _digest(self._train_embeddings)
        if key == self._joint_tree_key:
            return False
        self._joint_unmixing = [trees.fit_unmixing(e, self.cfg.seed) for e in self._train_embeddings]
        views = []
        for split, embeddings in (("train", self._train_embeddings), ("val", val_embeddings)):
            rows = self.aligned[split]
            y = self.labels(split)
            keep = np.flatnonzero(y >= 0)
            x = self._joint_tree_features(split, rows, embeddings)[keep]
            base = self._tree_logits(split, rows).cpu().numpy()[keep]  # type: ignore[union-attr]
            views.append(((x, y[keep]), base))
        fitted = trees.fit_joint(views[0][0], views[1][0], (views[0][1], views[1][1]), self.num_classes,
                                 self.cfg.seed, self._joint_tree_setting)
        if fitted is not None:
            self._joint_tree_bytes, self._joint_tree_setting = trees.head_to_bytes(fitted[0]), fitted[1]
        self._joint_booster, self._joint_tree_key = None, key
        return True

    def _joint_tree_features(self, split: str, rows: np.ndarray, embeddings: list[np.ndarray]) -> np.ndarray:
        """The joint trees' inputs of rows ``rows`` of ``split``: this party's columns, each passive's embedding of
        the same rows, then each passive's independent components of it (those fitted, :func:`trees.fit_unmixing`)."""
        x = np.asarray(self.data.split(split).x[rows], dtype=np.float32).reshape(len(rows), -1)
        components = [trees.unmixed(e, u) for e, u in zip(embeddings, self._joint_unmixing, strict=True)
                      if u is not None]
        return np.hstack([x, *(np.asarray(e, dtype=np.float32) for e in embeddings), *components])

    def _joint_tree_logits(self, split: str, rows: np.ndarray, embeddings: list[np.ndarray],
                           base: torch.Tensor | None) -> torch.Tensor | None:
        """The joint trees' logits of rows ``rows`` of ``split`` given the passives' embeddings of them (``None``
        before they are fitted, or without them)."""
        if self._joint_tree_bytes is None or base is None:
            return None
        if self._joint_booster is None:
            self._joint_booster = trees.head_from_bytes(self._joint_tree_bytes)
        margin = trees.joint_margin(self._joint_booster, self._joint_tree_features(split, rows, embeddings),
                                    base.cpu().numpy(), self.num_classes)
        return torch.as_tensor(margin, device=self.device)

    # ---------------------------------------------------------------- what leaves this party (defence.*)
    def release_gradients(self, rnd: int, gradients: list[np.ndarray]) -> list[np.ndarray]:
        """The gradient rows of round ``rnd`` as they leave this party (``defences.releases`` decided they do): with
        the Gaussian channel on, unit rows plus noise from this party's secret, each passive's rows one accounted
        release; else unchanged."""
        acc = self.gradient_accountant
        if acc is None:
            return gradients
        out = [defences.gaussian_rows(g, acc.sigma, defences.gradient_rng(self.secret, rnd, k))
               for k, g in enumerate(gradients, start=1)]
        acc.step(len(out))
        return out

    def snapshot_rows(self, zs: list[torch.Tensor], labels: torch.Tensor | None = None) -> list[np.ndarray]:
        """Each passive's gradient rows from one snapshot of the model, after the round's training: in eval mode
        (no dropout, batch norm on running statistics), row ``i`` is the gradient of user ``i``'s own loss with
        respect to the embedding ``z_i`` it was computed from, the second prototypes a constant of the model. No
        row depends on another user's label or embedding, so, *given the model*, changing one user's label moves
        only that user's row (by at most 2 once scaled to unit norm): the premise of the Gaussian channel's
        per-release bound (``defences.gaussian_rows``). ``labels``: the aligned training users' labels (default:
        those this party trains on; a test flips one)."""
        al = torch.as_tensor(self.aligned["train"], device=self.device)
        x = self._x["train"][al]
        y = self._y["train"][al] if labels is None else labels.to(self.device)
        if not self.joint or len(al) == 0:
            return [np.zeros((len(al), z.shape[1]), dtype=np.float32) for z in zs]
        self._set_train(False)
        second = self.second_pairs()
        with torch.no_grad():
            h = self.encoder(x)
            hj = self.joint_enc(x) if self.joint_enc is not None else None
            hb = self._base_features(x)
        z_in = [z.detach().clone().requires_grad_(True) for z in zs]
        logits = self._joint_logits(h, z_in, second, hj, hb, self._tree_logits("train", self.aligned["train"]))
        loss = torch.nn.functional.cross_entropy(logits, y, ignore_index=-1, reduction="sum")
        rows = torch.autograd.grad(loss, z_in, allow_unused=True)
        return [(torch.zeros_like(z) if g is None else g).detach().cpu().numpy().astype(np.float32)
                for z, g in zip(z_in, rows, strict=True)]

    def gradient_privacy(self) -> dict[str, float]:
        """The round record's gradient-channel entries: the noise multiplier and the bound one round's rows (all
        passives) satisfy *given that round's model* (at ``defence.delta``), and the releases so far. Not an
        epsilon of the run: the model learns from the labels between releases (design §6b)."""
        acc = self.gradient_accountant
        if acc is None:
            return {}
        return {"gradient_sigma": acc.sigma, "gradient_release_epsilon": defences.release_epsilon(self.cfg),
                "gradient_releases": float(acc.steps)}

    # ---------------------------------------------------------------- training
    def train_round(self, rnd: int, passive_embeddings: list[np.ndarray], release: bool = True) -> ActiveRoundOutput:
        """One round of supervised split learning on the aligned rows plus the first loss on non-aligned rows.

        ``passive_embeddings[k]`` are passive ``k``'s embeddings of the aligned training rows (shared order) from
        this round. Returns each passive's gradients and second prototypes, used by that passive next round.
        ``release``: whether this round's prototypes will be sent (false in the last round; never unless
        ``method.shares_prototypes``); with privacy on, only released prototypes are charged to the privacy budget.
        """
        release = release and self.cfg.method.shares_prototypes
        al = torch.as_tensor(self.aligned["train"], device=self.device)
        zs = self._received_embeddings(rnd, passive_embeddings)
        if self.joint_trees:  # what the joint trees are fitted on at the next calibration
            self._train_embeddings = [np.asarray(e, dtype=np.float32) for e in passive_embeddings]
        self._start_round(rnd)
        gen = torch.Generator().manual_seed(round_seed(self.cfg.seed, 0, rnd))
        if self.joint:
            self._update_first_prototypes(al)
            protos, mask = self._second_prototypes(zs, self._y["train"][al], rnd, release)
        else:
            protos, mask = [], np.zeros(self.num_classes, dtype=bool)
        plan = self._plan_round(rnd, al, gen)
        tally = self._train_steps(rnd, plan, zs)
        if self.gradient_accountant is not None:  # the Gaussian channel: rows whose sensitivity is known
            grads = self.snapshot_rows(zs)
        else:
            grads = [(gs / tally.visits.clamp(min=1).unsqueeze(1)).cpu().numpy().astype(np.float32)
                     for gs in tally.grad_sum]
        steps = plan.steps
        metrics = {k: v / steps for k, v in tally.sums.items() if steps and v != 0.0}
        metrics["steps"] = float(steps)
        if tally.pseudo.seen:
            metrics["active_pseudo_coverage"] = tally.pseudo.kept / tally.pseudo.seen
        if self.joint:
            metrics["sup_steps"] = float(plan.sup_steps)
            metrics["prototype_classes"] = float(mask.sum())
        spent = {"epsilon": self.accountant.epsilon()} if self.accountant is not None else {}
        return ActiveRoundOutput(grads, protos, mask, metrics, spent)

    def _received_embeddings(self, rnd: int, passive_embeddings: list[np.ndarray]) -> list[torch.Tensor]:
        """The passives' embeddings as tensors, refused with a message naming the passive if mis-shaped or not
        finite (one bad party must not turn into a shape error, or NaNs, deep inside the top model)."""
        n = len(self.aligned["train"])
        if len(passive_embeddings) != len(self.passive_dims):
            raise ValueError(f"round {rnd}: got embeddings from {len(passive_embeddings)} passive parties, "
                             f"expected {len(self.passive_dims)}")
        zs = []
        for k, (e, d) in enumerate(zip(passive_embeddings, self.passive_dims, strict=True)):
            if e.shape != (n, d):
                raise ValueError(f"round {rnd}: embeddings of passive{k + 1} have shape {e.shape}, expected "
                                 f"{(n, d)}")
            if not np.isfinite(e).all():
                raise ValueError(f"round {rnd}: embeddings of passive{k + 1} contain NaN or inf")
            zs.append(torch.as_tensor(e, dtype=torch.float32, device=self.device))
        return zs

    def _start_round(self, rnd: int) -> None:
        """Module swaps due at a round's start: the joint encoder's warm start (``method.research.joint_warm_start``)
        and the copy of the model the last calibration scored best into the residual's frozen base."""
        m = self.cfg.method
        if self.joint_enc is not None and m.research.joint_warm_start and rnd == m.warmup_rounds + 1:
            self.joint_enc.load_state_dict(self.encoder.state_dict())  # warm start from the active party's own rows
        if self.base is not None and self.best_val.pending:  # the best-scored model, unchanged since
            self.base[0].load_state_dict(self.encoder.state_dict())
            self.base[1].load_state_dict(self.head.state_dict())
            self.best_val.ready, self.best_val.pending = True, False

    def _plan_round(self, rnd: int, al: torch.Tensor, gen: torch.Generator) -> _RoundPlan:
        """Rows and batches of this round (``gen``: the round's generator; the main batches are drawn first).

        Rows beyond the aligned ones: labelled rows for the active-only head, all of them for the first loss.
        """
        m = self.cfg.method
        y_tr = self._y["train"]
        use_first = self.vproto and rnd > m.warmup_rounds and self.first.weight > 0
        if self.joint:
            non = torch.as_tensor(self.nonaligned_train_rows(), device=self.device)
            extra = non if (use_first or self.uses_local_head) else non[:0]
            if not use_first:
                extra = extra[y_tr[extra] >= 0]
            main = al
        else:  # local: every labelled training row
            main = torch.nonzero(y_tr >= 0).flatten()
            extra = main[:0]
        steps = max(num_batches(len(main), m.batch_size), num_batches(len(extra), m.batch_size))
        main_b = index_batches(len(main), m.batch_size, steps, gen)
        # method.research.aligned_passes: the supervised loss sees the aligned rows only this many times per round.
        sup_steps = steps if not self.joint else min(
            steps, m.research.aligned_passes * num_batches(len(main), m.batch_size))
        extra_b = index_batches(len(extra), m.batch_size, steps, gen) if len(extra) else []
        return _RoundPlan(main, main_b, extra, extra_b, steps, sup_steps, use_first)

    def _train_steps(self, rnd: int, plan: _RoundPlan, zs: list[torch.Tensor]) -> _RoundTally:
        """The round's optimizer steps; each sums the supervised, custom, first and local terms that apply."""
        tally = _RoundTally([torch.zeros_like(z) for z in zs], torch.zeros(len(plan.main), device=self.device))
        second = self.second_pairs()
        # The residual's base is frozen all round: one forward pass over the rows of the joint loss.
        hb_main = self._base_features(self._x["train"][plan.main]) if self.joint else None
        self._set_train(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(round_seed(self.cfg.seed, 0, rnd) + 1)
            for i in range(plan.steps):
                loss = torch.zeros((), device=self.device)
                local: list[tuple[torch.Tensor, torch.Tensor]] = []
                z_in: list[torch.Tensor] = []
                if i < plan.sup_steps:  # later steps train on non-aligned rows only
                    loss, z_in = self._supervised_terms(rnd, loss, plan.main_batches[i], plan, zs, second, hb_main,
                                                        local, tally)
                if len(plan.extra_batches):
                    loss = self._nonaligned_terms(loss, plan.extra[plan.extra_batches[i]], plan.use_first, local,
                                                  tally)
                loc = local_head_loss(self.head, local) if self.uses_local_head else None
                if loc is not None:
                    loss = loss + loc
                    tally.sums["local_loss"] += float(loc.detach())
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                if i < plan.sup_steps:
                    b = plan.main_batches[i]
                    for k, zi in enumerate(z_in):
                        if zi.grad is not None:
                            tally.grad_sum[k].index_add_(0, b, zi.grad)
                    tally.visits.index_add_(0, b, torch.ones(len(b), device=self.device))
        return tally

    def _supervised_terms(
        self, rnd: int, loss: torch.Tensor, b: torch.Tensor, plan: _RoundPlan, zs: list[torch.Tensor],
        second: list[tuple[torch.Tensor, torch.Tensor]] | None, hb_main: torch.Tensor | None,
        local: list[tuple[torch.Tensor, torch.Tensor]], tally: _RoundTally,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Batch ``b`` of the main rows: the supervised joint loss (and custom terms) added to ``loss``; the rows
        also join the active-only head's batch (``local``). Returns the loss and the passives' embedding leaves
        whose gradients go back to them."""
        rows = plan.main[b]
        x, y = self._x["train"][rows], self._y["train"][rows]
        h = self.encoder(x)
        z_in = [z[b].clone().requires_grad_(True) for z in zs]
        logits = None
        if self.joint:
            hj = self.joint_enc(x) if self.joint_enc is not None else None
            tm = self._tree_logits("train", rows.cpu().numpy())
            logits = self._joint_logits(h, z_in, second, hj, None if hb_main is None else hb_main[b], tm)
            sup = supervised_joint_loss(logits, y)
            loss = loss + sup
            tally.sums["sup_loss"] += float(sup.detach())
        if self.extra_losses:
            batch = LossBatch(h, self.head(h) if logits is None else logits, y, tuple(z_in), rnd)
            extra = extra_loss_total(self.extra_losses, batch, tally.sums)
            if extra is not None:
                loss = loss + extra
        if self.uses_local_head:
            local.append((h, y))
        return loss, z_in

    def _nonaligned_terms(
        self, loss: torch.Tensor, rows: torch.Tensor, use_first: bool, local: list[tuple[torch.Tensor, torch.Tensor]],
        tally: _RoundTally,
    ) -> torch.Tensor:
        """A batch of non-aligned rows: the weighted first prototype loss added to ``loss``; the labelled rows
        also join the active-only head's batch (``local``)."""
        h = self.encoder(self._x["train"][rows])
        y = self._y["train"][rows]
        if self.uses_local_head:
            local.append((h, y))
        if use_first and self.protos is not None:
            first = first_prototype_loss(h, y, self.protos, self.proto_mask, self.first, tally.pseudo)  # type: ignore
            loss = loss + self.first.weight * first
            tally.sums["first_loss"] += float(first.detach())
        return loss

    def _update_first_prototypes(self, al: torch.Tensor) -> None:
        """First prototypes: class means of ``f_A`` over the labelled aligned rows, optionally EMA-smoothed."""
        h = self.geometry.normalized(self._embed(self._x["train"][al]))
        new, mask = prototypes.class_means(h, self._y["train"][al], self.num_classes)
        self.protos, self.proto_mask = prototypes.ema_update(self.protos, self.proto_mask, new, mask,
                                                             self.cfg.method.research.ema_momentum)

    def _second_prototypes(
        self, zs: list[torch.Tensor], y_al: torch.Tensor, rnd: int, release: bool
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Second prototypes: per passive, class means of its received embeddings, in its own space.

        With privacy on, the means come from clipped, noised class sums and noised counts (privacy.py, noise for one
        changed label), and a round whose prototypes are released is charged ``K + 1`` Gaussian steps. The EMA and
        everything downstream (the passives' third loss, this party's prototype classifier) see only the noisy
        values.
        """
        m = self.cfg.method
        out: list[np.ndarray] = []
        masks = []
        acc = self.accountant
        if acc is not None:
            gen = torch.Generator().manual_seed(defences.secret_torch_seed(self.secret, defences.PROTOTYPE_STREAM, rnd))
            counts = privacy.noisy_counts(y_al, self.num_classes, acc.sigma, gen)
            if release and zs:
                acc.step(len(zs) + 1)
        for k, z in enumerate(zs):
            zn = self.geometry.normalized(z)
            if acc is not None:
                sums = privacy.noisy_class_sums(zn, y_al, self.num_classes, self.cfg.privacy.clip_norm, acc.sigma, gen)
                new, mask = privacy.prototypes_from_noisy(sums, counts, acc.sigma, self.cfg.privacy.clip_norm)
            else:
                new, mask = prototypes.class_means(zn, y_al, self.num_classes)
            second, second_mask = prototypes.ema_update(self.second[k], self.second_mask[k], new, mask,
                                                        m.research.ema_momentum)
            self.second[k], self.second_mask[k] = second, second_mask
            out.append(second.cpu().numpy().astype(np.float32))
            masks.append(second_mask.cpu().numpy())
        mask_all = np.logical_and.reduce(masks) if masks else np.zeros(self.num_classes, dtype=bool)
        return out, mask_all

    # ---------------------------------------------------------------- labels
    def set_alignment(self, rows: dict[str, np.ndarray]) -> None:
        super().set_alignment(rows)
        self._use_private_labels()

    def labels(self, split: str) -> np.ndarray:
        """Labels of the aligned rows of ``split`` that this party trains and calibrates on (shared order; ``-1``
        where unknown; randomised under ``defence.label_epsilon``, whereas scores use ``data``'s true labels)."""
        return self._y[split][torch.as_tensor(self.aligned[split], device=self.device)].cpu().numpy()

    def own_labels(self, split: str) -> np.ndarray:
        """Labels of every row of ``split`` this party holds, aligned or not, as it trains on them (``-1`` where
        unknown; the aligned ones randomised under ``defence.label_epsilon``)."""
        return self._y[split].cpu().numpy()

    def _use_private_labels(self) -> None:
        """``defence.label_epsilon``: from here on, every aligned training and validation user's label is its
        randomised response for everything this party trains and calibrates on (non-aligned users keep theirs).
        Scores (:meth:`flwr_vproto.scoring.ActiveScoring.evaluate`) use the true labels and reach the server only;
        what selects a round (whose test rows then travel) uses the noised ones (``selection_accuracy``). Drawn from
        this party's secret, saved with its state, so a fresh process or a resumed run draws the same labels."""
        eps = self.cfg.defence.label_epsilon
        if eps is None:
            return
        for split in ("train", "val"):
            rows = self.aligned[split]
            true = np.asarray(self.data.split(split).y, dtype=np.int64)
            labels = true.copy()
            labels[rows] = defences.randomized_response(true[rows], eps, self.num_classes,
                                                        defences.label_rng(self.secret, split))
            self._y[split] = torch.as_tensor(labels, dtype=torch.long, device=self.device)

    # ---------------------------------------------------------------- state
    # The hooks of _Party.state_dict, next to the attributes they mirror; the scoring part saves what it fitted and
    # kept itself. A change of keys is a new checkpoint format (checkpoint.FORMAT).
    def _extra_state(self) -> dict[str, Any]:
        return {"protos": self.protos, "proto_mask": self.proto_mask, "second": self.second,
                "second_mask": self.second_mask, **self.scoring.state_dict(),
                "base": None if self.base is None else self.base.state_dict(),
                "base_tracking": self.best_val.to_list(),
                "chosen_only": None if self.chosen_only is None else self.chosen_only.state_dict(),
                "chosen_only_score": list(self.chosen_only_score),
                "privacy": None if self.accountant is None else self.accountant.state_dict(),
                "secret": bytes_tensor(self.secret),
                "gradient_privacy": (None if self.gradient_accountant is None
                                     else self.gradient_accountant.state_dict()),
                "tree_head": bytes_tensor(self._tree_bytes),
                "joint_trees": bytes_tensor(self._joint_tree_bytes),
                "joint_trees_key": bytes_tensor(self._joint_tree_key),
                "joint_trees_setting": self._joint_tree_setting,
                "joint_trees_unmixing": [None if u is None else [torch.from_numpy(u[0]), torch.from_numpy(u[1])]
                                         for u in self._joint_unmixing]}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("secret") is not None:
            self.secret = tensor_bytes(state["secret"])
        self._use_private_labels()  # the secret draws the noised labels
        if self.gradient_accountant is not None and state.get("gradient_privacy") is not None:
            self.gradient_accountant.load_state_dict(state["gradient_privacy"])
        self.protos, self.proto_mask = state["protos"], state["proto_mask"]
        self.second, self.second_mask = list(state["second"]), list(state["second_mask"])
        self.scoring.load_state_dict(state)
        if self.accountant is not None and state.get("privacy") is not None:
            self.accountant.load_state_dict(state["privacy"])
        if self.base is not None and state.get("base") is not None:
            self.base.load_state_dict(state["base"])
            self.best_val = BestValidation.from_list(state["base_tracking"])
        if state.get("chosen_only") is not None:
            self.keep_active_only(*state["chosen_only_score"])  # builds the module, then takes the saved weights
            self.chosen_only.load_state_dict(state["chosen_only"])  # type: ignore[union-attr]
        if state.get("tree_head") is not None:
            self._tree_bytes = tensor_bytes(state["tree_head"])
            self._tree_cache = {}
        self._joint_tree_bytes = tensor_bytes(state.get("joint_trees"))
        self._joint_tree_key = tensor_bytes(state.get("joint_trees_key"))
        self._joint_tree_setting = state.get("joint_trees_setting")
        self._joint_unmixing = [None if u is None else (u[0].numpy(), u[1].numpy())
                                for u in state.get("joint_trees_unmixing") or []]
        self._joint_booster = None


def _digest(arrays: list[np.ndarray]) -> bytes:
    """A digest of ``arrays`` (shapes and values): whether the joint trees saw these embeddings."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.digest()


class _ParamHolder(torch.nn.Module):
    """Wraps loose parameters so that state dicts, train/eval and the optimizer treat them like a module."""

    def __init__(self, param: torch.nn.Parameter) -> None:
        super().__init__()
        self.param = param
