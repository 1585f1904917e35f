"""Calibration, evaluation and prediction of the active party: what it does with its trained modules on validation,
test and prediction rows, kept apart from how it trains them (:class:`~flwr_vproto.parties.ActiveParty`).

Why a part of its own: these steps train nothing. Calibration fits a few numbers on the validation rows (the combine
weight, each passive's pseudo-label gate, the mark of the residual's best-validation base); evaluation then only
scores; prediction is what ``predict.py`` ships. Every one of these numbers selects a round, is reported in
``results.json`` or leaves the party, so it must be the same in every engine. :class:`ActiveScoring` picks the rows
and labels and keeps what calibration fitted; the numbers themselves come from the pure functions of
:mod:`flwr_vproto.method.calibration` and :mod:`flwr_vproto.method.evaluation`. Plain PyTorch, no Flower.

It reads the party through :class:`ScoredParty` only: rows and labels, one forward pass of its modules
(``logits``), the second prototypes for the gates, and the residual base's tracking. Training state (optimizer,
first prototypes, privacy accountants) stays out of its reach.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from flwr_vproto.config import Config
from flwr_vproto.data.types import PartySplits
from flwr_vproto.method.calibration import (
    BestValidation,
    Calibration,
    combination_gain,
    fit_combine_weight,
    fit_pseudo_gates,
    gated_combine_weight,
    shared_prototype_mask,
    trusted_combine_weight,
    validation_loss,
)
from flwr_vproto.method.evaluation import (
    active_only_rows,
    prediction_probs,
    softmax_probs,
    split_scores,
    top1_accuracy,
)
from flwr_vproto.method.losses import PrototypeGeometry
from flwr_vproto.results import MIN_VALIDATION_USERS


class ScoredParty(Protocol):
    """What :class:`ActiveScoring` reads of the active party (``ActiveParty`` is one)."""

    cfg: Config
    data: PartySplits  # the true labels, for scores only (they reach the server, never a passive)
    aligned: dict[str, np.ndarray]  # split -> aligned rows, in the shared order
    num_classes: int
    passive_dims: list[int]
    device: torch.device
    geometry: PrototypeGeometry  # how the gates measure distance to a second prototype
    base: torch.nn.ModuleList | None  # the residual's frozen base (``method.research.residual_base=best_val``), if any
    best_val: BestValidation  # when that base is next copied; calibration marks it
    chosen_only_score: tuple[float, float]  # validation accuracy and loss of the kept active-only model

    @property
    def joint(self) -> bool: ...

    @property
    def uses_local_head(self) -> bool: ...

    @property
    def vproto(self) -> bool: ...

    def logits(self, split: str, rows: np.ndarray,
               passive_embeddings: list[np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def labels(self, split: str) -> np.ndarray: ...

    def own_labels(self, split: str) -> np.ndarray: ...

    def keep_active_only(self, accuracy: float, loss: float) -> None: ...

    def chosen_only_logits(self, split: str, rows: np.ndarray) -> torch.Tensor: ...

    def second_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None: ...

    def fit_joint_trees(self, val_embeddings: list[np.ndarray]) -> bool: ...


class ActiveScoring:
    """The active party's calibration, evaluation and prediction, and what calibration fitted.

    Order on an evaluation round (``protocol.active_step``): :meth:`calibrate` on the validation rows, then
    :meth:`evaluate` per split (scores only, no side effects), then :meth:`pseudo_gates` (sent with the next round).
    What it fits (combine weight, gates) and keeps (the passives' latest test embeddings) is party state:
    :meth:`state_dict` goes into the party's.
    """

    def __init__(self, party: ScoredParty) -> None:
        self.party = party
        self.calibration = Calibration.from_method(party.cfg.method)
        self.auto_weight = 0.5  # combine_weight=auto before the first validation
        # method.research.pseudo_gate: each passive's confidence threshold, set at every calibration; keep nothing
        # until then.
        self.gates: list[float] = [1.0] * len(party.passive_dims)
        # defences.flagless: the passives' latest test embeddings, scored on every evaluation round (the test rows
        # travel only when a passive's encoder may have changed, on a schedule fixed by the config; protocol.py).
        self.kept_test: list[np.ndarray] | None = None

    @property
    def gated(self) -> bool:
        """Whether this run gates the passives' pseudo-labels (``method.research.pseudo_gate`` not ``off``; the gates
        need second prototypes, which exist only when they are shared with the passives)."""
        m = self.party.cfg.method
        return self.party.vproto and self.party.joint and m.research.pseudo_gate != "off" and m.shares_prototypes

    @property
    def combine_weight(self) -> float:
        """Weight of the joint model in the shipped prediction: configured, or last fitted on validation rows."""
        w = self.calibration.combine_weight
        return self.auto_weight if w == "auto" else float(w)

    def pseudo_gates(self) -> list[float] | None:
        """Per passive, the confidence threshold to send with its next round (``None`` when gating is off)."""
        return list(self.gates) if self.gated else None

    # ---------------------------------------------------------------- prediction
    def predict_proba(self, split: str, passive_embeddings: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Class probabilities for the aligned rows of ``split``: joint, active-only and their combination
        (:func:`~flwr_vproto.method.evaluation.prediction_probs`)."""
        p = self.party
        head, joint = p.logits(split, p.aligned[split], passive_embeddings)
        return prediction_probs(head if p.uses_local_head else None, joint, self.combine_weight)

    def active_only_proba(self, split: str, rows: np.ndarray) -> np.ndarray:
        """The active-only head's class probabilities for rows ``rows`` of ``split`` (any rows: it needs no
        passive), e.g. the users only the active party holds."""
        head, _ = self.party.logits(split, rows)
        return softmax_probs(head)

    def chosen_only_proba(self, split: str, rows: np.ndarray) -> np.ndarray:
        """Class probabilities of the active-only model kept by :meth:`select_active_only` (the live head before
        the first evaluation) for rows ``rows`` of ``split``: what prediction ships for the users only the active
        party holds, and what ``chosen_active_only_accuracy`` scores."""
        return softmax_probs(self.party.chosen_only_logits(split, rows))

    # ---------------------------------------------------------------- calibration
    def calibrate(self, passive_embeddings: list[np.ndarray]) -> dict[str, float]:
        """Fit on the validation rows what this method fits there, before scoring or sending anything.

        ``passive_embeddings``: each passive's embeddings of the aligned validation rows. Fits, when configured,
        the joint trees first (``joint_trees``: early-stopped on these rows, and part of every joint logit after),
        the combine weight (``combine_weight=auto``), each passive's pseudo-label gate (``pseudo_gate``) and marks
        the residual's base (``residual_base=best_val``) and keeps the active-only model (:meth:`select_active_only`);
        returns the metrics of these fits (``residual_base_update``, ``pseudo_gate{k}``, ``own_*``,
        ``active_only_kept``) and ``aligned_users`` (how many labelled aligned validation users selection has),
        reported with the validation scores. Calibration sees the
        labels the party trains on (noised under ``defence.label_epsilon``), never the true ones.
        """
        self.party.fit_joint_trees(passive_embeddings)
        y = self.party.labels("val")
        probs = self.predict_proba("val", passive_embeddings)
        metrics: dict[str, float] = {"aligned_users": float(int((y >= 0).sum()))}
        if self.calibration.combine_weight == "auto" and "joint" in probs and "local" in probs:
            metrics.update(self._fit_combine_weight(probs["joint"], probs["local"], y))
        if self.gated:
            self._fit_gates(passive_embeddings, y)
        if self.party.uses_local_head:
            metrics.update(self.select_active_only())
        if self.party.base is not None:
            metrics["residual_base_update"] = self._track_base(probs["local"], y)
        if self.gated:
            metrics.update({f"pseudo_gate{k + 1}": g for k, g in enumerate(self.gates)})
        return metrics

    def _fit_combine_weight(self, joint: np.ndarray, local: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """``combine_weight=auto``: fit the weight on these rows, shrink it on a few dozen of them
        (:func:`~flwr_vproto.method.calibration.trusted_combine_weight`), then keep it only if the combination beats
        the active-only head by more than their noise (``method.research.combine_gate``,
        :func:`~flwr_vproto.method.calibration.gated_combine_weight`). Returns ``combine_gain_z`` (the combination's
        log-loss gain over the head in standard errors) and ``combine_gated`` (1.0 when the gate set the weight to
        0); nothing without a labelled row."""
        w = fit_combine_weight(joint, local, y)
        if w is None:
            return {}
        rows = int((y >= 0).sum())
        w = trusted_combine_weight(w, rows)
        gain = combination_gain(joint, local, y, w)
        self.auto_weight = gated_combine_weight(w, gain, rows, self.calibration.combine_gate)
        z = gain[0] / gain[1] if 0 < gain[1] < float("inf") else 0.0
        return {"combine_gain_z": z, "combine_gated": float(self.auto_weight != w)}

    def select_active_only(self) -> dict[str, float]:
        """Keep the active-only model if it is the best so far on **all** the active party's labelled validation
        users (aligned or not: every one it holds, many more than the aligned ones when few users are shared), by
        accuracy, ties to the lower log-loss (as :func:`flwr_vproto.results.select_final` ranks rounds), or every
        time when they are fewer than :data:`~flwr_vproto.results.MIN_VALIDATION_USERS` (too few to choose by, as for
        the joint model: the last round's model is then kept). This model
        then predicts the users only the active party holds (``predict.py``) and is what ``final`` reports for them.

        Returns ``own_users``, ``own_accuracy``, ``own_loss`` (the live head on those users, labels as it trains on
        them) and ``active_only_kept`` (1.0 when this evaluation's model was kept)."""
        p = self.party
        y = p.own_labels("val")
        rows = np.flatnonzero(y >= 0)
        if not rows.size:
            return {}
        probs = self.active_only_proba("val", rows)
        acc = float((probs.argmax(1) == y[rows]).mean())
        loss = validation_loss(probs, y[rows], p.num_classes)
        best_acc, best_loss = p.chosen_only_score
        few = rows.size < MIN_VALIDATION_USERS  # too few to choose by: the latest model is kept (the last round's)
        kept = few or acc > best_acc or (acc == best_acc and loss < best_loss)
        if kept:
            p.keep_active_only(acc, loss)
        return {"own_users": float(rows.size), "own_accuracy": acc, "own_loss": loss,
                "active_only_kept": 1.0 if kept else 0.0}

    def _track_base(self, local_probs: np.ndarray, y: np.ndarray) -> float:
        """``method.research.residual_base=best_val``: mark the active-only model for copying into the base if its
        validation loss is the lowest so far; returns 1.0 if so, else 0.0 (the ``residual_base_update`` metric)."""
        return 1.0 if self.party.best_val.observe(validation_loss(local_probs, y, self.party.num_classes)) else 0.0

    def _fit_gates(self, passive_embeddings: list[np.ndarray], y: np.ndarray) -> None:
        """``method.research.pseudo_gate``: per passive, the threshold from
        :func:`~flwr_vproto.method.calibration.fit_pseudo_gates` on these validation rows (none before the second
        prototypes exist)."""
        p = self.party
        second = p.second_pairs()
        if second is None:
            return
        mask = shared_prototype_mask([mk for _, mk in second])
        target = self.calibration.gate_target(torch.as_tensor(p.labels("train"), device=p.device), p.num_classes)
        zs = [torch.as_tensor(e, dtype=torch.float32, device=p.device) for e in passive_embeddings]
        yt = torch.as_tensor(y, dtype=torch.long, device=p.device)
        self.gates = fit_pseudo_gates(zs, yt, [protos for protos, _ in second], mask, p.geometry, target,
                                      self.calibration.gate_floor)

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, split: str, passive_embeddings: list[np.ndarray]) -> dict[str, float]:
        """Accuracy (and AUC for two classes) on the aligned rows of ``split``, plus the active-only fallback.

        Scores only (no side effects): what is fitted on validation rows is fitted by :meth:`calibrate`, called
        first. ``accuracy`` scores the prediction this method ships (combined joint + active-only head when
        enabled) on users every party holds; ``active_only_accuracy`` scores the active-only head on the users only
        the active party holds (:func:`~flwr_vproto.method.evaluation.split_scores`).
        """
        p = self.party
        y = p.data.split(split).labels()[p.aligned[split]]  # the true labels: scores reach no passive
        noised = p.labels("val") if split == "val" and p.cfg.defence.label_epsilon is not None else None
        metrics = split_scores(self.predict_proba(split, passive_embeddings), y, p.num_classes,
                               self.combine_weight, selection_labels=noised)
        if p.uses_local_head:
            acc = self._active_only_accuracy(split)
            chosen = self._active_only_accuracy(split, chosen=True) if split == "test" else None
            if acc is not None:
                metrics["active_only_accuracy"] = acc
            if chosen is not None:  # what prediction ships for these users (select_active_only's model)
                metrics["chosen_active_only_accuracy"] = chosen
        return metrics

    def _active_only_accuracy(self, split: str, chosen: bool = False) -> float | None:
        """Accuracy of the active-only head (``chosen``: of the model :meth:`select_active_only` kept, which
        prediction ships) on the labelled rows of ``split`` that only the active party holds."""
        data = self.party.data.split(split)
        y = data.labels()
        only = active_only_rows(len(data), self.party.aligned[split], y)
        if not only.size:
            return None
        probs = self.chosen_only_proba(split, only) if chosen else self.active_only_proba(split, only)
        return top1_accuracy(probs, y[only])

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """What calibration fitted and evaluation kept, in the party's state (checkpoint.FORMAT fixes the keys).
        The residual base's tracking is saved with the base, by the party."""
        return {"auto_weight": self.auto_weight, "gates": list(self.gates),
                "kept_test": None if self.kept_test is None else [torch.as_tensor(k) for k in self.kept_test]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`, read from the party's whole state."""
        self.auto_weight = float(state["auto_weight"])
        self.gates = [float(g) for g in state["gates"]]
        kept = state.get("kept_test")
        self.kept_test = None if kept is None else [np.asarray(k.cpu().numpy(), dtype=np.float32) for k in kept]
