"""Image folders: a data set of one's own pictures, one subfolder per class.

The layout is torchvision's ``ImageFolder`` and Keras's ``image_dataset_from_directory``::

    PATH/cat/001.jpg, PATH/dog/xyz.png, ...           the training pictures, one folder per class
    PATH/train/cat/..., PATH/test/cat/...             train/ and test/ (and val/ or validation/)
    PATH/cat/..., PATH/dog/..., PATH/test/cat/...     a test/ of class folders beside the classes

Class names are the folder names, in sorted order; pictures may sit in subfolders of a class folder.
A file counts as a picture by its extension (``PICTURE_EXTENSIONS``); other files are ignored and
counted, hidden ones (``.DS_Store``) silently, and so is what ``fastcnn predict
--save-preprocessed`` wrote beside a picture (``a.jpg.28x28.png`` beside ``a.jpg``). A picture
Pillow cannot read (truncated, not an image, zero bytes, over ``image.MAX_PIXELS``) is reported by
name and skipped; so is a class folder with no pictures. 16-bit PNGs are scaled to 8 bits (not
clipped), CMYK JPEGs converted to RGB, transparency shown on white, EXIF orientation applied.
Every picture is resized (stretched, with Lanczos filtering) to one ``image_size`` and read as
``grey`` (1 channel) or ``rgb`` (3);
by default the most common size of the pictures (shrunk to at most ``DEFAULT_MAX_SIDE`` on its
longer side) and grey if every picture is grey.

The pictures are decoded once, in parallel processes, into a cache of uint8 arrays on disk, and
read after that as memory-mapped arrays: a data set larger than memory trains (``fit`` takes
uint8 images, reads each batch's rows from the file with :func:`row_reader` and scales them as
it gathers them). The cache lives in ``cache_dir()``
(``$FASTCNN_CACHE``, else ``$XDG_CACHE_HOME/fastcnn/folders``, else ``~/.cache/fastcnn/folders``),
one folder per data set folder (named by a hash of its real path) and one entry per image size
and colour. Each entry records a fingerprint of the listing (every picture's path, size and
modification time), so a folder whose pictures changed is decoded again, and the size and
modification time of its own arrays, so an entry written to since is decoded again too; deleting
the cache folder is always safe.
"""

import array
import collections
import concurrent.futures
import contextlib
import hashlib
import json
import mmap
import multiprocessing
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .errors import ConfigError, DataError, ImageError
from .fileio import atomic_write
from .validate import as_float_pixels

__all__ = ["COLORS", "DEFAULT_MAX_SIDE", "ImageFolder", "PICTURE_EXTENSIONS", "Split", "cache_dir",
           "image_folder", "load_picture", "read_picture", "row_reader"]

# What counts as a picture by its name (torchvision's list, with GIF); anything else is ignored.
PICTURE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                                ".ppm", ".pgm", ".pbm", ".pnm"})
COLORS = ("grey", "rgb")
DEFAULT_MAX_SIDE = 64  # the default size's longer side at most: larger pictures are too slow for a CPU CNN
CACHE_ENV_VAR = "FASTCNN_CACHE"
CACHE_VERSION = 1  # bump when decoding changes: older entries are then decoded again
PARALLEL_FROM = 1000  # fewer pictures are decoded in this process: starting workers costs about a second
CHUNK = 256  # pictures per task sent to a worker
SPLIT_NAMES = ("train", "val", "test")  # val/ may also be called validation/
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_GREY_MODES = ("1", "L", "LA", "La", "I", "F")  # and the 16-bit I;16 modes


class Split(tuple):
    """One split of a data set: unpacks as the pair ``(images, labels)`` that ``fit`` and
    ``evaluate`` take, and carries the class ``names`` and the split's ``name`` ("train", "val",
    "test"). From an image folder, ``images`` is a read-only uint8 memory map (N, H, W, C)."""

    def __new__(cls, images, labels, classes=None, name=None):
        self = super().__new__(cls, (images, labels))
        self.classes = None if classes is None else tuple(classes)
        self.name = name
        return self

    @property
    def images(self):
        return self[0]

    @property
    def labels(self):
        return self[1]

    def __repr__(self):
        return (f"Split({self.name!r}: {len(self[1]):,} images of shape {tuple(self[0].shape[1:])}, "
                f"{len(self.classes) if self.classes else '?'} classes)")


