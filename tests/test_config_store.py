"""One source of truth for the options: the dataclasses of ``flwr_vproto/config.py``, registered in Hydra's
ConfigStore (``flwr_vproto/config_store.py``); ``conf/*.yaml`` hold only presets; ``--help`` documents every option.

``tests/data/composed_configs.json`` is ``Config.to_dict()`` of every preset combination as composed before the
schema existed (when every yaml file listed every key): the presets must compose to exactly the same runs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import import_script

from flwr_vproto.config import (
    BASELINES,
    BY_METHOD_NAME,
    DECLARED_NULL,
    PLAIN_JOINT_MODEL,
    VPROTO_JOINT_MODEL,
    Config,
    MethodConfig,
    RunnerConfig,
    config_from_dict,
    declared_defaults,
)
from flwr_vproto.config_store import CliConfig, option_docs
from flwr_vproto.run_config import config_from_run_config, run_config_from_config

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "flwr_vproto" / "conf"
SNAPSHOT = json.loads((REPO / "tests" / "data" / "composed_configs.json").read_text())
METHODS = ["vproto", "vproto_seed", "vproto_fewshot", "vproto_oneshot", "vanilla", "local", "centralized", "gbdt_local",
           "gbdt_aligned", "gbdt_centralized"]
DATASETS = ["digits", "adult", "fashion_mnist", "csv"]
MODELS = ["mlp", "cnn"]
DEFENCES = ["no_gradients", "gradient_noise", "label_dp", "none"]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("encoder_target", "top_target"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _compose_all(keys: list[str]) -> dict:
    """Compose each snapshot key (its overrides, space-separated) as run_simulation.py does: diff or error line."""
    from hydra import compose, initialize_config_dir

    _config = import_script("run_simulation")._config
    base = SNAPSHOT["defaults"]  # the frozen base the snapshot's differences were taken against
    got = {}
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        for key in keys:
            try:
                cfg, runner = _config(compose("config", key.split(" ")))
            except SystemExit as err:
                got[key] = str(err)
                continue
            assert runner == SNAPSHOT["runner"], (key, runner)
            got[key] = {k: v for k, v in _flat(cfg.to_dict()).items() if base.get(k, "<missing>") != v}
    return got


def _key(method: str, dataset: str, model: str, defence: str, hpo: bool = False) -> str:
    overrides = [f"method={method}", f"dataset={dataset}", f"model={model}", f"defence={defence}"]
    overrides += ["+hpo=vproto"] if hpo else []
    overrides += ["dataset.csv.paths=[a.csv,b.csv]"] if dataset == "csv" else []
    return " ".join(overrides)


def test_the_snapshot_covers_every_preset_and_the_defaults_are_still_the_dataclass_defaults():
    # The snapshot's base is digits' options with the generic 20 rounds; digits' own 40 rounds (once set by
    # conf/dataset/digits.yaml) are now a per-dataset default in code (flwr_vproto/config.py DATASET_ROUNDS).
    assert {**SNAPSHOT["defaults"], "num_rounds": 40} == _flat(Config().to_dict())
    # ... and the options that follow from method.name and the dataset are declared null (filled in by Config)
    assert {**SNAPSHOT["defaults"], "num_rounds": None, **dict.fromkeys(DECLARED_NULL)} == _flat(declared_defaults())
    assert SNAPSHOT["runner"] == dataclasses.asdict(RunnerConfig())
    for group, names in (("method", METHODS), ("dataset", DATASETS), ("model", MODELS), ("defence", DEFENCES),
                         ("privacy", ["dp", "none"])):
        assert sorted(p.stem for p in (CONF / group).glob("*.yaml")) == sorted(names), group
    want = {_key(*c) for c in itertools.product(METHODS, DATASETS, MODELS, DEFENCES, (False, True))}
    assert want <= set(SNAPSHOT["configs"])


def test_every_preset_composes_as_before_one_of_each():
    """Fast: each preset once (with the others at their defaults), +hpo, the exchange block, a group re-chosen."""
    keys = [_key(m, "digits", "mlp", "no_gradients") for m in METHODS]
    keys += [_key("vproto", d, "mlp", "no_gradients") for d in DATASETS[1:]]
    keys += [_key("vproto", "digits", "cnn", d) for d in DEFENCES]
    keys += [_key("vanilla", "adult", "mlp", "gradient_noise", hpo=True), _key("local", "adult", "cnn", "none"),
             "exchange.count=3 exchange.schedule=first exchange.passive_passes=2", "num_rounds=20",
             "dataset=csv dataset.csv.paths=[a.csv,b.csv] model=cnn dataset=digits"]
    got = _compose_all(keys)
    assert got == {k: SNAPSHOT["configs"][k] for k in keys}


def _all_pairs(factors: list[list]) -> list[tuple]:
    """Combinations of ``factors`` (one value of each) that hold every pair of values of any two factors at least
    once: greedily, the combination that covers the most pairs not yet covered, the earliest of the full product on
    ties (so the same list every time)."""
    def pairs(combo: tuple) -> set:
        return {(i, a, j, b) for (i, a), (j, b) in itertools.combinations(enumerate(combo), 2)}

    product = list(itertools.product(*factors))
    left = set().union(*map(pairs, product))
    chosen = []
    while left:
        best = max(product, key=lambda c: len(pairs(c) & left))
        chosen.append(best)
        left -= pairs(best)
    return chosen


def test_all_pairs_covers_every_pair_and_is_far_smaller_than_the_product():
    factors = [METHODS, DATASETS, MODELS, DEFENCES, [False, True]]
    combos = _all_pairs(factors)
    for (i, fi), (j, fj) in itertools.combinations(enumerate(factors), 2):
        assert {(c[i], c[j]) for c in combos} == set(itertools.product(fi, fj)), (i, j)
    assert len(combos) <= 60 and combos == _all_pairs(factors)


@pytest.mark.slow
def test_every_pair_of_presets_composes_as_before():
    """Every two presets of method, dataset, model, defence and +hpo=vproto together (all pairs: 40 of the
    snapshot's 640 combinations, each pair of values at least once; a preset sets its own keys and Config derives
    the rest from method and dataset, so what two presets do together is what can break): the same Config, or the
    same one-line error. The full product composed in 70 s of a suite on 2 cores (Hydra's 0.1-0.3 s a composition)."""
    keys = [_key(*combo) for combo in _all_pairs([METHODS, DATASETS, MODELS, DEFENCES, [False, True]])]
    got = _compose_all(keys)
    assert got == {k: SNAPSHOT["configs"][k] for k in keys}


def test_group_files_hold_only_what_differs_from_the_dataclass_defaults():
    defaults = {k: declared_defaults()[k] for k in ("dataset", "model", "method", "defence", "privacy")}
    for path in sorted(CONF.glob("*/*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        if path.parent.name == "hpo" or "_global_" in path.read_text().splitlines()[0]:
            continue
        data.pop("defaults", None)
        flat, base = _flat(data), _flat(defaults[path.parent.name])
        same = sorted(k for k, v in flat.items() if base.get(k) == v)
        assert not same, f"{path.relative_to(REPO)} repeats dataclass defaults: {same}"
    top = yaml.safe_load((CONF / "config.yaml").read_text())
    assert set(top) == {"defaults", "hydra"} and top["defaults"][:2] == ["flwr_vproto", "_self_"]


def test_the_baseline_presets_say_only_their_name_and_method_name_alone_trains_the_same():
    """The plain joint model follows from method.name, so `method.name=vanilla` (what a run-config or a sweep
    sets) is `method=vanilla`, and a value the user gives is kept."""
    for name in BASELINES:
        data = yaml.safe_load((CONF / "method" / f"{name}.yaml").read_text())
        assert data == {"name": name}
    by_name = _compose_all([f"method.name={name}" for name in BASELINES])
    assert by_name == {f"method.name={name}": SNAPSHOT["configs"][_key(name, "digits", "mlp", "no_gradients")]
                       for name in BASELINES}
    assert {k for k in _flat(PLAIN_JOINT_MODEL)} == {k.removeprefix("method.") for k in BY_METHOD_NAME}
    assert all(_flat(VPROTO_JOINT_MODEL)[k] != v for k, v in _flat(PLAIN_JOINT_MODEL).items())  # only what differs
    for name, want in (("vanilla", PLAIN_JOINT_MODEL), ("vproto", VPROTO_JOINT_MODEL),
                       ("gbdt_local", VPROTO_JOINT_MODEL)):
        method = _flat(dataclasses.asdict(MethodConfig(name=name)))
        assert {k: method[k] for k in _flat(want)} == _flat(want), name
    for name in BASELINES:  # flwr run --run-config "method.name='vanilla'": the same, from pyproject's "null"s
        flat = {**run_config_from_config(), "method.name": name}
        assert config_from_run_config(flat)[0].method == config_from_dict({"method": {"name": name}}).method
    given = {"name": "vanilla", "lambda_passive": 0.0, "research": {"joint_encoder": True}}
    kept = config_from_dict({"method": given}).method
    assert (kept.lambda_passive, kept.research.joint_encoder, kept.local_head) == (0.0, True, False)


def test_the_schema_types_options_and_rejects_unknown_keys():
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    import_script("run_simulation")  # registers the schema
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        for bad in ("method.lamda=1", "method.lr=abc", "model.hidden=abc", "runner.timout=5", "dataset.num_passive=x"):
            with pytest.raises(ConfigCompositionException):
                compose("config", [bad])
        cfg = compose("config", ["model.encoder_target={_target_: a.B, width: 32}", "runner.threads=abc"])
        assert cfg.model.encoder_target == {"_target_": "a.B", "width": 32} and cfg.runner.threads == "abc"


def test_every_option_has_a_description():
    docs = option_docs()
    assert set(docs) == set(_flat(dataclasses.asdict(CliConfig())))
    assert not [k for k, v in docs.items() if not v], "give these fields a help text in flwr_vproto/config.py (opt)"


def test_help_lists_every_option_with_its_value_and_description(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "run_simulation.py"), "--help", "dataset=adult"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for option in option_docs():
        row = [line for line in lines if line.startswith(f"  {option}=")]
        assert len(row) == 1, option
    assert any(line.startswith("  dataset.name=adult ") and "digits | adult" in line for line in lines)
    assert any(line.startswith("  num_rounds=20 ") for line in lines)  # adult's default (digits: 40)
    assert lines[2].startswith("  python run_simulation.py [group=preset ...]")  # the command as the user ran it
    assert not [line for line in lines if line.rstrip().endswith("...")], "descriptions are wrapped, never cut"
    methods = "centralized, gbdt_aligned, gbdt_centralized, gbdt_local, local, vanilla, vproto"
    assert f"method: {methods}" in proc.stdout and "--multirun" in proc.stdout
    assert not (tmp_path / "outputs").exists()


def test_cfg_job_prints_every_option(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "run_simulation.py"), "--cfg", "job"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert set(_flat(yaml.safe_load(proc.stdout))) == set(option_docs())
