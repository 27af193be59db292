"""The anchors of bench/upload_bench.py: a bare gRPC server for survey6's Upload service that only
counts the bytes it receives, and a bare grpc.aio client that streams files to any Upload server.

    python bench/upload_echo.py --mode aio --key server.key --chain chain.pem --ca ca.crt

The server answers ``Put`` with the number of data bytes it received (no CRC check, no hashing, no
disk) and, so that survey6's own uploader accepts it, a receipt that is DURABLE and repeats the
SHA-256 the header announced (not computed). ``GetOffset`` always answers 0. ``--mode aio`` is a
grpc.aio server; ``--mode sync`` a thread-pool server with as many workers as survey6-server's probe
endpoint. Same mutual TLS and message size limit as survey6-server. Prints ``listening PORT`` once
serving; stops on SIGTERM or SIGINT, or by itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from upload_setup import die_with_parent, stop_process, wait_for

from survey6.wire.v1 import capture_pb2, upload_pb2

SERVICE = "survey6.v1.Upload"
PUT_METHOD = f"/{SERVICE}/Put"
SYNC_WORKERS = 32  # survey6-server's RPC_WORKERS
MAX_MESSAGE_BYTES = 2 << 20  # 2 MiB, survey6-server's receive limit and survey6-probe's send limit
DEFAULT_MAX_SECONDS = 3600.0
START_TIMEOUT_S = 30.0
PUT_DEADLINE_S = 600.0


def _receipt(header: upload_pb2.UploadHeader | None, received: int) -> upload_pb2.UploadReceipt:
    if header is None:
        return upload_pb2.UploadReceipt(size_bytes=received)
    return upload_pb2.UploadReceipt(
        sequence=header.metadata.sequence,
        sha256_hex=header.metadata.sha256_hex,  # announced, not computed: this server does no work
        size_bytes=header.start_offset_bytes + received,
        durability=upload_pb2.DURABILITY_DURABLE,
        stored_ns=time.time_ns(),
    )


def _offset(request: upload_pb2.OffsetRequest, context: Any) -> upload_pb2.OffsetResponse:
    return upload_pb2.OffsetResponse(offset_bytes=0)


def _handler(put: Any, get_offset: Any) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Put": grpc.stream_unary_rpc_method_handler(
                put,
                request_deserializer=upload_pb2.UploadChunk.FromString,
                response_serializer=upload_pb2.UploadReceipt.SerializeToString,
            ),
            "GetOffset": grpc.unary_unary_rpc_method_handler(
                get_offset,
                request_deserializer=upload_pb2.OffsetRequest.FromString,
                response_serializer=upload_pb2.OffsetResponse.SerializeToString,
            ),
        },
    )


def _credentials(args: argparse.Namespace) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(args.key.read_bytes(), args.chain.read_bytes())],
        root_certificates=args.ca.read_bytes(),
        require_client_auth=True,
    )


OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


async def serve_aio(args: argparse.Namespace) -> None:
    async def put(requests: AsyncIterator[upload_pb2.UploadChunk], context: Any) -> upload_pb2.UploadReceipt:
        header, received = None, 0
        async for chunk in requests:
            if chunk.HasField("header"):
                header = chunk.header
            received += len(chunk.data)
        return _receipt(header, received)

    async def get_offset(request: upload_pb2.OffsetRequest, context: Any) -> upload_pb2.OffsetResponse:
        return _offset(request, context)

    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers([_handler(put, get_offset)])
    port = server.add_secure_port(args.listen, _credentials(args))
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening {port}", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), args.max_seconds)
    except TimeoutError:
        pass
    await server.stop(1.0)


def serve_sync(args: argparse.Namespace) -> None:
    def put(requests: Iterable[upload_pb2.UploadChunk], context: Any) -> upload_pb2.UploadReceipt:
        header, received = None, 0
        for chunk in requests:
            if chunk.HasField("header"):
                header = chunk.header
            received += len(chunk.data)
        return _receipt(header, received)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SYNC_WORKERS), options=OPTIONS)
    server.add_generic_rpc_handlers([_handler(put, _offset)])
    port = server.add_secure_port(args.listen, _credentials(args))
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    print(f"listening {port}", flush=True)
    stop.wait(args.max_seconds)
    server.stop(1.0).wait()


# -- for bench/upload_bench.py: this server as a child process ------------------------------------


class EchoServer:
    """This file run as a process in ``mode``, with survey6-server's key, chain and CA."""

    def __init__(self, mode: str, root: Path, pki: Path, bound_s: float) -> None:
        self.mode = mode
        self.log_path = root / f"echo-{mode}.log"
        chain = root / "server-chain.pem"
        chain.write_bytes((pki / "server.crt").read_bytes() + (pki / "ca.crt").read_bytes())
        self.argv = [sys.executable, str(Path(__file__).resolve()), "--mode", mode,
                     "--key", str(pki / "server.key"), "--chain", str(chain), "--ca", str(pki / "ca.crt"),
                     "--max-seconds", f"{bound_s:.0f}"]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )
        self.port = wait_for(self._port, START_TIMEOUT_S, f"the {self.mode} echo server to listen")

    def _port(self) -> int | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"echo server exited: {self.log_path.read_text(errors='replace')[-500:]}")
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("listening "):
                return int(line.split()[1])
        return None

    def stop(self) -> None:
        stop_process(self.process, f"the {self.mode} echo server")
        self.process = None


