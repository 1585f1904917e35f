"""The vproto protocol, written once: what travels between parties (typed payloads) and what each party does with it
(step functions). No Flower here.

Both engines call only these steps, in this order, so they give the same numbers by construction:

* :func:`flwr_vproto.inprocess.run_inprocess` hands the payloads from one step to the next in one process;
* the Flower engine encodes each payload into a message (:mod:`flwr_vproto.messages`), the strategy relays it
  (:mod:`flwr_vproto.relay`), and each ClientApp handler is decode -> step -> encode (:mod:`flwr_vproto.client_app`).

Setup (design §4). Every party: :func:`discover` (its sizes, and PSI step 1: its own IDs blinded). Then, at the same
time, each passive :func:`psi_reblind` s the active party's points and the active party :func:`psi_blind_peers` the
passives' points (PSI step 2); the active party :func:`psi_finish` es (PSI step 3: intersect, fix the shared order,
build its learner). Each passive learns its aligned rows from its positions in :func:`passive_join` (PSI step 4,
with its first round). Only blinded points and positions travel.

An exchange (pipelined, one message per party; :mod:`flwr_vproto.exchanges` says which rounds it trains, by
default one): every joint passive gets a :class:`ToPassive` (last exchange's gradients, and the second prototypes
and pseudo-label threshold when its third loss uses them) and answers with :class:`FromPassive` (its embeddings);
the active party gets all of them in a :class:`ToActive`, trains the exchange's rounds on them, and answers with
:class:`FromActive` (every round's metrics, and each passive's next gradients, from its last round). Below, a
"round" of a message is its exchange's number (the same thing with one exchange per round). :class:`InTransit`
carries the active party's reply to the next exchange's passive messages; what it releases is decided in
:func:`active_step` alone:

* nothing after the last exchange (it would never be used);
* second prototypes (and the gates) only when a passive uses them (``method.shares_prototypes``);
* on evaluation rounds, calibration on the validation rows (``ActiveParty.scoring``, :mod:`flwr_vproto.scoring`)
  comes before scoring validation and test rows, and before the pseudo-label thresholds are read.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import numpy as np

from flwr_vproto import __version__, audit, defences, exchanges
from flwr_vproto.alignment import min_intersection, split_order_seed
from flwr_vproto.config import Config
from flwr_vproto.data.types import SPLITS, PartySplits
from flwr_vproto.parties import ActiveParty, PassiveParty
from flwr_vproto.psi import PSIHub, PSIPeer
from flwr_vproto.results import round_record

ACTIVE: str = "active"
PASSIVE: str = "passive"
ROLES = (ACTIVE, PASSIVE)
JOINT_METHODS = ("vproto", "vanilla")  # methods whose active party trains with the passives' embeddings


class ProtocolError(RuntimeError):
    """A party failed, did not answer in time, or answered something the protocol does not allow."""


def party_name(role: str, index: int) -> str:
    """``active`` or ``passive<k>``: how every log line, error, checkpoint folder and record key names a party."""
    return ACTIVE if role == ACTIVE else f"{PASSIVE}{index}"


def is_joint(cfg: Config) -> bool:
    """Whether the passives take part in training (``local`` aligns with PSI but trains the active party alone)."""
    return cfg.method.name in JOINT_METHODS


def eval_splits(cfg: Config, rnd: int) -> tuple[str, ...]:
    """Splits embedded in exchange ``rnd``.

    When an exchange trains several rounds (:func:`flwr_vproto.exchanges.blockwise`): validation and test rows
    whenever one of its rounds is an evaluation round (the active party scores its cached ones after each such round;
    no flag ever travels). Else (one round per exchange): validation every ``eval_every`` rounds and after the last;
    test then too with ``eval_test=every``, else only in the last round (another round's test rows travel one round
    later, and only when its validation accuracy was a new best: :attr:`InTransit.test_previous`).

    With the Gaussian gradient channel or a release schedule no such flag travels (it is decided on true labels,
    outside any accounting): test rows come on every evaluation round after which a passive's encoder may have
    changed, a schedule fixed by the config (:func:`flwr_vproto.defences.passive_changes`), and the active party
    scores its latest ones on every evaluation round."""
    if exchanges.blockwise(cfg):
        return ("val", "test") if any(exchanges.evaluates(cfg, r) for r in exchanges.rounds_of(cfg, rnd)) else ()
    if not exchanges.evaluates(cfg, rnd):
        return ()
    if cfg.eval_test == "every" or rnd == cfg.num_rounds:
        return ("val", "test")
    if defences.flagless(cfg):
        since = (rnd - 1) // cfg.eval_every * cfg.eval_every  # the previous evaluation round (0: none)
        return ("val", "test") if any(defences.passive_changes(cfg, r) for r in range(since + 1, rnd + 1)) else ("val",)
    return ("val",)


def to_wire(arr: np.ndarray, cfg: Config) -> np.ndarray:
    """An embedding or gradient matrix as it travels (``wire_dtype``): float16 rounding happens here, in both
    engines alike; the codec then only changes the container."""
    if cfg.wire_dtype == "float32":
        return arr
    return np.asarray(arr, dtype=np.float16).astype(np.float32)


# ================================================================================================ setup payloads
@dataclass
class Probe:
    """Discovery, to every node: the config it must share and, to resume, the round of the checkpoint to load."""

    fingerprint: str
    version: str = __version__
    resume_round: int | None = None


@dataclass(kw_only=True)
class Discovered:
    """A node's answer to discovery: who it is and its sizes; fresh runs add its blinded IDs per split (PSI 1)."""

    role: str
    index: int
    fingerprint: str
    input_shape: list[int]
    embedding_dim: int
    rows: dict[str, int]
    points: dict[str, bytes] = field(default_factory=dict)  # empty when resuming
    resumed_round: int | None = None

    @property
    def name(self) -> str:
        return party_name(self.role, self.index)


