"""Bring an owned object to shape by server-side apply, or leave it alone when it already is.

The applied config is exactly what the builders make, stamped with a hash of itself
(CONFIG_HASH_ANNOTATION). An object is in shape when the server has every value of that config
(fields the server or other controllers add, such as defaults, status and KEDA's replica count,
never count) and the same hash: such an object gets no write at all. Anything else is applied,
so drift is put back and a field the operator no longer sets (a new hash) is removed by the API
server. Resource quantities compare by value ("500m" equals 0.5).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from conveyor.operator import metrics
from conveyor.operator.kube import KubeClient, kind_of

Action = Literal["created", "patched", "unchanged"]

CONFIG_HASH_ANNOTATION = "conveyor.dev/applied-config"

_SUFFIXES = {"": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
             "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def quantity(value: Any) -> Decimal | None:
    """A Kubernetes resource quantity's value ("500m" is 0.5, "1Gi" 2**30); None if it is not one."""
    match = _QUANTITY.match(str(value).strip())
    if not match or match.group(2) not in _SUFFIXES:
        return None
    try:
        return Decimal(match.group(1)) * _SUFFIXES[match.group(2)]
    except InvalidOperation:
        return None


def matches(desired: Any, actual: Any, *, quantities: bool = False) -> bool:
    """True when every value in `desired` is present and equal in `actual` (extra fields are fine)."""
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and matches(value, actual[key], quantities=quantities or key in ("requests", "limits"))
            for key, value in desired.items())
    if isinstance(desired, Sequence) and not isinstance(desired, str):
        return (isinstance(actual, Sequence) and not isinstance(actual, str) and len(desired) == len(actual)
                and all(matches(d, a, quantities=quantities) for d, a in zip(desired, actual)))
    if desired == actual:
        return True
    return quantities and quantity(desired) is not None and quantity(desired) == quantity(actual)


def with_config_hash(desired: Mapping[str, Any]) -> dict[str, Any]:
    """`desired` with an annotation that changes whenever any part of it does."""
    stamped = copy.deepcopy(dict(desired))
    digest = hashlib.sha256(json.dumps(desired, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    stamped["metadata"].setdefault("annotations", {})[CONFIG_HASH_ANNOTATION] = digest[:16]
    return stamped


def in_shape(applied: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
    """True when `actual` has every label, annotation, owner reference and spec value of `applied`.

    Owner references are a set keyed by uid: others' references beside ours are fine.
    """
    want, have = applied.get("metadata", {}), actual.get("metadata", {})
    if not all(matches(want.get(key) or {}, have.get(key) or {}) for key in ("labels", "annotations")):
        return False
    theirs = have.get("ownerReferences") or []
    if not all(any(matches(ref, other) for other in theirs) for ref in want.get("ownerReferences") or []):
        return False
    return all(matches(value, actual.get(key)) for key, value in applied.items()
               if key not in ("apiVersion", "kind", "metadata"))


async def ensure_object(kube: KubeClient, desired: Mapping[str, Any], *,
                        current: Mapping[str, Any] | None = None) -> tuple[Action, dict[str, Any]]:
    """Apply `desired` unless the server's object is already in shape; returns the action taken and
    the object as the server has it. `current` saves the read when the caller has just made it."""
    kind = kind_of(desired)
    if current is None:
        current = await kube.get(kind, desired["metadata"]["namespace"], desired["metadata"]["name"])
    applied = with_config_hash(desired)
    if current is not None and in_shape(applied, current):
        return "unchanged", dict(current)
    result = await kube.apply(applied)
    action: Action = "created" if current is None else "patched"
    metrics.OBJECT_CHANGES.labels(kind.__name__, action).inc()
    return action, result
