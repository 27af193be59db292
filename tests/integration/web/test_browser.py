"""The web UI in Debian's headless Chromium, against a real ``survey6-server run`` with a real probe
agent joined and capturing on loopback (liveness: heartbeat 0.5 s, stale after 1.5 s).

One server, one probe and one browser for the module; the tests run in file order and each leaves
the probe as it found it (online, capturing).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

from support.fleet_processes import PROBE, ProbeAgent, ServerProcess, run, wait_for

TESTER = ("tester", "tester-password-1")
VIEWER = ("looker", "looker-password-1")
# Rendered as markup, this label would run a script that sets window.pwned.
HOSTILE_LABEL = "<img src=x onerror=window.pwned=1><script>window.pwned=2</script>"
STATE_TIMEOUT_MS = 20_000
JOIN_COMMAND = re.compile(r"survey6-probe join (\S+) --token (\S+) --ca-cert-hash (\S+)")


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Debian's chromium is not installed (./scripts/setup installs it)")
    return path


class WebServerProcess(ServerProcess):
    """The server with its web UI on a port the kernel picks, read back from its log."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, heartbeat_interval_s=0.5, stale_after_s=1.5, offline_after_s=3.0,
                         write_behind_interval_s=0.3)  # fmt: skip
        self.env["SURVEY6_HTTP_LISTEN"] = "127.0.0.1:0"
        self.url = ""

    def start(self) -> None:
        super().start()
        lines = [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]
        listening = [line for line in lines if line.get("msg") == "server listening"]
        self.url = f"http://127.0.0.1:{listening[-1]['http_port']}"

    def add_user(self, user: tuple[str, str], role: str) -> None:
        secret = self.data_dir.parent / f"{user[0]}.password"
        secret.write_text(user[1] + "\n")
        result = self.cli("user", "add", user[0], "--role", role, "--password-file", str(secret))
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServerProcess]:
    process = WebServerProcess(tmp_path_factory.mktemp("web"))
    process.add_user(TESTER, "admin")
    process.add_user(VIEWER, "viewer")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def agents() -> Iterator[list[ProbeAgent]]:
    created: list[ProbeAgent] = []
    yield created
    for agent in created:
        agent.cleanup()


