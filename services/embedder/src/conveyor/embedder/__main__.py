"""`conveyor-embedder` (or `python -m conveyor.embedder`): one embedder worker process, until SIGTERM."""

from conveyor.embedder.handler import build_stage
from conveyor.worker import main as run_stage


def main() -> int:
    return run_stage("embedder", build_stage)


if __name__ == "__main__":
    raise SystemExit(main())
