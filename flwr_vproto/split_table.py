"""Split one table by columns into per-party CSV files that ``dataset=csv`` trains on as intended.

``python -m flwr_vproto.split_table table.csv --id user_id --label label --active-share 0.5 --aligned 0.02 --out dir/``

Why a helper: which users are validation and test users is decided by the loader's keyed hash of the ID
(:func:`flwr_vproto.data.csv_files.split_of`), and only users that *every* party holds are validated and scored
jointly. Keeping a uniform 2 % of the IDs in every file therefore leaves ~2 % of the test users jointly scored. This
tool uses the same hash, so that

- every **validation and test** user is held by every party (all of them are scored jointly),
- a share ``--aligned`` of the **training** users (seeded draw) is held by every party: the aligned users,
- every other training user goes to exactly one party (seeded, equal shares, active party first): the
  non-aligned users each party learns from on its own,
- the label column goes to the active party's file only; feature columns are dealt by ``--active-columns`` or
  ``--active-share`` (the first share of the feature columns, in file order, to the active party) and the rest in
  contiguous, near-equal blocks to the ``--passives`` passive parties.

Files: ``<out>/<table>.active.csv``, ``<out>/<table>.passive1.csv``, ... Cells are copied as text, unchanged (IDs
with leading zeros, ``NA`` tokens and all), apart from surrounding spaces, which the loader strips too. The split
is keyed by ``--seed``: the printed command passes it as ``dataset.csv.split_seed``, so training seeds can be swept
over the same files.

It prints two ways to train on the files, both with absolute data paths and the installed package's commands, so
they work from any directory and need no checkout: a deployment (each party's SuperNode with its ``--node-config``,
then ``python -m flwr_vproto.deploy app vproto-app`` writes the Flower app folder and ``python -m flwr_vproto.deploy
submit vproto-app <superlink> --run-config ...`` runs ``flwr run`` on it; the run-config must name the ID and label
columns and the split seed, since a SuperNode reads only its own ``data-path``) and one process (``python -m
flwr_vproto ...``, the Hydra command of ``run_simulation.py``), the last line.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from flwr_vproto.config import DatasetConfig
from flwr_vproto.data.csv_files import NA_TOKENS, read_csv_text, split_of
from flwr_vproto.data.partition import rng_for, split_counts
from flwr_vproto.data.types import DataError

ALIGNED_STREAM, NONALIGNED_STREAM = 101, 102  # random streams of this tool (see partition.rng_for)
_DEFAULTS = DatasetConfig()


class SplitError(ValueError):
    """A bad option or input table; the message names the option (or file and column) at fault."""


@dataclass
class SplitResult:
    """What :func:`split_table` wrote and how many users play which role."""

    paths: list[Path]  # active first
    columns: list[list[str]]  # feature columns per party
    counts: dict[str, int] = field(default_factory=dict)  # users per role
    command: str = ""  # the Hydra command (``python -m flwr_vproto ...``) that trains on the files
    node_configs: list[str] = field(default_factory=list)  # each party's SuperNode --node-config (active first)
    run_config: str = ""  # the --run-config of ``flwr run`` on those SuperNodes


def _read(table: str) -> pd.DataFrame:
    if not Path(table).is_file():
        raise SplitError(f"table: {table}: file not found")
    try:
        frame = read_csv_text(table)
    except DataError as err:
        raise SplitError(f"table: {err}") from None
    return frame.apply(lambda col: col.str.strip())


def _feature_split(features: list[str], active_columns: list[str] | None, active_share: float | None,
                   passives: int, table: str) -> list[list[str]]:
    if active_columns is not None:
        unknown = [c for c in active_columns if c not in features]
        if unknown:
            raise SplitError(f"--active-columns: {table} has no feature column {unknown[0]!r} (the ID and label "
                             f"columns cannot be dealt); feature columns: {', '.join(features[:10])}"
                             f"{', ...' if len(features) > 10 else ''}")
        if len(set(active_columns)) != len(active_columns):
            raise SplitError(f"--active-columns: a column is listed twice: {','.join(active_columns)}")
        active = [c for c in features if c in set(active_columns)]
    else:
        assert active_share is not None
        active = features[:max(1, int(round(active_share * len(features))))]
    rest = [c for c in features if c not in set(active)]
    option = "--active-columns" if active_columns is not None else f"--active-share={active_share}"
    if not active:
        raise SplitError(f"{option}: the active party gets no feature column")
    if len(rest) < passives:
        raise SplitError(f"{option}: leaves {len(rest)} feature column(s) for --passives={passives} passive "
                         f"part{'y' if passives == 1 else 'ies'}; each needs at least one")
    return [active] + [list(block) for block in np.array_split(np.array(rest, dtype=object), passives)]


HYDRA_PROGRAM = "python -m flwr_vproto"  # what run_simulation.py does, from any directory (the package's __main__)
DEPLOY_PROGRAM = "python -m flwr_vproto.deploy"  # = flwr-vproto deploy: works from an install, no checkout
APP_FOLDER = "vproto-app"  # the Flower app folder `deploy app` writes (relative: where the user runs flwr)


def hydra_command(paths: list[Path], id_column: str, label_column: str, seed: int, val_fraction: float,
                  test_fraction: float) -> str:
    """The Hydra command line (``python -m flwr_vproto``, as ``run_simulation.py``) that trains on ``paths`` with
    the split they were written for."""
    listed = ",".join('"' + str(p.resolve()).replace('"', '\\"') + '"' for p in paths)
    parts = [HYDRA_PROGRAM, "dataset=csv", f"dataset.num_passive={len(paths) - 1}",
             shlex.quote(f"dataset.csv.paths=[{listed}]"), shlex.quote(f"dataset.csv.id_column={id_column}"),
             shlex.quote(f"dataset.csv.label_column={label_column}"), f"dataset.csv.split_seed={seed}"]
    if val_fraction != _DEFAULTS.val_fraction:
        parts.append(f"dataset.val_fraction={val_fraction}")
    if test_fraction != _DEFAULTS.test_fraction:
        parts.append(f"dataset.test_fraction={test_fraction}")
    return " ".join(parts)


def toml_string(value: str, option: str) -> str:
    """``value`` as a TOML string that Flower's ``--run-config``/``--node-config`` parser keeps whole.

    Why this care: Flower splits those options with a regular expression that ends a double-quoted value at the
    first ``"`` (escaped or not), so a value is written as a basic string (``"..."``, JSON escapes) when it holds no
    double quote, else as a literal string (``'...'``, no escapes) when it holds no single quote.
    """
    if '"' not in value and "\n" not in value:
        return json.dumps(value)
    if "'" not in value and "\n" not in value:
        return f"'{value}'"
    raise SplitError(f"{option}: {value!r} holds both quote characters (or a line break), which Flower's "
                     f"--run-config/--node-config cannot carry; rename it")


def flwr_node_configs(paths: list[Path]) -> list[str]:
    """Each party's SuperNode ``--node-config`` (active first): its role, index and its own file, absolute."""
    return [f'role="{"active" if i == 0 else "passive"}" party-index={i} '
            f'data-path={toml_string(str(p.resolve()), "--out")}' for i, p in enumerate(paths)]


