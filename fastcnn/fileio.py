"""Atomic file writes: a kill at any moment leaves the old file or the new one, never a torn one.

Every file fastcnn writes (model files and checkpoints, downloads, plots, preprocessed pictures)
goes through :func:`atomic_write`. Its temporary file is ``.NAME.<random>.tmp`` beside ``NAME``;
an exception removes it, but a SIGKILL or power cut during the write leaves it behind. Such a
file is never read; ``fastcnn train`` removes those of its ``--out`` when it starts
(:func:`remove_stale_temps`), since one training run owns its output file.
"""

import contextlib
import errno
import glob
import os
import shutil
import tempfile
from pathlib import Path

from .errors import FastCNNError, ImageError, ModelFileError


# The process's umask, read once at import (reading it means setting it, which is not thread-safe).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside ``path``; on success flush, fsync and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was. The new file
    gets the permissions a plain ``open`` would give it (the temporary file's are owner-only).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_path(name, path, what="a file"):
    """``ModelFileError`` unless ``path`` is a path (a string or ``os.PathLike``) of ``what``, naming the argument."""
    if not isinstance(path, (str, os.PathLike)):
        raise ModelFileError(f"{name}: expected the path of {what}, got {type(path).__name__} {path!r}")


def check_png_name(path):
    """Pictures are written as PNG: ``path`` must say so (``ImageError`` else), or a viewer going
    by the name would take the PNG data for a JPEG."""
    if not str(path).lower().endswith(".png"):
        raise ImageError(f"{path}: pictures are written as PNG; give a name ending in .png")


def taken(path):
    """Whether a file, or a link (a dangling one too), is at ``path``: what an output that must not
    replace finished work unasked refuses to find. A folder there is not one: ``check_writable``
    says what is wrong with it."""
    return os.path.lexists(path) and not os.path.isdir(path)


def check_writable(path, need=0):
    """Raise ``OSError`` now if :func:`atomic_write` to ``path`` would fail later.

    Creates the folder if needed, then writes and syncs a small probe file there, named as the
    temporary file will be (a read-only or full disk, or a name too long, fails at that point),
    and checks ``need`` bytes are free for the new file.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder of that name is in the way", str(path))
    folder = path.resolve().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file, not a folder", str(path))
    folder.mkdir(parents=True, exist_ok=True)
    # The probe is named as atomic_write's temporary file will be (14 characters longer than the
    # file's own name), so a name too long for the folder fails now, not when the work is done.
    fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(4096))
            f.flush()
            os.fsync(f.fileno())
    finally:
        with contextlib.suppress(FileNotFoundError):  # cleaned up as a stale temporary file already
            os.unlink(probe)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OSError(errno.ENOSPC, f"{need:,} bytes needed, {free:,} free", str(folder))


def check_writable_output(path, need=0):
    """``check_writable`` for a model file: a ``ModelFileError`` saying so, before the work that
    makes it (an epoch of training), not after."""
    try:
        check_writable(path, need)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot write there ({e.strerror or e}); choose another file (--out, fit's "
                             f"out=)") from None


def stale_temps(path):
    """The temporary files a killed :func:`atomic_write` to ``path`` may have left."""
    path = Path(path)
    found = path.parent.glob(f".{glob.escape(path.name)}.*.tmp")
    return sorted(p for p in found if not p.is_dir())  # (a folder of that name is not ours)


def remove_stale_temps(path):
    """Remove :func:`stale_temps` of ``path``; call only when nothing else writes ``path``."""
    for tmp in stale_temps(path):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# --- one writer per file ---------------------------------------------------------------------------

_HELD = {}  # lock path -> [open file, depth]: this process's locks (taking one twice is fine)


class FileLocked(FastCNNError):
    """Another process is writing the file (see :func:`exclusive`)."""


def lock_path(path):
    path = Path(path)
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def exclusive(path, holder):
    """Hold the lock on writing ``path`` (``.NAME.lock`` beside it) while the block runs, or raise
    :class:`FileLocked` naming the process that holds it. ``holder`` says who takes it (a command
    line), for that message.

    The lock is ``flock``'s: the system drops it when its process ends however it ends, so a killed
    run leaves no stale lock, only the empty file (reused by the next). Where there is no ``flock``
    (Windows), the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock = lock_path(path)
    key = os.path.abspath(lock)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    while True:
        f = open(lock, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            who = f.read().strip() or "another process"
            f.close()
            raise FileLocked(f"{path} is being written by process {who}; wait for it to finish or stop "
                             f"it, or choose another file") from None
        except BaseException:
            f.close()
            raise
        # The file may have been removed (and made anew) by the holder between our open and lock:
        # then the lock is on a file nobody else will look at; take the new one.
        try:
            same = os.path.samestat(os.fstat(f.fileno()), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()} ({holder})\n")
        f.flush()
        _HELD[key] = [f, 1]
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # still holding it: whoever opens the old file next sees it gone
        f.close()
