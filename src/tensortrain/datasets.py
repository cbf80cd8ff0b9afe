"""MNIST-style datasets: a strict IDX reader, a cache folder and verified downloads.

``tt.datasets.load_mnist()`` returns the four MNIST tensors. Files are looked up in one folder, chosen as:
the ``root`` argument, else the environment variable ``TENSORTRAIN_DATA``, else
``$XDG_CACHE_HOME/tensortrain/mnist`` (``~/.cache/tensortrain/mnist`` when ``XDG_CACHE_HOME`` is unset).
That folder holds the standard file names, gzipped (``train-images-idx3-ubyte.gz``) or plain
(``train-images-idx3-ubyte``). Missing files are downloaded into it (when ``download=True``) from a list of
mirrors, checked against the sha256 and size of the standard files and written atomically (temporary file,
then ``os.replace``), so an interrupted download never leaves a half-written file under the final name.
This module says what to fetch and where (names, hashes, sizes, mirrors, the folder); fetching one file
(streaming, limits, verification, atomic placement) is ``datasets_download``'s.

Files already on disk are not hashed (so Fashion-MNIST, which uses the same names, loads too); the IDX reader
checks them strictly instead: magic, dtype code, dimensions and the exact data size.
"""

from __future__ import annotations

import gzip
import numbers
import os
import sys
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from .datasets_download import DownloadError, fetch
from .operands import as_flag
from .shapes import is_finite

__all__ = [
    "MNIST",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "MNIST_SHA256",
    "MNIST_SIZES",
    "DownloadError",
    "IDXError",
    "default_data_dir",
    "download_mnist",
    "load_mnist",
    "read_idx",
]

#: Standard MNIST file stems, in the order of the ``MNIST`` fields.
MNIST_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: sha256 of the standard gzipped files (the ones LeCun's site and every mirror serve).
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "db8f937d487057fb14a9f0fbe97f0bc8d311ab41b750d41e1ff37c43b9e55e19",
    "train-labels-idx1-ubyte.gz": "51fc562b6747b666fbf6e84ce29d43c3cb5f9c388c664d43b33f02095313405a",
    "t10k-images-idx3-ubyte.gz": "cfeddb84311ecf044fc6a5b0f6ee8a24d265d4e83e388400186eb114082f4209",
    "t10k-labels-idx1-ubyte.gz": "e41c74e484045d39b462a7790a4af51301bd9b0b24f0154798d713ec68c45920",
}

#: Sizes in bytes of the same files: a mirror sending more is cut off at once, not written to the end.
MNIST_SIZES: dict[str, int] = {
    "train-images-idx3-ubyte.gz": 9_630_634,
    "train-labels-idx1-ubyte.gz": 28_902,
    "t10k-images-idx3-ubyte.gz": 1_602_073,
    "t10k-labels-idx1-ubyte.gz": 4_540,
}

#: Base URLs tried in order; override with ``mirrors=`` or ``TENSORTRAIN_MNIST_MIRRORS`` (comma-separated).
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

_DATA_ENV = "TENSORTRAIN_DATA"
_MIRRORS_ENV = "TENSORTRAIN_MNIST_MIRRORS"

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"); data is big-endian.
_IDX_DTYPES: dict[int, torch.dtype] = {
    0x08: torch.uint8,
    0x09: torch.int8,
    0x0B: torch.int16,
    0x0C: torch.int32,
    0x0D: torch.float32,
    0x0E: torch.float64,
}


class IDXError(ValueError):
    """A file is not a valid IDX file (bad magic, dtype code, dimensions or size); the message names it."""


