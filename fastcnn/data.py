"""MNIST, Fashion-MNIST and CIFAR-10: find, download, verify and load the published files.

Each data set lives in its own folder under the data directory (``mnist/``, ``fashion-mnist/``,
``cifar10/``). MNIST and Fashion-MNIST are IDX files, as the published ``.gz`` files or
decompressed, each checked against the SHA-256 of its decompressed content, so a recompressed copy
(Debian ships one) is accepted and a corrupt one is not. CIFAR-10 is the publisher's *binary*
archive ``cifar-10-binary.tar.gz`` (records of a label byte and 32x32 red, green, blue planes:
nothing is unpickled), checked against its published MD5 and read straight from the archive in
memory, or the ``cifar-10-batches-bin/`` files extracted from it. Every problem raises
:class:`~fastcnn.errors.DataError` (or ``DataMissingError``) with a message naming the file, what
was wrong and what was expected.
"""

import gzip
import hashlib
import http.client
import io
import math
import os
import struct
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
from tqdm import tqdm

from .errors import ConfigError, DataError, DataMissingError
from .fileio import atomic_write
from .validate import as_float_pixels  # noqa: F401 - a data set's uint8 pixels, as float32

__all__ = [
    "CHECKSUMS",
    "CIFAR10_ARCHIVE",
    "CIFAR10_BATCHES",
    "CIFAR10_FOLDER",
    "CLASS_NAMES",
    "DATASETS",
    "ENV_VAR",
    "MIRRORS",
    "SPLITS",
    "as_float_pixels",
    "clear_cache",
    "data_dir",
    "image_folder",
    "load_dataset",
    "read_cifar10_batch",
    "read_idx",
]

ENV_VAR = "FASTCNN_DATA"

# The split -> (images, labels) file names, without ".gz"; both IDX data sets use the same names.
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# CIFAR-10's binary version: one archive holding a folder of batches of 10,000 records each.
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_BATCHES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}

# MNIST's: SHA-256 of the *decompressed* files: recompressed copies have other .gz sums but the
# same content. CIFAR-10's: the MD5 of the archive, because MD5 is the only sum its publisher gives
# (it catches a corrupt or truncated download, which is what it is for here; the extracted batches
# have no published sum, so only their structure is checked). A sum's length says its kind.
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
    "cifar10": {
        CIFAR10_ARCHIVE: "c32a1d4ab5d03f1284b67883e8d87530",  # https://www.cs.toronto.edu/~kriz/cifar.html
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
    "cifar10": [
        "https://www.cs.toronto.edu/~kriz/",
    ],
}

CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "cifar10": (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ),
}

IMAGE_SHAPES = {"mnist": (28, 28, 1), "fashion-mnist": (28, 28, 1), "cifar10": (32, 32, 3)}  # (H, W, C) of one image

TIMEOUT = 30  # seconds per network operation, not for the whole download
MAX_DOWNLOAD = 200 * 2**20  # the largest published file is CIFAR-10's 170 MB archive; more means a wrong URL

_GZIP_MAGIC = b"\x1f\x8b"
_UINT8 = 0x08
_CACHE_SIZE = 4  # converted splits kept in memory; MNIST train is 188 MB as float32, CIFAR-10's 614 MB
_HASHES = {32: ("md5", "MD5"), 64: ("sha256", "SHA-256")}  # a CHECKSUMS entry's hex digits -> its hash
_CIFAR10_RECORD = 1 + 3 * 32 * 32  # a label byte, then the red, green and blue 32x32 planes, row by row
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


def _check_sum(content, expected, label, what):
    """Raise ``DataError`` unless ``content`` has the checksum ``expected`` (MD5 or SHA-256, by its length)."""
    if len(expected) not in _HASHES:
        raise DataError(f"{label}: checksum {expected!r} is neither MD5 (32 hex digits) nor SHA-256 (64)")
    kind, kind_name = _HASHES[len(expected)]
    actual = hashlib.new(kind, content, usedforsecurity=False).hexdigest()  # integrity, not secrecy
    if actual != expected.lower():
        raise DataError(
            f"{label}: checksum mismatch: {kind_name} of {what} is {actual}, "
            f"expected {expected} (corrupt, or not the published file)"
        )


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
        _check_sum(content, expected_sha256, label, "the content")
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
    return _parse_idx(_decompress(_read_bytes(path), path), path, expected_sha256)


