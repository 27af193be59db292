"""Token guessing is limited and logged: the window logic with a test clock, then the real server
over real TLS, with two real clients (127.0.0.1 and ::1) on one enrolment port. The client key of
peer strings captured from a live gRPC server is checked in tests/unit/server/test_attempts.py."""

from __future__ import annotations

import http.client
import logging
from collections.abc import Callable

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from integration.security.secure_server import SecureServer
from support.upload_client import enrol
from survey6.common.errors import ConfigError
from survey6.common.settings import load_settings
from survey6.server import tokens
from survey6.server.attempts import JoinAttempts, client_key
from survey6.server.settings import EnrolmentSettings, ServerSettings
from survey6.wire.v1 import enrolment_pb2, enrolment_pb2_grpc

GUESSED_SECRET = "guessguessguess0"


class TestClock:
    __test__ = False  # not a test class, despite the name

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def attempts(clock: TestClock, **settings: object) -> JoinAttempts:
    return JoinAttempts(EnrolmentSettings.model_validate(settings), clock)


def test_a_client_is_refused_after_its_failures_until_the_window_moves_on() -> None:
    clock = TestClock()
    limiter = attempts(clock, failures_per_client=3, failures_total=100, failure_window_s=600)
    for offset in (0.0, 1.0, 2.0):
        clock.now = 1000.0 + offset
        assert limiter.check("192.0.2.7") is None
        limiter.failed("192.0.2.7")
    refusal = limiter.check("192.0.2.7")
    assert refusal is not None and refusal.scope == "client"
    assert refusal.retry_after_s == pytest.approx(598.0)  # until the oldest failure leaves the window
    assert limiter.check("192.0.2.8") is None  # another client is not affected
    clock.now = 1600.0  # the first failure has left the window: one more try
    assert limiter.check("192.0.2.7") is None
    limiter.failed("192.0.2.7")
    assert limiter.check("192.0.2.7") is not None
    assert limiter.counts["guess"] == 4 and limiter.counts["limited"] == 2


def test_past_the_total_only_clients_that_failed_are_refused() -> None:
    clock = TestClock()
    limiter = attempts(clock, failures_per_client=10, failures_total=3, failure_window_s=60)
    for offset, client in enumerate(("192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::/64")):
        clock.now = 1000.0 + offset * 10  # 1000, 1010, 1020, 1030
        assert limiter.check(client) is None  # none of them has failed yet: each gets its guess
        limiter.failed(client)
    assert limiter.check("198.51.100.1") is None  # the total is spent, but this one never failed
    refusal = limiter.check("192.0.2.2")
    assert refusal is not None and refusal.scope == "global"
    assert refusal.retry_after_s == 40.0  # the total is under again when the failure of 1010 leaves
    # 192.0.2.1 failed before the last three failures: its own failure leaves first (at 1060).
    refusal = limiter.check("192.0.2.1")
    assert refusal is not None and refusal.scope == "global" and refusal.retry_after_s == 30.0
    clock.now = 1060.0
    assert limiter.check("192.0.2.1") is None
    assert limiter.check("192.0.2.3") is not None  # the total still holds, and it failed at 1020
    clock.now = 1070.0  # the failure of 1010 has left: two failures in the window, under the total
    assert limiter.check("192.0.2.3") is None
    assert limiter.counts["limited"] == 3


def test_clients_tracked_stay_bounded_under_a_flood_of_addresses() -> None:
    limiter = attempts(TestClock(), failures_per_client=2, failures_total=10)
    for index in range(1000):
        limiter.failed(f"10.0.{index // 256}.{index % 256}")
    assert len(limiter._clients) <= 20
    assert len(limiter._all) == 10  # the last `failures_total` failures are all the total needs
    refusal = limiter.check("10.0.3.231")  # the last client to fail
    assert refusal is not None and refusal.scope == "global"