class MNIST(NamedTuple):
    """The MNIST tensors, as stored in the IDX files (no scaling, no copies beyond decoding).

    Attributes:
        train_images: uint8, shape (60000, 28, 28), values 0..255.
        train_labels: int64, shape (60000,), values 0..9.
        test_images: uint8, shape (10000, 28, 28).
        test_labels: int64, shape (10000,).
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


# (the fields' own docstrings, which the API reference shows; a NamedTuple's default is "Alias for field number N")
MNIST.train_images.__doc__ = "uint8, shape (60000, 28, 28), values 0..255."
MNIST.train_labels.__doc__ = "int64, shape (60000,), values 0..9."
MNIST.test_images.__doc__ = "uint8, shape (10000, 28, 28), values 0..255."
MNIST.test_labels.__doc__ = "int64, shape (10000,), values 0..9."


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read one IDX file (gzipped or plain, detected from its first bytes) into a tensor.

    Args:
        path: the file.

    Returns:
        A CPU tensor with the file's dimensions and dtype (uint8, int8, int16, int32, float32, float64).

    Raises:
        IDXError: bad magic, unknown dtype code, zero dimensions, or data shorter/longer than the header says;
            also a truncated or corrupt gzip stream. The message names the file.
        FileNotFoundError: the file does not exist.

    Example:
        >>> labels = read_idx("mnist/t10k-labels-idx1-ubyte.gz")  # doctest: +SKIP
        >>> labels.shape  # doctest: +SKIP
        torch.Size([10000])
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IDXError(f"{path}: not an IDX file (bad magic {raw[:4].hex() or 'empty'}; expected 0000xxyy)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        valid = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise IDXError(f"{path}: unknown IDX dtype code 0x{code:02X} (valid: {valid})")
    if ndim == 0:
        raise IDXError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header} for {ndim} dims)")
    dims = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    dtype = _IDX_DTYPES[code]
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = itemsize
    for n in dims:
        expected *= n
    got = len(raw) - header
    if got != expected:
        kind = "truncated" if got < expected else "trailing bytes"
        raise IDXError(f"{path}: {kind}: dims {dims} of {dtype} need {expected} data bytes, found {got}")
    return _decode(bytearray(raw[header:]), dtype, itemsize).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    # EOFError: stream cut short; zlib.error (not an OSError): a corrupt deflate stream
    except (EOFError, OSError, gzip.BadGzipFile, zlib.error) as err:
        raise IDXError(f"{path}: corrupt or truncated gzip data ({err})") from err


def _decode(buf: bytearray, dtype: torch.dtype, itemsize: int) -> torch.Tensor:
    """Big-endian bytes -> a 1-D tensor of ``dtype`` in native byte order."""
    if not buf:
        return torch.empty(0, dtype=dtype)
    flat = torch.frombuffer(buf, dtype=torch.uint8)
    if itemsize > 1 and sys.byteorder == "little":
        flat = flat.reshape(-1, itemsize).flip(-1).reshape(-1)
    return flat.clone().view(dtype)


def default_data_dir() -> Path:
    """The folder ``load_mnist`` uses when no ``root`` is given.

    Returns:
        ``$TENSORTRAIN_DATA`` when set, else ``$XDG_CACHE_HOME/tensortrain/mnist`` (an absolute
        ``XDG_CACHE_HOME`` only, as the XDG spec says), else ``~/.cache/tensortrain/mnist``.
    """
    env = os.environ.get(_DATA_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(cache):  # the XDG spec: a relative (or empty) value is ignored
        cache = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "tensortrain" / "mnist"


def _mirrors(mirrors: Sequence[str] | None) -> tuple[str, ...]:
    if mirrors is None:
        env = os.environ.get(_MIRRORS_ENV, "")
        mirrors = [m for m in env.replace(" ", ",").split(",") if m] or MNIST_MIRRORS
    if isinstance(mirrors, str):
        raise TypeError("mirrors must be a sequence of base URLs, not one string")
    try:
        mirrors = tuple(mirrors)  # (a generator would be used up by the checks below)
    except TypeError:
        raise TypeError(f"mirrors must be a sequence of base URLs, got {type(mirrors).__name__}") from None
    if not mirrors:
        raise ValueError("mirrors is empty: give at least one base URL")
    for m in mirrors:
        if not isinstance(m, str):  # a Path would be joined as a URL and fail obscurely later
            raise TypeError(f"each mirror must be a str (a base URL), got {m!r}")
    return tuple(m if m.endswith("/") else m + "/" for m in mirrors)


def _check_timeout(timeout: float) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds, got {timeout!r}")
    # urllib takes 0 as non-blocking and rejects negative or NaN values only once it connects
    if not (is_finite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout}")
    # a socket cannot wait longer: its OverflowError came only once the download connected
    if timeout > threading.TIMEOUT_MAX:
        limit = f"{threading.TIMEOUT_MAX:.0f} seconds (threading.TIMEOUT_MAX)"
        raise ValueError(f"timeout must be at most {limit}, got {timeout}")


def root_folder(root: str | os.PathLike[str] | None) -> Path:
    """The folder ``load_mnist(root)`` reads: ``root`` with ``~`` expanded, else :func:`default_data_dir` (not
    checked: see ``_folder``)."""
    return Path(root).expanduser() if root is not None else default_data_dir()


def _folder(root: str | os.PathLike[str] | None) -> Path:
    """``root`` (or the default folder) as a Path; it may be missing but must not be something else."""
    if root is not None and os.fspath(root) == "":  # Path("") is the current folder: say so instead
        raise ValueError("root is an empty path; pass a folder, or None for $TENSORTRAIN_DATA / the cache")
    folder = root_folder(root)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder; the MNIST folder must be a directory")
    return folder


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    if (root / (stem + ".gz")).exists():  # found before a download, not after it by the final rename
        raise IsADirectoryError(
            f"{root / (stem + '.gz')} exists and is not a file; move it out of the MNIST folder"
        )
    return None


def download_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
) -> list[Path]:
    """Download the MNIST files missing from ``root``, verifying each against its sha256.

    Args:
        root: target folder (created if needed); ``None`` uses ``default_data_dir()``.
        mirrors: base URLs tried in order per file; ``None`` uses ``$TENSORTRAIN_MNIST_MIRRORS``
            (comma-separated) or ``MNIST_MIRRORS``.
        timeout: seconds each network wait may take (connecting, the reply, each read): a stalled mirror is
            left after about that long. The whole attempt (one file from one mirror) may take ``timeout`` plus
            the file's size at 16 KiB/s (about 10 minutes for the largest file), so a slow but steady link
            finishes, and a mirror that trickles or streams without end does not hold on forever. The next
            mirror is then tried.

    Returns:
        The paths of the files downloaded (empty when all were present).

    Raises:
        DownloadError: every mirror failed for some file (offline, HTTP error, timeout, a connection closed
            early, more bytes than the file has, or sha256 mismatch); the message lists each mirror with its
            error.
        NotADirectoryError: ``root`` exists and is not a folder.
        IsADirectoryError: a file's name in ``root`` is taken by something that is not a file (before any
            download).
        OSError: ``root`` cannot be created or written (e.g. ``PermissionError``); the message names it.
        TypeError: ``mirrors`` is one string or holds a non-string; ``timeout`` is not a number.
        ValueError: ``mirrors`` is empty; ``timeout`` is not a finite number > 0, or is above
            ``threading.TIMEOUT_MAX`` (about 292 years, the longest a socket waits).

    Example:
        >>> download_mnist("data/mnist")  # doctest: +SKIP
    """
    _check_timeout(timeout)
    folder = _folder(root)
    bases = _mirrors(mirrors)
    fetched: list[Path] = []
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # (deepest first)
    try:
        for stem in MNIST_FILES:
            if _find(folder, stem) is None:
                _make(folder)
                name = stem + ".gz"
                fetched.append(fetch(folder, name, MNIST_SHA256[name], MNIST_SIZES.get(name), bases, timeout))
    except BaseException:
        # a failed first download leaves no empty folders behind (a mistyped --data made some)
        if not fetched:
            for p in created:
                try:
                    p.rmdir()
                except OSError:
                    break
        raise
    return fetched


def _make(folder: Path) -> None:
    """``folder`` and its missing parents, or an OSError of mkdir's type that names ``folder`` (mkdir's own names
    the parent it failed on: ``PermissionError: '/nonexistent'`` for a HOME that cannot be written)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        where = "" if err.filename in (None, str(folder)) else f" at {err.filename}"
        msg = f"cannot create the MNIST folder ({err.strerror or err}{where})"
        raise type(err)(err.errno, msg, str(folder)) from err


