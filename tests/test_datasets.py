"""tt.datasets: the strict IDX reader, folder precedence, verified downloads from a local HTTP server."""

from __future__ import annotations

import errno
import functools
import gzip
import hashlib
import http.client
import http.server
import io
import os
import shutil
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tensortrain import datasets, datasets_download
from tensortrain.datasets import DownloadError, IDXError, load_mnist, read_idx

# The real MNIST files: $TENSORTRAIN_DATA when it holds them, else ../shared/data/mnist beside the repository.
_CANDIDATES = [os.environ.get("TENSORTRAIN_DATA", ""), str(Path(__file__).parents[2] / "shared/data/mnist")]
REAL_MNIST = next(
    (Path(c) for c in _CANDIDATES if c and (Path(c) / "train-images-idx3-ubyte.gz").is_file()), None
)
needs_real = pytest.mark.skipif(
    REAL_MNIST is None, reason="real MNIST files not found (../shared/data/mnist)"
)

# struct format letters for each IDX type code: the test's own big-endian encoder (independent of the reader).
_FMT = {0x08: "B", 0x09: "b", 0x0B: "h", 0x0C: "i", 0x0D: "f", 0x0E: "d"}
_TORCH = {0x08: torch.uint8, 0x09: torch.int8, 0x0B: torch.int16, 0x0C: torch.int32, 0x0D: torch.float32}
_TORCH[0x0E] = torch.float64


def idx_bytes(code: int, dims: tuple[int, ...], values: list) -> bytes:
    """Encode an IDX file by the format's definition."""
    header = bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
    return header + struct.pack(f">{len(values)}{_FMT[code]}", *values)


def write(path: Path, data: bytes, gz: bool) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def fake_mnist(folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = True, labels_max: int = 9) -> None:
    """Small files with MNIST's names and layout (N x 28 x 28 uint8 images, N uint8 labels)."""
    g = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        pixels = torch.randint(0, 256, (n * 28 * 28,), generator=g).tolist()
        labels = torch.randint(0, labels_max + 1, (n,), generator=g).tolist()
        suffix = ".gz" if gz else ""
        write(folder / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(0x08, (n, 28, 28), pixels), gz)
        write(folder / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(0x08, (n,), labels), gz)


# --- the IDX reader -------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(_FMT))
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_matches_encoder(tmp_path, code, gz):
    g = torch.Generator().manual_seed(code)
    dims = (3, 4, 5)
    if code in (0x0D, 0x0E):
        expected = torch.randn(dims, generator=g, dtype=_TORCH[code])
    else:
        info = torch.iinfo(_TORCH[code])
        expected = torch.randint(info.min, info.max + 1, dims, generator=g, dtype=torch.int64).to(
            _TORCH[code]
        )
    path = write(tmp_path / "x.idx", idx_bytes(code, dims, expected.flatten().tolist()), gz)
    got = read_idx(path)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got, expected)


def test_read_idx_one_dim_and_empty(tmp_path):
    assert torch.equal(read_idx(write(tmp_path / "a", idx_bytes(0x0C, (3,), [1, -2, 70000]), False)),
                       torch.tensor([1, -2, 70000], dtype=torch.int32))  # fmt: skip
    empty = read_idx(write(tmp_path / "b", idx_bytes(0x08, (0, 28), []), True))
    assert empty.shape == (0, 28) and empty.dtype == torch.uint8


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "bad magic empty"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad magic 01000801"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "unknown IDX dtype code 0x07"),
        (b"\x00\x00\x08\x00", "declares 0 dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "truncated IDX header"),
        # one byte short of the header's two dimensions
        (b"\x00\x00\x08\x02" + struct.pack(">I", 2) + b"\x00" * 3, "truncated IDX header"),
        # gzip's first magic byte alone does not make a gzip file: a plain file starting 1f 00 is not IDX
        (b"\x1f\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad magic 1f000801"),
        (
            idx_bytes(0x08, (2, 3), list(range(6)))[:-1],
            r"truncated: dims \(2, 3\) .* need 6 data bytes, found 5",
        ),
        (idx_bytes(0x0C, (2,), [1, 2]) + b"\x00", "trailing bytes: .* need 8 data bytes, found 9"),
    ],
)
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_rejects_bad_files_naming_them(tmp_path, data, match, gz):
    path = write(tmp_path / "broken-idx1-ubyte", data, gz)
    with pytest.raises(IDXError, match=f"broken-idx1-ubyte: .*{match}"):
        read_idx(path)


