"""Writing reports, models and pictures without clobbering what is at the destination.

What happens depends on what the destination *is* (symlinks followed):

- ``-``: the bytes go to standard output;
- an existing FIFO, character device, socket, or anything under ``/dev`` or ``/proc``
  (``/dev/stdout``, ``/dev/null``, ``/proc/self/fd/1``): written through, never replaced;
- a symlink to a regular file (or a dangling one): its *target* is replaced atomically, the link stays;
- a regular file, or nothing yet: a temporary sibling file is written, flushed and ``os.replace``-d
  in, so a reader never sees a half-written file and an error leaves the old file as it was.

:func:`check_writable` is the cheap pre-flight a command runs on every output path while
parsing its arguments, so an unwritable destination is refused before any work is done.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import VitSpecError

__all__ = [
    "STDOUT",
    "UnwritableError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable",
    "safe_streams",
    "writes_through",
]

#: The path that means "standard output".
STDOUT = "-"
_SPECIAL_ROOTS = ("/dev/", "/proc/")


class UnwritableError(VitSpecError):
    """An output destination cannot be written (checked before any work starts)."""


def writes_through(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is written in place (``-``, a FIFO / device / socket, ``/dev`` or ``/proc``)."""
    text = os.fspath(path)
    if text == STDOUT:
        return True
    if text.startswith(_SPECIAL_ROOTS) or os.path.realpath(text).startswith(_SPECIAL_ROOTS):
        return True
    try:
        st = os.stat(text)  # follows symlinks
    except OSError:
        return False
    return not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode)


def _replace_target(dest: Path) -> Path:
    """The file an atomic replace must swap: a symlink's final target (so the link survives)."""
    return Path(os.path.realpath(dest)) if dest.is_symlink() else dest


def atomic_write(path: str | os.PathLike[str], write: Callable[[Any], None]) -> Path:
    """Call ``write(f)`` with a binary file for ``path`` (see the module doc for what ``path`` may be).

    For a regular file: a temp file in the destination's directory, then ``os.replace`` (atomic on
    POSIX and Windows, the sibling guaranteeing the same filesystem). On any error the temp file is
    removed and the destination is left as it was.
    """
    text = os.fspath(path)
    if text == STDOUT:
        _write_stdout(write)
        return Path(STDOUT)
    if writes_through(text):
        with open(text, "wb") as f:
            write(f)
        return Path(text)
    dest = _replace_target(Path(text))
    if dest.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name[:64]}.", suffix=".tmp", dir=dest.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; reports and pictures are meant to be shared
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Path(text)


def _write_stdout(write: Callable[[Any], None]) -> None:
    sys.stdout.flush()
    buf = getattr(sys.stdout, "buffer", None)
    if buf is not None:
        write(buf)
        buf.flush()
        return
    import io

    data = io.BytesIO()
    write(data)
    sys.stdout.write(data.getvalue().decode("utf-8", errors="replace"))
    sys.stdout.flush()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def check_writable(path: str | os.PathLike[str], what: str = "") -> None:
    """Raise :class:`UnwritableError` (one line, naming ``what``) if :func:`atomic_write` would fail for ``path``.

    Cheap and side-effect free: nothing is created. Checks the destination (not a directory; writable
    if it exists), and for a file to be replaced, the directory that will receive the temp file.
    """
    text = os.fspath(path)
    shown = text if len(text) <= 200 else text[:100] + "..." + text[-60:]
    try:
        _check(text)
    except UnwritableError as e:
        raise UnwritableError(f"{what} {shown}: {e}".lstrip()) from None
    except (OSError, ValueError) as e:  # ENAMETOOLONG, ELOOP, an embedded NUL ...
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UnwritableError(f"{what} {shown}: cannot write here ({reason})".lstrip()) from None


def _check(text: str) -> None:
    if text == STDOUT:
        return
    if not text:
        raise UnwritableError("an empty path")
    if writes_through(text):
        if os.path.exists(text) and not os.access(text, os.W_OK):
            raise UnwritableError("permission denied")
        return
    dest = _replace_target(Path(text))
    if dest.is_dir():
        raise UnwritableError("is a directory")
    if len(dest.name.encode("utf-8", "surrogateescape")) > 255:
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
    if dest.exists() and not os.access(dest, os.W_OK):
        raise UnwritableError("permission denied")
    ancestor = dest.parent
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UnwritableError(f"{str(ancestor)!r} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UnwritableError(f"directory {str(ancestor)!r} is not writable")


def safe_streams() -> None:
    """Make stdout/stderr unable to fail on a character their encoding lacks (an ASCII-only terminal)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):  # a detached or closed stream
                reconfigure(errors="backslashreplace")
