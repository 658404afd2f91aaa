"""`conveyor-notifier` (or `python -m conveyor.notifier`): one notifier worker process, until SIGTERM."""

from conveyor.notifier.handler import build_stage
from conveyor.worker import main as run_stage


def main() -> int:
    return run_stage("notifier", build_stage)


if __name__ == "__main__":
    raise SystemExit(main())