def test_read_idx_rejects_truncated_and_corrupt_gzip(tmp_path):
    packed = gzip.compress(idx_bytes(0x08, (100,), list(range(100))))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(IDXError, match="cut.gz: corrupt or truncated gzip data"):
        read_idx(cut)
    flipped = bytearray(packed)
    flipped[-6] ^= 0xFF  # inside the CRC32 / size trailer
    bad = tmp_path / "bad.gz"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(IDXError, match="bad.gz: corrupt or truncated gzip data"):
        read_idx(bad)
    # a bit flipped inside the deflate stream: zlib.error, which is not an OSError
    packed = gzip.compress(bytes(i * i % 10 for i in range(10000)), mtime=0)
    flipped = bytearray(packed)
    flipped[30] ^= 0xFF
    with pytest.raises(zlib.error):
        gzip.decompress(bytes(flipped))
    deflate = tmp_path / "deflate.gz"
    deflate.write_bytes(bytes(flipped))
    with pytest.raises(IDXError, match="deflate.gz: corrupt or truncated gzip data"):
        read_idx(deflate)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


# --- load_mnist on files the test writes ------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_folder(tmp_path, gz):
    fake_mnist(tmp_path, n_train=6, n_test=4, gz=gz)
    data = load_mnist(tmp_path, download=False)
    assert isinstance(data, datasets.MNIST)
    assert data.train_images.shape == (6, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (4, 28, 28)
    assert data.train_labels.shape == (6,) and data.train_labels.dtype == torch.int64
    assert data.test_labels.shape == (4,) and data.test_labels.dtype == torch.int64
    raw = read_idx(tmp_path / ("t10k-labels-idx1-ubyte" + (".gz" if gz else "")))
    assert torch.equal(data.test_labels, raw.long())


def test_load_mnist_rejects_bad_labels_and_counts(tmp_path):
    fake_mnist(tmp_path / "a", labels_max=200)
    with pytest.raises(IDXError, match=r"labels-idx1-ubyte.gz: labels must lie in 0..9.*replace it"):
        load_mnist(tmp_path / "a", download=False)
    fake_mnist(tmp_path / "b")
    write(tmp_path / "b/t10k-labels-idx1-ubyte.gz", idx_bytes(0x08, (3,), [1, 2, 3]), True)
    with pytest.raises(IDXError, match=r"t10k-labels-idx1-ubyte.gz: expected 4 uint8 labels"):
        load_mnist(tmp_path / "b", download=False)
    fake_mnist(tmp_path / "c")
    write(tmp_path / "c/train-images-idx3-ubyte.gz", idx_bytes(0x08, (6, 784), [0] * 6 * 784), True)
    with pytest.raises(IDXError, match=r"train-images-idx3-ubyte.gz: expected uint8 images"):
        load_mnist(tmp_path / "c", download=False)
    fake_mnist(tmp_path / "d")
    write(tmp_path / "d/t10k-images-idx3-ubyte.gz", idx_bytes(0x08, (4, 10, 10), [0] * 400), True)
    with pytest.raises(
        IDXError, match=r"t10k-images-idx3-ubyte.gz: expected uint8 images of shape \(N, 28, 28\)"
    ):
        load_mnist(tmp_path / "d", download=False)


def test_load_mnist_missing_without_download(tmp_path):
    fake_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing in .*: t10k-images-idx3-ubyte \(as .gz or plain\)"):
        load_mnist(tmp_path, download=False)


def test_folder_precedence(tmp_path, monkeypatch):
    for name, n in (
        ("arg", 1),
        ("env", 2),
        ("xdg/tensortrain/mnist", 3),
        ("home/.cache/tensortrain/mnist", 4),
    ):
        fake_mnist(tmp_path / name, n_train=n)
    monkeypatch.setenv("TENSORTRAIN_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert len(load_mnist(tmp_path / "arg", download=False).train_images) == 1
    assert len(load_mnist(download=False).train_images) == 2
    monkeypatch.delenv("TENSORTRAIN_DATA")
    assert datasets.default_data_dir() == tmp_path / "xdg/tensortrain/mnist"
    assert len(load_mnist(download=False).train_images) == 3
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert datasets.default_data_dir() == tmp_path / "home/.cache/tensortrain/mnist"
    assert len(load_mnist(download=False).train_images) == 4


# --- downloads from a local HTTP server -------------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep the test output clean
        pass


@pytest.fixture
def serve() -> Iterator:
    """``serve(folder)`` -> base URL of an HTTP server on 127.0.0.1 (ephemeral port) serving ``folder``."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(_Quiet, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def dead_url() -> str:
    """A base URL on a port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _use_hashes_of(folder: Path, monkeypatch) -> None:
    """Make the files in ``folder`` the expected ones (the real hashes are checked by the real-data test)."""
    for name in datasets.MNIST_SHA256:
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        monkeypatch.setitem(datasets.MNIST_SHA256, name, digest)


def test_download_then_load(tmp_path, serve, monkeypatch):
    fake_mnist(tmp_path / "site")
    _use_hashes_of(tmp_path / "site", monkeypatch)
    base = serve(tmp_path / "site")
    data = load_mnist(tmp_path / "cache/mnist", mirrors=[base], timeout=5)
    assert sorted(p.name for p in (tmp_path / "cache/mnist").iterdir()) == sorted(datasets.MNIST_SHA256)
    assert data.train_images.shape == (6, 28, 28)
    for name in datasets.MNIST_SHA256:  # byte-identical copies, nothing half-written left behind
        assert (tmp_path / "cache/mnist" / name).read_bytes() == (tmp_path / "site" / name).read_bytes()
    assert datasets.download_mnist(tmp_path / "cache/mnist", mirrors=[base]) == []  # all present: no fetch
    # a file present is never fetched again, even a corrupt one: the error says how to have it fetched
    bad = tmp_path / "cache/mnist/t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:20])
    with pytest.raises(
        IDXError, match=r"t10k-labels-idx1-ubyte.gz: .*\(delete it to have it downloaded again\)"
    ):
        load_mnist(tmp_path / "cache/mnist", mirrors=[base], timeout=5)
    bad.unlink()
    assert torch.equal(
        load_mnist(tmp_path / "cache/mnist", mirrors=[base], timeout=5).test_labels, data.test_labels
    )


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc (Linux)")
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_download_is_synced_before_the_rename_and_keeps_the_umask(tmp_path, serve, monkeypatch, umask):
    """A downloaded file was renamed into place unsynced (a crash could leave a cut file under the final name,
    never hashed again) and always got mode 0644 whatever the umask."""
    fake_mnist(tmp_path / "site")
    _use_hashes_of(tmp_path / "site", monkeypatch)
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        os,
        "fsync",
        lambda fd: (events.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}"), real_fsync(fd))[1],
    )
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(f"replace {a}"), real_replace(a, b))[1])
    old = os.umask(umask)
    try:
        datasets.download_mnist(tmp_path / "mnist", mirrors=[serve(tmp_path / "site")], timeout=5)
    finally:
        os.umask(old)
    for name in datasets.MNIST_SHA256:
        assert (tmp_path / "mnist" / name).stat().st_mode & 0o777 == 0o666 & ~umask
    renames = [i for i, e in enumerate(events) if e.startswith("replace")]
    assert len(renames) == len(datasets.MNIST_SHA256)
    for i in renames:  # the file itself was synced just before its rename, and the folder after it
        part = events[i].removeprefix("replace ")
        assert events[i - 1] == f"fsync {part}"
        assert events[i + 1] == f"fsync {tmp_path / 'mnist'}"


