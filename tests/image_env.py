"""The virtual environment a service's image holds, built here without Docker.

`build_image_env("notifier", into)` runs the install steps of the image's build: the `build` stage
of shared/Dockerfile, then the `install` stage of services/<name>/Dockerfile, their COPY and RUN
instructions in order, against a copy of the build context (.dockerignore applied). The image's
absolute paths are mapped into `into` (/src, /opt/conveyor) and its interpreter is this machine's
CPython 3.11. Three differences from a real build, for speed, none changing what is installed:
uv uses its cache (the image sets UV_NO_CACHE), links files instead of copying them, and leaves
bytecode to be compiled on import (the image compiles it at install).
The `pip install uv==...` step is checked against the uv that runs here rather than run.

What only a real `docker build` shows: the base images pull, the layers cache, the final stage's
COPY of /opt/conveyor into the runtime image.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from k8s_checks import REPO, Dockerfile

UV = Path(sys.executable).with_name("uv")
IMAGE_VENV = "/opt/conveyor"
IMAGE_WORKDIR = "/src"
# Run inside the built environment: every module below conveyor is imported.
PROBE = """
import importlib, importlib.metadata as md, json, pkgutil
import conveyor
modules, failures = [], {}
for info in pkgutil.walk_packages(conveyor.__path__, "conveyor.", onerror=lambda name: None):
    modules.append(info.name)
    try:
        importlib.import_module(info.name)
    except ModuleNotFoundError as exc:
        failures[info.name] = f"missing {exc.name}"
    except Exception as exc:  # report every failure, not the first
        failures[info.name] = f"{type(exc).__name__}: {exc}"
dists = sorted({d.metadata["Name"].lower().replace("_", "-") for d in md.distributions()})
print(json.dumps({"modules": sorted(modules), "failures": failures, "distributions": dists}))
"""


@dataclass(frozen=True)
class ImageEnv:
    """What an image's /opt/conveyor holds."""

    root: Path
    modules: list[str]
    import_failures: dict[str, str]
    distributions: list[str]

    def size_bytes(self) -> int:
        """Installed size: every regular file once (hard links from uv's cache counted once)."""
        seen: set[int] = set()
        total = 0
        for path in self.root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                stat = path.stat()
                if stat.st_ino not in seen:
                    seen.add(stat.st_ino)
                    total += stat.st_size
        return total


def workspace_overrides_file(into: Path) -> Path:
    """The workspace's override-dependencies (what uv.lock, and so every image, resolves with) as a
    file for `uv pip install --override`, outside the workspace."""
    overrides = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["uv"].get("override-dependencies", [])
    path = into / "overrides.txt"
    path.write_text("".join(f"{line}\n" for line in overrides))
    return path


def build_image_env(service: str, into: Path) -> ImageEnv:
    """Replay the install steps of `conveyor-<service>`'s image into `into`; see the module doc."""
    context = into / "src"
    venv = into / "opt-conveyor"
    base = Dockerfile.parse(REPO / "shared" / "Dockerfile")
    image = Dockerfile.parse(REPO / "services" / service / "Dockerfile")
    env = {**os.environ, **base.env(_stage(base, "build"))}
    env.update(UV_PROJECT_ENVIRONMENT=str(venv), UV_PYTHON=_base_python(), PATH=f"{UV.parent}:{env['PATH']}")
    for key in ("UV_NO_CACHE", "UV_LINK_MODE", "UV_COMPILE_BYTECODE", "VIRTUAL_ENV"):
        env.pop(key, None)
    steps = base.stages[_stage(base, "build")] + image.stages[_stage(image, "install")]
    for instruction, argument in steps:
        if instruction == "WORKDIR":
            assert argument == IMAGE_WORKDIR, f"unsupported WORKDIR {argument}"
        elif instruction == "COPY":
            *sources, target = shlex.split(argument)
            for source in sources:
                _copy(REPO / source, context / target, is_dir_target=target.endswith("/") or len(sources) > 1)
        elif instruction == "RUN":
            if argument.startswith("pip install uv=="):
                _check_uv(argument.removeprefix("pip install uv=="))
                continue
            subprocess.run(argument, shell=True, cwd=context, env=env, check=True, capture_output=True)
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", PROBE], capture_output=True, text=True,
                           env={"PATH": os.environ["PATH"]}, cwd=into, check=True)
    found = json.loads(probe.stdout)
    return ImageEnv(venv, found["modules"], found["failures"], found["distributions"])


def _stage(dockerfile: Dockerfile, name: str) -> int:
    for index, argument in enumerate(dockerfile.instructions("FROM")):
        if argument.split()[-1] == name:
            return index
    raise LookupError(f"no stage named {name}")


def _base_python() -> str:
    return str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")


def _check_uv(version: str) -> None:
    found = subprocess.run([str(UV), "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    assert found == version, f"the image installs uv {version}, this environment has uv {found}"


def _in_context(relative: str) -> bool:
    """Whether .dockerignore lets a path into the build context: its rules in order, the last
    that matches the path or one of its parent folders wins (`!` lets back in)."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    included = True
    for line in (REPO / ".dockerignore").read_text().splitlines():
        rule = line.strip()
        if not rule or rule.startswith("#"):
            continue
        allow = rule.startswith("!")
        pattern = rule.removeprefix("!").rstrip("/")
        # `**/x` matches x at any depth, the top included.
        patterns = [pattern.removeprefix("**/"), pattern.replace("**/", "*/")]
        if any(fnmatch.fnmatchcase(prefix, p) for prefix in prefixes for p in patterns):
            included = allow
    return included


def _copy(source: Path, target: Path, *, is_dir_target: bool) -> None:
    """Docker's COPY: a folder's contents into the target folder, a file into it or onto it."""
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(REPO).as_posix()
            if path.is_file() and _in_context(relative):
                destination = target / path.relative_to(source)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, destination)
        return
    assert _in_context(source.relative_to(REPO).as_posix()), f"{source} is outside the build context"
    destination = target / source.name if is_dir_target else target
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, destination)