def _read_bytes(path):
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataMissingError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None


def read_cifar10_batch(content, label):
    """The images (N, 32, 32, 3) and labels (N,), both uint8, of one CIFAR-10 binary batch.

    ``content`` is the batch's bytes: N records of a label byte (0 to 9) and 3072 pixel bytes, the
    red 32x32 plane row by row, then green, then blue. ``label`` names the file in errors. The
    arrays are read-only views on ``content``.
    """
    if not content:
        raise DataError(f"{label}: empty, expected records of {_CIFAR10_RECORD} bytes")
    if len(content) % _CIFAR10_RECORD:
        whole, extra = divmod(len(content), _CIFAR10_RECORD)
        raise DataError(
            f"{label}: truncated or not a CIFAR-10 batch: {len(content)} bytes is {whole} records of "
            f"{_CIFAR10_RECORD} bytes (1 label + 3x32x32 pixels) and {extra} bytes over"
        )
    records = np.frombuffer(content, np.uint8).reshape(-1, _CIFAR10_RECORD)
    labels = records[:, 0]
    bad = labels > 9
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{label}: record {i} has label {labels[i]}, expected labels 0 to 9")
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


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
        f"{ENV_VAR} (or pass data_dir= in Python, --data-dir on the command line) to a folder that has a {name}/ "
        f"sub-folder with them"
    )


def _download(name, folder, filenames):
    """Download the files ``filenames`` of data set ``name`` into ``folder``, verified, or raise."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # removed again if nothing lands in them
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _missing_error(name, folder, filenames, f"cannot create the folder: {e.strerror or e}") from None
    try:
        _download_into(name, folder, filenames)
    except DataMissingError:
        for p in made:  # the deepest first
            try:
                p.rmdir()
            except OSError:  # not empty (a file came), or not ours to remove
                break
        raise


def _download_into(name, folder, filenames):
    for i, filename in enumerate(filenames):
        failures = []
        for mirror in MIRRORS[name]:
            url = mirror + filename
            try:
                raw = _fetch(url, filename)
                # Verify before anything touches the disk: a bad mirror must leave no file behind.
                _FORMATS[name].verify(name, filename, raw, url)
                with atomic_write(folder / filename, "wb") as f:
                    f.write(raw)
                break
            # URLError, HTTPError and timeouts are OSErrors; a malformed mirror URL is a ValueError.
            except (OSError, http.client.HTTPException, DataError, ValueError) as e:
                failures.append(f"{url}: {_short_reason(e)}")
        else:
            why = "download failed: " + ("; ".join(failures) or "no mirrors configured")
            raise _missing_error(name, folder, filenames[i:], why)


# --- the two ways data sets are stored ------------------------------------------------------------


def _find(folder, base):
    """The file on disk for ``base``, compressed or not, or None."""
    for candidate in (folder / f"{base}.gz", folder / base):
        if candidate.is_file():
            return candidate
    return None


def _idx_files(folder, split):
    """The images and labels files of ``split``, and the ``.gz`` names of those not on disk."""
    bases = SPLITS[split]
    paths = [_find(folder, base) for base in bases]
    return paths, [f"{base}.gz" for base, path in zip(bases, paths) if path is None]


def _idx_verify(name, filename, raw, label):
    _parse_idx(_decompress(raw, label), label, CHECKSUMS[name][filename.removesuffix(".gz")])


def _idx_read(name, split, paths):
    image_path, label_path = paths
    images = read_idx(image_path, CHECKSUMS[name][SPLITS[split][0]])
    labels = read_idx(label_path, CHECKSUMS[name][SPLITS[split][1]])
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{image_path}: images of shape {images.shape}, expected (N, 28, 28)")
    if labels.ndim != 1:
        raise DataError(f"{label_path}: labels of shape {labels.shape}, expected (N,)")
    if len(images) != len(labels):
        raise DataError(
            f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels; "
            "expected the same count"
        )
    if labels.max() > 9:
        raise DataError(f"{label_path}: label {int(labels.max())} found, expected labels 0 to 9")
    return images[..., None], labels


def _cifar10_files(folder, split):
    """The archive if it is there, else the extracted batches of ``split``; else the archive's name."""
    archive = folder / CIFAR10_ARCHIVE
    if archive.is_file():
        return [archive], []
    batches = [folder / CIFAR10_FOLDER / batch for batch in CIFAR10_BATCHES[split]]
    absent = [path.name for path in batches if not path.is_file()]
    if not absent:
        return batches, []
    extracted = [b for names in CIFAR10_BATCHES.values() for b in names if (folder / CIFAR10_FOLDER / b).is_file()]
    if extracted:  # extracted, but not whole (the test split is one batch): the archive would not be looked for
        raise DataError(f"{folder / CIFAR10_FOLDER}: has {', '.join(extracted)} but not {', '.join(absent)} "
                        f"({split}); extract {CIFAR10_ARCHIVE} again, or put the archive itself in {folder}")
    return [], [CIFAR10_ARCHIVE]


