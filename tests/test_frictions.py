"""Issue 22, item 6: the split helper's ``flwr run`` form works for the user's own CSV files, and a failed
``flwr run`` says so (exit status 1 through ``flwr-vproto deploy submit``, its one-line error the log's last line).

These tests parse what ``python -m flwr_vproto.split_table`` prints exactly as Flower parses it and load every
party's data from it as a deployed ClientApp does; ``tests/test_package.py`` runs the printed commands on a
loopback deployment from the wheel, outside any checkout.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from conftest import write_table
from flwr.common.config import get_fused_config_from_dir, parse_config_args
from hydra.core.override_parser.overrides_parser import OverridesParser

from flwr_vproto.data import load_party
from flwr_vproto.deploy import local as deploy
from flwr_vproto.deploy import submit as flwr_run
from flwr_vproto.deploy.app import write_app
from flwr_vproto.run_config import config_from_run_config
from flwr_vproto.split_table import main

DEPLOY = "python -m flwr_vproto.deploy"


def printed_forms(out: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """From the split helper's output: each SuperNode's ``--node-config`` value, the command writing the app folder,
    the ``submit`` command and the Hydra command, each as its shell words."""
    lines = [ln.strip() for ln in out.strip().splitlines()]
    nodes = [shlex.split(ln, comments=True)[1] for ln in lines if ln.startswith("--node-config ")]
    app = next(shlex.split(ln) for ln in lines if ln.startswith(f"{DEPLOY} app "))
    submit = next(shlex.split(ln) for ln in lines if ln.startswith(f"{DEPLOY} submit "))
    return nodes, app, submit, shlex.split(lines[-1])


def capsys_out(tmp_path: Path) -> list[str]:
    """What :func:`split` printed last (kept beside the parties' files)."""
    return (tmp_path / "printed.txt").read_text().splitlines()


def split(tmp_path: Path, capsys, **extra: str) -> tuple[list[str], list[str], list[str], list[str]]:
    write_table(tmp_path / "own.csv")
    args = [str(tmp_path / "own.csv"), "--id", "customer no", "--label", "defaulted", "--active-share", "0.5",
            "--aligned", "0.1", "--seed", "3", "--out", str(tmp_path / "parties")]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    assert main(args) == 0
    out = capsys.readouterr().out
    (tmp_path / "printed.txt").write_text(out)
    return printed_forms(out)


def test_the_printed_flwr_run_form_names_every_csv_option_and_loads_each_party(tmp_path, capsys):
    """The run-config names every option the Hydra command sets (the paths aside: each node-config's data-path),
    with the same values, parsed by Flower's own parser; each party's data then loads from its node-config alone.
    Every command is the installed package's (no checkout path): the app folder is written by ``deploy app``."""
    nodes, app, flwr, hydra = split(tmp_path, capsys, val_fraction="0.15", passives="2")
    assert app == [*DEPLOY.split(), "app", "vproto-app"] and flwr[:5] == [*DEPLOY.split(), "submit", "vproto-app"]
    assert flwr[5] == "<superlink>"
    local = next(shlex.split(ln.strip()) for ln in capsys_out(tmp_path) if f"{DEPLOY} local " in ln)
    assert local[4:-2] == [str((tmp_path / "parties" / f"own.{p}.csv").resolve())
                           for p in ("active", "passive1", "passive2")]
    assert local[-2:] == flwr[-2:]  # the same run-config
    assert hydra[:3] == ["python", "-m", "flwr_vproto"]  # what run_simulation.py does, from any directory
    overrides = parse_config_args([flwr[flwr.index("--run-config") + 1]])
    hydra_set = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(hydra[3:])}
    assert hydra_set.pop("dataset") == overrides.pop("dataset.name") == "csv"
    paths = hydra_set.pop("dataset.csv.paths")
    assert overrides == hydra_set, (overrides, hydra_set)  # every CSV option, same values
    assert {"dataset.csv.id_column", "dataset.csv.label_column", "dataset.csv.split_seed"} <= set(overrides)

    folder = write_app(tmp_path / app[-1])  # what the printed `deploy app` writes
    fused = get_fused_config_from_dir(folder, overrides)  # what the ServerApp and every ClientApp read
    base, _ = config_from_run_config(fused)
    assert (base.dataset.csv.id_column, base.dataset.csv.label_column) == ("customer no", "defaulted")
    val_users = []
    for k, node in enumerate(nodes):
        nc = parse_config_args([node])
        assert nc["party-index"] == k and nc["role"] == ("active" if k == 0 else "passive")
        assert nc["data-path"] == paths[k] and Path(nc["data-path"]).is_absolute()
        cfg, _ = config_from_run_config(fused, party_index=k, data_path=nc["data-path"])
        val_users.append(set(load_party(cfg, k).val.ids.tolist()))
    assert len(nodes) == 3 and val_users[0] == val_users[1] == val_users[2] and val_users[0]


