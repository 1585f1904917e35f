"""Summaries on small tables (issue 29 item 5): what the summary reports against what the saved models give.

Each case splits a table scikit-learn ships (no download) into ``bank.csv`` (ID, label and the first half of the
columns) and ``shop.csv`` (ID and the other half) with a share of the IDs in both files (the rest split evenly
between the two), trains ``dataset=csv`` in process for the default rounds with ``eval_test=every`` (test scores at
every round, so any selection rule can be scored afterwards; training is the same as under ``eval_test=best``),
saves the models, and scores the held-out test users of both files with ``flwr_vproto.predict``. One JSON line per
case: the summary lines, ``final``, the alignment counts, the prediction's metrics and a compact per-round history.

    PYTHONPATH=$PWD python benchmarks/bench_summaries.py --out /tmp/summaries/bench > benchmarks/summaries.jsonl

Run with ``PYTHONPATH`` at another checkout (e.g. main) for the "before" lines: the script only uses public entry
points that exist there too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

CASES = {  # name: (scikit-learn loader, share of IDs in both files, seed of the split and the run)
    "breast_cancer_40_s0": ("load_breast_cancer", 0.4, 0),
    "breast_cancer_40_s1": ("load_breast_cancer", 0.4, 1),
    "breast_cancer_40_s2": ("load_breast_cancer", 0.4, 2),
    "breast_cancer_20_s0": ("load_breast_cancer", 0.2, 0),
    "wine_40_s0": ("load_wine", 0.4, 0),
    "digits_10_s0": ("load_digits", 0.1, 0),
}
KEEP = ("val/accuracy", "val/loss", "val/aligned_users", "val/own_accuracy", "val/own_loss", "val/active_only_kept",
        "test/accuracy", "test/active_only_accuracy", "test/chosen_active_only_accuracy")


def write_split(loader: str, shared: float, seed: int, out: Path) -> list[str]:
    """``bank.csv`` (id, label, first half of the columns) and ``shop.csv`` (id, the rest); ``shared`` of the IDs in
    both, the others half in each (seeded)."""
    import sklearn.datasets as skd

    d = getattr(skd, loader)(as_frame=True)
    x, y = d.data, d.target.to_numpy()
    n = len(x)
    order = np.random.default_rng(seed).permutation(n)
    per_file = int(round((1 + shared) / 2 * n))
    bank_rows, shop_rows = order[:per_file], order[n - per_file:]
    ids = np.array([f"u{k:05d}" for k in range(n)])
    names = np.array([str(c) for c in getattr(d, "target_names", np.unique(y))])
    cols = list(x.columns)
    half = len(cols) // 2
    bank = pd.DataFrame({"id": ids[bank_rows], "label": names[y[bank_rows]]})
    bank = pd.concat([bank, x.iloc[bank_rows][cols[:half]].reset_index(drop=True)], axis=1)
    shop = pd.concat([pd.DataFrame({"id": ids[shop_rows]}), x.iloc[shop_rows][cols[half:]].reset_index(drop=True)],
                     axis=1)
    out.mkdir(parents=True, exist_ok=True)
    bank.to_csv(out / "bank.csv", index=False)
    shop.sample(frac=1, random_state=seed).to_csv(out / "shop.csv", index=False)
    return [str(out / "bank.csv"), str(out / "shop.csv")]


def test_users(paths: list[str], seed: int, cfg, out: Path) -> list[str]:
    """Each file's held-out test users (the loader's keyed hash), as new files for ``predict``."""
    from flwr_vproto.data.csv_files import split_of

    new = []
    for k, p in enumerate(paths):
        frame = pd.read_csv(p, dtype=str)
        keep = split_of(frame["id"].to_numpy(), seed, cfg.dataset.test_fraction, cfg.dataset.val_fraction) == "test"
        new.append(str(out / f"test{k}.csv"))
        frame[keep].to_csv(new[-1], index=False)
    return new


def run_case(name: str, out: Path, extra: dict) -> dict:
    from flwr_vproto.cli import run_local
    from flwr_vproto.config import config_from_dict
    from flwr_vproto.predict import predict
    from flwr_vproto.results import format_summary, per_round

    loader, shared, seed = CASES[name]
    paths = write_split(loader, shared, seed, out / name / "data")
    cfg = config_from_dict({"engine": "inprocess", "seed": seed, "eval_test": "every",
                            "dataset": {"name": "csv", "csv": {"paths": paths}}, **extra})
    start = time.time()
    res = run_local(cfg, {"save_models": True}, out / name / "run")
    seconds = time.time() - start
    files = test_users(paths, seed, cfg, out / name)
    pred = predict(out / name / "run" / "models", files if cfg.method.name != "local" else files[:1])
    history = [{"round": int(r["round"]), **{k: r[k] for k in KEEP if k in r}} for r in per_round(res)]
    return {"case": name, "extra": extra, "seconds": round(seconds, 1), "summary": format_summary(res),
            "final": res["final"], "alignment": res.get("alignment"), "predict": pred.metrics, "history": history}


# ------------------------------------------------------------------------------------------ small validation sets
SUBSAMPLE = {"digits": {"dataset": {"name": "digits"}},
             "adult5": {"dataset": {"name": "adult", "aligned_fraction": 0.05}}}
SIZES = (10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 144, 200, 300, 500, 1000, 2000)


def per_user_history(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train ``name`` (its default config, ``eval_test=every``) and keep, per evaluation round, every aligned
    validation user's correctness and log-loss and every aligned test user's correctness (what the shipped,
    combined prediction gets right): arrays (rounds, users)."""
    from flwr_vproto.config import config_from_dict
    from flwr_vproto.inprocess import run_inprocess
    from flwr_vproto.scoring import ActiveScoring

    kept: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"val": [], "test": []}
    original = ActiveScoring.evaluate

    def evaluate(self, split, passive_embeddings):  # the same scores, and each user's share of them
        p = self.party
        y = p.data.split(split).y[p.aligned[split]]
        probs = self.predict_proba(split, passive_embeddings)["combined"]
        keep = y >= 0
        right = probs[keep].argmax(1) == y[keep]
        loss = -np.log(np.clip(probs[keep, y[keep]], 1e-12, None))
        kept[split].append((right, loss))
        return original(self, split, passive_embeddings)

    ActiveScoring.evaluate = evaluate  # type: ignore[method-assign]
    try:
        res = run_inprocess(config_from_dict({"engine": "inprocess", "eval_test": "every", **SUBSAMPLE[name]}))
    finally:
        ActiveScoring.evaluate = original  # type: ignore[method-assign]
    val_right = np.array([r for r, _ in kept["val"]])
    val_loss = np.array([lo for _, lo in kept["val"]])
    test_right = np.array([r for r, _ in kept["test"]])
    print(f"{name}: final {res['final'].get('accuracy')} best round {res['final'].get('best_round')}",
          file=sys.stderr)
    return val_right, val_loss, test_right