@pytest.mark.parametrize(
    "peer, client",
    [
        # As grpcio 1.85 writes them: brackets (and a zone's "%") percent-encoded, "unix:" bare.
        ("ipv4:192.0.2.7:40000", "192.0.2.7"),
        ("ipv6:%5B2001:db8:1:2::5%5D:40000", "2001:db8:1:2::/64"),
        ("ipv6:%5B2001:db8:1:2:ffff:ffff:ffff:1%5D:1", "2001:db8:1:2::/64"),  # the same /64
        ("ipv6:%5B::1%5D:51280", "::/64"),
        ("ipv6:%5B::ffff:192.0.2.7%5D:40000", "192.0.2.7"),  # IPv4 through a dual-stack listener
        ("ipv6:%5Bfe80::1%25eth0%5D:40000", "fe80::/64"),
        ("unix:", "unix"),
        # Other spellings: brackets as they are, no port, no brackets, a path.
        ("ipv6:[2001:db8:1:2::5]:40000", "2001:db8:1:2::/64"),
        ("ipv6:%5B2001:db8:1:2::5%5D", "2001:db8:1:2::/64"),
        ("ipv6:2001:db8:1:2::5", "2001:db8:1:2::/64"),
        ("ipv4:192.0.2.7", "192.0.2.7"),
        ("unix:/run/survey6.sock", "unix"),
        # No address: counted by what is left without the port, never per connection.
        ("ipv4:not-an-address:40000", "ipv4:not-an-address"),
        ("ipv6:%5Bnot-an-address%5D:40000", "ipv6:not-an-address"),
        ("", "unknown"),
    ],
)
def test_the_client_a_peer_counts_as(peer: str, client: str) -> None:
    assert client_key(peer, 64) == client


def test_the_limits_are_settings_with_units() -> None:
    settings = load_settings(
        ServerSettings,
        side="server",
        environ={"SURVEY6_ENROLMENT__FAILURE_WINDOW_S": "15m", "SURVEY6_ENROLMENT__FAILURES_PER_CLIENT": "4"},
    )
    assert settings.enrolment.failure_window_s == 900.0
    assert settings.enrolment.failures_per_client == 4
    assert settings.enrolment.failures_total == 200 and settings.enrolment.client_ipv6_prefix_bits == 64
    with pytest.raises(ConfigError, match="failures_per_client"):
        load_settings(ServerSettings, side="server", environ={"SURVEY6_ENROLMENT__FAILURES_PER_CLIENT": "0"})


# -- the real server ------------------------------------------------------------------------------


def try_join(server: SecureServer, host: str, token: str) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """A Join from `host` (127.0.0.1 or ::1): its status, details and trailing metadata."""
    try:
        enrol(server.enrol_target(host), server.app.ca.cert_pem, token)
    except grpc.RpcError as exc:
        trailing = {m.key: str(m.value) for m in exc.trailing_metadata() or ()}
        return exc.code(), exc.details() or "", trailing
    return grpc.StatusCode.OK, "", {}


