"""Prototype math: class means, EMA, pseudo-labels, distances and both loss forms, including absent classes."""

import pytest
import torch

from flwr_vproto import prototypes


def test_class_means_match_a_loop_and_mark_absent_classes():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 4, generator=g)
    y = torch.randint(0, 3, (50,), generator=g)  # class 3 of 4 never occurs
    y[:5] = -1  # unknown labels are ignored
    means, mask = prototypes.class_means(z, y, 4)
    assert mask.tolist() == [True, True, True, False]
    for c in range(3):
        assert torch.allclose(means[c], z[y == c].mean(0), atol=1e-6)
    assert torch.all(means[3] == 0)


def test_ema_keeps_absent_classes_and_adopts_new_ones():
    old = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    old_mask = torch.tensor([True, True, False])
    new = torch.tensor([[3.0, 0.0], [9.0, 9.0], [5.0, 5.0]])
    new_mask = torch.tensor([True, False, True])
    out, mask = prototypes.ema_update(old, old_mask, new, new_mask, momentum=0.5)
    assert torch.allclose(out[0], torch.tensor([2.0, 0.0]))  # blended
    assert torch.allclose(out[1], torch.tensor([0.0, 1.0]))  # absent now: kept
    assert torch.allclose(out[2], torch.tensor([5.0, 5.0]))  # first seen: taken as is
    assert mask.all()
    fresh, _ = prototypes.ema_update(old, old_mask, new, new_mask, momentum=0.0)
    assert torch.equal(fresh, new)


def test_distances():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(prototypes.distances(z, p, "sqeuclidean"), torch.cdist(z, p) ** 2)
    assert torch.allclose(prototypes.distances(z, p, "cosine"), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), atol=1e-6)
    with pytest.raises(ValueError, match="unknown distance"):
        prototypes.distances(z, p, "manhattan")


def test_pseudo_labels_threshold_temperature_and_missing_prototypes():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    mask = torch.tensor([True, True, False])
    z = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.0, 0.0]])
    labels, keep = prototypes.pseudo_labels(z, p, mask, "sqeuclidean", tau=0.1, threshold=0.8)
    assert labels[0] == 0 and keep[0]
    assert not keep[1]  # equidistant: 50 % confidence
    assert labels[2] in (0, 1)  # the absent class 2 is never assigned, although its zero vector is closest
    _, keep_hot = prototypes.pseudo_labels(z, p, mask, "sqeuclidean", tau=10.0, threshold=0.8)
    assert not keep_hot.any()  # a high temperature flattens confidence below the threshold
    _, none = prototypes.pseudo_labels(z, p, torch.zeros(3, dtype=torch.bool), "sqeuclidean", 0.1, 0.0)
    assert not none.any()


def _gate_rows(confidences: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows on the segment between two prototypes whose nearest-prototype confidence (tau=1, sqeuclidean, C=2)
    is each given value: the logit gap at position x is x^2 - (x - 1)^2 = 2x - 1, so x = (logit(c) + 1) / 2."""
    c = torch.tensor(confidences, dtype=torch.float64)
    x = (torch.log(c / (1 - c)) + 1) / 2
    return torch.stack([x, torch.zeros_like(x)], 1).float(), torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.ones(
        2, dtype=torch.bool)


def test_gate_threshold_keeps_the_most_rows_whose_precision_reaches_the_target():
    conf = [0.99, 0.97, 0.95, 0.9, 0.8, 0.7, 0.6, 0.55]
    z, protos, mask = _gate_rows(conf)
    labels, _ = prototypes.pseudo_labels(z, protos, mask, "sqeuclidean", 1.0, 0.0)
    assert labels.tolist() == [1] * 8
    truth = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0])  # precision of the top k: 1, 1, 1, .75, .8, .67, .57, .5
    gate = lambda target, **kw: prototypes.gate_threshold(z, truth, protos, mask, kind="sqeuclidean", tau=1.0,  # noqa: E731
                                                 target=target, min_kept=kw.get("min_kept", 1))
    assert gate(0.8) == pytest.approx(0.7, abs=1e-5)  # keep the top 5 (precision .8): threshold = 6th confidence
    assert gate(0.9) == pytest.approx(0.9, abs=1e-5)  # only the top 3 are right often enough
    assert gate(0.5) == 0.0  # every row may be kept
    assert gate(0.9, min_kept=4) == 1.0  # no cut with >= 4 rows reaches 0.9: keep nothing
    # Applying the threshold keeps exactly the rows the gate counted.
    _, keep = prototypes.pseudo_labels(z, protos, mask, "sqeuclidean", 1.0, gate(0.8))
    assert keep.tolist() == [True] * 5 + [False] * 3
    # Unlabelled rows are ignored; no labelled rows or no prototypes: keep nothing.
    assert prototypes.gate_threshold(z, torch.tensor([1, 1, 1, -1, 1, -1, -1, -1]), protos, mask, kind="sqeuclidean",
                            tau=1.0, target=1.0, min_kept=1) == 0.0
    assert prototypes.gate_threshold(z, torch.full((8,), -1), protos, mask, kind="sqeuclidean", tau=1.0,
                                     target=0.5) == 1.0
    assert prototypes.gate_threshold(z, truth, protos, torch.zeros(2, dtype=torch.bool), kind="sqeuclidean", tau=1.0,
                            target=0.5) == 1.0


def test_gate_threshold_never_cuts_between_rows_of_equal_confidence():
    z, protos, mask = _gate_rows([0.9, 0.9, 0.9, 0.6])
    truth = torch.tensor([1, 1, 0, 0])  # the three tied rows together are 2/3 right, all four 1/2
    assert prototypes.gate_threshold(z, truth, protos, mask, kind="sqeuclidean", tau=1.0, target=0.9, min_kept=1) == 1.0
    assert prototypes.gate_threshold(z, truth, protos, mask, kind="sqeuclidean", tau=1.0, target=0.6,
                            min_kept=1) == pytest.approx(0.6, abs=1e-5)


@pytest.mark.parametrize("kind", ["sqeuclidean", "cosine"])
def test_losses_skip_absent_classes_and_never_nan(kind):
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    mask = torch.tensor([True, True, False])
    z = torch.tensor([[0.5, 0.2], [0.1, 0.7]], requires_grad=True)
    only_absent = prototypes.prototype_loss(z, torch.tensor([2, -1]), p, mask, kind=kind, tau=0.5)
    only_absent.backward()
    assert only_absent.item() == 0.0 and torch.isfinite(z.grad).all()
    near = prototypes.prototype_loss(torch.tensor([[0.99, 0.01]]), torch.tensor([0]), p, mask, kind=kind,
                                     tau=0.5)
    far = prototypes.prototype_loss(torch.tensor([[0.01, 0.99]]), torch.tensor([0]), p, mask, kind=kind,
                                    tau=0.5)
    assert near < far  # closer to its own class prototype -> lower loss


def test_the_loss_moves_rows_toward_their_prototype_and_away_from_the_others():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([True, True])
    z = torch.tensor([[0.5, 0.5]], requires_grad=True)
    prototypes.prototype_loss(z, torch.tensor([0]), p, mask, kind="sqeuclidean", tau=1.0).backward()
    step = -z.grad[0]
    assert step[0] > 0 and step[1] < 0  # toward (1, 0), away from (0, 1)