@dataclass
class Intersection:
    """The active party's PSI result: classes, aligned counts per split, each passive's positions per split."""

    num_classes: int
    aligned: dict[str, int]
    positions: dict[int, dict[str, np.ndarray]]  # passive index -> split -> positions into its own sent order


# ================================================================================================ round payloads
@dataclass
class PassiveSetup:
    """PSI step 4, riding with a passive's first round: its positions in the shared order, and the classes."""

    positions: dict[str, np.ndarray]
    num_classes: int


@dataclass(kw_only=True)
class ToPassive:
    """A passive's one message of a round."""

    round: int
    splits: tuple[str, ...]  # evaluation splits to embed after training this round
    final: bool
    gradients: np.ndarray | None = None  # dLoss/dz of last round's embeddings (none in round 1)
    prototypes: np.ndarray | None = None  # second prototypes in this passive's space (third loss only)
    prototype_mask: np.ndarray | None = None
    pseudo_threshold: float | None = None  # method.research.pseudo_gate: the active party's threshold for this passive
    setup: PassiveSetup | None = None  # first round of a fresh run only
    test_previous: bool = False  # embed the test rows with last round's encoder first (eval_test=best)


@dataclass(kw_only=True)
class FromPassive:
    """A passive's reply: embeddings of its aligned training rows (and, on evaluation rounds, val/test rows)."""

    embeddings: np.ndarray
    eval_embeddings: dict[str, np.ndarray]
    metrics: dict[str, float]
    previous_test: np.ndarray | None = None  # test rows by last round's encoder, when asked


@dataclass(kw_only=True)
class ToActive:
    """The active party's one message of a round: every joint passive's reply, passive 1 first."""

    round: int
    splits: tuple[str, ...]
    final: bool
    embeddings: list[np.ndarray]
    eval_embeddings: list[dict[str, np.ndarray]]
    previous_test: list[np.ndarray] | None = None  # score last round's test rows first (``[]``: no passive)


@dataclass(kw_only=True)
class LocalRound:
    """The metrics of one round an exchange trained before its last (the last one's are the reply's own)."""

    round: int
    train: dict[str, float]
    privacy: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] | None = None
    test: dict[str, float] | None = None


@dataclass(kw_only=True)
class FromActive:
    """The active party's reply: the metrics of the exchange's last round (``earlier``: of its other rounds) and
    what the passives get next exchange (nothing after the last).

    ``gradients[k - 1]`` and ``prototypes[k - 1]`` belong to passive ``k``.
    """

    train: dict[str, float]
    privacy: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] | None = None
    test: dict[str, float] | None = None
    gradients: list[np.ndarray] = field(default_factory=list)
    prototypes: list[np.ndarray] = field(default_factory=list)
    prototype_mask: np.ndarray | None = None
    pseudo_thresholds: list[float] | None = None
    previous_test: dict[str, float] | None = None  # last round's test scores, when its test rows came this round
    earlier: list[LocalRound] = field(default_factory=list)  # the exchange's rounds before its last, in order