@pytest.fixture(scope="module")
def agent(server: WebServerProcess, agents: list[ProbeAgent]) -> ProbeAgent:
    """Joined, with an HTML label, but not started: the first test starts it."""
    probe = ProbeAgent(server.data_dir.parent, "p0")
    agents.append(probe)
    joined = run([PROBE, "join", server.enrol_address, "--token", server.token(), "--ca-cert-hash",
                  server.ca_hash, "--state-dir", str(probe.state_dir), "--label", "site=lab",
                  "--label", f"note={HOSTILE_LABEL}"])  # fmt: skip
    assert joined.returncode == 0, joined.stderr
    return probe


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (no cookies) per test."""
    fresh = browser.new_context()
    fresh.set_default_timeout(15_000)
    try:
        yield fresh
    finally:
        fresh.close()


def log_in(page: Page, server: WebServerProcess, user: tuple[str, str], path: str = "/probes") -> None:
    page.goto(server.url + path)
    expect(page).to_have_url(re.compile(r"/login\?next="))  # no session: the login page first
    page.fill("input[name=username]", user[0])
    page.fill("input[name=password]", user[1])
    page.click("button[type=submit]")
    expect(page).to_have_url(server.url + path)


def test_log_in_and_watch_a_probe_come_online(
    server: WebServerProcess, agent: ProbeAgent, context: BrowserContext
) -> None:
    page = context.new_page()
    log_in(page, server, TESTER)
    row = page.locator(f'tr[data-probe-id="{agent.probe_id}"]')
    expect(row.locator('[data-field="state"]')).to_have_text("offline")
    page.evaluate("window.sameDocument = true")
    agent.start()
    expect(row.locator('[data-field="state"]')).to_have_text("online", timeout=STATE_TIMEOUT_MS)
    expect(row.locator('[data-field="capture_health"]')).to_have_text("capturing", timeout=STATE_TIMEOUT_MS)
    assert page.evaluate("window.sameDocument") is True  # the list refreshed itself: no reload
    expect(page.locator('[data-count="online"]')).to_have_text("1")


def test_suspend_from_the_page_and_see_the_probe_report_it(
    server: WebServerProcess, agent: ProbeAgent, context: BrowserContext
) -> None:
    page = context.new_page()
    log_in(page, server, TESTER)
    page.click(f'a[href="/probes/{agent.probe_id}"]')
    section = page.locator("#probe-detail")
    expect(section.locator('[data-field="state"]')).to_have_text("online")
    page.click("button[value=suspend]")
    expect(page.locator(".flash")).to_contain_text("suspend queued")
    expect(section.locator('[data-field="state"]')).to_have_text("suspended", timeout=STATE_TIMEOUT_MS)
    command = section.locator("#commands tbody tr").first
    expect(command).to_contain_text("suspend")
    expect(command.locator('[data-field="outcome"]')).to_have_text("succeeded", timeout=STATE_TIMEOUT_MS)
    status = json.loads(agent.cli("status", "--json").stdout)  # the probe's own account
    assert status["capture_state"] == "suspended"
    page.click("button[value=resume]")
    expect(section.locator('[data-field="state"]')).to_have_text("online", timeout=STATE_TIMEOUT_MS)
    wait_for(lambda: json.loads(agent.cli("status", "--json").stdout)["capture_state"] == "capturing",
             10, "the probe to capture again")  # fmt: skip


def test_a_token_from_the_page_joins_a_second_probe(
    server: WebServerProcess, agents: list[ProbeAgent], agent: ProbeAgent, context: BrowserContext
) -> None:
    page = context.new_page()
    log_in(page, server, TESTER, "/tokens")
    page.fill("input[name=ttl]", "1h")
    page.fill("input[name=usages]", "1")
    page.fill("input[name=description]", "browser test")
    page.click("#token-create button[type=submit]")
    command = page.locator("#join-command").inner_text().strip()
    match = JOIN_COMMAND.fullmatch(command)
    assert match, command
    address, token, pin = match.groups()
    assert pin == server.ca_hash and address.endswith(f":{server.enrol_port}")
    expect(page.locator(f'tr[data-token-id="{token[:6]}"]')).to_contain_text("valid")
    second = ProbeAgent(server.data_dir.parent, "p1")
    agents.append(second)
    # The command as the page shows it, with the state directory a test needs.
    joined = run([PROBE, "join", address, "--token", token, "--ca-cert-hash", pin,
                  "--state-dir", str(second.state_dir)])  # fmt: skip
    assert joined.returncode == 0, joined.stderr
    page.goto(server.url + "/probes")
    expect(page.locator(f'tr[data-probe-id="{second.probe_id}"] [data-field="state"]')).to_have_text(
        "offline"
    )
    page.goto(server.url + "/tokens")
    expect(page.locator(f'tr[data-token-id="{token[:6]}"]')).to_contain_text("used up")


def test_html_in_a_label_is_shown_as_text(
    server: WebServerProcess, agent: ProbeAgent, context: BrowserContext
) -> None:
    page = context.new_page()
    log_in(page, server, TESTER)
    labels = page.locator(f'tr[data-probe-id="{agent.probe_id}"] [data-field="labels"]')
    expect(labels).to_have_text(f"note={HOSTILE_LABEL}, site=lab")
    before = page.locator("#probe-list").get_attribute("data-refreshed")
    # After a refresh round the rows are the script's (textContent): still text.
    expect(page.locator("#probe-list")).not_to_have_attribute("data-refreshed", before or "", timeout=10_000)
    expect(labels).to_have_text(f"note={HOSTILE_LABEL}, site=lab")
    page.goto(server.url + f"/probes/{agent.probe_id}")
    expect(page.locator("#probe-detail .labels")).to_have_text(f"note={HOSTILE_LABEL}, site=lab")
    assert page.evaluate("window.pwned") is None
    assert page.locator("#probe-detail img, #probe-list img").count() == 0


def test_a_viewer_has_no_buttons_and_a_forged_post_is_refused(
    server: WebServerProcess, agent: ProbeAgent, context: BrowserContext
) -> None:
    page = context.new_page()
    log_in(page, server, VIEWER, f"/probes/{agent.probe_id}")
    expect(page.locator("#probe-detail [data-field=state]")).to_have_text("online")
    assert page.locator("form.command, #actions").count() == 0
    page.goto(server.url + "/tokens")
    assert page.locator("#token-create, form.revoke").count() == 0
    commands_before = page.request.get(server.url + f"/api/probes/{agent.probe_id}/commands").json()
    url = server.url + f"/probes/{agent.probe_id}/commands"
    # From the viewer's own page: without the CSRF token, then with it (the role still refuses).
    statuses = page.evaluate(
        """async (url) => {
            const token = document.querySelector('meta[name="csrf-token"]').content;
            const post = (headers) => fetch(url, {method: "POST", headers: headers,
                body: new URLSearchParams({action: "suspend"})});
            return [(await post({})).status, (await post({"X-CSRF-Token": token})).status];
        }""",
        url,
    )
    assert statuses == [400, 403]
    assert page.request.get(server.url + f"/api/probes/{agent.probe_id}/commands").json() == commands_before


def test_a_post_from_another_site_is_refused_even_for_an_admin(
    server: WebServerProcess, agent: ProbeAgent, context: BrowserContext
) -> None:
    page = context.new_page()
    log_in(page, server, TESTER)
    before = page.request.get(server.url + f"/api/probes/{agent.probe_id}/commands").json()
    attacker = context.new_page()
    attacker.set_content(
        f'<form method="post" action="{server.url}/probes/{agent.probe_id}/commands">'
        '<input name="action" value="leave"><button id="go">win a prize</button></form>'
    )
    with attacker.expect_navigation():
        attacker.click("#go")
    assert "CSRF token" in attacker.content()
    assert page.request.get(server.url + f"/api/probes/{agent.probe_id}/commands").json() == before
    page.reload()
    expect(page.locator(f'tr[data-probe-id="{agent.probe_id}"] [data-field="state"]')).to_have_text("online")
