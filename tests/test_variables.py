"""Unknown `CONVEYOR_*` variables stop a process by name; the ones its neighbours read do not."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conveyor.operator.config import OperatorConfig
from conveyor.settings import Settings
from conveyor.variables import OWNED_PREFIXES, READ_ELSEWHERE, unknown_variables, variables_of

ROOT = Path(__file__).resolve().parents[1]
KNOWN = variables_of(Settings) | set(READ_ELSEWHERE)


def clean_environment(**variables: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}, **variables}


def test_a_typo_stops_the_gateway_in_one_line_naming_it_and_the_setting_it_meant(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "conveyor.gateway"], capture_output=True, text=True, timeout=60,
                            env=clean_environment(CONVEYOR_HOME=str(tmp_path), CONVEYOR_GATEWAY_PROT="9000",
                                                  CONVEYOR_FLAVOUR="x"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "unknown setting CONVEYOR_FLAVOUR; no part of Conveyor reads it (remove it)",
        "unknown setting CONVEYOR_GATEWAY_PROT; did you mean CONVEYOR_GATEWAY_PORT?",
    ]


def test_the_operators_typos_are_the_operators_to_refuse(tmp_path: Path) -> None:
    environment = {"CONVEYOR_OPERATOR_NAMESPACS": "a", "CONVEYOR_OPERATOR_NAMESPACES": "b"}
    # A worker sharing the ConfigMap leaves the operator's family alone ...
    assert unknown_variables(environment, KNOWN, owned=OWNED_PREFIXES) == []
    # ... and the operator refuses its own typo.
    result = subprocess.run([sys.executable, "-m", "conveyor.operator"], capture_output=True, text=True, timeout=60,
                            env=clean_environment(CONVEYOR_HOME=str(tmp_path), **environment))
    assert result.returncode == 2
    assert result.stderr.strip() == \
        "unknown setting CONVEYOR_OPERATOR_NAMESPACS; did you mean CONVEYOR_OPERATOR_NAMESPACES?"


def test_what_neighbours_read_is_not_unknown() -> None:
    shared_config_map = {name: "x" for name in (*KNOWN, *variables_of(OperatorConfig))}
    assert unknown_variables(shared_config_map, KNOWN, owned=OWNED_PREFIXES) == []
    assert unknown_variables({"OTHER_THING": "1", "CONVEYORX": "1"}, KNOWN) == []


def test_every_variable_the_project_names_is_one_some_part_reads() -> None:
    """The chart, the operator, the scripts, the examples and the docs name only variables that
    exist (a name ending in `_` or `_*` is a family, as in CONVEYOR_SASL_*)."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    named: dict[str, str] = {}
    for name in files:
        path = ROOT / name
        if name.startswith("tests/") or not path.is_file() or path.suffix in (".png", ".lock"):
            continue
        for match in re.finditer(r"CONVEYOR_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_]*[*_])", path.read_text(errors="replace")):
            named.setdefault(match.group(0), name)
    known = KNOWN | variables_of(OperatorConfig)
    assert len(named) > 50
    assert {variable: where for variable, where in named.items() if variable not in known} == {}
