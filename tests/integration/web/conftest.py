"""Fixtures of the web UI tests (the environment itself is in webenv.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from integration.web.webenv import ADMIN, VIEWER, WebEnv, open_web_env


@pytest.fixture
def web_env(tmp_path: Path) -> Iterator[WebEnv]:
    with open_web_env(tmp_path / "server") as env:
        yield env


@pytest.fixture
def admin(web_env: WebEnv) -> tuple[FlaskClient, str]:
    """An admin's client and its session's CSRF token."""
    return web_env.logged_in(ADMIN)


@pytest.fixture
def viewer(web_env: WebEnv) -> tuple[FlaskClient, str]:
    """A viewer's client and its session's CSRF token."""
    return web_env.logged_in(VIEWER)
