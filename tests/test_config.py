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
        ({"method": {"distance": "l1"}}, "method.distance"),
        ({"method": {"loss_form": "triplet"}}, "method.loss_form"),
        ({"method": {"confidence_threshold": 1.0}}, "method.confidence_threshold"),
        ({"method": {"ema_momentum": 1.0}}, "method.ema_momentum"),
        ({"method": {"local_head": False, "joint_residual": False, "combine_weight": 0.5}}, "method.combine_weight"),
        ({"method": {"combine_weight": "best"}}, "method.combine_weight"),
        ({"method": {"pseudo_gate": "on"}}, "method.pseudo_gate"),
        ({"method": {"pseudo_gate": 0.0}}, "method.pseudo_gate"),
        ({"method": {"pseudo_gate": 1.5}}, "method.pseudo_gate"),
        ({"method": {"pseudo_label_once": "yes"}}, "method.pseudo_label_once"),
        ({"method": {"local_head": False, "joint_residual": True, "combine_weight": 1.0}}, "method.joint_residual"),
        ({"model": {"embedding_dim": 0}}, "model.embedding_dim"),
        ({"model": {"encoder": "cnn"}, "dataset": {"name": "adult"}}, "model.encoder"),
        ({"num_rounds": 0}, "num_rounds"),
        ({"engine": "ray"}, "engine"),
        ({"method": {"lr": True}}, "method.lr"),
        ({"dataset": {"name": "csv", "csv": {"paths": ["a.csv", "b.csv"]}}, "method": {"name": "centralized"}},
         "method.name"),
    ],
)
def test_bad_values_name_the_option(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("[", r"\[")):
        config_from_dict(override)


def test_unknown_keys_are_rejected_with_their_dotted_name():
    with pytest.raises(ConfigError, match=r"method\.lamda"):
        config_from_dict({"method": {"lamda": 1.0}})
    with pytest.raises(ConfigError, match=r"dataset\.csv\.idcol"):
        config_from_dict({"dataset": {"csv": {"idcol": "x"}}})


def test_round_trip_through_dict():
    cfg = config_from_dict({"seed": 3, "dataset": {"name": "adult", "aligned_fraction": 0.02}})
    assert config_from_dict(cfg.to_dict()) == cfg