def guess_on_a_new_connection(server: SecureServer, host: str, token: str) -> grpc.StatusCode:
    """A Join on a connection of its own (not one shared through gRPC's global subchannel pool), so
    from a new source port; the token is checked before the CSR, so a guess needs none."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    credentials = grpc.ssl_channel_credentials(server.app.ca.cert_pem)
    with grpc.secure_channel(server.enrol_target(host), credentials, options) as channel:
        try:
            enrolment_pb2_grpc.EnrolmentStub(channel).Join(enrolment_pb2.JoinRequest(token=token), timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def used_count(server: SecureServer, token: str) -> int:
    with server.app.sessions.begin() as session:
        listed = {t.token_id: t for t in tokens.list_tokens(session)}
    return listed[token.split(".")[0]].used_count


def join_counts(server: SecureServer) -> dict[str, float]:
    connection = http.client.HTTPConnection("127.0.0.1", server.app.http_port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "survey6_enrolment_joins"
        for sample in family.samples
        if sample.name == "survey6_enrolment_joins_total"
    }


def test_guesses_from_one_address_are_limited_logged_and_counted(
    make_server: Callable[..., SecureServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="survey6.server")
    server = make_server(
        enrolment={"failures_per_client": 3, "failures_total": 100, "failure_window_s": "1h"}
    )
    token = server.new_token(usages=5)
    token_id, secret = token.split(".")
    unknown_id = "zz" + token_id[2:] if not token_id.startswith("zz") else "yy" + token_id[2:]
    guesses = [f"{token_id}.{GUESSED_SECRET}", f"{unknown_id}.{GUESSED_SECRET}", "not-a-token"]
    for guess in guesses:
        code, details, _ = try_join(server, "127.0.0.1", guess)
        assert code == grpc.StatusCode.PERMISSION_DENIED, details

    # The right token from the guessing address is refused unseen, and says when to come back.
    code, details, trailing = try_join(server, "127.0.0.1", token)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many failed join attempts from your address; try again in" in details
    assert 0 < int(trailing["grpc-retry-pushback-ms"]) <= 3601 * 1000  # the window is 1 h
    assert used_count(server, token) == 0

    # Another address (::1) is not limited: the same token joins from there.
    assert try_join(server, "::1", token)[0] == grpc.StatusCode.OK
    assert used_count(server, token) == 1

    failures = [r for r in caplog.records if "join refused" in r.getMessage()]
    assert len(failures) == 4
    for record, expected_id in zip(failures, [token_id, unknown_id, "malformed", token_id], strict=True):
        assert record.levelno == logging.WARNING
        assert "ipv4:127.0.0.1:" in record.getMessage()
        assert record.__dict__["token_id"] == expected_id and f"(token {expected_id})" in record.getMessage()
    assert failures[-1].__dict__["limit"] == "client"
    assert secret not in caplog.text and GUESSED_SECRET not in caplog.text  # never a secret
    assert join_counts(server) == {"enrolled": 1.0, "refused": 0.0, "guess": 3.0, "limited": 1.0}


def test_an_ipv6_client_is_limited_however_many_connections_it_opens(
    make_server: Callable[..., SecureServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="survey6.server")
    server = make_server(
        enrolment={"failures_per_client": 2, "failures_total": 100, "failure_window_s": "1h"}
    )
    token = server.new_token(usages=2)
    for _ in range(2):
        code = guess_on_a_new_connection(server, "::1", f"{token[:6]}.{GUESSED_SECRET}")
        assert code == grpc.StatusCode.PERMISSION_DENIED
    guesses = [r for r in caplog.records if "failed in the window" in r.getMessage()]
    assert len({r.__dict__["peer"] for r in guesses}) == 2  # two peers, as gRPC reports them
    assert [r.__dict__["client"] for r in guesses] == ["::/64", "::/64"]  # one client

    code, details, trailing = try_join(server, "::1", token)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert "from your address" in details and int(trailing["grpc-retry-pushback-ms"]) > 0
    assert used_count(server, token) == 0
    assert try_join(server, "127.0.0.1", token)[0] == grpc.StatusCode.OK  # another client joins
    assert join_counts(server) == {"enrolled": 1.0, "refused": 0.0, "guess": 2.0, "limited": 1.0}


def test_past_the_total_a_client_that_never_guessed_still_joins(
    make_server: Callable[..., SecureServer],
) -> None:
    server = make_server(enrolment={"failures_per_client": 10, "failures_total": 2, "failure_window_s": "1h"})
    token = server.new_token(usages=3)
    guess = f"{token[:6]}.{GUESSED_SECRET}"
    for _ in range(2):  # the total is spent, by 127.0.0.1 alone
        assert try_join(server, "127.0.0.1", guess)[0] == grpc.StatusCode.PERMISSION_DENIED

    # The client that guessed is refused unseen, its valid token too, though under its own limit.
    code, details, trailing = try_join(server, "127.0.0.1", token)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert "from all addresses" in details and int(trailing["grpc-retry-pushback-ms"]) > 0
    assert used_count(server, token) == 0

    # ::1 has never guessed: its valid token is looked at and joins.
    assert try_join(server, "::1", token)[0] == grpc.StatusCode.OK
    assert used_count(server, token) == 1
    # Its one guess is looked at (and refused as a guess); from then on it is refused unseen too.
    assert try_join(server, "::1", guess)[0] == grpc.StatusCode.PERMISSION_DENIED
    code, details, _ = try_join(server, "::1", token)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "from all addresses" in details
    assert used_count(server, token) == 1
    assert join_counts(server) == {"enrolled": 1.0, "refused": 0.0, "guess": 3.0, "limited": 2.0}


def test_a_known_token_that_cannot_be_used_is_not_a_guess(make_server: Callable[..., SecureServer]) -> None:
    # One guess allowed: were a used-up or revoked token (with its right secret) a guess, the
    # second refusal here would already be RESOURCE_EXHAUSTED.
    server = make_server(enrolment={"failures_per_client": 1, "failure_window_s": "1h"})
    used_up = server.new_token(usages=1)
    assert try_join(server, "127.0.0.1", used_up)[0] == grpc.StatusCode.OK
    revoked = server.new_token()
    with server.app.sessions.begin() as session:
        tokens.revoke_token(session, revoked)
    for token, reason in ((used_up, "has been used up"), (revoked, "has been revoked")) * 2:
        code, details, _ = try_join(server, "127.0.0.1", token)
        assert code == grpc.StatusCode.PERMISSION_DENIED and reason in details
    assert try_join(server, "127.0.0.1", server.new_token())[0] == grpc.StatusCode.OK
    # The limiter is on: one guess, and the address is limited.
    assert (
        try_join(server, "127.0.0.1", f"{used_up[:6]}.{GUESSED_SECRET}")[0]
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert try_join(server, "127.0.0.1", server.new_token())[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert join_counts(server) == {"enrolled": 2.0, "refused": 4.0, "guess": 1.0, "limited": 1.0}
