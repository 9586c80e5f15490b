"""The named networks ``fastcnn train --model NAME`` builds, each with the recipe it trains with.

A recipe is the settings a run of that network takes unless told otherwise (see ``settings.py``).
Every network takes its input shape and number of classes from the data set, and infers the
sizes between its layers (``Sequential``'s ``input_shape``).
"""

from typing import Callable, NamedTuple

from .graph import Input
from .layers import (Add, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D, ReLU)
from .model import Model, Sequential


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


def resnet(input_shape, classes, width=32, blocks=(1, 1, 1)):
    """A residual network for small pictures, in the shape of He et al.'s CIFAR ResNets (2016): a
    3x3 convolution, three stages of residual blocks (``width``, twice and four times as many
    channels; the second and third start with a stride of 2, their shortcut a strided 1x1
    convolution with BatchNorm), global average pooling and the classifier. Returns the graph's
    input and output tensors."""
    x = Input(input_shape)
    h = ReLU()(BatchNorm2D()(Conv2D(width, 3, padding="same")(x)))
    for stage, n in enumerate(blocks):
        for block in range(n):
            h = _residual_block(h, width * 2 ** stage, 2 if stage and not block else 1)
    return x, Dense(classes)(GlobalAvgPool2D()(h))


def _residual_block(x, channels, stride):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)): two 3x3 convolutions beside the identity,
    or beside a 1x1 convolution where the size or the channels change."""
    h = ReLU()(BatchNorm2D()(Conv2D(channels, 3, stride=stride, padding=1)(x)))
    h = BatchNorm2D()(Conv2D(channels, 3, padding=1)(h))
    shortcut = x if stride == 1 and x.shape[-1] == channels else BatchNorm2D()(Conv2D(channels, 1, stride=stride)(x))
    return ReLU()(Add()([h, shortcut]))


class Architecture(NamedTuple):
    layers: Callable  # (input_shape, classes) -> the list of layers, or a graph's (input, output) tensors
    recipe: dict  # the settings its runs take by default
    about: str

    def build(self, input_shape, classes, seed=0, backend="numba"):
        made = self.layers(tuple(input_shape), classes)
        if isinstance(made, tuple):
            return Model(*made, seed=seed, backend=backend)
        return Sequential(made, seed=seed, backend=backend, input_shape=input_shape)


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
    "resnet": Architecture(resnet, dict(_ORIGINAL_RECIPE, epochs=30, batch_size=128, lr=0.1, schedule="cosine",
                                        weight_decay=5e-4, augment="auto"),
                           "a residual network (ResNet-8: three stages of one residual block, 32 to 128 "
                           "channels) trained with augmentation; SGD with a cosine schedule, 30 epochs"),
}


def mnist_network(seed=0, backend="numba"):
    """The original project's network for MNIST: Conv 3x3x32 pad 1, ReLU, MaxPool 2, Dense 128,
    ReLU, Dense 10."""
    return ARCHITECTURES["original"].build((28, 28, 1), 10, seed, backend)
