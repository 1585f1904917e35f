"""Datasets and vertical partitioning: who holds which user, labels, per-party encoding, CSV input and its errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_csvs

from flwr_vproto.config import ConfigError, config_from_dict
from flwr_vproto.data import DataError, clear_cache, dataset_classes, load_party, load_vertical_dataset
from flwr_vproto.data import adult as adult_module
from flwr_vproto.data.types import VerticalDataset

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")


def cfg(seed: int = 0, **dataset):
    return config_from_dict({"seed": seed, "dataset": dataset})


def ids(party, split: str) -> set[str]:
    return set(party.split(split).ids.tolist())


def check_partition(ds: VerticalDataset, total_users: int | None = None) -> None:
    """Invariants of design §2 for a simulated dataset."""
    active, passives = ds.active, ds.passives
    for p in ds.parties:
        assert ids(p, "train").isdisjoint(ids(p, "val"))
        assert ids(p, "train").isdisjoint(ids(p, "test"))
        assert ids(p, "val").isdisjoint(ids(p, "test"))
        for split in ("train", "val", "test"):
            data = p.split(split)
            assert len(set(data.ids.tolist())) == len(data) == len(data.y_true)
            assert data.x.dtype == np.float32 and data.x.shape == (len(data), int(np.prod(p.input_shape)))
            assert all(isinstance(i, str) for i in data.ids[:5])
        if p.role == "passive":
            assert all(p.split(s).y is None for s in ("train", "val", "test"))
    # Validation users are held by every party.
    assert all(ids(p, "val") == ids(active, "val") for p in passives)
    # Aligned = intersection of the training IDs; non-aligned users belong to exactly one party.
    aligned = set.intersection(*(ids(p, "train") for p in ds.parties))
    nonaligned = [ids(p, "train") - aligned for p in ds.parties]
    for a in range(len(nonaligned)):
        for b in range(a + 1, len(nonaligned)):
            assert nonaligned[a].isdisjoint(ids(ds.parties[b], "train"))
    # Test: every passive holds the same shared test users, all also held by the active party.
    shared_test = ids(passives[0], "test")
    assert all(ids(p, "test") == shared_test for p in passives) and shared_test <= ids(active, "test")
    # Central view: every training-pool user once, val users, shared test users.
    c = ds.central
    assert c is not None
    assert len(c.y["train"]) == len(aligned) + sum(len(n) for n in nonaligned)
    assert len(c.y["val"]) == len(active.val) and len(c.y["test"]) == len(shared_test)
    assert c.x["train"].shape[1] == sum(int(np.prod(p.input_shape)) for p in ds.parties)
    assert c.input_shapes == [p.input_shape for p in ds.parties]
    if total_users is not None:
        everyone = set().union(*(ids(p, s) for p in ds.parties for s in ("train", "val", "test")))
        assert len(everyone) == total_users


# --- simulated datasets --------------------------------------------------------------------------------------------


def test_digits_partition_invariants():
    ds = load_vertical_dataset(cfg(name="digits", aligned_fraction=0.1))
    check_partition(ds, total_users=1797)
    assert ds.num_classes == 10 and ds.class_names == [str(i) for i in range(10)]
    assert [p.input_shape for p in ds.parties] == [(1, 8, 4), (1, 8, 4)]
    assert [p.role for p in ds.parties] == ["active", "passive"]
    assert len(ds.active.test) + len(ds.active.val) + len(ds.central.y["train"]) == 1797
    assert len(ds.active.test) == round(0.2 * 1797)
    aligned = ids(ds.active, "train") & ids(ds.passives[0], "train")
    rest = len(ds.central.y["train"])
    assert len(aligned) == round(0.1 * rest)
    for p in ds.parties:
        assert 0.0 <= p.train.x.min() and p.train.x.max() <= 1.0


def test_aligned_users_cover_every_class_and_at_least_num_classes():
    ds = load_vertical_dataset(cfg(name="digits", aligned_fraction=0.001))
    aligned = ids(ds.active, "train") & ids(ds.passives[0], "train")
    assert len(aligned) == 10
    mask = np.isin(ds.active.train.ids, list(aligned))
    assert sorted(set(ds.active.train.y_true[mask].tolist())) == list(range(10))


def test_row_order_is_shuffled_per_party():
    ds = load_vertical_dataset(cfg(name="digits", aligned_fraction=0.2))
    a, p = ds.active, ds.passives[0]
    aligned = ids(a, "train") & ids(p, "train")
    order_a = [i for i in a.train.ids if i in aligned]
    order_p = [i for i in p.train.ids if i in aligned]
    assert sorted(order_a) == sorted(order_p) and order_a != order_p
    assert list(a.val.ids) != list(p.val.ids)
    assert list(a.train.ids) != sorted(a.train.ids)  # not in ID order either


def test_active_labels_match_truth_and_can_be_hidden():
    ds = load_vertical_dataset(cfg(name="digits"))
    for split in ("train", "val", "test"):
        data = ds.active.split(split)
        np.testing.assert_array_equal(data.y, data.y_true)
        assert ds.passives[0].split(split).y is None
        assert ds.passives[0].split(split).y_true is not None

    hidden = load_vertical_dataset(cfg(name="digits", active_labels_nonaligned=False))
    a, p = hidden.active, hidden.passives[0]
    aligned = np.isin(a.train.ids, list(ids(p, "train")))
    assert (a.train.y[~aligned] == -1).all() and (~aligned).sum() > 0
    np.testing.assert_array_equal(a.train.y[aligned], a.train.y_true[aligned])
    np.testing.assert_array_equal(a.val.y, a.val.y_true)
    np.testing.assert_array_equal(a.test.y, a.test.y_true)


def test_nonaligned_shares_and_active_only_test():
    ds = load_vertical_dataset(cfg(name="digits", nonaligned_shares=[0.8, 0.2], active_only_test_fraction=0.5))
    aligned = ids(ds.active, "train") & ids(ds.passives[0], "train")
    n_active = len(ids(ds.active, "train") - aligned)
    n_passive = len(ids(ds.passives[0], "train") - aligned)
    assert abs(n_active / (n_active + n_passive) - 0.8) < 0.01
    only_active = ids(ds.active, "test") - ids(ds.passives[0], "test")
    assert abs(len(only_active) / len(ds.active.test) - 0.5) < 0.01

    none_only = load_vertical_dataset(cfg(name="digits", active_only_test_fraction=0.0))
    assert ids(none_only.active, "test") == ids(none_only.passives[0], "test")


def test_two_passives_strips_and_central_view():
    ds = load_vertical_dataset(cfg(name="digits", num_passive=2))
    check_partition(ds, total_users=1797)
    assert [p.input_shape for p in ds.parties] == [(1, 8, 3), (1, 8, 3), (1, 8, 2)]
    assert [p.name for p in ds.parties] == ["active", "passive1", "passive2"]
    # The central view's val rows are exactly each user's strips concatenated in party order.
    by_id = [dict(zip(p.val.ids, p.val.x, strict=True)) for p in ds.parties]
    joined = np.stack([np.concatenate([b[i] for b in by_id]) for i in ds.active.val.ids])
    np.testing.assert_array_equal(np.unique(joined, axis=0), np.unique(ds.central.x["val"], axis=0))
    # Strips put back side by side give the original digits, scaled to [0, 1].
    from sklearn.datasets import load_digits

    images = [p.val.x.reshape(-1, *p.input_shape)[:, 0] for p in ds.parties]
    orders = [np.argsort(p.val.ids) for p in ds.parties]
    full = np.concatenate([im[o] for im, o in zip(images, orders, strict=True)], axis=2).reshape(len(ds.active.val), -1)
    originals = {tuple(r) for r in (load_digits().data / 16.0).astype(np.float32)}
    assert all(tuple(r) in originals for r in full)


def test_deterministic_and_load_party_matches():
    c = cfg(name="digits", seed=3)
    ds = load_vertical_dataset(c)
    for index, party in enumerate(ds.parties):
        alone = load_party(c, index)
        np.testing.assert_array_equal(alone.train.ids, party.train.ids)
        np.testing.assert_array_equal(alone.train.x, party.train.x)
    alone.train.x[:] = -5  # callers get copies: the per-process cache stays intact
    assert load_party(c, 1).train.x.min() >= 0
    other = load_vertical_dataset(cfg(name="digits", seed=4))
    assert list(other.active.train.ids) != list(ds.active.train.ids)
    assert dataset_classes(c) == (10, [str(i) for i in range(10)])
    with pytest.raises(DataError, match="party_index"):
        load_party(c, 2)


def test_max_train_users_subsamples_stratified():
    ds = load_vertical_dataset(cfg(name="digits", max_train_users=200))
    assert len(ds.central.y["train"]) + len(ds.active.val) == 200
    assert len(np.unique(ds.central.y["train"])) == 10


def test_too_few_aligned_users_is_an_error():
    with pytest.raises(DataError, match="at least 2 aligned users"):
        load_vertical_dataset(cfg(name="digits", max_train_users=10, val_fraction=0.95))


def test_adult_partition_and_per_party_scaling():
    ds = load_vertical_dataset(cfg(name="adult", max_train_users=4000, aligned_fraction=0.1))
    check_partition(ds)
    assert ds.num_classes == 2 and ds.class_names == ["<=50K", ">50K"]
    assert len(ds.active.test) == 16281  # the official test file
    active_names, passive_names = ds.active.feature_names, ds.passives[0].feature_names
    assert "age" in active_names and "workclass=missing" in active_names and "sex=Female" in active_names
    assert "capital-gain" in passive_names and any(n.startswith("occupation=") for n in passive_names)
    assert not any(n.startswith(("marital-status", "occupation")) for n in active_names)
    for party in ds.parties:
        assert party.input_shape == (len(party.feature_names),)
        numeric = [j for j, n in enumerate(party.feature_names) if "=" not in n]
        assert numeric
        x = party.train.x[:, numeric].astype(np.float64)
        # Standardised on the party's own training rows only: exactly mean 0 / std 1 there, not on other rows.
        np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-4)
        assert np.abs(party.val.x[:, numeric].mean(axis=0)).max() > 1e-3
        onehot = [j for j, n in enumerate(party.feature_names) if "=" in n]
        assert set(np.unique(party.train.x[:, onehot]).tolist()) <= {0.0, 1.0}
    y = ds.active.test.y
    assert 0.2 < y.mean() < 0.28  # >50K is class 1, 23.6 % of the test file


def test_adult_feature_split_override_and_round_robin():
    split = [["age", "sex", "race"], ["workclass", "fnlwgt", "education", "education-num", "marital-status",
                                      "occupation", "relationship", "capital-gain", "capital-loss",
                                      "hours-per-week", "native-country"]]
    ds = load_vertical_dataset(cfg(name="adult", feature_split=split, max_train_users=500))
    assert ds.active.feature_names[0] == "age" and ds.active.input_shape[0] == 1 + 2 + 5
    assert adult_module.party_columns(None, 2) == [adult_module.ACTIVE_COLUMNS,
                                                   ["marital-status", "relationship", "hours-per-week"],
                                                   ["occupation", "capital-gain"]]
    ds2 = load_vertical_dataset(cfg(name="adult", num_passive=2, max_train_users=500))
    check_partition(ds2)


@pytest.mark.parametrize(
    ("split", "match"),
    [
        ([["age", "salary"], ["sex"]], "unknown Adult column 'salary'"),
        ([["age", "sex"], ["sex"]], "column 'sex' is given to party 0 and to party 1"),
        ([["age"], ["sex"]], "missing"),
    ],
)
def test_adult_bad_feature_split(split, match):
    with pytest.raises(ConfigError, match=match):  # checked up front, before any data is read
        cfg(name="adult", feature_split=split)


def test_feature_split_rejected_for_images():
    with pytest.raises(ConfigError, match="adult dataset only"):
        cfg(name="digits", feature_split=[["a"], ["b"]])


@pytest.mark.skipif(not FASHION_ROOT.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_official_split():
    ds = load_vertical_dataset(cfg(name="fashion_mnist", max_train_users=1000, active_only_test_fraction=0.1))
    check_partition(ds)
    assert ds.num_classes == 10 and ds.class_names[0] == "T-shirt/top"
    assert [p.input_shape for p in ds.parties] == [(1, 28, 14), (1, 28, 14)]
    assert len(ds.active.test) == 10_000 and len(ds.passives[0].test) == 9_000
    assert len(ds.central.y["train"]) + len(ds.active.val) == 1000
    assert ds.active.train.x.max() <= 1.0 and ds.active.train.x.max() > 0.9


def test_fashion_mnist_missing_root(tmp_path):
    with pytest.raises(DataError, match=r"nowhere.*apt-get install dataset-fashion-mnist"):
        load_party(cfg(name="fashion_mnist", root=str(tmp_path / "nowhere")), 0)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


def test_fashion_mnist_idx_reader_on_small_files(tmp_path):
    """The IDX parser on hand-made files (gzipped and plain), so it is tested even without the Debian package."""
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (80, 28, 28)), rng.integers(0, 256, (30, 28, 28))
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", train)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(80) % 10)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", test)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(30) % 10)
    ds = load_vertical_dataset(cfg(name="fashion_mnist", root=str(tmp_path), aligned_fraction=0.2))
    check_partition(ds, total_users=110)
    by_id = dict(zip(ds.active.test.ids, ds.active.test.x, strict=True))
    left = {tuple(np.round(r, 6)) for r in (test[:, :, :14].reshape(30, -1) / 255.0).astype(np.float32)}
    assert all(tuple(np.round(v, 6)) in left for v in by_id.values())

    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x1e\x01")  # truncated
    clear_cache()  # the files changed on disk
    with pytest.raises(DataError, match="size does not match"):
        load_party(cfg(name="fashion_mnist", root=str(tmp_path)), 0)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found"):
        load_party(cfg(name="fashion_mnist", root=str(tmp_path)), 0)


# --- csv -----------------------------------------------------------------------------------------------------------


def csv_cfg(paths: list[str], **extra):
    return cfg(name="csv", num_passive=len(paths) - 1, csv={"paths": paths, **extra})


def test_csv_round_trip(tmp_path):
    paths = write_csvs(tmp_path)
    ds = load_vertical_dataset(csv_cfg(paths))
    assert ds.central is None and ds.num_classes == 3 and ds.class_names == ["maybe", "no", "yes"]
    active, passive = ds.parties
    assert sum(len(active.split(s)) for s in ("train", "val", "test")) == 240
    assert sum(len(passive.split(s)) for s in ("train", "val", "test")) == 180
    # The hash split puts a user in the same split on every party.
    for split in ("train", "val", "test"):
        for other in ("train", "val", "test"):
            if split != other:
                assert ids(active, split).isdisjoint(ids(passive, other))
    assert len(active.test) > 20 and len(active.val) > 5
    assert len(ids(active, "train") & ids(passive, "train")) > 50
    # Labels: the file's labels, mapped to sorted class indices.
    raw = pd.read_csv(paths[0], dtype=str).set_index("id")["label"]
    names = np.array(ds.class_names)
    assert (names[active.train.y] == raw.loc[active.train.ids].to_numpy()).all()
    assert passive.train.y is None and active.train.y_true is None
    assert active.feature_names == ["age", "city=Lyon", "city=Nice", "city=Paris"]
    assert passive.feature_names == ["spend", "segment=a", "segment=b"]
    np.testing.assert_allclose(active.train.x[:, 0].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(passive.train.x[:, 0].mean(), 0.0, atol=1e-5)
    assert list(passive.train.ids) != sorted(passive.train.ids)
    assert dataset_classes(csv_cfg(paths)) == (3, ["maybe", "no", "yes"])


def test_csv_load_party_reads_only_its_file(tmp_path):
    paths = write_csvs(tmp_path)
    full = load_vertical_dataset(csv_cfg(paths))
    active_only = load_party(csv_cfg([paths[0], str(tmp_path / "absent.csv")]), 0)
    passive_only = load_party(csv_cfg([str(tmp_path / "absent.csv"), paths[1]]), 1)
    np.testing.assert_array_equal(active_only.train.ids, full.active.train.ids)
    np.testing.assert_array_equal(passive_only.test.x, full.passives[0].test.x)
    assert passive_only.name == "passive1" and passive_only.role == "passive"


def test_csv_numeric_labels_ids_as_strings_and_unknown_labels(tmp_path):
    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    n = 60
    pd.DataFrame({"uid": [f"{k:05d}" for k in range(n)], "f": np.arange(n) * 1.5,
                  "y": [["10", "2", "", "1.0"][k % 4] for k in range(n)]}).to_csv(a, index=False)
    pd.DataFrame({"uid": [f"{k:05d}" for k in range(n)], "g": np.arange(n) % 7}).to_csv(b, index=False)
    ds = load_vertical_dataset(csv_cfg([str(a), str(b)], id_column="uid", label_column="y"))
    assert ds.class_names == ["1", "2", "10"]  # numeric order, "1.0" is class "1"
    assert ds.active.train.ids[0].startswith("0") and len(ds.active.train.ids[0]) == 5  # leading zeros kept
    every = np.concatenate([ds.active.split(s).y for s in ("train", "val", "test")])
    assert (every == -1).sum() == n // 4  # empty label cells: unlabelled rows


def test_csv_declared_classes_fix_the_order_and_refuse_other_labels(tmp_path):
    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    n = 60
    pd.DataFrame({"id": range(n), "f": np.arange(n) * 1.5,
                  "y": [["yes", "no", ""][k % 3] for k in range(n)]}).to_csv(a, index=False)
    pd.DataFrame({"id": range(n), "g": np.arange(n) % 7}).to_csv(b, index=False)
    # declared order wins over sorting, and a declared class absent from the file still exists
    ds = load_vertical_dataset(csv_cfg([str(a), str(b)], label_column="y", classes=["yes", "no", "maybe"]))
    assert ds.class_names == ["yes", "no", "maybe"] and ds.num_classes == 3
    assert dataset_classes(csv_cfg([str(a), str(b)], label_column="y", classes=["yes", "no", "maybe"]))[0] == 3
    y = np.concatenate([ds.active.split(s).y for s in ("train", "val", "test")])
    assert set(y.tolist()) == {-1, 0, 1}
    with pytest.raises(DataError, match=rf"{a}: column 'y' has the label 'no', which is not one of the classes "
                                        r"\['yes', 'maybe'\] \(dataset.csv.classes\)"):
        load_vertical_dataset(csv_cfg([str(a), str(b)], label_column="y", classes=["yes", "maybe"]))
    with pytest.raises(DataError, match="label 'no'"):  # the active party alone (what a deployed SuperNode reads)
        load_party(csv_cfg([str(a), str(b)], label_column="y", classes=["yes", "maybe"]), 0)
    # numeric classes match numeric labels by value ("1.0" is class 1)
    pd.DataFrame({"id": range(n), "f": range(n), "y": [["1.0", "0", "2"][k % 3] for k in range(n)]}).to_csv(
        a, index=False)
    ds = load_vertical_dataset(csv_cfg([str(a), str(b)], label_column="y", classes=[2, 1, 0]))
    assert ds.class_names == ["2", "1", "0"]
    raw = pd.read_csv(a, dtype=str).set_index("id")["y"]
    want = {"1.0": 1, "0": 2, "2": 0}
    assert [int(v) for v in ds.active.train.y] == [want[raw[str(i)]] for i in ds.active.train.ids]
    with pytest.raises(DataError, match="label '2'"):
        load_vertical_dataset(csv_cfg([str(a), str(b)], label_column="y", classes=[0, 1]))


def test_csv_tiny_files_with_empty_splits(tmp_path):
    a = _write(tmp_path / "a.csv", "id,f,c,label\n1,0.5,x,a\n2,1.5,y,b\n3,2.5,x,a\n")
    b = _write(tmp_path / "b.csv", "id,g\n1,1\n2,2\n3,3\n")
    ds = load_vertical_dataset(csv_cfg([a, b]))
    for party in ds.parties:
        for split in ("train", "val", "test"):
            data = party.split(split)
            assert data.x.shape == (len(data.ids), party.input_shape[0])


def test_csv_missing_class_in_aligned_rows_is_fine(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    pd.DataFrame({"id": range(100), "f": range(100), "label": [0] * 50 + [1] * 50}).to_csv(a, index=False)
    pd.DataFrame({"id": range(50), "g": range(50)}).to_csv(b, index=False)  # only class-0 users are aligned
    ds = load_vertical_dataset(csv_cfg([str(a), str(b)]))
    aligned = np.isin(ds.active.train.ids, ds.passives[0].train.ids)
    assert set(ds.active.train.y[aligned].tolist()) == {0}


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


GOOD_ACTIVE = "id,f,label\n" + "".join(f"{k},{k},{k % 2}\n" for k in range(40))
GOOD_PASSIVE = "id,g\n" + "".join(f"{k},{k * 2}\n" for k in range(40))


@pytest.mark.parametrize(
    ("active", "passive", "match"),
    [
        (None, GOOD_PASSIVE, r"CSV file not found: .*missing\.csv"),
        ("", GOOD_PASSIVE, r"a\.csv: the CSV file is empty"),
        ("id,f,label\n", GOOD_PASSIVE, r"a\.csv: the CSV file has a header but no data rows"),
        ("user,f,label\n1,2,0\n2,3,1\n", GOOD_PASSIVE, r"a\.csv: no ID column 'id'"),
        ("id,f\n1,2\n2,3\n", GOOD_PASSIVE, r"a\.csv: the active party's file has no label column 'label'"),
        ("id,f,label\n1,2,0\n2,3,1\n1,4,0\n3,1,1\n3,2,0\n", GOOD_PASSIVE,
         r"a\.csv: 2 ID\(s\) appear more than once .*'1', '3'"),
        ("id,f,label\n1,2,0\n2,,1\n3,,0\n", GOOD_PASSIVE, r"a\.csv: column 'f' has 2 empty/NaN value\(s\)"),
        ("id,f,label\n1,2,0\n2,3,1\n3,4,0\n4,oops,1\n", GOOD_PASSIVE,
         r"a\.csv: column 'f' looks numeric but 1 value\(s\) are not numbers, e.g. 'oops'"),
        (GOOD_ACTIVE, "id,g,label\n1,2,0\n", r"b\.csv: passive party 1 has the label column"),
        (GOOD_ACTIVE, "id,g\n1,inf\n2,3\n", r"b\.csv: column 'g' has 1 infinite value"),
        ("id,f,label\n1,2,0\n2,3,0\n", GOOD_PASSIVE, r"a\.csv: label column 'label' has a single class"),
        ("id,label\n1,0\n2,1\n", GOOD_PASSIVE, r"a\.csv: no feature columns"),
    ],
)
def test_csv_bad_input(tmp_path, active, passive, match):
    a = str(tmp_path / "missing.csv") if active is None else _write(tmp_path / "a.csv", active)
    b = _write(tmp_path / "b.csv", passive)
    with pytest.raises(DataError, match=match):
        load_vertical_dataset(csv_cfg([a, b]))


def test_csv_column_neither_numeric_nor_categorical(tmp_path):
    n = 60
    text = "id,note,label\n" + "".join(f"{k},free text {k},{k % 2}\n" for k in range(n))
    a = _write(tmp_path / "a.csv", text)
    b = _write(tmp_path / "b.csv", "id,g\n" + "".join(f"{k},{k}\n" for k in range(n)))
    with pytest.raises(DataError, match=r"a\.csv: column 'note' is neither numeric nor categorical.*'free text 0'"):
        load_party(csv_cfg([a, b]), 0)


def test_csv_too_few_aligned_users(tmp_path):
    a = _write(tmp_path / "a.csv", "id,f,label\n" + "".join(f"a{k},{k},{k % 2}\n" for k in range(40)))
    b = _write(tmp_path / "b.csv", "id,g\n" + "".join(f"b{k},{k}\n" for k in range(40)))
    with pytest.raises(DataError, match="fewer than 2|at least 2 aligned users"):
        load_vertical_dataset(csv_cfg([a, b]))
