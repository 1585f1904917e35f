"""All parties trained in one process: the reference the Flower engine must match, the test bed and the baselines.

``run_inprocess`` drives :class:`~flwr_vproto.parties.ActiveParty` and :class:`~flwr_vproto.parties.PassiveParty`
exactly as the Flower strategy does (same order of calls, same pipelining), and adds the ``centralized`` upper bound,
which needs every party's raw data in one place and so exists only here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from flwr_vproto import checkpoint as ck
from flwr_vproto.alignment import align_dataset
from flwr_vproto.centralized import run_centralized
from flwr_vproto.config import Config
from flwr_vproto.data import load_vertical_dataset
from flwr_vproto.data.types import VerticalDataset
from flwr_vproto.parties import ActiveParty, PassiveParty
from flwr_vproto.privacy import noise_multiplier, privacy_summary
from flwr_vproto.results import build_results, round_record

RoundCallback = Callable[[dict[str, float]], None]


def eval_splits(cfg: Config, rnd: int) -> tuple[str, ...]:
    """Splits scored after round ``rnd``: every ``eval_every`` rounds and always after the last round."""
    return ("val", "test") if rnd % cfg.eval_every == 0 or rnd == cfg.num_rounds else ()


def run_inprocess(
    cfg: Config, dataset: VerticalDataset | None = None, on_round: RoundCallback | None = None
) -> dict[str, Any]:
    """Train ``cfg.method.name`` on ``dataset`` (default: the configured one); return ``results.json`` content."""
    noise_multiplier(cfg)  # an unreachable privacy.target_epsilon fails here, before any data is loaded
    ds = dataset if dataset is not None else load_vertical_dataset(cfg)
    if cfg.method.name == "centralized":
        history = run_centralized(cfg, ds, on_round)
        return build_results(cfg, history)
    start = ck.latest_server_round(cfg) if cfg.resume else 0
    alignment = align_dataset(ds, cfg.seed, cfg.dataset.min_aligned) if start == 0 else None
    active = ActiveParty(ds.active, cfg, ds.num_classes, [cfg.model.embedding_dim] * len(ds.passives))
    passives: list[PassiveParty] = []
    if active.joint:
        passives = [PassiveParty(data, cfg, k, ds.num_classes) for k, data in enumerate(ds.passives, start=1)]
    grads: list[np.ndarray | None] = [None] * len(passives)
    protos: list[np.ndarray | None] = [None] * len(passives)
    mask: np.ndarray | None = None
    gates: list[float] | None = None  # method.pseudo_gate: the thresholds the active party sends each passive
    history: list[dict[str, float]] = []
    if alignment is not None:
        for k, p in enumerate([active, *passives]):
            p.set_alignment(alignment[k])
    else:  # resume: every party from its own file, the relayed payloads and the history from the server's
        for p in [active, *passives]:
            p.load_state_dict(_load_party_checkpoint(cfg, p.data.name, start))
        server = ck.load(ck.server_dir(cfg), start, "server")
        ck.check_same_run(server["config"], cfg, "server", ck.server_dir(cfg))
        history = list(server["history"])
        grads = [ck.array(server["gradients"][f"passive{k}"]) if f"passive{k}" in server["gradients"] else None
                 for k in range(1, len(passives) + 1)]
        protos = [ck.array(server["prototypes"][f"passive{k}"]) if f"passive{k}" in server["prototypes"] else None
                  for k in range(1, len(passives) + 1)]
        mask = None if server["prototype-mask"] is None else ck.array(server["prototype-mask"])
        gates = server.get("pseudo-gates")
    facts = {"num-classes": ds.num_classes, "passives": list(range(1, len(ds.passives) + 1)),
             "passive-dims": [cfg.model.embedding_dim] * len(ds.passives)}
    for rnd in range(start + 1, cfg.num_rounds + 1):
        t0 = time.perf_counter()
        splits = eval_splits(cfg, rnd)
        outs = [p.train_round(rnd, grads[k], protos[k], mask, splits, None if gates is None else gates[k])
                for k, p in enumerate(passives)]
        res = active.train_round(rnd, [o.embeddings for o in outs], release=rnd < cfg.num_rounds)
        grads = list(res.gradients)
        if cfg.method.shares_prototypes:  # as in a deployment: prototypes reach the passives only if they use them
            protos, mask = list(res.prototypes), res.prototype_mask
        val = test = None
        if splits:  # calibrate on the validation rows, then score (design §3)
            val_embs = [o.eval_embeddings["val"] for o in outs]
            cal = active.calibrate(val_embs)
            val = {**active.evaluate("val", val_embs), **cal}
            test = active.evaluate("test", [o.eval_embeddings["test"] for o in outs])
        gates = active.pseudo_gates()
        rec = round_record(rnd, res.metrics, [o.metrics for o in outs], val, test, time.perf_counter() - t0,
                           extra={f"privacy/{k}": v for k, v in res.privacy.items()})
        history.append(rec)
        if ck.due(cfg, rnd):  # parties first, the server last: its file marks the checkpoint complete
            for p in [*passives, active]:
                ck.save(ck.party_dir(cfg, p.data.name), rnd, party_checkpoint(cfg, p, rnd, facts))
            ck.save(ck.server_dir(cfg), rnd, server_checkpoint(
                cfg, rnd, history, {f"passive{k}": g for k, g in enumerate(grads, start=1)},
                {f"passive{k}": q for k, q in enumerate(protos, start=1)}, mask,
                **({"pseudo-gates": gates} if gates is not None else {})))
        if on_round:
            on_round(rec)
    results = build_results(cfg, history, extra=privacy_summary(cfg, history))
    results["state"] = {"active": active, "passives": passives}  # callers may save models; not JSON
    return results


def party_checkpoint(cfg: Config, party: ActiveParty | PassiveParty, rnd: int, facts: dict[str, Any]) -> dict:
    """A party's checkpoint (same format for both engines): its state, what it knows of the run, the config."""
    role = "active" if isinstance(party, ActiveParty) else "passive"
    return {"round": rnd, "party": party.state_dict(), "config": ck.resume_fingerprint(cfg),
            "facts": {"role": role, "party-index": party.index, **facts}}


def server_checkpoint(cfg: Config, rnd: int, history: list[dict[str, float]], gradients: dict[str, np.ndarray],
                      prototypes: dict[str, np.ndarray], mask: np.ndarray | None, **extra: Any) -> dict:
    """The server's checkpoint (same format for both engines): history and the payloads the next round relays."""
    return {"round": rnd, "history": history, "config": ck.resume_fingerprint(cfg),
            "gradients": {k: ck.tensor(v) for k, v in gradients.items() if v is not None},
            "prototypes": {k: ck.tensor(v) for k, v in prototypes.items() if v is not None},
            "prototype-mask": None if mask is None else ck.tensor(mask), **extra}


def _load_party_checkpoint(cfg: Config, name: str, rnd: int, override: str | None = None) -> dict[str, Any]:
    folder = ck.party_dir(cfg, name, override)
    saved = ck.load(folder, rnd, name)
    ck.check_same_run(saved["config"], cfg, name, folder)
    return saved["party"]
