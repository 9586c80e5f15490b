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


def check_writable(path, need=0):
    """Raise ``OSError`` now if :func:`atomic_write` to ``path`` would fail later.

    Creates the folder if needed, then writes and syncs a small probe file there (a read-only or
    full disk fails at that point), and checks ``need`` bytes are free for the new file.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder of that name is in the way", str(path))
    folder = path.resolve().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file, not a folder", str(path))
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder) as probe:
        probe.write(bytes(4096))
        probe.flush()
        os.fsync(probe.fileno())
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OSError(errno.ENOSPC, f"{need:,} bytes needed, {free:,} free", str(folder))


def stale_temps(path):
    """The temporary files a killed :func:`atomic_write` to ``path`` may have left."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def remove_stale_temps(path):
    """Remove :func:`stale_temps` of ``path``; call only when nothing else writes ``path``."""
    for tmp in stale_temps(path):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
