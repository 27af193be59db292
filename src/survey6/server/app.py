"""The running server: two gRPC endpoints over one registry, and the background work behind them.

- enrolment, server-only TLS (a joining probe has no certificate yet): ``enrol_listen``
- probe control and uploads, mutual TLS: ``grpc_listen``
- the ingest outbox drainer: stored files into the Redis queue
- the web UI and /metrics (``survey6.server.web``, a thread): ``http_listen``

Both serve the standard health and reflection services.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from survey6.server.attempts import JoinAttempts
from survey6.server.errors import NotInitialisedError
from survey6.server.fleet import Fleet
from survey6.server.history import prune_history
from survey6.server.pki import CertificateAuthority
from survey6.server.queue import Drainer, IngestQueue
from survey6.server.registry import db
from survey6.server.registry.models import utcnow
from survey6.server.rpc.services import EnrolmentService, ProbeControlService
from survey6.server.rpc.upload_service import UploadService
from survey6.server.settings import ServerSettings
from survey6.server.setup import database_url, pki_dir
from survey6.server.tokens import delete_stale_tokens
from survey6.server.uploads import Layout, UploadStore
from survey6.wire.v1 import (
    control_pb2,
    control_pb2_grpc,
    enrolment_pb2,
    enrolment_pb2_grpc,
    upload_pb2,
    upload_pb2_grpc,
)

if TYPE_CHECKING:
    from survey6.server.web.serving import WebServer

log = logging.getLogger(__name__)

RPC_WORKERS = 32
SWEEP_INTERVAL_S = 0.5
REFRESH_INTERVAL_S = 1.0
TOKEN_CLEANUP_INTERVAL_S = 3600.0
HISTORY_PRUNE_INTERVAL_S = 3600.0
STOP_GRACE_S = 5.0
# Upload chunks carry at most 1 MiB of data; the rest is headroom for the header and framing.
MAX_RECEIVE_MESSAGE_BYTES = 2 << 20  # 2 MiB


class ServerApp:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        pki = pki_dir(settings.data_dir)
        self.ca = CertificateAuthority.load(pki)
        self.engine = db.make_engine(database_url(settings.data_dir, settings.database_url))
        if not db.is_initialised(self.engine):
            raise NotInitialisedError(f"no registry in {settings.data_dir}: run `survey6-server init` first")
        db.upgrade(self.engine)  # a newer version's migrations apply on start
        self.sessions = db.session_factory(self.engine)
        self.fleet = Fleet(self.sessions, settings.liveness)
        self.layout = Layout.from_settings(settings.data_dir, settings.uploads)
        self.layout.create()
        self.ingest_queue = IngestQueue(settings.redis_url, job_timeout_s=settings.queue.job_timeout_s)
        self.drainer = Drainer(
            self.sessions, self.ingest_queue, self.layout.landing, settings.queue.drain_interval_s
        )
        self.uploads = UploadStore(self.sessions, self.layout, settings.uploads, on_stored=self.drainer.wake)
        self.join_attempts = JoinAttempts(settings.enrolment)
        self._server_key = (pki / "server.key").read_bytes()
        # The chain includes the CA: a joining probe pins it from the handshake.
        self._server_chain = (pki / "server.crt").read_bytes() + self.ca.cert_pem
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.enrol_port = 0
        self.control_port = 0
        self._servers: list[grpc.Server] = []
        self.http_port = 0
        self._web: WebServer | None = None

    def start(self) -> None:
        self.fleet.load()
        self.uploads.recover()  # before serving: rows a crash left half-landed
        self._start_web()
        liveness = self.settings.liveness
        control = grpc.server(
            futures.ThreadPoolExecutor(max_workers=RPC_WORKERS),
            options=[("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES)],
        )
        control_pb2_grpc.add_ProbeControlServicer_to_server(
            ProbeControlService(self.fleet, heartbeat_interval_s=liveness.heartbeat_interval_s), control
        )
        upload_pb2_grpc.add_UploadServicer_to_server(UploadService(self.fleet, self.uploads), control)
        self.control_port = self._listen(control, self.settings.grpc_listen, mutual=True)
        self._add_standard_services(
            control,
            [
                control_pb2.DESCRIPTOR.services_by_name["ProbeControl"].full_name,
                upload_pb2.DESCRIPTOR.services_by_name["Upload"].full_name,
            ],
        )

        enrol = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        enrolment_pb2_grpc.add_EnrolmentServicer_to_server(
            EnrolmentService(
                self.sessions,
                self.ca,
                self.fleet,
                control_port=self.control_port,
                heartbeat_interval_s=liveness.heartbeat_interval_s,
                attempts=self.join_attempts,
            ),
            enrol,
        )
        self.enrol_port = self._listen(enrol, self.settings.enrol_listen, mutual=False)
        self._add_standard_services(enrol, [enrolment_pb2.DESCRIPTOR.services_by_name["Enrolment"].full_name])

        for server in (control, enrol):
            server.start()
            self._servers.append(server)
        self._background(self._write_behind, "write-behind", liveness.write_behind_interval_s)
        self._background(self.fleet.sweep, "liveness", SWEEP_INTERVAL_S)
        self._background(self.fleet.refresh, "refresh", REFRESH_INTERVAL_S)
        self._background(self._cleanup_tokens, "tokens", TOKEN_CLEANUP_INTERVAL_S)
        self._background(self._prune_history, "history", HISTORY_PRUNE_INTERVAL_S)
        self._background(self.uploads.remove_abandoned_parts, "parts", self.uploads.cleanup_interval_s)
        drainer = threading.Thread(target=self.drainer.run, name="ingest-outbox", daemon=True)
        drainer.start()
        self._threads.append(drainer)
        log.info(
            "server listening",
            extra={
                "enrol_port": self.enrol_port,
                "control_port": self.control_port,
                "http_port": self.http_port,
                "ca_hash": self.ca.cert_hash,
            },
        )

    def _start_web(self) -> None:
        """The web UI on http_listen, first: a port it cannot bind fails the start before any RPC."""
        # Here, not at the top: the command line imports this module, and only `run` needs Flask.
        from survey6.server.web import create_app
        from survey6.server.web.application import web_settings_of
        from survey6.server.web.context import web_context
        from survey6.server.web.services import WebServices, default_join_address
        from survey6.server.web.serving import WebServer

        web = web_settings_of(self.settings)
        services = WebServices(
            sessions=self.sessions,
            fleet=self.fleet,
            data_dir=self.settings.data_dir,
            ca_cert_hash=self.ca.cert_hash,
            join_address=lambda: default_join_address(self.settings.data_dir, self.enrol_port),
            queue_depth=lambda: int(self.ingest_queue.queue.count),
        )
        web_app = create_app(services, self.settings, web)
        with web_app.app_context():  # the Join counters on /metrics, next to the web UI's own
            web_context().metrics.registry.register(self.join_attempts)
        self._web = WebServer(web_app, self.settings.http_listen, web)
        self._web.start()
        self.http_port = self._web.port

    def _listen(self, server: grpc.Server, address: str, *, mutual: bool) -> int:
        credentials = grpc.ssl_server_credentials(
            [(self._server_key, self._server_chain)],
            root_certificates=self.ca.cert_pem if mutual else None,
            require_client_auth=mutual,
        )
        port = server.add_secure_port(address, credentials)
        if port == 0:
            raise NotInitialisedError(f"cannot listen on {address}")
        return port

    @staticmethod
    def _add_standard_services(server: grpc.Server, names: list[str]) -> None:
        health_servicer = health.HealthServicer()
        for name in ["", *names]:
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)

    def _background(self, work: object, name: str, interval_s: float) -> None:
        assert callable(work)

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    work()
                except Exception:  # a failed round is logged and retried next round; never fatal
                    log.exception("background task %s failed", name)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _write_behind(self) -> None:
        self.fleet.flush()

    def _cleanup_tokens(self) -> None:
        with self.sessions.begin() as session:
            delete_stale_tokens(session)

    def _prune_history(self) -> None:
        retention = dt.timedelta(seconds=self.settings.liveness.history_retention_s)
        prune_history(self.sessions, utcnow() - retention)

    def wait(self) -> None:
        self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        self.drainer.stop()
        for server in self._servers:
            server.stop(STOP_GRACE_S).wait()
        if self._web is not None:
            self._web.stop()
        for thread in self._threads:
            thread.join(timeout=STOP_GRACE_S)
        self.fleet.flush()  # heartbeats received since the last round are not lost
        self.ingest_queue.close()
        self.engine.dispose()


def data_dir_exists(path: Path) -> bool:
    return (pki_dir(path) / "ca.key").exists()
