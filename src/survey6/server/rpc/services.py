"""The servicers: enrolment (server-only TLS) and probe control (mTLS)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import grpc
from sqlalchemy.orm import Session, sessionmaker

from survey6 import __version__
from survey6.server.attempts import JoinAttempts
from survey6.server.enrolment import join, token_id_of
from survey6.server.errors import EnrolmentError, TokenError, TokenGuessError, UnknownProbeError
from survey6.server.fleet import Fleet
from survey6.server.pki import CertificateAuthority
from survey6.server.rpc.auth import probe_of
from survey6.wire.v1 import control_pb2, control_pb2_grpc, enrolment_pb2, enrolment_pb2_grpc

log = logging.getLogger(__name__)

_ServicerMethod = TypeVar("_ServicerMethod", bound=Callable[..., Any])


def guarded(method: _ServicerMethod) -> _ServicerMethod:
    """An unexpected exception becomes INTERNAL with a bland message; the details go to the log only."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            code = getattr(context, "code", lambda: None)()  # missing from the type stubs
            if code is not None and code != grpc.StatusCode.OK:
                raise  # abort() raises after choosing the status: let it through
            log.exception("%s failed", method.__name__, extra={"peer": context.peer()})
            context.abort(grpc.StatusCode.INTERNAL, "internal server error")
            raise AssertionError("unreachable") from exc

    return cast(_ServicerMethod, wrapper)


API_VERSIONS = ["v1"]
# Trailing metadata of a limited Join: when to try again (gRFC A6's server pushback).
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


class EnrolmentService(enrolment_pb2_grpc.EnrolmentServicer):
    def __init__(
        self,
        sessions: sessionmaker[Session],
        ca: CertificateAuthority,
        fleet: Fleet,
        *,
        control_port: int,
        heartbeat_interval_s: float,
        attempts: JoinAttempts,
    ) -> None:
        self.sessions = sessions
        self.ca = ca
        self.fleet = fleet
        self.control_port = control_port
        self.heartbeat_interval_ms = int(heartbeat_interval_s * 1000)
        self.attempts = attempts

    @guarded
    def GetServerInfo(
        self, request: enrolment_pb2.GetServerInfoRequest, context: grpc.ServicerContext
    ) -> enrolment_pb2.ServerInfo:
        return enrolment_pb2.ServerInfo(
            ca_certificate_pem=self.ca.cert_pem, software_version=__version__, api_versions=API_VERSIONS
        )

    @guarded
    def Join(
        self, request: enrolment_pb2.JoinRequest, context: grpc.ServicerContext
    ) -> enrolment_pb2.JoinResponse:
        peer = context.peer()
        client = self.attempts.client_of(peer)
        token_id = token_id_of(request.token)  # for the log: never the secret
        self._refuse_if_limited(context, peer, client, token_id)
        try:
            with self.sessions.begin() as session:
                enrolled = join(session, self.ca, request)
        except TokenGuessError as exc:
            failures = self.attempts.failed(client)
            log.warning(
                "join refused from %s (token %s): %s; %d failed in the window",
                peer,
                token_id,
                exc,
                failures,
                extra={"peer": peer, "client": client, "token_id": token_id, "failures": failures},
            )
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"token refused: {exc}")
        except TokenError as exc:
            self.attempts.note("refused")
            log.warning(
                "join refused from %s (token %s): %s",
                peer,
                token_id,
                exc,
                extra={"peer": peer, "token_id": token_id},
            )
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"token refused: {exc}")
        except EnrolmentError as exc:
            self.attempts.note("refused")
            log.warning("join refused from %s: %s", peer, exc, extra={"peer": peer, "token_id": token_id})
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self.attempts.note("enrolled")
        self.fleet.add_enrolled(enrolled.probe)
        log.info(
            "probe enrolled",
            extra={"probe_id": enrolled.probe.id, "hostname": enrolled.probe.hostname, "peer": peer},
        )
        return enrolment_pb2.JoinResponse(
            probe_id=enrolled.probe.id,
            client_certificate_pem=enrolled.certificate.cert_pem,
            ca_certificate_pem=self.ca.cert_pem,
            certificate_not_after_s=int(enrolled.certificate.not_after.timestamp()),
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            control_port=self.control_port,
        )

    def _refuse_if_limited(
        self, context: grpc.ServicerContext, peer: str, client: str, token_id: str
    ) -> None:
        """Aborts a Join (before its token is looked at) from a client over its guess limit, or from a
        client that has guessed while all clients together are over theirs."""
        refusal = self.attempts.check(client)
        if refusal is None:
            return
        wait_s = int(refusal.retry_after_s) + 1
        log.warning(
            "join refused from %s (token %s): too many failed attempts %s; %d s to wait",
            peer,
            token_id,
            "from this client" if refusal.scope == "client" else "from all clients",
            wait_s,
            extra={"peer": peer, "client": client, "token_id": token_id, "limit": refusal.scope},
        )
        context.set_trailing_metadata(((RETRY_PUSHBACK_KEY, str(wait_s * 1000)),))
        who = "your address" if refusal.scope == "client" else "all addresses (yours among them)"
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"too many failed join attempts from {who}; try again in {wait_s} s",
        )


class ProbeControlService(control_pb2_grpc.ProbeControlServicer):
    def __init__(self, fleet: Fleet, *, heartbeat_interval_s: float) -> None:
        self.fleet = fleet
        self.heartbeat_interval_ms = int(heartbeat_interval_s * 1000)

    @guarded
    def Heartbeat(
        self, request: control_pb2.HeartbeatRequest, context: grpc.ServicerContext
    ) -> control_pb2.HeartbeatResponse:
        probe = probe_of(context, self.fleet)
        commands = self.fleet.heartbeat(probe.probe_id, request)
        return control_pb2.HeartbeatResponse(
            server_time_ns=time.time_ns(),
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            commands=commands,
            losses_acknowledged_through=self.fleet.losses_acknowledged(probe.probe_id),
        )

    @guarded
    def AcknowledgeCommand(
        self, request: control_pb2.CommandAck, context: grpc.ServicerContext
    ) -> control_pb2.CommandAckResponse:
        probe = probe_of(context, self.fleet)
        try:
            self.fleet.acknowledge(probe.probe_id, request)
        except UnknownProbeError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return control_pb2.CommandAckResponse()

    @guarded
    def Leave(
        self, request: control_pb2.LeaveRequest, context: grpc.ServicerContext
    ) -> control_pb2.LeaveResponse:
        probe = probe_of(context, self.fleet)
        self.fleet.leave(probe.probe_id, request.reason or "probe left")
        log.info("probe left", extra={"probe_id": probe.probe_id, "reason": request.reason})
        return control_pb2.LeaveResponse()
