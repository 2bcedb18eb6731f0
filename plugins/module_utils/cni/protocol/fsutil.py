"""Files the engine writes as root, written so that nobody else can steer them (docs/security.md).

- Temp files for atomic replacement get a random suffix and are created O_EXCL|O_NOFOLLOW: a
  symlink planted under a predictable `<name>.tmp<pid>` can no longer make root truncate or write
  another file. The suffix stays `.tmp<digits>`, the shape `cnikit gc` reclaims after a crash.
- State directories must be owned by root (or our own user) and not group/world-writable, and so
  must their parents (a sticky parent such as /tmp excepted): whoever can write there can swap
  our files for links.
"""
from __future__ import annotations

import os
import secrets
import stat
from typing import Optional, Tuple

from . import spec
from .spec import CNIError


def create_temp(prefix: str, mode: int) -> Tuple[int, str]:
    """A new file `<prefix>.tmp<random digits>` (never an existing one, never through a link):
    (fd, path)."""
    while True:
        path = f"{prefix}.tmp{secrets.randbelow(10 ** 12):012d}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode), path
        except FileExistsError:
            continue


def write_atomic(path: str, data: bytes, mode: int, prefix: Optional[str] = None) -> None:
    """Replace `path` by `data` (mode exactly `mode`) through a fresh temp file; on failure the
    temp file is gone and `path` untouched. `prefix` names the temp file (default `path`)."""
    fd, tmp = create_temp(prefix or path, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # the umask must not loosen or tighten it
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def unsafe_dir(path: str) -> Optional[str]:
    """Why `path` is no place for root's state or for executables root runs, None if it is fine:
    a directory owned by root or our user, not group/world-writable, and so each parent (a sticky
    parent excepted: others cannot rename or remove what we own in it)."""
    real = os.path.realpath(path)
    probe = real
    while True:
        try:
            st = os.stat(probe)
        except OSError as exc:
            return f"{probe}: {exc.strerror}"
        if probe == real and not stat.S_ISDIR(st.st_mode):
            return f"{probe} is not a directory"
        if st.st_uid not in (0, os.geteuid()):
            return f"{probe} is owned by uid {st.st_uid}"
        if st.st_mode & 0o022 and not (st.st_mode & stat.S_ISVTX and probe != real):
            return f"{probe} is group- or world-writable"
        if probe == "/":
            return None
        probe = os.path.dirname(probe)


def state_dir(path: str, mode: int) -> str:
    """Create `path` (mode `mode`) if needed and make sure it is safe to keep root's state in;
    CNIError (code 5, I/O) when it is not."""
    try:
        os.makedirs(path, mode, exist_ok=True)
    except OSError as exc:
        raise CNIError(spec.ERR_IO, f"cannot create state directory {path}: {exc.strerror}") from None
    why = unsafe_dir(path)
    if why:
        raise CNIError(spec.ERR_IO, f"refusing state directory {path}: {why}")
    return path
