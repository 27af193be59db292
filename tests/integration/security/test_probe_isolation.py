"""A probe cannot upload as another probe, read anything of another probe, or act in the web UI:
the real server over mutual TLS, two probes enrolled by a real Join."""

from __future__ import annotations

import hashlib
import http.client
import ssl
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from sqlalchemy import func, select

from integration.security.secure_server import SecureServer
from support.upload_client import data_chunks, header, make_capture, put, status_of, stream
from survey6.server.commands import queue_command
from survey6.server.registry.models import BootstrapToken, Command
from survey6.wire.v1 import capture_pb2, control_pb2, upload_pb2

# Every RPC a probe's certificate reaches, and why none returns another probe's data. A new RPC
# fails test_every_rpc_a_probe_reaches_is_reviewed until it is added here with its reason (and a
# test below if it takes anything that names a probe, a file or a command).
CONTROL_PORT_RPCS = {
    "survey6.v1.ProbeControl/Heartbeat": "answers the caller's own commands; the request names no probe",
    "survey6.v1.ProbeControl/AcknowledgeCommand": "a command of another probe is NOT_FOUND",
    "survey6.v1.ProbeControl/Leave": "ends the caller's own enrolment; the request names no probe",
    "survey6.v1.Upload/GetOffset": "the caller's own files only (the request names no probe)",
    "survey6.v1.Upload/Put": "lands under the caller's id; metadata naming another probe is refused",
    "grpc.health.v1.Health/Check": "serving status only",
    "grpc.health.v1.Health/Watch": "serving status only",
    "grpc.health.v1.Health/List": "serving status only",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "the API's schema, no data",
}
ENROL_PORT_RPCS = {
    "survey6.v1.Enrolment/GetServerInfo": "the CA certificate and version: public by design",
    "survey6.v1.Enrolment/Join": "needs a bootstrap token; answers the new probe's own identity",
    "grpc.health.v1.Health/Check": "serving status only",
    "grpc.health.v1.Health/Watch": "serving status only",
    "grpc.health.v1.Health/List": "serving status only",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "the API's schema, no data",
}


