"""A ctypes binding to the system libpcap, shaped for writing capture files with no Python per packet.

The hot path hands libpcap its own ``pcap_dump`` as the packet callback and the ``pcap_dumper_t *`` as
the callback's user argument, so the kernel ring is drained into the file entirely in C::

    with CaptureHandle.live("eth0", bpf_filter="ip6") as cap, cap.open_dumper(path) as out:
        while not stop.is_set():
            try:
                written += cap.dispatch_into(out)  # one Python iteration per kernel buffer
            except LoopBroken:
                break                              # another thread called cap.breakloop()

ctypes ``CDLL`` calls release the GIL, so a control thread can call ``breakloop()``, ``stats()`` or
``Dumper.flush()`` while the loop runs. libpcap is loaded on first use, never at import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from survey6.probe.errors import (
    CaptureError,
    CapturePermissionError,
    DumpWriteError,
    FilterError,
    NoSuchInterfaceError,
    PcapFileError,
)
from survey6.probe.pcapfile import MAX_SNAPLEN_BYTES, NS_PER_S, TimestampPrecision

log = logging.getLogger(__name__)

LIBPCAP_FALLBACK_NAME = "libpcap.so.0.8"  # Debian's soname for libpcap 1.x
LIBC_FALLBACK_NAME = "libc.so.6"
PCAP_ERRBUF_SIZE = 256
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
PCAP_ERROR = -1
PCAP_ERROR_BREAK = -2
PCAP_ERROR_NO_SUCH_DEVICE = -5
PCAP_ERROR_PERM_DENIED = -8
PCAP_ERROR_PROMISC_PERM_DENIED = -11
_IOFBF = 0  # glibc's value for setvbuf full buffering
DLT_EN10MB = 1

# Short, so a dispatch with no traffic returns (0) often and a stop is noticed within this time.
DEFAULT_TIMEOUT_MS = 100
DEFAULT_BUFFER_BYTES = 64 << 20  # 64 MiB kernel ring
# stdio's default is st_blksize (4 KiB): a write(2) every ~30 small packets. Larger means fewer, bigger
# writes; CPU per packet measured the same from 4 KiB to 1 MiB, so this is only about syscall count.
DEFAULT_DUMP_BUFFER_BYTES = 256 << 10  # 256 KiB


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _PktHdr(ctypes.Structure):
    _fields_ = [("ts", _Timeval), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


class _PcapStat(ctypes.Structure):
    _fields_ = [("ps_recv", ctypes.c_uint), ("ps_drop", ctypes.c_uint), ("ps_ifdrop", ctypes.c_uint)]


_P = ctypes.c_void_p
_I = ctypes.c_int
_S = ctypes.c_char_p
# name: (restype, argtypes). Opaque pcap_t, pcap_dumper_t and FILE pointers are all c_void_p.
_PCAP_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "pcap_create": (_P, [_S, _S]),
    "pcap_set_snaplen": (_I, [_P, _I]),
    "pcap_set_promisc": (_I, [_P, _I]),
    "pcap_set_buffer_size": (_I, [_P, _I]),
    "pcap_set_timeout": (_I, [_P, _I]),
    "pcap_set_immediate_mode": (_I, [_P, _I]),
    "pcap_set_tstamp_precision": (_I, [_P, _I]),
    "pcap_get_tstamp_precision": (_I, [_P]),
    "pcap_activate": (_I, [_P]),
    "pcap_open_offline_with_tstamp_precision": (_P, [_S, ctypes.c_uint, _S]),
    "pcap_open_dead_with_tstamp_precision": (_P, [_I, _I, ctypes.c_uint]),
    "pcap_compile": (_I, [_P, ctypes.POINTER(_BpfProgram), _S, _I, ctypes.c_uint32]),
    "pcap_setfilter": (_I, [_P, ctypes.POINTER(_BpfProgram)]),
    "pcap_freecode": (None, [ctypes.POINTER(_BpfProgram)]),
    "pcap_datalink": (_I, [_P]),
    "pcap_snapshot": (_I, [_P]),
    "pcap_stats": (_I, [_P, ctypes.POINTER(_PcapStat)]),
    "pcap_geterr": (_S, [_P]),
    "pcap_statustostr": (_S, [_I]),
    "pcap_breakloop": (None, [_P]),
    "pcap_close": (None, [_P]),
    # The handler is passed as a raw address (c_void_p), so ctypes can never wrap a Python thunk.
    "pcap_loop": (_I, [_P, _I, _P, _P]),
    "pcap_dispatch": (_I, [_P, _I, _P, _P]),
    "pcap_dump_open": (_P, [_P, _S]),
    "pcap_dump_fopen": (_P, [_P, _P]),
    "pcap_dump_file": (_P, [_P]),
    "pcap_dump": (None, [_P, ctypes.POINTER(_PktHdr), _S]),
    "pcap_dump_flush": (_I, [_P]),
    "pcap_dump_ftell": (ctypes.c_long, [_P]),
    "pcap_dump_ftell64": (ctypes.c_int64, [_P]),
    "pcap_dump_close": (None, [_P]),
}
_LIBC_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "fdopen": (_P, [_I, _S]),
    "setvbuf": (_I, [_P, _P, _I, ctypes.c_size_t]),
    "ferror": (_I, [_P]),
    "fclose": (_I, [_P]),
}


def _declare(lib: ctypes.CDLL, signatures: dict[str, tuple[Any, list[Any]]]) -> ctypes.CDLL:
    for name, (restype, argtypes) in signatures.items():
        try:
            func = getattr(lib, name)
        except AttributeError:
            continue  # an older libpcap; callers check with hasattr (only pcap_dump_ftell64 is optional)
        func.restype = restype
        func.argtypes = argtypes
    return lib


@functools.cache
def libpcap() -> ctypes.CDLL:
    """The system libpcap with argument and result types declared; loaded once, on first use.

    Raises:
        CaptureError: no libpcap can be loaded.
    """
    name = ctypes.util.find_library("pcap") or LIBPCAP_FALLBACK_NAME
    try:
        # A private CDLL object, so the argtypes set here are not shared with other ctypes users.
        return _declare(ctypes.CDLL(name, use_errno=True), _PCAP_SIGNATURES)
    except OSError as exc:
        raise CaptureError(f"cannot load libpcap ({name}): {exc}") from exc


@functools.cache
def _libc() -> ctypes.CDLL:
    return _declare(
        ctypes.CDLL(ctypes.util.find_library("c") or LIBC_FALLBACK_NAME, use_errno=True), _LIBC_SIGNATURES
    )


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class KernelStats:
    """pcap_stats counters. They are 32-bit in libpcap and wrap; compare snapshots with ``since``."""

    received: int
    dropped: int
    interface_dropped: int

    def since(self, earlier: KernelStats) -> KernelStats:
        """The counts between ``earlier`` and this snapshot, correct across one 32-bit wrap."""
        return KernelStats(
            (self.received - earlier.received) % (1 << 32),
            (self.dropped - earlier.dropped) % (1 << 32),
            (self.interface_dropped - earlier.interface_dropped) % (1 << 32),
        )


class LoopBroken(Exception):
    """``dispatch_into`` or ``run_loop`` returned because ``breakloop()`` was called.

    A control signal, not a failure: deliberately outside the Survey6Error tree.
    """


class _Closing:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Dumper(_Closing):
    """An open pcap_dumper_t: a classic pcap file being written by libpcap.

    ``pcap_dump`` returns void and ignores fwrite failures, so a writer must ``flush()`` before trusting
    the file. Close a dumper only from the thread that runs the loop writing into it.
    """

    def __init__(self, pointer: int, precision: TimestampPrecision, name: str) -> None:
        self._ptr: int | None = pointer
        self.precision = precision
        self.name = name

    @property
    def pointer(self) -> int:
        """The raw pcap_dumper_t address (the ``user`` argument of the pcap_dump callback)."""
        if self._ptr is None:
            raise DumpWriteError(f"dump file {self.name} is closed")
        return self._ptr

    def write(self, timestamp_ns: int, data: bytes, orig_len: int | None = None) -> None:
        """Append one record; for tests and tools, not the capture path (that never runs Python)."""
        sec, frac_ns = divmod(timestamp_ns, NS_PER_S)
        hdr = _PktHdr(_Timeval(sec, frac_ns // self.precision.ns_per_tick), len(data))
        hdr.len = len(data) if orig_len is None else orig_len
        libpcap().pcap_dump(self.pointer, ctypes.byref(hdr), data)

    def flush(self) -> None:
        """Push stdio's buffer to the kernel (not to disk: fsync the descriptor for that).

        Raises DumpWriteError if this or any earlier write failed (ENOSPC surfaces here).
        """
        lib = libpcap()
        if lib.pcap_dump_flush(self.pointer) != 0 or _libc().ferror(lib.pcap_dump_file(self.pointer)):
            err = ctypes.get_errno()
            raise DumpWriteError(
                f"cannot write dump file {self.name}: {os.strerror(err) if err else 'I/O error'}"
            )

    def tell(self) -> int:
        """Bytes written to the file so far, including what is still in stdio's buffer."""
        lib = libpcap()
        ftell = lib.pcap_dump_ftell64 if hasattr(lib, "pcap_dump_ftell64") else lib.pcap_dump_ftell
        position = int(ftell(self.pointer))
        if position < 0:
            raise DumpWriteError(f"cannot get the position in dump file {self.name}")
        return position

    def close(self) -> None:
        """Flush and close the file and its descriptor; idempotent. libpcap drops fclose errors."""
        if self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            libpcap().pcap_dump_close(ptr)


