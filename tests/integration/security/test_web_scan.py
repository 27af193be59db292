"""An authenticated scanner pass over the real web application: every route of ``app.url_map`` (so a
route added later is scanned without anyone remembering to), with real and hostile path values and
query strings, as every kind of caller: no session, an anonymous session, a viewer, an admin with a
missing, forged or another session's CSRF token -- and, as the control, an admin with the right one.

What every response must satisfy, whoever asks:

- never a 500;
- a hostile value never comes back unescaped: an HTML body (or any header) never holds it raw;
  a JSON body is data, not markup -- it must parse, be served as ``application/json`` with
  ``nosniff`` (so no browser renders it), and carry the value only as a JSON string;
- the security headers (CSP, nosniff, frame denial; ``no-store`` except for static files).

Routes that anyone may reach are listed in PUBLIC (by endpoint) or PUBLIC_PREFIXES (by path) with
the reason; a route that is neither is held to the login rules, so a new public route fails this
test until someone decides it is meant to be public and says why here.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Rule
from werkzeug.test import TestResponse

from integration.web.webenv import ADMIN, VIEWER, WebEnv, csrf_of
from survey6.server import tokens
from survey6.server.registry.models import BootstrapToken, Command
from survey6.server.web import WebSettings
from survey6.server.web.auth import API_PREFIX

# Endpoints anyone may reach, and why.
PUBLIC = {
    "static": "the stylesheet and the script: no data",
    "auth.login": "the login page",
    "auth.login_post": "the login form's target: CSRF-checked and limited per address (test_access)",
    "probes.index": "only a redirect to /probes, which needs a login",
    "metrics.metrics": "Prometheus' convention: open by default; web.metrics = basic-auth or off closes it"
    " (web/test_metrics.py::test_metrics_can_need_a_web_account_or_be_off)",
}
# Path prefixes anyone may reach, and why (for blueprints whose endpoints are not settled yet).
PUBLIC_PREFIXES = {
    "/apt/": "the apt repository probe hosts install from: apt clients have no session; packages are"
    " signed, and the repository holds no probe data",
}
# State-changing endpoints any session may use (with its CSRF token): they act on the caller only.
SESSION_ACTIONS = {"auth.logout": "ends the caller's own session"}
# A real value for each path parameter a non-public route takes; a new parameter name fails the
# scan until it gets one here.
REAL_FORMS = {
    "probes.probe_command": {"action": "suspend"},
    "tokens.token_create": {"ttl": "1h", "usages": "1"},
}

MARKUP = "\"'><img src=x onerror=alert(1)>"
HOSTILE = [
    MARKUP,
    "<script>alert(1)</script>",  # with a slash: routes nowhere but a path parameter
    "../../../../etc/passwd",
    "' OR '1'='1' --",
    "\x00",
    "\u202egnp.exe",
    "p-" + "a" * 3000,
]
HOSTILE_QUERY = {k: MARKUP for k in ("next", "q", "state", "sort", "order", "window", "limit")}
HOSTILE_FORM = {k: MARKUP for k in ("action", "ttl", "usages", "description", "username", "password", "next")}
SAFE = ("GET", "HEAD")
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")

pytestmark = pytest.mark.slow  # thousands of requests: about a minute


@dataclass(frozen=True)
class Target:
    endpoint: str
    methods: frozenset[str]
    url: str
    hostile_query: bool = False
    hostile_path: bool = False
    public: bool = False
    takes_arguments: bool = False

    @property
    def api(self) -> bool:
        return self.url.startswith(API_PREFIX)

    @property
    def hostile(self) -> bool:
        return self.hostile_query or self.hostile_path

    @property
    def inert(self) -> bool:
        """Names nothing real: even an admin's accepted request (hostile form values) changes nothing."""
        return self.hostile_path or (self.hostile_query and not self.takes_arguments)


def public_reason(rule: Rule) -> str | None:
    if rule.endpoint in PUBLIC:
        return PUBLIC[rule.endpoint]
    return next((why for prefix, why in PUBLIC_PREFIXES.items() if rule.rule.startswith(prefix)), None)


