"""The README stays true: its settings table is the one the code generates."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_settings_table_matches_the_settings_model() -> None:
    generated = subprocess.run([sys.executable, str(ROOT / "scripts/settings_table.py")], capture_output=True,
                               text=True, check=True).stdout.strip()
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- settings-table[^>]*-->\n(.*?)\n<!-- /settings-table -->", readme, re.S)
    assert block, "README lost its settings table markers"
    assert block.group(1).strip() == generated, "README settings table is stale: run scripts/settings_table.py"


def test_cli_help_lists_every_command() -> None:
    result = subprocess.run([sys.executable, "-m", "conveyor.cli.main", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("up", "gateway", "worker", "submit", "status", "topics", "lag", "dlq", "operator"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.M), command


def test_invalid_setting_fails_fast_naming_the_variable() -> None:
    result = subprocess.run([sys.executable, "-m", "conveyor.cli.main", "topics"], capture_output=True, text=True,
                            env={"CONVEYOR_PARTITIONS": "zero", "CONVEYOR_MAX_ATTEMPTS": "0", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "invalid setting CONVEYOR_PARTITIONS='zero': Input should be a valid integer, unable to parse string as an integer",
        "invalid setting CONVEYOR_MAX_ATTEMPTS='0': Input should be greater than or equal to 1",
    ]


def test_invalid_settings_never_echo_a_secret() -> None:
    from pydantic import ValidationError

    from conveyor.settings import Settings, invalid_settings

    try:
        Settings(openai_api_key=["not", "a", "string"], partitions=0)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = invalid_settings(exc, Settings)
    by_variable = {line.split()[2].split("=")[0].rstrip(":"): line for line in lines}
    assert by_variable["CONVEYOR_OPENAI_API_KEY"].startswith("invalid setting CONVEYOR_OPENAI_API_KEY: ")
    assert "not" not in by_variable["CONVEYOR_OPENAI_API_KEY"], "the value is not echoed"
    assert by_variable["CONVEYOR_PARTITIONS"].startswith("invalid setting CONVEYOR_PARTITIONS='0': ")


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor.cli.main", *args], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", **env})


def test_a_broker_that_is_not_there_is_one_line_that_says_what_to_do() -> None:
    from conveyor.cli.embedded_broker import free_port

    address = f"127.0.0.1:{free_port()}"
    for command in (["topics"], ["lag"], ["dlq", "list", "extractor"], ["dlq", "replay", "notifier"]):
        result = cli(*command, CONVEYOR_BOOTSTRAP_SERVERS=address)
        assert result.returncode == 1, command
        assert result.stderr.strip().splitlines() == [
            f"conveyor: cannot reach the Kafka broker at {address} (KafkaConnectionError). Is `conveyor up` "
            "running? Point CONVEYOR_BOOTSTRAP_SERVERS at the broker it printed."], command


def test_a_gateway_that_is_not_there_is_one_line_and_its_port_is_the_gateways() -> None:
    from conveyor.cli.embedded_broker import free_port

    port = free_port()
    for command in (["status", "job-1"], ["submit", "/etc/hostname"]):
        result = cli(*command, CONVEYOR_GATEWAY_PORT=str(port))
        assert result.returncode == 1, command
        assert result.stderr.strip().splitlines() == [
            f"conveyor: cannot reach the gateway at http://127.0.0.1:{port} (ConnectError). Is `conveyor up` "
            "running? Give its address with --url or CONVEYOR_GATEWAY_URL."], command


def test_replaying_a_job_with_no_dead_letter_says_so(broker: str) -> None:
    result = cli("dlq", "replay", "summarizer", "--job", "nope", CONVEYOR_BOOTSTRAP_SERVERS=broker,
                 CONVEYOR_TOPIC_PREFIX="replaynone")
    assert result.returncode == 1
    assert "replayed 0 record(s)" in result.stdout
    assert result.stderr.strip() == "conveyor: no dead letter for job(s) nope on replaynone.summarize.dlq"


def _command_lines() -> list[tuple[str, str]]:
    """Every line of the shell blocks in the README and docs/, continuation lines joined."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                found.append((doc.name, line.split(" #")[0].strip()))
    return found


def _skaffold_images() -> set[str]:
    return set(re.findall(r"^\s*- image: (\S+)", (ROOT / "skaffold.yaml").read_text(), re.M))


def test_the_docs_commands_name_files_images_and_namespaces_that_exist() -> None:
    lines = _command_lines()
    assert len(lines) > 40
    app_version = re.search(r'appVersion: "([^"]+)"', (ROOT / "charts/conveyor/Chart.yaml").read_text()).group(1)
    namespaces = set(re.findall(r"name: (\S+)", (ROOT / "k8s/namespace.yaml").read_text())) | \
        set(re.findall(r"--namespace (\w[\w-]*)", (ROOT / "scripts/kind-up").read_text()))
    problems = []
    for doc, line in lines:
        for path in re.findall(r"(?<![\w./$-])((?:k8s|charts|scripts|services|shared|bench|docs)/[\w./-]*[\w/])", line):
            if "$" not in path and not (ROOT / path).exists():
                problems.append(f"{doc}: {path} does not exist")
        for namespace in re.findall(r"(?:-n|--namespace)[ =]([\w-]+)", line):
            if namespace not in namespaces:
                problems.append(f"{doc}: namespace {namespace} is not one the project makes")
        for image, tag in re.findall(r"-t (conveyor-[\w$-]+)(?::(\S+))?", line):
            names = {image.replace("$s", name) for name in ("gateway", "extractor", "summarizer", "notifier", "operator")}
            if not names <= _skaffold_images():
                problems.append(f"{doc}: image {image} is not built by skaffold")
            if image not in ("conveyor-build", "conveyor-runtime") and tag != app_version:
                problems.append(f"{doc}: image {image} is tagged {tag or 'latest'}, the chart uses {app_version}")
    assert problems == []
    assert {"conveyor", "keda", "monitoring"} <= namespaces


def test_every_chart_repository_a_command_installs_from_is_added_first() -> None:
    by_doc: dict[str, list[str]] = {}
    for doc, line in _command_lines():
        by_doc.setdefault(doc, []).append(line)
    for doc, lines in by_doc.items():
        added = {repo for line in lines for repo in re.findall(r"helm repo add (\S+)", line)}
        used = {repo for line in lines
                for repo, chart in re.findall(r"helm upgrade --install \S+ ([\w-]+)/([\w-]+)", line)
                if not (ROOT / repo / chart).is_dir()}  # charts/conveyor is this repository's
        assert used <= added, f"{doc}: `helm repo add` missing for {sorted(used - added)}"


def test_the_pipeline_examples_use_the_images_and_tag_the_chart_deploys() -> None:
    app_version = re.search(r'appVersion: "([^"]+)"', (ROOT / "charts/conveyor/Chart.yaml").read_text()).group(1)
    for example in (ROOT / "k8s/examples").glob("*.yaml"):
        for image in re.findall(r"^\s+image: (\S+)", example.read_text(), re.M):
            name, _, tag = image.partition(":")
            assert tag == app_version, f"{example.name}: {image}"
            # A custom stage's image is the user's to build; the built-in ones are skaffold's.
            assert name in _skaffold_images() or name == "conveyor-embedder", f"{example.name}: {image}"
