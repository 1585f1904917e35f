"""The strategy's hooks: a subclass overrides or wraps each of them as Flower users do FedAvg's, and the engines still
agree; Flower's own train/evaluate hooks and its strategy wrappers are refused in one line.

Each run drives the real strategy and ClientApp through :class:`~conftest.InlineGrid` and compares with
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
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from flwr_vproto import messages
from flwr_vproto.client_app import make_client_app
from flwr_vproto.inprocess import run_inprocess
from flwr_vproto.protocol import FromPassive, ToPassive
from flwr_vproto.strategy import Exchange, VerticalProtoStrategy

SETUP = ("discovery", "psi", "intersection")
EXCHANGE_HOOKS = ("configure_passives", "aggregate_passives", "configure_active", "aggregate_active",
                  "exchange_record")


def _run(strategy: VerticalProtoStrategy) -> tuple[VerticalProtoStrategy, object, InlineGrid]:
    results = tempfile.mkdtemp(prefix="vproto-active-")  # the active party's own record, read back as in simulation
    strategy.active_results = Path(results)
    grid = InlineGrid(make_client_app(strategy.cfg, results_dir=results), sim_nodes(strategy.cfg))
    return strategy, strategy.start(grid=grid), grid


class SealedSizes(VerticalProtoStrategy):
    """Adds a metric to each exchange's record: the size of every passive's sealed reply (what the server relays:
    it cannot read the embeddings inside, only measure them)."""

    def aggregate_passives(self, server_round, replies):
        passives = super().aggregate_passives(server_round, replies)
        self.sizes = [float(len(blob)) for _, blob in sorted(passives.items())]
        return passives

    def exchange_record(self, server_round, exchange):
        record = super().exchange_record(server_round, exchange)
        record.update({f"server/passive{k}_sealed_bytes": n for k, n in enumerate(self.sizes, start=1)})
        return record


@pytest.mark.parametrize("extra", [{}, {"exchange": {"count": 2}}], ids=["per-round", "two-exchanges"])
def test_a_metric_added_by_a_hook_reaches_every_record_and_the_numbers_do_not_move(extra):
    cfg = small_cfg(rounds=4, num_passive=2, **extra)
    seen: list[dict] = []
    strategy, result, _ = _run(SealedSizes(cfg, timeout=30.0, wait_for_nodes=1.0, on_round=seen.append))
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


class EveryHook(VerticalProtoStrategy):
    """Overrides every hook, calling ``super()``: logs each call in order with whom its messages go to or its
    replies came from; tags what the active party is sent (a config entry the ClientApp ignores); adds a server-side
    metric to the active party's decoded reply and to the record."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple] = []

    def _sent(self, hook, out, server_round=None):
        self.calls.append((server_round, hook, sorted(m.metadata.dst_node_id for m in out)))
        return out

    def _got(self, hook, replies, server_round=None):
        self.calls.append((server_round, hook, sorted(replies)))

    def configure_discovery(self, nodes, resume_round):
        return self._sent("configure_discovery", super().configure_discovery(nodes, resume_round))

    def aggregate_discovery(self, nodes, replies, resume_round):
        self._got("aggregate_discovery", replies)
        points = super().aggregate_discovery(nodes, replies, resume_round)
        assert [p.name for p in self.parties] == ["active", "passive1", "passive2"]  # set by super()
        return points

    def configure_psi(self, points):
        return self._sent("configure_psi", super().configure_psi(points))

    def aggregate_psi(self, replies):
        self._got("aggregate_psi", replies)
        return super().aggregate_psi(replies)

    def configure_intersection(self, reblinded):
        return self._sent("configure_intersection", super().configure_intersection(reblinded))

    def aggregate_intersection(self, replies):
        self._got("aggregate_intersection", replies)
        setups = super().aggregate_intersection(replies)
        assert sorted(setups) == [1, 2] and self.aligned()["train"] > 0
        return setups

    def configure_passives(self, server_round):
        assert isinstance(self.current, Exchange) and self.current.round == server_round
        return self._sent("configure_passives", super().configure_passives(server_round), server_round)

    def aggregate_passives(self, server_round, replies):
        self._got("aggregate_passives", replies, server_round)
        return super().aggregate_passives(server_round, replies)

    def configure_active(self, server_round, passives):
        assert passives is self.current.passives and sorted(passives) == [1, 2]
        out = super().configure_active(server_round, passives)
        for m in out:
            m.content[messages.CONFIG]["note"] = f"exchange {server_round}"
        return self._sent("configure_active", out, server_round)

    def aggregate_active(self, server_round, replies):
        self._got("aggregate_active", replies, server_round)
        reply = super().aggregate_active(server_round, replies)
        reply.train["server_seen"] = float(server_round)  # becomes the record's active/server_seen
        return reply

    def exchange_record(self, server_round, exchange):
        assert exchange is self.current and exchange.active is not None and len(exchange.passive_metrics) == 2
        self.calls.append((server_round, "exchange_record", []))
        return super().exchange_record(server_round, exchange)