def targets(app: Flask, real: dict[str, str]) -> Iterator[Target]:
    """Each rule with real values, with a hostile query, and with every hostile value in every
    path parameter."""
    adapter = app.url_map.bind("localhost")
    for rule in app.url_map.iter_rules():
        methods = frozenset(rule.methods or ()) - {"OPTIONS"}
        method = sorted(methods)[0]
        arguments = sorted(rule.arguments)
        public = public_reason(rule) is not None
        if not public:
            missing = [a for a in arguments if a not in real]
            assert not missing, f"{rule.rule}: add a real value for {missing} to the scan"
        values = {a: real.get(a, "x") for a in arguments}
        url = adapter.build(rule.endpoint, values, method=method)
        common = {"public": public, "takes_arguments": bool(arguments)}
        yield Target(rule.endpoint, methods, url, **common)
        query = urllib.parse.urlencode(HOSTILE_QUERY)
        yield Target(rule.endpoint, methods, f"{url}?{query}", hostile_query=True, **common)
        for argument, value in itertools.product(arguments, HOSTILE):
            url = adapter.build(rule.endpoint, {**values, argument: value}, method=method)
            yield Target(rule.endpoint, methods, url, hostile_path=True, **common)


def routes_to(app: Flask, target: Target, method: str) -> bool:
    """Whether the URL reaches the target's endpoint (a value with a slash may route nowhere)."""
    path = urllib.parse.unquote(target.url.split("?", 1)[0])
    try:
        endpoint, _ = app.url_map.bind("localhost").match(path, method=method)
    except HTTPException:
        return False
    return bool(endpoint == target.endpoint)


def check_response(response: TestResponse, where: str) -> None:
    """What every response must satisfy, whoever asked."""
    assert response.status_code != 500, where
    body = response.get_data(as_text=True)
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    for value in (v for v in HOSTILE if "<" in v):
        assert value not in headers, f"{where}: a header echoes {value!r}"
        if response.mimetype == "application/json":
            assert response.headers["X-Content-Type-Options"] == "nosniff", where
            if body:  # (a HEAD has none)
                json.loads(body)  # the value can only be inside a JSON string
        else:
            assert value not in body, f"{where}: the body echoes {value!r} unescaped"
    assert "Traceback" not in body, where
    assert "script-src 'self'" in response.headers["Content-Security-Policy"], where
    assert response.headers["X-Content-Type-Options"] == "nosniff", where
    assert response.headers["X-Frame-Options"] == "DENY", where
    if not response.request.path.startswith(("/static/", *PUBLIC_PREFIXES)):
        # Pages show live state and token secrets; public files may set their own caching.
        assert response.headers["Cache-Control"] == "no-store", where


def send(client: FlaskClient, method: str, url: str, **kwargs: object) -> TestResponse:
    response = client.open(url, method=method, **kwargs)  # type: ignore[arg-type]
    try:
        check_response(response, f"{method} {url[:120]}")
    finally:
        response.close()  # a static file's handle; the body read is kept
    return response


def registry_state(web_env: WebEnv) -> tuple[int, int, int]:
    with web_env.sessions() as session:
        commands = session.scalar(select(func.count()).select_from(Command)) or 0
        created = session.scalar(select(func.count()).select_from(BootstrapToken)) or 0
        revoked = session.scalar(select(func.count()).where(BootstrapToken.revoked_at.is_not(None))) or 0
    return commands, created, revoked


@pytest.fixture
def real_values(web_env: WebEnv) -> dict[str, str]:
    """Real path values; the probe's own strings are hostile too (they are shown on pages)."""
    probe_id = web_env.enrol(hostname=MARKUP, labels={"site": MARKUP})
    web_env.heartbeat(probe_id)
    with web_env.sessions.begin() as session:
        token_id = tokens.create_token(session, ttl=dt.timedelta(hours=1), usages=1, description=MARKUP)[:6]
    return {"probe_id": probe_id, "token_id": token_id, "filename": "style.css"}