# ================================================================================================ prediction payloads
@dataclass
class PredictRequest:
    """A prediction query message from the server (:mod:`flwr_vproto.query`): where each party's new rows come
    from, which passives score jointly, and this step's payload — the active party's blinded IDs (to passives), each
    passive's PSI points (to the active party), a passive's positions in the shared order, or the passives'
    embeddings (to the active party)."""

    source: str
    _: KW_ONLY
    passives: list[int] = field(default_factory=list)
    hub: bytes | None = None
    points: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # passive -> (re-blinded hub, own blinded)
    positions: np.ndarray | None = None
    embeddings: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass(kw_only=True)
class PredictReply:
    """A party's answer to a prediction query message; only the fields of its step are set."""

    role: str | None = None  # start: who it is, its new rows, its saved model's method, whether it has a model
    index: int = 0
    rows: int | None = None
    method: str | None = None
    model: bool = True
    hub: bytes | None = None  # start, active: its blinded IDs
    reblinded: bytes | None = None  # PSI, passive: the hub's points re-blinded, and its own blinded
    own: bytes | None = None
    aligned: int | None = None  # PSI finish, active: users every party holds, each passive's positions
    positions: dict[int, np.ndarray] = field(default_factory=dict)
    embeddings: np.ndarray | None = None  # embed, passive
    metrics: dict[str, float] = field(default_factory=dict)  # score, active: counts and accuracy
    path: str | None = None  # score, active: where it wrote the predictions CSV, on its own node


# ================================================================================================ setup steps
def discover(cfg: Config, data: PartySplits, role: str, index: int, fingerprint: str
             ) -> tuple[Discovered, dict[str, bytes]]:
    """Who this party is, its sizes, and PSI step 1 (its own IDs blinded, every split); returns its PSI secrets too.

    The active party blinds in its row order, a passive in a private random order, so step 2 can run on all parties
    at once. Starting PSI here saves a message round trip, which costs seconds in a deployment.
    """
    info = Discovered(role=role, index=index, fingerprint=fingerprint, input_shape=[int(s) for s in data.input_shape],
                      embedding_dim=int(cfg.model.embedding_dim), rows={s: len(data.split(s)) for s in SPLITS})
    secrets: dict[str, bytes] = {}
    for split in SPLITS:
        ids = data.split(split).ids
        side = PSIHub(ids, order_seed=split_order_seed(cfg.seed, split)) if role == ACTIVE else PSIPeer(ids)
        info.points[split] = side.blinded_ids()
        secrets.update({f"{split}.{k}": v for k, v in side.export_state().items()})
    return info, secrets


def _split_state(secrets: dict[str, bytes], split: str) -> dict[str, bytes]:
    return {k[len(split) + 1:]: v for k, v in secrets.items() if k.startswith(split + ".")}


def _hub(cfg: Config, data: PartySplits, split: str, secrets: dict[str, bytes]) -> PSIHub:
    return PSIHub.from_state(data.split(split).ids, _split_state(secrets, split),
                             order_seed=split_order_seed(cfg.seed, split),
                             min_intersection=min_intersection(cfg.dataset.min_aligned, split))


def _peer(data: PartySplits, split: str, secrets: dict[str, bytes]) -> PSIPeer:
    return PSIPeer.from_state(data.split(split).ids, _split_state(secrets, split))


def psi_reblind(data: PartySplits, secrets: dict[str, bytes], hub_points: dict[str, bytes]) -> dict[str, bytes]:
    """Passive, PSI step 2: re-blind the active party's points of every split with this party's secret."""
    return {s: _peer(data, s, secrets).reblind(hub_points[s]) for s in SPLITS}


def psi_blind_peers(cfg: Config, data: PartySplits, secrets: dict[str, bytes],
                    own: dict[int, dict[str, bytes]]) -> dict[str, bytes]:
    """Active, PSI step 2 (while the passives re-blind): blind every passive's points; returns the updated secrets."""
    out = dict(secrets)
    for split in SPLITS:
        hub = _hub(cfg, data, split, secrets)
        hub.blind_peers({party_name(PASSIVE, k): points[split] for k, points in own.items()})
        out.update({f"{split}.{k}": v for k, v in hub.export_state().items()})
    return out


