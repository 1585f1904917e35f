"""The method as named parts (design §3), plain PyTorch, no Flower: each part a small pure function or an nn-free
settings class that reads only its own ``method.*`` keys.

* :mod:`~flwr_vproto.method.losses`: supervised joint loss, first prototype loss, active-only head loss, the
  passives' third loss and pseudo-labelling;
* :mod:`~flwr_vproto.method.joint`: the joint logits (residual on the active-only head, prototype logits);
* :mod:`~flwr_vproto.method.calibration`: what is fitted on validation rows (combine weight, pseudo-gates, the
  residual's best-validation base);
* :mod:`~flwr_vproto.method.evaluation`: the active party's probabilities (joint, active-only, combined) and the
  scores of a split, including the active-only head on the users only the active party holds;
* :mod:`~flwr_vproto.method.extra`: user-supplied loss terms (``method.extra_losses``);
* :mod:`~flwr_vproto.method.batching`, :mod:`~flwr_vproto.method.scores`: seeds, batches and scores shared with the
  centralized baseline.

:mod:`flwr_vproto.parties` orchestrates them per party and round.
"""