class ImageFolder:
    """What :func:`image_folder` returns: the splits (``train``, and ``val`` and ``test`` or None),
    the ``classes``, the ``image_size`` (H, W) and ``color``, what was ``skipped`` (pairs of the
    picture's path and why), ``ignored`` files that are not pictures by name, the cache ``entry``
    folder, the ``fingerprint`` of the folder's listing, whether this call ``decoded`` the pictures
    (False: read from the cache) and the ``seconds`` the call took."""

    def __init__(self, root, manifest, splits, entry, decoded, seconds):
        self.root, self.entry, self.decoded, self.seconds = root, entry, decoded, seconds
        self.fingerprint = manifest["fingerprint"]
        self.classes = tuple(manifest["classes"])
        self.image_size = tuple(manifest["image_size"])
        self.color = manifest["color"]
        self.skipped = [tuple(s) for s in manifest["skipped"]]
        self.ignored = list(manifest["ignored"])
        self.empty = list(manifest["empty"])
        self.train, self.val, self.test = (splits.get(name) for name in SPLIT_NAMES)

    @property
    def shape(self):
        """One image's shape, (H, W, C)."""
        return (*self.image_size, 1 if self.color == "grey" else 3)

    def report(self, limit=10):
        """What was skipped or ignored, by name, in a few lines (empty if nothing was)."""
        lines = []
        if self.skipped:
            lines.append(f"skipped {len(self.skipped):,} picture{'s' * (len(self.skipped) != 1)} that cannot be read:")
            lines += [f"  {path}: {why}" for path, why in self.skipped[:limit]]
        if self.empty:
            lines.append(f"skipped {len(self.empty)} class folder{'s' * (len(self.empty) != 1)} with no pictures: "
                         + ", ".join(self.empty[:limit]))
        if self.ignored:
            one = len(self.ignored) == 1
            lines.append(f"ignored {len(self.ignored):,} " + ("file that is not a training picture: " if one else
                                                              "files that are not training pictures: ")
                         + ", ".join(self.ignored[:limit]))
        if len(self.skipped) > limit or len(self.empty) > limit or len(self.ignored) > limit:
            lines.append(f"  (all of them are listed in {self.entry / 'manifest.json'})")
        return lines

    def __repr__(self):
        splits = ", ".join(f"{s.name} {len(s[1]):,}" for s in (self.train, self.val, self.test) if s is not None)
        return (f"ImageFolder({str(self.root)!r}: {len(self.classes)} classes, {splits}; "
                f"{self.image_size[0]}x{self.image_size[1]} {self.color})")


