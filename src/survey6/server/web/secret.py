"""The key that signs session cookies: random, made once per data directory, readable only by the
server's user. A new key logs everyone out; nothing else depends on it."""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from survey6.server.web.errors import WebConfigError

log = logging.getLogger(__name__)

SECRET_FILE_NAME = "web-secret.key"
SECRET_KEY_BYTES = 32
SECRET_FILE_MODE = 0o600


def load_or_create_secret_key(data_dir: Path) -> bytes:
    """Reads ``data_dir/web-secret.key``, creating it (mode 0600) on first use.

    Raises:
        WebConfigError: the file is readable by group or others, or is not a key.
    """
    path = data_dir / SECRET_FILE_NAME
    if path.exists():
        return _read(path)
    key = secrets.token_hex(SECRET_KEY_BYTES)
    temporary = path.with_name(f".{SECRET_FILE_NAME}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SECRET_FILE_MODE)
    try:
        with os.fdopen(fd, "w") as stream:
            stream.write(key + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        # A hard link never replaces: of two processes starting at once, one key wins, whole.
        os.link(temporary, path)
    except FileExistsError:
        return _read(path)
    finally:
        temporary.unlink(missing_ok=True)
    log.info("created the web session key %s", path)
    return key.encode()


def _read(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise WebConfigError(f"{path} is readable by others (mode {mode:04o}); run chmod 600 {path}")
    key = path.read_text().strip()
    if len(key) != 2 * SECRET_KEY_BYTES or any(c not in "0123456789abcdef" for c in key):
        raise WebConfigError(f"{path} is not a web session key; delete it to make a new one")
    return key.encode()
