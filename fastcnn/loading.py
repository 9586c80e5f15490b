"""Reading model files (``checkpoint.save`` writes them): ``load`` (the model), ``load_checkpoint``
(the model, the optimizer and the training state), and ``check_training`` (a training state, as a
resumed run takes it).

A file is untrusted input: every field is checked for its type and shape before anything is
built from it, so a truncated, corrupt, foreign or hand-edited file is a ``ModelFileError`` naming
what is wrong, never a traceback. Version 1 files (before Adam and BatchNorm) still load.
Loading uses ``allow_pickle=False``: a file can hold no code.
"""

import contextlib
import dataclasses
import json
import math
import zipfile
from pathlib import Path

import numpy as np

from . import backends, fileio
from .checkpoint import FORMAT, READS
from .errors import ConfigError, ModelFileError, ShapeError
from .kernels import checks
from .layers import LAYERS, file_shapes, layer_from_config
from .model import Model, Sequential
from .optim import optimizer_from_config
from .settings import Settings


class Checkpoint:
    """What a model file holds: ``model``, ``optimizer`` (or None) and ``training`` (or None)."""

    def __init__(self, model, optimizer, training):
        self.model, self.optimizer, self.training = model, optimizer, training


# What damaged JSON or a damaged architecture raises while the model is rebuilt from it.
_DAMAGED = (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError, RecursionError)


@contextlib.contextmanager
def _fields_of(path):
    """Reading a file's fields: what damaged JSON, a damaged architecture or a field of the wrong
    type or out of range raises becomes a ``ModelFileError`` naming ``path``."""
    try:
        yield
    except ModelFileError:
        raise
    except (ShapeError, ConfigError) as e:  # named by the check that refused it
        raise ModelFileError(f"{path}: damaged model file: {e}") from None
    except _DAMAGED as e:
        raise ModelFileError(f"{path}: damaged model file: {type(e).__name__}: {e}") from None


def load_checkpoint(path, backend="numba"):
    """Read a file written by :func:`save`; a missing, truncated, corrupt or foreign file raises
    ``ModelFileError`` naming the file and the problem, whatever its bytes are."""
    backends.get(backend)  # an unknown backend is the caller's error, not a damaged file
    path, arrays = _read_file(path)
    with _fields_of(path):
        arch = json.loads(str(arrays["architecture"]))
        _check_shapes(arch["layers"], arrays, path)  # before the layers allocate anything
        layers = [layer_from_config(name, config) for name, config in arch["layers"]]
        if "sources" in arch:
            model = Model.from_layers(layers, arch["sources"], arch["input_shape"], arch["seed"], backend)
        else:
            model = Sequential(layers, seed=arch["seed"], backend=backend, input_shape=arch.get("input_shape"))
        _fill(model.named_parameters(), arrays, "param/", path)
        _fill(model.named_buffers(), arrays, "buffer/", path)
        optimizer = None
        if "optimizer/config" in arrays:
            optimizer = optimizer_from_config(model, json.loads(str(arrays["optimizer/config"])))
            _fill(optimizer.state.items(), arrays, "optimizer/", path)
    return Checkpoint(model, optimizer, load_training(path, arrays))


def load_training(path, arrays=None):
    """The training state a file written by :func:`save` holds (None if it holds none), read without
    building its model (``fastcnn history`` of a model with a layer of the user's own). ``arrays``:
    the file's, already read by ``_read_file``."""
    if arrays is None:
        path, arrays = _read_file(path)
    if "training" not in arrays:
        return None
    with _fields_of(path):
        training = check_training(json.loads(str(arrays["training"])))
        for record in training["history"]:  # version 1 validated on the test set and said so
            if isinstance(record, dict) and "test_acc" in record:
                record.setdefault("val_acc", record.pop("test_acc"))
                record.setdefault("val_loss", None)
    return training


def _read_file(path):
    """(path as a Path, every array of the model file at ``path``), its marker and version checked."""
    fileio.check_path("path", path, "a model file")
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.npz"))[:3]
        raise ModelFileError(f"{path}: a folder, not a model file" + (f" (it holds {', '.join(found)})" if found else ""))
    if not path.is_file():
        raise ModelFileError(f"{path}: " + ("not a file (a device, a pipe?): expected a model file" if path.exists()
                                            else "no such model file"))
    try:
        arrays = _read_npz(path)
    except ModelFileError:
        raise
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read: {e}") from None
    except Exception as e:  # noqa: BLE001 - zipfile and NumPy's header parser raise many kinds on bad bytes
        raise ModelFileError(f"{path}: truncated or corrupt model file ({type(e).__name__}: {e})") from None
    with _fields_of(path):
        if str(arrays.get("format", "")) != FORMAT:
            raise ModelFileError(f"{path}: not a fastcnn model file (no '{FORMAT}' marker); "
                                 f"was it saved by model.save()?")
        if arrays["version"].shape != () or int(arrays["version"]) not in READS:
            raise ModelFileError(f"{path}: model file version {arrays['version']}, "
                                 f"this fastcnn reads versions {', '.join(map(str, READS))}")
    return path, arrays


