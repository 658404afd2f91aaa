"""The services the `conveyor` command runs, each as its own process: `python -m conveyor.<name>`.

The command never imports a service: each is its own distribution (services/<name>/), and a
machine may hold only some of them.
"""

from __future__ import annotations

import importlib.util
import sys


class ServiceNotInstalled(Exception):
    """A service that `conveyor` was asked to run is not installed in this environment."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the {name} service is not installed here: run ./scripts/run for the whole "
                         f"pipeline, or pip install ./shared ./services/{name}")
        self.name = name


def service_argv(name: str) -> list[str]:
    """The command line that runs service `name` with this interpreter."""
    module = f"conveyor.{name}"
    if importlib.util.find_spec(module) is None:
        raise ServiceNotInstalled(name)
    return [sys.executable, "-m", module]
