"""The split helper: per-party files whose validation/test users every party holds, with the asked aligned share of
training users, read back through ``dataset=csv`` exactly as training reads them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from flwr_vproto.config import config_from_dict
from flwr_vproto.data import load_party, load_vertical_dataset
from flwr_vproto.data.csv_files import split_of
from flwr_vproto.inprocess import run_inprocess
from flwr_vproto.results import per_round
from flwr_vproto.split_table import main, split_table


def write_table(path: Path, n: int = 800, seed: int = 0) -> pd.DataFrame:
    """One row per user: ID (with leading zeros), 4 numeric and 2 text features, a 3-class label."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    frame = pd.DataFrame({
        "user_id": [f"{k:06d}" for k in rng.permutation(n)],
        "a": (y + rng.normal(0, 1, n)).round(3), "b": rng.normal(0, 1, n).round(3),
        "city": rng.choice(["Paris", "Lyon"], n),
        "c": (y * 2 + rng.normal(0, 1, n)).round(3), "d": rng.integers(0, 9, n), "tier": rng.choice(["x", "y"], n),
        "label": np.array(["low", "mid", "high"])[y],
    })
    frame.to_csv(path, index=False)
    return frame


def party_ids(party, split: str) -> set[str]:
    return set(party.split(split).ids.tolist())


def csv_config(paths: list[Path], split_seed: int, seed: int = 0, **extra) -> dict:
    return {"seed": seed, "engine": "inprocess", **extra,
            "dataset": {"name": "csv", "num_passive": len(paths) - 1,
                        "csv": {"paths": [str(p) for p in paths], "id_column": "user_id", "split_seed": split_seed}}}


@pytest.mark.parametrize("aligned", [0.02, 0.3])
def test_round_trip_through_dataset_csv(tmp_path, capsys, aligned):
    table = write_table(tmp_path / "people.csv")
    rc = main([str(tmp_path / "people.csv"), "--id", "user_id", "--label", "label", "--active-share", "0.5",
               "--aligned", str(aligned), "--seed", "7", "--out", str(tmp_path / "out")])
    assert rc == 0
    printed = capsys.readouterr().out
    paths = [tmp_path / "out" / "people.active.csv", tmp_path / "out" / "people.passive1.csv"]
    assert all(p.is_file() for p in paths)

    # Labels in the active file only; features dealt in file order (3 of 6 to the active party).
    header = [list(pd.read_csv(p, nrows=0).columns) for p in paths]
    assert header == [["user_id", "a", "b", "city", "label"], ["user_id", "c", "d", "tier"]]

    # Read back with a different training seed: split_seed (printed in the command) keys the split.
    ds = load_vertical_dataset(config_from_dict(csv_config(paths, split_seed=7, seed=3)))
    split = split_of(table["user_id"].astype(str).to_numpy(dtype=object), 7, 0.2, 0.1)
    every = {s: set(table["user_id"].astype(str)[split == s]) for s in ("train", "val", "test")}
    active, passive = ds.parties
    for s in ("val", "test"):  # every validation and test user is in every file, in the same split
        assert party_ids(active, s) == party_ids(passive, s) == every[s]
    aligned_ids = party_ids(active, "train") & party_ids(passive, "train")
    assert len(aligned_ids) == round(aligned * len(every["train"]))
    assert party_ids(active, "train") | party_ids(passive, "train") == every["train"]  # no training user lost
    nonaligned = [party_ids(p, "train") - aligned_ids for p in (active, passive)]
    assert abs(len(nonaligned[0]) - len(nonaligned[1])) <= 1  # equal shares, each user in exactly one file
    assert passive.train.y is None
    truth = table.assign(user_id=table["user_id"].astype(str)).set_index("user_id")["label"]
    names = np.array(ds.class_names)
    assert (names[active.test.y] == truth.loc[active.test.ids].to_numpy()).all()
    assert len(active.train.ids[0]) == 6  # leading zeros kept

    # The printed command names the files, columns and split seed, and Hydra parses it.
    command = printed.strip().splitlines()[-1].strip()
    assert command.startswith("python -m flwr_vproto dataset=csv dataset.num_passive=1 ")
    overrides = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(shlex.split(command)[3:])}
    assert overrides["dataset.csv.paths"] == [str(p.resolve()) for p in paths]
    assert overrides["dataset.csv.id_column"] == "user_id" and overrides["dataset.csv.label_column"] == "label"
    assert overrides["dataset.csv.split_seed"] == 7