def psi_finish(cfg: Config, data: PartySplits, secrets: dict[str, bytes], reblinded: dict[int, dict[str, bytes]],
               num_classes: int, passive_dims: list[int], *, secret: bytes | None = None
               ) -> tuple[ActiveParty, Intersection]:
    """Active, PSI step 3: intersect per split, fix the shared order, and build the active party on its aligned rows.

    ``secret``: the active party's key of its defences' random draws (``None``: fresh from the OS). The shared
    order itself comes from ``seed``: it is a function of the intersection's IDs, which every passive knows, and
    of nothing the active party holds."""
    aligned: dict[str, np.ndarray] = {}
    positions: dict[int, dict[str, np.ndarray]] = {k: {} for k in reblinded}
    for split in SPLITS:
        hub = _hub(cfg, data, split, secrets)
        for k, points in reblinded.items():
            hub.add_peer(party_name(PASSIVE, k), points[split])
        rows, pos = hub.finish()
        aligned[split] = np.asarray(rows, dtype=np.int64)
        for k in reblinded:
            positions[k][split] = np.asarray(pos[party_name(PASSIVE, k)], dtype=np.int64)
    party = ActiveParty(data, cfg, num_classes, passive_dims, secret)
    party.set_alignment(aligned)
    return party, Intersection(num_classes=num_classes, aligned={s: int(len(r)) for s, r in aligned.items()},
                               positions=positions)


def passive_join(cfg: Config, data: PartySplits, index: int, secrets: dict[str, bytes], setup: PassiveSetup
                 ) -> PassiveParty:
    """Passive, PSI step 4: its own aligned rows from its positions in the shared order; builds its learner."""
    party = PassiveParty(data, cfg, index, setup.num_classes)
    party.set_alignment({s: _peer(data, s, secrets).rows_from_positions(setup.positions[s]) for s in SPLITS})
    return party


# ================================================================================================ round steps
def passive_step(party: PassiveParty, msg: ToPassive, *, audit_dir: str | None = None) -> FromPassive:
    """One round of a passive party: (last round's test rows, when asked,) apply last round's gradients and the third
    loss, then embed. Everything it sends is rounded to ``wire_dtype``.

    With ``audit.record`` the passive also writes what it received (the attacker's view, for
    :mod:`flwr_vproto.audit`) and, once, its own features of the shared users, to ``audit_dir`` (``audit.dir``
    unless a deployment's node-config says otherwise); they never leave the party.
    """
    cfg = party.cfg
    if cfg.audit.record:
        _record_received(party, msg, audit_dir or cfg.audit.dir)
    previous = to_wire(party.embed("test"), cfg) if msg.test_previous else None
    out = party.train_round(msg.round, msg.gradients, msg.prototypes, msg.prototype_mask, msg.splits,
                            msg.pseudo_threshold)
    if cfg.audit.record and cfg.method.shares_prototypes:  # what the prototypes made from them are attacked with
        audit.record_embeddings(audit_dir or cfg.audit.dir, party.index, msg.round, out.embeddings)  # type: ignore
    return FromPassive(embeddings=to_wire(out.embeddings, cfg),
                       eval_embeddings={s: to_wire(e, cfg) for s, e in out.eval_embeddings.items()},
                       metrics=out.metrics, previous_test=previous)