def subsample_gains(val_right: np.ndarray, val_loss: np.ndarray, test_right: np.ndarray, draws: int = 500,
                    seed: int = 0) -> list[dict]:
    """For validation sets of ``n`` users drawn from the run's own (the same users at every round, as in a real
    run): the test accuracy of the round best-validation-accuracy selection picks (ties: lower validation loss,
    then earlier) against the last round's, in points, averaged over ``draws`` draws."""
    rng = np.random.default_rng(seed)
    test_acc = test_right.mean(1)
    rounds = np.arange(len(test_acc))
    out = []
    for n in SIZES:
        if n > val_right.shape[1]:
            continue
        gains = []
        for _ in range(draws):
            users = rng.choice(val_right.shape[1], n, replace=False)
            acc, loss = val_right[:, users].mean(1), val_loss[:, users].mean(1)
            best = max(rounds, key=lambda r: (acc[r], -loss[r], -r))
            gains.append(test_acc[best] - test_acc[-1])
        g = np.array(gains)
        out.append({"n": n, "gain_points": round(100 * g.mean(), 3), "loses_share": round(float((g < 0).mean()), 3),
                    "wins_share": round(float((g > 0).mean()), 3)})
    full = max(rounds, key=lambda r: (val_right[r].mean(), -val_loss[r].mean(), -r))
    out.append({"n": int(val_right.shape[1]), "gain_points": round(100 * (test_acc[full] - test_acc[-1]), 3),
                "full_validation_set": True, "rounds": len(rounds)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/summaries/bench", help="folder for the CSVs and runs")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--method", default="vproto")
    ap.add_argument("--extra", default="{}", help='more config as JSON, e.g. \'{"defence": {"name": "none"}}\'')
    ap.add_argument("--subsample", nargs="+", choices=list(SUBSAMPLE), default=None,
                    help="instead: how best-validation selection fares on n of the run's validation users")
    args = ap.parse_args(argv)
    if args.subsample:
        for name in args.subsample:
            rows = subsample_gains(*per_user_history(name))
            print(json.dumps({"subsample": name, "rows": rows}), flush=True)
        return 0
    for name in args.cases:
        extra = {"method": {"name": args.method}, **json.loads(args.extra)}
        line = run_case(name, Path(args.out) / args.method / str(abs(hash(args.extra))), extra)
        print(json.dumps(line, default=float), flush=True)
        print(name, *line["summary"], f"predict: {line['predict']}", sep="\n  ", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from flwr_vproto.threads import apply_default_threads

    apply_default_threads()
    raise SystemExit(main())
