"""Verified downloads of the MNIST files: mirrors tried in turn, each file checked and placed atomically.

``fetch`` gets one file into a folder. Each mirror's body is streamed into a temporary file of the folder
(``.<name>.<12 hex>.part``, created before any mirror is tried, so an unwritable folder is reported as such),
cut off past the expected size, stopped at an overall deadline (``timeout`` plus the size at 16 KiB/s: a
mirror that trickles or streams without end does not hold on), fsync'ed, and hashed; the first mirror whose
file has the expected sha256 wins, and the temporary file is renamed over the final name (``os.replace``, the
folder fsync'ed after it), so an interrupted download never leaves a half-written file under that name. The
temporary files of killed downloads are removed once the file is in place. A mirror's failure (network, HTTP,
timeout, size, hash) moves on to the next one; a local error (a full disk) does not. When every mirror
failed, ``DownloadError`` lists them all.

What to fetch and where (the file names, their hashes and sizes, the mirror list, the folder) is
``datasets``' part: its ``download_mnist`` calls ``fetch`` for each missing file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Generator
from contextlib import closing
from pathlib import Path

from .files import fsync_dir

# The slowest steady transfer an attempt waits for (bytes/s): the whole attempt may take ``timeout`` plus the
# expected size at this rate (10 minutes for the 9.9 MB training images), so a slow link still gets the files,
# while a mirror that trickles bytes or streams without end is stopped.
_MIN_RATE = 16 * 1024
_UNKNOWN_SIZE = 16 << 20  # the budget's size where neither the file table nor Content-Length gives one
_clock = time.monotonic  # (the tests simulate a slow link through it, not through the time module)


class DownloadError(OSError):
    """No mirror delivered a file with the expected sha256; the message lists every mirror and its error."""


class _MirrorError(Exception):
    """One mirror failed for one file (network, HTTP, timeout, size or hash): the next one is tried."""


def fetch(
    folder: Path, name: str, sha256: str, size: int | None, bases: tuple[str, ...], timeout: float
) -> Path:
    """Try each mirror (``base + name``) for one file; the first one with the right ``sha256`` wins.

    ``size``: the file's size in bytes, where known (a mirror sending more is cut off); ``None`` falls back on
    the Content-Length each mirror announces.

    The temporary file is created once, before any mirror is tried, so that a folder that cannot be
    written is reported as such and not as one failure per mirror.
    """
    try:
        # created exclusively under a unique name, with mode 0o666 minus the umask as a plain open would (a
        # data file is meant to be shared, unless the umask says otherwise)
        tmp = folder / f".{name}.{secrets.token_hex(6)}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        msg = f"cannot write into the MNIST folder ({err.strerror or err})"
        raise type(err)(err.errno, msg, str(folder)) from err
    os.close(fd)
    part = Path(tmp)
    failures = []
    try:
        for base in bases:
            url = base + name
            try:
                _fetch_one(url, part, sha256, size, timeout)
            except _MirrorError as err:
                failures.append(f"  {url}: {err}")
                continue
            try:
                os.replace(part, folder / name)
            except FileNotFoundError:
                # another download put the file in place and removed ours as stale (this process was stopped
                # for over an hour): its file passed the same hash check
                if not (folder / name).is_file():
                    raise
            fsync_dir(folder)  # the rename too survives a crash
            _remove_stale_parts(folder, name, timeout)
            return folder / name
    finally:
        part.unlink(missing_ok=True)  # nothing left after a success (renamed) or a failure
    raise DownloadError(
        f"could not download {name} into {folder} from any mirror:\n"
        + "\n".join(failures)
        # ($TENSORTRAIN_DATA: the folder variable of datasets, which imports this module, so it is spelled out)
        + f"\n(offline? copy the MNIST files into {folder}, or pass root= / set $TENSORTRAIN_DATA to a folder holding them)"
    )


# A temporary file unmodified for this long (and ten timeouts) belongs to no live download, which writes it at
# least every few timeouts (each mirror's attempt truncates it; each read waits at most the timeout)
_STALE_PART_SECONDS = 3600.0


def _remove_stale_parts(folder: Path, name: str, timeout: float) -> None:
    """Delete the temporary files of ``name`` that killed downloads left in ``folder`` (SIGKILL runs no cleanup;
    each download writes a file of its own, ``.<name>.<12 hex>.part``), once ``name`` is in place. Best effort:
    a file another process removes first, or one that cannot be removed, is left to it."""
    cutoff = time.time() - max(_STALE_PART_SECONDS, 10 * timeout)
    prefix, suffix = f".{name}.", ".part"
    try:
        entries = list(os.scandir(folder))
    except OSError:  # (a folder that can be written but not listed)
        return
    for entry in entries:
        stem = entry.name[len(prefix) : -len(suffix)]
        ours = entry.name.startswith(prefix) and entry.name.endswith(suffix) and len(stem) == 12
        if not ours or any(ch not in "0123456789abcdef" for ch in stem):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
        except OSError:
            pass


def _fetch_one(url: str, part: Path, sha256: str, size: int | None, timeout: float) -> None:
    """Stream ``url`` into ``part`` (truncated first); raise ``_MirrorError`` unless the hash matches.

    Errors writing ``part`` are local and pass through as they are: another mirror would not help.
    """
    digest = hashlib.sha256()
    with open(part, "wb") as out, closing(_body(url, size, timeout)) as chunks:
        for chunk in chunks:
            digest.update(chunk)
            out.write(chunk)
        # on disk before the rename: cached files are not hashed again, so a file cut by a crash after the rename
        # would fail every later load
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != sha256:
        raise _MirrorError(f"sha256 mismatch (got {digest.hexdigest()}, expected {sha256})")


def _body(url: str, size: int | None, timeout: float) -> Generator[bytes, None, None]:
    """The body of ``url`` in pieces; a network error, the deadline, a body cut short or an oversized one is a
    ``_MirrorError``.

    ``timeout`` alone bounds each socket operation, not the total: a server that trickles one byte at a
    time or streams without end would never be stopped, hence the overall deadline (``timeout`` plus the
    expected size at ``_MIN_RATE``) and the size limit.
    """
    start = _clock()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            announced = _content_length(resp)
            limit = size if size is not None else announced
            allowed = timeout + (limit if limit is not None else _UNKNOWN_SIZE) / _MIN_RATE
            # read1: whatever has arrived (one socket read), so the deadline is checked between trickles
            while chunk := resp.read1(1 << 16):
                received += len(chunk)
                if limit is not None and received > limit:
                    raise _MirrorError(f"more than the expected {limit} bytes; not the MNIST file")
                if _clock() - start > allowed:
                    raise _MirrorError(
                        f"not complete after {allowed:.3g} s ({received} bytes received, slower than "
                        f"{_MIN_RATE // 1024} KiB/s)"
                    )
                yield chunk
            # read1 returns b"" when the server closes before the length it announced: say so, rather than let
            # the hash call the mirror's file wrong
            if announced is not None and received < announced:
                raise _MirrorError(f"the connection closed after {received} of {announced} bytes")
    except (OSError, ValueError, http.client.HTTPException) as err:  # URLError, socket timeouts: OSError
        raise _MirrorError(str(err)) from err


def _content_length(resp: object) -> int | None:
    """The announced body size, or None when absent or malformed (then the body is read to its end)."""
    headers = getattr(resp, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
