"""``flwr-vproto deploy <command>`` (= ``python -m flwr_vproto.deploy <command>``): the parsers, and each command
run by its module, imported only when chosen (``--help`` and a typo load neither Flower nor ``cryptography``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flwr_vproto.deploy import __doc__ as _PACKAGE_DOC

PROG = "flwr-vproto deploy"


def parser(prog: str = PROG) -> argparse.ArgumentParser:
    """Every command's options (what ``--help`` shows; ``tests/test_docs.py`` checks the docs' commands with it)."""
    top = argparse.ArgumentParser(prog=prog, description=(_PACKAGE_DOC or "").split("\n\n")[0],
                                  epilog="docs/deployment.md: deploying from `pip install flwr-vproto`.")
    sub = top.add_subparsers(dest="command", required=True, metavar="{certs,app,connect,local,submit}")

    certs = sub.add_parser("certs", help="TLS certificates and SuperNode keys (cryptography, no openssl)",
                           description="Make the CA, the SuperLink's certificate and SuperNode key pairs into FOLDER.")
    certs.add_argument("folder", type=Path)
    certs.add_argument("--hosts", nargs="*", default=[],
                       help="DNS names / IPs the SuperLink is reached at (localhost and 127.0.0.1 always)")
    certs.add_argument("--supernodes", nargs="*", default=[], help="names of SuperNode key pairs to make")
    certs.add_argument("--days", type=int, default=365, help="validity of the certificates")
    certs.add_argument("--keys-only", action="store_true",
                       help="only the --supernodes key pairs (an organisation making its own), no CA or certificate")
    certs.add_argument("--force", action="store_true", help="replace existing files")

    app = sub.add_parser("app", help="write the Flower app folder that `flwr run` sends",
                         description="Write DIR/pyproject.toml (the installed package's ServerApp and ClientApp, the "
                                     "default run-config) and DIR/README.md: `flwr run DIR ...` then runs flwr_vproto.")
    app.add_argument("folder", type=Path, metavar="DIR")
    app.add_argument("--force", action="store_true", help="replace a pyproject.toml this command did not write")

    connect = sub.add_parser("connect", help="write a SuperLink connection into $FLWR_HOME/config.toml",
                             description="Add a SuperLink connection to $FLWR_HOME/config.toml (default ~/.flwr), "
                                         "the file `flwr run` reads, with Flower's own code.")
    connect.add_argument("--name", required=True, help="the connection's name, e.g. bank-and-shop")
    connect.add_argument("--address", required=True, help="the SuperLink's Control API, host:port (e.g. host:9093)")
    security = connect.add_mutually_exclusive_group(required=True)
    security.add_argument("--root-certificates", help="the CA certificate (PEM) that signed the SuperLink's (TLS)")
    security.add_argument("--insecure", action="store_true", help="no TLS (loopback or a trusted network only)")
    connect.add_argument("--no-default", action="store_true", help="do not make it the default connection")

    local = sub.add_parser("local", help="a SuperLink and one SuperNode per party on loopback, for a try-out",
                           description="Start a SuperLink and one SuperNode per CSV file (the active party's first) "
                                       "on loopback, run once to WORKDIR/results/results.json and stop them by PID; "
                                       "or, with --serve, keep them up until Ctrl-C.")
    local.add_argument("csvs", nargs="*", metavar="CSV",
                       help="each party's file, the active party's (with the labels) first; none: digits cut into "
                            "--passives + 1 files")
    local.add_argument("--passives", type=int, default=1, help="passive parties of the digits try-out (no CSV given)")
    local.add_argument("--run-config", action="append", default=[], metavar="'KEY=VALUE ...'",
                       help="as flwr run's, over the app's defaults and dataset.name='csv'; repeatable")
    local.add_argument("--workdir", type=Path, default=Path("vproto-local"),
                       help="results, models, certificates and every process's log (default ./vproto-local)")
    local.add_argument("--tls", action="store_true",
                       help="TLS and SuperNode authentication (certificates and keys made as `certs` makes them)")
    local.add_argument("--serve", action="store_true",
                       help="run nothing: keep the SuperLink and SuperNodes up until Ctrl-C; prints how to submit")

    submit = sub.add_parser("submit", help="flwr run --stream that exits 1 when the run failed",
                            description="`flwr run <args> --stream`, then exit 0 only if the run completed (Flower "
                                        "1.42's own exits 0 whatever the run's status).")
    submit.add_argument("flwr_args", nargs=argparse.REMAINDER, metavar="APP [SUPERLINK] [flwr run options]")
    return top


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Parse ``argv`` and run the command; a bad input exits 2 with one line ``<command> error: ...``."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    p = parser(prog)
    if args_list[:1] == ["submit"] and not {"-h", "--help"} & set(args_list[1:2]):
        from flwr_vproto.deploy.submit import submit  # flwr run's own arguments, untouched

        if len(args_list) < 2:
            p.error("submit: give flwr run's arguments: APP [SUPERLINK] [options]")
        return submit(args_list[1:])
    args = p.parse_args(args_list)
    try:
        return _COMMANDS[args.command](args)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"{args.command} error: {err}", file=sys.stderr)
        return 2


def _certs(args: argparse.Namespace) -> int:
    from flwr_vproto.deploy.certs import make_certs, make_supernode_keys

    if args.keys_only:
        args.folder.mkdir(parents=True, exist_ok=True)
        made = {f"{n}-{kind}": p for n in args.supernodes
                for kind, p in zip(("key", "pub"), make_supernode_keys(args.folder, n, args.force), strict=True)}
    else:
        made = make_certs(args.folder, args.hosts, args.supernodes, args.days, args.force)
    for name, path in made.items():
        print(f"{name:>16}: {path}")
    return 0


def _app(args: argparse.Namespace) -> int:
    from flwr_vproto.deploy.app import write_app

    folder = write_app(args.folder, force=args.force)
    print(f"wrote {folder / 'pyproject.toml'} and README.md; run with: flwr-vproto deploy submit {folder} "
          f"<superlink> --run-config \"...\" (or flwr run {folder} <superlink> --stream ...)")
    return 0


def _connect(args: argparse.Namespace) -> int:
    from flwr_vproto.deploy.connect import connect

    path = connect(args.name, args.address, args.root_certificates, args.insecure, default=not args.no_default)
    use = "<app>" if not args.no_default else f"<app> {args.name}"
    print(f"wrote [superlink.{args.name}] ({args.address}) to {path}; run with: flwr-vproto deploy submit {use}")
    return 0


def _local(args: argparse.Namespace) -> int:
    from flwr_vproto.deploy.local import run_local

    return run_local(args.csvs, args.passives, args.run_config, args.workdir, args.tls, args.serve)


_COMMANDS = {"certs": _certs, "app": _app, "connect": _connect, "local": _local}
