"""Pipeline files for `conveyor up -f`: the same `Pipeline` resource `kubectl apply` takes.

On one machine only what describes the data flow is used: stage names and order, topics, handlers
and commands, summarizer options and plain `env` values. Images, scaling, resources, `envFrom` and
`valueFrom` are Kubernetes' (set such values in the shell instead). With no file, `conveyor up`
runs the built-in pipeline in `pipelines/default.yaml`.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import yaml

from conveyor.pipeline import PipelineSpec, SpecError, StageSpec, parse_spec

MAX_FILE_BYTES = 1_000_000


class PipelineFileError(Exception):
    """The file is not a Pipeline this runtime can run; the message says where and why."""


def load_pipeline_file(path: Path) -> tuple[str, PipelineSpec]:
    """(the pipeline's name, its spec) from a YAML file."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise PipelineFileError(f"{path}: larger than {MAX_FILE_BYTES} bytes; is it a Pipeline file?")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineFileError(f"{path}: cannot be read ({exc.__class__.__name__}: {exc})") from None
    return parse_pipeline(text, str(path))


def default_pipeline() -> tuple[str, PipelineSpec]:
    text = resources.files("conveyor.cli").joinpath("pipelines/default.yaml").read_text(encoding="utf-8")
    return parse_pipeline(text, "the built-in pipeline")


def parse_pipeline(text: str, where: str) -> tuple[str, PipelineSpec]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise PipelineFileError(f"{where}: not valid YAML{at}") from None
    if not isinstance(document, dict) or document.get("kind") != "Pipeline":
        raise PipelineFileError(f"{where}: not a Pipeline resource (it needs kind: Pipeline and a spec)")
    if document.get("apiVersion") != "conveyor.dev/v1alpha1":
        raise PipelineFileError(f"{where}: apiVersion must be conveyor.dev/v1alpha1, not {document.get('apiVersion')!r}")
    metadata = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
    try:
        spec = parse_spec(document.get("spec"))
    except SpecError as exc:
        raise PipelineFileError(f"{where}: {exc}") from None
    return str(metadata.get("name") or "pipeline"), spec


def local_env(spec: PipelineSpec, stage: StageSpec) -> tuple[dict[str, str], list[str]]:
    """A stage's variables on this machine: its bindings, summarizer options and plain `env`
    values; and the names of the `valueFrom` ones that only Kubernetes can fill in."""
    env = spec.stage_env(stage)
    unresolved = []
    for var in stage.env:
        if var.value is not None:
            env[var.name] = var.value
        elif var.value_from is not None:
            unresolved.append(var.name)
    return env, unresolved


def single_process_stages(spec: PipelineSpec, environ: Mapping[str, str]) -> list[str]:
    """Stages that run one process here: an embedder without a Qdrant server keeps its vectors in
    an embedded Qdrant, a folder only one process may open."""
    return [stage.name for stage in spec.stages
            if stage.name == "embedder" and stage.handler is None and stage.command is None
            and not (local_env(spec, stage)[0].get("CONVEYOR_QDRANT_URL") or environ.get("CONVEYOR_QDRANT_URL"))]
