"""Model files: one ``.npz`` that rebuilds a model without re-declaring its layers.

It holds the architecture (JSON), every parameter, and optionally the optimizer state
(velocities, step count, hyper-parameters) and training state (epoch, position in the epoch,
seed, history). Nothing is pickled: JSON travels as a string array and loading uses
``allow_pickle=False``. Files are written atomically, so a kill never leaves a torn one.
"""

import json
import zipfile
from pathlib import Path

import numpy as np

from .errors import ModelFileError
from .fileio import atomic_write
from .layers import layer_from_config
from .model import Sequential
from .optim import SGD

FORMAT = "fastcnn-model"
VERSION = 1


def save(path, model, optimizer=None, training=None):
    """Write ``model`` (and ``optimizer``'s state, and a JSON-able ``training`` dict) to ``path``."""
    arrays = {
        "format": np.array(FORMAT), "version": np.array(VERSION),
        "architecture": np.array(json.dumps({
            "layers": [[type(layer).__name__, layer.config()] for layer in model.layers],
            "seed": model.seed})),
    }
    arrays.update({f"param/{name}": p for name, p in model.named_parameters()})
    if optimizer is not None:
        arrays["optimizer/velocity"] = optimizer.velocity
        arrays["optimizer/config"] = np.array(json.dumps(
            {"lr": optimizer.lr, "momentum": optimizer.momentum, "decay": optimizer.decay,
             "steps": optimizer.steps}))
    if training is not None:
        arrays["training"] = np.array(json.dumps(training))
    path = Path(path)
    try:
        with atomic_write(path) as f:
            np.savez(f, **arrays)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot write the model file: {e.strerror or e}") from None


class Checkpoint:
    """What a model file holds: ``model``, ``optimizer`` (or None) and ``training`` (or None)."""

    def __init__(self, model, optimizer, training):
        self.model, self.optimizer, self.training = model, optimizer, training


def load_checkpoint(path, backend="numba"):
    """Read a file written by :func:`save`; a missing, truncated, corrupt or foreign file raises
    ``ModelFileError`` naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, EOFError) as e:
        raise ModelFileError(f"{path}: truncated or corrupt model file ({e})") from None
    except ValueError as e:
        raise ModelFileError(f"{path}: not a fastcnn model file: {e}") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read: {e}") from None
    if str(arrays.get("format", "")) != FORMAT:
        raise ModelFileError(f"{path}: not a fastcnn model file (no '{FORMAT}' marker); was it saved by model.save()?")
    if int(arrays.get("version", -1)) != VERSION:
        raise ModelFileError(f"{path}: model file version {arrays.get('version')}, this fastcnn reads version {VERSION}")
    try:
        arch = json.loads(str(arrays["architecture"]))
        layers = [layer_from_config(name, config) for name, config in arch["layers"]]
        model = Sequential(layers, seed=arch["seed"], backend=backend)
        _fill(model.named_parameters(), arrays, "param/", path)
        optimizer = None
        if "optimizer/config" in arrays:
            config = json.loads(str(arrays["optimizer/config"]))
            optimizer = SGD(model, config["lr"], config["momentum"], config["decay"])
            optimizer.steps = int(config["steps"])
            _fill([("velocity", optimizer.velocity)], arrays, "optimizer/", path)
        training = json.loads(str(arrays["training"])) if "training" in arrays else None
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: damaged model file: {type(e).__name__}: {e}") from None
    return Checkpoint(model, optimizer, training)


def _fill(named, arrays, prefix, path):
    for name, target in named:
        key = prefix + name
        if key not in arrays:
            raise ModelFileError(f"{path}: damaged model file: '{key}' is missing")
        a = arrays[key]
        if a.shape != target.shape or a.dtype != np.float32:
            raise ModelFileError(f"{path}: '{key}' is {a.dtype}{a.shape}, the architecture needs float32{target.shape}")
        if not np.isfinite(a).all():
            raise ModelFileError(f"{path}: '{key}' holds NaN or Inf")
        target[...] = a


def load(path, backend="numba"):
    """The model saved in ``path``, ready to ``predict`` or train further."""
    return load_checkpoint(path, backend).model
