"""Who may see and do what: no session, a viewer, an admin; CSRF on every form; the login itself."""

from __future__ import annotations

import datetime as dt
import os
import re
import stat

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from integration.web.webenv import ADMIN, VIEWER, WebEnv, csrf_of
from survey6.server import tokens
from survey6.server.registry.models import BootstrapToken, Command
from survey6.server.web import WebSettings
from survey6.server.web.errors import WebConfigError
from survey6.server.web.secret import SECRET_FILE_NAME
from survey6.server.web.users import add_user, remove_user, set_role

PAGES = ["/probes", "/probes/{probe}", "/tokens", "/ingest"]
API = [
    "/api/me",
    "/api/probes",
    "/api/probes/{probe}",
    "/api/probes/{probe}/history",
    "/api/probes/{probe}/files",
    "/api/probes/{probe}/events",
    "/api/probes/{probe}/commands",
    "/api/tokens",
    "/api/ingest",
]
ACTIONS = [
    ("/probes/{probe}/commands", {"action": "suspend"}),
    ("/tokens", {"ttl": "1h", "usages": "1"}),
    ("/tokens/{token}/revoke", {}),
    ("/logout", {}),
]


@pytest.fixture
def probe(web_env: WebEnv) -> str:
    probe_id = web_env.enrol()
    web_env.heartbeat(probe_id)
    return probe_id


@pytest.fixture
def token_id(web_env: WebEnv) -> str:
    with web_env.sessions.begin() as session:
        return tokens.create_token(session, ttl=dt.timedelta(hours=1), usages=1).split(".")[0]


def registry_state(web_env: WebEnv) -> tuple[int, int, int]:
    """Commands queued, tokens, revoked tokens: what a refused action must leave alone."""
    with web_env.sessions() as session:
        commands = session.scalar(select(func.count()).select_from(Command)) or 0
        created = session.scalar(select(func.count()).select_from(BootstrapToken)) or 0
        revoked = session.scalar(select(func.count()).where(BootstrapToken.revoked_at.is_not(None))) or 0
    return commands, created, revoked


def test_pages_without_a_session_redirect_to_the_login(web_env: WebEnv, probe: str) -> None:
    client = web_env.client()
    for page in PAGES:
        path = page.format(probe=probe)
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"] == f"/login?next={path}"
    assert client.get("/").headers["Location"] == "/probes"


def test_the_api_without_a_session_answers_401_json(web_env: WebEnv, probe: str) -> None:
    client = web_env.client()
    for route in API:
        response = client.get(route.format(probe=probe))
        assert response.status_code == 401, route
        assert response.get_json() == {"error": "login required"}


def test_actions_without_a_session_are_refused(web_env: WebEnv, probe: str, token_id: str) -> None:
    client = web_env.client()
    before = registry_state(web_env)
    anonymous_token = csrf_of(client, "/login")  # a session exists, but no login
    for path, form in ACTIONS:
        url = path.format(probe=probe, token=token_id)
        assert client.post(url, data=form).status_code == 400, url  # no CSRF token
        response = client.post(url, data={**form, "csrf_token": anonymous_token})
        if path != "/logout":
            assert response.status_code == 302 and response.headers["Location"].startswith("/login"), url
    assert registry_state(web_env) == before
    assert web_env.heartbeat(probe) == []  # nothing reached the probe


def test_a_refused_post_without_cookies_sets_none(web_env: WebEnv, probe: str) -> None:
    # Another site's POST arrives without the SameSite=Lax session cookie; a new cookie in the
    # answer would replace the user's session (logging them out).
    response = web_env.client().post(f"/probes/{probe}/commands", data={"action": "leave"})
    assert response.status_code == 400 and "Set-Cookie" not in response.headers


