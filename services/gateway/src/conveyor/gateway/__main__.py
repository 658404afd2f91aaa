"""`conveyor-gateway` (or `python -m conveyor.gateway`): the HTTP gateway, one process."""

import uvicorn

from conveyor.gateway.app import create_app
from conveyor.logging import setup_logging
from conveyor.settings import load_settings


def main() -> int:
    settings = load_settings()
    setup_logging(settings.log_level, json=settings.log_json, service="gateway")
    uvicorn.run(create_app(settings), host=settings.gateway_host, port=settings.gateway_port,
                log_level=settings.log_level.lower(), access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