def test_download_only_missing_and_mirror_fallback(tmp_path, serve, dead_url, monkeypatch):
    fake_mnist(tmp_path / "site")
    _use_hashes_of(tmp_path / "site", monkeypatch)
    target = tmp_path / "target"
    fake_mnist(target, gz=False)  # plain files already there
    (target / "train-labels-idx1-ubyte").unlink()
    monkeypatch.setenv("TENSORTRAIN_MNIST_MIRRORS", f"{dead_url}, {serve(tmp_path / 'site')}")
    got = datasets.download_mnist(target, timeout=5)
    assert got == [target / "train-labels-idx1-ubyte.gz"]
    assert len(load_mnist(target, download=False).train_labels) == 6


def test_a_failed_mirror_leaves_no_bytes_in_the_next_ones_file(tmp_path, serve, monkeypatch):
    """Each mirror's attempt starts from an empty temporary file: the bytes of a mirror that served a wrong file
    must not stay in front of the next mirror's (the hash covers what was received, so they would be renamed
    into place unnoticed)."""
    site = tmp_path / "site"
    fake_mnist(site)
    _use_hashes_of(site, monkeypatch)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for name in datasets.MNIST_SHA256:
        (wrong / name).write_bytes(b"not the file")
    target = tmp_path / "target"
    datasets.download_mnist(target, mirrors=[serve(wrong), serve(site)], timeout=5)
    for name in datasets.MNIST_SHA256:
        assert (target / name).read_bytes() == (site / name).read_bytes()


