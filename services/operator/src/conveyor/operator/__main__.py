"""`conveyor-operator` (or `python -m conveyor.operator`): the Pipeline operator, until SIGTERM."""

from conveyor.operator.main import run


def main() -> int:
    return run()


if __name__ == "__main__":
    raise SystemExit(main())
