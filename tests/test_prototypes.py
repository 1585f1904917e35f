"""Prototype math: class means, EMA, pseudo-labels, distances and both loss forms, including absent classes."""

import pytest
import torch

from flwr_vproto import prototypes as P


def test_class_means_match_a_loop_and_mark_absent_classes():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 4, generator=g)
    y = torch.randint(0, 3, (50,), generator=g)  # class 3 of 4 never occurs
    y[:5] = -1  # unknown labels are ignored
    means, mask = P.class_means(z, y, 4)
    assert mask.tolist() == [True, True, True, False]
    for c in range(3):
        assert torch.allclose(means[c], z[y == c].mean(0), atol=1e-6)
    assert torch.all(means[3] == 0)


def test_ema_keeps_absent_classes_and_adopts_new_ones():
    old = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    old_mask = torch.tensor([True, True, False])
    new = torch.tensor([[3.0, 0.0], [9.0, 9.0], [5.0, 5.0]])
    new_mask = torch.tensor([True, False, True])
    out, mask = P.ema_update(old, old_mask, new, new_mask, momentum=0.5)
    assert torch.allclose(out[0], torch.tensor([2.0, 0.0]))  # blended
    assert torch.allclose(out[1], torch.tensor([0.0, 1.0]))  # absent now: kept
    assert torch.allclose(out[2], torch.tensor([5.0, 5.0]))  # first seen: taken as is
    assert mask.all()
    fresh, _ = P.ema_update(old, old_mask, new, new_mask, momentum=0.0)
    assert torch.equal(fresh, new)


def test_distances():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(P.distances(z, p, "sqeuclidean"), torch.cdist(z, p) ** 2)
    assert torch.allclose(P.distances(z, p, "cosine"), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), atol=1e-6)
    with pytest.raises(ValueError, match="unknown distance"):
        P.distances(z, p, "manhattan")


def test_pseudo_labels_threshold_temperature_and_missing_prototypes():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    mask = torch.tensor([True, True, False])
    z = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.0, 0.0]])
    labels, keep = P.pseudo_labels(z, p, mask, "sqeuclidean", tau=0.1, threshold=0.8)
    assert labels[0] == 0 and keep[0]
    assert not keep[1]  # equidistant: 50 % confidence
    assert labels[2] in (0, 1)  # the absent class 2 is never assigned, although its zero vector is closest
    _, keep_hot = P.pseudo_labels(z, p, mask, "sqeuclidean", tau=10.0, threshold=0.8)
    assert not keep_hot.any()  # a high temperature flattens confidence below the threshold
    _, none = P.pseudo_labels(z, p, torch.zeros(3, dtype=torch.bool), "sqeuclidean", 0.1, 0.0)
    assert not none.any()


@pytest.mark.parametrize("form", ["pull", "contrastive"])
@pytest.mark.parametrize("kind", ["sqeuclidean", "cosine"])
def test_losses_skip_absent_classes_and_never_nan(form, kind):
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    mask = torch.tensor([True, True, False])
    z = torch.tensor([[0.5, 0.2], [0.1, 0.7]], requires_grad=True)
    only_absent = P.prototype_loss(z, torch.tensor([2, -1]), p, mask, kind=kind, form=form, tau=0.5)
    only_absent.backward()
    assert only_absent.item() == 0.0 and torch.isfinite(z.grad).all()
    near = P.prototype_loss(torch.tensor([[0.99, 0.01]]), torch.tensor([0]), p, mask, kind=kind, form=form, tau=0.5)
    far = P.prototype_loss(torch.tensor([[0.01, 0.99]]), torch.tensor([0]), p, mask, kind=kind, form=form, tau=0.5)
    assert near < far  # closer to its own class prototype -> lower loss


def test_pull_moves_rows_toward_their_prototype_and_contrastive_away_from_others():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([True, True])
    z = torch.tensor([[0.5, 0.5]], requires_grad=True)
    P.prototype_loss(z, torch.tensor([0]), p, mask, kind="sqeuclidean", form="pull", tau=1.0).backward()
    step = -z.grad[0]
    assert step[0] > 0 and step[1] < 0  # toward (1, 0)
    with pytest.raises(ValueError, match="unknown loss form"):
        P.prototype_loss(z, torch.tensor([0]), p, mask, kind="sqeuclidean", form="hinge", tau=1.0)