def _cifar10_verify(name, filename, raw, label):
    _check_sum(raw, CHECKSUMS[name][filename], label, "the file")


def _cifar10_members(path, batches, expected):
    """The bytes of each of ``batches`` in the archive at ``path``, read in memory (nothing is
    extracted to disk, so a member's name can't point anywhere)."""
    raw = _read_bytes(path)
    _check_sum(raw, expected, path, "the file")
    wanted = {f"{CIFAR10_FOLDER}/{batch}": batch for batch in batches}
    found = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            for member in tar:
                batch = wanted.get(member.name.removeprefix("./"))
                if batch is None:
                    continue
                if not member.isfile():
                    raise DataError(f"{path}: {member.name} is not a regular file, expected a CIFAR-10 batch")
                found[batch] = tar.extractfile(member).read()
                if len(found) == len(wanted):
                    break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable .tar.gz archive ({e}); expected {CIFAR10_ARCHIVE} "
                        f"as published") from None
    missing = [name for name, batch in wanted.items() if batch not in found]
    if missing:
        raise DataError(f"{path}: no member {', '.join(missing)}; expected the published archive's batches")
    return [(f"{path}:{CIFAR10_FOLDER}/{batch}", found[batch]) for batch in batches]


def _cifar10_read(name, split, paths):
    if paths[0].name == CIFAR10_ARCHIVE:
        contents = _cifar10_members(paths[0], CIFAR10_BATCHES[split], CHECKSUMS[name][CIFAR10_ARCHIVE])
    else:
        contents = [(path, _read_bytes(path)) for path in paths]
    batches = [read_cifar10_batch(content, label) for label, content in contents]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


class _Format(NamedTuple):
    """How a data set is stored: where a split's files are, how a download is checked, how they are read."""
    files: Callable  # (folder, split) -> (paths to read, names of files to download if some are missing)
    verify: Callable  # (name, filename, downloaded bytes, url) -> None, else DataError
    read: Callable  # (name, split, paths) -> (uint8 images (N, H, W, C), uint8 labels (N,)), all checked
    stored: str  # how the files may be stored, for the message when they are missing


_IDX = _Format(_idx_files, _idx_verify, _idx_read, "as .gz or raw")
_FORMATS = {
    "mnist": _IDX,
    "fashion-mnist": _IDX,
    "cifar10": _Format(_cifar10_files, _cifar10_verify, _cifar10_read,
                       f"the archive, or extracted: {CIFAR10_FOLDER}/*.bin"),
}


# --- loading --------------------------------------------------------------------------------------


