"""What the pages and the JSON API show, and the actions they offer, over a real registry and fleet."""

from __future__ import annotations

import datetime as dt
import html
import re
import time

from flask.testing import FlaskClient
from markupsafe import escape
from sqlalchemy import select

from integration.web.webenv import ENROL_PORT, WebEnv, csr_pem
from survey6.server import tokens
from survey6.server.enrolment import join
from survey6.server.registry.models import BootstrapToken, Probe, utcnow
from survey6.wire.v1 import capture_pb2, control_pb2, enrolment_pb2

JOIN_COMMAND = r"survey6-probe join (\S+) --token (\S+) --ca-cert-hash (\S+)"
HOSTILE_HOSTNAME = '<script>window.pwned=1</script>"x'
HOSTILE_LABEL = "<img src=x onerror=alert(1)>"


def rows_of(page: str) -> list[str]:
    """Probe ids in the order the list page shows them."""
    return re.findall(r'<tr data-probe-id="([^"]+)">', page)


def test_the_list_shows_live_state_and_health(web_env: WebEnv, admin: tuple[FlaskClient, str]) -> None:
    client, _ = admin
    seen = web_env.enrol("alpha", {"site": "ams", "asn": "64500"})
    silent = web_env.enrol("beta")
    upload_ns = time.time_ns() - 90 * 10**9
    web_env.heartbeat(
        seen, captured=123_456, received=125_000, dropped=1_250, rate=1500.0, last_upload_ns=upload_ns
    )
    page = client.get("/probes").get_data(as_text=True)
    assert rows_of(page) == sorted([seen, silent])
    row = page[page.index(f'data-probe-id="{seen}"') :].split("</tr>")[0]
    assert 'data-field="state">online<' in row and 'data-field="capture_health">capturing<' in row
    assert ">123.5k<" in row and ">1.5k/s<" in row and ">1.00 %<" in row  # 1250 of 125000 dropped
    assert ">2 files, 3.0 MiB<" in row and re.search(r">9\ds ago<", row) and ">asn=64500, site=ams<" in row
    assert "0s ago" in row or "1s ago" in row
    other = page[page.index(f'data-probe-id="{silent}"') :].split("</tr>")[0]
    assert 'data-field="state">offline<' in other and ">never<" in other

    data = client.get("/api/probes").get_json()
    assert data["counts"] == {"online": 1, "stale": 0, "offline": 1, "suspended": 0, "left": 0}
    first = next(p for p in data["probes"] if p["probe_id"] == seen)
    assert first["packets_captured"] == 123_456 and first["dropped_packets"] == 1_250
    assert first["backlog_bytes"] == 3 << 20 and first["labels"] == {"site": "ams", "asn": "64500"}
    assert first["drop_ratio"] == 0.01 and first["display"]["drop_ratio"] == "1.00 %"
    assert abs(dt.datetime.fromisoformat(first["last_upload_at"]).timestamp() - upload_ns / 1e9) < 1e-3


def test_the_list_filters_and_sorts(web_env: WebEnv, admin: tuple[FlaskClient, str]) -> None:
    client, _ = admin
    a = web_env.enrol("zulu", {"site": "ams"})
    b = web_env.enrol("alpha", {"site": "fra"})
    c = web_env.enrol("mike", {"site": "ams"})
    web_env.heartbeat(a, captured=10)
    web_env.heartbeat(b, captured=30)
    web_env.heartbeat(c, state=control_pb2.CAPTURE_STATE_SUSPENDED, captured=20)

    def ids(query: str) -> list[str]:
        return [p["probe_id"] for p in client.get(f"/api/probes?{query}").get_json()["probes"]]

    assert ids("sort=hostname") == [b, c, a]
    assert ids("sort=hostname&order=desc") == [a, c, b]
    assert ids("sort=packets&order=desc") == [b, c, a]
    assert ids("state=suspended") == [c]
    assert ids("q=site%3Dams&sort=hostname") == [c, a]
    assert ids("q=ALPH") == [b]
    assert ids("state=online&q=fra") == [b]
    assert ids("state=bogus&sort=bogus") == sorted([a, b, c])  # unknown values are ignored
    page = client.get("/probes?sort=hostname&order=desc&q=ams").get_data(as_text=True)
    assert rows_of(page) == [a, c]
    assert 'class="sorted desc"' in page


def test_html_in_a_hostname_or_label_is_shown_as_text(
    web_env: WebEnv, admin: tuple[FlaskClient, str]
) -> None:
    client, _ = admin
    probe = web_env.enrol(HOSTILE_HOSTNAME, {"note": HOSTILE_LABEL, HOSTILE_LABEL: "key"})
    web_env.heartbeat(probe)
    web_env.land(probe, 1, state="failed", detail="<b>bad</b> file")
    for path in ("/probes", f"/probes/{probe}", "/ingest"):
        page = client.get(path).get_data(as_text=True)
        assert "<script>window" not in page and "<img src=x" not in page and "<b>bad" not in page, path
    assert escape(HOSTILE_HOSTNAME) in client.get("/probes").get_data(as_text=True)
    assert escape(f"note={HOSTILE_LABEL}") in client.get(f"/probes/{probe}").get_data(as_text=True)
    assert "&lt;b&gt;bad&lt;/b&gt; file" in client.get("/ingest").get_data(as_text=True)
    # The API is data: the raw text, served as JSON (the page's script writes it with textContent).
    response = client.get("/api/probes")
    assert response.mimetype == "application/json"
    assert response.get_json()["probes"][0]["hostname"] == HOSTILE_HOSTNAME


