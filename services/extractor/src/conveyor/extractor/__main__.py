"""`conveyor-extractor` (or `python -m conveyor.extractor`): one extractor worker process, until SIGTERM."""

from conveyor.extractor.handler import build_stage
from conveyor.worker import main as run_stage


def main() -> int:
    return run_stage("extractor", build_stage)


if __name__ == "__main__":
    raise SystemExit(main())
