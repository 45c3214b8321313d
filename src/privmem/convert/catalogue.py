"""The policies, by name: ``POLICIES``, filled by ``@policy``, and ``make_policy(spec, memory)``.

The built-ins live one family per module in :mod:`privmem.convert.policies`, which imports
every module it holds (the engine imports it, so the table is full whoever asks); a user's
own policy registers the same way from any module, or from another package through the
``privmem.policies`` entry-point group (:mod:`privmem.registry`).
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..registry import Registry
from .protocol import MODEL_PROPERTIES, Policy
from .spec import NAME_RE, ShareOfMemory, parse_spec

POLICIES: Registry[type[Policy]] = Registry("policy", group="privmem.policies")


def policy(name: str, summary: str):
    """Class decorator: register a :class:`Policy` subclass as ``name`` (its spec name),
    with a one-line ``summary``."""
    def register(cls: type[Policy]) -> type[Policy]:
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise TypeError(f"@policy({name!r}) decorates a Policy subclass, not {cls!r}")
        if not NAME_RE.fullmatch(name):
            raise ValueError(f"policy name {name!r}: letters, digits, '-', '_' and '.' only")
        if cls.model_property not in MODEL_PROPERTIES:
            raise ValueError(f"policy {name!r}: model_property {cls.model_property!r} is not one of "
                             f"{', '.join(MODEL_PROPERTIES)}")
        cls.name, cls.summary = name, summary
        return POLICIES.add(name, cls)
    return register


def policy_class(name: str) -> type[Policy]:
    """The class registered as ``name``; InvalidArgument listing the names otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        raise InvalidArgument("policy", name, f"unknown (choose from {', '.join(POLICIES)})",
                              hex_value=False) from None


def make_policy(spec: str, memory: int, **values: object) -> Policy:
    """A fresh policy from its spec (``"lazy"``, ``"lazy:budget=8M,max_age=20ms"``), for a
    guest of ``memory`` bytes: parameters the spec leaves out take their defaults, which may
    follow the memory (lazy's budget: 1% of it).  ``values`` set parameters from Python
    (``budget=4 << 20``); one given both ways is refused, as is anything the policy does not
    take.  Raises InvalidArgument naming the field, the value and what is allowed."""
    name, texts = parse_spec(spec)
    cls = policy_class(name)
    for key in values.keys() & texts.keys():
        raise InvalidArgument(f"{name}.{key}", values[key], f"given twice: the spec {spec!r} sets it too",
                              hex_value=False)
    given: dict[str, object] = {**texts, **values}
    for param in cls.params:
        if param.name not in given and isinstance(param.default, ShareOfMemory):
            given[param.name] = param.default(memory)
    return cls(**given)


__all__ = ["POLICIES", "make_policy", "policy", "policy_class"]
