"""The named networks ``fastcnn train --model NAME`` builds, each with the recipe it trains with.

A recipe is the settings a run of that network takes unless told otherwise (see ``settings.py``).
Every network takes its input shape and number of classes from the data set, and infers the
sizes between its layers (``Sequential``'s ``input_shape``).
"""

from typing import Callable, NamedTuple

from .layers import (BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D, ReLU)
from .model import Sequential


def original(input_shape, classes):
    """The original project's network: Conv 3x3x32 pad 1, ReLU, MaxPool 2, Dense 128, ReLU, Dense."""
    return [Conv2D(32, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(128), ReLU(), Dense(classes)]


def deep(input_shape, classes):
    """Two conv blocks with BatchNorm (32 then 64 channels), Dropout after them, a BatchNorm'd
    Dense 128 and Dropout before the classifier: for MNIST and Fashion-MNIST."""
    return [Conv2D(32, 3, padding="same"), BatchNorm2D(), ReLU(), MaxPool2D(2),
            Conv2D(64, 3, padding="same"), BatchNorm2D(), ReLU(), MaxPool2D(2), Dropout(0.25),
            Flatten(), Dense(128), BatchNorm1D(), ReLU(), Dropout(0.4), Dense(classes)]


def cifar(input_shape, classes):
    """Three conv blocks with BatchNorm (32, 64, 128 channels) and global average pooling: for
    CIFAR-10's colour images."""
    return [Conv2D(32, 3, padding="same"), BatchNorm2D(), ReLU(), MaxPool2D(2),
            Conv2D(64, 3, padding="same"), BatchNorm2D(), ReLU(), MaxPool2D(2),
            Conv2D(128, 3, padding="same"), BatchNorm2D(), ReLU(), GlobalAvgPool2D(),
            Dropout(0.2), Dense(classes)]


class Architecture(NamedTuple):
    layers: Callable  # (input_shape, classes) -> the list of layers
    recipe: dict  # the settings its runs take by default
    about: str

    def build(self, input_shape, classes, seed=0, backend="numba"):
        return Sequential(self.layers(tuple(input_shape), classes), seed=seed, backend=backend,
                          input_shape=input_shape)


_ORIGINAL_RECIPE = dict(dataset="mnist", epochs=5, batch_size=64, optimizer="sgd", lr=0.07, momentum=0.9,
                        schedule="inverse-time", decay=1e-3, weight_decay=0.0)

ARCHITECTURES = {
    "original": Architecture(original, _ORIGINAL_RECIPE,
                             "the original project's network and recipe (SGD, 5 epochs): 98.9% on MNIST"),
    "deep": Architecture(deep, dict(_ORIGINAL_RECIPE, epochs=15, lr=0.05, schedule="cosine", weight_decay=5e-4),
                         "two conv blocks with BatchNorm, Dropout; SGD with a cosine schedule, 15 epochs"),
    "cifar": Architecture(cifar, dict(_ORIGINAL_RECIPE, dataset="cifar10", epochs=30, lr=0.05, schedule="cosine",
                                      weight_decay=5e-4),
                          "three conv blocks with BatchNorm and global average pooling, for CIFAR-10"),
}


def mnist_network(seed=0, backend="numba"):
    """The original project's network for MNIST: Conv 3x3x32 pad 1, ReLU, MaxPool 2, Dense 128,
    ReLU, Dense 10."""
    return ARCHITECTURES["original"].build((28, 28, 1), 10, seed, backend)
