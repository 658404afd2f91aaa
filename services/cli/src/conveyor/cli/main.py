"""Entry point of the `conveyor` command."""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
from pathlib import Path

from conveyor.cli import running
from conveyor.cli.services import ServiceNotInstalled, service_argv
from conveyor.settings import Settings, load_settings
from conveyor.topics import BUILT_IN_STAGES



def default_gateway_url() -> str:
    """CONVEYOR_GATEWAY_URL; else the running `conveyor up`'s gateway; else the port the gateway
    reads (CONVEYOR_GATEWAY_PORT) on this machine."""
    if "CONVEYOR_GATEWAY_URL" in os.environ:
        return os.environ["CONVEYOR_GATEWAY_URL"]
    up = running.find(running.home_from_environment())
    return up.gateway_url if up else f"http://127.0.0.1:{os.environ.get('CONVEYOR_GATEWAY_PORT', '8000')}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conveyor",
        description="Conveyor: an event-driven pipeline that extracts and summarizes documents. "
                    "Settings come from CONVEYOR_* environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run the whole pipeline on this machine (embedded broker by default)",
                        description="Start an embedded Kafka-protocol broker, the gateway and every worker "
                                    "stage as child processes. Ctrl-C stops everything.")
    up.add_argument("-f", "--file", type=Path, metavar="PIPELINE.yaml",
                    help="run this Pipeline resource (the file kubectl applies, e.g. k8s/examples/pipeline.yaml); "
                         "default: the built-in extractor -> summarizer -> notifier")
    up.add_argument("--workers", type=int, default=1, metavar="N", help="processes per worker stage (default 1)")
    for stage in BUILT_IN_STAGES:
        up.add_argument(f"--{stage}s", type=int, metavar="N", dest=f"{stage}_workers",
                        help=f"processes of the {stage} stage (overrides --workers)")
    up.add_argument("--external-broker", action="store_true",
                    help="use CONVEYOR_BOOTSTRAP_SERVERS instead of starting the embedded broker")
    up.add_argument("--metrics-port", type=int, default=9100,
                    help="first worker metrics port; each worker takes the next (default 9100)")
    up.add_argument("--trace-console", action="store_true", help="print trace spans to the console")

    sub.add_parser("gateway", help="run the HTTP gateway (one process, as conveyor-gateway)")

    worker = sub.add_parser("worker", help="run one worker process of a stage (as conveyor-<stage>)",
                            description="Run one worker of a built-in stage, or of your own stage with --handler. "
                                        "Its bindings (topics, consumer group) come from CONVEYOR_* variables.")
    worker.add_argument("stage", help=f"the stage's name: {', '.join(BUILT_IN_STAGES)}, or your own with --handler")
    worker.add_argument("--handler", metavar="MODULE:FUNCTION",
                        help="your stage's async function event -> output event (or None), e.g. mystages.redact:handle; "
                             "imported from the current directory or PYTHONPATH")

    submit = sub.add_parser("submit", help="submit a file (or - for stdin text) and print its job id")
    submit.add_argument("source", help="path of an HTML, PDF, DOCX or text file, or - to read text from stdin")
    submit.add_argument("--user", default=os.environ.get("USER", "cli"), help="user id (default $USER)")
    submit.add_argument("--callback-url", help="webhook to POST the result to")
    submit.add_argument("--document", metavar="ID", default=None,
                        help="your id for the document this is a version of: a new version replaces its summary and "
                             "vectors; an unchanged one completes at once")
    submit.add_argument("--wait", action="store_true", help="wait for the job and print its summary")
    submit.add_argument("--timeout", type=float, default=300, help="seconds to wait with --wait (default 300)")
    submit.add_argument("--url", default=None, help="gateway URL (default $CONVEYOR_GATEWAY_URL, else the "
                        "running `conveyor up`, else http://127.0.0.1:$CONVEYOR_GATEWAY_PORT)")

    status = sub.add_parser("status", help="show a job's status")
    status.add_argument("job_id")
    status.add_argument("--url", default=None, help="gateway URL (as for submit)")
    status.add_argument("--follow", action="store_true",
                        help="print each stage's progress as it happens (the job's event stream) until the job "
                             "ends; then the summary, or the error (exit 1)")

    redeliver = sub.add_parser("redeliver", help="send an ended job's webhook again, now (same webhook-id); "
                                                 "or, with --failed-since, every job's that failed since then")
    redeliver.add_argument("job_id", nargs="?", help="the job (omit with --failed-since)")
    redeliver.add_argument("--failed-since", metavar="TIME", default=None,
                           help="an RFC 3339 time, e.g. 2026-12-03T00:00:00Z: every job that failed since then")
    redeliver.add_argument("--url", default=None, help="gateway URL (as for submit)")

    erase = sub.add_parser("erase", help="erase a document everywhere: its versions' jobs, blobs, summaries and "
                                         "vectors (with --wait, until every stage has)")
    erase.add_argument("document", metavar="ID", help="the document id its versions were submitted with")
    erase.add_argument("--wait", action="store_true", help="wait until the erasure has gone through every stage")
    erase.add_argument("--timeout", type=float, default=300, help="seconds to wait with --wait (default 300)")
    erase.add_argument("--url", default=None, help="gateway URL (as for submit)")

    topics = sub.add_parser("topics", help="list the pipeline's topics and partitions")
    topics.add_argument("--create", action="store_true", help="create missing topics first")

    lag = sub.add_parser("lag", help="exact consumer lag per group, topic and partition")
    lag.add_argument("--json", action="store_true", help="print JSON")

    dlq = sub.add_parser("dlq", help="inspect or replay a stage's dead-letter topic")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dlq_list = dlq_sub.add_parser("list", help="print the dead letters of a stage")
    dlq_list.add_argument("stage", help="the stage whose dead letters to print, e.g. extractor")
    dlq_replay = dlq_sub.add_parser("replay", help="send a stage's dead letters back to its input topic")
    dlq_replay.add_argument("stage", help="the stage whose dead letters to replay, e.g. extractor")
    for action in (dlq_list, dlq_replay):
        action.add_argument("--tenant", help="only this tenant's dead letters")
    dlq_replay.add_argument("--job", action="append", dest="jobs", metavar="JOB_ID",
                            help="replay only this job (repeatable)")

    keys = sub.add_parser("keys", help="create, list or revoke API keys (each belongs to one tenant)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="make a key for a tenant and print it (only this once)")
    create.add_argument("--tenant", required=True, help="the tenant its jobs belong to (e.g. acme)")
    create.add_argument("--name", default="", help="what the key is for, shown by list")
    keys_list = keys_sub.add_parser("list", help="the keys: id, tenant, name, state (never the key itself)")
    revoke = keys_sub.add_parser("revoke", help="stop a key working (the gateway notices within a second)")
    revoke.add_argument("key_id", help="the key's id, as list prints it")
    for action in (create, keys_list, revoke):
        action.add_argument("--file", help="key file (default $CONVEYOR_API_KEYS_FILE, else <home>/api-keys.json)")

    secret = sub.add_parser("webhook-secret", help="print a tenant's webhook signing secret(s), current first")
    secret.add_argument("--tenant", default="default", help="tenant (default: default, the local key's)")

    sub.add_parser("operator", help="run the Kubernetes operator for Pipeline resources (as conveyor-operator)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("submit", "status", "redeliver", "erase"):
        from conveyor.cli import client_commands

        args.url = args.url or default_gateway_url()
        return client_commands.run(args, running.home_from_environment())
    try:
        if args.command == "worker":
            return _run_worker(args.stage, args.handler)
        if args.command in ("gateway", "operator"):
            return _run_service(args.command)
        return _run(args, load_settings())
    except ServiceNotInstalled as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return 2


def _run_worker(stage: str, handler: str | None) -> int:
    if handler is None:
        if stage not in BUILT_IN_STAGES:
            print(f"conveyor worker: {stage!r} is not a built-in stage ({', '.join(BUILT_IN_STAGES)}); "
                  "run your own with --handler module:function", file=sys.stderr)
            return 2
        return _run_service(stage)
    from conveyor import custom_stage

    return custom_stage.run(stage, handler, program="conveyor worker")


def _run_service(name: str) -> int:
    """Run the service in this process, as `python -m conveyor.<name>` (its image's program)."""
    service_argv(name)  # one clear line when it is not installed
    # Stopped while it is still starting: nothing is consumed yet, so there is nothing to hand back.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.argv = [f"conveyor-{name}"]
    runpy.run_module(f"conveyor.{name}", run_name="__main__", alter_sys=True)
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "up":
        from conveyor.cli.supervisor import Supervisor

        if args.trace_console:
            os.environ["CONVEYOR_TRACE_CONSOLE"] = "true"
        from conveyor.cli.pipeline_file import PipelineFileError, default_pipeline, load_pipeline_file, single_process_stages

        try:
            _, pipeline = load_pipeline_file(args.file) if args.file else default_pipeline()
        except PipelineFileError as exc:
            print(f"conveyor up: {exc}", file=sys.stderr)
            return 2
        if not args.file:  # the built-in pipeline takes the prefix of the environment
            pipeline = pipeline.model_copy(update={"kafka": pipeline.kafka.model_copy(
                update={"topic_prefix": settings.topic_prefix})})
        workers = {s.name: getattr(args, f"{s.name}_workers", None) or args.workers for s in pipeline.stages}
        for name in single_process_stages(pipeline, os.environ):
            if workers[name] > 1:
                print(f"conveyor up: one {name} process, not {workers[name]}: its embedded Qdrant is one "
                      "process's folder (set CONVEYOR_QDRANT_URL to use a Qdrant server)", file=sys.stderr)
                workers[name] = 1
        return Supervisor(settings, pipeline, workers=workers, base_metrics_port=args.metrics_port,
                          embedded=not args.external_broker).run()
    if args.command in ("keys", "webhook-secret"):
        from conveyor.cli import key_commands

        return key_commands.run(args, settings)
    from conveyor.cli import kafka_commands as kc

    up = running.find(settings.home)
    if up:  # what the running `conveyor up` runs, unless the environment says otherwise
        found = {"bootstrap_servers": up.bootstrap_servers, "pipeline_stages": up.pipeline_stages,
                 "topic_prefix": up.topic_prefix}
        settings = settings.model_copy(update={name: value for name, value in found.items()
                                               if value is not None and f"CONVEYOR_{name.upper()}" not in os.environ})
    if args.command == "dlq" and args.stage not in settings.pipeline_stages:
        print(f"conveyor dlq: no stage {args.stage!r} in the pipeline ({', '.join(settings.pipeline_stages)})",
              file=sys.stderr)
        return 2

    if args.command == "topics":
        return kc.run(kc.topics(settings, create=args.create), settings)
    if args.command == "lag":
        return kc.run(kc.lag(settings, as_json=args.json), settings)
    if args.dlq_command == "list":
        return kc.run(kc.dlq_list(settings, args.stage, tenant=args.tenant), settings)
    return kc.run(kc.dlq_replay(settings, args.stage, job_ids=set(args.jobs or ()), tenant=args.tenant), settings)


if __name__ == "__main__":
    sys.exit(main())