def expect_refused(target: Target, method: str, who: str, response: TestResponse) -> None:
    """What a caller who may not act (or not look) gets from a route that needs a login."""
    status, body = response.status_code, response.get_data(as_text=True)
    if who == "anonymous":
        if target.api:
            assert status == 401, target
            if method != "HEAD":
                assert response.get_json() == {"error": "login required"}, target
        else:
            assert status == 302 and response.headers["Location"].startswith("/login?next="), target
    elif method in SAFE:  # a viewer or an admin may look
        assert status in ((200, 400, 404) if target.hostile else (200,)), (who, target, status)
    elif who == "viewer":
        assert status == 403 and "Only an admin" in body, target


def test_every_route_refuses_callers_without_the_right_session_and_token(
    web_env: WebEnv, real_values: dict[str, str]
) -> None:
    scan(web_env, real_values)


def scan(web_env: WebEnv, real_values: dict[str, str], only: str | None = None) -> None:
    """The pass itself, over every endpoint or `only` one (the tests below plant a hole)."""
    app = web_env.app
    admin, admin_csrf = web_env.logged_in(ADMIN)
    _, other_admin_csrf = web_env.logged_in(ADMIN)
    viewer, viewer_csrf = web_env.logged_in(VIEWER)
    before = registry_state(web_env)
    scanned: set[str] = set()

    anonymous = web_env.client("192.0.2.1")
    anonymous_csrf = csrf_of(anonymous, "/login")  # a session, but no login
    for target in targets(app, real_values):
        if only is not None and target.endpoint != only:
            continue
        form = dict(HOSTILE_FORM) if target.hostile else {}
        for method in (*SAFE, *UNSAFE):
            nobody = send(web_env.client("192.0.2.2"), method, target.url, data=form)
            if method in UNSAFE:
                # No session, no token: the CSRF check refuses first, and sets no cookie.
                assert nobody.status_code == 400 and "CSRF" in nobody.get_data(as_text=True), target
                assert "Set-Cookie" not in nobody.headers, target
            if not routes_to(app, target, method):
                continue  # 404 or 405 for everyone (test_options_and_unknown_methods_open_nothing)
            scanned.add(f"{method} {target.endpoint}")
            if target.endpoint in SESSION_ACTIONS:
                continue  # acting on the caller's own session: see test_session_actions_need_the_token
            callers = [(anonymous, anonymous_csrf, "anonymous"), (viewer, viewer_csrf, "viewer")]
            if method in SAFE or target.inert:
                callers.append((admin, admin_csrf, "admin"))
            for client, token, who in callers:
                response = send(client, method, target.url, data={**form, "csrf_token": token})
                if not target.public:
                    expect_refused(target, method, who, response)
            if method in UNSAFE:
                # An admin whose request lacks this session's token: missing, forged, another
                # session's, a viewer's -- in the form or in the header.
                for data, headers, expected in (
                    (form, {}, 400),
                    ({**form, "csrf_token": "forged"}, {}, 403),
                    ({**form, "csrf_token": other_admin_csrf}, {}, 403),
                    ({**form, "csrf_token": viewer_csrf}, {}, 403),
                    (form, {"X-CSRF-Token": "forged"}, 403),
                    (form, {"X-CSRF-Token": other_admin_csrf}, 403),
                ):
                    refused = send(admin, method, target.url, data=data, headers=headers)
                    assert refused.status_code == expected, (target, data, headers)
                    assert "CSRF" in refused.get_data(as_text=True), target
    assert registry_state(web_env) == before
    assert web_env.heartbeat(real_values["probe_id"]) == []  # nothing reached the probe
    every = {
        f"{m} {r.endpoint}"
        for r in app.url_map.iter_rules()
        for m in r.methods or ()
        if m != "OPTIONS" and only in (None, r.endpoint)
    }
    assert every - scanned == set(), "routes the scan never reached"

    # The control: the same actions with the admin's own token are let through.
    adapter = app.url_map.bind("localhost")
    for rule in app.url_map.iter_rules():
        for method in sorted(set(rule.methods or ()) & set(UNSAFE)):
            if public_reason(rule) is not None or rule.endpoint in SESSION_ACTIONS or only:
                continue
            url = adapter.build(rule.endpoint, {a: real_values[a] for a in rule.arguments}, method=method)
            data = {**REAL_FORMS.get(rule.endpoint, {}), "csrf_token": admin_csrf}
            accepted = send(admin, method, url, data=data)
            assert accepted.status_code in (200, 201, 302), (rule.endpoint, accepted.status_code)
            assert "CSRF" not in accepted.get_data(as_text=True), rule.endpoint
    assert registry_state(web_env) != before or only


