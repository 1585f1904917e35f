"""The Hydra side of :mod:`flwr_vproto.config`: the dataclasses are the one source of every option and its default.

* :func:`register` stores :class:`CliConfig` (:class:`~flwr_vproto.config.Config` plus ``runner``) in Hydra's
  ``ConfigStore`` as ``flwr_vproto``; ``conf/config.yaml`` puts it first in its defaults list, so OmegaConf types
  every option (``method.lr=abc`` or a misspelt ``method.lamda=1`` fail at composition, naming the key) and the
  yaml files hold only presets: what a group option changes from the dataclass defaults.
  :func:`~flwr_vproto.config.config_from_dict` still checks every range and combination afterwards (one line each).
* :func:`option_docs` reads each field's comment in ``config.py`` (the comment on its line, else the comment block
  right above it): the one-line descriptions that ``--help`` (:func:`help_text`) prints next to each value.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from typing import Any

from flwr_vproto.config import Config, ModelConfig, RunnerConfig

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

    encoder_target: Any = None
    top_target: Any = None


@dataclass
class CliConfig(Config):
    """What the command line composes: the run's :class:`~flwr_vproto.config.Config` and the ``runner`` block."""

    model: ModelConfig = field(default_factory=_ModelSchema)
    runner: RunnerConfig = field(default_factory=RunnerConfig)


def register() -> None:
    """Store the schema in Hydra's ConfigStore and the ``--help`` resolver in OmegaConf (idempotent)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name=SCHEMA, node=CliConfig)
    if not OmegaConf.has_resolver(HELP_RESOLVER):
        OmegaConf.register_new_resolver(HELP_RESOLVER, _help_resolver)


_FIELD = re.compile(r"^    (\w+): [^=]+(?:=.*?)?(?:  # (.*))?$")
_COMMENT = re.compile(r"^    # ?(.*)$")


def _class_docs(cls: type) -> dict[str, str]:
    """Field name -> its comment in the class source (same line, else the comment lines right above it)."""
    docs: dict[str, str] = {}
    block: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        comment = _COMMENT.match(line)
        if comment:
            block.append(comment.group(1).strip())
            continue
        match = _FIELD.match(line)
        if match and match.group(1) in {f.name for f in dataclasses.fields(cls)}:
            docs[match.group(1)] = (match.group(2) or " ".join(block)).strip()
        block = []
    return docs


def option_docs(cls: type = CliConfig, prefix: str = "") -> dict[str, str]:
    """Dotted option -> its full description, for every leaf field of ``cls`` (nested dataclasses walked)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update({k: v for k, v in _class_docs(klass).items() if v})
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore
        if dataclasses.is_dataclass(default):
            out.update(option_docs(type(default), f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = docs.get(f.name, "")
    return out


def one_line(text: str, width: int = 78) -> str:
    """The first sentence of ``text``, cut to ``width`` characters."""
    sentence = re.split(r"(?<=[a-z0-9)\]])(?<!e\.g)(?<!i\.e)\. ", text, maxsplit=1)[0].rstrip(".")
    return sentence if len(sentence) <= width else sentence[: width - 3].rstrip() + "..."


def _value(value: Any) -> str:
    """A value as the command line spells it (``null``, ``true``, ``[256]``)."""
    import json

    if isinstance(value, list | dict):
        return json.dumps(value).replace('"', "")
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def help_text(values: dict[str, Any]) -> str:
    """``option=value  description`` for every option (``values``: the composed config, nested), in field order."""
    rows = []
    for name, doc in option_docs().items():
        node: Any = values
        for part in name.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        rows.append((f"{name}={_value(node)}", one_line(doc)))
    width = min(38, max(len(r[0]) for r in rows))
    return "\n".join(f"  {opt:<{width}}  {doc}" if len(opt) <= width else f"  {opt}\n  {'':<{width}}  {doc}"
                     for opt, doc in rows)


TEMPLATE = """flwr-vproto: vertical federated learning on Flower that also learns from the non-aligned users.

  python run_simulation.py [group=preset ...] [option=value ...]   (= flwr-vproto = python -m flwr_vproto)
  -m / --multirun: a sweep (option=a,b ... or +hpo=vproto for Optuna); --cfg job: the composed config

== Presets (config groups, conf/<group>/<preset>.yaml) ==
$APP_CONFIG_GROUPS

== Options (value with this command line's presets, then what it does; README "Using it") ==
{options}

== Hydra's own flags ==
$FLAGS_HELP"""


def _help_resolver(*, _root_: Any) -> str:
    """The ``--help`` text, from the composed config (so ``--help dataset=adult`` shows adult's values)."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(OmegaConf.masked_copy(_root_, [k for k in _root_ if k != "hydra"]),
                                    resolve=False, throw_on_missing=False)
    return TEMPLATE.replace("{options}", help_text(values).replace("$", "$$"))  # type: ignore[arg-type]
