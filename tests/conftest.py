"""Fixtures shared by the suite: a real embedded broker for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conveyor.cli.embedded_broker import EmbeddedBroker
from fakes.openai_server import openai_server  # noqa: F401  (re-exported fixture)


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """A real Tansu broker on 127.0.0.1; yields its bootstrap address."""
    with EmbeddedBroker() as embedded:
        yield embedded.bootstrap
