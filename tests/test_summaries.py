"""Summaries that do not mislead (issue 29 item 5): which round is reported when the aligned validation users are
too few, and what is reported for the users only the active party holds (the model prediction ships)."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import import_script, write_csvs

from flwr_vproto.config import config_from_dict
from flwr_vproto.data.csv_files import split_of
from flwr_vproto.predict import predict
from flwr_vproto.results import MIN_VALIDATION_USERS, format_summary, select_final

run_local = import_script("run_simulation").run_local


def rec(rnd: int, acc: float, loss: float, test: float, users: int, kept: bool = False, chosen: float = 0.5) -> dict:
    return {"round": float(rnd), "val/accuracy": acc, "val/loss": loss, "val/aligned_users": float(users),
            "val/own_users": 300.0, "val/own_accuracy": acc, "val/active_only_kept": float(kept),
            "test/accuracy": test, "test/active_only_accuracy": 0.1 * rnd, "test/chosen_active_only_accuracy": chosen}


def history(users: int) -> list[dict]:
    """Round 2 peaks on validation (a 1-user fluke when they are few); the active-only model is kept at round 2."""
    return [rec(1, 0.90, 0.40, 0.80, users), rec(2, 1.00, 0.35, 0.70, users, kept=True, chosen=0.6),
            rec(3, 0.95, 0.30, 0.90, users, chosen=0.6)]


def test_too_few_aligned_validation_users_report_the_last_round_and_say_so():
    few, many = select_final(history(MIN_VALIDATION_USERS - 1)), select_final(history(MIN_VALIDATION_USERS))
    assert (few["best_round"], few["accuracy"], few["too_few_aligned_validation"]) == (3.0, 0.90, 1.0)
    assert (many["best_round"], many["accuracy"], many["too_few_aligned_validation"]) == (2.0, 0.70, 0.0)
    for final in (few, many):  # the users only the active party holds: the kept model's last test score
        assert (final["active_only_accuracy"], final["active_only_round"], final["own_validation_users"]) == \
            (0.6, 2.0, 300.0)
        assert "chosen_active_only_accuracy" not in final
    line = format_summary({"config": {"num_rounds": 3}, "rounds": [{"round": 1.0}], "final": few})[1]
    assert line == (f"round 3 of 3, the last: only {MIN_VALIDATION_USERS - 1} aligned validation users, too few "
                    f"(< {MIN_VALIDATION_USERS}) to choose a round by; its validation accuracy (0.9500); users only "
                    "the active party holds: 0.6000 (active-only head of round 2, chosen on the active party's 300 "
                    "validation users)")
    few_own = {**few, "own_validation_users": 40.0, "active_only_round": 3.0}  # the party kept the last round's
    assert format_summary({"config": {"num_rounds": 3}, "rounds": [{"round": 1.0}], "final": few_own})[1].endswith(
        "users only the active party holds: 0.6000 (active-only head of round 3, the last: its 40 validation users "
        "are too few)")
    # a history without the counts (tree baselines, older results) keeps the old rule and keys
    old = select_final([{k: v for k, v in r.items() if "aligned_users" not in k} for r in history(10)])
    assert old["best_round"] == 2.0 and "too_few_aligned_validation" not in old


def test_the_summary_reports_for_the_active_partys_own_users_what_its_saved_model_gives(tmp_path):
    paths = write_csvs(tmp_path, n=1500)  # the active party holds ~120 validation users, ~60 of them aligned
    # the network head, which changes every round (the tree head, csv's default, is fitted once)
    cfg = config_from_dict({"num_rounds": 6, "engine": "inprocess", "dataset": {"name": "csv", "csv": {"paths": paths}},
                            "method": {"batch_size": 32, "head": "nn"}})
    results = run_local(cfg, {"save_models": True}, tmp_path / "run")
    final = results["final"]
    new = []
    for k, p in enumerate(paths):  # the held-out test users of each file, as new files
        frame = pd.read_csv(p, dtype=str)
        new.append(str(tmp_path / f"test{k}.csv"))
        frame[split_of(frame["id"].to_numpy(), cfg.seed, 0.2, 0.1) == "test"].to_csv(new[-1], index=False)
    only = predict(tmp_path / "run" / "models", new).metrics["active_only_accuracy"]
    assert only == pytest.approx(final["active_only_accuracy"], abs=1e-12)
    line = format_summary(results)[1]
    assert f"users only the active party holds: {only:.4f} (active-only head of round" in line
    # the case tests something: the model kept on the active party's many validation users is not the last
    # round's head, which scores these users differently (what the summary used to report)
    last = results["local_rounds"][-1] if results.get("local_rounds") else results["rounds"][-1]
    assert final["active_only_round"] < cfg.num_rounds
    assert last["test/active_only_accuracy"] != pytest.approx(only, abs=1e-9)
    assert final["own_validation_users"] > final["aligned_validation_users"]
    # few aligned validation users here: said on the same line, and the last round (the saved joint model) reported
    assert final["too_few_aligned_validation"] == 1.0 and final["best_round"] == cfg.num_rounds
    assert f"too few (< {MIN_VALIDATION_USERS}) to choose a round by" in line