def clear_cache():
    """Forget the arrays :func:`load_dataset` keeps in memory."""
    _cache.clear()


def _root(a):
    """The object whose memory ``a`` views (the array itself if it owns it)."""
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a


def _frozen(a):
    # A view of a read-only array can't be made writeable again, so the cache stays safe.
    return a.view()


def load_dataset(name="mnist", split="train", data_dir=None, download=True, pixels=False):
    """Load a split of MNIST, Fashion-MNIST or CIFAR-10 as ``(images, labels)``.

    ``images`` is float32 of shape (N, 28, 28, 1) (MNIST, Fashion-MNIST) or (N, 32, 32, 3)
    (CIFAR-10, RGB) in [0, 1], ``labels`` is int64 of shape (N,). Missing files are downloaded
    (unless ``download=False``) into ``data_dir(data_dir)/name/``. With ``pixels=True`` the images
    are the files' uint8 pixels 0-255, a quarter of the memory: ``fit``, ``evaluate`` and
    ``predict`` take them as they are and scale each batch as they read it, to the same float32
    numbers (``fastcnn train`` loads them so: CIFAR-10's training images are 154 MB, not 614).

    The converted arrays are cached in memory and returned **read-only** (views of the cached
    arrays that cannot be made writeable), so a caller can't corrupt what the next call returns;
    copy them (``images.copy()``) to modify them.
    """
    if not isinstance(name, str) or name not in CHECKSUMS:
        bare = lambda n: "".join(c for c in n.lower() if c.isalnum())  # MNIST, FashionMNIST, cifar-10
        meant = next((known for known in CHECKSUMS if isinstance(name, str) and bare(name) == bare(known)), None)
        raise ConfigError(f"unknown data set {name!r}; expected one of {', '.join(map(repr, CHECKSUMS))}"
                          + (f" (did you mean {meant!r}?)" if meant else ""))
    if not isinstance(split, str) or split not in SPLITS:
        held_out = " (fit holds out a validation split of train: validation_split=)" if split in ("val", "validation") else ""
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(map(repr, SPLITS))}{held_out}")
    form = _FORMATS[name]
    folder = _resolve_data_dir(data_dir) / name
    paths, missing = form.files(folder, split)
    if missing:
        if not download:
            raise _missing_error(name, folder, missing, f"{form.stored}; download=False")
        _download(name, folder, missing)
        paths, _ = form.files(folder, split)

    # Keyed on what determines the result, so a replaced file or a new checksum is read afresh.
    stats = tuple((s.st_size, s.st_mtime_ns) for s in (path.stat() for path in paths))
    key = (name, split, tuple(p.resolve() for p in paths), stats, tuple(sorted(CHECKSUMS[name].items())), pixels)
    if key in _cache:
        images, labels = _cache[key]
        return _frozen(images), _frozen(labels)

    raw_images, raw_labels = form.read(name, split, paths)
    # Each cached array owns its memory (astype last), or is a view of the immutable bytes the file
    # was read into (MNIST's pixels as they are: no copy, 0.04-0.15 s of a run): then marking it
    # read-only is final.
    if pixels and raw_images.flags.c_contiguous and isinstance(_root(raw_images), bytes):
        images = raw_images
    elif pixels:
        images = raw_images.astype(np.uint8, order="C", copy=True)
    else:
        images = raw_images.astype(np.float32, order="C")  # (N, H, W, C) in memory, whatever the file's order
        images /= 255  # exact at both ends: 0 -> 0.0, 255 -> 1.0
    labels = raw_labels.astype(np.int64)
    for a in (images, labels):
        a.flags.writeable = False
    while len(_cache) >= _CACHE_SIZE:
        del _cache[next(iter(_cache))]  # oldest first: dicts keep insertion order
    _cache[key] = (images, labels)
    return _frozen(images), _frozen(labels)


# --- checks on arrays handed to training and evaluation -------------------------------------------

# Image folders (one's own pictures) live in their own module; they are data sets too.
from .folders import image_folder  # noqa: E402