def active_step(party: ActiveParty, msg: ToActive, *, audit_dir: str | None = None) -> FromActive:
    """One exchange of the active party: each of its rounds trains on the passives' embeddings of this exchange and,
    on evaluation rounds, calibrates and scores (:func:`flwr_vproto.exchanges.rounds_of`); then decide what of the
    last round is released.

    Gradients leave only on the rounds of ``defence.release_*`` (:func:`flwr_vproto.defences.releases`) and through
    :meth:`ActiveParty.release_gradients` (the Gaussian channel, ``defence.*``); with ``audit.record`` what each passive
    receives is written to ``audit_dir`` (``audit.dir`` unless a deployment's node-config says otherwise).
    """
    cfg = party.cfg
    previous = (None if msg.previous_test is None  # scored before training
                else party.scoring.evaluate("test", msg.previous_test))
    *earlier, last = exchanges.rounds_of(cfg, msg.round)
    done = [_train_cached(party, msg, r) for r in earlier]
    res = party.train_round(last, msg.embeddings, release=not msg.final)
    reply = FromActive(train=res.metrics, privacy=res.privacy, previous_test=previous, earlier=done)
    if _round_splits(cfg, msg, last):
        reply.val, reply.test = _calibrate_and_score(party, msg.eval_embeddings, _test_rows(party, msg))
    if party.joint and defences.releases(cfg, msg.round):  # defence.release_*, never after the last round
        reply.gradients = [to_wire(g, cfg) for g in party.release_gradients(msg.round, list(res.gradients))]
    reply.privacy.update(party.gradient_privacy())
    if msg.final:  # the last round's gradients and prototypes would never be used: nothing leaves
        if cfg.audit.record and party.joint and msg.round == 1:  # one exchange: the record that nothing left
            _record(party, msg.round, reply, audit_dir or cfg.audit.dir)
        return reply
    if cfg.method.shares_prototypes and party.joint:  # else no passive uses them: they stay here
        reply.prototypes, reply.prototype_mask = list(res.prototypes), res.prototype_mask
    reply.pseudo_thresholds = party.scoring.pseudo_gates()
    if cfg.audit.record and party.joint:  # every round that releases anything, rows or not
        _record(party, msg.round, reply, audit_dir or cfg.audit.dir)
    return reply


def _train_cached(party: ActiveParty, msg: ToActive, rnd: int) -> LocalRound:
    """Round ``rnd`` of an exchange, before its last: train on the exchange's (cached) embeddings and, on an
    evaluation round, calibrate and score. Nothing of it leaves this party but its metrics (to the server)."""
    res = party.train_round(rnd, msg.embeddings, release=False)
    out = LocalRound(round=rnd, train=res.metrics, privacy={**res.privacy, **party.gradient_privacy()})
    if _round_splits(party.cfg, msg, rnd):
        out.val, out.test = _calibrate_and_score(party, msg.eval_embeddings, _test_rows(party, msg))
    return out


def _round_splits(cfg: Config, msg: ToActive, rnd: int) -> tuple[str, ...]:
    """Splits scored after round ``rnd`` of exchange ``msg.round``: the message's, on an evaluation round."""
    if not exchanges.blockwise(cfg):
        return msg.splits
    return msg.splits if exchanges.evaluates(cfg, rnd) else ()


def _test_rows(party: ActiveParty, msg: ToActive) -> list[np.ndarray] | None:
    """The passives' test embeddings to score this evaluation round, if any: those that came with it or, with the
    Gaussian gradient channel, the latest that came (kept by the active party; unchanged since, see
    :func:`eval_splits`)."""
    sent = [e["test"] for e in msg.eval_embeddings] if "test" in msg.splits else None
    if not defences.flagless(party.cfg):
        return sent
    if sent is not None:
        party.scoring.kept_test = sent
    return party.scoring.kept_test


def _record(party: ActiveParty, rnd: int, reply: FromActive, folder: str | None) -> None:
    """``audit.record``: what every passive receives from this round, with the true labels (scoring only)."""
    if folder is None:
        raise ValueError("audit.record=true needs audit.dir (or, in a deployment, the active party's node-config "
                         "audit-dir): the folder where the active party writes what each passive receives")
    labels = party.data.train.labels()[party.aligned["train"]]
    audit.record_round(folder, rnd, reply.gradients, labels, reply.prototypes or None)


def _record_received(party: PassiveParty, msg: ToPassive, folder: str | None) -> None:
    """``audit.record``, passive side: what this passive received in round ``msg.round`` and, in round 1, its own
    features of the shared training users (the attacker's prior), in the shared order."""
    if folder is None:
        raise ValueError("audit.record=true needs audit.dir (or, in a deployment, each party's node-config "
                         "audit-dir): the folder where the parties write what the passives receive")
    if msg.round == 1:
        audit.record_features(folder, party.index, party.data.train.x[party.aligned["train"]].reshape(
            len(party.aligned["train"]), -1))
    audit.record_received(folder, party.index, msg.round, {
        "gradients": msg.gradients, "prototypes": msg.prototypes, "prototype_mask": msg.prototype_mask,
        "pseudo_threshold": msg.pseudo_threshold, "test_previous": msg.test_previous, "splits": ",".join(msg.splits)})


