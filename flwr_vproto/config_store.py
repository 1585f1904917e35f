"""The Hydra side of :mod:`flwr_vproto.config`: the dataclasses are the one source of every option and its default.

* :func:`register` stores :class:`CliConfig` (:class:`~flwr_vproto.config.Config` plus ``runner``) in Hydra's
  ``ConfigStore`` as ``flwr_vproto``; ``conf/config.yaml`` puts it first in its defaults list, so OmegaConf types
  every option (``method.lr=abc`` or a misspelt ``method.lamda=1`` fail at composition, naming the key) and the
  yaml files hold only presets: what a group option changes from the dataclass defaults.
  :func:`~flwr_vproto.config.config_from_dict` still checks every range and combination afterwards (one line each).
* :func:`option_docs` reads each field's description from its metadata (``opt(default, help)`` in ``config.py``):
  ``--help`` (:func:`help_text`) prints its first sentence next to each value.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import textwrap
import typing
from dataclasses import dataclass, field
from typing import Any

from flwr_vproto.config import (
    DECLARED_NULL,
    Config,
    MethodConfig,
    ModelConfig,
    ResearchConfig,
    RunnerConfig,
    field_default,
    null_default,
    option_help,
)

SCHEMA = "flwr_vproto"
"""The ConfigStore name of :class:`CliConfig` (``conf/config.yaml``'s first default)."""
HELP_RESOLVER = "flwr_vproto_help"
"""``hydra.help.template: ${flwr_vproto_help:}`` in ``conf/config.yaml``: the option list of ``--help``."""


@dataclass
class _ModelSchema(ModelConfig):
    """:class:`~flwr_vproto.config.ModelConfig` with its two ``_target_`` mappings untyped for OmegaConf: 2.3 cannot
    merge an override such as ``model.encoder_target={_target_: my_pkg.MyEncoder}`` into an ``Optional[Dict]`` that
    is ``None`` (AttributeError inside ``OmegaConf.update``). :func:`~flwr_vproto.config.config_from_dict` still
    checks their shape."""

    encoder_target: Any = field(default=None, metadata={"help": option_help(ModelConfig, "encoder_target")})
    top_target: Any = field(default=None, metadata={"help": option_help(ModelConfig, "top_target")})


def _nullable(cls: type, prefix: str, **nested: type) -> type:
    """``cls`` for Hydra's schema, with its options of :data:`~flwr_vproto.config.DECLARED_NULL` typed optional
    (declared null, as in ``cls``; OmegaConf refuses a null in a field typed ``bool``) and left null when OmegaConf
    builds the section's default (no ``__post_init__``): ``config_from_dict`` fills them from ``method.name`` and
    the dataset."""
    hints = typing.get_type_hints(cls)
    fields: list[Any] = [(name, typing.Optional[hints[name]],  # noqa: UP045 (a runtime type, for OmegaConf)
                          field(default=None, metadata={"help": option_help(cls, name)}))
                         for name in (k.removeprefix(prefix) for k in DECLARED_NULL if k.startswith(prefix))
                         if "." not in name]
    fields += [(name, hints[name], field(default_factory=schema)) for name, schema in nested.items()]
    return dataclasses.make_dataclass(f"_{cls.__name__}Schema", fields, bases=(cls,),
                                      namespace={"__post_init__": lambda self: None})


_MethodSchema = _nullable(MethodConfig, "method.", research=_nullable(ResearchConfig, "method.research."))


@dataclass
class CliConfig(Config):
    """What the command line composes: the run's :class:`~flwr_vproto.config.Config` and the ``runner`` block."""

    # Hydra's schema must allow null here; Config.__post_init__ turns it into the dataset's default (an int)
    num_rounds: int | None = field(  # type: ignore[assignment]
        default=None, metadata={"help": option_help(Config, "num_rounds")})
    model: ModelConfig = field(default_factory=_ModelSchema)
    method: MethodConfig = field(default_factory=_MethodSchema)
    runner: RunnerConfig = field(default_factory=RunnerConfig)


def register() -> None:
    """Store the schema in Hydra's ConfigStore and the ``--help`` resolver in OmegaConf (idempotent)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name=SCHEMA, node=CliConfig)
    if not OmegaConf.has_resolver(HELP_RESOLVER):
        OmegaConf.register_new_resolver(HELP_RESOLVER, _help_resolver)


def option_docs(cls: type = CliConfig, prefix: str = "") -> dict[str, str]:
    """Dotted option -> its full description (the field's ``opt`` metadata), for every leaf field of ``cls``
    (nested dataclasses walked; a field a subclass re-declares keeps its base class's description)."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        default = field_default(f)
        if dataclasses.is_dataclass(default):
            out.update(option_docs(type(default), f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = f.metadata.get("help") or next(
                (g.metadata.get("help", "") for k in cls.__mro__[1:] if dataclasses.is_dataclass(k)
                 for g in dataclasses.fields(k) if g.name == f.name), "")
    return out


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (never cut: ``--help`` wraps it)."""
    return re.split(r"(?<=[a-z0-9)\]])(?<!e\.g)(?<!i\.e)\. ", text, maxsplit=1)[0].rstrip(".")


def _value(value: Any) -> str:
    """A value as the command line spells it (``null``, ``true``, ``[256]``)."""
    import json

    if isinstance(value, list | dict):
        return json.dumps(value).replace('"', "")
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def help_text(values: dict[str, Any], width: int = 118) -> str:
    """``option=value  description`` for every option (``values``: the composed config, nested), in field order; a
    default left null shows the value the run will use (:func:`~flwr_vproto.config.null_default`)."""
    rows = []
    for name, doc in option_docs().items():
        node: Any = values
        for part in name.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            node = null_default(name, values)
        rows.append((f"{name}={_value(node)}", first_sentence(doc)))
    col = min(38, max(len(r[0]) for r in rows))
    lines = []
    for opt, doc in rows:
        wrapped = textwrap.wrap(doc, max(40, width - col - 4)) or [""]
        if len(opt) > col:
            lines.append(f"  {opt}")
            wrapped_first = wrapped
        else:
            lines.append(f"  {opt:<{col}}  {wrapped[0]}")
            wrapped_first = wrapped[1:]
        lines += [f"  {'':<{col}}  {w}" for w in wrapped_first]
    return "\n".join(lines)


def program_name(argv0: str | None = None) -> str:
    """How the user started this command line: ``flwr-vproto``, ``python -m flwr_vproto`` or ``python
    run_simulation.py`` (``--help`` shows that one)."""
    base = os.path.basename(argv0 if argv0 is not None else sys.argv[0])
    if base.endswith(".py") and base != "__main__.py":
        return f"python {base}"
    if base in ("__main__.py", "-m", "-c", ""):
        return "python -m flwr_vproto"
    return base


TEMPLATE = """flwr-vproto: vertical federated learning on Flower that also learns from the non-aligned users.

  {prog} [group=preset ...] [option=value ...]
  -m / --multirun: a sweep (option=a,b ... or +hpo=vproto for Optuna); --cfg job: the composed config

== Presets (config groups, conf/<group>/<preset>.yaml) ==
$APP_CONFIG_GROUPS

== Options (value with this command line's presets, then what it does; docs/usage.md) ==
{options}

== Hydra's own flags ==
$FLAGS_HELP"""


def _help_resolver(*, _root_: Any) -> str:
    """The ``--help`` text, from the composed config (so ``--help dataset=adult`` shows adult's values)."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(OmegaConf.masked_copy(_root_, [k for k in _root_ if k != "hydra"]),
                                    resolve=False, throw_on_missing=False)
    text = TEMPLATE.replace("{prog}", program_name())
    return text.replace("{options}", help_text(values).replace("$", "$$"))  # type: ignore[arg-type]