def load_mnist(
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
) -> MNIST:
    """Load MNIST's train and test sets as tensors, downloading missing files if allowed.

    Args:
        root: folder holding the four IDX files (gzipped or plain); ``None`` uses ``$TENSORTRAIN_DATA``, else
            the cache folder (see ``default_data_dir``).
        download: fetch missing files from ``mirrors`` (sha256-checked, atomic writes).
        mirrors: base URLs for the download; see ``download_mnist``.
        timeout: seconds each network wait of a download may take; see ``download_mnist``.

    Returns:
        ``MNIST(train_images, train_labels, test_images, test_labels)``: images uint8 (N, 28, 28), labels
        int64 (N,) in 0..9.

    Raises:
        FileNotFoundError: files are missing and ``download=False``.
        DownloadError: files are missing and no mirror delivered them.
        IDXError: a file is corrupt, truncated, or not what MNIST needs (shape, dtype, label range); the
            message names it (a file present is never downloaded again: delete a bad one to fetch it anew).
        NotADirectoryError: ``root`` exists and is not a folder.
        OSError: ``root`` cannot be created or written while downloading; the message names it.
        TypeError, ValueError: bad ``mirrors`` or ``timeout`` (see ``download_mnist``).

    Example:
        >>> data = load_mnist("../shared/data/mnist")  # doctest: +SKIP
        >>> data.train_images.shape, data.test_labels.dtype  # doctest: +SKIP
        (torch.Size([60000, 28, 28]), torch.int64)
    """
    _check_timeout(timeout)
    # (checked whether or not a download is needed, as timeout is; a generator read once)
    if mirrors is not None:
        mirrors = _mirrors(mirrors)
    # ("no" is truthy: a download it says not to start)
    download = as_flag(download, "load_mnist", "download")
    folder = _folder(root)
    missing = [stem for stem in MNIST_FILES if _find(folder, stem) is None]
    if missing and not download:
        raise FileNotFoundError(
            f"MNIST files missing in {folder}: {', '.join(missing)} (as .gz or plain); "
            "pass download=True or point root / $TENSORTRAIN_DATA at a folder holding them"
        )
    if missing:
        download_mnist(folder, mirrors=mirrors, timeout=timeout)
    try:
        tr_x, tr_y, te_x, te_y = (_located(folder, stem) for stem in MNIST_FILES)
        train_images, test_images = _check_images(tr_x), _check_images(te_x)
        return MNIST(
            train_images,
            _check_labels(tr_y, len(train_images)),
            test_images,
            _check_labels(te_y, len(test_images)),
        )
    except IDXError as err:
        # a file present is read as it is, never fetched again: say how to replace a bad one
        how = "delete it to have it downloaded again" if download else "replace it with a good copy"
        raise IDXError(f"{err} ({how})") from None


def _located(folder: Path, stem: str) -> tuple[Path, torch.Tensor]:
    path = _find(folder, stem)
    if path is None:  # removed between the download and now
        raise FileNotFoundError(f"{folder / stem}(.gz) disappeared while loading")
    return path, read_idx(path)


def _check_images(found: tuple[Path, torch.Tensor]) -> torch.Tensor:
    path, x = found
    if x.dtype != torch.uint8 or x.dim() != 3 or tuple(x.shape[1:]) != (28, 28):
        raise IDXError(
            f"{path}: expected uint8 images of shape (N, 28, 28), found {x.dtype} {tuple(x.shape)}"
        )
    return x


def _check_labels(found: tuple[Path, torch.Tensor], n: int) -> torch.Tensor:
    path, y = found
    if y.dtype != torch.uint8 or y.shape != (n,):
        raise IDXError(f"{path}: expected {n} uint8 labels (one per image), found {y.dtype} {tuple(y.shape)}")
    if n and int(y.max()) > 9:
        raise IDXError(f"{path}: labels must lie in 0..9, found {int(y.max())}")
    return y.long()