def test_a_value_flower_cannot_carry_is_refused_before_any_file_is_written(tmp_path, capsys):
    table = write_table(tmp_path / "own.csv").rename(columns={"customer no": "it's \"odd\""})
    table.to_csv(tmp_path / "own.csv", index=False)
    rc = main([str(tmp_path / "own.csv"), "--id", "it's \"odd\"", "--label", "defaulted", "--active-share", "0.5",
               "--out", str(tmp_path / "parties")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("split_table: --id: ") and len(err.splitlines()) == 1, err
    assert not list((tmp_path / "parties").glob("*.csv"))


def test_flwr_run_wrapper_finds_the_superlink_among_flwr_runs_arguments():
    assert flwr_run.superlink_of([".", "bank", "--run-config", "a=1 b='x'"]) == ["bank"]
    assert flwr_run.superlink_of([".", "--run-config", "a=1", "bank", "--stream"]) == ["bank"]
    assert flwr_run.superlink_of([".", "--stream", "--run-config=a=1"]) == []


def test_the_serverapp_keeps_flowers_report_of_its_failure_out_of_the_log():
    """After the one line, Flower's traceback of that very exception and its exit message are dropped; any other
    record, and everything before a failure, passes."""
    import logging

    from flwr_vproto.config import ConfigError
    from flwr_vproto.server_app import OneLineFailure

    def record(msg: str, exc: BaseException | None = None, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("flwr", level, __file__, 1, msg, (), (type(exc), exc, None) if exc else None)

    f = OneLineFailure()
    exit_msg = record("Exit Code: 201\nAn unhandled exception occurred in the ServerApp.")
    assert f.filter(exit_msg)  # no failure reported yet: Flower's own exits are kept
    err = f.fail("config error: invalid method.name='nope'", ConfigError)
    assert isinstance(err, ConfigError) and str(err) == "config error: invalid method.name='nope'"
    assert not f.filter(record("ServerApp raised an exception", err)) and not f.filter(exit_msg)
    assert f.filter(record("ServerApp raised an exception", ValueError("other")))
    assert f.filter(record("Failed to push task output: timeout"))


def test_local_deployment_reports_a_failed_run_by_its_last_log_line():
    log = ("\x1b[92mINFO \x1b[0m:      Start `flwr-serverapp` process\n\x1b[91mERROR \x1b[0m:     data error: active "
           "(node 7) during discovery: /d/a.csv: no label column 'nope'\n\n")
    err = deploy.RunFailed(7, "finished:failed", log)
    assert err.line == "data error: active (node 7) during discovery: /d/a.csv: no label column 'nope'"
    assert str(err).splitlines()[0] == f"run 7 ended (finished:failed) without results: {err.line}"


def test_waiting_for_a_run_reads_its_end_off_the_superlink_log_and_asks_flwr_ls_rarely(tmp_path, monkeypatch):
    """Each ``flwr ls`` starts the flwr CLI (seconds of CPU): while the SuperLink's log shows no end of the run it
    is asked once at the start and then every ``status_every`` s; the log's ``Finished task … of run <id>`` line,
    written once the SuperLink has recorded the end, gets the status at once (another run's line does not)."""
    dep = deploy.LocalDeployment(tmp_path, [])
    log = tmp_path / "superlink.log"
    log.write_text("INFO :      Finished task 3 of run 71\n")  # run 7's prefix, another run
    asked: list[float] = []
    state = {"status": "running"}
    monkeypatch.setattr(dep, "run_status", lambda run_id: asked.append(run_id) or state["status"])
    clock = {"now": 0.0}
    monkeypatch.setattr(deploy.time, "monotonic", lambda: clock["now"])

    def sleep(seconds: float) -> None:
        clock["now"] += seconds
        if clock["now"] >= 40.0 and state["status"] == "running":  # the run ends at 40 s
            state["status"] = "finished:completed"
            with log.open("a") as f:
                f.write("\x1b[92mINFO \x1b[0m:      Finished task 9 of run 7\n")

    monkeypatch.setattr(deploy.time, "sleep", sleep)
    assert dep.wait(7, timeout=600.0, status_every=30.0) == "finished:completed"
    assert len(asked) == 3 and clock["now"] == 40.0  # at 0 s, at 30 s, and when the log says so


def test_deploy_local_refuses_a_missing_file_or_a_lone_party_in_one_line_before_starting_anything(tmp_path, capsys):
    from flwr_vproto.deploy.cli import main as deploy_main

    bank = tmp_path / "bank.csv"
    bank.write_text("id,label\n1,a\n")
    work = tmp_path / "work"
    for args, said in (([str(bank), str(tmp_path / "shop.csv")], f"{tmp_path / 'shop.csv'}: CSV file not found"),
                       ([str(bank)], "give every party's CSV file (the active party's first), at least two")):
        assert deploy_main(["local", *args, "--workdir", str(work)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"local error: {said}") and len(err.splitlines()) == 1, err
    assert not work.exists()  # nothing started, nothing written