class CaptureHandle(_Closing):
    """A pcap_t: a live capture, an offline file reader or a "dead" handle that only writes files.

    Build one with ``live()``, ``offline()`` or ``dead()``. ``breakloop()`` and ``stats()`` may be called
    from any thread; ``close()`` waits for a running loop to leave libpcap before freeing the handle.
    """

    def __init__(self, pointer: int, source: str, *, offline: bool = False) -> None:
        self._ptr: int | None = pointer
        self.source = source
        self.is_offline = offline
        self.precision = TimestampPrecision(libpcap().pcap_get_tstamp_precision(pointer))
        # _loop_lock is held while a loop is inside libpcap; _ptr_lock while any thread uses the pointer
        # briefly (breakloop, stats), so close() can never free the pcap_t under another thread.
        self._loop_lock = threading.Lock()
        self._ptr_lock = threading.Lock()

    @classmethod
    def live(
        cls,
        interface: str,
        *,
        snaplen: int = MAX_SNAPLEN_BYTES,
        promisc: bool = False,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        immediate: bool = False,
        bpf_filter: str | None = None,
    ) -> CaptureHandle:
        """Open and activate a live capture, with nanosecond timestamps when the platform has them.

        Raises:
            CapturePermissionError: no CAP_NET_RAW (or CAP_NET_ADMIN for promiscuous mode).
            NoSuchInterfaceError: ``interface`` does not exist.
            FilterError: ``bpf_filter`` does not compile.
            CaptureError: any other libpcap failure.
        """
        lib = libpcap()
        errbuf = ctypes.create_string_buffer(PCAP_ERRBUF_SIZE)
        ptr = lib.pcap_create(interface.encode(), errbuf)
        if not ptr:
            raise CaptureError(f"cannot create a capture on {interface}: {_text(errbuf.value)}")
        try:
            for setter, value in (
                (lib.pcap_set_snaplen, snaplen),
                (lib.pcap_set_promisc, int(promisc)),
                (lib.pcap_set_buffer_size, buffer_bytes),
                (lib.pcap_set_timeout, timeout_ms),
                (lib.pcap_set_immediate_mode, int(immediate)),
            ):
                if setter(ptr, value) != 0:
                    raise CaptureError(f"{interface}: {setter.__name__}({value}) failed")
            if lib.pcap_set_tstamp_precision(ptr, TimestampPrecision.NANO) != 0:
                log.warning("%s: nanosecond timestamps not supported, using microseconds", interface)
            _activate(lib, ptr, interface)
        except BaseException:
            lib.pcap_close(ptr)
            raise
        handle = cls(ptr, interface)
        try:
            if bpf_filter is not None:
                handle.set_filter(bpf_filter)
        except BaseException:
            handle.close()
            raise
        return handle

    @classmethod
    def offline(cls, path: str | os.PathLike[str]) -> CaptureHandle:
        """Open a pcap or pcapng file for reading, timestamps scaled to nanoseconds.

        Raises:
            PcapFileError: the file is missing, unreadable or not a capture file.
        """
        errbuf = ctypes.create_string_buffer(PCAP_ERRBUF_SIZE)
        name = os.fsencode(path)
        ptr = libpcap().pcap_open_offline_with_tstamp_precision(name, TimestampPrecision.NANO, errbuf)
        if not ptr:
            raise PcapFileError(f"cannot read capture file {os.fsdecode(path)}: {_text(errbuf.value)}")
        return cls(ptr, os.fsdecode(path), offline=True)

    @classmethod
    def dead(
        cls,
        linktype: int = DLT_EN10MB,
        snaplen: int = MAX_SNAPLEN_BYTES,
        precision: TimestampPrecision = TimestampPrecision.NANO,
    ) -> CaptureHandle:
        """A handle that captures nothing, only opens dumpers (libpcap refuses filters on it)."""
        ptr = libpcap().pcap_open_dead_with_tstamp_precision(linktype, snaplen, precision)
        if not ptr:
            raise CaptureError(f"pcap_open_dead({linktype}, {snaplen}) failed")
        return cls(ptr, f"dead:{linktype}")

    @property
    def pointer(self) -> int:
        if self._ptr is None:
            raise CaptureError(f"capture handle for {self.source} is closed")
        return self._ptr

    @property
    def datalink(self) -> int:
        return int(libpcap().pcap_datalink(self.pointer))

    @property
    def snaplen(self) -> int:
        return int(libpcap().pcap_snapshot(self.pointer))

    def geterr(self) -> str:
        return _text(libpcap().pcap_geterr(self.pointer))

    def set_filter(self, expression: str) -> None:
        """Compile (optimised) and install a BPF filter.

        Raises:
            FilterError: the expression does not compile, or the kernel refuses the program.
        """
        lib = libpcap()
        program = _BpfProgram()
        optimize = 1
        rc = lib.pcap_compile(
            self.pointer, ctypes.byref(program), expression.encode(), optimize, PCAP_NETMASK_UNKNOWN
        )
        if rc != 0:
            raise FilterError(f"bad capture filter {expression!r}: {self.geterr()}")
        try:
            if lib.pcap_setfilter(self.pointer, ctypes.byref(program)) != 0:
                raise FilterError(f"cannot install capture filter {expression!r}: {self.geterr()}")
        finally:
            lib.pcap_freecode(ctypes.byref(program))

    def stats(self) -> KernelStats:
        """Kernel counters since activation (live handles only).

        Raises:
            CaptureError: the handle has no statistics (offline and dead handles).
        """
        raw = _PcapStat()
        with self._ptr_lock:
            rc = libpcap().pcap_stats(self.pointer, ctypes.byref(raw))
        if rc != 0:
            raise CaptureError(f"{self.source}: pcap_stats failed: {self.geterr()}")
        return KernelStats(raw.ps_recv, raw.ps_drop, raw.ps_ifdrop)

    def open_dumper(self, path: str | os.PathLike[str]) -> Dumper:
        """Create (truncate) ``path`` and write the pcap header for this handle's link type and precision.

        Raises:
            DumpWriteError: the file cannot be created.
        """
        ptr = libpcap().pcap_dump_open(self.pointer, os.fsencode(path))
        if not ptr:
            raise DumpWriteError(f"cannot open dump file {os.fsdecode(path)}: {self.geterr()}")
        return Dumper(ptr, self.precision, os.fsdecode(path))

    def open_dumper_fd(
        self, fd: int, *, buffer_bytes: int = DEFAULT_DUMP_BUFFER_BYTES, name: str = ""
    ) -> Dumper:
        """Write a pcap file to an open descriptor, at its current offset.

        The dumper works on a duplicate of ``fd``, because closing the dumper fcloses its FILE and so
        its descriptor. The caller keeps ``fd`` and can ``Dumper.flush()`` then ``os.fsync(fd)``.

        Raises:
            DumpWriteError: the descriptor cannot be duplicated or wrapped.
        """
        label = name or f"fd {fd}"
        try:
            dup = os.dup(fd)
        except OSError as exc:
            raise DumpWriteError(f"cannot duplicate descriptor for {label}: {exc.strerror}") from exc
        libc = _libc()
        fp = libc.fdopen(dup, b"wb")
        if not fp:
            os.close(dup)
            raise DumpWriteError(f"fdopen failed for {label}: {os.strerror(ctypes.get_errno())}")
        # Must precede the first write on the stream, which pcap_dump_fopen makes (the file header).
        libc.setvbuf(fp, None, _IOFBF, buffer_bytes)
        ptr = libpcap().pcap_dump_fopen(self.pointer, fp)
        if not ptr:
            libc.fclose(fp)
            raise DumpWriteError(f"cannot open dump file {label}: {self.geterr()}")
        return Dumper(ptr, self.precision, label)

    def dispatch_into(self, dumper: Dumper, count: int = -1) -> int:
        """Write what libpcap has buffered (one kernel block at most) to ``dumper``, in C.

        ``count`` caps the packets of this call (-1: no cap). Offline, an uncapped call reads the
        whole file, so a reader that rotates passes a cap.

        Returns:
            Packets written; 0 when the read timeout expired with nothing (live) or at end of file
            (offline: check ``is_offline`` to tell them apart).

        Raises:
            LoopBroken: ``breakloop()`` or ``close()`` was called. libpcap does not report how many
                packets this last call wrote (they are in the file): count the file, not the returns.
            CaptureError: the capture failed (PcapFileError when reading a corrupt file).
        """
        return self._run(libpcap().pcap_dispatch, dumper, count)

    def run_loop(self, dumper: Dumper, count: int = -1) -> None:
        """``pcap_loop`` into ``dumper`` until ``count`` packets are written (-1: until breakloop, or
        end of file offline). pcap_loop reports no count (0 on success): use ``dispatch_into`` to count.

        Raises like ``dispatch_into``.
        """
        self._run(libpcap().pcap_loop, dumper, count)

    def _run(self, func: Any, dumper: Dumper, count: int) -> int:
        callback = ctypes.cast(libpcap().pcap_dump, ctypes.c_void_p).value
        with self._loop_lock:
            if self._ptr is None:  # close() from another thread is a stop request, like breakloop()
                raise LoopBroken(f"{self.source} is closed")
            rc = int(func(self._ptr, count, callback, dumper.pointer))
        if rc >= 0:
            return rc
        if rc == PCAP_ERROR_BREAK:
            raise LoopBroken(self.source)
        error = PcapFileError if self.is_offline else CaptureError
        status = "" if rc == PCAP_ERROR else f"{_text(libpcap().pcap_statustostr(rc))}: "
        raise error(f"{self.source}: {status}{self.geterr()}")

    def breakloop(self) -> None:
        """Make the running (or the next) dispatch/loop raise LoopBroken. Safe from any thread."""
        with self._ptr_lock:
            if self._ptr is not None:
                libpcap().pcap_breakloop(self._ptr)

    def close(self) -> None:
        """Release the handle. Idempotent; breaks and waits for a loop running in another thread."""
        if self._ptr is None:
            return
        self.breakloop()
        with self._loop_lock, self._ptr_lock:
            ptr, self._ptr = self._ptr, None
            if ptr is not None:
                libpcap().pcap_close(ptr)


def _activate(lib: ctypes.CDLL, ptr: int, interface: str) -> None:
    rc = int(lib.pcap_activate(ptr))
    if rc == 0:
        return
    detail = _text(lib.pcap_geterr(ptr)) or _text(lib.pcap_statustostr(rc))
    if rc > 0:
        log.warning("%s: %s", interface, detail)  # e.g. promiscuous mode not supported; capture still works
    elif rc in (PCAP_ERROR_PERM_DENIED, PCAP_ERROR_PROMISC_PERM_DENIED):
        raise CapturePermissionError(
            f"no permission to capture on {interface}: run as root or grant CAP_NET_RAW"
            f" (and CAP_NET_ADMIN for promiscuous mode): {detail}"
        )
    elif rc == PCAP_ERROR_NO_SUCH_DEVICE:
        raise NoSuchInterfaceError(f"no such interface {interface!r}: {detail}")
    else:
        raise CaptureError(f"cannot capture on {interface}: {detail}")
