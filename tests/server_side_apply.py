"""Field ownership as an API server keeps it for server-side apply, simplified for the kmock tests.

Each manager owns a set of leaf paths, kept in `metadata.managedFields` (one entry per manager and
operation, `fieldsV1` as nested "f:" keys). Lists are atomic, a leaf as a whole (the real server
merges some lists by key). The rules modelled:
- an apply sets the config's values; a field the same manager applied before and leaves out now is
  removed, unless another manager owns it too;
- a field another manager owns with a different value is a conflict (409), unless `force` moves it
  to the applier;
- a merge patch (an update) takes the fields it changes from whoever owned them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

Path = tuple[str, ...]
Owner = tuple[str, str]  # (manager, operation)

# Set by the server, or naming the object: never owned.
UNOWNED = {("apiVersion",), ("kind",), ("status",)} | {("metadata", key) for key in (
    "name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
    "deletionTimestamp")}


class Conflict(Exception):
    """Fields another manager owns with other values; the message lists them as the API server does."""

    def __init__(self, conflicts: list[tuple[Path, str]]) -> None:
        self.conflicts = conflicts
        super().__init__("Apply failed with %d conflict(s): %s" % (len(conflicts), "; ".join(
            f'conflict with "{manager}": .{".".join(path)}' for path, manager in conflicts)))


def leaves(obj: Mapping[str, Any], prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every (path, value) whose value is not a non-empty dict; a path to a dict goes deeper."""
    for key, value in obj.items():
        path = prefix + (key,)
        if any(path[:len(u)] == u for u in UNOWNED):
            continue
        if isinstance(value, Mapping) and value:
            yield from leaves(value, path)
        else:
            yield path, value


def _fields_v1(paths: set[Path]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in sorted(paths):
        node = tree
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return tree


def _paths(tree: Mapping[str, Any], prefix: Path = ()) -> set[Path]:
    found: set[Path] = set()
    for key, child in tree.items():
        path = prefix + (key.removeprefix("f:"),)
        found |= _paths(child, path) if child else {path}
    return found


def ownership(obj: Mapping[str, Any] | None) -> dict[Owner, set[Path]]:
    entries = ((obj or {}).get("metadata") or {}).get("managedFields") or []
    return {(e["manager"], e["operation"]): _paths(e.get("fieldsV1") or {}) for e in entries}


def owned_by(obj: Mapping[str, Any], manager: str) -> set[Path]:
    """The paths `manager` owns in `obj`, through applies and updates alike."""
    return set().union(*(paths for (name, _), paths in ownership(obj).items() if name == manager))


def _with_ownership(obj: dict[str, Any], owners: dict[Owner, set[Path]], api_version: str) -> dict[str, Any]:
    obj.setdefault("metadata", {})["managedFields"] = [
        {"manager": manager, "operation": operation, "apiVersion": api_version, "fieldsType": "FieldsV1",
         "fieldsV1": _fields_v1(paths)}
        for (manager, operation), paths in owners.items() if paths]
    return obj


def _get(obj: Any, path: Path) -> Any:
    for key in path:
        if not isinstance(obj, Mapping) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _set(obj: dict[str, Any], path: Path, value: Any) -> None:
    for key in path[:-1]:
        if not isinstance(obj.get(key), dict):
            obj[key] = {}
        obj = obj[key]
    if not (value == {} and isinstance(obj.get(path[-1]), dict)):  # {} adds nothing to what is there
        obj[path[-1]] = copy.deepcopy(value)


def _remove(obj: dict[str, Any], path: Path) -> None:
    parents = [obj]
    for key in path[:-1]:
        if not isinstance(parents[-1].get(key), dict):
            return
        parents.append(parents[-1][key])
    parents[-1].pop(path[-1], None)
    for parent, key in zip(reversed(parents[:-1]), reversed(path[:-1])):  # drop the dicts left empty
        if parent[key]:
            break
        del parent[key]


def apply(current: Mapping[str, Any] | None, config: Mapping[str, Any], manager: str, *,
          force: bool) -> dict[str, Any]:
    """The object after `manager` applies `config` (raises Conflict)."""
    obj = copy.deepcopy(dict(current or {}))
    owners = ownership(obj)
    mine: Owner = (manager, "Apply")
    values = dict(leaves(config))
    conflicts = [(path, other) for other, paths in owners.items() if other != mine
                 for path in sorted(paths & values.keys()) if _get(obj, path) != values[path]]
    if conflicts and not force:
        raise Conflict([(path, other[0]) for path, other in conflicts])
    for path, other in conflicts:
        owners[other].discard(path)
    others = set().union(*(paths for owner, paths in owners.items() if owner != mine))
    for path in owners.get(mine, set()) - values.keys() - others:
        _remove(obj, path)
    for key in ("apiVersion", "kind"):
        obj[key] = config[key]
    obj.setdefault("metadata", {}).update({k: config["metadata"][k] for k in ("name", "namespace")})
    for path, value in values.items():
        _set(obj, path, value)
    owners[mine] = set(values)
    return _with_ownership(obj, owners, config["apiVersion"])


def update(current: Mapping[str, Any], patch: Mapping[str, Any], manager: str) -> list[dict[str, Any]]:
    """`managedFields` after `manager` merge-patches `current` with `patch`."""
    owners = ownership(current)
    changed = {path for path, value in leaves(patch) if value is not None and _get(current, path) != value}
    removed = {path for path, value in leaves(patch) if value is None}
    for paths in owners.values():
        paths -= changed
        paths -= {p for p in paths if any(p[:len(r)] == r for r in removed)}
    owners.setdefault((manager, "Update"), set()).update(changed)
    return _with_ownership({}, owners, current.get("apiVersion", ""))["metadata"]["managedFields"]