def flwr_run_config(num_passive: int, id_column: str, label_column: str, seed: int, val_fraction: float,
                    test_fraction: float) -> str:
    """The ``flwr run --run-config`` for these files: every ``dataset.*`` option whose value differs from the
    run-config's defaults (``[tool.flwr.app.config]``), i.e. everything :func:`hydra_command` sets except the
    paths, which each SuperNode's node-config ``data-path`` gives."""
    parts = ['dataset.name="csv"', f"dataset.num_passive={num_passive}",
             f"dataset.csv.id_column={toml_string(id_column, '--id')}",
             f"dataset.csv.label_column={toml_string(label_column, '--label')}", f"dataset.csv.split_seed={seed}"]
    if val_fraction != _DEFAULTS.val_fraction:
        parts.append(f"dataset.val_fraction={val_fraction}")
    if test_fraction != _DEFAULTS.test_fraction:
        parts.append(f"dataset.test_fraction={test_fraction}")
    return " ".join(parts)


def split_table(
    table: str, id_column: str, label_column: str, out: str, *, active_share: float | None = None,
    active_columns: list[str] | None = None, passives: int = 1, aligned: float = _DEFAULTS.aligned_fraction,
    seed: int = 0, val_fraction: float = _DEFAULTS.val_fraction, test_fraction: float = _DEFAULTS.test_fraction,
) -> SplitResult:
    """Write one CSV per party from ``table`` (see the module docstring); raise :class:`SplitError` on bad input."""
    if (active_share is None) == (active_columns is None):
        raise SplitError("--active-share / --active-columns: give exactly one of them")
    if active_share is not None and not 0 < active_share < 1:
        raise SplitError(f"--active-share={active_share}: expected a number in (0, 1), the active party's share of "
                         f"the feature columns")
    if passives < 1:
        raise SplitError(f"--passives={passives}: expected an integer >= 1")
    if not 0 < aligned <= 1:
        raise SplitError(f"--aligned={aligned}: expected a number in (0, 1], the share of training users every "
                         f"party holds")
    if seed < 0:
        raise SplitError(f"--seed={seed}: expected an integer >= 0")
    for name, v in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 < v < 1:
            raise SplitError(f"{name}={v}: expected a number in (0, 1)")
    if val_fraction + test_fraction >= 1:
        raise SplitError(f"--val-fraction={val_fraction}: with --test-fraction={test_fraction} no user is left "
                         f"for training (their sum must be < 1)")
    frame = _read(table)
    for option, column in (("--id", id_column), ("--label", label_column)):
        if column not in frame.columns:
            raise SplitError(f"{option}: {table} has no column {column!r}; columns: "
                             f"{', '.join(list(frame.columns)[:10])}{', ...' if len(frame.columns) > 10 else ''}")
    if id_column == label_column:
        raise SplitError(f"--label: {label_column!r} is also the --id column")
    ids = frame[id_column]
    empty = ids.isin(NA_TOKENS)
    if empty.any():
        line = int(np.flatnonzero(empty.to_numpy())[0]) + 2
        raise SplitError(f"--id: {table}: column {id_column!r} has {int(empty.sum())} empty ID(s) (first on line "
                         f"{line}, token {ids[empty].iloc[0]!r}); every user needs an ID")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise SplitError(f"--id: {table}: column {id_column!r} has {dup.nunique()} duplicated ID(s), e.g. "
                         f"{dup.iloc[0]!r}; one row per user")
    features = [c for c in frame.columns if c not in (id_column, label_column)]
    columns = _feature_split(features, active_columns, active_share, passives, table)

    split = split_of(ids.to_numpy(dtype=object), seed, test_fraction, val_fraction)
    train = np.flatnonzero(split == "train")
    n_aligned = int(round(aligned * len(train)))
    if n_aligned < 2:
        raise SplitError(f"--aligned={aligned}: gives {n_aligned} aligned user(s) of {len(train)} training users; "
                         f"vertical training needs at least 2")
    order = rng_for(seed, ALIGNED_STREAM).permutation(train)
    aligned_rows, rest = order[:n_aligned], order[n_aligned:]
    rest = rng_for(seed, NONALIGNED_STREAM).permutation(rest)
    bounds = np.cumsum([0, *split_counts(len(rest), [1.0 / (passives + 1)] * (passives + 1))])
    shared = np.flatnonzero(split != "train")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(table).name.removesuffix(".csv").removesuffix(".CSV")
    paths = [out_dir / f"{stem}.{'active' if p == 0 else f'passive{p}'}.csv" for p in range(len(columns))]
    node_configs = flwr_node_configs(paths)  # before writing: a path Flower's node-config cannot carry is refused
    run_config = flwr_run_config(passives, id_column, label_column, seed, val_fraction, test_fraction)
    for p, (cols, path) in enumerate(zip(columns, paths, strict=True)):
        rows = np.sort(np.concatenate([shared, aligned_rows, rest[bounds[p]:bounds[p + 1]]]))
        keep = [id_column, *cols, *([label_column] if p == 0 else [])]
        frame.iloc[rows][keep].to_csv(path, index=False)
    counts = {"users": len(frame), "test": int((split == "test").sum()), "val": int((split == "val").sum()),
              "train": len(train), "aligned": n_aligned,
              **{f"nonaligned_{'active' if p == 0 else f'passive{p}'}": int(bounds[p + 1] - bounds[p])
                 for p in range(passives + 1)}}
    command = hydra_command(paths, id_column, label_column, seed, val_fraction, test_fraction)
    return SplitResult(paths=paths, columns=columns, counts=counts, command=command,
                       node_configs=node_configs, run_config=run_config)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flwr_vproto.split_table", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", help="the whole table: one row per user, an ID column, a label column, features")
    ap.add_argument("--id", required=True, dest="id_column", help="the user-ID column")
    ap.add_argument("--label", required=True, dest="label_column", help="the label column (active file only)")
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--active-share", type=float, help="share of the feature columns (in file order) for the active "
                     "party, in (0, 1)")
    who.add_argument("--active-columns", help="comma-separated feature columns for the active party")
    ap.add_argument("--passives", type=int, default=1, help="number of passive parties (default 1)")
    ap.add_argument("--aligned", type=float, default=_DEFAULTS.aligned_fraction,
                    help=f"share of the training users every party holds (default {_DEFAULTS.aligned_fraction})")
    ap.add_argument("--seed", type=int, default=0, help="key of the split hash and of the draws (default 0)")
    ap.add_argument("--val-fraction", type=float, default=_DEFAULTS.val_fraction,
                    help=f"as dataset.val_fraction (default {_DEFAULTS.val_fraction})")
    ap.add_argument("--test-fraction", type=float, default=_DEFAULTS.test_fraction,
                    help=f"as dataset.test_fraction (default {_DEFAULTS.test_fraction})")
    ap.add_argument("--out", required=True, help="output folder")
    args = ap.parse_args(argv)
    active_columns = None if args.active_columns is None else [c.strip() for c in args.active_columns.split(",")
                                                                if c.strip()]
    try:
        res = split_table(args.table, args.id_column, args.label_column, args.out, active_share=args.active_share,
                          active_columns=active_columns, passives=args.passives, aligned=args.aligned,
                          seed=args.seed, val_fraction=args.val_fraction, test_fraction=args.test_fraction)
    except SplitError as err:
        print(f"split_table: {err}", file=sys.stderr)
        return 2
    c = res.counts
    print(f"{c['users']} users: {c['test']} test and {c['val']} validation users in every file; {c['aligned']} of "
          f"{c['train']} training users aligned (in every file), the other {c['train'] - c['aligned']} each in one "
          f"file")
    for path, cols in zip(res.paths, res.columns, strict=True):
        print(f"  {path}: {len(cols)} feature column(s)")
    print("Train on them in a deployment (flwr run; docs/deployment.md): start each party's SuperNode with")
    for path, node_config in zip(res.paths, res.node_configs, strict=True):
        print(f"  --node-config {shlex.quote(node_config)}    # {path.name}")
    print("then write the Flower app folder (once) and submit the run (flwr run --stream; exit 1 if the run fails):")
    print(f"  {DEPLOY_PROGRAM} app {APP_FOLDER}")
    print(f"  {DEPLOY_PROGRAM} submit {APP_FOLDER} <superlink> --run-config {shlex.quote(res.run_config)}")
    print("Or try that deployment on this machine (a SuperLink and SuperNodes on loopback, stopped after the run):")
    print(f"  {DEPLOY_PROGRAM} local {' '.join(shlex.quote(str(p.resolve())) for p in res.paths)} --run-config "
          f"{shlex.quote(res.run_config)}")
    print("Or in one process (Flower simulation; add engine=inprocess for the in-process engine):")
    print(f"  {res.command}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
