"""Fixtures for the serve tests: a real control server whose output is a real preview tap, fed from its own
thread. A module changes the server's options (``server_options``) or the feed's rate (``feed_fps``) by
overriding those fixtures; the API-only modules bring their own ``controller`` and ``server``."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import Feeder, TapController


@pytest.fixture
def controller() -> TapController:
    return TapController()


@pytest.fixture
def server_options() -> dict[str, Any]:
    """Keyword arguments for ``start_control`` (``token``, ``request_deadline_s``, ...)."""
    return {}


@pytest.fixture
def feed_fps() -> float:
    return 100.0


@pytest.fixture
def server(controller, start_control, server_options, feed_fps):
    srv = start_control(controller, **server_options)
    with Feeder(controller.tap, fps=feed_fps):
        yield srv
    controller.tap.close()
