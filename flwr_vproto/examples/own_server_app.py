"""README "Your own ServerApp": your ServerApp on :class:`VerticalProtoStrategy`, with this package's ClientApp.

    python -m flwr_vproto.examples.own_server_app        # a Flower simulation (Ray), 2 SuperNodes, 3 rounds

Your ServerApp decides what happens around training (here: a line per message exchange, then every round's
validation accuracy, the test accuracy and how many exchanges Flower's ``Result`` holds); the parties run
:func:`make_client_app`'s ClientApp unchanged.
``tests/test_package.py`` runs this file as it is.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flwr_vproto import VerticalProtoStrategy, config_from_dict, config_from_run_config, make_client_app
from flwr_vproto.results import per_round

# One validated config for the server and every party (the same options as run_simulation.py / flwr-vproto).
CFG = config_from_dict({"dataset": {"name": "digits", "aligned_fraction": 0.05}, "num_rounds": 3, "seed": 0})

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    # Under `flwr run` the ClientApps read the run-config, so the server must too; this simulation passes none.
    cfg = config_from_run_config(context.run_config)[0] if context.run_config else CFG
    strategy = VerticalProtoStrategy(cfg, on_round=lambda rec: print(  # once per message exchange (a Flower round)
        f"exchange {rec['round']:.0f} done: {rec['seconds']:.1f} s"))
    result = strategy.start(grid=grid)  # discovery, PSI, then cfg.num_rounds rounds in exchanges; Flower's Result
    results = strategy.results  # the content of results.json, set by start()
    assert results is not None
    for rec in per_round(results):  # every round of training (by default all in one exchange)
        print(f"round {rec['round']:.0f}: validation accuracy {rec.get('val/accuracy', float('nan')):.4f}")
    final = results["final"]  # test metrics at the best validation round
    print(f"test accuracy {final['accuracy']:.4f} (round {final['best_round']:.0f}); "
          f"{len(result.train_metrics_clientapp)} exchange(s) of party metrics")


# One ClientApp for every party (with `flwr run`: flwr_vproto.client_app:app). You own every node of a simulation,
# so the active party may report every metric to your server (default "progress": nothing derived from a label).
client_app = make_client_app(CFG, server_metrics="full")


if __name__ == "__main__":
    from flwr.simulation import run_simulation

    from flwr_vproto import simulation_backend

    # simulation_backend(): one CPU per party (Flower's default, 2, runs the parties in turn on a small machine)
    run_simulation(server_app=app, client_app=client_app, num_supernodes=CFG.dataset.num_passive + 1,
                   backend_config=simulation_backend())
