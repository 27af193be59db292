"""Tokens, commands, liveness and the CA against a real (temporary) SQLite registry."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from survey6.server import liveness, tokens
from survey6.server.commands import queue_command
from survey6.server.enrolment import join
from survey6.server.errors import (
    CommandError,
    EnrolmentError,
    ServerError,
    TokenError,
    UnknownProbeError,
)
from survey6.server.fleet import Fleet
from survey6.server.pki import CertificateAuthority
from survey6.server.registry import db
from survey6.server.registry.models import BootstrapToken, Command, Event, HeartbeatSample, Probe, utcnow
from survey6.server.settings import LivenessSettings
from survey6.wire.v1 import control_pb2, enrolment_pb2


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = db.make_engine(db.sqlite_url(tmp_path))
    db.upgrade(engine)
    yield db.session_factory(engine)
    engine.dispose()


def csr_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin-please")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def test_token_format_and_single_use(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        token = tokens.create_token(s, ttl=dt.timedelta(hours=1), usages=1)
    assert tokens.TOKEN_PATTERN.match(token)
    with sessions.begin() as s:
        assert tokens.consume_token(s, token) == token[:6]
        stored = s.get(BootstrapToken, token[:6])
        assert stored is not None and token[7:] not in stored.secret_sha256  # only a hash is kept
    with sessions.begin() as s, pytest.raises(TokenError, match="used up"):
        tokens.consume_token(s, token)


def test_expired_and_revoked_tokens(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        token = tokens.create_token(s, ttl=dt.timedelta(hours=1), usages=None)
        s.get(BootstrapToken, token[:6]).expires_at = utcnow() - dt.timedelta(seconds=1)  # type: ignore[union-attr]
    with sessions.begin() as s, pytest.raises(TokenError, match="expired"):
        tokens.consume_token(s, token)
    with sessions.begin() as s:
        other = tokens.create_token(s, ttl=dt.timedelta(hours=1), usages=None)
        tokens.revoke_token(s, other)
    with sessions.begin() as s, pytest.raises(TokenError, match="revoked"):
        tokens.consume_token(s, other)
    with sessions.begin() as s:
        assert {t.status(utcnow()) for t in tokens.list_tokens(s)} == {"expired", "revoked"}
        s.get(BootstrapToken, token[:6]).expires_at = utcnow() - dt.timedelta(days=2)  # type: ignore[union-attr]
    with sessions.begin() as s:
        assert [t.token_id for t in tokens.list_tokens(s)] == [other[:6]]  # long expired: cleaned up


@pytest.mark.parametrize(
    "bad", ["", "abcdef", "ABCDEF.0123456789abcdef", "abcdef.0123456789abcde!", "a" * 1000]
)
def test_malformed_tokens(sessions: sessionmaker[Session], bad: str) -> None:
    with sessions.begin() as s, pytest.raises(TokenError, match="malformed"):
        tokens.consume_token(s, bad)


def test_bad_token_parameters(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        with pytest.raises(TokenError):
            tokens.create_token(s, ttl=dt.timedelta(0), usages=None)
        with pytest.raises(TokenError):
            tokens.create_token(s, ttl=dt.timedelta(hours=1), usages=0)
        with pytest.raises(TokenError, match="no token"):
            tokens.revoke_token(s, "zzzzzz")


def test_join_assigns_the_id_and_ignores_the_requested_subject(sessions: sessionmaker[Session]) -> None:
    ca = CertificateAuthority.create("test CA")
    with sessions.begin() as s:
        token = tokens.create_token(s, ttl=dt.timedelta(hours=1), usages=None)
    request = enrolment_pb2.JoinRequest(token=token, csr_pem=csr_pem(), labels={"site": "x"})
    request.host.hostname = "probe-host"
    with sessions.begin() as s:
        enrolled = join(s, ca, request)
    cert = x509.load_pem_x509_certificate(enrolled.certificate.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == enrolled.probe.id
    assert cert.issuer == ca.cert.subject
    with sessions() as s:
        assert s.get(Probe, enrolled.probe.id) is not None


@pytest.mark.parametrize("csr", [b"garbage", b"", "rsa"])
def test_join_refuses_bad_csrs(sessions: sessionmaker[Session], csr: bytes | str) -> None:
    ca = CertificateAuthority.create("test CA")
    with sessions.begin() as s:
        token = tokens.create_token(s, ttl=dt.timedelta(hours=1), usages=None)
    pem = csr_pem(rsa.generate_private_key(65537, 2048)) if csr == "rsa" else csr
    with sessions.begin() as s, pytest.raises(EnrolmentError):
        join(s, ca, enrolment_pb2.JoinRequest(token=token, csr_pem=pem))  # type: ignore[arg-type]


def test_commands_are_validated(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        s.add(Probe(id="p-1", hostname="h", cert_serial="1", cert_not_after=utcnow()))
    with sessions.begin() as s:
        assert queue_command(s, "p-1", "suspend")
        assert queue_command(s, "p-1", "config-change", {"snaplen_bytes": 128})
        with pytest.raises(CommandError, match="unknown command"):
            queue_command(s, "p-1", "reboot")
        with pytest.raises(CommandError, match="config change keys"):
            queue_command(s, "p-1", "config-change", {"nonsense": 1})
        with pytest.raises(CommandError, match="bad config change"):
            queue_command(s, "p-1", "config-change", {"snaplen_bytes": "big"})
        with pytest.raises(UnknownProbeError):
            queue_command(s, "p-2", "suspend")


def test_liveness_states() -> None:
    now = utcnow()

    def ago(seconds: float) -> dt.datetime:
        return now - dt.timedelta(seconds=seconds)

    kwargs = {"stale_after_s": 10.0, "offline_after_s": 60.0}
    capturing = control_pb2.CAPTURE_STATE_CAPTURING
    assert liveness.liveness_state(now, ago(1), capturing, left=False, **kwargs) == "online"
    assert liveness.liveness_state(now, ago(11), capturing, left=False, **kwargs) == "stale"
    assert liveness.liveness_state(now, ago(61), capturing, left=False, **kwargs) == "offline"
    assert liveness.liveness_state(now, None, capturing, left=False, **kwargs) == "offline"
    suspended = control_pb2.CAPTURE_STATE_SUSPENDED
    assert liveness.liveness_state(now, ago(1), suspended, left=False, **kwargs) == "suspended"
    assert liveness.liveness_state(now, ago(1), capturing, left=True, **kwargs) == "left"


def test_capture_health_tells_dropping_from_capturing() -> None:
    def beat(dropped: int, state: int = control_pb2.CAPTURE_STATE_CAPTURING) -> control_pb2.HeartbeatRequest:
        request = control_pb2.HeartbeatRequest(capture_state=state)  # type: ignore[arg-type]
        request.interfaces.add(name="eth0", dropped_packets_total=dropped)
        return request

    assert liveness.capture_health(beat(5), beat(5)) == "capturing"
    assert liveness.capture_health(beat(6), beat(5)) == "dropping"
    assert liveness.capture_health(beat(0, control_pb2.CAPTURE_STATE_SPOOL_FULL), None) == "spool full"


# -- tokens under parallel use ----------------------------------------------------------------


def test_parallel_uses_never_pass_the_token_limit(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        token = tokens.create_token(s, ttl=dt.timedelta(hours=1), usages=5)
    start = threading.Barrier(20)

    def use() -> str:
        start.wait()
        try:
            with sessions.begin() as s:
                tokens.consume_token(s, token)
                # A join signs a certificate between the use and the commit: the transactions
                # overlap (with a read-then-write use, all 20 succeeded).
                time.sleep(0.05)
            return "ok"
        except TokenError as exc:
            return str(exc)

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(lambda _: use(), range(20)))
    assert outcomes.count("ok") == 5
    assert set(outcomes) - {"ok"} == {f"token {token[:6]} has been used up"}
    with sessions() as s:
        stored = s.get(BootstrapToken, token[:6])
        assert stored is not None and (stored.usages_left, stored.used_count) == (0, 5)


def test_a_failed_join_gives_the_use_back(sessions: sessionmaker[Session]) -> None:
    ca = CertificateAuthority.create("test CA")
    with sessions.begin() as s:
        token = tokens.create_token(s, ttl=dt.timedelta(hours=1), usages=1)
    with pytest.raises(EnrolmentError), sessions.begin() as s:  # the error rolls the transaction back
        join(s, ca, enrolment_pb2.JoinRequest(token=token, csr_pem=b"garbage"))
    with sessions.begin() as s:
        assert tokens.consume_token(s, token) == token[:6]  # the rolled-back use did not count


# -- the fleet's write-behind -----------------------------------------------------------------

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
LIVENESS = LivenessSettings(stale_after_s=10.0, offline_after_s=60.0)


class ManualClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def fleet(sessions: sessionmaker[Session]) -> tuple[Fleet, ManualClock]:
    with sessions.begin() as s:
        for name in ("p-1", "p-2"):
            s.add(Probe(id=name, hostname=name, cert_serial=name, cert_not_after=utcnow(), state="offline"))
    clock = ManualClock()
    fleet = Fleet(sessions, LIVENESS, clock, history_interval_s=30.0)
    fleet.load()
    return fleet, clock


def beat(seq: int, state: int = control_pb2.CAPTURE_STATE_CAPTURING) -> control_pb2.HeartbeatRequest:
    request = control_pb2.HeartbeatRequest(capture_state=state)  # type: ignore[arg-type]
    request.interfaces.add(name="eth0", captured_packets_total=seq)
    return request


def state_events(sessions: sessionmaker[Session]) -> list[tuple[str | None, str | None, dt.datetime]]:
    with sessions() as s:
        rows = s.scalars(select(Event).where(Event.kind == "state").order_by(Event.id)).all()
        return [(e.probe_id, e.new_state, e.at) for e in rows]


def probe_row(sessions: sessionmaker[Session], probe_id: str) -> Probe:
    with sessions() as s:
        probe = s.get(Probe, probe_id)
        assert probe is not None
        return probe


def test_heartbeats_and_state_changes_are_written_behind_in_order(
    sessions: sessionmaker[Session], fleet: tuple[Fleet, ManualClock]
) -> None:
    fleet_, clock = fleet
    fleet_.heartbeat("p-1", beat(1))
    clock.advance(1)
    fleet_.heartbeat("p-2", beat(1))
    assert state_events(sessions) == []  # nothing written in the RPC thread
    assert probe_row(sessions, "p-1").state == "offline"
    clock.advance(11)
    fleet_.sweep()  # both stale, p-1 first
    assert fleet_.flush() == 2
    assert state_events(sessions) == [
        ("p-1", "online", T0),
        ("p-2", "online", T0 + dt.timedelta(seconds=1)),
        ("p-1", "stale", T0 + dt.timedelta(seconds=12)),
        ("p-2", "stale", T0 + dt.timedelta(seconds=12)),
    ]
    probe = probe_row(sessions, "p-1")
    assert (probe.state, probe.last_heartbeat_at) == ("stale", T0)
    assert probe.last_health["interfaces"][0]["captured_packets_total"] == "1"
    clock.advance(60)
    fleet_.sweep()  # a state change alone, no heartbeat: written too
    assert fleet_.flush() == 0
    assert probe_row(sessions, "p-2").state == "offline"
    assert [e[1] for e in state_events(sessions)][-2:] == ["offline", "offline"]
    assert fleet_.flush() == 0 and fleet_.pending_events() == 0


def test_a_failed_flush_loses_nothing_and_the_next_one_writes_it_all(
    sessions: sessionmaker[Session], fleet: tuple[Fleet, ManualClock], tmp_path: Path
) -> None:
    fleet_, clock = fleet
    fleet_.heartbeat("p-1", beat(1))
    # Another process takes the events table away: a real database error in the flush.
    with sqlite3.connect(tmp_path / "registry.sqlite3") as other:
        other.execute("ALTER TABLE events RENAME TO events_away")
    assert fleet_.flush() == 0
    assert fleet_.failed_flushes == 1 and fleet_.pending_events() == 1
    assert probe_row(sessions, "p-1").last_heartbeat_at is None  # the transaction rolled back whole
    clock.advance(3)
    fleet_.heartbeat("p-1", beat(2))
    clock.advance(11)
    fleet_.sweep()
    assert fleet_.flush() == 0 and fleet_.failed_flushes == 2
    with sqlite3.connect(tmp_path / "registry.sqlite3") as other:
        other.execute("ALTER TABLE events_away RENAME TO events")
    assert fleet_.flush() == 1
    assert fleet_.failed_flushes == 0 and fleet_.failed_flushes_total == 2
    assert state_events(sessions) == [
        ("p-1", "online", T0),
        ("p-1", "stale", T0 + dt.timedelta(seconds=14)),
    ]
    probe = probe_row(sessions, "p-1")
    assert (probe.state, probe.last_heartbeat_at) == ("stale", T0 + dt.timedelta(seconds=3))
    assert probe.last_health["interfaces"][0]["captured_packets_total"] == "2"


def test_history_is_sampled_per_interval_and_on_every_health_change(
    sessions: sessionmaker[Session], fleet: tuple[Fleet, ManualClock]
) -> None:
    fleet_, clock = fleet
    for seq in range(1, 41):  # 120 s of heartbeats 3 s apart, a flush after each
        fleet_.heartbeat("p-1", beat(seq))
        fleet_.flush()
        clock.advance(3)
    fleet_.heartbeat("p-1", beat(41, control_pb2.CAPTURE_STATE_SUSPENDED))
    fleet_.flush()
    clock.advance(3)
    fleet_.heartbeat("p-1", beat(42, control_pb2.CAPTURE_STATE_SUSPENDED))
    fleet_.flush()
    with sessions() as s:
        samples = s.execute(
            select(HeartbeatSample.at, HeartbeatSample.captured_packets_total, HeartbeatSample.capture_state)
            .where(HeartbeatSample.probe_id == "p-1")
            .order_by(HeartbeatSample.id)
        ).all()
    times = [(at - T0).total_seconds() for at, _, _ in samples]
    assert times[0] == 0  # the first heartbeat
    # then at the probe's own phase (so that probes online together are not sampled together),
    # and 30 s apart from there on: one sample in ten heartbeats
    assert 0 < times[1] <= 30
    assert all(30 <= b - a < 33 for a, b in zip(times[1:-2], times[2:-1], strict=True))
    assert len(samples) in (5, 6)
    # a change of capture health is sampled at once
    assert (times[-1], samples[-1][2]) == (120, "suspended")
    assert [seq for _, seq, _ in samples] == [1 + int(t) // 3 for t in times]
    # the last heartbeat's time is always written, the whole report with each sample
    probe = probe_row(sessions, "p-1")
    assert probe.last_heartbeat_at == T0 + dt.timedelta(seconds=123)
    assert probe.last_health["interfaces"][0]["captured_packets_total"] == "41"
    assert probe.last_health["capture_state"] == "CAPTURE_STATE_SUSPENDED"


def test_a_leave_is_written_at_once_after_the_changes_before_it(
    sessions: sessionmaker[Session], fleet: tuple[Fleet, ManualClock], tmp_path: Path
) -> None:
    fleet_, clock = fleet
    fleet_.heartbeat("p-1", beat(1))
    clock.advance(1)
    with sqlite3.connect(tmp_path / "registry.sqlite3") as other:
        other.execute("ALTER TABLE events RENAME TO events_away")
    with pytest.raises(ServerError, match="retry"):
        fleet_.leave("p-1", "probe left")  # not ahead of the queued online event
    assert {e["probe_id"]: e["state"] for e in fleet_.snapshot()}["p-1"] == "online"
    assert fleet_.pending_events() == 1
    with sqlite3.connect(tmp_path / "registry.sqlite3") as other:
        other.execute("ALTER TABLE events_away RENAME TO events")
    fleet_.leave("p-1", "probe left")
    assert [(e[1], e[2]) for e in state_events(sessions)] == [
        ("online", T0),
        ("left", T0 + dt.timedelta(seconds=1)),
    ]
    assert probe_row(sessions, "p-1").state == "left"
    fleet_.sweep()
    fleet_.flush()
    assert len(state_events(sessions)) == 2  # no state change after the leave
    with pytest.raises(UnknownProbeError):
        fleet_.leave("p-9", "no such probe")


def test_delivered_commands_are_marked_by_the_flush(
    sessions: sessionmaker[Session], fleet: tuple[Fleet, ManualClock]
) -> None:
    fleet_, _ = fleet
    with sessions.begin() as s:
        command_id = queue_command(s, "p-1", "upload-now")
    fleet_.refresh()
    sent = fleet_.heartbeat("p-1", beat(1))
    assert [c.command_id for c in sent] == [command_id]
    fleet_.flush()
    with sessions() as s:
        command = s.get(Command, command_id)
        assert command is not None and (command.outcome, command.delivered_at) == ("delivered", T0)


def test_the_sweep_finds_silent_probes_behind_fresh_ones_and_revoked_ones_at_once(
    sessions: sessionmaker[Session], fleet: tuple[Fleet, ManualClock]
) -> None:
    fleet_, clock = fleet
    fleet_.heartbeat("p-2", beat(1))
    clock.advance(5)
    fleet_.heartbeat("p-1", beat(1))
    clock.advance(4)
    fleet_.heartbeat("p-2", beat(2))  # p-2 heard from last: p-1 is now the oldest
    clock.advance(7)
    fleet_.sweep()
    assert {e["probe_id"]: e["state"] for e in fleet_.snapshot()} == {"p-1": "stale", "p-2": "online"}
    with sessions.begin() as s:  # another process revokes p-2
        probe = s.get(Probe, "p-2")
        assert probe is not None
        probe.left_at = utcnow()
    fleet_.refresh()
    assert {e["probe_id"]: e["state"] for e in fleet_.snapshot()}["p-2"] == "left"
    fleet_.flush()
    assert [(e[0], e[1]) for e in state_events(sessions)] == [
        ("p-2", "online"),
        ("p-1", "online"),
        ("p-1", "stale"),
        ("p-2", "left"),
    ]
