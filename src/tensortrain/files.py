"""Writing files safely: atomic replacement, durable renames, and the checks a writer makes on a path first.

``atomic_write`` is how ``tt.save``, the CLI's checkpoints and reports, and the demo's results reach the disk:
the bytes go to a temporary file in the target's folder, are flushed and fsync'ed, and the temporary file is
renamed over the target (``os.replace``), so a failed or interrupted write leaves the previous file untouched.
``fsync_dir`` makes a rename durable (the MNIST download, which streams into its own temporary file, uses it
too); ``names_folder`` and ``special_file`` tell a folder or a device from a file before anything is written.
None of it knows about TT objects, so it sits early in the data flow, above every module that writes files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

PathLike = str | os.PathLike[str]


def path_text(value: object) -> str | None:
    """``value`` as a path string (a str, or an ``os.PathLike`` of str), else None (bytes, a file object, a
    number): what the callers refuse with a message of their own."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    return text if isinstance(text, str) else None


def names_folder(path: PathLike) -> bool:
    """Whether ``path`` ends with a separator (``"ckpt/"``): it names a folder, which ``Path`` would silently
    turn into a file name (``open`` refuses such a path with ``IsADirectoryError``)."""
    text = os.fspath(path)
    return text.endswith(tuple(s for s in (os.sep, os.altsep) if s))


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to the file descriptor (``os.write`` may write fewer)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and ``os.replace``.

    The temporary name is unique and created exclusively (mode 0o666 minus the umask, as a plain open
    would), so concurrent writers never collide; it is removed if anything fails. It has a fixed length
    (``.tt-<12 hex>.tmp``), not the target's name plus a suffix, which would exceed the file system's
    name limit (often 255 bytes) for long but legal target names. As a write into the file would, it
    follows a symbolic link (the link stays, its target gets the data), keeps an existing file's mode (a file
    restricted to its owner stays so) and refuses a write-protected file. An existing target that is not a
    regular file (a device such as ``/dev/null``, a FIFO) is written into directly: renaming a file over it
    would replace the device.

    Raises:
        OSError: the temporary file cannot be created (e.g. ``PermissionError`` in a read-only folder),
            re-raised as the same type naming ``path``; or writing, syncing or renaming failed.
    """
    if special_file(path):
        with open(path, "wb") as f:
            f.write(data)
        return
    path = Path(os.path.realpath(path))  # replacing a link would leave the file it points to stale
    if path.exists() and not os.access(path, os.W_OK):
        # a rename needs only the folder's write permission: it would replace a write-protected file, which
        # open() refuses (a checkpoint made read-only to guard it)
        raise PermissionError(errno.EACCES, "Permission denied: the file is write-protected", str(path))
    tmp = path.with_name(f".tt-{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:  # the caller asked for path: name it, not our hidden temporary file
        raise type(err)(err.errno, err.strerror or str(err), str(path)) from err
    try:
        try:
            with contextlib.suppress(FileNotFoundError):  # (a new file keeps the umask's mode)
                os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def special_file(path: PathLike) -> bool:
    """Whether ``path`` exists (through links) and is neither a regular file nor a folder."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def fsync_dir(folder: Path) -> None:
    """Make a rename into ``folder`` durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