def test_download_offline_lists_every_mirror(tmp_path, dead_url):
    other = dead_url.replace("http://127.0.0.1", "http://localhost")
    with pytest.raises(DownloadError) as info:
        load_mnist(tmp_path / "mnist", mirrors=[dead_url, other], timeout=5)
    msg = str(info.value)
    assert "could not download train-images-idx3-ubyte.gz" in msg
    assert f"{dead_url}train-images-idx3-ubyte.gz: " in msg and f"{other}train-images-idx3-ubyte.gz: " in msg
    assert "offline?" in msg and "TENSORTRAIN_DATA" in msg
    assert not (tmp_path / "mnist").exists()  # no partial files, and no folder the download made


def test_download_corrupt_file_is_rejected(tmp_path, serve):
    fake_mnist(tmp_path / "site")  # right names, wrong bytes: the real hashes do not match
    with pytest.raises(
        DownloadError, match=r"train-images-idx3-ubyte.gz: sha256 mismatch \(got [0-9a-f]{64}"
    ):
        load_mnist(tmp_path / "mnist", mirrors=[serve(tmp_path / "site")], timeout=5)
    assert not (tmp_path / "mnist").exists()
    (tmp_path / "mine").mkdir()  # a folder that was there before stays, empty
    with pytest.raises(DownloadError):
        load_mnist(tmp_path / "mine", mirrors=[serve(tmp_path / "site")], timeout=5)
    assert list((tmp_path / "mine").iterdir()) == []


def test_download_http_error_and_bad_mirrors_argument(tmp_path, serve):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DownloadError, match="HTTP Error 404"):
        load_mnist(tmp_path / "mnist", mirrors=[serve(tmp_path / "empty")], timeout=5)
    with pytest.raises(TypeError, match="sequence of base URLs"):
        load_mnist(tmp_path / "mnist", mirrors="http://127.0.0.1:1/")
    with pytest.raises(ValueError, match="mirrors is empty"):
        load_mnist(tmp_path / "mnist", mirrors=[])


@needs_real
def test_download_real_files_match_published_hashes(tmp_path, serve):
    site = tmp_path / "site"
    site.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(REAL_MNIST / name, site / name)  # the two small ones: enough to test the real hashes
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        shutil.copy(REAL_MNIST / f"{stem}.gz", tmp_path / f"{stem}.gz")
    got = datasets.download_mnist(tmp_path, mirrors=[serve(site)], timeout=5)
    assert [p.name for p in got] == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    for name, digest in datasets.MNIST_SHA256.items():
        assert hashlib.sha256((REAL_MNIST / name).read_bytes()).hexdigest() == digest


# --- the real data ----------------------------------------------------------------------------------------


@needs_real
def test_real_mnist():
    data = load_mnist(REAL_MNIST, download=False)
    assert data.train_images.shape == (60000, 28, 28) and data.test_images.shape == (10000, 28, 28)
    assert data.train_labels.shape == (60000,) and data.test_labels.shape == (10000,)
    assert data.train_images.dtype == torch.uint8 and data.test_labels.dtype == torch.int64
    for labels, n in ((data.train_labels, 60000), (data.test_labels, 10000)):
        counts = torch.bincount(labels, minlength=10)
        assert len(counts) == 10 and int(counts.sum()) == n
        assert int(counts.min()) > n // 20  # every digit present in roughly balanced numbers
    assert int(data.train_images.max()) == 255 and int(data.train_images.min()) == 0
    # the digits are centred: the border rows are (almost) blank, the centre is not
    assert data.train_images[:, 0, :].float().mean() < 1.0 < data.train_images[:, 14, :].float().mean()


# --- download limits: an overall deadline, the expected size, local errors apart from mirror errors -------


class _Misbehaving(http.server.BaseHTTPRequestHandler):
    """``/trickle/NAME``: one byte every 50 ms for up to 3 s; ``/endless/NAME``: 64 KiB blocks, no length."""

    protocol_version = "HTTP/1.0"  # the body ends when the connection closes: no Content-Length needed

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        kind = self.path.strip("/").split("/")[0]
        self.send_response(200)
        self.end_headers()
        try:
            if kind == "trickle":
                for _ in range(60):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    threading.Event().wait(0.05)
            else:
                for _ in range(64):  # 4 MiB, far more than the expected size below
                    self.wfile.write(bytes(1 << 16))
        except OSError:  # the client gave up, as it should
            pass


@pytest.fixture
def misbehaving() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_deadline_bounds_the_whole_attempt(tmp_path, misbehaving, monkeypatch):
    """A mirror that trickles a byte every 50 ms never trips a per-read timeout; the deadline (timeout plus the
    expected size at 16 KiB/s) stops it."""
    # (the message proves the deadline stopped it: the trickle alone would last 3 s, with no timed assertion)
    monkeypatch.setitem(datasets.MNIST_SIZES, "train-images-idx3-ubyte.gz", 1638)  # 0.1 s at 16 KiB/s
    with pytest.raises(
        DownloadError,
        match=r"trickle/train-images-idx3-ubyte.gz: not complete after 0.4 s \(\d+ bytes received, slower than "
        r"16 KiB/s\)",
    ):
        datasets.download_mnist(tmp_path, mirrors=[misbehaving + "trickle/"], timeout=0.3)
    assert list(tmp_path.iterdir()) == []


