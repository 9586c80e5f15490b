"""MNIST and Fashion-MNIST: find, download, verify and load the IDX files.

Each data set lives in its own folder under the data directory (``mnist/``, ``fashion-mnist/``),
as the published ``.gz`` files or decompressed. Every file is checked against the SHA-256 of its
decompressed content, so a recompressed copy (Debian ships one) is accepted and a corrupt one is
not. Every problem raises :class:`~fastcnn.errors.DataError` (or ``DataMissingError``) with a
message naming the file, what was wrong and what was expected.
"""

import gzip
import hashlib
import http.client
import math
import os
import struct
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .errors import DataError, DataMissingError, ShapeError
from .fileio import atomic_write

__all__ = [
    "CHECKSUMS",
    "CLASS_NAMES",
    "DATASETS",
    "ENV_VAR",
    "MIRRORS",
    "SPLITS",
    "check_images",
    "check_labels",
    "clear_cache",
    "data_dir",
    "load_dataset",
    "read_idx",
]

ENV_VAR = "FASTCNN_DATA"

# The split -> (images, labels) file names, without ".gz"; both data sets use the same names.
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# SHA-256 of the *decompressed* files: recompressed copies have other .gz sums but the same content.
# Looked up at call time, so tests can swap in the sums of the small files they generate.
CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

DATASETS = tuple(CHECKSUMS)

# Tried in order; a failure of any kind (network, HTTP, bad content) moves on to the next one.
MIRRORS = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ],
}

CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
}

TIMEOUT = 30  # seconds per network operation, not for the whole download
MAX_DOWNLOAD = 100 * 2**20  # the largest published file is ~26 MB; more means a wrong URL

_GZIP_MAGIC = b"\x1f\x8b"
_UINT8 = 0x08
_CACHE_SIZE = 4  # converted splits kept in memory; MNIST train alone is 188 MB as float32
_cache = {}


def _decompress(raw, label):
    """The content of ``raw``: gunzipped if it starts with the gzip magic, else as it is."""
    # Decide by content, not by name: people gunzip files and keep the name, or the reverse.
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{label}: corrupt gzip stream ({e}); expected a valid gzip file") from None


def _parse_idx(content, label, expected_sha256=None):
    """Check the IDX header, length and checksum of decompressed ``content``; return the array."""
    if len(content) < 4:
        raise DataError(f"{label}: truncated: {len(content)} bytes, expected at least a 4-byte IDX header")
    zero1, zero2, dtype_code, ndim = content[:4]
    if zero1 != 0 or zero2 != 0:
        raise DataError(
            f"{label}: not an IDX file: magic bytes {content[:4].hex()}, expected 0000 then type and rank"
        )
    if dtype_code != _UINT8:
        raise DataError(f"{label}: unsupported IDX element type 0x{dtype_code:02x}, expected 0x08 (uint8)")
    if not 1 <= ndim <= 4:
        raise DataError(f"{label}: IDX header says {ndim} dimensions, expected 1 to 4")
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DataError(f"{label}: truncated: {len(content)} bytes, expected a {header}-byte IDX header")
    dims = struct.unpack(f">{ndim}I", content[4:header])
    if 0 in dims:
        raise DataError(f"{label}: IDX header has a zero dimension {dims}, expected positive sizes")
    shape = "x".join(map(str, dims))
    need = math.prod(dims)
    have = len(content) - header
    if have < need:
        raise DataError(f"{label}: truncated: header says {shape} = {need} bytes, file has {have}")
    if have > need:
        raise DataError(
            f"{label}: {have - need} trailing bytes: header says {shape} = {need} bytes, file has {have}"
        )
    if expected_sha256 is not None:
        actual = hashlib.sha256(content).hexdigest()
        if actual != expected_sha256.lower():
            raise DataError(
                f"{label}: checksum mismatch: SHA-256 of the content is {actual}, expected "
                f"{expected_sha256} (corrupt, or not the published file)"
            )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path, expected_sha256=None):
    """Read an IDX file of uint8 (gzip-compressed or raw) and return its array.

    Checks the header, that the length is exactly what the header says, and if given the SHA-256
    of the decompressed content. The array is read-only: it is a view on the file's bytes.
    Raises ``DataMissingError`` if the file is not there, ``DataError`` for any other problem.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise DataError(f"path: expected the path of an IDX file, got {type(path).__name__}")
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataMissingError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    return _parse_idx(_decompress(raw, path), path, expected_sha256)


def _resolve_data_dir(explicit):
    if explicit is not None and not isinstance(explicit, (str, os.PathLike)):
        raise DataError(f"data_dir: expected a folder path, got {type(explicit).__name__}")
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fastcnn"


def data_dir(explicit=None):
    """The folder holding the data sets: ``explicit``, else ``$FASTCNN_DATA``, else ``~/.cache/fastcnn``."""
    return _resolve_data_dir(explicit)


def _find(folder, base):
    """The file on disk for ``base``, compressed or not, or None."""
    for candidate in (folder / f"{base}.gz", folder / base):
        if candidate.is_file():
            return candidate
    return None


def _fetch(url, label):
    """Download ``url`` into memory with a progress bar on stderr."""
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        if total is not None and total > MAX_DOWNLOAD:
            raise DataError(f"{url}: {total} bytes, expected at most {MAX_DOWNLOAD}")
        chunks, size = [], 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=label, file=sys.stderr, leave=False) as bar:
            while chunk := response.read(1 << 16):
                size += len(chunk)
                if size > MAX_DOWNLOAD:
                    raise DataError(f"{url}: more than {MAX_DOWNLOAD} bytes, expected a data file")
                chunks.append(chunk)
                bar.update(len(chunk))
    return b"".join(chunks)


def _short_reason(error):
    """One short phrase for why a mirror failed."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    if isinstance(error, DataError):
        # Our messages read "<url>: <what>: <details>"; the <what> is enough here.
        parts = str(error).split(": ")
        return parts[1] if len(parts) > 1 else parts[0]
    return str(error) or type(error).__name__


