"""The declared floors are true: each distribution installed with its direct dependencies at the
lowest releases its requirements allow imports every one of its modules.

A requirement such as `openai>=1.30` says that 1.30 will do; if the code uses something only a
later release has, the floor is a lie that uv.lock (which holds the newest releases) never shows.
For shared, every service with an image and the cli, a fresh environment gets `uv pip install
--resolution lowest-direct` of the distribution's folder and the shared library's folder (with the
cluster extra where the image installs it; shared's own dependencies are at their floors too). In
it every module of the distribution is imported, and so is every import its sources make inside
functions (those run only when called). A floor that has no wheel for this CPython and had to be
compiled from its sdist is too low as well: python:3.11-slim, and most machines, have no compiler.
(An sdist-only floor that builds a pure-Python wheel is fine.) tests/test_boundaries.py checks
that every import is declared.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from image_env import UV, workspace_overrides_file
from k8s_checks import REPO

SHARED = REPO / "shared"
SERVICES = sorted(p.name for p in (REPO / "services").iterdir() if (p / "pyproject.toml").is_file())
# Every distribution that ships: shared, each service with an image, and the conveyor command.
DISTRIBUTIONS = ["shared", *(name for name in SERVICES if (REPO / "services" / name / "Dockerfile").is_file()
                             or name == "cli")]
# What changes what `uv pip install` resolves: none of it may come from the caller's shell.
RESOLUTION_SETTINGS = ("UV_RESOLUTION", "UV_PRERELEASE", "UV_NO_SOURCES", "UV_NO_EDITABLE", "UV_NO_BUILD",
                       "UV_NO_BINARY", "UV_ONLY_BINARY", "UV_CONSTRAINT", "UV_OVERRIDE", "UV_BUILD_CONSTRAINT",
                       "UV_PYTHON", "UV_SYSTEM_PYTHON", "UV_PROJECT_ENVIRONMENT", "VIRTUAL_ENV", "PYTHONPATH")
# Run in the floor environment: argv[1] is the package whose modules are imported ("conveyor" for
# the shared library, the only distribution there then). Prints the modules, why each that failed
# failed, and the wheel tags of every installed distribution.
PROBE = r"""
import ast, importlib, importlib.metadata as md, importlib.util, json, pkgutil, sys
package = sys.argv[1]
import conveyor
modules, failures = [], {}
def attempt(problems, what, action):
    try:
        action()
    except BaseException as exc:  # report every failure, not the first
        error = f"{type(exc).__name__}: {exc}"
        if not any(problem.endswith(error) for problem in problems):  # once per module
            problems.append(f"{what}{error}")
def from_import(base, names):
    module = importlib.import_module(base)
    for name in names:
        if name != "*" and not hasattr(module, name):
            try:
                importlib.import_module(f"{base}.{name}")
            except ModuleNotFoundError:
                raise ImportError(f"cannot import name {name!r} from {base!r}") from None
for info in pkgutil.walk_packages(conveyor.__path__, "conveyor.", onerror=lambda name: None):
    if info.name != package and not info.name.startswith(package + "."):
        continue
    modules.append(info.name)
    problems = []
    attempt(problems, "", lambda: importlib.import_module(info.name))
    # The imports inside functions run only when they are called: each is tried here. Our own
    # modules are left out, the walk imports every one of them.
    origin = importlib.util.find_spec(info.name).origin
    with open(origin, encoding="utf-8") as source:
        tree = ast.parse(source.read(), origin)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "conveyor":
                    attempt(problems, f"import {alias.name}: ", lambda name=alias.name: importlib.import_module(name))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] != "conveyor":
            names = [alias.name for alias in node.names]
            attempt(problems, f"from {node.module} import {', '.join(names)}: ",
                    lambda base=node.module, names=names: from_import(base, names))
    if problems:
        failures[info.name] = list(dict.fromkeys(problems))
