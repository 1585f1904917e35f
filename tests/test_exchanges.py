"""Few exchanges (``exchange.*``): the rounds of training cut into fewer message exchanges, with the same numbers
where the passives cannot change and identical numbers in both engines everywhere."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import assert_same_history, run_inline, small_cfg, to_passives

from flwr_vproto import defences, exchanges, messages
from flwr_vproto.config import ConfigError, config_from_dict
from flwr_vproto.inprocess import run_inprocess
from flwr_vproto.method.losses import gradient_loss, proximal_gradient_loss, proximal_scale


def _no_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in rec.items() if k != "seconds"} for rec in history]


# ------------------------------------------------------------------------------------------------ the schedule
@pytest.mark.parametrize("schedule,sizes", [("even", [6, 7, 7]), ("first", [18, 1, 1]), ("last", [1, 1, 18])])
def test_the_schedule_cuts_the_rounds_into_exchanges_that_cover_each_round_once(schedule, sizes):
    cfg = config_from_dict({"num_rounds": 20, "exchange": {"count": 3, "schedule": schedule}})
    assert exchanges.sizes(cfg) == sizes
    covered = [r for i in range(1, 4) for r in exchanges.rounds_of(cfg, i)]
    assert covered == list(range(1, 21))


def test_auto_is_one_exchange_exactly_when_no_passive_can_ever_change():
    # else one per round: digits' default of 40 rounds (flwr_vproto/config.py DATASET_ROUNDS)
    assert exchanges.count(config_from_dict({})) == 1  # the default: defence=no_gradients
    assert exchanges.count(config_from_dict({"defence": {"release_rounds": None}})) == 40
    assert exchanges.count(config_from_dict({"defence": {"release_rounds": 2}})) == 40
    assert exchanges.count(config_from_dict({"method": {"lambda_passive": 1.0},  # prototypes are shared
                                             "privacy": {"clear_prototypes": True}})) == 40
    assert exchanges.count(config_from_dict({"exchange": {"count": 4}, "defence": {"release_rounds": None}})) == 4


@pytest.mark.parametrize("override,needle", [
    ({"exchange": {"count": 21}}, "exchange.count=21"),
    ({"exchange": {"count": 0}}, "exchange.count=0"),
    ({"exchange": {"schedule": "middle"}}, "exchange.schedule='middle'"),
    ({"exchange": {"passive_passes": 0}}, "exchange.passive_passes=0"),
    ({"exchange": {"passive_reach": -1}}, "exchange.passive_reach=-1"),
])
def test_exchange_options_are_validated_naming_the_option(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        config_from_dict({"num_rounds": 20, **override})


def test_releases_and_their_accounting_count_exchanges_not_rounds():
    cfg = config_from_dict({"num_rounds": 20, "exchange": {"count": 5}, "defence": {"release_rounds": None},
                            "dataset": {"num_passive": 2}})
    assert [defences.releases(cfg, i) for i in range(1, 6)] == [True, True, True, True, False]
    assert defences.planned_releases(cfg) == 2 * 4  # per passive, after every exchange but the last
    eps5 = config_from_dict({"num_rounds": 20, "exchange": {"count": 5}, "defence": {"target_epsilon": 1.0,
                                                                                      "release_rounds": None}})
    eps20 = config_from_dict({"num_rounds": 20, "defence": {"target_epsilon": 1.0, "release_rounds": None}})
    from flwr_vproto.privacy import gradient_noise_multiplier

    # target_epsilon bounds one round's rows given that round's model: the same noise however many releases
    assert gradient_noise_multiplier(eps5) == gradient_noise_multiplier(eps20)
    assert defences.planned_releases(eps5) < defences.planned_releases(eps20)  # fewer releases: fewer noisy copies


# ------------------------------------------------------------------------------------------------ the numbers
def test_one_exchange_gives_exactly_the_numbers_of_one_per_round_when_the_passives_are_frozen():
    """The default protection sends a passive nothing, so its encoder is fixed after pre-training: one exchange
    (the auto default) trains every round on the same embeddings the per-round protocol would send again."""
    frozen = {"defence": {"release_rounds": 0}}
    one = run_inprocess(small_cfg(rounds=4, **frozen))
    per_round = run_inprocess(small_cfg(rounds=4, exchange={"count": 4}, **frozen))
    assert len(one["rounds"]) == 1 and len(per_round["rounds"]) == 4 and "local_rounds" not in per_round
    assert one["final"] == per_round["final"]
    for got, want in zip(one["local_rounds"], per_round["rounds"], strict=True):
        for k in [k for k in want if k.startswith(("active/", "val/", "test/"))]:
            assert got[k] == want[k], (k, got["round"])
    assert one["rounds"][0]["exchange/first_round"] == 1 and one["rounds"][0]["exchange/last_round"] == 4


def test_few_exchanges_with_gradient_passes_give_the_same_numbers_in_both_engines():
    cfg = small_cfg(rounds=5, num_passive=2, exchange={"count": 2, "passive_passes": 3})
    strategy, result, grid = run_inline(cfg)
    reference = run_inprocess(cfg)
    assert_same_history(strategy.history, reference["rounds"])
    assert _no_seconds(strategy.results["local_rounds"]) == _no_seconds(reference["local_rounds"])
    assert strategy.results["final"] == reference["final"]
    assert [r["round"] for r in reference["local_rounds"]] == [1, 2, 3, 4, 5]
    assert [r["exchange"] for r in reference["local_rounds"]] == [1, 1, 2, 2, 2]
    # one message per party per exchange; the passives' gradients came once, after the first exchange
    types = [m.metadata.message_type for m in grid.sent]
    assert types.count(messages.TRAIN) == 2 * 3 and sorted(result.train_metrics_clientapp) == [1, 2]
    aligned = reference["alignment"]["aligned"]["train"]
    assert reference["rounds"][1]["passive1/steps"] == 3 * math.ceil(aligned / cfg.method.batch_size)  # 3 passes


def test_one_exchange_sends_every_passive_one_message_and_nothing_back():
    cfg = small_cfg(rounds=3, defence={"release_rounds": 0})
    strategy, _, grid = run_inline(cfg)
    to_passive = [r for _, r in to_passives(grid, cfg)]
    assert len(to_passive) == 1
    assert to_passive[0].gradients is None and messages.SEALED not in messages.arrays_in(grid.sent[-2].content)
    assert strategy.results["final"] == run_inprocess(cfg)["final"]


# ------------------------------------------------------------------------------------------------ local passes
def test_proximal_passes_start_like_one_pass_and_stop_at_their_target_instead_of_overshooting():
    torch.manual_seed(0)
    z0, g = torch.randn(8, 4), torch.randn(8, 4)
    eta = proximal_scale(z0, g, 0.1)
    assert np.isclose(float((eta * g).norm(dim=1).mean()), 0.1 * float(z0.norm(dim=1).mean()))
    z = z0.clone().requires_grad_(True)
    proximal_gradient_loss(z, g, z0, eta).backward()
    assert torch.allclose(z.grad, g)  # the first step is the one-pass step
    prox, lin = z0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
    opt_p, opt_l = torch.optim.Adam([prox], lr=0.05), torch.optim.Adam([lin], lr=0.05)
    for _ in range(500):
        for opt, loss in ((opt_p, lambda: proximal_gradient_loss(prox, g, z0, eta)),
                          (opt_l, lambda: gradient_loss(lin, g))):
            opt.zero_grad()
            loss().backward()
            opt.step()
    target = z0 - eta * g
    assert torch.allclose(prox.detach(), target, atol=0.02)
    assert float((lin.detach() - z0).norm()) > 10 * float((target - z0).norm())  # repeating one pass runs away


def test_a_checkpoint_written_before_exchanges_existed_is_refused_naming_the_option(tmp_path):
    """One checkpoint format (checkpoint.FORMAT): a fingerprint without ``exchange`` (a version before exchange.*)
    is no longer read as "one exchange per round"; the resume is refused in one line naming the option."""
    from flwr_vproto import checkpoint as ck

    per_round = config_from_dict({"checkpoint": {"dir": str(tmp_path)}, "defence": {"release_rounds": None},
                                  "num_rounds": 20})
    old = ck.resume_fingerprint(per_round)
    del old["exchange"]  # as written by a version without it
    with pytest.raises(ck.CheckpointError, match=r"exchange \(checkpoint None, now \{'count': 20"):
        ck.check_same_run(old, per_round, "server", tmp_path)


def test_one_exchange_resumes_from_its_checkpoint_to_the_same_numbers(tmp_path):
    cfg = small_cfg(rounds=4, exchange={"count": 2, "passive_passes": 2},
                    checkpoint={"dir": str(tmp_path), "every": 1})
    full = run_inprocess(cfg)
    for folder in ("server", "active", "passive1"):  # as if killed during the second exchange
        (tmp_path / folder / "round-2.pt").unlink()
    resumed = run_inprocess(config_from_dict({**cfg.to_dict(), "resume": True}))
    assert _no_seconds(resumed["rounds"]) == _no_seconds(full["rounds"])
    assert resumed["local_rounds"] == full["local_rounds"] and resumed["final"] == full["final"]


def test_the_one_shot_extreme_releases_nothing_whatever_the_defence_and_the_summary_says_so():
    cfg = config_from_dict({"defence": {"release_rounds": None}, "method": {"lambda_passive": 1.0},
                            "exchange": {"count": 1}})
    assert defences.planned_releases(cfg) == 0
    summary = defences.defence_summary(cfg, [])
    assert summary["defence"]["label_free"] and summary["defence"]["every_byte_epsilon"] == 0.0
    assert "one exchange: the passives never hear back" in defences.describe(summary)
    # and what the active party replies to its one exchange carries no gradient, prototype or gate
    res = run_inprocess(small_cfg(rounds=3, exchange={"count": 1}, method_extra={"lambda_passive": 1.0}))
    assert res["defence"]["label_free"] and len(res["rounds"]) == 1 and len(res["local_rounds"]) == 3


def test_progress_names_the_rounds_an_exchange_trained():
    from flwr_vproto.results import format_round

    rec = {"round": 2.0, "exchange/first_round": 8.0, "exchange/last_round": 14.0, "val/accuracy": 0.9, "seconds": 3.0}
    assert format_round(rec, 20).startswith("round  14/20 (exchange 2: rounds 8-14)")
    assert format_round({"round": 3.0, "seconds": 1.0}, 20).startswith("round   3/20 |")


@pytest.mark.parametrize("preset,count,passes", [("vproto_fewshot", 3, 3), ("vproto_oneshot", 1, 1)])
def test_the_exchange_presets_compose_with_any_dataset_and_defence(preset, count, passes):
    from conftest import REPO, import_script
    from hydra import compose, initialize_config_dir

    _config = import_script("run_simulation")._config
    with initialize_config_dir(config_dir=str(REPO / "flwr_vproto" / "conf"), version_base=None):
        for extra in (["dataset=adult", "defence=none"], ["dataset=digits", "defence=gradient_noise"]):
            cfg, _ = _config(compose("config", [f"method={preset}", *extra]))
            assert (cfg.method.name, cfg.exchange.count, cfg.exchange.passive_passes) == ("vproto", count, passes)
            # vproto's knobs, untouched (the active-only head's kind follows from the dataset)
            assert cfg.method == config_from_dict({"dataset": {"name": extra[0].split("=")[1]}}).method
        cfg, _ = _config(compose("config", [f"method={preset}", "exchange.count=2", "method.lr=0.01"]))
        assert cfg.exchange.count == 2 and cfg.method.lr == 0.01


def test_a_deployed_exchange_of_several_rounds_under_progress_completes():
    """A deployment reads nothing back from the active party: under the default ``progress`` policy its reply to an
    exchange of two rounds holds only the exchange number and rounds trained, and the run completes with that
    (it used to stop asking for round 1's metrics, so a default deployment of more than one round failed)."""
    from conftest import InlineGrid, sim_nodes

    from flwr_vproto.client_app import make_client_app
    from flwr_vproto.strategy import VerticalProtoStrategy

    cfg = small_cfg(rounds=2, exchange={"count": 1})
    strategy = VerticalProtoStrategy(cfg, timeout=60, wait_for_nodes=1.0)  # no active_results: as deployed
    strategy.start(grid=InlineGrid(make_client_app(cfg), sim_nodes(cfg)))
    assert [int(r["round"]) for r in strategy.history] == [1]
    assert strategy.history[0]["exchange/last_round"] == 2.0 and "val/accuracy" not in strategy.history[0]
    with pytest.raises(messages.ProtocolError, match="no metrics of round 1"):  # a full reply must still hold them
        messages.decode_active_metrics({"train.sup_loss": 0.5}, "training of round 2", earlier=[1])