def test_a_viewer_sees_everything_and_has_no_action_buttons(
    web_env: WebEnv, probe: str, viewer: tuple[FlaskClient, str]
) -> None:
    client, _ = viewer
    for route in PAGES + API:
        assert client.get(route.format(probe=probe)).status_code == 200, route
    assert client.get("/api/me").get_json() == {"username": VIEWER[0], "role": "viewer"}
    detail = client.get(f"/probes/{probe}").get_data(as_text=True)
    assert 'class="command' not in detail and f"/probes/{probe}/commands" not in detail
    tokens_page = client.get("/tokens").get_data(as_text=True)
    assert 'id="token-create"' not in tokens_page and "/revoke" not in tokens_page


def test_a_viewer_cannot_act_even_with_a_valid_csrf_token(
    web_env: WebEnv, probe: str, token_id: str, viewer: tuple[FlaskClient, str]
) -> None:
    client, csrf = viewer
    before = registry_state(web_env)
    for path, form in ACTIONS[:-1]:
        url = path.format(probe=probe, token=token_id)
        response = client.post(url, data={**form, "csrf_token": csrf})
        assert response.status_code == 403, url
        assert "Only an admin" in response.get_data(as_text=True)
    assert registry_state(web_env) == before
    assert web_env.heartbeat(probe) == []