def served_rpcs(channel: grpc.Channel) -> set[str]:
    """Every method of every service the server lists through reflection."""
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = DescriptorPool(database)
    rpcs = set()
    for service in database.get_services():
        rpcs |= {f"{service}/{m.name}" for m in pool.FindServiceByName(service).methods}
    return rpcs


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` by relative path, with the sha256 of its content."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_every_rpc_a_probe_reaches_is_reviewed(server: SecureServer) -> None:
    probe = server.join()
    control = server.channel(probe.credentials())
    served = served_rpcs(control)
    assert served <= set(CONTROL_PORT_RPCS), f"not reviewed: {sorted(served - set(CONTROL_PORT_RPCS))}"
    assert {r for r in served if r.startswith("survey6.")} == {
        r for r in CONTROL_PORT_RPCS if r.startswith("survey6.")
    }
    with grpc.secure_channel(
        server.enrol_target(), grpc.ssl_channel_credentials(server.app.ca.cert_pem)
    ) as enrol:
        served = served_rpcs(enrol)
    assert served <= set(ENROL_PORT_RPCS), f"not reviewed: {sorted(served - set(ENROL_PORT_RPCS))}"
    assert "survey6.v1.Enrolment/Join" in served


def test_get_offset_answers_only_for_the_callers_own_files(server: SecureServer) -> None:
    owner, other = server.join(), server.join()
    own, foreign = server.uploads(owner.credentials()), server.uploads(other.credentials())
    landed, partial = make_capture(1), make_capture(2)
    assert put(own, stream(landed)).durability == upload_pb2.DURABILITY_DURABLE
    put(own, stream(partial, 0, 1000))
    assert own.GetOffset(landed.offset_request(), timeout=10).receipt.sha256_hex == landed.sha256_hex
    assert own.GetOffset(partial.offset_request(), timeout=10).offset_bytes == 1000

    for capture in (landed, partial):
        answer = foreign.GetOffset(capture.offset_request(), timeout=10)
        assert answer.offset_bytes == 0 and not answer.HasField("receipt")
    # Not even a conflict gives away that the owner holds this sequence.
    other_sha = upload_pb2.OffsetRequest(sequence=1, sha256_hex="ab" * 32, file_size_bytes=len(landed.data))
    assert foreign.GetOffset(other_sha, timeout=10).offset_bytes == 0


def test_a_probe_cannot_continue_or_overwrite_another_probes_file(server: SecureServer) -> None:
    owner, other = server.join(), server.join()
    own, foreign = server.uploads(owner.credentials()), server.uploads(other.credentials())
    landed, partial = make_capture(1), make_capture(2)
    put(own, stream(landed))
    put(own, stream(partial, 0, 1000))
    owner_landing = server.landing / owner.probe_id
    before = tree(owner_landing), tree(server.receiving / owner.probe_id)

    # Resuming where the owner's part ends: this probe holds nothing of that file.
    code, details = status_of(lambda: put(foreign, stream(partial, 1000)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "resume from offset 0" in details
    # The same sequence with other bytes lands as this probe's own file, never over the owner's.
    impostor = make_capture(1, packets=50)
    assert put(foreign, stream(impostor)).durability == upload_pb2.DURABILITY_DURABLE
    assert (tree(owner_landing), tree(server.receiving / owner.probe_id)) == before
    assert (server.landing / other.probe_id / "2024/05/06/000000000001.pcap").read_bytes() == impostor.data
    assert put(own, stream(partial, 1000)).durability == upload_pb2.DURABILITY_DURABLE
    assert (owner_landing / "2024/05/06/000000000002.pcap").read_bytes() == partial.data


def test_metadata_pointing_at_another_probe_never_writes_there(server: SecureServer) -> None:
    victim, caller = server.join(), server.join()
    put(server.uploads(victim.credentials()), stream(make_capture(7)))
    upload = server.uploads(caller.credentials())
    victim_before = tree(server.landing / victim.probe_id)
    everything_before = tree(server.landing), tree(server.receiving)

    # The metadata names the victim: refused, and nothing is written anywhere.
    capture = make_capture(7, packets=30)
    forged = capture_pb2.CaptureMetadata()
    forged.CopyFrom(capture.metadata)
    forged.probe_id = victim.probe_id
    code, _ = status_of(lambda: put(upload, [header(capture, metadata=forged), *data_chunks(capture.data)]))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert (tree(server.landing), tree(server.receiving)) == everything_before

    # Every other free-text field spells the victim's landing path: it lands under the caller.
    hostile = capture.metadata
    hostile.host.hostname = victim.probe_id
    hostile.interface.name = f"../../{victim.probe_id}/2024/05/06"
    hostile.labels["probe_id"] = victim.probe_id
    hostile.labels[f"../{victim.probe_id}"] = "../../landing"
    hostile.filter = f"../{victim.probe_id}/2024/05/06/000000000007.pcap"
    assert put(upload, stream(capture)).durability == upload_pb2.DURABILITY_DURABLE
    assert tree(server.landing / victim.probe_id) == victim_before
    new = set(tree(server.landing)) - set(everything_before[0])
    assert new == {
        f"{caller.probe_id}/2024/05/06/000000000007.pcap",
        f"{caller.probe_id}/2024/05/06/000000000007.json",
    }


def test_a_probe_gets_and_acknowledges_only_its_own_commands(server: SecureServer) -> None:
    owner, other = server.join(), server.join()
    own, foreign = server.control(owner.credentials()), server.control(other.credentials())
    with server.app.sessions.begin() as session:
        command_id = queue_command(session, owner.probe_id, "suspend")
    server.app.fleet.refresh()

    assert list(foreign.Heartbeat(control_pb2.HeartbeatRequest(), timeout=10).commands) == []
    ack = control_pb2.CommandAck(command_id=command_id, outcome=control_pb2.COMMAND_OUTCOME_SUCCEEDED)
    code, _ = status_of(lambda: foreign.AcknowledgeCommand(ack, timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND
    with server.app.sessions() as session:
        command = session.get(Command, command_id)
        assert command is not None and command.acked_at is None and command.outcome == "pending"

    # Another probe leaving ends only its own enrolment.
    foreign.Leave(control_pb2.LeaveRequest(reason="test"), timeout=10)
    delivered = own.Heartbeat(control_pb2.HeartbeatRequest(), timeout=10).commands
    assert [c.command_id for c in delivered] == [command_id]
    own.AcknowledgeCommand(ack, timeout=10)


def registry_counts(server: SecureServer) -> tuple[int, int, int]:
    with server.app.sessions() as session:
        commands = session.scalar(select(func.count()).select_from(Command)) or 0
        created = session.scalar(select(func.count()).select_from(BootstrapToken)) or 0
        revoked = session.scalar(select(func.count()).where(BootstrapToken.revoked_at.is_not(None))) or 0
    return commands, created, revoked


def test_a_probe_certificate_opens_nothing_in_the_web_ui(
    make_server: Callable[..., SecureServer], tmp_path: Path
) -> None:
    server = make_server(web_tls=True)
    probe = server.join()
    token_id = server.new_token().split(".")[0]
    (tmp_path / "probe.crt").write_bytes(probe.cert_pem)
    (tmp_path / "probe.key").write_bytes(probe.key_pem)
    context = ssl.create_default_context(cadata=server.app.ca.cert_pem.decode())
    context.load_cert_chain(tmp_path / "probe.crt", tmp_path / "probe.key")  # offered if asked for
    before = registry_counts(server)

    def request(method: str, path: str, form: dict[str, str] | None = None) -> http.client.HTTPResponse:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", server.app.http_port, context=context, timeout=10
        )
        body = urllib.parse.urlencode(form) if form is not None else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if form is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        connection.close()
        return response

    for path in ("/probes", f"/probes/{probe.probe_id}", "/tokens", "/ingest"):
        response = request("GET", path)
        assert response.status == 302 and response.headers["Location"].startswith("/login"), path
    for path in ("/api/probes", f"/api/probes/{probe.probe_id}", "/api/tokens", "/api/me"):
        assert request("GET", path).status == 401, path
    for path, form in (
        (f"/probes/{probe.probe_id}/commands", {"action": "leave"}),
        ("/tokens", {"ttl": "1h", "usages": "1"}),
        (f"/tokens/{token_id}/revoke", {}),
    ):
        assert request("POST", path, form).status == 400, path  # no session, no CSRF token
    assert registry_counts(server) == before
    heartbeat = server.control(probe.credentials()).Heartbeat(control_pb2.HeartbeatRequest(), timeout=10)
    assert list(heartbeat.commands) == []