def _missing_error(name, folder, files, why):
    return DataMissingError(
        f"{name}: missing {', '.join(files)} in {folder} ({why}). Put the files there, or set "
        f"{ENV_VAR} (or pass data_dir=) to a folder that has a {name}/ sub-folder with them"
    )


def _download(name, folder, bases):
    """Download the files ``bases`` of data set ``name`` into ``folder``, verified, or raise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = f"cannot create the folder: {e.strerror or e}"
        raise _missing_error(name, folder, [f"{b}.gz" for b in bases], why) from None
    for i, base in enumerate(bases):
        filename = f"{base}.gz"
        failures = []
        for mirror in MIRRORS[name]:
            url = mirror + filename
            try:
                raw = _fetch(url, filename)
                # Verify before anything touches the disk: a bad mirror must leave no file behind.
                _parse_idx(_decompress(raw, url), url, CHECKSUMS[name][base])
                with atomic_write(folder / filename, "wb") as f:
                    f.write(raw)
                break
            # URLError, HTTPError and timeouts are OSErrors; a malformed mirror URL is a ValueError.
            except (OSError, http.client.HTTPException, DataError, ValueError) as e:
                failures.append(f"{url}: {_short_reason(e)}")
        else:
            why = "download failed: " + ("; ".join(failures) or "no mirrors configured")
            raise _missing_error(name, folder, [f"{b}.gz" for b in bases[i:]], why)


def clear_cache():
    """Forget the arrays :func:`load_dataset` keeps in memory."""
    _cache.clear()


def _frozen(a):
    # A view of a read-only array can't be made writeable again, so the cache stays safe.
    return a.view()


def load_dataset(name="mnist", split="train", data_dir=None, download=True):
    """Load a split of MNIST or Fashion-MNIST as ``(images, labels)``.

    ``images`` is float32 of shape (N, 28, 28, 1) in [0, 1], ``labels`` is int64 of shape (N,).
    Missing files are downloaded (unless ``download=False``) into ``data_dir(data_dir)/name/``.

    The converted arrays are cached in memory and returned **read-only** (views of the cached
    arrays that cannot be made writeable), so a caller can't corrupt what the next call returns;
    copy them (``images.copy()``) to modify them.
    """
    if not isinstance(name, str) or name not in CHECKSUMS:
        raise DataError(f"unknown data set {name!r}; expected one of {', '.join(map(repr, CHECKSUMS))}")
    if not isinstance(split, str) or split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(map(repr, SPLITS))}")
    folder = _resolve_data_dir(data_dir) / name
    bases = SPLITS[split]
    missing = [b for b in bases if _find(folder, b) is None]
    if missing:
        if not download:
            raise _missing_error(name, folder, missing, "as .gz or raw; download=False")
        _download(name, folder, missing)
    image_path, label_path = (_find(folder, b).resolve() for b in bases)
    sums = tuple(CHECKSUMS[name][b] for b in bases)

    # Keyed on what determines the result, so a replaced file or a new checksum is read afresh.
    stats = [p.stat() for p in (image_path, label_path)]
    key = (image_path, label_path, tuple((s.st_size, s.st_mtime_ns) for s in stats), sums)
    if key in _cache:
        images, labels = _cache[key]
        return _frozen(images), _frozen(labels)

    raw_images = read_idx(image_path, sums[0])
    raw_labels = read_idx(label_path, sums[1])
    if raw_images.ndim != 3 or raw_images.shape[1:] != (28, 28):
        raise DataError(f"{image_path}: images of shape {raw_images.shape}, expected (N, 28, 28)")
    if raw_labels.ndim != 1:
        raise DataError(f"{label_path}: labels of shape {raw_labels.shape}, expected (N,)")
    if len(raw_images) != len(raw_labels):
        raise DataError(
            f"{image_path} has {len(raw_images)} images but {label_path} has {len(raw_labels)} labels; "
            "expected the same count"
        )
    if raw_labels.max() > 9:
        raise DataError(f"{label_path}: label {int(raw_labels.max())} found, expected labels 0 to 9")

    # astype last, so each cached array owns its memory: then marking it read-only is final.
    images = raw_images.reshape(-1, 28, 28, 1).astype(np.float32)
    images /= 255  # exact at both ends: 0 -> 0.0, 255 -> 1.0
    labels = raw_labels.astype(np.int64)
    for a in (images, labels):
        a.flags.writeable = False
    while len(_cache) >= _CACHE_SIZE:
        del _cache[next(iter(_cache))]  # oldest first: dicts keep insertion order
    _cache[key] = (images, labels)
    return _frozen(images), _frozen(labels)


# --- checks on arrays handed to training and evaluation -------------------------------------------

MAX_ABS_PIXEL = 10.0  # beyond this, images are almost surely unscaled 0-255 pixels
_CHUNK = 1000  # images checked at a time, so a check of 60,000 images needs no full-size temporary


def check_images(name, x):
    """``x`` as float32 images (N, H, W, C): finite, |value| <= ``MAX_ABS_PIXEL``, at least one.

    Other float dtypes (float64) are converted here, once: one float32 copy of the whole set
    (188 MB for MNIST's training images), not one per batch. Integer images are refused, as
    ``model.forward`` does: scale them to [0, 1] first (``x / 255``).
    Raises ``ShapeError`` naming ``name``, what was expected and what came (for NaN, Inf and values
    out of range: the index of the first such image).
    """
    if not isinstance(x, np.ndarray):
        raise ShapeError(f"{name}: expected a NumPy array of images (N, H, W, C), got {type(x).__name__}")
    if x.ndim != 4:
        hint = "; add the channel axis: x[..., None]" if x.ndim == 3 else ""
        raise ShapeError(f"{name}: expected 4 dimensions (N, H, W, C), got shape {x.shape}{hint}")
    if x.size == 0:
        raise ShapeError(f"{name}: expected at least one non-empty image, got shape {x.shape}")
    if x.dtype.kind in "biu":
        raise ShapeError(f"{name}: expected floating-point images in [0, 1], got dtype {x.dtype}; "
                         f"scale 0-255 pixels first: x / 255")
    if x.dtype.kind != "f":
        raise ShapeError(f"{name}: expected floating-point images in [0, 1], got dtype {x.dtype}")
    for start in range(0, len(x), _CHUNK):
        rows = x[start:start + _CHUNK].reshape(min(_CHUNK, len(x) - start), -1)
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():
            raise ShapeError(f"{name}: image {start + int(np.argmin(finite))} holds NaN or Inf; "
                             f"expected finite pixel values")
        big = np.abs(rows).max(axis=1) > MAX_ABS_PIXEL
        if big.any():
            i = start + int(np.argmax(big))
            raise ShapeError(f"{name}: image {i} has values in [{x[i].min():g}, {x[i].max():g}]; expected "
                             f"pixels scaled to about [0, 1] (|value| <= {MAX_ABS_PIXEL:g}): divide 0-255 by 255")
    return x if x.dtype == np.float32 else x.astype(np.float32)


def check_labels(name, y, n, classes):
    """``y`` as int64 class labels of shape (n,), each in 0..classes-1; else ``ShapeError``."""
    if not isinstance(y, np.ndarray):
        raise ShapeError(f"{name}: expected a NumPy array of integer labels, got {type(y).__name__}")
    if y.shape != (n,):
        raise ShapeError(f"{name}: expected shape ({n},), one label per image, got {y.shape}")
    if y.dtype.kind not in "iu":
        hint = "; convert them: y.astype(int)" if y.dtype.kind == "f" else ""
        raise ShapeError(f"{name}: expected integer class labels, got dtype {y.dtype}{hint}")
    bad = (y < 0) | (y >= classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ShapeError(f"{name}: label {y[i]} at index {i} is outside 0..{classes - 1}, the model's classes")
    return y.astype(np.int64, copy=False)
