"""Every option is validated up front with a message naming it."""

import pytest

from flwr_vproto.config import ConfigError, config_from_dict


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"dataset": {"name": "mnist"}}, "dataset.name='mnist'"),
        ({"method": {"name": "fedavg"}}, "method.name='fedavg'"),
        ({"dataset": {"aligned_fraction": 0.0}}, "dataset.aligned_fraction"),
        ({"dataset": {"aligned_fraction": 1.5}}, "dataset.aligned_fraction"),
        ({"dataset": {"num_passive": 0}}, "dataset.num_passive"),
        ({"dataset": {"nonaligned_shares": [0.5, 0.6]}}, "dataset.nonaligned_shares"),
        ({"dataset": {"name": "csv", "csv": {"paths": ["a.csv"]}}}, "dataset.csv.paths"),
        ({"method": {"tau": 0}}, "method.tau"),
        ({"method": {"research": {"distance": "l1"}}}, "method.research.distance"),
        ({"method": {"research": {"loss_form": "pull"}}}, "method.research.loss_form was removed"),
        ({"method": {"research": {"aligned_passes": None}}}, "aligned_passes=None: expected an integer >= 1 \\(null"),
        ({"method": {"confidence_threshold": 1.0}}, "method.confidence_threshold"),
        ({"method": {"research": {"ema_momentum": 1.0}}}, "method.research.ema_momentum"),
        ({"method": {"local_head": False, "combine_weight": 0.5, "research": {"joint_residual": False}}},
         "method.combine_weight"),
        ({"method": {"combine_weight": "best"}}, "method.combine_weight"),
        ({"method": {"research": {"pseudo_gate": "on"}}}, "method.research.pseudo_gate"),
        ({"method": {"research": {"pseudo_gate": 0.0}}}, "method.research.pseudo_gate"),
        ({"method": {"research": {"pseudo_gate": 1.5}}}, "method.research.pseudo_gate"),
        ({"method": {"research": {"pseudo_label_once": "yes"}}}, "method.research.pseudo_label_once"),
        ({"method": {"research": {"aligned_passes": 0}}}, "method.research.aligned_passes"),
        ({"method": {"lambda_passive": 0.0, "research": {"pseudo_gate": 0.9}}}, "method.research.pseudo_gate"),
        ({"method": {"research": {"residual_weight": "free"}}}, "method.research.residual_weight"),
        ({"method": {"research": {"residual_base": "best"}}}, "method.research.residual_base"),
        ({"method": {"research": {"joint_encoder": "yes"}}}, "method.research.joint_encoder"),
        ({"method": {"research": {"joint_warm_start": 1}}}, "method.research.joint_warm_start"),
        ({"method": {"passive_pretrain_epochs": -1}}, "method.passive_pretrain_epochs"),
        ({"method": {"research": {"aligned_passes": 1.5}}}, "method.research.aligned_passes"),
        ({"method": {"local_head": False, "combine_weight": 1.0, "research": {"joint_residual": True}}},
         "method.research.joint_residual"),
        ({"model": {"embedding_dim": 0}}, "model.embedding_dim"),
        ({"model": {"encoder": "cnn"}, "dataset": {"name": "adult"}}, "model.encoder"),
        ({"num_rounds": 0}, "num_rounds"),
        ({"engine": "ray"}, "engine"),
        ({"method": {"lr": True}}, "method.lr"),
        # lists of ints, choices and combinations found missing before
        ({"model": {"hidden": 256}}, r"model.hidden=256: expected a list of layer widths"),
        ({"model": {"hidden": [256, 0]}}, "model.hidden.*positive integer layer widths .0 is not"),
        ({"model": {"top_hidden": [64.5]}}, "model.top_hidden.*64.5 is not"),
        ({"model": {"hidden": [True]}}, "model.hidden.*True is not"),
        ({"dataset": {"nonaligned_shares": [1.0]}}, "nonaligned_shares.*a list of 2 shares"),
        ({"dataset": {"nonaligned_shares": [1.2, -0.2]}}, "nonaligned_shares.*non-negative"),
        ({"dataset": {"nonaligned_shares": [0.5, 0.4]}}, "nonaligned_shares.*summing to 1 .they sum to 0.9"),
        ({"dataset": {"name": "csv", "csv": {"paths": ["a", "b"]}, "val_fraction": 0.5, "test_fraction": 0.5}},
         "val_fraction.*no user would be left"),
        ({"dataset": {"name": "csv", "csv": {"paths": ["a.csv", "b.csv", "c.csv"]}}},
         "csv.paths.*2 file paths .*got 3"),
        ({"dataset": {"name": "csv", "csv": {"paths": ["a.csv", "a.csv"]}}}, r"csv.paths.*\['a.csv'\] is given"),
        ({"dataset": {"csv": {"paths": "a.csv"}}}, "csv.paths.*a list of file paths"),
        ({"dataset": {"csv": {"id_column": "k", "label_column": "k"}}}, "csv.label_column.*other than"),
        ({"dataset": {"csv": {"classes": ["yes"]}}}, "csv.classes.*at least 2"),
        ({"dataset": {"csv": {"classes": ["a", "a", "b"]}}}, r"csv.classes.*\['a'\] listed more than once"),
        ({"dataset": {"csv": {"classes": "a,b"}}}, "csv.classes.*a list of class labels"),
        ({"dataset": {"csv": {"classes": [1.5, 2]}}}, "csv.classes"),
        ({"dataset": {"root": ""}}, "dataset.root"),
        ({"dataset": {"name": "digits", "num_passive": 8}}, "num_passive.*at most 7.*8 pixels wide"),
        ({"dataset": {"name": "adult", "num_passive": 6}}, "num_passive.*at most 5 with the built-in Adult split"),
        ({"dataset": {"name": "csv", "csv": {"paths": ["a", "b"]}, "feature_split": [["x"], ["y"]]}},
         "feature_split.*adult dataset only"),
        ({"dataset": {"name": "adult", "feature_split": [["age"]]}}, "feature_split.*2 non-empty lists"),
        ({"dataset": {"name": "adult", "feature_split": [["age", 3], ["sex"]]}}, "unknown Adult column 3"),
        ({"method": {"combine_weight": "0.5"}}, "method.combine_weight='0.5'"),
        ({"seed": -1}, "seed=-1"),
        ({"eval_every": 1.5}, "eval_every"),
        ({"device": "gpu"}, "device='gpu'"),
        ({"method": {"batch_size": 0}}, "method.batch_size"),
        ({"method": {"warmup_rounds": -1}}, "method.warmup_rounds"),
        ({"model": {"dropout": 1.0}}, "model.dropout"),
        ({"privacy": {"delta": 2}}, "privacy.delta"),
        ({"privacy": {"target_epsilon": 4.0}}, r"privacy\.target_epsilon=4\.0: expected null: .* sends none"),
        ({"method": {"name": "vanilla"}, "privacy": {"noise_multiplier": 1.0}}, "privacy.noise_multiplier"),
    ],
)
def test_bad_values_name_the_option(override, needle):
    with pytest.raises(ConfigError, match=needle if "\\" in needle or ".*" in needle
                       else needle.replace(".", r"\.").replace("[", r"\[")):
        config_from_dict(override)


