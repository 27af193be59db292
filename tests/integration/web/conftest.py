"""Fixtures of the web UI tests (the environment itself is in webenv.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from integration.web.webenv import ADMIN, VIEWER, SettableClock, WebEnv
from survey6.server.fleet import Fleet
from survey6.server.pki import CertificateAuthority
from survey6.server.registry import db
from survey6.server.settings import LivenessSettings
from survey6.server.setup import initialise, pki_dir
from survey6.server.web.users import add_user


@pytest.fixture
def web_env(tmp_path: Path) -> Iterator[WebEnv]:
    data_dir = tmp_path / "server"
    initialise(data_dir, server_names=["localhost"], admin_password=ADMIN[1])
    engine = db.make_engine(db.sqlite_url(data_dir))
    sessions = db.session_factory(engine)
    with sessions.begin() as session:
        add_user(session, VIEWER[0], VIEWER[1], "viewer")
    clock = SettableClock()
    fleet = Fleet(sessions, LivenessSettings(), clock)
    fleet.load()
    try:
        yield WebEnv(data_dir, sessions, fleet, clock, CertificateAuthority.load(pki_dir(data_dir)))
    finally:
        engine.dispose()


@pytest.fixture
def admin(web_env: WebEnv) -> tuple[FlaskClient, str]:
    """An admin's client and its session's CSRF token."""
    return web_env.logged_in(ADMIN)


@pytest.fixture
def viewer(web_env: WebEnv) -> tuple[FlaskClient, str]:
    """A viewer's client and its session's CSRF token."""
    return web_env.logged_in(VIEWER)
