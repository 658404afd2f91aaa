"""`conveyor-notifier` (or `python -m conveyor.notifier`): one notifier worker process, until SIGTERM."""

import sys

from conveyor.notifier.handler import build_stage
from conveyor.settings import load_settings
from conveyor.worker import main as run_stage

MISSING_SECRET = (
    "conveyor-notifier: CONVEYOR_WEBHOOK_SECRET is not set. Set it to the key webhooks are signed with "
    "(a Standard Webhooks whsec_<base64> secret, e.g. \"whsec_$(openssl rand -base64 32)\"); "
    "conveyor up makes one in <CONVEYOR_HOME>/webhook-secret."
)


def main() -> int:
    if load_settings().webhook_secret is None:
        print(MISSING_SECRET, file=sys.stderr)
        return 2
    return run_stage("notifier", build_stage)


if __name__ == "__main__":
    raise SystemExit(main())