def test_a_slow_steady_download_is_not_cut_at_the_timeout(tmp_path, monkeypatch):
    """The deadline was the timeout itself: 9.9 MB needed 320 KB/s within the default 30 s. A slow link gets
    the timeout plus the size at 16 KiB/s (the clock is simulated: each read takes 1 s)."""
    body = bytes(16384 * 20)  # 20 reads of 16 KiB, one simulated second each: 20 s, within 2 + 20 s
    clock = iter(range(10_000))

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(body))}

        def read1(self, n=-1):
            return super().read1(min(n, 16384))

    monkeypatch.setattr(datasets_download, "_clock", lambda: float(next(clock)))
    monkeypatch.setattr(datasets_download.urllib.request, "urlopen", lambda url, timeout: Response(body))
    chunks = list(datasets_download._body("http://127.0.0.1:9/f.gz", len(body), timeout=2))
    assert b"".join(chunks) == body and len(chunks) == 20  # far more (simulated) seconds than the timeout


def _announcing(monkeypatch, length: int, body: bytes) -> None:
    """Every URL answers ``body`` under a Content-Length of ``length``; the first file's size is not known."""

    class Response(io.BytesIO):
        headers = {"Content-Length": str(length)}

    monkeypatch.delitem(datasets.MNIST_SIZES, "train-images-idx3-ubyte.gz")
    monkeypatch.setattr(datasets_download.urllib.request, "urlopen", lambda url, timeout: Response(body))


