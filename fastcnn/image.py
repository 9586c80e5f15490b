"""Turn a user's picture of a digit into what an MNIST image looks like.

MNIST digits are white on black, scaled so the longer side of the ink is 20 pixels, and placed in a
28x28 field so that their centre of mass is at the centre. A photo or scan of a digit is usually
dark ink on light paper, any size, anywhere in the frame; :func:`preprocess_digit` applies the
same recipe so the network sees the kind of input it was trained on.
"""

import os
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, ShapeError
from .fileio import atomic_write

__all__ = ["MAX_PIXELS", "load_digit", "preprocess_digit", "save_preprocessed"]

MAX_PIXELS = 40_000_000  # a 40-megapixel photo is plenty for one digit; more is likely a bomb
SIZE = 28  # the MNIST field
BOX = 20  # the longer side of the ink in MNIST
INK_THRESHOLD = 0.1  # after normalising, fainter than this is paper texture or noise, not ink
MIN_CONTRAST = 0.1  # ink must differ from the background by this much, or the image is blank

# Errors Pillow raises on files it can't decode; which one depends on the format plug-in, and
# fuzzing found more than these (a TypeError from a damaged TIFF tag), so load_digit treats any
# exception from decoding as a bad file.
_PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


def _describe(source):
    if isinstance(source, (str, bytes, os.PathLike)):
        return os.fsdecode(source)
    return getattr(source, "name", None) or "<file object>"


def _to_grey(im):
    """Greyscale in [0, 1] as float32, transparent parts shown as white paper."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        # Transparent pixels often hold black RGB; on their own they would read as ink.
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im.convert("RGBA"))
    if im.mode.startswith("I;16"):
        return np.asarray(im, dtype=np.float32) / 65535
    if im.mode in ("I", "F"):
        # No fixed range for 32-bit images: stretch what is there to [0, 1].
        a = np.asarray(im, dtype=np.float64)
        lo, hi = a.min(), a.max()
        return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)).astype(np.float32)
    return np.asarray(im.convert("L"), dtype=np.float32) / 255


def load_digit(path_or_file):
    """Read a picture of one digit (any format Pillow reads) and preprocess it like MNIST.

    Returns float32 of shape (28, 28, 1) in [0, 1]. Raises ``ImageError`` if the file is missing,
    is not an image, is corrupt, is larger than ``MAX_PIXELS``, or shows no digit.
    """
    if not isinstance(path_or_file, (str, bytes, os.PathLike)) and not hasattr(path_or_file, "read"):
        raise ImageError(f"path_or_file: expected a path or a binary file object, got {type(path_or_file).__name__}")
    label = _describe(path_or_file)
    try:
        with warnings.catch_warnings():
            # Pillow only warns below twice its own limit; treat that as the refusal it should be.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path_or_file) as im:
                # Image.open reads only the header, so this check comes before any decoding.
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ImageError(
                        f"{label}: image of {w}x{h} = {w * h} pixels, expected at most {MAX_PIXELS}"
                    )
                im = ImageOps.exif_transpose(im)  # phones store portrait photos sideways
                grey = _to_grey(im)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{label}: image too large ({e}); expected at most {MAX_PIXELS} pixels") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image file Pillow can read") from None
    except _PILLOW_ERRORS as e:
        raise ImageError(f"{label}: cannot read the image: {e}") from None
    except Exception as e:  # noqa: BLE001 - see _PILLOW_ERRORS
        raise ImageError(f"{label}: cannot read the image ({type(e).__name__}: {e})") from None
    try:
        return preprocess_digit(grey)
    except (ImageError, ShapeError) as e:  # e.g. NaN pixels in a float TIFF: a bad file, named
        raise ImageError(f"{label}: {e}") from None


def _as_grey(grey):
    """Validate and convert to 2-D float32 in [0, 1]."""
    a = np.asarray(grey)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim != 2 or a.size == 0:
        raise ShapeError(f"expected a greyscale image of shape (H, W) or (H, W, 1), got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255
    if a.dtype.kind != "f":
        raise ShapeError(f"expected uint8 or floats in [0, 1], got dtype {a.dtype}")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise ShapeError(f"expected float values in [0, 1], got range [{a.min()}, {a.max()}]")
    return a.astype(np.float32)


def preprocess_digit(grey):
    """Apply the MNIST recipe to a greyscale picture of one digit.

    ``grey`` is uint8 (0-255) or float in [0, 1], shape (H, W) or (H, W, 1). The result is float32
    of shape (28, 28, 1) in [0, 1]: a white digit on black, the longer side of the ink 20 pixels,
    its centre of mass at (14, 14) (shifted less if needed to keep all the ink in the field).
    Raises ``ImageError`` if there is no ink, ``ShapeError`` if ``grey`` is not a greyscale image.
    """
    g = _as_grey(grey)
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    if border.mean() > 0.5:
        g = 1 - g  # dark ink on light paper: MNIST is the other way round
        border = 1 - border

    # The border is mostly paper: its median is the background level, whatever the lighting.
    ink = np.clip(g - np.median(border), 0, None)
    peak = ink.max()
    if peak < MIN_CONTRAST:
        raise ImageError("no digit found: the image is blank")
    ink /= peak
    ink[ink <= INK_THRESHOLD] = 0  # paper texture and compression noise, which MNIST doesn't have
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]

    h, w = crop.shape
    scale = BOX / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = Image.fromarray(np.ascontiguousarray(crop)).resize((new_w, new_h), Image.Resampling.LANCZOS)
    patch = np.asarray(resized)
    patch = np.clip(patch, 0, None)  # Lanczos rings slightly below zero beside strokes
    if patch.max() <= 0:
        raise ImageError("no digit found: the image is blank")
    # Shrinking averages thin strokes into grey; MNIST strokes reach full white.
    patch = patch / patch.max()

    total = patch.sum()
    cy = (patch.sum(axis=1) @ np.arange(new_h)) / total
    cx = (patch.sum(axis=0) @ np.arange(new_w)) / total
    # Whole-pixel shift, clamped so the patch (at most 20x20) always fits in the 28x28 field.
    top = int(np.clip(round(SIZE / 2 - cy), 0, SIZE - new_h))
    left = int(np.clip(round(SIZE / 2 - cx), 0, SIZE - new_w))
    out = np.zeros((SIZE, SIZE, 1), dtype=np.float32)
    out[top:top + new_h, left:left + new_w, 0] = patch
    return out


def save_preprocessed(arr, path):
    """Write a preprocessed (28, 28) or (28, 28, 1) image in [0, 1] as an 8-bit PNG, atomically."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.shape != (SIZE, SIZE) or a.dtype.kind not in "fiub":
        raise ShapeError(
            f"expected a (28, 28) or (28, 28, 1) image, got shape {np.shape(arr)}, dtype {a.dtype}"
        )
    pixels = np.round(np.clip(np.nan_to_num(a.astype(np.float64)), 0, 1) * 255).astype(np.uint8)
    try:
        with atomic_write(path, "wb") as f:
            Image.fromarray(pixels).save(f, format="PNG")
    except OSError as e:
        raise ImageError(f"{path}: cannot write the image: {e.strerror or e}") from None
    return path
