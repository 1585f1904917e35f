"""``dataset.csv.missing``, ``scaling``, ``clip``, ``split_seed`` and ``centralized`` on csv files: what each option
does to the encoded rows, that the defaults change nothing, and that prediction fills new rows as training did."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import import_script

from flwr_vproto.config import ConfigError, config_from_dict
from flwr_vproto.data import DataError, load_party, load_vertical_dataset
from flwr_vproto.data import csv_files as csv_module
from flwr_vproto.data.csv_files import NA_TOKENS, split_of
from flwr_vproto.data.tabular import TabularEncoder
from flwr_vproto.inprocess import run_inprocess

REPO = Path(__file__).resolve().parents[1]


def cfg(paths: list[str], seed: int = 0, method: str | None = None, num_rounds: int = 20, **csv):
    data = {"seed": seed, "engine": "inprocess", "num_rounds": num_rounds,
            "dataset": {"name": "csv", "num_passive": len(paths) - 1, "csv": {"paths": paths, **csv}}}
    if method:
        data["method"] = {"name": method, "batch_size": 64}
    return config_from_dict(data)


def write_pair(tmp_path: Path, n: int = 300, holes: dict[str, list[str]] | None = None) -> list[str]:
    """Active (id, f, g, city, label) and passive (id, h, seg) over the same users; ``holes`` puts the given tokens
    into the first rows of the given active columns."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    active = pd.DataFrame({"id": [f"u{k}" for k in range(n)], "f": (y + rng.normal(0, 1, n)).round(3).astype(str),
                           "g": rng.integers(0, 100, n).astype(str), "city": rng.choice(["Paris", "Lyon"], n),
                           "label": y.astype(str)})
    for column, tokens in (holes or {}).items():
        active.loc[: len(tokens) - 1, column] = tokens
    passive = pd.DataFrame({"id": [f"u{k}" for k in range(n)], "h": (y * 2 + rng.normal(0, 1, n)).round(3),
                            "seg": rng.choice(["a", "b", "c"], n)})
    active.to_csv(tmp_path / "a.csv", index=False)
    passive.to_csv(tmp_path / "b.csv", index=False)
    return [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]


# --- config ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("csv", "needle"), [
    ({"missing": "drop"}, r"dataset.csv.missing='drop': expected one of \('error', 'impute'\)"),
    ({"scaling": "minmax"}, r"dataset.csv.scaling='minmax': expected one of \('column', 'global'\)"),
    ({"clip": 0}, r"dataset.csv.clip=0: expected null or a number > 0"),
    ({"clip": "3"}, r"dataset.csv.clip='3'"),
    ({"split_seed": -1}, r"dataset.csv.split_seed=-1: expected null \(= seed\) or an integer >= 0"),
])
def test_bad_options_name_the_option(csv, needle):
    with pytest.raises(ConfigError, match=needle):
        config_from_dict({"dataset": {"name": "csv", "csv": {"paths": ["a.csv", "b.csv"], **csv}}})


# --- missing values -------------------------------------------------------------------------------------------------


def test_na_tokens_are_pandas_defaults():
    from pandas._libs.parsers import STR_NA_VALUES

    assert set(NA_TOKENS) == set(STR_NA_VALUES)


@pytest.mark.parametrize("column", ["f", "city"])
def test_empty_cells_error_names_the_tokens_and_the_option(tmp_path, column):
    paths = write_pair(tmp_path, holes={column: ["NA", "", "null", "NA"]})
    with pytest.raises(DataError, match=rf"a\.csv: column '{column}' has 4 empty/NaN value\(s\) of 300 rows "
                                        r"\(tokens seen: 'NA', '', 'null'\); set dataset.csv.missing=impute or fill"):
        load_party(cfg(paths), 0)


def test_impute_numeric_median_indicator_and_text_category(tmp_path):
    paths = write_pair(tmp_path, holes={"f": ["NA", "", "N/A"], "city": ["", "null"]})
    c = cfg(paths, missing="impute")
    party = load_party(c, 0)
    names = party.feature_names
    assert names == ["f", "g", "f__missing", "city=Lyon", "city=Paris", "city=missing"]  # no indicator for g
    raw = pd.read_csv(paths[0], dtype=str, keep_default_na=False).set_index("id")
    holes = {"u0", "u1", "u2"}
    split = dict(zip(raw.index, split_of(raw.index.to_numpy(dtype=object), 0, 0.2, 0.1), strict=True))
    train_f = raw.loc[[u for u in raw.index if split[u] == "train" and u not in holes], "f"].astype(float)
    median = float(np.median(train_f))  # of the party's own training rows only
    enc = TabularEncoder.from_state(party.preprocessing["encoder"])
    assert enc.medians[0] == pytest.approx(median)
    everything = {s: party.split(s) for s in ("train", "val", "test")}
    for data in everything.values():
        for row, user in zip(data.x, data.ids, strict=True):
            if user in holes:
                assert row[2] == 1.0  # the indicator
                assert row[0] == pytest.approx((median - enc._scaler.mean_[0]) / enc._scaler.scale_[0], abs=1e-5)
            else:
                assert row[2] == 0.0
            assert row[3:].sum() == 1.0  # one city, "missing" included
            if user in {"u0", "u1"}:
                assert row[5] == 1.0
    # standardised after filling: mean 0 over the training rows, filled cells included
    assert abs(float(party.train.x[:, 0].mean())) < 1e-5


