"""Train one configuration and write ``results.json`` (and each party's final model) into the Hydra run directory.

    python run_simulation.py                                   # digits, vproto, Flower simulation
    python run_simulation.py engine=inprocess method=vanilla   # all parties in this process
    python run_simulation.py -m method=vproto,vanilla dataset.aligned_fraction=0.02,0.05 seed=0,1

The entry point of a checkout; the program is :mod:`flwr_vproto.cli`, which the installed console script
``flwr-vproto`` and ``python -m flwr_vproto`` run too, with the same overrides and the same results. The names below
are re-exported for code that imports them from here (tests, benchmarks).
"""

from flwr_vproto.cli import _config, main, optuna_defaults, run, run_flower, run_local

__all__ = ["_config", "main", "optuna_defaults", "run", "run_flower", "run_local"]

if __name__ == "__main__":
    run()
