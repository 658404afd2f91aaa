"""Create an owned object, or merge-patch only the parts that differ from what it should be.

"Differs" means: some value the operator sets is missing or different on the server. Fields the
server or other controllers add (defaults, status, KEDA's replica count) never count, so an object
in shape gets no write at all. Resource quantities compare by value ("500m" equals 0.5).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from conveyor.operator import metrics
from conveyor.operator.kube import ApiError, KubeClient, kind_of

Action = Literal["created", "patched", "unchanged"]

# Set at creation only: KEDA owns a Deployment's replica count afterwards.
CREATE_ONLY: Mapping[str, tuple[str, ...]] = {"Deployment": ("replicas",)}

_SUFFIXES = {"": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
             "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def _quantity(value: Any) -> Decimal | None:
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
    return quantities and _quantity(desired) is not None and _quantity(desired) == _quantity(actual)


def merge_patch(desired: Mapping[str, Any], actual: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch that brings `actual` to `desired`, or {} when nothing differs."""
    patch: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    want_meta, have_meta = desired.get("metadata", {}), actual.get("metadata", {})
    for key in ("labels", "annotations"):
        if key in want_meta and not matches(want_meta[key], have_meta.get(key) or {}):
            meta[key] = want_meta[key]
    ours = want_meta.get("ownerReferences") or []
    theirs = have_meta.get("ownerReferences") or []
    if not all(any(matches(ref, have) for have in theirs) for ref in ours):
        uids = {ref["uid"] for ref in ours}
        meta["ownerReferences"] = [ref for ref in theirs if ref.get("uid") not in uids] + list(ours)
    if meta:
        patch["metadata"] = meta
    if "spec" in desired:
        skip = CREATE_ONLY.get(desired.get("kind", ""), ())
        spec = {k: v for k, v in desired["spec"].items() if k not in skip}
        if not matches(spec, actual.get("spec") or {}):
            patch["spec"] = spec
    return patch


async def ensure_object(kube: KubeClient, desired: Mapping[str, Any], *,
                        current: Mapping[str, Any] | None = None) -> tuple[Action, dict[str, Any]]:
    """Create `desired` or patch what differs; returns the action taken and the object as the server has it."""
    kind = kind_of(desired)
    namespace, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
    if current is None:
        current = await kube.get(kind, namespace, name)
    if current is None:
        try:
            created = await kube.create(desired)
        except ApiError as exc:
            if exc.status != 409:
                raise
            current = await kube.get(kind, namespace, name)  # created concurrently: compare with it
            if current is None:
                raise
        else:
            metrics.OBJECT_CHANGES.labels(kind.kind, "created").inc()
            return "created", created
    patch = merge_patch(desired, current)
    if not patch:
        return "unchanged", dict(current)
    patched = await kube.patch(kind, namespace, name, patch)
    metrics.OBJECT_CHANGES.labels(kind.kind, "patched").inc()
    return "patched", patched
