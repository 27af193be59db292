"""The anchor of bench/heartbeat_load.py: a bare gRPC server that answers survey6's Heartbeat method
and does nothing else (no certificate lookup, no registry), over the same mutual TLS.

    python bench/heartbeat_echo.py --mode aio --key server.key --chain chain.pem --ca ca.crt

``--mode aio`` is a grpc.aio server; ``--mode sync`` a thread-pool server with as many workers as
survey6-server's probe control endpoint, to tell the cost of the server model from the cost of the
work survey6 does per heartbeat. Prints ``listening PORT`` once serving; stops on SIGTERM or
SIGINT, or by itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from heartbeat_driver import raise_open_files_limit

from survey6.wire.v1 import control_pb2

SERVICE = "survey6.v1.ProbeControl"
SYNC_WORKERS = 32  # survey6-server's RPC_WORKERS for the probe control endpoint
HEARTBEAT_INTERVAL_MS = 3000
DEFAULT_MAX_SECONDS = 3600.0
OPEN_FILES = 65536
START_TIMEOUT_S = 30.0


def _response() -> control_pb2.HeartbeatResponse:
    return control_pb2.HeartbeatResponse(
        server_time_ns=time.time_ns(), heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS
    )


def _handler(behaviour: Any) -> grpc.GenericRpcHandler:
    method = grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=control_pb2.HeartbeatRequest.FromString,
        response_serializer=control_pb2.HeartbeatResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(SERVICE, {"Heartbeat": method})


def _credentials(args: argparse.Namespace) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(args.key.read_bytes(), args.chain.read_bytes())],
        root_certificates=args.ca.read_bytes(),
        require_client_auth=True,
    )


def _announce(port: int) -> None:
    print(f"listening {port}", flush=True)


async def serve_aio(args: argparse.Namespace) -> None:
    async def heartbeat(request: control_pb2.HeartbeatRequest, context: Any) -> control_pb2.HeartbeatResponse:
        return _response()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([_handler(heartbeat)])
    port = server.add_secure_port(args.listen, _credentials(args))
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _announce(port)
    try:
        await asyncio.wait_for(stop.wait(), args.max_seconds)
    except TimeoutError:
        pass
    await server.stop(1.0)


def serve_sync(args: argparse.Namespace) -> None:
    def heartbeat(request: control_pb2.HeartbeatRequest, context: Any) -> control_pb2.HeartbeatResponse:
        return _response()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SYNC_WORKERS))
    server.add_generic_rpc_handlers([_handler(heartbeat)])
    port = server.add_secure_port(args.listen, _credentials(args))
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    _announce(port)
    stop.wait(args.max_seconds)
    server.stop(1.0).wait()


# -- for bench/heartbeat_load.py: this server as a child process --------------------------------


class EchoServer:
    """This file run as a process in ``mode``, with survey6's server key, chain and CA."""

    def __init__(self, mode: str, root: Path, pki: Path, bound_s: float) -> None:
        self.mode = mode
        self.log_path = root / f"echo-{mode}.log"
        chain = root / "server-chain.pem"
        chain.write_bytes((pki / "server.crt").read_bytes() + (pki / "ca.crt").read_bytes())
        self.argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--mode",
            mode,
            "--key",
            str(pki / "server.key"),
            "--chain",
            str(chain),
            "--ca",
            str(pki / "ca.crt"),
            "--max-seconds",
            f"{bound_s:.0f}",
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.port:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {self.mode} echo server did not listen within {START_TIMEOUT_S:g} s")
            time.sleep(0.1)
            self.port = self._port() or 0

    def _port(self) -> int | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"echo server exited: {self.log_path.read_text(errors='replace')[-500:]}")
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("listening "):
                return int(line.split()[1])
        return None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("aio", "sync"), default="aio", help="server model [aio]")
    parser.add_argument("--listen", default="127.0.0.1:0", help="address [127.0.0.1:0, any free port]")
    parser.add_argument("--key", type=Path, required=True, help="server private key (PEM)")
    parser.add_argument("--chain", type=Path, required=True, help="server certificate chain (PEM)")
    parser.add_argument("--ca", type=Path, required=True, help="CA that signs client certificates (PEM)")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS, help="stop by itself")
    args = parser.parse_args(argv)
    raise_open_files_limit(OPEN_FILES)
    if args.mode == "aio":
        asyncio.run(serve_aio(args))
    else:
        serve_sync(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
