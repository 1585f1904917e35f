"""The ServerApp: runs :class:`~flwr_vproto.strategy.VerticalProtoStrategy` and writes ``results.json``.

Under ``flwr run .`` (simulation or deployment) the config comes from the run-config (``[tool.flwr.app.config]``
in ``pyproject.toml`` plus ``--run-config`` overrides, see :func:`flwr_vproto.run_config.config_from_run_config`);
``results.json`` goes to ``app.output-dir`` (default ``./outputs/flwr-run-<run id>`` under the ServerApp's working
directory, i.e. where the SuperLink was started). With ``app.predict`` set (``"held-out"`` or ``"file"``) it runs the
prediction query round instead of training and writes only ``prediction.json`` (counts and accuracy): the
predictions stay on the active party's node. ``run_simulation.py`` builds its own ServerApp around a strategy
object it keeps, so it can read the results back.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flwr_vproto.query import predict_over_grid
from flwr_vproto.results import write_results
from flwr_vproto.run_config import config_from_run_config
from flwr_vproto.strategy import VerticalProtoStrategy

log = logging.getLogger("flwr")


def make_server_app(strategy: VerticalProtoStrategy | None = None) -> ServerApp:
    """A ServerApp driving ``strategy`` (simulation), or, when ``None``, one built from the run-config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if strategy is not None:
            strategy.start(grid=grid)
            return
        cfg, settings = config_from_run_config(context.run_config)
        if settings.predict:  # score new users with the models each party saved (flwr_vproto.query)
            metrics = predict_over_grid(grid, cfg, source=settings.predict, timeout=settings.timeout,
                                        wait_for_nodes=settings.wait_for_nodes)
            log.info("prediction done (predictions stay on the active party's node): %s", metrics)
            out = Path(settings.output_dir or Path("outputs") / f"flwr-run-{context.run_id}")
            path = write_results(out / "prediction.json", {"metrics": metrics})
            log.info("prediction summary written to %s", path.resolve())
            return
        run = VerticalProtoStrategy(cfg, timeout=settings.timeout, wait_for_nodes=settings.wait_for_nodes)
        run.start(grid=grid)
        out = Path(settings.output_dir or Path("outputs") / f"flwr-run-{context.run_id}")
        path = write_results(out / "results.json", run.results or {})
        log.info("results written to %s", path.resolve())

    return app


app = make_server_app()
"""The ServerApp of ``flwr run`` (``[tool.flwr.app.components]``)."""