def _calibrate_and_score(party: ActiveParty, eval_embeddings: list[dict[str, np.ndarray]],
                         test: list[np.ndarray] | None) -> tuple[dict[str, float], dict[str, float] | None]:
    """Fit what is fitted on validation rows (combine weight, gates, residual base), then score val (and test)."""
    scoring, val_embeddings = party.scoring, [e["val"] for e in eval_embeddings]
    calibration = scoring.calibrate(val_embeddings)
    val = {**scoring.evaluate("val", val_embeddings), **calibration}
    return val, scoring.evaluate("test", test) if test is not None else None


def to_active(rnd: int, cfg: Config, replies: list[FromPassive], *, test_previous: bool = False) -> ToActive:
    """The active party's message of round ``rnd`` from the joint passives' replies (passive 1 first)."""
    previous = [r.previous_test for r in replies] if test_previous else None
    return ToActive(round=rnd, splits=eval_splits(cfg, rnd), final=rnd == exchanges.count(cfg),
                    embeddings=[r.embeddings for r in replies], eval_embeddings=[r.eval_embeddings for r in replies],
                    previous_test=previous)  # type: ignore[arg-type]


def record(cfg: Config, rnd: int, replies: list[FromPassive], reply: FromActive, seconds: float, *,
           extra: dict[str, float] | None = None) -> dict[str, float]:
    """Exchange ``rnd``'s flat history record (same keys in both engines; the Flower engine adds its traffic): the
    passives' metrics and its last round's. When exchanges train several rounds
    (:func:`flwr_vproto.exchanges.blockwise`), ``exchange/first_round`` and ``exchange/last_round`` say which."""
    span = {}
    if exchanges.blockwise(cfg):
        rounds = exchanges.rounds_of(cfg, rnd)
        span = {"exchange/first_round": float(rounds[0]), "exchange/last_round": float(rounds[-1])}
    return round_record(rnd, reply.train, [r.metrics for r in replies], reply.val, reply.test, seconds,
                        extra={**{f"privacy/{k}": v for k, v in reply.privacy.items()}, **span, **(extra or {})})


def local_records(cfg: Config, rnd: int, reply: FromActive) -> list[dict[str, float]]:
    """``results.json``'s ``local_rounds`` entries of exchange ``rnd`` (none with one round per exchange, whose
    records are the rounds): every round it trained, with the active party's metrics and scores."""
    if not exchanges.blockwise(cfg):
        return []
    last = LocalRound(round=exchanges.rounds_of(cfg, rnd)[-1], train=reply.train, privacy=reply.privacy,
                      val=reply.val, test=reply.test)
    return [round_record(r.round, r.train, [], r.val, r.test, None,
                         extra={**{f"privacy/{k}": v for k, v in r.privacy.items()}, "exchange": float(rnd)})
            for r in [*reply.earlier, last]]


def add_previous_test(history: list[dict[str, float]], reply: FromActive) -> None:
    """Last round's test scores, which arrived with this round's reply, into last round's record."""
    if reply.previous_test is not None:
        history[-1].update({f"test/{k}": float(v) for k, v in reply.previous_test.items()})


def alignment_record(aligned: dict[str, int], rows: dict[str, dict[str, int]]) -> dict[str, Any]:
    """What PSI found, for ``results.json`` (both engines): ``aligned`` = users every party holds per split (the
    training ones are the joint model's rows), ``rows`` = each party's own users per split."""
    return {"aligned": {s: int(aligned[s]) for s in SPLITS},
            "rows": {name: {s: int(n[s]) for s in SPLITS} for name, n in rows.items()}}


# ================================================================================================ between rounds
def selection_accuracy(val: dict[str, float]) -> float:
    """The validation accuracy that selects the best round: on the noised labels under ``defence.label_epsilon``
    (the selection decides which test rows travel to the passives), else on the true ones."""
    return float(val.get("selection_accuracy", val.get("accuracy", -math.inf)))


def selection_loss(val: dict[str, float]) -> float:
    """The validation loss that breaks ties of :func:`selection_accuracy` (same labels); ``inf`` if not scored."""
    return float(val.get("selection_loss", val.get("loss", math.inf)))



