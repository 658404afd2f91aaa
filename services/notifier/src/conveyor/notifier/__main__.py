"""`conveyor-notifier` (or `python -m conveyor.notifier`): one notifier worker process, until SIGTERM."""

import sys

from conveyor.notifier.handler import build_stage
from conveyor.settings import load_settings
from conveyor.webhook_keys import master_secrets
from conveyor.worker import main as run_stage

MISSING_SECRET = (
    "conveyor-notifier: CONVEYOR_WEBHOOK_SECRET is not set. Set it to the master key every tenant's webhook "
    "secret is derived from "
    "(a Standard Webhooks whsec_<base64> secret, e.g. \"whsec_$(openssl rand -base64 32)\"); "
    "conveyor up makes one in <CONVEYOR_HOME>/webhook-secret."
)


def main() -> int:
    secret = load_settings().webhook_secret
    if secret is None:
        print(MISSING_SECRET, file=sys.stderr)
        return 2
    try:
        master_secrets(secret.get_secret_value())
    except ValueError:  # binascii.Error too
        print("conveyor-notifier: CONVEYOR_WEBHOOK_SECRET is not valid: give one or two (comma separated) secrets, "
              "each whsec_<base64> or plain text", file=sys.stderr)
        return 2
    return run_stage("notifier", build_stage)


if __name__ == "__main__":
    raise SystemExit(main())