def test_every_hook_runs_in_order_once_per_phase_and_the_numbers_do_not_move():
    cfg = small_cfg(rounds=3, num_passive=2)
    strategy, _, grid = _run(EveryHook(cfg, timeout=30.0, wait_for_nodes=1.0))
    assert_same_history(strategy.history, run_inprocess(cfg)["rounds"])
    everyone = sorted(p.node_id for p in strategy.parties)
    active, passives = [strategy.active.node_id], sorted(p.node_id for p in strategy.parties[1:])
    names = ["active", "passive1", "passive2"]
    nodes = [f"node {n}" for n in everyone]  # replies by node until discovery has said who is who
    assert strategy.calls[:6] == [(None, "configure_discovery", everyone), (None, "aggregate_discovery", nodes),
                                  (None, "configure_psi", everyone), (None, "aggregate_psi", names),
                                  (None, "configure_intersection", active),
                                  (None, "aggregate_intersection", ["active"])]
    assert strategy.calls[6:] == [
        (r, hook, who) for r in (1, 2, 3) for hook, who in (
            ("configure_passives", passives), ("aggregate_passives", ["passive1", "passive2"]),
            ("configure_active", active), ("aggregate_active", ["active"]), ("exchange_record", []))]
    assert [r["active/server_seen"] for r in strategy.history] == [1.0, 2.0, 3.0]
    notes = [m.content[messages.CONFIG].get("note") for m in grid.sent if m.metadata.message_type == messages.TRAIN
             and m.metadata.dst_node_id == strategy.active.node_id]
    assert notes == ["exchange 1", "exchange 2", "exchange 3"]


class Phases(VerticalProtoStrategy):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[int, str, int]] = []

    def configure_passives(self, server_round):
        out = super().configure_passives(server_round)
        self.sent.append((server_round, "passives", len(out)))
        return out

    def configure_active(self, server_round, passives):
        out = super().configure_active(server_round, passives)
        self.sent.append((server_round, "active", len(out)))
        return out


def test_local_has_no_passive_phase_messages():
    cfg = small_cfg("local", rounds=2)
    strategy, _, _ = _run(Phases(cfg, timeout=30.0, wait_for_nodes=1.0))
    assert_same_history(strategy.history, run_inprocess(cfg)["rounds"])
    assert strategy.sent == [(1, "passives", 0), (1, "active", 1), (2, "passives", 0), (2, "active", 1)]


def test_the_typed_payloads_of_the_hooks_are_keyword_only():
    with pytest.raises(TypeError):
        ToPassive(1, (), False)  # type: ignore[misc]
    with pytest.raises(TypeError):
        FromPassive(np.zeros((1, 1)), {}, {})  # type: ignore[misc]
    msg = ToPassive(round=1, splits=("val",), final=False)
    assert messages.decode_to_passive(messages.encode_to_passive(msg)) == msg