def test_unknown_keys_are_rejected_with_their_dotted_name():
    with pytest.raises(ConfigError, match=r"method\.lamda"):
        config_from_dict({"method": {"lamda": 1.0}})
    with pytest.raises(ConfigError, match=r"dataset\.csv\.idcol"):
        config_from_dict({"dataset": {"csv": {"idcol": "x"}}})


@pytest.mark.parametrize("build", ["dict", "run-config"])
def test_a_misspelt_key_is_answered_in_one_line_with_the_closest_valid_keys(build):
    """As python run_simulation.py answers it (tests/test_defaults.py): config_from_dict and Flower's run-config path
    (flwr_vproto/run_config.py) name the closest keys, not the list of every option."""
    from flwr_vproto.run_config import config_from_run_config, run_config_from_config

    with pytest.raises(ConfigError) as err:
        if build == "dict":
            config_from_dict({"dataset": {"csv": {"label_colum": "x"}}})
        else:
            config_from_run_config({**run_config_from_config(), "dataset.csv.label_colum": "x"})
    message = str(err.value)
    assert "\n" not in message and len(message) < 200, message
    assert "dataset.csv.label_colum" in message and "did you mean dataset.csv.label_column" in message


@pytest.mark.parametrize("build", ["dict", "run-config", "command line"])
def test_an_option_that_moved_says_where_it_went_in_one_line(build):
    """Issue #29 item 7: the ablation knobs moved to method.research.* (MOVED); an old path gets one line naming the
    new one, whether it comes from config_from_dict, Flower's run-config or a Hydra override."""
    from flwr_vproto.cli import unknown_option_line
    from flwr_vproto.config import MOVED
    from flwr_vproto.run_config import config_from_run_config, run_config_from_config

    assert MOVED["method.pseudo_gate"] == "method.research.pseudo_gate" and "method.tau" not in MOVED
    if build == "command line":
        message = unknown_option_line(["dataset=adult", "method.pseudo_gate=0.9"])
        assert unknown_option_line(["method.research.pseudo_gate=0.9"]) is None
    else:
        with pytest.raises(ConfigError) as err:
            if build == "dict":
                config_from_dict({"method": {"lr": 0.01, "pseudo_gate": 0.9}})
            else:
                flat = run_config_from_config()
                config_from_run_config({**{k: v for k, v in flat.items() if k not in MOVED.values()},
                                        "method.pseudo_gate": 0.9})
        message = str(err.value)
    assert "\n" not in message and message.endswith("method.pseudo_gate moved to method.research.pseudo_gate"), message