def test_a_connection_closed_early_is_not_a_hash_mismatch(tmp_path, monkeypatch):
    """read1 returns b"" when the server closes early: the short body reached the hash check ("sha256
    mismatch"), as if the mirror served a wrong file."""
    _announcing(monkeypatch, 1000, bytes(400))
    with pytest.raises(DownloadError, match=r"the connection closed after 400 of 1000 bytes"):
        datasets.download_mnist(tmp_path, mirrors=["http://127.0.0.1:9/"], timeout=5)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_download_stops_past_the_expected_size(tmp_path, misbehaving, monkeypatch):
    monkeypatch.setitem(datasets.MNIST_SIZES, "train-images-idx3-ubyte.gz", 100_000)
    with pytest.raises(
        DownloadError, match=r"endless/train-images-idx3-ubyte.gz: more than the expected 100000"
    ):
        datasets.download_mnist(tmp_path, mirrors=[misbehaving + "endless/"], timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_download_one_byte_past_the_expected_size_is_cut_off(tmp_path, monkeypatch):
    """The size limit is exact: a body a single byte longer than the file is stopped as oversized (not written
    whole and left to the hash check), with nothing left in the folder."""

    class Response(io.BytesIO):
        headers: dict[str, str] = {}

    monkeypatch.setitem(datasets.MNIST_SIZES, "train-images-idx3-ubyte.gz", 100)
    monkeypatch.setattr(
        datasets_download.urllib.request, "urlopen", lambda url, timeout: Response(bytes(101))
    )
    with pytest.raises(DownloadError, match=r"more than the expected 100 bytes"):
        datasets.download_mnist(tmp_path, mirrors=["http://127.0.0.1:9/"], timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_a_malformed_http_reply_moves_on_to_the_next_mirror(tmp_path, monkeypatch):
    """http.client's own errors (a garbled status line, a body cut inside a chunk) are not OSErrors: they are a
    mirror's failure like any other, listed in the DownloadError, not an exception escaping the download."""

    def garbled(url, timeout):
        raise http.client.BadStatusLine("HTTP/9 banana") if "one" in url else http.client.IncompleteRead(b"x")

    monkeypatch.setattr(datasets_download.urllib.request, "urlopen", garbled)
    with pytest.raises(DownloadError, match=r"(?s)one/train-images.*HTTP/9 banana.*two/train-images"):
        datasets.download_mnist(tmp_path, mirrors=["http://127.0.0.1:9/one/", "http://127.0.0.1:9/two/"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_a_link_planted_at_the_part_name_is_not_written_through(tmp_path, monkeypatch):
    """The ``.part`` file is created exclusively: a link already at its name stops the download, instead of
    the mirror's bytes going into whatever the link points to."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    monkeypatch.setattr(datasets_download.secrets, "token_hex", lambda n: "0123456789ab")
    (tmp_path / ".train-images-idx3-ubyte.gz.0123456789ab.part").symlink_to(victim)
    monkeypatch.setattr(
        datasets_download.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"not mnist")
    )
    with pytest.raises(FileExistsError, match="cannot write into the MNIST folder"):
        datasets.download_mnist(tmp_path, mirrors=["http://127.0.0.1:9/"], timeout=5)
    assert victim.read_bytes() == b"keep"


def test_download_limit_from_content_length_when_size_unknown(tmp_path, monkeypatch):
    """Without a known size, a body longer than the Content-Length it announced is cut off."""
    _announcing(monkeypatch, 10, bytes(1000))
    with pytest.raises(DownloadError, match=r"more than the expected 10 bytes"):
        datasets.download_mnist(tmp_path, mirrors=["http://127.0.0.1:9/"], timeout=5)


def test_known_sizes_match_the_real_files():
    assert sorted(datasets.MNIST_SIZES) == sorted(datasets.MNIST_SHA256)
    if REAL_MNIST is not None:
        for name, size in datasets.MNIST_SIZES.items():
            assert (REAL_MNIST / name).stat().st_size == size


def _refuse_new_files_in(folder: Path, monkeypatch) -> None:
    """Make ``folder`` unwritable (chmod would not stop root): creating a file in it raises EACCES."""
    real_open = os.open

    def guarded(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(os.fsdecode(path)).parent == folder:
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded)


def test_unwritable_folder_is_not_a_mirror_failure(tmp_path, serve, monkeypatch):
    fake_mnist(tmp_path / "site")
    _use_hashes_of(tmp_path / "site", monkeypatch)
    (tmp_path / "ro").mkdir()
    _refuse_new_files_in(tmp_path / "ro", monkeypatch)
    with pytest.raises(PermissionError) as info:
        load_mnist(tmp_path / "ro", mirrors=[serve(tmp_path / "site")], timeout=5)
    msg = str(info.value)
    assert msg == f"[Errno 13] cannot write into the MNIST folder (Permission denied): '{tmp_path / 'ro'}'"
    assert info.value.filename == str(tmp_path / "ro")
    assert not isinstance(info.value, DownloadError) and "offline?" not in msg


def test_disk_full_while_writing_is_not_a_mirror_failure(tmp_path, serve, monkeypatch):
    """A local write error passes through at once: trying the next mirror would not help."""
    fake_mnist(tmp_path / "site")
    _use_hashes_of(tmp_path / "site", monkeypatch)

    class Full(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets_download, "open", lambda path, mode: Full(path, mode), raising=False)
    with pytest.raises(OSError, match="No space left on device") as info:
        datasets.download_mnist(tmp_path / "mnist", mirrors=[serve(tmp_path / "site")] * 2, timeout=5)
    assert not isinstance(info.value, DownloadError)
    assert not (tmp_path / "mnist").exists()


@pytest.mark.parametrize("download", [True, False])
def test_root_that_is_a_file_is_a_clear_error(tmp_path, download):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=rf"{tmp_path / 'file'} is not a folder"):
        load_mnist(tmp_path / "file", download=download, mirrors=["http://127.0.0.1:9/"])
    with pytest.raises(NotADirectoryError, match=rf"{tmp_path / 'file'} is not a folder"):
        datasets.download_mnist(tmp_path / "file", mirrors=["http://127.0.0.1:9/"])


def test_a_folder_that_cannot_be_created_is_named(tmp_path, monkeypatch):
    """mkdir's own error named the parent it failed on (``PermissionError: '/nonexistent'`` for a HOME that
    cannot be written), not the MNIST folder."""
    (tmp_path / "file").write_text("not a folder")
    root = tmp_path / "file" / "mnist"
    with pytest.raises(NotADirectoryError) as info:
        load_mnist(root, mirrors=["http://127.0.0.1:9/"], timeout=5)
    assert str(info.value) == f"[Errno 20] cannot create the MNIST folder (Not a directory): '{root}'"
    real_mkdir = Path.mkdir

    def refused(self, *args, **kwargs):  # (root passes permission checks: refuse as they would)
        if self == tmp_path / "home":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refused)
    root = tmp_path / "home" / ".cache" / "mnist"
    with pytest.raises(PermissionError) as info:
        datasets.download_mnist(root, mirrors=["http://127.0.0.1:9/"], timeout=5)
    assert str(info.value) == (
        f"[Errno 13] cannot create the MNIST folder (Permission denied at {tmp_path / 'home'}): '{root}'"
    )
    assert info.value.filename == str(root)


@pytest.mark.parametrize("timeout", [0, -1, 0.0, float("nan"), float("inf"), -float("inf")])
def test_bad_timeout_is_a_value_error(tmp_path, timeout):
    with pytest.raises(ValueError, match=rf"timeout must be a finite number of seconds > 0, got {timeout}"):
        load_mnist(tmp_path, mirrors=["http://127.0.0.1:9/"], timeout=timeout)
    with pytest.raises(ValueError, match="timeout must be"):
        datasets.download_mnist(tmp_path, mirrors=["http://127.0.0.1:9/"], timeout=timeout)
    assert list(tmp_path.iterdir()) == []


def test_a_timeout_too_long_for_a_socket_is_a_value_error(tmp_path, serve, monkeypatch):
    """A timeout past what a socket can wait (threading.TIMEOUT_MAX, about 292 years) failed only once the
    download connected, with the socket's OverflowError ('timestamp out of range for platform time_t'); the
    longest one still downloads."""
    limit = rf"at most {threading.TIMEOUT_MAX:.0f} seconds \(threading\.TIMEOUT_MAX\), got 1e\+22"
    with pytest.raises(ValueError, match=f"timeout must be {limit}"):
        load_mnist(tmp_path / "mnist", mirrors=["http://127.0.0.1:9/"], timeout=1e22)
    with pytest.raises(ValueError, match="timeout must be at most"):
        datasets.download_mnist(tmp_path / "mnist", mirrors=["http://127.0.0.1:9/"], timeout=1e22)
    assert list(tmp_path.iterdir()) == []
    fake_mnist(tmp_path / "site")
    _use_hashes_of(tmp_path / "site", monkeypatch)
    data = load_mnist(tmp_path / "mnist", mirrors=[serve(tmp_path / "site")], timeout=threading.TIMEOUT_MAX)
    assert data.train_images.shape == (6, 28, 28)


def test_non_string_mirror_is_a_type_error(tmp_path):
    with pytest.raises(
        TypeError, match=r"each mirror must be a str \(a base URL\), got PosixPath\('/srv/mnist'\)"
    ):
        load_mnist(tmp_path, mirrors=["http://127.0.0.1:9/", Path("/srv/mnist")])
    with pytest.raises(TypeError, match="timeout must be a number of seconds, got '5'"):
        load_mnist(tmp_path, mirrors=["http://127.0.0.1:9/"], timeout="5")  # type: ignore[arg-type]


def test_a_generator_of_mirrors_is_used_whole(tmp_path, serve, monkeypatch):
    """The checks used a generator up: the download then tried no mirror at all."""
    fake_mnist(tmp_path / "site")
    _use_hashes_of(tmp_path / "site", monkeypatch)
    base = serve(tmp_path / "site")
    data = load_mnist(tmp_path / "mnist", mirrors=(u for u in [base]), timeout=5)
    assert len(data.train_labels) == 6


def test_a_relative_xdg_cache_home_is_ignored(tmp_path, monkeypatch):
    monkeypatch.delenv("TENSORTRAIN_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # the XDG spec: ignore relative values
    assert datasets.default_data_dir() == tmp_path / ".cache/tensortrain/mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.default_data_dir() == tmp_path / "xdg/tensortrain/mnist"


def test_a_folder_in_place_of_a_file_is_reported_before_downloading(tmp_path, dead_url):
    target = tmp_path / "mnist"
    (target / "train-images-idx3-ubyte.gz").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match=r"train-images-idx3-ubyte.gz exists and is not a file"):
        load_mnist(target, mirrors=[dead_url], timeout=5)  # no mirror is contacted first


@pytest.mark.parametrize("gz", [True, False])
def test_datasets_second_magic_byte_must_be_zero(tmp_path, gz):
    # (test_datasets.py, a row of test_read_idx_rejects_bad_files_naming_them) IDX magic is 00 00 tt nd
    path = write(tmp_path / "broken-idx1-ubyte", b"\x00\x01\x08\x01" + (1).to_bytes(4, "big") + b"\x00", gz)
    with pytest.raises(IDXError, match="bad magic 00010801"):
        read_idx(path)


def test_datasets_label_ten_is_out_of_range(tmp_path):
    # (test_datasets.py, beside test_load_mnist_rejects_bad_labels_and_counts) the boundary label 10
    fake_mnist(tmp_path)
    write(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes(0x08, (4,), [0, 9, 10, 3]), True)
    with pytest.raises(IDXError, match=r"t10k-labels-idx1-ubyte.gz: labels must lie in 0..9, found 10"):
        load_mnist(tmp_path, download=False)


def test_datasets_mirror_without_trailing_slash(tmp_path, serve, monkeypatch):
    # (test_datasets.py) a base URL given without its final "/" names the same folder
    fake_mnist(tmp_path / "site" / "mnist")
    _use_hashes_of(tmp_path / "site" / "mnist", monkeypatch)
    base = serve(tmp_path / "site") + "mnist"  # no trailing slash
    data = load_mnist(tmp_path / "cache", mirrors=[base], timeout=5)
    assert data.train_images.shape == (6, 28, 28)


def test_load_mnist_checks_mirrors_when_nothing_is_downloaded(tmp_path):
    """mirrors was checked only inside a download: bad values passed when the files were there (timeout was
    checked every time, as the docstring says of both)."""
    fake_mnist(tmp_path)
    for bad in (object(), 1.5, "abc", [[]]):
        with pytest.raises(
            TypeError, match="mirrors must be a sequence of base URLs|each mirror must be a str"
        ):
            load_mnist(tmp_path, mirrors=bad)
    load_mnist(tmp_path, mirrors=["http://127.0.0.1:9/"])  # (a good one is not used: nothing is missing)


def test_home_folders_and_empty_roots(tmp_path, monkeypatch):
    """~ is expanded in root= and in $TENSORTRAIN_DATA; an empty root is an error, not the current folder."""
    fake_mnist(tmp_path / "home/mnist", n_train=5)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert len(load_mnist("~/mnist", download=False).train_images) == 5
    monkeypatch.setenv("TENSORTRAIN_DATA", "~/mnist")
    assert datasets.default_data_dir() == tmp_path / "home/mnist"
    with pytest.raises(ValueError, match="root is an empty path"):
        load_mnist("", download=False)


def test_mirrors_from_the_environment_split_on_commas_and_spaces(monkeypatch):
    monkeypatch.setenv("TENSORTRAIN_MNIST_MIRRORS", "http://a.example/ http://b.example/,http://c.example/")
    assert datasets._mirrors(None) == ("http://a.example/", "http://b.example/", "http://c.example/")


def test_a_download_removes_what_killed_downloads_of_its_file_left(tmp_path, serve, monkeypatch):
    """A SIGKILLed download leaves its ``.<name>.<hex>.part`` behind (no cleanup runs); they piled up in the
    cache folder. A later download of that file removes those untouched for an hour, never a live one's (fresh),
    another file's, or a name that is not one of its temporary files."""
    fake_mnist(tmp_path / "site")
    _use_hashes_of(tmp_path / "site", monkeypatch)
    folder = tmp_path / "cache"
    folder.mkdir()
    name = "train-labels-idx1-ubyte.gz"
    old = time.time() - 2 * 3600
    kept = [f".{name}.0123456789ab.part", f".{name}.notahexstem!.part", f".{name}.0123.part", "x.part"]
    for entry in [f".{name}.a1b2c3d4e5f6.part", *kept]:
        (folder / entry).write_bytes(b"half")
        os.utime(folder / entry, (old, old))
    os.utime(folder / kept[0])  # (fresh: a download running now)
    recent = f".{name}.0000deadbeef.part"  # untouched for half an hour only: not stale yet
    (folder / recent).write_bytes(b"half")
    os.utime(folder / recent, (time.time() - 1800,) * 2)
    kept.append(recent)
    load_mnist(folder, mirrors=[serve(tmp_path / "site")], timeout=5)
    left = sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))
    assert left == sorted(kept)


def test_the_cleanup_never_fails_a_download(tmp_path, serve, monkeypatch):
    """After the file is in place, neither a folder that cannot be listed nor another download that placed the
    file first and removed ours as stale (this one stopped for over an hour) may make the download fail."""
    fake_mnist(tmp_path / "site")
    _use_hashes_of(tmp_path / "site", monkeypatch)
    base = serve(tmp_path / "site")

    def unlistable(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(datasets_download.os, "scandir", unlistable)
    assert len(datasets.download_mnist(tmp_path / "a", mirrors=[base], timeout=5)) == 4
    monkeypatch.undo()
    _use_hashes_of(tmp_path / "site", monkeypatch)
    real = datasets_download._fetch_one

    def overtaken(url, part, sha256, size, timeout):  # another process finishes first and removes our file
        real(url, part, sha256, size, timeout)
        name = url.rsplit("/", 1)[1]
        (part.parent / name).write_bytes((tmp_path / "site" / name).read_bytes())
        part.unlink()

    monkeypatch.setattr(datasets_download, "_fetch_one", overtaken)
    fetched = datasets.download_mnist(tmp_path / "b", mirrors=[base], timeout=5)
    assert [p.read_bytes() for p in fetched] == [(tmp_path / "site" / p.name).read_bytes() for p in fetched]
