"""Data augmentation in training: each image of a batch moved by its own random map, in a
compiled kernel (``kernels/augment.py``), as the batch is gathered.

``Augment(pad, flip, shift, degrees)``: random crops of the image padded with ``pad`` zeros each
way (a whole-pixel shift, an exact copy), horizontal flips (``flip``: not for digits), and small
random shifts (``shift`` pixels, continuous) and rotations (``degrees``), sampled bilinearly. The
maps are drawn from the run's seed, the epoch and the image's position in the epoch, so a resumed
run augments exactly as the uninterrupted one did (and data-parallel processes each draw their
own rows' maps). ``fit(augment=...)`` takes an ``Augment``, or one of the ``PRESETS``' names
(``fastcnn train --augment``), made for the images' size.
"""

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, ShapeError
from .kernels import checks
from .kernels.augment import augment_params
from .kernels.dropout import dropout_key

_STREAM = 2**32 - 2  # the seed's stream for augmentation (dropout's are the layers' positions)


@dataclass(frozen=True)
class Augment:
    """How each training image is moved: see the module's docstring."""

    pad: int = 0
    flip: bool = False
    shift: float = 0.0
    degrees: float = 0.0

    def __post_init__(self):
        try:
            checks.non_negative_int("pad", self.pad)
            checks.number("shift", self.shift, lambda v: 0 <= v <= 64, "pixels in [0, 64]")
            checks.number("degrees", self.degrees, lambda v: 0 <= v <= 180, "degrees in [0, 180]")
        except ShapeError as e:  # settings, not shapes
            raise ConfigError(str(e)) from None
        if not isinstance(self.flip, bool):
            raise ConfigError(f"flip: expected True or False, got {self.flip!r}")

    def rehearse(self):
        """Run the compiled kernel once on a tiny batch, for ``compiling`` to see its call."""
        from .kernels import compiled
        x = np.zeros((1, 2, 2, 1), np.float32)
        compiled.augment_into(np.empty_like(x), x, self.params(0, 0, 0, 1))

    def params(self, seed, epoch, first, n):
        """The maps (n, 6) of images ``first``..``first + n - 1`` of ``epoch`` in a run of ``seed``."""
        return augment_params(dropout_key(seed, epoch, _STREAM), first, n, self.pad, self.flip, self.shift,
                              self.degrees)


def _crop(shape, flip):
    return Augment(pad=max(1, min(shape[:2]) // 8), flip=flip)  # 3 pixels of 28, 4 of 32


# name -> (what it is, the Augment for images of a shape)
PRESETS = {
    "none": ("no augmentation", lambda shape: None),
    "crop": ("random crops of the image padded by an eighth of its side (3 pixels of 28)",
             lambda shape: _crop(shape, False)),
    "crop-flip": ("random crops, and horizontal flips (photos, clothes: not digits)", lambda shape: _crop(shape, True)),
    "shift-rotate": ("random shifts of up to 2 pixels and rotations of up to 10 degrees (digits)",
                     lambda shape: Augment(shift=2.0, degrees=10.0)),
}


def augmentation(augment, shape):
    """The ``Augment`` that ``augment`` (None, an ``Augment``, or a preset's name) means for images
    of ``shape`` (H, W, C), or None for none."""
    if augment is None:
        return None
    if not isinstance(augment, Augment) and not (isinstance(augment, str) and augment in PRESETS):
        raise ConfigError(f"augment: expected None, a fastcnn.Augment or one of {', '.join(PRESETS)}, got {augment!r}")
    if len(shape) != 3:
        raise ConfigError(f"augment: {augment!r} moves images (H, W, C); the examples have shape {tuple(shape)}")
    chosen = augment if isinstance(augment, Augment) else PRESETS[augment][1](tuple(shape))
    side = min(shape[:2])
    if chosen is not None and max(chosen.pad, chosen.shift) >= side:
        raise ConfigError(f"augment: {chosen} moves a {shape[0]}x{shape[1]} image by up to "
                          f"{max(chosen.pad, chosen.shift):g} pixels, so some would show nothing of it; "
                          f"expected pad and shift under {side} (an eighth of the side is usual)")
    return chosen
