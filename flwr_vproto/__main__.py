"""``python -m flwr_vproto``: the same program as the ``flwr-vproto`` console script and ``run_simulation.py``."""

from flwr_vproto.cli import run

if __name__ == "__main__":
    run()