tags = {d.metadata["Name"]: [line.split(":", 1)[1].strip() for line in (d.read_text("WHEEL") or "").splitlines()
                             if line.startswith("Tag:")] for d in md.distributions()}
print(json.dumps({"modules": sorted(modules), "failures": failures, "tags": tags}))
"""


def _project(name: str) -> dict:
    return tomllib.loads((_folder(name) / "pyproject.toml").read_text())["project"]


def _folder(name: str) -> Path:
    return SHARED if name == "shared" else REPO / "services" / name


def _package(name: str) -> str:
    return "conveyor" if name == "shared" else f"conveyor.{name}"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _image_extras(name: str) -> list[str]:
    """The extras the service's Dockerfile installs (`uv sync --extra X`); the cli has no image."""
    dockerfile = _folder(name) / "Dockerfile"
    return sorted(set(re.findall(r"--extra\s+(\S+)", dockerfile.read_text()))) if dockerfile.is_file() else []


def _requirements(name: str) -> list[str]:
    """What the image installs: the distribution with the extras its Dockerfile names and the
    shared library from its folder; for shared itself, all its extras (every backend is one of its
    modules)."""
    if name == "shared":
        extras = sorted(_project(name).get("optional-dependencies", {}))
        return [f"conveyor-shared[{','.join(extras)}] @ {SHARED.as_uri()}"]
    extras = _image_extras(name)
    suffix = f"[{','.join(extras)}]" if extras else ""
    return [f"conveyor-{name}{suffix} @ {_folder(name).as_uri()}", f"conveyor-shared @ {SHARED.as_uri()}"]


def _expected_modules(name: str) -> set[str]:
    root = SHARED / "src" if name == "shared" else _folder(name) / "src"
    found = set()
    for path in (root / Path(*_package(name).split("."))).rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found - {"conveyor"}