@pytest.mark.parametrize("key", ["method.research.loss_form", "method.loss_form"])
@pytest.mark.parametrize("build", ["dict", "run-config", "command line"])
def test_a_removed_option_says_so_and_why_in_one_line(build, key):
    """Issue #29 item 7: knobs measured harmful and used by no preset are gone (REMOVED); naming one, by its old or
    new path, fails in one line that says why rather than being ignored."""
    from flwr_vproto.cli import unknown_option_line
    from flwr_vproto.run_config import config_from_run_config, run_config_from_config

    if build == "command line":
        message = unknown_option_line([f"{key}=pull"])
    else:
        with pytest.raises(ConfigError) as err:
            if build == "dict":
                section = {"loss_form": "pull"}
                config_from_dict({"method": {"research": section} if "research" in key else section})
            else:
                config_from_run_config({**run_config_from_config(), key: "pull"})
        message = str(err.value)
    assert message is not None and "\n" not in message
    assert message.endswith("method.research.loss_form was removed: the prototype loss is contrastive; the literal "
                            "pull loss measured worse on adult and Fashion-MNIST (BENCHMARKS.md §2)"), message


def test_round_trip_through_dict():
    cfg = config_from_dict({"seed": 3, "dataset": {"name": "adult", "aligned_fraction": 0.02}})
    assert config_from_dict(cfg.to_dict()) == cfg


def test_good_values_pass():
    config_from_dict({"dataset": {"name": "adult", "num_passive": 2, "nonaligned_shares": [0.5, 0.25, 0.25]},
                      "model": {"hidden": [], "top_hidden": [32, 16]},
                      "method": {"lambda_passive": 0.5}, "privacy": {"target_epsilon": 4.0, "delta": 1e-6}})
    config_from_dict({"dataset": {"name": "csv", "csv": {"paths": ["a.csv", "b.csv"], "classes": [0, 1]}}})
    config_from_dict({"dataset": {"name": "fashion_mnist", "num_passive": 27}})