def test_an_admin_action_needs_this_sessions_csrf_token(
    web_env: WebEnv, probe: str, admin: tuple[FlaskClient, str]
) -> None:
    client, csrf = admin
    _, other_session_token = web_env.logged_in(ADMIN)
    url = f"/probes/{probe}/commands"
    assert client.post(url, data={"action": "suspend"}).status_code == 400
    assert client.post(url, data={"action": "suspend", "csrf_token": "forged"}).status_code == 403
    assert client.post(url, data={"action": "suspend", "csrf_token": other_session_token}).status_code == 403
    assert client.post(url, data={"action": "suspend"}, headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert registry_state(web_env)[0] == 0 and web_env.heartbeat(probe) == []
    # The same request with the right token (in the form or in the header) is accepted.
    assert client.post(url, data={"action": "suspend", "csrf_token": csrf}).status_code == 302
    assert client.post(url, data={"action": "resume"}, headers={"X-CSRF-Token": csrf}).status_code == 302
    sent = web_env.heartbeat(probe)
    assert [c.WhichOneof("action") for c in sent] == ["suspend", "resume"]


def test_a_refused_page_says_why_in_one_line(
    web_env: WebEnv, probe: str, admin: tuple[FlaskClient, str]
) -> None:
    client, _ = admin
    response = client.post(f"/probes/{probe}/commands", data={"action": "suspend"})
    text = response.get_data(as_text=True)
    assert "CSRF token" in text and "Traceback" not in text
    api = client.post("/api/probes", data={})
    assert api.status_code == 400 and "CSRF" in api.get_json()["error"]


def test_wrong_passwords_are_limited_per_address(web_env: WebEnv) -> None:
    attacker = web_env.client("192.0.2.7")
    token = csrf_of(attacker, "/login")
    for attempt in ("guess-1", "guess-2", "guess-3", "guess-4", "guess-5"):
        response = attacker.post(
            "/login", data={"username": "admin", "password": attempt, "csrf_token": token}
        )
        assert response.status_code == 401
        assert "Wrong user name or password." in response.get_data(as_text=True)
    # The limit holds even for the right password, and names no account.
    limited = attacker.post("/login", data={"username": ADMIN[0], "password": ADMIN[1], "csrf_token": token})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert "Too many failed logins" in limited.get_data(as_text=True)
    assert attacker.get("/probes").status_code == 302
    # Another address is not affected.
    client, _ = web_env.logged_in(ADMIN, address="192.0.2.8")
    assert client.get("/probes").status_code == 200
    metrics = client.get("/metrics").get_data(as_text=True)
    logins = {
        s.labels["outcome"]: s.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "survey6_web_logins"
        for s in family.samples
        if s.name == "survey6_web_logins_total"
    }
    assert logins == {"success": 1.0, "failure": 5.0, "limited": 1.0}


def test_an_unknown_user_gets_the_same_answer(web_env: WebEnv) -> None:
    client = web_env.client()
    token = csrf_of(client, "/login")
    response = client.post(
        "/login", data={"username": "nobody", "password": "whatever-1", "csrf_token": token}
    )
    assert response.status_code == 401
    assert "Wrong user name or password." in response.get_data(as_text=True)


def test_logout_is_a_post_and_ends_the_session(web_env: WebEnv, admin: tuple[FlaskClient, str]) -> None:
    client, csrf = admin
    assert client.get("/logout").status_code == 405
    assert client.post("/logout", data={"csrf_token": csrf}).headers["Location"] == "/login"
    assert client.get("/probes").status_code == 302


def test_login_sends_only_to_pages_of_this_site(web_env: WebEnv) -> None:
    for target, expected in (
        ("/tokens", "/tokens"),
        ("//evil.example/x", "/probes"),
        ("https://evil.example/", "/probes"),
        ("/\\evil.example", "/probes"),
    ):
        client = web_env.client()
        token = csrf_of(client, "/login")
        form = {"username": ADMIN[0], "password": ADMIN[1], "csrf_token": token, "next": target}
        assert client.post("/login", data=form).headers["Location"] == expected


def test_the_session_cookie_is_http_only_and_same_site(web_env: WebEnv) -> None:
    client = web_env.client()
    token = csrf_of(client, "/login")
    response = client.post("/login", data={"username": ADMIN[0], "password": ADMIN[1], "csrf_token": token})
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("survey6_session=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    secure_app = web_env.make_app(WebSettings(cookie_secure=True))
    secure = secure_app.test_client()
    token = csrf_of(secure, "/login")
    response = secure.post("/login", data={"username": ADMIN[0], "password": ADMIN[1], "csrf_token": token})
    assert "Secure" in response.headers["Set-Cookie"]


def test_pages_carry_security_headers(web_env: WebEnv, admin: tuple[FlaskClient, str]) -> None:
    client, _ = admin
    response = client.get("/tokens")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    assert re.search(r"<script[^>]*>[^<]", response.get_data(as_text=True)) is None  # no inline script


def test_a_removed_user_or_a_lost_role_counts_at_once(
    web_env: WebEnv, probe: str, viewer: tuple[FlaskClient, str], admin: tuple[FlaskClient, str]
) -> None:
    admin_client, admin_csrf = admin
    with web_env.sessions.begin() as session:
        add_user(session, "second-admin", "second-password-1", "admin")  # the last admin stays one
        set_role(session, ADMIN[0], "viewer")
    response = admin_client.post(
        f"/probes/{probe}/commands", data={"action": "suspend", "csrf_token": admin_csrf}
    )
    assert response.status_code == 403
    client, _ = viewer
    with web_env.sessions.begin() as session:
        remove_user(session, VIEWER[0])
    assert client.get("/probes").status_code == 302
    assert client.get("/api/probes").status_code == 401


def test_the_session_key_is_private_and_survives_a_restart(web_env: WebEnv) -> None:
    path = web_env.data_dir / SECRET_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    client, _ = web_env.logged_in(ADMIN)
    web_env.app = web_env.make_app(WebSettings())  # a restarted server reads the same key
    restarted = web_env.app.test_client()
    cookie = client.get_cookie("survey6_session")
    assert cookie is not None
    restarted.set_cookie("survey6_session", cookie.value)
    assert restarted.get("/probes").status_code == 200
    os.chmod(path, 0o644)
    with pytest.raises(WebConfigError, match="readable by others"):
        web_env.make_app(WebSettings())


def test_a_login_older_than_the_session_lifetime_is_over(
    web_env: WebEnv, admin: tuple[FlaskClient, str]
) -> None:
    client, _ = admin
    assert client.get("/probes").status_code == 200
    with client.session_transaction() as session:  # as if logged in 13 hours ago (lifetime: 12 h)
        session["login_at"] = session["login_at"] - 13 * 3600
    assert client.get("/probes").status_code == 302
    assert client.get("/api/probes").status_code == 401
