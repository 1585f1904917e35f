"""All parties trained in one process: the reference the Flower engine must match, the test bed and the baselines.

``run_inprocess`` is a loop over the steps of :mod:`flwr_vproto.protocol` — the same steps, in the same order, that
the Flower ClientApps run on their messages — handing each payload straight to the next step. It has no protocol
rule of its own. For ``centralized`` (the upper bound, every party's raw data in one place, so simulation only) it
calls :func:`flwr_vproto.centralized.run_centralized`, for the LightGBM baselines (``gbdt_local``, ``gbdt_aligned``,
``gbdt_centralized``, simulation only too) :func:`flwr_vproto.trees.run_trees`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flwr_vproto import checkpoint as ck
from flwr_vproto import exchanges, optional
from flwr_vproto import protocol as proto
from flwr_vproto.centralized import run_centralized
from flwr_vproto.config import Config
from flwr_vproto.data import load_vertical_dataset
from flwr_vproto.data.types import SPLITS, VerticalDataset
from flwr_vproto.defences import defence_summary
from flwr_vproto.parties import ActiveParty, PassiveParty
from flwr_vproto.privacy import gradient_noise_multiplier, noise_multiplier, privacy_summary
from flwr_vproto.protocol import ACTIVE, PASSIVE, InTransit, PassiveSetup
from flwr_vproto.results import build_results
from flwr_vproto.trees import TREE_METHODS, run_trees

RoundCallback = Callable[[dict[str, float]], None]


def run_inprocess(
    cfg: Config, dataset: VerticalDataset | None = None, on_round: RoundCallback | None = None,
    active_secret: bytes | None = None,
) -> dict[str, Any]:
    """Train ``cfg.method.name`` on ``dataset`` (default: the configured one); return ``results.json`` content.

    ``active_secret``: the active party's 32-byte key of its defences' random draws (read from
    ``runner.active_secret_file``); ``None`` draws a fresh one, so a defended run is reproducible only when it is
    given.
    """
    optional.check_accounting(cfg)  # a missing Opacus (the dp extra) fails here, in one line
    noise_multiplier(cfg)  # an unreachable privacy.target_epsilon fails here, before any data is loaded
    gradient_noise_multiplier(cfg)  # ... and an unreachable defence.target_epsilon
    ds = dataset if dataset is not None else load_vertical_dataset(cfg)
    if cfg.method.name == "centralized":
        return build_results(cfg, run_centralized(cfg, ds, on_round))
    if cfg.method.name in TREE_METHODS:
        return run_trees(cfg, ds, on_round)
    start = ck.latest_server_round(cfg) if cfg.resume else 0
    active, passives = _set_up(cfg, ds, active_secret) if start == 0 else _parties(cfg, ds)
    transit = InTransit(len(ds.passives))
    history: list[dict[str, float]] = []
    local: list[dict[str, float]] = []
    if start:  # every party from its own file, the payloads in transit and the histories from the server's
        transit, history, local = _resume(cfg, start, active, passives)
    for rnd in range(start + 1, exchanges.count(cfg) + 1):  # one exchange: one message per party
        t0, previous = time.perf_counter(), transit.test_previous
        replies = [proto.passive_step(p, transit.to_passive(p.index, rnd, cfg)) for p in passives]
        reply = proto.active_step(active, proto.to_active(rnd, cfg, replies, test_previous=previous))
        transit.receive(reply)
        proto.add_previous_test(history, reply)
        history.append(proto.record(cfg, rnd, replies, reply, time.perf_counter() - t0))
        local.extend(proto.local_records(cfg, rnd, reply))
        if ck.due(cfg, rnd):
            _save_checkpoint(cfg, rnd, active, passives, transit, history, local)
        if on_round:
            on_round(history[-1])
    found = proto.alignment_record({s: len(r) for s, r in active.aligned.items()},
                                   {p.name: {s: len(p.split(s)) for s in SPLITS} for p in ds.parties})
    results = build_results(cfg, history, extra={**privacy_summary(cfg, history), **defence_summary(cfg, history),
                                                 "alignment": found}, local_rounds=local)
    results["state"] = {"active": active, "passives": passives}  # callers may save models; not JSON
    return results


def _set_up(cfg: Config, ds: VerticalDataset, secret: bytes | None) -> tuple[ActiveParty, list[PassiveParty]]:
    """Discovery and PSI through the protocol's setup steps, every party here; the joint passives join."""
    found = [proto.discover(cfg, data, ACTIVE if k == 0 else PASSIVE, k, "") for k, data in enumerate(ds.parties)]
    points = [info.points for info, _ in found]
    secrets = [s for _, s in found]
    ks = range(1, len(ds.parties))
    reblinded = {k: proto.psi_reblind(ds.parties[k], secrets[k], points[0]) for k in ks}
    hub = proto.psi_blind_peers(cfg, ds.active, secrets[0], {k: points[k] for k in ks})
    active, result = proto.psi_finish(cfg, ds.active, hub, reblinded, ds.num_classes, _dims(cfg, ds), secret=secret)
    passives = [proto.passive_join(cfg, ds.parties[k], k, secrets[k],
                                   PassiveSetup(positions=result.positions[k], num_classes=ds.num_classes))
                for k in ks] if proto.is_joint(cfg) else []
    return active, passives


def _dims(cfg: Config, ds: VerticalDataset) -> list[int]:
    return [cfg.model.embedding_dim] * len(ds.passives)


def _parties(cfg: Config, ds: VerticalDataset) -> tuple[ActiveParty, list[PassiveParty]]:
    """Fresh learners, to be restored from checkpoints."""
    active = ActiveParty(ds.active, cfg, ds.num_classes, _dims(cfg, ds))
    passives = [PassiveParty(data, cfg, k, ds.num_classes) for k, data in enumerate(ds.passives, start=1)]
    return active, passives if proto.is_joint(cfg) else []


def _resume(cfg: Config, rnd: int, active: ActiveParty, passives: list[PassiveParty]
            ) -> tuple[InTransit, list[dict[str, float]], list[dict[str, float]]]:
    for p in [active, *passives]:
        p.load_state_dict(ck.load_party_state(cfg, p.data.name, rnd)["party"])
    server = ck.load_server_state(cfg, rnd)
    return (InTransit.from_state(cfg.dataset.num_passive, ck.transit_of(server)), list(server["history"]),
            list(server.get(ck.LOCAL_HISTORY, [])))


def _save_checkpoint(cfg: Config, rnd: int, active: ActiveParty, passives: list[PassiveParty], transit: InTransit,
                     history: list[dict[str, float]], local: list[dict[str, float]]) -> None:
    """Parties first, the server last: its file marks the checkpoint complete (as in a deployment)."""
    k = cfg.dataset.num_passive
    facts = {"num-classes": active.num_classes, "passives": list(range(1, k + 1)),
             "passive-dims": [cfg.model.embedding_dim] * k}
    for p in [*passives, active]:
        ck.save_party(ck.party_dir(cfg, p.data.name), rnd, ck.party_checkpoint(cfg, p, rnd, facts))
    ck.save(ck.server_dir(cfg), rnd, ck.server_checkpoint(cfg, rnd, history, transit.state(),
                                                          **{ck.LOCAL_HISTORY: local}))
