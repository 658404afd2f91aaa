"""Which `CONVEYOR_*` variables the product reads, so that a typo stops a process by name.

Every process of a release gets the same variables (one ConfigMap, or the shell `conveyor up` runs
in), so a process accepts what its neighbours read and refuses only names no part of Conveyor
reads: a misspelt gateway port would otherwise fall back to the default port without a word.
`Settings` fields are known by themselves; what is read elsewhere is listed here, with its reader.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from pydantic_settings import BaseSettings

PREFIX = "CONVEYOR_"

# Read outside `Settings`: name -> who reads it.
READ_ELSEWHERE: dict[str, str] = {
    "CONVEYOR_API_KEY": "the conveyor command (the key it sends)",
    "CONVEYOR_GATEWAY_URL": "the conveyor command (the gateway it calls)",
    "CONVEYOR_NAMESPACE": "scripts/kind-up (the namespace it installs into)",
    "CONVEYOR_STAGE": "the operator, which sets it on each stage's container to name the stage",
}
# Families with settings of their own, checked by the process that reads them.
OWNED_PREFIXES: dict[str, str] = {
    "CONVEYOR_OPERATOR_": "the operator (conveyor.operator.config.OperatorConfig)",
}


def variables_of(model: type[BaseSettings]) -> set[str]:
    prefix = str(model.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper() for name in model.model_fields}


def unknown_variables(environ: Mapping[str, str], known: Iterable[str], *, prefix: str = PREFIX,
                      owned: Iterable[str] = ()) -> list[str]:
    """One line per variable under `prefix` that is not `known` (nor under an `owned` prefix),
    with the closest known name when one is close."""
    known = set(known)
    owned = tuple(owned)
    lines = []
    for name in sorted(environ):
        if not name.startswith(prefix) or name in known or (owned and name.startswith(owned)):
            continue
        # Compared without the shared prefix, which would make every name look close.
        close = difflib.get_close_matches(name.removeprefix(prefix), [k.removeprefix(prefix) for k in known],
                                          n=1, cutoff=0.75)
        hint = f"; did you mean {prefix}{close[0]}?" if close else "; no part of Conveyor reads it (remove it)"
        lines.append(f"unknown setting {name}{hint}")
    return lines