def _read_npz(path):
    """Every array of the .npz at ``path``, trusting none of its sizes.

    ``np.load`` allocates whatever an array's header claims before reading it; here a claim must
    fit in the file (``save`` stores arrays uncompressed), and each member is read to its end so
    zipfile checks its CRC. Object arrays are refused: loading them would unpickle.
    """
    size = path.stat().st_size
    arrays = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if not info.filename.endswith(".npy") or info.compress_type != zipfile.ZIP_STORED:
                raise ModelFileError(f"{path}: not a fastcnn model file: unexpected member {info.filename!r}")
            if info.file_size > size:
                raise ModelFileError(f"{path}: '{info.filename}' claims {info.file_size} bytes, the file has {size}")
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                         else np.lib.format.read_array_header_2_0(f))
                if dtype.hasobject:
                    raise ModelFileError(f"{path}: '{info.filename}' holds Python objects; refused (no pickles)")
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes > info.file_size:
                    raise ModelFileError(f"{path}: '{info.filename}' claims {nbytes} bytes, "
                                         f"the file holds {info.file_size}")
                data = f.read(nbytes)
                if len(data) != nbytes or f.read(1):
                    raise ModelFileError(f"{path}: '{info.filename}' is truncated or has trailing bytes")
            arrays[info.filename[:-4]] = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")
    return arrays


def _check_shapes(layers, arrays, path):
    """Every parameter the architecture declares is in the file with that shape."""
    for i, (name, config) in enumerate(layers):
        if name not in LAYERS:
            raise ModelFileError(f"{path}: unknown layer type {name!r}: if it is a layer of your own, import the "
                                 f"module that defines it (decorated with @fastcnn.register_layer) before loading")
        cls = LAYERS[name]
        params, buffers = file_shapes(cls, config)
        shapes = [(f"param/{i}.{p}", shape) for p, shape in params.items()]
        shapes += [(f"buffer/{i}.{b}", shape) for b, shape in buffers.items()]
        for key, shape in shapes:
            shape = tuple(shape)
            if not all(isinstance(d, int) and d >= 1 for d in shape):  # a size in the config out of range
                raise ModelFileError(f"{path}: damaged model file: layer {i} {name} has the config {config}, which "
                                     f"makes '{key}' of shape {shape}")
            if key not in arrays:
                raise ModelFileError(f"{path}: damaged model file: '{key}' is missing")
            a = arrays[key]
            if a.shape != shape or a.dtype != np.float32:
                raise ModelFileError(f"{path}: '{key}' is {a.dtype}{a.shape}, the architecture needs float32{shape}")


def check_training(training):
    """A training state (see ``fit.fresh_state``) with sane fields, or ``ShapeError``."""
    if not isinstance(training, dict) or not {"epoch", "batch", "totals", "history"} <= training.keys():
        raise ShapeError("training: expected a dict with epoch, batch, totals and history")
    checks.non_negative_int("training epoch", training["epoch"])
    checks.non_negative_int("training batch", training["batch"])
    totals = training["totals"]
    if (not isinstance(totals, list) or len(totals) != 4
            or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t >= 0
                       for t in totals)):
        raise ShapeError(f"training totals: expected [loss sum, correct, seen, seconds], got {totals!r}")
    if not isinstance(training["history"], list) or not isinstance(training.get("settings", {}), dict):
        raise ShapeError("training: expected a history list and a settings dict")
    for i, record in enumerate(training["history"]):
        _check_record(i, record)
    _check_settings(training.get("settings", {}))
    return training


# A history record, as fit writes one: these fields always, as numbers (epoch a count) ...
_RECORD = ("epoch", "loss", "train_acc", "seconds")
# ... and these as numbers or None, if there (version 1 files hold test_acc instead of val_acc)
_MAYBE = ("val_loss", "val_acc", "test_acc", "samples_per_s")


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_record(i, record):
    where = f"training history entry {i + 1}"
    if not isinstance(record, dict):
        raise ShapeError(f"{where}: expected a record of the epoch's loss and accuracy, got {type(record).__name__} "
                         f"{record!r:.40}")
    for key in _RECORD:
        if key not in record:
            raise ShapeError(f"{where}: '{key}' is missing")
    for key in _RECORD + _MAYBE:
        v = record.get(key)
        if key in _MAYBE and v is None:
            continue
        if not _is_number(v) or (key == "epoch" and (not isinstance(v, int) or v < 1)):
            raise ShapeError(f"{where}: '{key}' is {v!r:.40}, expected {'an epoch number' if key == 'epoch' else 'a number'}")


def _check_settings(settings):
    """Each setting the file records has its field's type (or is None); others are ignored."""
    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool)

    for f in dataclasses.fields(Settings):
        v = settings.get(f.name)
        kind, nargs = ("flag", None) if f.metadata["flag"] else (f.metadata["type"], f.metadata["nargs"])
        if kind == "flag":
            ok, expected = v is None or isinstance(v, bool), "true or false"
        elif nargs:  # (H, W): a list in the file's JSON, a tuple in memory
            ok, expected = v is None or (isinstance(v, (list, tuple)) and len(v) == nargs and all(map(whole, v))), \
                f"{nargs} whole numbers"
        else:
            ok = v is None or (isinstance(v, str) if kind is str else whole(v) if kind is int else _is_number(v))
            expected = {str: "a name", int: "a whole number", float: "a number"}[kind]
        if not ok:
            raise ShapeError(f"training settings: '{f.name}' is {v!r:.40}, expected {expected}")


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