def _pins(text: str) -> dict[str, str]:
    return {_normalize(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", text, re.M)}


def _direct(name: str) -> set[str]:
    """The distributions installed at their floors with `name`: its own requirements and the shared
    library's (lowest-direct counts the dependencies of local folders as direct), extras included."""
    return {_normalize(re.split(r"[\s\[<>=!~;@]", requirement, maxsplit=1)[0])
            for dist in {name, "shared"}
            for requirement in [*_project(dist)["dependencies"],
                                *(r for extra in _project(dist).get("optional-dependencies", {}).values() for r in extra)]
            } - {"conveyor-shared"}


@dataclass(frozen=True)
class FloorEnv:
    modules: list[str]
    # module -> why it, or an import inside one of its functions, fails
    import_failures: dict[str, list[str]]
    # direct dependency -> its floor, built here from source into a platform wheel (a compiler ran),
    # and the lowest release with a wheel
    compiled: dict[str, tuple[str, str]]
    # the direct dependencies as installed
    floors: dict[str, str]


def _build_floor_env(name: str, into: Path) -> FloorEnv:
    env = {key: value for key, value in os.environ.items() if key not in RESOLUTION_SETTINGS}
    venv, requirements = into / "venv", into / "requirements.txt"
    python = venv / "bin" / "python"
    requirements.write_text("\n".join(_requirements(name)) + "\n")
    overrides = workspace_overrides_file(into)

    def uv(*args: str) -> str:
        # cwd outside the workspace: no uv setting of ours applies but the workspace's sources,
        # which uv finds from the requirements' folders (conveyor-shared comes from shared/).
        result = subprocess.run([str(UV), *args], cwd=into, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: uv {' '.join(args)}\n{result.stderr}"
        return result.stdout

    uv("venv", "--quiet", "--python", sys.executable, str(venv))
    lowest = ("--python", str(python), "--resolution", "lowest-direct", "--override", str(overrides))
    # The workspace source makes conveyor-shared editable; installed, it is a wheel like the others.
    # uv rebuilds a folder's wheel only when its pyproject.toml changes: ours are built afresh.
    ours = [arg for dist in sorted({"conveyor-shared", f"conveyor-{name}"}) for arg in ("--refresh-package", dist)]
    uv("pip", "install", "--quiet", *lowest, "--no-editable", *ours, "-r", str(requirements))
    installed = _pins(uv("pip", "freeze", "--python", str(python)))
    probe = subprocess.run([str(python), "-c", PROBE, _package(name)], capture_output=True, text=True,
                           env={"PATH": os.environ["PATH"]}, cwd=into)
    assert probe.returncode == 0, f"{name}: the import probe failed\n{probe.stderr}"
    found = json.loads(probe.stdout)
    direct = _direct(name) & set(installed)
    # A floor with a platform wheel installed: did it come from the index, or from its sdist and a
    # compiler (which the images and most machines lack)? Resolved from wheels only, it differs.
    tags = {_normalize(dist): dist_tags for dist, dist_tags in found["tags"].items()}
    binary = sorted(d for d in direct if not all(tag.endswith("-none-any") for tag in tags.get(d, [])))
    with_wheels = _pins(uv("pip", "compile", *lowest, "--no-header", "--no-annotate",
                           *(arg for dist in binary for arg in ("--only-binary", dist)), str(requirements)))
    compiled = {dist: (installed[dist], with_wheels.get(dist, "none")) for dist in binary
                if with_wheels.get(dist) != installed[dist]}
    return FloorEnv(found["modules"], found["failures"], compiled, {d: installed[d] for d in sorted(direct)})


@pytest.fixture(scope="module")
def floor_envs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[FloorEnv]]]:
    """One environment per distribution, built in parallel; each test takes its own (a failed
    build fails that distribution's tests only)."""
    folders = {name: tmp_path_factory.mktemp(f"floors-{name}") for name in DISTRIBUTIONS}
    pool = ThreadPoolExecutor(max_workers=3)
    yield {name: pool.submit(_build_floor_env, name, folder) for name, folder in folders.items()}
    pool.shutdown(wait=True, cancel_futures=True)


def test_every_shipped_distribution_is_checked() -> None:
    assert DISTRIBUTIONS == ["shared", "cli", "embedder", "extractor", "gateway", "notifier", "operator", "summarizer"]


@pytest.mark.slow  # about 30 s for all eight; the default suite runs it
@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_every_module_imports_with_the_dependencies_at_their_floors(name: str, floor_envs: dict) -> None:
    env: FloorEnv = floor_envs[name].result()
    by_error: dict[str, list[str]] = {}
    for module, whys in sorted(env.import_failures.items()):
        for why in whys:
            by_error.setdefault(re.sub(r" \(/[^)]*\.py\)$", "", why), []).append(module)
    report = "\n".join(f"  {why}\n      in {', '.join(modules)}" for why, modules in by_error.items())
    floors = " ".join(f"{dist}=={version}" for dist, version in env.floors.items())
    if env.import_failures:
        pytest.fail(f"with {name}'s direct dependencies at their floors, modules do not import: raise the floor "
                    f"of the library named to the lowest release that works (in the pyproject.toml that declares "
                    f"it)\n{report}\nfloors: {floors}", pytrace=False)
    # A package that does not import hides its modules from the walk: this comes second.
    assert set(env.modules) == _expected_modules(name), "the probe imported other modules than the sources hold"


@pytest.mark.slow  # about 30 s for all eight; the default suite runs it
@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_no_floor_needs_a_compiler(name: str, floor_envs: dict) -> None:
    env: FloorEnv = floor_envs[name].result()
    if env.compiled:
        pytest.fail("\n".join(
            f"{dist}: the floor resolves to {floor}, which has no wheel for this CPython and was compiled from its "
            f"sdist; the lowest release with a wheel is {wheel}: raise the floor to it"
            for dist, (floor, wheel) in env.compiled.items()), pytrace=False)
