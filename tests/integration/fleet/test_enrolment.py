"""Joining, with real server and probe processes and real TLS."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from support.fleet_processes import ProbeAgent, ServerProcess
from support.pki import make_ca
from survey6.wire.v1 import control_pb2, control_pb2_grpc


def one_line_error(result: object) -> str:
    stderr = result.stderr.strip()  # type: ignore[attr-defined]
    assert result.returncode == 1, stderr  # type: ignore[attr-defined]
    assert len(stderr.splitlines()) == 1, stderr
    return str(stderr)


def test_join_prints_and_accepts_the_join_command(server: ServerProcess, tmp_path: Path) -> None:
    line = server.token("--print-join-command", "--server", server.enrol_address)
    words = line.split()
    assert words[:3] == ["survey6-probe", "join", server.enrol_address]
    token = words[words.index("--token") + 1]
    assert words[words.index("--ca-cert-hash") + 1] == server.ca_hash
    agent = ProbeAgent(tmp_path, "p1")
    result = agent.join(server, token)
    assert result.returncode == 0, result.stderr
    assert agent.probe_id.startswith("p-")
    identity = agent.state_dir / "identity"
    assert (identity / "probe.key").stat().st_mode & 0o777 == 0o600
    probes = server.probes()
    assert [p["probe_id"] for p in probes] == [agent.probe_id]
    assert probes[0]["labels"] == {"site": "test"}


@pytest.mark.parametrize("problem", ["wrong", "expired", "revoked", "used-up", "malformed"])
def test_unusable_tokens_are_refused_clearly(server: ServerProcess, tmp_path: Path, problem: str) -> None:
    token = server.token("--usages", "1", "--ttl", "1s" if problem == "expired" else "1h")
    expected = {
        "wrong": "unknown token",
        "expired": "has expired",
        "revoked": "has been revoked",
        "used-up": "has been used up",
        "malformed": "malformed token",
    }[problem]
    if problem == "wrong":
        token = token.split(".")[0] + ".0000000000000000"
    elif problem == "expired":
        time.sleep(1.5)
    elif problem == "revoked":
        assert server.cli("token", "revoke", token.split(".")[0]).returncode == 0
    elif problem == "used-up":
        assert ProbeAgent(tmp_path, "first").join(server, token).returncode == 0
    else:
        token = "not-a-token"
    message = one_line_error(ProbeAgent(tmp_path, "p").join(server, token))
    assert expected in message
    assert token.split(".")[-1] not in message or problem == "malformed"  # never echo a secret


def test_wrong_ca_hash_is_refused_before_the_token_is_sent(server: ServerProcess, tmp_path: Path) -> None:
    token = server.token("--usages", "1")
    wrong = "sha256:" + "ab" * 32
    message = one_line_error(ProbeAgent(tmp_path, "p").join(server, token, ca_hash=wrong))
    assert "the token was not sent" in message
    listed = json.loads(server.cli("token", "list", "--json").stdout)
    assert listed[0]["used_count"] == 0  # the server never saw the token
    assert "join refused" not in server.log_path.read_text()


def test_no_valid_certificate_gets_nothing(server: ServerProcess, tmp_path: Path) -> None:
    agent = ProbeAgent(tmp_path, "p")
    assert agent.join(server, server.token()).returncode == 0
    ca_pem = (agent.state_dir / "identity" / "ca.crt").read_bytes()
    target = f"localhost:{server.control_port}"
    request = control_pb2.HeartbeatRequest()

    def heartbeat(credentials: grpc.ChannelCredentials) -> grpc.StatusCode:
        with grpc.secure_channel(target, credentials) as channel:
            try:
                control_pb2_grpc.ProbeControlStub(channel).Heartbeat(request, timeout=10)
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    # no client certificate: the TLS handshake fails
    assert heartbeat(grpc.ssl_channel_credentials(ca_pem)) == grpc.StatusCode.UNAVAILABLE
    # a certificate from another CA: refused too
    stranger = make_ca("another CA").issue("p-intruder", server=False)
    creds = grpc.ssl_channel_credentials(
        ca_pem, private_key=stranger.key_pem, certificate_chain=stranger.cert_pem
    )
    assert heartbeat(creds) == grpc.StatusCode.UNAVAILABLE
    # the probe's own certificate works
    identity = agent.state_dir / "identity"
    own = grpc.ssl_channel_credentials(
        ca_pem,
        private_key=(identity / "probe.key").read_bytes(),
        certificate_chain=(identity / "probe.crt").read_bytes(),
    )
    assert heartbeat(own) == grpc.StatusCode.OK


def test_standard_health_and_reflection_services(server: ServerProcess, tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    ca_pem = (server.data_dir / "pki" / "ca.crt").read_bytes()
    with grpc.secure_channel(
        f"localhost:{server.enrol_port}", grpc.ssl_channel_credentials(ca_pem)
    ) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"survey6.v1.Enrolment", "grpc.health.v1.Health"} <= names
