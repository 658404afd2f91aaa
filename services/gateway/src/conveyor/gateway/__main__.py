"""`conveyor-gateway` (or `python -m conveyor.gateway`): the HTTP gateway, one process."""

import sys

import uvicorn

from conveyor.credentials import KeyFileError
from conveyor.gateway.app import create_app
from conveyor.logging import setup_logging
from conveyor.settings import load_settings


def main() -> int:
    settings = load_settings()
    setup_logging(settings.log_level, json=settings.log_json, service="gateway")
    try:
        app = create_app(settings)
    except KeyFileError as exc:
        print(f"conveyor-gateway: {exc}; fix it, or recreate it with `conveyor keys create`", file=sys.stderr)
        return 2
    uvicorn.run(app, host=settings.gateway_host, port=settings.gateway_port,
                log_level=settings.log_level.lower(), access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
