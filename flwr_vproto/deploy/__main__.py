"""``python -m flwr_vproto.deploy <command>``: the same as ``flwr-vproto deploy <command>``."""

from flwr_vproto.deploy.cli import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m flwr_vproto.deploy"))
