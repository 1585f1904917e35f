"""The ServerApp: runs :class:`~flwr_vproto.strategy.VerticalProtoStrategy` and writes ``results.json``.

Under ``flwr run .`` (simulation or deployment) the config comes from the run-config (``[tool.flwr.app.config]``
in ``pyproject.toml`` plus ``--run-config`` overrides, see :func:`flwr_vproto.run_config.config_from_run_config`);
``results.json`` goes to ``app.output-dir`` (default ``./outputs/flwr-run-<run id>`` under the ServerApp's working
directory, i.e. where the SuperLink was started). With ``app.predict`` set (``"held-out"`` or ``"file"``) it runs the
prediction query round instead of training, logs one line naming where the active party wrote its predictions CSV
(on its own node; the predictions stay there) and writes only ``prediction.json`` (counts, accuracy, that path).
``run_simulation.py`` builds its own ServerApp around a strategy object it keeps, so it can read the results back.

The log ends with the run's summary (:func:`flwr_vproto.results.format_summary`, the same lines
``run_simulation.py`` prints). A run never overwrites a ``results.json`` already in ``app.output-dir``: it writes
``results-2.json`` beside it. When a party fails (a SuperNode's bad data file, say), the log's last line is one line
naming the party, the phase and the party's own message (``data error: passive1 (node 7) during discovery:
/data/shop.csv: column 'x' has 1 empty/NaN value(s) ...``; :func:`flwr_vproto.checks.party_error_line`), not the
ClientApp's wrapped traceback. A config error in the run-config ends the log the same way (``config error: ...``).
Either way the ServerApp then raises, so the run's status is ``finished:failed`` (``flwr ls``), and Flower's own
report of that exception (its traceback and ``Exit Code: 201 ...``) is left out of the log (:class:`OneLineFailure`):
the one line stays the last. ``flwr run --stream`` itself exits 0 whatever the run's status in Flower 1.42;
``flwr-vproto deploy submit`` is ``flwr run --stream`` that exits 1 when the run failed (docs/deployment.md).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flwr_vproto.checks import party_error_line
from flwr_vproto.config import ConfigError
from flwr_vproto.data.types import DataError
from flwr_vproto.protocol import ProtocolError
from flwr_vproto.query import predict_over_grid
from flwr_vproto.results import format_summary, prediction_metrics, write_results
from flwr_vproto.run_config import config_from_run_config
from flwr_vproto.strategy import VerticalProtoStrategy

log = logging.getLogger("flwr")


class OneLineFailure(logging.Filter):
    """Keeps a failed run's one-line error the last line of its log.

    Why: Flower 1.42 logs every exception a ServerApp raises with its traceback ("ServerApp raised an exception",
    or "Simulation raised an exception" under ``flwr run`` in simulation) and then its exit message
    (``Exit Code: 201 ...``), both through the ``flwr`` logger, after the app's own last line. Raising is still
    needed: it is what makes the run's status ``finished:failed``. Once :meth:`fail` has logged the line, this
    filter drops exactly those two records for that exception, and nothing else.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reported: BaseException | None = None

    def fail(self, line: str, kind: type[Exception] = ProtocolError) -> Exception:
        """Log ``line`` and return the exception to raise (its message is the line: the run's status details)."""
        log.error("%s", line)
        self.reported = kind(line)
        return self.reported

    def filter(self, record: logging.LogRecord) -> bool:
        if self.reported is None:
            return True
        if record.exc_info and record.exc_info[1] is self.reported:
            return False
        return not (record.levelno >= logging.ERROR and str(record.msg).startswith("Exit Code: "))


def _one_line_failure() -> OneLineFailure:
    """The filter on the ``flwr`` logger for this ServerApp process (one per process, reset for each run)."""
    for f in log.filters:
        if isinstance(f, OneLineFailure):
            f.reported = None
            return f
    f = OneLineFailure()
    log.addFilter(f)
    return f


def make_server_app(strategy: VerticalProtoStrategy | None = None,
                    errors: list[BaseException] | None = None) -> ServerApp:
    """A ServerApp driving ``strategy`` (simulation), or, when ``None``, one built from the run-config.

    ``errors``: with a ``strategy``, a party's failure (``ProtocolError``) is appended there instead of raised into
    Flower's simulation runtime (which would log it with its traceback), for the caller to report as one line.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if strategy is not None:
            try:
                strategy.start(grid=grid)
            except ProtocolError as err:
                if errors is None:
                    raise
                errors.append(err)
            return
        failure = _one_line_failure()
        try:
            _deployed(grid, context)
        except ProtocolError as err:  # one line naming the party and its own message, then fail the run
            raise failure.fail(party_error_line(err)) from None
        except ConfigError as err:  # the run-config itself (checked before any message is sent)
            raise failure.fail(f"config error: {' '.join(str(err).split())}", ConfigError) from None
        except DataError as err:
            raise failure.fail(f"data error: {' '.join(str(err).split())}", DataError) from None

    return app


def _deployed(grid: Grid, context: Context) -> None:
    """``flwr run``: train (or, with ``app.predict``, score new users) as the run-config says."""
    cfg, settings = config_from_run_config(context.run_config)
    if settings.predict:  # score new users with the models each party saved (flwr_vproto.query)
        done = predict_over_grid(grid, cfg, source=settings.predict, timeout=settings.timeout,
                                 wait_for_nodes=settings.wait_for_nodes)
        log.info("%s", done.summary())
        out = Path(settings.output_dir or Path("outputs") / f"flwr-run-{context.run_id}")
        path = write_results(out / "prediction.json",
                             {"metrics": prediction_metrics(done.metrics), "predictions": done.path}, exclusive=True)
        log.info("prediction summary written to %s", path.resolve())
        return
    start = time.perf_counter()
    run = VerticalProtoStrategy(cfg, timeout=settings.timeout, wait_for_nodes=settings.wait_for_nodes)
    run.start(grid=grid)
    out = Path(settings.output_dir or Path("outputs") / f"flwr-run-{context.run_id}")
    results = run.results or {}
    path = write_results(out / "results.json", results, exclusive=True)  # never overwrites: results-2.json
    for line in format_summary(results, path.resolve(), elapsed=time.perf_counter() - start):
        log.info("%s", line)


app = make_server_app()
"""The ServerApp of ``flwr run`` (``[tool.flwr.app.components]``)."""