@dataclass
class InTransit:
    """What the active party's reply hands to the passives' next round, held by whoever relays it.

    The in-process engine hands it from one step to the next and checkpoints it, so a resumed run sends exactly what
    the interrupted one would have. Over Flower the active party's ClientApp builds it and seals each passive's part
    (design §4 "Sealed"): the server relays and checkpoints only ciphertext it cannot open.
    """

    num_passive: int
    _: KW_ONLY
    gradients: dict[int, np.ndarray] = field(default_factory=dict)
    prototypes: dict[int, np.ndarray] = field(default_factory=dict)
    prototype_mask: np.ndarray | None = None
    pseudo_thresholds: dict[int, float] = field(default_factory=dict)
    best_val: float = -math.inf  # eval_test=best: the best validation accuracy so far
    best_val_loss: float = math.inf  # ... and its validation loss (a tie in accuracy goes to the lower loss)
    test_previous: bool = False  # the next round brings the test rows of this one (a new best without them)

    def receive(self, reply: FromActive) -> None:
        """Keep what ``reply`` releases for the next round (a final round releases nothing), and whether the next
        round must bring this round's test rows (a new best, as :func:`flwr_vproto.results.select_final` ranks
        rounds: higher validation accuracy, or the same with a lower validation loss; and they did not come)."""
        accuracy, loss = selection_accuracy(reply.val or {}), selection_loss(reply.val or {})
        better = accuracy > self.best_val or (accuracy == self.best_val and loss < self.best_val_loss)
        self.test_previous = better and reply.test is None
        if better:
            self.best_val, self.best_val_loss = accuracy, loss
        self.gradients = dict(enumerate(reply.gradients, start=1))  # none this round (schedule, final): none next
        if reply.prototypes:
            self.prototypes = dict(enumerate(reply.prototypes, start=1))
            self.prototype_mask = reply.prototype_mask
        if reply.pseudo_thresholds is not None:
            self.pseudo_thresholds = dict(enumerate(reply.pseudo_thresholds, start=1))

    def to_passive(self, k: int, rnd: int, cfg: Config, *, setup: PassiveSetup | None = None) -> ToPassive:
        """Passive ``k``'s message of round ``rnd``."""
        proto = self.prototypes.get(k)
        return ToPassive(round=rnd, splits=eval_splits(cfg, rnd), final=rnd == exchanges.count(cfg),
                         gradients=self.gradients.get(k), prototypes=proto,
                         prototype_mask=self.prototype_mask if proto is not None else None,
                         pseudo_threshold=self.pseudo_thresholds.get(k), setup=setup,
                         test_previous=self.test_previous)

    def state(self) -> dict[str, Any]:
        """For the server's checkpoint (:func:`flwr_vproto.checkpoint.server_checkpoint`)."""
        names = {k: party_name(PASSIVE, k) for k in range(1, self.num_passive + 1)}
        gates = [g for k in names if (g := self.pseudo_thresholds.get(k)) is not None]
        return {"gradients": {names[k]: g for k, g in self.gradients.items()},
                "prototypes": {names[k]: p for k, p in self.prototypes.items()},
                "prototype-mask": self.prototype_mask,
                **({"pseudo-gates": [float(g) for g in gates]} if gates and len(gates) == len(names) else {}),
                "best-val": self.best_val, "best-val-loss": self.best_val_loss, "test-previous": self.test_previous}

    @classmethod
    def from_state(cls, num_passive: int, saved: dict[str, Any]) -> InTransit:
        """Inverse of :meth:`state` (arrays already numpy)."""
        index = {party_name(PASSIVE, k): k for k in range(1, num_passive + 1)}
        gates = saved.get("pseudo-gates")
        return cls(num_passive, gradients={index[n]: g for n, g in saved["gradients"].items()},
                   prototypes={index[n]: p for n, p in saved["prototypes"].items()},
                   prototype_mask=saved["prototype-mask"],
                   pseudo_thresholds={} if gates is None else dict(enumerate((float(g) for g in gates), start=1)),
                   best_val=float(saved.get("best-val", -math.inf)),
                   best_val_loss=float(saved.get("best-val-loss", math.inf)),
                   test_previous=bool(saved.get("test-previous", False)))
