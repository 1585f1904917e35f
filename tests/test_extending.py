"""Bring your own model and loss terms (README "Extending"): the worked examples run in both engines, bad specs fail
with one line naming the option and the party, and the fields survive Hydra and Flower's run-config."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_same_history, import_script, run_inline, small_cfg

from flwr_vproto import run_config as RC
from flwr_vproto.config import ConfigError, config_from_dict
from flwr_vproto.examples.extending import ResidualMLPEncoder
from flwr_vproto.inprocess import run_inprocess
from flwr_vproto.models import make_encoder, make_top_model
from flwr_vproto.targets import target_factory

REPO = Path(__file__).resolve().parents[1]
EX = "flwr_vproto.examples.extending"
ENCODER = {"_target_": f"{EX}.ResidualMLPEncoder", "width": 32, "depth": 1}
TOP = {"_target_": f"{EX}.small_top", "width": 16}
PENALTY = {"_target_": f"{EX}.confidence_penalty", "weight": 0.1}


class MeanLogit:  # a class-style term: built once with its kwargs, then called with the batch
    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, batch) -> torch.Tensor:
        return self.scale * batch.logits.mean()


def strip(rounds):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rounds]


@pytest.mark.parametrize("method", ["vproto", "local"])
def test_custom_encoder_top_model_and_loss_term_give_the_same_numbers_in_both_engines(method):
    cfg = small_cfg(method, rounds=2, model={"encoder_target": ENCODER, "top_target": TOP},
                    method_extra={"extra_losses": [PENALTY]})
    strategy, _, _ = run_inline(cfg)
    reference = run_inprocess(cfg)
    assert_same_history(strategy.history, reference["rounds"])
    active = reference["state"]["active"]
    assert isinstance(active.encoder, ResidualMLPEncoder) and len(active.encoder.blocks) == 1
    assert active.top[0].out_features == 16  # small_top(width=16)
    key = f"active/extra_loss/{EX}.confidence_penalty"
    assert all(r[key] < 0 for r in reference["rounds"])  # minus the mean entropy
    plain = run_inprocess(small_cfg(method, rounds=2))
    assert strip(plain["rounds"]) != strip(reference["rounds"])


def test_a_custom_loss_term_changes_training_and_its_weight_scales_it():
    base = small_cfg("vproto", rounds=2)
    off = run_inprocess(base)["rounds"]
    zero = run_inprocess(small_cfg("vproto", rounds=2, method_extra={"extra_losses": [{**PENALTY, "weight": 0.0}]}))
    assert [{k: v for k, v in r.items() if "extra_loss" not in k} for r in strip(zero["rounds"])] == strip(off)
    cls_term = {"_target_": "test_extending.MeanLogit", "scale": 2.0}
    on = run_inprocess(small_cfg("vproto", rounds=2, method_extra={"extra_losses": [cls_term]}))["rounds"]
    assert "active/extra_loss/test_extending.MeanLogit" in on[0] and strip(on) != strip(off)


def test_a_target_that_does_not_import_names_option_party_and_path():
    with pytest.raises(ConfigError, match=r"^passive1: model.encoder_target '_target_' my_pkg.MyEnc does not "
                                          r"import: ModuleNotFoundError: No module named 'my_pkg' \(Are you sure "
                                          r"that module 'my_pkg' is installed\?\)$"):
        target_factory({"_target_": "my_pkg.MyEnc"}, "model.encoder_target", "passive1")
    with pytest.raises(ConfigError, match=r"^active: method.extra_losses '_target_' flwr_vproto.models.nope does "
                                          r"not import: .*Are you sure that 'nope' is importable from module "
                                          r"'flwr_vproto.models'\?\)$"):
        target_factory({"_target_": "flwr_vproto.models.nope"}, "method.extra_losses", "active")
    with pytest.raises(ConfigError, match=r"^active: model.top_target '_target_' nope.x \(nested in "
                                          r"torch.nn.Linear\) does not import"):
        target_factory({"_target_": "torch.nn.Linear", "x": {"_target_": "nope.x"}}, "model.top_target", "active")
    cfg = small_cfg("vproto", rounds=1, model={"encoder_target": {"_target_": "my_pkg.MyEnc"}})
    with pytest.raises(ConfigError, match="^active: model.encoder_target '_target_' my_pkg.MyEnc does not import"):
        run_inprocess(cfg)


@pytest.mark.parametrize("path", ["os.system", "subprocess.Popen", "builtins.eval"])
def test_a_target_that_runs_commands_is_refused_in_one_line(path):
    """A target is config data that picks code to run in every party's process (a deployment's SuperNodes build
    their encoders from the run-config the ServerApp sends): Hydra's instantiate refuses execution-capable targets,
    and the refusal is one line naming the party, the option and the path."""
    spec = {"_target_": path, "command": "touch /tmp/flwr_vproto_pwned"}
    with pytest.raises(ConfigError, match=rf"^passive1: model.encoder_target '_target_' {path} is refused by "
                                          r"Hydra's instantiate: Target .* is blocklisted[^\n]*$"):
        target_factory(spec, "model.encoder_target", "passive1")
    cfg = small_cfg("vproto", rounds=1, model={"encoder_target": spec})
    with pytest.raises(ConfigError, match="is refused by Hydra's instantiate"):
        run_inprocess(cfg)


def test_built_modules_are_checked_against_the_contract():
    model = config_from_dict({"model": {"encoder_target": {**ENCODER}}}).model
    assert make_encoder((3, 4), model, "passive2")(torch.zeros(5, 12)).shape == (5, model.embedding_dim)
    bad_dim = config_from_dict({"model": {"top_target": {"_target_": "torch.nn.Linear", "bias": False}}}).model
    with pytest.raises(ConfigError, match=r"^active: model.top_target '_target_' torch.nn.Linear failed when "
                                          r"called with \['bias', 'in_features', 'num_classes'\]: TypeError"):
        make_top_model(8, 3, bad_dim)  # nn.Linear takes in_features/out_features, not num_classes
    identity = config_from_dict({"model": {"encoder_target": {"_target_": "torch.nn.Identity"}}}).model
    with pytest.raises(ConfigError, match=r"passive1: model.encoder_target module maps a batch of shape \(2, 12\) "
                                          r"to \(2, 12\), expected \(2, 64\)"):
        make_encoder((12,), identity, "passive1")
    clash = config_from_dict({"model": {"encoder_target": {**ENCODER, "embedding_dim": 3}}}).model
    with pytest.raises(ConfigError, match=r"sets \['embedding_dim'\], which the package passes itself"):
        make_encoder((12,), clash, "active")
    no_linear = config_from_dict({"model": {"top_target": {"_target_": f"{__name__}.no_linear_top"}}}).model
    cfg = small_cfg("vproto", rounds=1)
    cfg.model = no_linear
    with pytest.raises(ConfigError, match="method.research.joint_residual needs a top model whose output layer"):
        run_inprocess(cfg)


def no_linear_top(in_features: int, num_classes: int) -> torch.nn.Module:
    return _Proj(in_features, num_classes)


class _Proj(torch.nn.Module):
    def __init__(self, i: int, o: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(i, o))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


@pytest.mark.parametrize("override,needle", [
    ({"model": {"encoder_target": "my_pkg.MyEnc"}}, "invalid model.encoder_target='my_pkg.MyEnc': expected null or a"),
    ({"model": {"top_target": {"width": 3}}}, "invalid model.top_target={'width': 3}: expected a '_target_' key"),
    ({"model": {"encoder_target": {"_target_": "nodots"}}}, "a dotted path 'module.Name'"),
    ({"method": {"extra_losses": {"_target_": "a.b"}}}, "invalid method.extra_losses="),
    ({"method": {"extra_losses": [{"_target_": "a.b", "weight": -1}]}}, "method.extra_losses[0]"),
    ({"method": {"extra_losses": [{"weight": 1}]}}, "invalid method.extra_losses[0]"),
    ({"method": {"name": "centralized", "extra_losses": [PENALTY]}}, "[] for method 'centralized'"),
])
def test_bad_specs_are_refused_by_the_config(override, needle):
    with pytest.raises(ConfigError, match=None) as err:
        config_from_dict(override)
    assert needle in str(err.value)


def test_the_fields_survive_flowers_run_config_and_hydra():
    cfg = config_from_dict({"model": {"encoder_target": ENCODER, "top_target": TOP},
                            "method": {"extra_losses": [PENALTY]}})
    # Flower's run-config is flat: mappings and lists travel as JSON strings (flwr run --run-config too).
    flat = {**RC.run_config_from_config(), "model.encoder_target": json.dumps(ENCODER),
            "model.top_target": json.dumps(TOP), "method.extra_losses": json.dumps([PENALTY])}
    back, _ = RC.config_from_run_config(flat)
    assert back == cfg
    assert RC.run_config_from_config()["model.encoder_target"] == "null"
    from hydra import compose, initialize_config_dir

    _config = import_script("run_simulation")._config

    with initialize_config_dir(config_dir=os.fspath(REPO / "flwr_vproto" / "conf"), version_base=None):
        got, _ = _config(compose("config", [
            f"model.encoder_target={{_target_: {ENCODER['_target_']}, width: 32, depth: 1}}",
            f"model.top_target={{_target_: {TOP['_target_']}, width: 16}}",
            f"method.extra_losses=[{{_target_: {PENALTY['_target_']}, weight: 0.1}}]"]))
        assert (got.model.encoder_target, got.model.top_target, got.method.extra_losses) == (ENCODER, TOP, [PENALTY])
        seed, _ = _config(compose("config", ["method=vproto_seed"]))
        default, _ = _config(compose("config", ["method=vproto"]))
        assert seed.method.shares_prototypes and not default.method.shares_prototypes
        assert seed.method.name == "vproto" and seed.method.lambda_passive == 1.0
        differ = {k for k, v in vars(seed.method).items() if vars(default.method)[k] != v}
        assert differ == {"lambda_passive"}  # the preset only sets knobs


def test_the_readme_examples_run_as_written_in_both_engines(tmp_path, monkeypatch):
    """docs/extending.md: its two code blocks, saved as my_pkg/models.py and my_pkg/losses.py, run as configured."""
    page = (REPO / "docs" / "extending.md").read_text()
    section = page[page.index("## Your own models and loss terms"):page.index("## Your own ServerApp")]
    blocks = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    assert len(blocks) == 2 and "# my_pkg/models.py" in blocks[0] and "# my_pkg/losses.py" in blocks[1]
    pkg = tmp_path / "my_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(blocks[0])
    (pkg / "losses.py").write_text(blocks[1])
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = small_cfg("vproto", rounds=2, model={"encoder_target": {"_target_": "my_pkg.models.ResidualMLPEncoder",
                                                                  "width": 32}},
                    method_extra={"extra_losses": [{"_target_": "my_pkg.losses.confidence_penalty", "weight": 0.1}]})
    try:
        strategy, _, _ = run_inline(cfg)
        reference = run_inprocess(cfg)
    finally:  # other tests must not see this temporary package
        for name in [m for m in sys.modules if m == "my_pkg" or m.startswith("my_pkg.")]:
            sys.modules.pop(name)
    assert_same_history(strategy.history, reference["rounds"])
    assert type(reference["state"]["passives"][0].encoder).__name__ == "ResidualMLPEncoder"
    assert "active/extra_loss/my_pkg.losses.confidence_penalty" in reference["rounds"][-1]