def cache_dir():
    """Where decoded folders are kept: ``$FASTCNN_CACHE``, else ``$XDG_CACHE_HOME/fastcnn/folders``,
    else ``~/.cache/fastcnn/folders``."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fastcnn" / "folders"


def image_folder(path, image_size=None, color=None, *, cache=None, workers=None, verbose=True, progress=True):
    """The pictures under ``path`` (one subfolder per class) as uint8 arrays: an :class:`ImageFolder`.

    ``image_size`` (H, W) and ``color`` ("grey" or "rgb") say how every picture is read (default:
    from the pictures, see the module's notes). The first call decodes the pictures in ``workers``
    processes (default: one per core; below ``PARALLEL_FROM`` pictures, in this one) into the cache
    under ``cache`` (default :func:`cache_dir`); later calls check the folder's listing against it
    and map the arrays from there. ``verbose`` reports skipped pictures on stderr, and with
    ``progress`` shows a progress bar there too. Raises ``DataError`` for a folder with nothing to
    learn from (no class folders, no readable picture, one class only) and for a test or val split
    with a class the training pictures don't have, naming what it found.
    """
    started = time.perf_counter()
    image_size = _check_size(image_size)
    if color is not None and color not in COLORS:
        raise ConfigError(f"color: expected one of {', '.join(COLORS)}, got {color!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers: expected a positive number of processes, got {workers!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise DataError(f"path: expected a folder of pictures, got {type(path).__name__}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: {'no such folder' if not root.exists() else 'not a folder'}; expected a folder "
                        f"with one subfolder of pictures per class")
    listing = _list(root)
    home = Path(cache).expanduser() if cache is not None else cache_dir()
    folder_cache = home / hashlib.sha256(os.fsencode(root.resolve())).hexdigest()[:16]
    try:
        folder_cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{folder_cache}: cannot make the cache folder for {root} ({e.strerror or e}); set "
                        f"{CACHE_ENV_VAR} to a folder that can be written") from None
    with _locked(folder_cache / "lock"), _Workers(workers, listing["pictures"], progress) as pool:
        if image_size is None or color is None:
            image_size, color, listing = _defaults(root, listing, folder_cache, image_size, color, pool, verbose)
        entry = folder_cache / f"{image_size[0]}x{image_size[1]}-{color}"
        manifest = _valid_manifest(entry, listing["fingerprint"])
        decoded = manifest is None
        if decoded:
            if not listing["with_files"]:
                listing = _list(root, files=True)
            manifest = _decode_into(entry, root, listing, image_size, color, pool, verbose)
        splits = _open(entry, manifest)
    folder = ImageFolder(root, manifest, splits, entry, decoded, time.perf_counter() - started)
    if verbose:
        for line in folder.report():
            print(line, file=sys.stderr)
    return folder


def _check_size(image_size):
    if image_size is None:
        return None
    if (isinstance(image_size, (str, bytes)) or not hasattr(image_size, "__len__") or len(image_size) != 2
            or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and 1 <= d <= 4096
                       for d in image_size)):
        raise ConfigError(f"image_size: expected (height, width) in pixels, each 1 to 4096, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


# --- the listing -----------------------------------------------------------------------------------


def _subfolders(folder):
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise DataError(f"{folder}: cannot list it ({e.strerror or e})") from None


def _has_pictures(folder):
    return any(e.is_file() and Path(e.name).suffix.lower() in PICTURE_EXTENSIONS for e in os.scandir(folder))


def _holds_classes(folder):
    """A folder of class folders (a split), not a class folder of pictures."""
    return bool(_subfolders(folder)) and not _has_pictures(folder)


def _layout(root):
    """The splits under ``root``: {"train": folder, "val": folder, "test": folder}, the latter two
    only where they are, and the folders left out (neither a split nor a class)."""
    names = _subfolders(root)
    splits, classes_here = {}, "train" not in names or not _holds_classes(root / "train")
    if not classes_here:
        splits["train"] = root / "train"
    for name, aliases in (("val", ("val", "validation")), ("test", ("test",))):
        found = [a for a in aliases if a in names and _holds_classes(root / a)]
        if len(found) > 1:
            raise DataError(f"{root}: has both {found[0]}/ and {found[1]}/; expected one validation folder")
        if found:
            splits[name] = root / found[0]
    if classes_here:
        splits["train"] = root
    taken = {p.name for p in splits.values() if p != root}
    left_out = [] if classes_here else [n for n in names if n not in taken]
    return splits, taken, left_out


def _list(root, files=False):
    """A fingerprint of every picture of every split and class (its path, size and modification
    time): what the cache is checked against. With ``files``, also the pictures themselves: per
    split their paths relative to root and their labels (compact: 300,000 pictures take about 25
    MB); without, nothing is kept per picture, so checking a large folder against its cache takes
    little memory."""
    splits, taken, left_out = _layout(root)
    listing = {"splits": {}, "ignored": [f"{n}/ (not train, val or test)" for n in left_out], "empty": [],
               "with_files": files, "pictures": 0}
    digest = hashlib.sha256(f"fastcnn folders {CACHE_VERSION} {root.resolve()}".encode())
    for split, folder in splits.items():
        classes = [n for n in _subfolders(folder) if not (folder == root and n in taken)]
        digest.update(f"{split}\0{classes}\n".encode("utf-8", "surrogateescape"))
        paths, labels = [], array.array("i")
        for label, name in enumerate(classes):
            count = 0
            for rel, size, mtime in _pictures(folder / name, root, listing["ignored"]):
                digest.update(f"{rel}\0{label}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
                count += 1
                listing["pictures"] += 1
                if files:
                    paths.append(rel)
                    labels.append(label)
            if not count:
                listing["empty"].append(os.fspath((folder / name).relative_to(root)) + "/")
        listing["splits"][split] = {"classes": classes, "paths": paths, "labels": labels}
    if not listing["splits"]["train"]["classes"]:
        raise DataError(f"{root}: no class folders in it; expected one subfolder of pictures per class "
                        f"(e.g. {root}/cat/1.jpg, {root}/dog/2.jpg), or train/ and test/ folders of them")
    listing["fingerprint"] = digest.hexdigest()
    return listing


# What ``fastcnn predict --save-preprocessed`` writes beside a picture (``cli.use.preprocessed_path``):
# not a picture of the class, and a second copy of one when the picture is a training picture.
_PREPROCESSED = re.compile(r"(.+)\.\d+x\d+\.png", re.IGNORECASE)


def _pictures(folder, root, ignored):
    """(path relative to root, bytes, mtime in ns) of every picture under ``folder``, in sorted
    order, subfolders included; files that are not pictures by name go to ``ignored``."""
    seen = set()
    for here, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:  # a symbolic link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_here = os.path.relpath(here, root)
        present = set(names)
        for name in sorted(names):
            if name.startswith("."):
                continue
            rel = os.path.join(rel_here, name)
            if os.path.splitext(name)[1].lower() not in PICTURE_EXTENSIONS:
                ignored.append(rel)
                continue
            seen_of = _PREPROCESSED.fullmatch(name)
            if seen_of and seen_of.group(1) in present:  # a picture predicted from here, as the model saw it
                ignored.append(f"{rel} (fastcnn predict --save-preprocessed's copy of {seen_of.group(1)})")
                continue
            try:
                st = os.stat(os.path.join(here, name))
            except OSError:  # a dangling link: decoding will say so
                yield rel, -1, 0
                continue
            yield rel, st.st_size, st.st_mtime_ns


# --- reading one picture ------------------------------------------------------------------------


def read_picture(source, image_size, color, *, budget=None):
    """One picture (a path or a binary file) as uint8 (H, W, C), as image folders read it: upright
    (EXIF), transparency on white, 16-bit grey scaled to 8 bits, then converted to grey (C = 1) or
    RGB (C = 3) and resized to ``image_size`` (H, W) with Lanczos filtering. ``ImageError`` if it
    can't be read. ``budget``: a server's bound on decoded pictures (see ``image._read``)."""
    h, w = _check_size(image_size)
    if color not in COLORS:
        raise ConfigError(f"color: expected one of {', '.join(COLORS)}, got {color!r}")
    side = max(h, w)  # EXIF may turn the picture: a draft at least this large either way
    from .image import _read  # here: it loads SciPy's ndimage, a tenth of a second, for pictures only
    return _read(source, lambda im: _pixels(im, h, w, color), budget=budget, draft=(side, side))


def load_picture(source, image_size, color, *, budget=None, notes=None):
    """:func:`read_picture` as float32 in [0, 1]: what a model trained on an image folder takes
    (``notes``, as ``image.load_digit``'s: nothing to note here)."""
    return as_float_pixels(read_picture(source, image_size, color, budget=budget))


def _pixels(im, h, w, color):
    from .image import _to_pixels  # as in read_picture
    if im.mode.startswith(("I", "F")):  # 16- and 32-bit grey: scaled to 8 bits, never clipped
        im = Image.fromarray(np.round(_to_pixels(im)[:, :, 0] * 255).astype(np.uint8), "L")
    elif im.mode in _ALPHA_MODES or "transparency" in im.info:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im.convert("RGBA"))
    if color == "grey" and im.mode not in ("1", "L", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB ... to grey by way of RGB
    im = im.convert("L" if color == "grey" else "RGB")
    if im.size != (w, h):
        im = im.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(im, dtype=np.uint8).reshape(h, w, 1 if color == "grey" else 3)


def _survey(path):
    """(height, width, is grey) of the picture at ``path`` upright, from its header alone, or why not."""
    from .image import MAX_PIXELS, bombs_refused, too_large  # as in read_picture
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with bombs_refused(), Image.open(path) as im:
            h, w = im.height, im.width
            if w * h > MAX_PIXELS:
                return f"image of {w}x{h} = {w * h} pixels, expected at most {MAX_PIXELS}"
            if "exif" in im.info and im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # turned a quarter
                h, w = w, h
            grey = im.mode.startswith(_GREY_MODES) or (im.mode in ("P", "PA") and _grey_palette(im))
            return h, w, bool(grey)
    except UnidentifiedImageError:
        return "not an image file Pillow can read"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return too_large()
    except Exception as e:  # noqa: BLE001 - Pillow's plug-ins raise many kinds on bad headers
        return f"cannot read the image ({type(e).__name__}: {e})"


def _grey_palette(im):
    palette = np.asarray(im.getpalette() or [], np.uint8).reshape(-1, 3)
    return bool((palette == palette[:, :1]).all())


def _reason(error, path):
    text = str(error)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _survey_chunk(paths, root):
    """How many pictures of ``paths`` (under ``root``) have each (height, width), whether they are
    all grey, and (index, why) for those that can't be read: little to send back."""
    sizes, grey, bad = collections.Counter(), True, []
    for i, rel in enumerate(paths):
        found = _survey(os.path.join(root, rel))
        if isinstance(found, str):
            bad.append((i, found))
        else:
            sizes[found[:2]] += 1
            grey = grey and found[2]
    return sizes, grey, bad


def _decode_chunk(paths, root, image_size, color):
    """The pictures of ``paths`` (under ``root``) that can be read, as one uint8 array, and
    (index, why) for the rest."""
    h, w = image_size
    out = np.empty((len(paths), h, w, 1 if color == "grey" else 3), np.uint8)
    good, bad = 0, []
    for i, rel in enumerate(paths):
        path = os.path.join(root, rel)
        try:
            if os.path.getsize(path) == 0:
                raise ImageError("empty file (0 bytes)")
            out[good] = read_picture(path, image_size, color)
            good += 1
        except (ImageError, OSError) as e:
            bad.append((i, _reason(e, path)))
    return out[:good], bad


@contextlib.contextmanager
def _sigint_blocked():
    """SIGINT blocked in this thread, and so in the processes it starts, for their whole life (a
    blocked signal stays blocked across exec): Ctrl-C, sent to every process of the terminal's
    group, then stops only this one, which ends the workers; a worker it reached while importing
    printed a traceback of its own."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


class _Workers:
    """The processes that read pictures, started on first use and kept for the whole call (the
    headers, then every split): starting them costs about a second. By default one per core, or
    just this process below ``PARALLEL_FROM`` pictures."""

    def __init__(self, workers, pictures, progress=True):
        if workers is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            workers = cores if pictures >= PARALLEL_FROM else 1
        self.workers, self.progress = workers, progress
        self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if self._pool is None:
            return
        if kind is not None:  # (Ctrl-C): the workers don't see SIGINT, and the pool's own shutdown can then hang
            for process in list((self._pool._processes or {}).values()):
                process.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def map(self, function, paths, args, verbose, what):
        """``function(chunk, *args)`` for each ``CHUNK`` of ``paths``, in order; a progress bar on stderr."""
        chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
        with tqdm(total=len(paths), desc=what, unit=" pictures", disable=not (verbose and self.progress), leave=False,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            if self.workers <= 1 or len(chunks) <= 1:
                for chunk in chunks:
                    yield function(chunk, *args)
                    bar.update(len(chunk))
                return
            if self._pool is None:
                # spawn: training may have started threads, which fork copies badly
                self._pool = concurrent.futures.ProcessPoolExecutor(self.workers,
                                                                    mp_context=multiprocessing.get_context("spawn"))
            # A few chunks per worker in flight: results wait in order, and memory stays bounded.
            pending = collections.deque()
            for i, chunk in enumerate(chunks):
                with _sigint_blocked():  # submit starts the workers: they keep it blocked (see there)
                    future = self._pool.submit(function, chunk, *args)
                pending.append((len(chunk), future))
                while pending and (len(pending) >= 4 * self.workers or i == len(chunks) - 1):
                    size, future = pending.popleft()
                    yield future.result()
                    bar.update(size)


# --- the cache -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path):
    """One process at a time decodes or opens a folder's cache (two trainings, or MPI's processes)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _defaults(root, listing, folder_cache, image_size, color, pool, verbose):
    """The image size and colour left to the pictures, and the listing: they are remembered per
    listing in ``auto.json``, else read from every picture's header (the most common size, shrunk
    to at most ``DEFAULT_MAX_SIDE``; grey if every picture is)."""
    remembered = folder_cache / "auto.json"
    try:
        auto = json.loads(remembered.read_text())
        if auto["fingerprint"] != listing["fingerprint"]:
            raise ValueError("stale")
    except (OSError, ValueError, KeyError, TypeError):
        listing = _list(root, files=True)
        sizes, grey, bad = collections.Counter(), True, []
        for split in listing["splits"].values():
            start = 0
            for chunk_sizes, chunk_grey, chunk_bad in pool.map(_survey_chunk, split["paths"], (str(root),), verbose,
                                                               "reading picture sizes"):
                sizes.update(chunk_sizes)
                grey = grey and chunk_grey
                bad += [(split["paths"][start + i], why) for i, why in chunk_bad][:5 - len(bad)]
                start += CHUNK
        if not sizes:
            raise DataError(f"{root}: none of its {listing['pictures']:,} pictures can be read ("
                            + "; ".join(f"{rel}: {why}" for rel, why in bad)
                            + (" ..." if listing["pictures"] > len(bad) else "") + ")")
        (h, w), _ = sizes.most_common(1)[0]
        scale = min(1.0, DEFAULT_MAX_SIDE / max(h, w))
        auto = {"fingerprint": listing["fingerprint"], "color": "grey" if grey else "rgb",
                "image_size": [max(1, round(h * scale)), max(1, round(w * scale))], "common": [h, w],
                "sizes": len(sizes)}
        with contextlib.suppress(OSError), atomic_write(remembered, "w") as f:
            json.dump(auto, f)
        if verbose and image_size is None:
            (h, w), (ch, cw) = auto["image_size"], auto["common"]
            how = "all of them" if auto["sizes"] == 1 else f"the most common of {auto['sizes']} sizes"
            shrunk = f", shrunk to {h}x{w}" if (h, w) != (ch, cw) else ""
            print(f"{root}: pictures of {ch}x{cw} ({how}){shrunk}; --image-size H W (image_size=) chooses "
                  f"another", file=sys.stderr)
    return image_size or tuple(auto["image_size"]), color or auto["color"], listing


def _valid_manifest(entry, fingerprint):
    """The entry's manifest if it was made from this listing and its arrays are whole, else None."""
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
        if manifest.get("version") != CACHE_VERSION or manifest.get("fingerprint") != fingerprint:
            return None
        shape = (*manifest["image_size"], 1 if manifest["color"] == "grey" else 3)
        for name, count in manifest["counts"].items():
            if (entry / f"{name}.u8").stat().st_size != count * int(np.prod(shape)):
                return None
        if manifest["written"] != _written(entry, manifest["counts"]):  # changed since (or cut short)
            return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _written(entry, splits):
    """The size and modification time of each of the entry's arrays: one written to since it was
    made (a disk's fault, a program of another's) is decoded again, not read as pixels."""
    return {f"{split}{suffix}": [st.st_size, st.st_mtime_ns] for split in sorted(splits)
            for suffix in (".u8", ".labels.npy") for st in [(entry / f"{split}{suffix}").stat()]}


def _decode_into(entry, root, listing, image_size, color, pool, verbose):
    """Decode every picture into a new cache entry (written beside it, then swapped in)."""
    started = time.perf_counter()
    channels = 1 if color == "grey" else 3
    total = listing["pictures"]
    need = total * image_size[0] * image_size[1] * channels
    free = shutil.disk_usage(entry.parent).free
    if free < need + 2**20:
        raise DataError(f"{entry.parent}: {need:,} bytes needed to cache the decoded pictures of {root}, "
                        f"{free:,} free; set {CACHE_ENV_VAR} to a folder with room")
    for stale in entry.parent.glob(f".{entry.name}.*"):  # left by a decoding that was killed (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        skipped, labels = [], {}
        for split, content in listing["splits"].items():
            paths = content["paths"]
            kept = np.ones(len(paths), bool)
            with open(fresh / f"{split}.u8", "wb") as out:
                start = 0
                for images, bad in pool.map(_decode_chunk, paths, (str(root), image_size, color), verbose,
                                            f"decoding {split} pictures"):
                    images.tofile(out)
                    for i, why in bad:
                        kept[start + i] = False
                        skipped.append([paths[start + i], why])
                    start += len(images) + len(bad)
            labels[split] = np.asarray(content["labels"], np.int64)[kept]
        classes, labels = _classes(root, listing, labels)
        for split, y in labels.items():
            np.save(fresh / f"{split}.labels.npy", y)
        manifest = {"version": CACHE_VERSION, "root": os.fspath(root.resolve()), "fingerprint": listing["fingerprint"],
                    "image_size": list(image_size), "color": color, "classes": classes,
                    "counts": {split: len(y) for split, y in labels.items()}, "skipped": skipped,
                    "ignored": listing["ignored"], "empty": listing["empty"],
                    "seconds": time.perf_counter() - started, "written": _written(fresh, labels)}
        with atomic_write(fresh / "manifest.json", "w") as f:
            json.dump(manifest, f, indent=1)
        old = entry.with_name(fresh.name + ".old")
        if entry.exists():
            entry.rename(old)  # a process still reading the old arrays keeps its mapping
        fresh.rename(entry)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    if verbose:
        print(f"decoded {sum(manifest['counts'].values()):,} pictures of {root} in {manifest['seconds']:.1f} s "
              f"into {entry}", file=sys.stderr)
    return manifest


def _classes(root, listing, labels):
    """The class names that have pictures, and every split's labels renumbered to them."""
    names = listing["splits"]["train"]["classes"]
    counts = np.bincount(labels["train"], minlength=len(names))
    classes = [n for n, c in zip(names, counts) if c]
    if not classes:
        tried = len(listing["splits"]["train"]["paths"])
        raise DataError(f"{root}: no picture in it can be read ({tried:,} tried: see the skipped ones above)"
                        if tried else f"{root}: its class folders hold no pictures "
                        f"(expected files ending in {', '.join(sorted(PICTURE_EXTENSIONS))})")
    if len(classes) < 2:
        raise DataError(f"{root}: pictures of one class only ({classes[0]}); a classifier needs two or more "
                        f"class folders with pictures")
    out = {}
    for split, y in labels.items():
        own = listing["splits"][split]["classes"]
        index = {n: k for k, n in enumerate(classes)}
        unknown = sorted({own[k] for k in np.unique(y)} - set(index))
        if unknown:
            raise DataError(f"{root}: {split}/ has pictures of {', '.join(unknown)}, which the training pictures "
                            f"don't have (they have {', '.join(classes)})")
        if split != "train" and not len(y):
            raise DataError(f"{root}: no picture in its {split}/ folder can be read")
        out[split] = np.array([index.get(n, -1) for n in own], np.int64)[y] if len(y) else y
    return classes, out


def _open(entry, manifest):
    """Each split's images, memory-mapped read-only, and labels."""
    shape = (*manifest["image_size"], 1 if manifest["color"] == "grey" else 3)
    splits = {}
    for split, count in manifest["counts"].items():
        images = np.memmap(entry / f"{split}.u8", np.uint8, "r", shape=(count, *shape))
        labels = np.load(entry / f"{split}.labels.npy")
        labels.flags.writeable = False
        splits[split] = Split(images, labels, manifest["classes"], split)
    return splits


def row_reader(images):
    """A function ``take(rows, out)`` that copies ``images[rows]`` into ``out``, as ``np.take``.

    For a memory map of a whole file (what :func:`image_folder` gives), the rows are read from the
    file (``os.preadv``), not through the mapping: a random row touched through a mapping maps far
    more than the row into the process (the kernel maps whole folios around a fault, about 1.5 MB
    each on Linux 6.18), so a few batches would map the whole data set and count in its memory.
    Read with ``preadv``, the rows come from the kernel's page cache, which it lets go of under
    pressure: a data set larger than memory trains in the memory of a batch."""
    preadv = getattr(os, "preadv", None)
    if not (isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap) and images.flags.c_contiguous
            and preadv is not None):
        return lambda rows, out: np.take(images, rows, axis=0, out=out)
    fd = os.open(images.filename, os.O_RDONLY)
    start, size = images.offset, images[0].nbytes

    def take(rows, out):
        flat = out.reshape(len(out), -1)
        for k, row in enumerate(rows.tolist()):
            if preadv(fd, (flat[k],), start + row * size) != size:
                raise DataError(f"{images.filename}: shorter than its {len(images):,} images; decode the folder again")
        return out
    weakref.finalize(take, os.close, fd)  # the file is closed with the reader
    return take