def test_the_probe_page_has_history_files_events_and_commands(
    web_env: WebEnv, admin: tuple[FlaskClient, str]
) -> None:
    client, csrf = admin
    probe = web_env.enrol("gamma")
    start = utcnow() - dt.timedelta(minutes=10)
    for step in range(6):  # 30 s apart, 100 packets/s captured and 1 dropped in each interval
        web_env.clock.at = start + dt.timedelta(seconds=30 * step)
        web_env.heartbeat(probe, captured=3000 * step, dropped=30 * step, backlog_bytes=step << 20)
    web_env.land(probe, 1, size=2 << 20, state="ingested")
    web_env.land(probe, 2, state="failed", detail="checksum mismatch")
    web_env.land(probe, 3)
    queued = client.post(f"/probes/{probe}/commands", data={"action": "upload-now", "csrf_token": csrf})
    assert queued.status_code == 302
    page = client.get(f"/probes/{probe}").get_data(as_text=True)
    assert page.count('<polyline class="series"') == 4  # packets/s, drops/s, backlog, utilisation
    for title in ("captured packets/s", "dropped packets/s", "backlog", "link utilisation"):
        assert f"<figcaption>{title} " in page
    assert 'captured packets/s <span class="latest">100<' in page
    assert 'dropped packets/s <span class="latest">1<' in page
    assert 'backlog <span class="latest">5.0 MiB<' in page
    assert 'utilisation <span class="latest">25.0 %<' in page
    assert "checksum mismatch" in page and "file-ingested" in page and "file-stored" in page
    assert "ingested <b>1</b>" in page and "failed <b>1</b>" in page
    assert ">enrolled<" in page and "upload-now queued" in page
    assert "upload-now queued for" in page  # the flash message
    assert re.search(r">upload-now<.*?outcome-pending", page, re.S)
    for action in ("suspend", "resume", "upload-now", "leave"):
        assert f'name="action" value="{action}"' in page
    other_windows = client.get(f"/probes/{probe}?window=24h").get_data(as_text=True)
    assert "<b>24h</b>" in other_windows
    api = client.get(f"/api/probes/{probe}/history").get_json()
    assert [s["captured_packets_total"] for s in api["samples"]] == [0, 3000, 6000, 9000, 12000, 15000]
    files = client.get(f"/api/probes/{probe}/files?limit=2").get_json()
    assert [f["sequence"] for f in files["files"]] == [3, 2]
    assert files["totals"]["ingested"] == {"files": 1, "size_bytes": 2 << 20}
    events = client.get(f"/api/probes/{probe}/events").get_json()["events"]
    assert {e["kind"] for e in events} >= {"enrolled", "command"}
    assert client.get(f"/api/probes/{probe}/events?limit=0").status_code == 400
    assert client.get(f"/api/probes/{probe}/events?limit=x").status_code == 400


def test_a_command_from_the_page_reaches_the_probe_and_its_outcome_shows(
    web_env: WebEnv, admin: tuple[FlaskClient, str]
) -> None:
    client, csrf = admin
    probe = web_env.enrol()
    web_env.heartbeat(probe)
    response = client.post(f"/probes/{probe}/commands", data={"action": "suspend", "csrf_token": csrf})
    assert response.headers["Location"] == f"/probes/{probe}"
    (command,) = web_env.heartbeat(probe)  # the next heartbeat response carries it
    assert command.WhichOneof("action") == "suspend"
    web_env.fleet.acknowledge(
        probe,
        control_pb2.CommandAck(
            command_id=command.command_id,
            outcome=control_pb2.COMMAND_OUTCOME_SUCCEEDED,
            detail="capture paused",
        ),
    )
    web_env.heartbeat(probe, state=control_pb2.CAPTURE_STATE_SUSPENDED)
    detail = client.get(f"/api/probes/{probe}").get_json()
    assert detail["probe"]["state"] == "suspended" and detail["probe"]["capture_health"] == "suspended"
    assert [(c["action"], c["outcome"], c["detail"]) for c in detail["commands"]] == [
        ("suspend", "succeeded", "capture paused")
    ]
    page = client.get(f"/probes/{probe}").get_data(as_text=True)
    assert "outcome-succeeded" in page and "capture paused" in page


