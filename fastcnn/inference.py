"""Using a trained model: predict what a user's pictures show (a digit for a greyscale model, a
CIFAR-10 class for a colour one), and evaluate on a test set.

Both check what they are given first and raise ``ShapeError`` (arrays, arguments) or
``ImageError`` (pictures) naming the argument, what was expected and what came.
"""

import functools
import os

import numpy as np

from .errors import ShapeError
from .kernels import checks
from .model import checked, classes_scored, labelled_batch


def input_channels(model):
    """The colour channels of the images ``model`` takes, or None if it does not say: from its
    ``input_shape`` (H, W, C) if it has one, else from its first layer's ``in_channels`` (a Conv2D)."""
    shape = getattr(checked(model), "input_shape", None)
    if shape is not None:
        return int(shape[-1])
    channels = getattr(model.layers[0], "in_channels", None)
    return None if channels is None else int(channels)


def picture_loader(model, folder=False, dataset=None):
    """The function that reads a user's picture for ``model``: :func:`~fastcnn.image.load_photo`
    (a 32x32 colour photo) for a model of 3-channel images, :func:`~fastcnn.image.load_digit` (an
    MNIST-like 28x28 digit) for 1 channel, and for models that do not say (a first layer with no
    channels). ``folder``: the model was trained on an image folder (its file records class names
    of its own), so a picture is read as the folder's were, resized to the model's input
    (:func:`~fastcnn.folders.load_picture`). ``dataset`` "fashion-mnist": a garment, as
    Fashion-MNIST's images (:func:`~fastcnn.image.load_garment`). Every command that reads a
    user's picture chooses with this one function."""
    if folder:
        shape = getattr(checked(model), "input_shape", None)
        if shape is None or len(shape) != 3 or shape[2] not in (1, 3):
            raise ShapeError(f"model: expected one trained on images (H, W, 1 or 3), it takes {shape}")
        from .folders import load_picture
        return functools.partial(load_picture, image_size=tuple(shape[:2]), color="grey" if shape[2] == 1 else "rgb")
    from .image import load_digit, load_garment, load_photo  # here: SciPy's ndimage is a tenth of a second to import
    channels = input_channels(model)
    if dataset == "fashion-mnist" and channels in (1, None):
        return load_garment
    if channels == 3:
        return load_photo
    if channels in (1, None):
        return load_digit
    raise ShapeError(f"model: takes {channels}-channel images; pictures can be read for models of "
                     f"1 channel (digits) or 3 (colour photos)")


def predict_pictures(model, paths, dataset=None):
    """Read each picture as ``model`` needs it (:func:`picture_loader`; ``dataset`` "fashion-mnist"
    for a model trained on it: garments, not digits) and classify it.

    Returns ``(probabilities (N, classes), images)``: the images are what the model saw, (N, 28,
    28, 1) digits or garments, or (N, 32, 32, 3) photos.
    """
    return _predict(model, paths, picture_loader(model, dataset=dataset))


def predict_digits(model, paths):
    """Preprocess each picture like MNIST and classify it.

    Returns ``(probabilities (N, 10), images (N, 28, 28, 1))``: the images are what the model saw.
    """
    from .image import load_digit
    return _predict(model, paths, load_digit)


def _predict(model, paths, load):
    checked(model)
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise ShapeError(f"paths: expected a list of pictures, got one {type(paths).__name__}; wrap it: [path]")
    paths = list(paths)
    if not paths:
        raise ShapeError("paths: expected at least one picture, got none")
    images = np.stack([load(p) for p in paths])
    classes_scored(model, images.shape[1:], "paths")
    return model.predict(images), images


def evaluate(model, x, y, classes=None, batch_size=128):
    """Accuracy, per-class accuracy (NaN for a class with no image in ``y``), the confusion matrix
    (rows: true, columns: predicted), and the predicted classes and probabilities of every image.

    ``classes`` defaults to the model's number of outputs; if given it must equal it. Memory stays
    bounded in N beyond the (N, classes) results: ``model.predict`` runs ``batch_size`` at a time.
    """
    x, y, outputs = labelled_batch(model, x, y)
    if classes is not None and classes != outputs:
        raise ShapeError(f"classes: the model scores {outputs} classes, got classes={classes!r}")
    probs = model.predict(x, checks.positive_int("batch_size", batch_size))
    pred = probs.argmax(axis=1)
    confusion = np.zeros((outputs, outputs), np.int64)
    np.add.at(confusion, (y, pred), 1)
    counts = confusion.sum(axis=1)
    with np.errstate(invalid="ignore"):  # a class with no image has no accuracy: NaN, not 0
        per_class = np.diag(confusion) / counts
    return {"accuracy": float((pred == y).mean()), "per_class": per_class, "confusion": confusion,
            "predicted": pred, "probabilities": probs}
