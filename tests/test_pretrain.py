"""Passive pre-training (flwr_vproto/method/pretrain.py, ``method.research.passive_pretrain``): each kind learns,
repeats bit for bit from its generator, and the denoising autoencoder is the one parties.py ran before it moved
there."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flwr_vproto.config import ConfigError, config_from_dict
from flwr_vproto.inprocess import run_inprocess
from flwr_vproto.method import pretrain
from flwr_vproto.method.batching import index_batches, num_batches
from flwr_vproto.models import make_encoder, mlp

CPU = torch.device("cpu")


def _table(n: int = 512, d: int = 12) -> torch.Tensor:
    """Rows with structure to find: three latent factors spread over the features, plus noise."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=g) @ torch.randn(3, d, generator=g) + 0.1 * torch.randn(n, d, generator=g)


def _images(n: int = 256, shape: tuple[int, int, int] = (1, 8, 4)) -> torch.Tensor:
    """Flattened strips: one of four bar patterns per row, plus noise."""
    g = torch.Generator().manual_seed(2)
    c, h, w = shape
    pats = torch.zeros(4, c, h, w)
    pats[0, :, :, 0], pats[1, :, :, -1], pats[2, :, 0, :], pats[3, :, h // 2, :] = 1, 1, 1, 1
    cls = torch.randint(4, (n,), generator=g)
    return (pats[cls] + 0.1 * torch.randn(n, c, h, w, generator=g)).reshape(n, -1)


def _encoder(shape: tuple[int, ...], seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return make_encoder(shape, config_from_dict({"model": {"embedding_dim": 16, "hidden": [32]}}).model)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def _run(kind, x, shape, epochs, seed=0):
    enc = _encoder(shape)
    torch.manual_seed(seed + 3)
    kw = {"input_shape": shape} if kind is pretrain.contrastive else {}
    loss = kind(enc, x, 16, [32], epochs, 64, 1e-3, torch.Generator().manual_seed(seed), CPU, **kw)
    return loss, enc


@pytest.mark.parametrize(("x", "shape"), [(_table(), (12,)), (_images(), (1, 8, 4))], ids=["table", "image"])
def test_contrastive_pretraining_lowers_its_loss(x, shape):
    enc = make_encoder(shape, config_from_dict({"model": {"embedding_dim": 16, "hidden": [32]}}).model)
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    losses = []
    for epochs in (1, 15):
        enc.load_state_dict(state)
        torch.manual_seed(3)
        losses.append(pretrain.contrastive(enc, x, 16, [32], epochs, 64, 1e-3, torch.Generator().manual_seed(0), CPU,
                                           input_shape=shape))
    assert losses[1] < losses[0] - 0.1


@pytest.mark.parametrize("kind", [pretrain.contrastive, pretrain.denoising_autoencoder])
def test_pretraining_repeats_from_the_same_generator(kind):
    x, shape = _images(), (1, 8, 4)
    (l1, a), (l2, b), (l3, _) = _run(kind, x, shape, 2), _run(kind, x, shape, 2), _run(kind, x, shape, 2, seed=1)
    assert l1 == l2 and _same(a, b)
    assert l3 != l1


def test_views_keep_shape_and_corrupt_what_they_should():
    x, g = _table(), torch.Generator().manual_seed(0)
    v = pretrain.scarf_view(x, x, 0.5, g)
    changed = (v != x).float().mean()
    assert v.shape == x.shape and 0.35 < changed < 0.55  # about half the features replaced (a few by equal values)
    assert torch.equal(pretrain.scarf_view(x, x, 0.0, g), x)
    img = _images()
    assert pretrain.image_view(img, (1, 8, 4), g).shape == img.shape
    z = torch.randn(8, 4)
    assert pretrain.nt_xent(z, z, 0.1) < pretrain.nt_xent(z, torch.randn(8, 4), 0.1)  # matching views: low loss


def _dae_as_it_was(encoder, x, embedding_dim, hidden, epochs, batch_size, lr, gen, device):
    """The body of ``PassiveParty._pretrain`` before it moved to method/pretrain.py (the reference)."""
    decoder = mlp([embedding_dim, *reversed(hidden), x.shape[1]]).to(device)
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=lr)
    encoder.train(True)
    last = 0.0
    for _ in range(epochs):
        total, batches = 0.0, index_batches(len(x), batch_size, num_batches(len(x), batch_size), gen)
        for b in batches:
            keep = (torch.rand(len(b), x.shape[1], generator=gen) > 0.2).to(device)
            loss = F.mse_loss(decoder(encoder(x[b] * keep)), x[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        last = total / max(len(batches), 1)
    return last


def test_dae_is_unchanged_by_the_move():
    x, shape = _table(), (12,)
    l1, a = _run(pretrain.denoising_autoencoder, x, shape, 3)
    l2, b = _run(_dae_as_it_was, x, shape, 3)
    assert l1 == l2 and _same(a, b)


def _cfg(passive_pretrain="dae", **method):
    return config_from_dict({"engine": "inprocess", "num_rounds": 1,
                             "dataset": {"name": "digits", "aligned_fraction": 0.2},
                             "method": {"name": "vproto", "batch_size": 64, **method,
                                        "research": {"passive_pretrain_min_steps": 0,
                                                     "passive_pretrain": passive_pretrain}}})


def test_the_option_picks_the_pretraining_and_none_is_no_pretraining():
    none = run_inprocess(_cfg(passive_pretrain="none"))["rounds"][0]
    zero = run_inprocess(_cfg(passive_pretrain_epochs=0))["rounds"][0]
    assert "passive1/pretrain_loss" not in none
    assert {k: v for k, v in none.items() if k != "seconds"} == {k: v for k, v in zero.items() if k != "seconds"}
    dae = run_inprocess(_cfg())["rounds"][0]
    con = run_inprocess(_cfg(passive_pretrain="contrastive"))["rounds"][0]
    both = run_inprocess(_cfg(passive_pretrain="dae+contrastive"))["rounds"][0]
    assert dae["passive1/pretrain_loss"] < 1 < con["passive1/pretrain_loss"]  # reconstruction MSE vs. NT-Xent
    assert both["passive1/pretrain_loss"] != con["passive1/pretrain_loss"]  # started from the autoencoder
    assert con["test/joint_accuracy"] != dae["test/joint_accuracy"]


def test_bad_option_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"method.research.passive_pretrain='simclr'") as err:
        config_from_dict({"method": {"research": {"passive_pretrain": "simclr"}}})
    assert "\n" not in str(err.value)
