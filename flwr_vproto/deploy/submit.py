"""``flwr run --stream`` that exits 1 when the run failed (Flower 1.42's own exits 0 whatever the run's status).

    flwr-vproto deploy submit vproto-app bank-and-shop --run-config "dataset.name='csv' app.output-dir='/results'"
    flwr-vproto deploy submit vproto-app            # the default SuperLink connection (e.g. `local`)

``vproto-app`` is the folder ``flwr-vproto deploy app vproto-app`` wrote (any Flower app folder will do).
The arguments are ``flwr run``'s: the app, optionally the SuperLink connection, then its options (``--stream`` is
added). The log is printed as ``flwr run --stream`` prints it; when the run has ended the script asks the SuperLink
for the run's status (``flwr ls <connection> --run-id <id> --format json``) and exits 0 only for
``finished:completed``: 1 for any other status (``finished:failed``, ``finished:stopped``), and ``flwr run``'s own
status when it could not start the run. It prints nothing of its own on success or on a failed run, so the log's
last line (for flwr_vproto: the run's summary, or its one-line ``data error: ...``/``config error: ...``) stays the
last line of the output.

Why a wrapper: in Flower 1.42 ``flwr run --stream`` (``flwr/cli/run/run.py``) starts the run, follows its log until
the log ends and returns; nothing reads the run's status, so a failed run exits 0 (as does ``flwr log``). The status
is recorded by the SuperLink (the ServerApp raising makes it ``finished:failed``) and ``flwr ls`` reports it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from flwr_vproto.deploy import flower_bin

STARTED = re.compile(r"Successfully started run (\d+)")
OK_STATUS = "finished:completed"


def _flwr() -> str:
    return flower_bin("flwr")


def superlink_of(args: list[str]) -> list[str]:
    """The SuperLink connection named among ``flwr run``'s arguments (its second positional), as ``[name]``, or
    ``[]`` for the default connection. Options that take a value (``--run-config X``) are skipped with it."""
    positional, i = [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("-"):
            i += 1 if "=" in a or a in ("--stream", "--help") else 2
            continue
        positional.append(a)
        i += 1
    return positional[1:2]


def run_status(run_id: int, superlink: list[str], env: dict[str, str] | None = None) -> str:
    """The run's status as the SuperLink reports it (``finished:completed``, ``finished:failed``, ...); ``""`` if
    it cannot be read."""
    res = subprocess.run([_flwr(), "ls", *superlink, "--run-id", str(run_id), "--format", "json"], env=env,
                         capture_output=True, text=True, timeout=120)
    try:
        runs = json.loads(res.stdout[res.stdout.index("{"):]).get("runs", [])
        return str(runs[0].get("status", "")) if runs else ""
    except (ValueError, KeyError, IndexError, AttributeError):
        return ""


def submit(argv: list[str]) -> int:
    """Run ``flwr run <argv> --stream``, echo its output, return 0 only if the run completed."""
    args = list(argv)
    if "--stream" not in args:
        args.append("--stream")
    env = dict(os.environ)
    proc = subprocess.Popen([_flwr(), "run", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, bufsize=1)
    run_id = None
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if run_id is None and (m := STARTED.search(line)):
            run_id = int(m.group(1))
    code = proc.wait()
    if run_id is None:  # never started: flwr run's own message is above
        return code or 1
    return 0 if run_status(run_id, superlink_of(args), env) == OK_STATUS else 1

