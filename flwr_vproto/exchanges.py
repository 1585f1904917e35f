"""Which rounds each message exchange trains (``exchange.*``). Config only, so every party and the server agree on
it without a message, and nothing about it depends on a label.

A *round* is one pass of the active party's training (``num_rounds`` of them: the length of training, as it always
was). An *exchange* is one message per party: every joint passive sends its embeddings (applying, first, the
gradient rows it received last), then the active party trains the exchange's rounds on those cached embeddings and
replies. With one exchange per round (``exchange.count=num_rounds``) this is the method as designed (design §4);
fewer exchanges do the same local work with fewer message round trips (seconds each in a deployment) and fewer
releases of label-dependent rows (:func:`flwr_vproto.defences.releases` counts exchanges).

The one-shot extreme, ``exchange.count=1``: each passive pre-trains on its own rows, sends its embeddings once and
never hears back; the active party trains every round on them. It is also what ``exchange.count=null`` picks when
nothing a passive could receive would ever change its encoder (:func:`passives_frozen`), since there it gives
exactly the numbers of one exchange per round.
"""

from __future__ import annotations

from flwr_vproto.config import Config


def passives_frozen(cfg: Config) -> bool:
    """Whether no passive's encoder can change after its pre-training: no gradient row ever leaves the active party
    (``defence.release_rounds=0``) and no prototype is shared (``method.shares_prototypes``)."""
    return cfg.defence.release_rounds == 0 and not cfg.method.shares_prototypes


def count(cfg: Config) -> int:
    """Exchanges after PSI: ``exchange.count``, or (null) one when the passives are frozen, else one per round."""
    if cfg.exchange.count is not None:
        return int(cfg.exchange.count)
    return 1 if passives_frozen(cfg) else cfg.num_rounds


def blockwise(cfg: Config) -> bool:
    """Whether some exchange trains more than one round (else every exchange is one round, as designed)."""
    return count(cfg) < cfg.num_rounds


def sizes(cfg: Config) -> list[int]:
    """Rounds per exchange, in order (``exchange.schedule``); they sum to ``num_rounds``, each at least 1."""
    n, e = cfg.num_rounds, count(cfg)
    if cfg.exchange.schedule == "first":
        return [n - e + 1] + [1] * (e - 1)
    if cfg.exchange.schedule == "last":
        return [1] * (e - 1) + [n - e + 1]
    return [n // e + (1 if i >= e - n % e else 0) for i in range(e)]  # even: the longer ones last


def rounds_of(cfg: Config, exchange: int) -> range:
    """The rounds exchange ``exchange`` (1-based) trains."""
    if not 1 <= exchange <= count(cfg):
        raise ValueError(f"exchange {exchange} outside 1..{count(cfg)}")
    sz = sizes(cfg)
    first = 1 + sum(sz[: exchange - 1])
    return range(first, first + sz[exchange - 1])


def evaluates(cfg: Config, rnd: int) -> bool:
    """Whether round ``rnd`` is an evaluation round: every ``eval_every`` rounds and after the last."""
    return rnd % cfg.eval_every == 0 or rnd == cfg.num_rounds
