"""The strategy's hooks: a subclass overrides or wraps them as Flower users do FedAvg's, and the engines still agree.

Each test drives the real strategy and ClientApp through :class:`~conftest.InlineGrid` and compares with
:func:`flwr_vproto.inprocess.run_inprocess`, as ``test_flower_sim.py`` does.
"""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import InlineGrid, assert_same_history, sim_nodes, small_cfg
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp.strategy import Strategy

from flwr_vproto import messages
from flwr_vproto.client_app import make_client_app
from flwr_vproto.inprocess import run_inprocess
from flwr_vproto.protocol import ACTIVE, PASSIVE, FromPassive, ToPassive
from flwr_vproto.strategy import VerticalProtoStrategy


def _run(strategy: VerticalProtoStrategy) -> tuple[VerticalProtoStrategy, object, InlineGrid]:
    results = tempfile.mkdtemp(prefix="vproto-active-")  # the active party's own record, read back as in simulation
    strategy.active_results = Path(results)
    grid = InlineGrid(make_client_app(strategy.cfg, results_dir=results), sim_nodes(strategy.cfg))
    return strategy, strategy.start(grid=grid), grid


class EmbeddingNorms(VerticalProtoStrategy):
    """Adds a metric to each exchange's record: the size of every passive's sealed reply (what the server relays:
    it cannot read the embeddings inside, only measure them)."""

    def aggregate_passives(self, server_round, replies):
        passives = super().aggregate_passives(server_round, replies)
        self.norms = [float(len(blob)) for _, blob in sorted(passives.items())]
        return passives

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        if metrics is not None:  # after the active phase: the exchange's record
            for k, norm in enumerate(self.norms, start=1):
                metrics[f"server/passive{k}_sealed_bytes"] = norm
        return arrays, metrics


@pytest.mark.parametrize("extra", [{}, {"exchange": {"count": 2}}], ids=["per-round", "two-exchanges"])
def test_a_metric_added_by_a_hook_reaches_every_record_and_the_numbers_do_not_move(extra):
    cfg = small_cfg(rounds=4, num_passive=2, **extra)
    seen: list[dict] = []
    strategy, result, _ = _run(EmbeddingNorms(cfg, timeout=30.0, wait_for_nodes=1.0, on_round=seen.append))
    reference = run_inprocess(cfg)
    assert_same_history(strategy.history, reference["rounds"])  # every metric the in-process engine reports
    assert strategy.results["final"] == reference["final"]
    assert len(strategy.history) == len(reference["rounds"]) == (2 if extra else 4)  # one record per exchange
    for rec in [*strategy.history, *strategy.results["rounds"], *seen]:
        assert rec["server/passive1_sealed_bytes"] > 0 and rec["server/passive2_sealed_bytes"] > 0
    if extra:  # the exchange's rounds are kept as they were
        local = [{k: v for k, v in r.items() if k != "seconds"} for r in strategy.results["local_rounds"]]
        assert local == [{k: v for k, v in r.items() if k != "seconds"} for r in reference["local_rounds"]]
    assert sorted(result.train_metrics_clientapp) == [int(r["round"]) for r in strategy.history]