def test_commands_the_probe_cannot_take_are_refused_with_a_reason(
    web_env: WebEnv, admin: tuple[FlaskClient, str]
) -> None:
    client, csrf = admin
    probe = web_env.enrol()
    web_env.fleet.leave(probe, "test")
    response = client.post(
        f"/probes/{probe}/commands", data={"action": "suspend", "csrf_token": csrf}, follow_redirects=True
    )
    assert "has left; it takes no more commands" in response.get_data(as_text=True)
    assert 'name="action"' not in response.get_data(as_text=True)  # no buttons for a probe that left
    commands = f"/probes/{probe}/commands"
    assert client.post(commands, data={"action": "rm -rf", "csrf_token": csrf}).status_code == 400
    assert (
        client.post("/probes/p-nope/commands", data={"action": "resume", "csrf_token": csrf}).status_code
        == 404
    )
    missing = client.get("/probes/p-nope")
    assert missing.status_code == 404 and "No probe p-nope" in missing.get_data(as_text=True)
    assert client.get("/api/probes/p-nope").get_json() == {"error": "no probe p-nope"}


def test_a_token_made_on_the_page_joins_a_probe_and_can_be_revoked(
    web_env: WebEnv, admin: tuple[FlaskClient, str]
) -> None:
    client, csrf = admin
    response = client.post(
        "/tokens", data={"ttl": "2h", "usages": "2", "description": "rack 7", "csrf_token": csrf}
    )
    assert response.status_code == 201
    shown = re.search(r'<pre id="join-command">(.*?)</pre>', response.get_data(as_text=True))
    assert shown is not None
    match = re.fullmatch(JOIN_COMMAND, html.unescape(shown.group(1)))
    assert match, shown.group(1)
    address, token, pin = match.groups()
    assert address == f"localhost:{ENROL_PORT}" and pin == web_env.ca.cert_hash
    with web_env.sessions.begin() as session:  # the token on the page is a working one
        join(
            session,
            web_env.ca,
            enrolment_pb2.JoinRequest(
                token=token, host=capture_pb2.HostFacts(hostname="new"), csr_pem=csr_pem()
            ),
        )
    listed = client.get("/api/tokens").get_json()["tokens"]
    assert [(t["token_id"], t["status"], t["used_count"], t["usages_left"]) for t in listed] == [
        (token[:6], "valid", 1, 1)
    ]
    assert token[7:] not in client.get("/tokens").get_data(as_text=True)  # the secret is shown once only
    revoke = client.post(f"/tokens/{token[:6]}/revoke", data={"csrf_token": csrf}, follow_redirects=True)
    assert f"Token {token[:6]} revoked." in revoke.get_data(as_text=True)
    assert client.get("/api/tokens").get_json()["tokens"][0]["status"] == "revoked"
    with web_env.sessions() as session:
        assert session.scalars(select(Probe.hostname)).all() == ["new"]
        assert session.scalars(select(BootstrapToken.revoked_at)).one() is not None


def test_bad_token_forms_say_what_is_wrong(web_env: WebEnv, admin: tuple[FlaskClient, str]) -> None:
    client, csrf = admin
    for form, message in (
        ({"ttl": "soon"}, "soon"),
        ({"ttl": "0s"}, "more than 0"),
        ({"ttl": "1h", "usages": "many"}, "whole number"),
        ({"ttl": "1h", "usages": "0"}, "at least one use"),
        ({"ttl": "1h", "description": "x" * 300}, "longer than 255"),
    ):
        response = client.post("/tokens", data={**form, "csrf_token": csrf})
        assert response.status_code == 400, form
        assert message in response.get_data(as_text=True), form
    unknown = client.post("/tokens/zzzzzz/revoke", data={"csrf_token": csrf}, follow_redirects=True)
    assert "no token with id" in html.unescape(unknown.get_data(as_text=True))
    with web_env.sessions() as session:
        assert tokens.list_tokens(session) == []


def test_the_ingest_page_shows_where_files_are(web_env: WebEnv, admin: tuple[FlaskClient, str]) -> None:
    client, _ = admin
    probe = web_env.enrol()
    web_env.land(probe, 1, size=100, state="ingested")
    web_env.land(probe, 2, size=200, state="ingested")
    web_env.land(probe, 3, size=300)
    web_env.land(probe, 4, size=400, state="failed", detail="not a pcap")
    data = client.get("/api/ingest").get_json()
    assert data["totals"]["ingested"] == {"files": 2, "size_bytes": 300}
    assert data["totals"]["stored"] == {"files": 1, "size_bytes": 300}
    (today,) = data["days"]
    assert today["files"] == 4 and today["by_state"] == {"ingested": 2, "stored": 1, "failed": 1}
    assert not today["complete"]
    assert data["probes"][0]["probe_id"] == probe and data["probes"][0]["ingested"] == 2
    assert data["failures"][0]["state_detail"] == "not a pcap"
    assert data["queue_depth"] is None and data["queue_error"] == "not configured"
    page = client.get("/ingest").get_data(as_text=True)
    assert '<b id="outbox">1</b>' in page and "not a pcap" in page and "in progress" in page