# -- the bare client --------------------------------------------------------------------------------


async def _chunks(
    path: Path, metadata: capture_pb2.CaptureMetadata, chunk_bytes: int, crc: bool
) -> AsyncIterator[upload_pb2.UploadChunk]:
    yield upload_pb2.UploadChunk(header=upload_pb2.UploadHeader(metadata=metadata, start_offset_bytes=0))
    with open(path, "rb") as stream:
        while data := stream.read(chunk_bytes):
            yield upload_pb2.UploadChunk(data=data, data_crc32=zlib.crc32(data) if crc else 0)


async def _put_all(
    target: str,
    credentials: grpc.ChannelCredentials,
    files: list[tuple[Path, capture_pb2.CaptureMetadata]],
    chunk_bytes: int,
    crc: bool,
) -> tuple[float, list[upload_pb2.UploadReceipt]]:
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    async with grpc.aio.secure_channel(target, credentials, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), START_TIMEOUT_S)  # TLS handshake not timed
        put = channel.stream_unary(
            PUT_METHOD,
            request_serializer=upload_pb2.UploadChunk.SerializeToString,
            response_deserializer=upload_pb2.UploadReceipt.FromString,
        )
        receipts = []
        started = time.monotonic()
        for path, metadata in files:
            receipts.append(await put(_chunks(path, metadata, chunk_bytes, crc), timeout=PUT_DEADLINE_S))
        return time.monotonic() - started, receipts


def bare_put(
    target: str,
    credentials: grpc.ChannelCredentials,
    files: list[tuple[Path, capture_pb2.CaptureMetadata]],
    chunk_bytes: int,
    *,
    crc: bool,
) -> tuple[float, list[upload_pb2.UploadReceipt]]:
    """Streams each file in one Put (header, then `chunk_bytes` chunks), one after the other, over
    one grpc.aio channel; returns the seconds from the first Put to the last receipt, and the receipts.

    `crc` fills in each chunk's CRC-32, which survey6-server checks and the echo server does not.
    """
    return asyncio.run(_put_all(target, credentials, files, chunk_bytes, crc))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("aio", "sync"), default="aio", help="server model [aio]")
    parser.add_argument("--listen", default="127.0.0.1:0", help="address [127.0.0.1:0, any free port]")
    parser.add_argument("--key", type=Path, required=True, help="server private key (PEM)")
    parser.add_argument("--chain", type=Path, required=True, help="server certificate chain (PEM)")
    parser.add_argument("--ca", type=Path, required=True, help="CA that signs client certificates (PEM)")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS, help="stop by itself")
    args = parser.parse_args(argv)
    if args.mode == "aio":
        asyncio.run(serve_aio(args))
    else:
        serve_sync(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
