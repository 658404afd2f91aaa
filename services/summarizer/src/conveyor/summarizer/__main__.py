"""`conveyor-summarizer` (or `python -m conveyor.summarizer`): one summarizer worker process, until SIGTERM."""

from conveyor.summarizer.handler import build_stage
from conveyor.worker import main as run_stage


def main() -> int:
    return run_stage("summarizer", build_stage)


if __name__ == "__main__":
    raise SystemExit(main())