def test_impute_refuses_a_column_with_no_training_value(tmp_path):
    paths = write_pair(tmp_path, n=40)
    frame = pd.read_csv(paths[0], dtype=str)
    split = split_of(frame["id"].to_numpy(dtype=object), 0, 0.2, 0.1)
    frame.loc[split == "train", "g"] = ""
    frame.to_csv(paths[0], index=False)
    with pytest.raises(DataError, match=r"a\.csv: column 'g' has no value in the training rows.*missing=impute"):
        load_party(cfg(paths, missing="impute"), 0)
    frame["g"] = ""
    frame.to_csv(paths[0], index=False)
    with pytest.raises(DataError, match=r"column 'g' has 40 empty/NaN value\(s\).*every cell is empty"):
        load_party(cfg(paths, missing="impute"), 0)


def test_placeholder_words_warn_once_per_file_and_hint_in_numbers(tmp_path, caplog):
    paths = write_pair(tmp_path, holes={"city": ["?", "Unknown", "?"]})
    csv_module._WARNED.discard(paths[0])
    with caplog.at_level(logging.WARNING, logger="flwr_vproto.data.csv_files"):
        load_party(cfg(paths), 0)
        load_party(cfg(paths), 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "a.csv" in warnings[0] and "'city': '?', 'Unknown'" in warnings[0]
    paths = write_pair(tmp_path, holes={"g": ["?", "?"]})
    with pytest.raises(DataError, match=r"column 'g' looks numeric but 2 value\(s\) are not numbers, e.g. '\?'.*"
                                        r"'\?' look\(s\) like a missing-value marker.*missing=impute"):
        load_party(cfg(paths), 0)


def test_defaults_leave_encodings_and_saved_state_unchanged(tmp_path):
    paths = write_pair(tmp_path)
    party = load_party(cfg(paths), 0)
    frame = pd.read_csv(paths[0], dtype=str).set_index("id")
    # the historical encoder, by hand: per-column standardisation on the training rows, then one-hot
    train = frame.loc[party.train.ids, ["f", "g"]].astype(float).to_numpy()
    test = frame.loc[party.test.ids, ["f", "g"]].astype(float).to_numpy()
    z = (test - train.mean(0)) / train.std(0)
    np.testing.assert_allclose(party.test.x[:, :2], z, atol=1e-5)
    assert set(party.preprocessing["encoder"]) == {"numeric", "categorical", "mean", "scale", "categories"}


# --- scaling and clipping -------------------------------------------------------------------------------------------


def test_global_scaling_and_clip(tmp_path):
    paths = write_pair(tmp_path)
    column = load_party(cfg(paths), 0)
    glob = load_party(cfg(paths, scaling="global"), 0)
    frame = pd.read_csv(paths[0], dtype=str).set_index("id")
    train = frame.loc[glob.train.ids, ["f", "g"]].astype(float).to_numpy()
    test = frame.loc[glob.test.ids, ["f", "g"]].astype(float).to_numpy()
    np.testing.assert_allclose(glob.test.x[:, :2], (test - train.mean()) / train.std(), atol=1e-5)
    state = glob.preprocessing["encoder"]
    assert state["scaling"] == "global" and len(set(state["mean"])) == 1 and len(set(state["scale"])) == 1
    np.testing.assert_array_equal(glob.test.x[:, 2:], column.test.x[:, 2:])  # one-hot untouched

    clipped = load_party(cfg(paths, scaling="global", clip=0.5), 0)
    z = glob.test.x[:, :2]
    np.testing.assert_allclose(clipped.test.x[:, :2], np.clip(z, -0.5, 0.5), atol=1e-6)
    assert (np.abs(z) > 0.5).any()  # the clip did something
    assert TabularEncoder.from_state(clipped.preprocessing["encoder"]).clip == 0.5


def test_near_constant_pixel_blows_up_per_column_but_not_globally(tmp_path):
    n = 400
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 17, (n, 4)).astype(float)
    pixels[:, 0] = 0
    pixels[rng.choice(n, 3, replace=False), 0] = 16  # a border pixel, almost always 0
    a = pd.DataFrame(pixels[:, :2], columns=["p0", "p1"]).assign(id=range(n), label=rng.integers(0, 2, n))
    b = pd.DataFrame(pixels[:, 2:], columns=["p2", "p3"]).assign(id=range(n))
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    paths = [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    col = load_vertical_dataset(cfg(paths))
    glob = load_vertical_dataset(cfg(paths, scaling="global"))
    biggest = {name: max(float(np.abs(p.split(s).x).max()) for p in ds.parties for s in ("train", "val", "test"))
               for name, ds in (("column", col), ("global", glob))}
    assert biggest["column"] > 8 and biggest["global"] < 3


# --- split seed and centralized -------------------------------------------------------------------------------------


def test_split_seed_decouples_the_split_from_the_training_seed(tmp_path):
    paths = write_pair(tmp_path)
    base = load_party(cfg(paths, seed=0), 0)
    other_seed = load_party(cfg(paths, seed=5), 0)
    pinned = load_party(cfg(paths, seed=5, split_seed=0), 0)
    assert set(pinned.test.ids) == set(base.test.ids) != set(other_seed.test.ids)
    assert list(pinned.train.ids) != list(base.train.ids)  # rows still shuffled by the run's seed


def test_centralized_on_csv_trains_on_every_labelled_user_and_scores_the_joined_ones(tmp_path):
    """Issue 28: the upper bound trains on every user whose label the active party knows (not only the aligned
    ones); a passive that lacks a user gives zeros and a 0 in its "holds this user" column (the active block's
    last); validation and test users are those every file holds, as for every method."""
    paths = write_pair(tmp_path)
    frame = pd.read_csv(paths[1], dtype=str)
    frame = frame[frame["id"].str[1:].astype(int) % 3 != 0]  # the passive lacks a third of the users
    frame.to_csv(paths[1], index=False)
    labels = pd.read_csv(paths[0], dtype=str)
    labels.loc[labels["id"] == "u1", "label"] = ""  # an unlabelled user, held by both
    labels.to_csv(paths[0], index=False)
    assert load_vertical_dataset(cfg(paths)).central is None  # only built for method centralized
    ds = load_vertical_dataset(cfg(paths, method="centralized"))
    c = ds.central
    assert c is not None and c.input_shapes == [(ds.active.input_shape[0] + 1,), ds.passives[0].input_shape]
    for s in ("train", "val", "test"):
        active, passive = ds.active.split(s), ds.passives[0].split(s)
        held = set(passive.ids)
        users = [u for u, y in zip(active.ids, active.y, strict=True) if y >= 0 and (s == "train" or u in held)]
        assert len(c.y[s]) == len(users) > 0
        assert "u1" not in users
        if s == "train":
            assert any(u not in held for u in users)  # non-aligned users train too
        # each row: the active's encoded features, "does the passive hold it", the passive's features (or zeros)
        by_a = {u: (x, y) for u, x, y in zip(active.ids, active.x, active.y, strict=True)}
        by_p = dict(zip(passive.ids, passive.x, strict=True))
        zeros = np.zeros(passive.x.shape[1], dtype=np.float32)
        rows = {tuple(np.concatenate([by_a[u][0], [u in held], by_p.get(u, zeros)]).astype(np.float32).round(5)):
                by_a[u][1] for u in users}
        got = {tuple(r.round(5)): int(y) for r, y in zip(c.x[s], c.y[s], strict=True)}
        assert got == rows
    out = run_inprocess(cfg(paths, method="centralized", num_rounds=2), ds)
    assert len(out["rounds"]) == 2 and 0 <= out["final"]["accuracy"] <= 1


# --- prediction with an imputed model -------------------------------------------------------------------------------


def test_prediction_fills_new_rows_as_training_did(tmp_path):
    from flwr_vproto.predict import load_party_model, predict

    run_local = import_script("run_simulation").run_local

    paths = write_pair(tmp_path, n=400, holes={"f": ["NA", "", "NA", "", "NA", "", "NA", "", "NA", ""],
                                                "city": ["", "", "", ""]})
    c = config_from_dict({"num_rounds": 2, "engine": "inprocess", "method": {"batch_size": 32},
                          "dataset": {"name": "csv", "csv": {"paths": paths, "missing": "impute", "clip": 4.0}}})
    results = run_local(c, {"save_models": True}, tmp_path / "run")
    saved = load_party_model(tmp_path / "run" / "models" / "active.pt")
    assert saved.preprocessing["encoder"]["impute"] is True and saved.preprocessing["encoder"]["clip"] == 4.0
    # The held-out test users as new files: encoded from raw rows with the saved medians, they score as in training.
    new = []
    for k, p in enumerate(paths):
        frame = pd.read_csv(p, dtype=str, keep_default_na=False)
        test = frame[split_of(frame["id"].to_numpy(dtype=object), 0, 0.2, 0.1) == "test"]
        new.append(str(tmp_path / f"new{k}.csv"))
        test.sample(frac=1, random_state=k).to_csv(new[-1], index=False)
    pred = predict(tmp_path / "run" / "models", new, tmp_path / "pred.csv")
    assert pred.metrics["accuracy"] == pytest.approx(results["rounds"][-1]["test/accuracy"], abs=1e-12)
    # and a new row with an empty cell is filled with the training median, not refused
    ds = load_party(c, 0)
    enc = TabularEncoder.from_state(saved.preprocessing["encoder"])
    row = pd.DataFrame({"f": [np.nan], "g": [50.0], "city": pd.Series([np.nan], dtype=object)})
    x = enc.transform(row)
    assert x[0, enc.feature_names.index("f__missing")] == 1.0 and x[0, enc.feature_names.index("city=missing")] == 1
    np.testing.assert_allclose(enc.transform(row.fillna({"f": enc.medians[0], "city": "missing"}))[0, :2], x[0, :2])
    assert ds.feature_names == enc.feature_names