def test_uniform_overlap_scores_few_test_users_jointly_but_the_helper_scores_all(tmp_path):
    """What issue 15 met: keeping a uniform 2 % of IDs in both files leaves ~2 % of the test users in both."""
    table = write_table(tmp_path / "t.csv", n=2000)
    rng = np.random.default_rng(0)
    shared = rng.random(len(table)) < 0.02
    side = rng.random(len(table)) < 0.5
    naive = [tmp_path / "naive_a.csv", tmp_path / "naive_b.csv"]
    table[shared | side][["user_id", "a", "b", "label"]].to_csv(naive[0], index=False)
    table[shared | ~side][["user_id", "c", "d"]].to_csv(naive[1], index=False)
    ds = load_vertical_dataset(config_from_dict(csv_config(naive, split_seed=0)))
    joint_naive = len(party_ids(ds.active, "test") & party_ids(ds.passives[0], "test"))

    res = split_table(str(tmp_path / "t.csv"), "user_id", "label", str(tmp_path / "out"),
                      active_columns=["a", "b"], aligned=0.02, seed=0)
    ds = load_vertical_dataset(config_from_dict(csv_config(res.paths, split_seed=0)))
    joint = len(party_ids(ds.active, "test") & party_ids(ds.passives[0], "test"))
    assert joint == res.counts["test"] == len(ds.active.test)
    assert joint_naive < 0.1 * joint


def test_two_passives_active_columns_and_a_two_round_run(tmp_path):
    write_table(tmp_path / "t.csv", n=600)
    res = split_table(str(tmp_path / "t.csv"), "user_id", "label", str(tmp_path / "out"),
                      active_columns=["city", "a"], passives=2, aligned=0.2, seed=1)
    assert [p.name for p in res.paths] == ["t.active.csv", "t.passive1.csv", "t.passive2.csv"]
    assert res.columns == [["a", "city"], ["b", "c"], ["d", "tier"]]
    assert res.counts["nonaligned_active"] + res.counts["nonaligned_passive1"] + res.counts["nonaligned_passive2"] \
        == res.counts["train"] - res.counts["aligned"]
    cfg = config_from_dict(csv_config(res.paths, split_seed=1, num_rounds=2, method={"batch_size": 64}))
    for k in range(3):  # each party alone, as a deployed SuperNode reads it
        assert load_party(cfg, k).val.ids.size == res.counts["val"]
    out = run_inprocess(cfg)
    assert [r["round"] for r in per_round(out)] == [1, 2]
    assert 0.0 <= out["final"]["accuracy"] <= 1.0
    # the jointly scored test users are all the test users: nothing is scored by the active party alone
    assert out["rounds"][-1].get("test/active_only_accuracy") is None or np.isnan(
        out["rounds"][-1]["test/active_only_accuracy"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["missing.csv", "--active-share", "0.5"], "table: .*missing.csv: file not found"),
        (["t.csv", "--active-share", "0.5", "--id", "uid"], "--id: .*t.csv has no column 'uid'"),
        (["t.csv", "--active-share", "0.5", "--label", "y"], "--label: .*t.csv has no column 'y'"),
        (["t.csv", "--active-share", "1.5"], r"--active-share=1.5: expected a number in \(0, 1\)"),
        (["t.csv", "--active-share", "0.5", "--aligned", "0"], r"--aligned=0.0: expected a number in \(0, 1\]"),
        (["t.csv", "--active-share", "0.5", "--aligned", "0.0001"], "--aligned=0.0001: gives 0 aligned user"),
        (["t.csv", "--active-columns", "a,zz"], "--active-columns: .*no feature column 'zz'"),
        (["t.csv", "--active-columns", "a,label"], "--active-columns: .*no feature column 'label'"),
        (["t.csv", "--active-share", "0.5", "--passives", "4"], "leaves 3 feature column.*--passives=4"),
        (["t.csv", "--active-share", "0.5", "--val-fraction", "0.5", "--test-fraction", "0.5"],
         "--val-fraction=0.5: with --test-fraction=0.5 no user is left"),
        (["dup.csv", "--active-share", "0.5"], "--id: .*dup.csv: column 'user_id' has 1 duplicated ID.*'000001'"),
        (["noid.csv", "--active-share", "0.5"], "--id: .*noid.csv: column 'user_id' has 1 empty ID.*line 3.*'NA'"),
    ],
)
def test_errors_are_one_line_naming_the_option(tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / "t.csv", n=200)
    Path("dup.csv").write_text("user_id,a,label\n000001,1,x\n000002,2,y\n000001,3,x\n")
    Path("noid.csv").write_text("user_id,a,label\n000001,1,x\nNA,2,y\n")
    base = ["--id", "user_id", "--label", "label", "--out", "out"]
    extra = list(args[1:])
    for opt in ("--id", "--label"):  # a test's own --id/--label wins over the default
        if opt in extra:
            i = base.index(opt)
            base = base[:i] + base[i + 2:]
    assert main([args[0], *base, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("split_table: ")
    assert re.search(needle, err), err
    assert not Path("out").exists() or not any(Path("out").iterdir())  # nothing written on a bad call