class Inspecting(VerticalProtoStrategy):
    """Wraps Flower's configure_train / aggregate_train (as one wraps FedAvg's) to log each phase's messages."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.phases: list[tuple[int, str, list[int]]] = []
        self.aggregated: list[tuple[int, bool]] = []

    def configure_train(self, server_round, arrays, config, grid):
        phase = self.current.phase if self.current and self.current.round == server_round else PASSIVE
        out = list(super().configure_train(server_round, arrays, config, grid))
        self.phases.append((server_round, phase, [m.metadata.dst_node_id for m in out]))
        return out

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        assert arrays is None  # no global model
        self.aggregated.append((server_round, metrics is not None))
        return arrays, metrics


def test_each_exchange_is_a_passive_phase_then_an_active_phase_of_flower_hooks():
    cfg = small_cfg(rounds=3, num_passive=2)
    strategy, _, grid = _run(Inspecting(cfg, timeout=30.0, wait_for_nodes=1.0))
    assert_same_history(strategy.history, run_inprocess(cfg)["rounds"])
    active, passives = strategy.active.node_id, [p.node_id for p in strategy.parties[1:]]
    assert strategy.phases == [(r, phase, nodes) for r in (1, 2, 3)
                               for phase, nodes in ((PASSIVE, passives), (ACTIVE, [active]))]
    assert strategy.aggregated == [(r, done) for r in (1, 2, 3) for done in (False, True)]
    train = [m for m in grid.sent if m.metadata.message_type == messages.TRAIN]
    assert [m.metadata.group_id for m in train] == [str(r) for r in (1, 2, 3) for _ in range(3)]


def test_local_has_no_passive_phase_messages():
    cfg = small_cfg("local", rounds=2)
    strategy, _, _ = _run(Inspecting(cfg, timeout=30.0, wait_for_nodes=1.0))
    assert_same_history(strategy.history, run_inprocess(cfg)["rounds"])
    assert [(r, p, len(n)) for r, p, n in strategy.phases] == [(1, PASSIVE, 0), (1, ACTIVE, 1), (2, PASSIVE, 0),
                                                               (2, ACTIVE, 1)]


class Tagged(VerticalProtoStrategy):
    """Changes what is sent: each passive's message carries one more config entry (the ClientApp ignores it), as a
    wrapper adding settings to FedAvg's messages would; the set-up hooks are wrapped to count their messages."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.setup_messages: dict[str, int] = {}

    def configure_passives(self, server_round):
        out = super().configure_passives(server_round)
        for m in out:
            m.content[messages.CONFIG]["note"] = f"exchange {server_round}"
        return out

    def configure_discovery(self, nodes, resume_round):
        return self._count("discovery", super().configure_discovery(nodes, resume_round))

    def configure_psi(self, points):
        return self._count("psi", super().configure_psi(points))

    def configure_intersection(self, reblinded):
        return self._count("intersection", super().configure_intersection(reblinded))

    def _count(self, step, out):
        self.setup_messages[step] = len(out)
        return out


def test_set_up_hooks_and_a_changed_payload_keep_the_numbers():
    cfg = small_cfg(rounds=3, num_passive=2)
    strategy, _, grid = _run(Tagged(cfg, timeout=30.0, wait_for_nodes=1.0))
    assert_same_history(strategy.history, run_inprocess(cfg)["rounds"])
    assert strategy.setup_messages == {"discovery": 3, "psi": 3, "intersection": 1}
    notes = [m.content[messages.CONFIG].get("note") for m in grid.sent if m.metadata.message_type == messages.TRAIN
             and m.metadata.dst_node_id != strategy.active.node_id]
    assert notes == [f"exchange {r}" for r in (1, 2, 3) for _ in range(2)]


def test_the_typed_payloads_of_the_hooks_are_keyword_only():
    with pytest.raises(TypeError):
        ToPassive(1, (), False)  # type: ignore[misc]
    with pytest.raises(TypeError):
        FromPassive(np.zeros((1, 1)), {}, {})  # type: ignore[misc]
    msg = ToPassive(round=1, splits=("val",), final=False)
    assert messages.decode_to_passive(messages.encode_to_passive(msg)) == msg


def test_flowers_abstract_hooks_are_implemented_and_start_keeps_flowers_signature():
    cfg = small_cfg(rounds=2)
    strategy, result, _ = _run(VerticalProtoStrategy(cfg, timeout=30.0, wait_for_nodes=1.0))
    assert not getattr(VerticalProtoStrategy, "__abstractmethods__", set())
    assert list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), None)) == []  # rides with training
    evaluated = [int(r["round"]) for r in strategy.history if "val/accuracy" in r]
    assert evaluated and sorted(result.evaluate_metrics_clientapp) == evaluated
    for rnd in (1, 2):
        got = strategy.aggregate_evaluate(rnd, [])
        assert (got is not None) == (rnd in evaluated)
        if got is not None:
            assert isinstance(got, MetricRecord) and got["val/accuracy"] == strategy.history[rnd - 1]["val/accuracy"]
    with pytest.raises(ValueError, match="no global model"):
        strategy.configure_train(1, ArrayRecord(), ConfigRecord({"lr": 0.1}), None)
    # Flower's parameters, in Flower's order; only defaults differ (a type-compatible override)
    ours, flowers = inspect.signature(VerticalProtoStrategy.start), inspect.signature(Strategy.start)
    assert list(ours.parameters) == list(flowers.parameters)
