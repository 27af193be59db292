"""A handle on the in-process server under test: Joins from either loopback address, channels
with any credentials (closed when the test ends), and the landing zone."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc

from support.upload_client import ProbeIdentity, UploadServer, enrol
from survey6.server import tokens
from survey6.wire.v1 import control_pb2_grpc, upload_pb2_grpc


class SecureServer(UploadServer):
    """The running server and the channels a test opened to it (closed at the end)."""

    @property
    def data_dir(self) -> Path:
        return self.app.settings.data_dir

    def enrol_target(self, host: str = "127.0.0.1") -> str:
        return f"[{host}]:{self.app.enrol_port}" if ":" in host else f"{host}:{self.app.enrol_port}"

    def new_token(self, usages: int | None = 1, ttl: dt.timedelta = dt.timedelta(hours=1)) -> str:
        with self.app.sessions.begin() as session:
            return tokens.create_token(session, ttl=ttl, usages=usages)

    def join(self, host: str = "127.0.0.1", token: str | None = None) -> ProbeIdentity:
        return enrol(self.enrol_target(host), self.app.ca.cert_pem, token or self.new_token())

    def channel(self, credentials: grpc.ChannelCredentials) -> grpc.Channel:
        channel = grpc.secure_channel(self.target, credentials)
        self.channels.append(channel)
        return channel

    def control(self, credentials: grpc.ChannelCredentials) -> control_pb2_grpc.ProbeControlStub:
        return control_pb2_grpc.ProbeControlStub(self.channel(credentials))

    def uploads(self, credentials: grpc.ChannelCredentials) -> upload_pb2_grpc.UploadStub:
        return upload_pb2_grpc.UploadStub(self.channel(credentials))
