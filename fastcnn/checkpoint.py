"""Model files: one ``.npz`` that rebuilds a model without re-declaring its layers. This module
writes them (``save``); ``loading.py`` reads them back, checking every field.

A file holds the architecture (JSON: the layers, the seed, the input shape, a graph's edges),
every parameter and buffer (BatchNorm's running statistics), and optionally the optimizer (its type,
hyper-parameters, schedule, step count and state arrays) and the training state (settings,
epoch, position in the epoch, history). Nothing is pickled: JSON travels as a string array.
Files are written atomically, so a kill never leaves a torn one; a file that cannot be written
(a full disk) is written somewhere else, and the error says where.
"""

import errno
import itertools
import json
import shlex
import tempfile
from pathlib import Path

import numpy as np

from .errors import ModelFileError, UsageError
from .fileio import atomic_write
from .layers import Layer

FORMAT = "fastcnn-model"
VERSION = 2
READS = (1, 2)


def save(path, model, optimizer=None, training=None):
    """Write ``model`` (and ``optimizer``'s state, and a JSON-able ``training`` dict) to ``path``."""
    from .optim import not_made_for  # (optim imports the model, which imports this module)
    wrong = optimizer is not None and not_made_for(model, optimizer)
    if wrong:
        raise UsageError(f"{wrong}; the file could not be loaded with it")
    for i, layer in enumerate(model.layers):
        rebuildable(i, layer)
    arrays = {
        "format": np.array(FORMAT), "version": np.array(VERSION),
        "architecture": np.array(json.dumps(architecture(model))),
    }
    arrays.update({f"param/{name}": p for name, p in model.named_parameters()})
    arrays.update({f"buffer/{name}": b for name, b in model.named_buffers()})
    if optimizer is not None:
        arrays.update({f"optimizer/{name}": a for name, a in optimizer.state.items()})
        arrays["optimizer/config"] = np.array(json.dumps(optimizer.config()))
    if training is not None:
        arrays["training"] = np.array(json.dumps(training))
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path}: a folder of that name is in the way; give the model file's name, "
                             f"e.g. {path / 'model.npz'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # a new folder is made, as for fastcnn train --out
        _write(path, arrays)
    except OSError as e:
        rescued = _rescue(path, arrays)
        when = "when there is room" if e.errno in (errno.ENOSPC, errno.EDQUOT) else f"once {path.parent} takes it"
        where = (f"; it was written to {rescued} instead (move it back {when}: "
                 f"mv {shlex.quote(str(rescued))} {shlex.quote(str(path))})" if rescued else
                 f"; nor could it be written in {', '.join(str(f) for f in _rescue_folders())}")
        raise ModelFileError(f"{path}: cannot write the model file: {e.strerror or e}{where}") from None


def architecture(model):
    """What rebuilds ``model``'s layers: each layer's class and ``config()``, the seed, the input
    shape, and for a graph model each layer's inputs (``model.sources``)."""
    arch = {"layers": [[type(layer).__name__, layer.config()] for layer in model.layers],
            "seed": model.seed, "input_shape": model.input_shape}
    if not model.is_chain:
        arch["sources"] = [list(s) for s in model.sources]
    return arch


def _write(path, arrays):
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def _rescue_folders():
    return [Path(tempfile.gettempdir()), Path.home() / ".cache" / "fastcnn", Path.cwd()]


def _rescue(path, arrays):
    """Write a model file that could not be written to ``path`` (a full disk, a folder gone
    read-only) somewhere else: the first of the temporary folder, ``~/.cache/fastcnn`` and the
    working folder that takes it, as ``NAME.rescued.npz`` (``-2``, ``-3``... beside others). Returns
    where, or None."""
    for folder in _rescue_folders():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            target = next(t for t in (folder / f"{path.name}.rescued{f'-{k}' if k > 1 else ''}.npz"
                                      for k in itertools.count(1)) if not t.exists())
            _write(target, arrays)
            return target
        except OSError:
            continue
    return None


def rebuildable(i, layer):
    """A model file (and a copy or a pickle: ``Model.__reduce__``, ``Layer.__reduce__``) rebuilds
    each layer as ``type(layer)(**layer.config())``: refuse, up front, a layer of the user's own
    that can't be (no ``config()``, or not JSON). ``i``: its place in the model, or None."""
    if type(layer).__module__ == Layer.__module__:
        return  # the built-in layers can
    config = layer.config()
    try:
        json.dumps(config)
        type(layer)(**config)
    except (TypeError, ValueError) as e:
        where = f"layer {i} {layer!r}" if i is not None else repr(layer)
        raise UsageError(f"{where}: a model file, a copy or a pickle could not rebuild it from config() = "
                         f"{config!r} ({e}); a layer of your own returns its constructor's arguments from config()") from None