class Yours(Strategy):
    """A strategy of yours that runs ours inside its own ``start`` (composition, not a wrapper): not refused."""

    def __init__(self, inner: VerticalProtoStrategy) -> None:
        self.inner = inner

    def start(self, grid, *args, **kwargs):  # type: ignore[override]
        return self.inner.start(grid=grid)

    def configure_train(self, *args):  # pragma: no cover - Flower's abstract hooks, unused here
        raise NotImplementedError

    aggregate_train = configure_evaluate = aggregate_evaluate = summary = configure_train


class LoudSummary(VerticalProtoStrategy):
    def summary(self) -> None:
        super().summary()  # a super() chain of summary is the strategy's own call, not a wrapper's


def test_flowers_train_and_evaluate_hooks_refuse_in_one_line_and_result_keeps_the_evaluation_metrics():
    cfg = small_cfg(rounds=2)
    strategy = LoudSummary(cfg, timeout=30.0, wait_for_nodes=1.0, active_results=tempfile.mkdtemp())
    result = Yours(strategy).start(InlineGrid(make_client_app(cfg, results_dir=str(strategy.active_results)),
                                              sim_nodes(cfg)))
    assert not getattr(VerticalProtoStrategy, "__abstractmethods__", set())
    evaluated = [int(r["round"]) for r in strategy.history if "val/accuracy" in r]
    assert evaluated and sorted(result.evaluate_metrics_clientapp) == evaluated
    for rnd in evaluated:
        got = result.evaluate_metrics_clientapp[rnd]
        assert isinstance(got, MetricRecord) and dict(got) == {
            k: v for k, v in strategy.history[rnd - 1].items() if k.startswith(("val/", "test/"))}
    calls = {"configure_train": (1, ArrayRecord(), ConfigRecord(), None), "aggregate_train": (1, []),
             "configure_evaluate": (1, ArrayRecord(), ConfigRecord(), None), "aggregate_evaluate": (1, [])}
    for hook, args in calls.items():
        with pytest.raises(TypeError) as err:
            getattr(strategy, hook)(*args)
        line = str(err.value)
        assert "\n" not in line and f"Flower's {hook}" in line
        assert all(h in line for h in EXCHANGE_HOOKS), line  # which hooks to override instead
    # Flower's parameters, in Flower's order; only defaults differ (a type-compatible override)
    ours, flowers = inspect.signature(VerticalProtoStrategy.start), inspect.signature(Strategy.start)
    assert list(ours.parameters) == list(flowers.parameters)


@pytest.mark.parametrize("wrapper", [DifferentialPrivacyClientSideFixedClipping,
                                     DifferentialPrivacyServerSideFixedClipping,
                                     DifferentialPrivacyClientSideAdaptiveClipping])
def test_a_flower_strategy_wrapper_is_refused_in_one_line_naming_it_before_any_message(wrapper):
    cfg = small_cfg(rounds=2)
    inner = VerticalProtoStrategy(cfg, timeout=30.0, wait_for_nodes=1.0)
    extra = ({"initial_clipping_norm": 1.0, "clipped_count_stddev": 1.0} if "Adaptive" in wrapper.__name__
             else {"clipping_norm": 1.0})
    wrapped = wrapper(inner, noise_multiplier=1.0, num_sampled_clients=2, **extra)
    grid = InlineGrid(make_client_app(cfg), sim_nodes(cfg))
    with pytest.raises(TypeError) as err:
        wrapped.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=2)
    line = str(err.value)
    assert line.startswith(f"{wrapper.__name__} cannot wrap VerticalProtoStrategy: ") and "\n" not in line
    assert "global model" in line and "defence." in line  # why, and what protects labels here instead
    assert grid.sent == []  # refused before any message
    with pytest.raises(TypeError, match=f"^{wrapper.__name__} cannot wrap"):  # and in each hook it delegates to
        list(wrapped.configure_train(1, ArrayRecord(), ConfigRecord(), grid))
