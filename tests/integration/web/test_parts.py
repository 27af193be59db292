"""The web UI's plain parts: login limits, chart geometry, number formats, accounts and their CLI."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy.orm import Session, sessionmaker

from integration.web.webenv import ADMIN, WebEnv
from survey6.server.registry.models import WebUser
from survey6.server.web import formatting as fmt
from survey6.server.web.charts import MAX_POINTS, line_chart
from survey6.server.web.errors import UserError
from survey6.server.web.ratelimit import LoginLimiter
from survey6.server.web.users import (
    PasswordChecker,
    add_user,
    list_users,
    remove_user,
    set_password,
    set_role,
)

SERVER = str(Path(sys.executable).with_name("survey6-server"))
T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_the_limiter_counts_failures_per_address_within_a_minute() -> None:
    clock = FakeClock()
    limiter = LoginLimiter(3, clock=clock)
    for _ in range(3):
        assert limiter.retry_after_s("a") == 0
        limiter.failed("a", "admin")
    assert limiter.retry_after_s("a") == 60.0 and limiter.retry_after_s("b") == 0
    clock.now_s += 59.5
    assert limiter.retry_after_s("a") == pytest.approx(0.5)
    clock.now_s += 1
    assert limiter.retry_after_s("a") == 0  # the failures have aged out of the window
    limiter.failed("a", "admin")
    limiter.succeeded("a")
    limiter.failed("a", "admin")
    limiter.failed("a", "admin")
    assert limiter.retry_after_s("a") == 0  # a success started the count again


def test_a_chart_breaks_its_line_where_heartbeats_stopped() -> None:
    points: list[tuple[dt.datetime, float | None]] = [
        (T0 + dt.timedelta(seconds=30 * i), 10.0) for i in range(5)
    ]
    points += [(T0 + dt.timedelta(seconds=600 + 30 * i), 20.0) for i in range(5)]  # after 8 minutes away
    chart = line_chart("x", points, T0, T0 + dt.timedelta(hours=1), fmt.human_count)
    assert len(chart.segments) == 2 and all(len(s.split()) == 5 for s in chart.segments)
    assert [label for _, label in chart.y_ticks] == ["0", "10", "20"] and chart.latest == "20"
    unknown = line_chart("y", [(T0, None), (T0 + dt.timedelta(seconds=30), 0.5)], T0, T0, fmt.percent, 1.0)
    assert len(unknown.segments) == 1 and unknown.latest == "50.0 %"
    assert line_chart("z", [], T0, T0 + dt.timedelta(hours=1), fmt.human_count).empty


def test_a_long_history_is_averaged_down_to_what_a_chart_can_show() -> None:
    day = [(T0 + dt.timedelta(seconds=10 * i), float(i % 2)) for i in range(8640)]
    chart = line_chart("x", day, T0, T0 + dt.timedelta(days=1), fmt.human_count)
    points = [p for segment in chart.segments for p in segment.split()]
    assert len(points) <= MAX_POINTS
    assert chart.latest == "0.5"  # the last bucket averages the alternating zeros and ones


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (999, "999"), (1500, "1.5k"), (2_500_000, "2.5M"), (12.5, "12.5"), (None, "-")],
)
def test_counts(value: float | None, text: str) -> None:
    assert fmt.human_count(value) == text


def test_sizes_ratios_and_ages() -> None:
    assert [fmt.human_bytes(v) for v in (0, 1023, 1024, 3 << 20, 5 << 40)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "3.0 MiB",
        "5.0 TiB",
    ]
    assert [fmt.percent(r) for r in (0.0, 0.0123, 0.5, -1.0)] == ["0.00 %", "1.23 %", "50.0 %", "-"]
    ages = [fmt.age(T0 - dt.timedelta(seconds=s), T0) for s in (3, 300, 7300, 200_000)]
    assert ages == ["3s ago", "5m ago", "2h ago", "2d ago"] and fmt.age(None, T0) == "never"


def test_accounts(web_env: WebEnv) -> None:
    sessions: sessionmaker[Session] = web_env.sessions
    with sessions.begin() as session:
        add_user(session, "ops@example", "long-enough-1", "admin")
        for name, password, role, message in (
            ("ops@example", "long-enough-1", "viewer", "already exists"),
            ("bad name", "long-enough-1", "viewer", "bad user name"),
            ("short", "short", "viewer", "10 to 1024 characters"),
            ("rooty", "long-enough-1", "root", "unknown role"),
        ):
            with pytest.raises(UserError, match=message):
                add_user(session, name, password, role)
    with sessions.begin() as session:
        assert [(a.username, a.role) for a in list_users(session)] == [
            ("admin", "admin"),
            ("ops@example", "admin"),
            ("watcher", "viewer"),
        ]
        remove_user(session, "ops@example")
    with sessions.begin() as session, pytest.raises(UserError, match="last admin"):
        set_role(session, "admin", "viewer")
    with sessions.begin() as session, pytest.raises(UserError, match="last admin"):
        remove_user(session, "admin")
    with sessions.begin() as session:
        set_password(session, "admin", "a-new-password")
    checker = PasswordChecker()
    with sessions.begin() as session:
        assert checker.authenticate(session, "admin", ADMIN[1]) is None
        account = checker.authenticate(session, "admin", "a-new-password")
        assert account is not None and account.is_admin
        assert checker.authenticate(session, "nobody", "a-new-password") is None
        assert checker.authenticate(session, "admin", "x" * 5000) is None


def test_an_outdated_hash_is_upgraded_at_login(web_env: WebEnv) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8192).hash("old-params-password")
    with web_env.sessions.begin() as session:
        session.add(WebUser(username="legacy", password_hash=weak, role="viewer"))
    with web_env.sessions.begin() as session:
        assert PasswordChecker().authenticate(session, "legacy", "old-params-password") is not None
    with web_env.sessions() as session:
        stored = session.get(WebUser, "legacy")
        assert stored is not None and stored.password_hash != weak
        assert not PasswordHasher().check_needs_rehash(stored.password_hash)


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVER, *args], input=stdin, capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )


def test_the_user_commands(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "server")]
    assert run("init", *data, "--server-name", "localhost").returncode == 0
    password_file = tmp_path / "password"
    password_file.write_text("viewer-password-1\n")
    added = run("user", "add", "alice", "--role", "viewer", "--password-file", str(password_file), *data)
    assert added.returncode == 0 and added.stdout.strip() == "added alice (viewer)"
    prompted = run(
        "user", "add", "bob", "--role", "admin", *data, stdin="admin-password-2\nadmin-password-2\n"
    )
    assert prompted.returncode == 0, prompted.stderr
    again = run("user", "add", "alice", "--password-file", str(password_file), *data)
    assert again.returncode == 1 and again.stderr == "survey6-server: error: user alice already exists\n"
    short = run("user", "add", "carol", *data, stdin="short\nshort\n")
    assert short.returncode == 1 and "10 to 1024 characters" in short.stderr
    listed = json.loads(run("user", "list", "--json", *data).stdout)
    assert [(u["username"], u["role"]) for u in listed] == [
        ("admin", "admin"),
        ("alice", "viewer"),
        ("bob", "admin"),
    ]
    assert run("user", "role", "alice", "admin", *data).stdout.strip() == "alice is now admin"
    assert run("user", "passwd", "alice", "--password-file", str(password_file), *data).returncode == 0
    assert run("user", "remove", "bob", *data).returncode == 0
    assert run("user", "remove", "alice", *data).returncode == 0
    last = run("user", "remove", "admin", *data)
    assert last.returncode == 1 and "last admin" in last.stderr and "Traceback" not in last.stderr
    bad_role = run("user", "add", "dave", "--role", "root", *data)
    assert bad_role.returncode == 2 and "'root' is not one of" in bad_role.stderr