def test_session_actions_need_the_token(web_env: WebEnv) -> None:
    adapter = web_env.app.url_map.bind("localhost")
    for endpoint in SESSION_ACTIONS:
        url = adapter.build(endpoint, {}, method="POST")
        client, token = web_env.logged_in(VIEWER)
        _, other = web_env.logged_in(VIEWER)
        assert send(client, "POST", url).status_code == 400
        assert send(client, "POST", url, data={"csrf_token": "forged"}).status_code == 403
        assert send(client, "POST", url, data={"csrf_token": other}).status_code == 403
        assert send(client, "GET", "/probes").status_code == 200  # the session survived
        assert send(client, "POST", url, data={"csrf_token": token}).status_code == 302


def test_options_and_unknown_methods_open_nothing(web_env: WebEnv, real_values: dict[str, str]) -> None:
    admin, admin_csrf = web_env.logged_in(ADMIN)
    adapter = web_env.app.url_map.bind("localhost")
    for target in targets(web_env.app, real_values):
        if target.hostile:
            continue
        options = send(web_env.client(), "OPTIONS", target.url)
        assert options.status_code == 200 and options.get_data() == b"", target
        allowed = set(adapter.allowed_methods(urllib.parse.unquote(target.url)))  # all rules of the path
        for method in sorted(set(UNSAFE + SAFE) - allowed):
            # Even an admin with the right token: the route does not take this method.
            response = send(admin, method, target.url, data={"csrf_token": admin_csrf})
            assert response.status_code == 405, (method, target)


def test_the_public_list_names_only_public_routes(web_env: WebEnv) -> None:
    """Each allow-listed endpoint exists and answers without a session (the list does not rot);
    the scan above holds every other route to the login rules."""
    rules = {r.endpoint: r for r in web_env.app.url_map.iter_rules()}
    assert set(PUBLIC) <= set(rules), f"listed but gone: {sorted(set(PUBLIC) - set(rules))}"
    adapter = web_env.app.url_map.bind("localhost")
    for endpoint, rule in rules.items():
        if endpoint not in PUBLIC or "GET" not in (rule.methods or ()):
            continue
        url = adapter.build(endpoint, {"filename": "style.css"} if rule.arguments else {})
        response = send(web_env.client(), "GET", url)
        assert response.status_code in (200, 302), endpoint
        assert not response.headers.get("Location", "").startswith("/login?"), endpoint


def planted(web_env: WebEnv, name: str) -> Flask:
    """The real application plus a route that shows a probe id raw, without a login."""
    app = web_env.make_app(WebSettings())

    def leak(probe_id: str) -> str:
        return f"<p>probe {probe_id}</p>"

    app.add_url_rule("/leak/<probe_id>", endpoint=name, view_func=leak)
    return app


def test_the_scan_finds_a_new_route_that_needs_no_login(web_env: WebEnv, real_values: dict[str, str]) -> None:
    web_env.app = planted(web_env, "leak")
    with pytest.raises(AssertionError, match="leak"):
        scan(web_env, real_values, only="leak")


def test_the_scan_finds_a_public_route_that_echoes_markup(
    web_env: WebEnv, real_values: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(PUBLIC, "leak", "planted by this test")
    web_env.app = planted(web_env, "leak")
    with pytest.raises(AssertionError, match="echoes"):
        scan(web_env, real_values, only="leak")
