"""fastcnn's compute kernels: Numba-compiled, float32, NHWC; ``reference`` holds their NumPy twins.

Every function here has a twin of the same name and signature in ``kernels.reference``.
"""

from .conv import conv2d_backward, conv2d_forward
from .dense import (dense_backward, dense_forward, dense_relu_backward, dense_relu_forward,
                    relu_backward, relu_forward)
from .loss import softmax_cross_entropy
from .optim import sgd_momentum
from .pool import maxpool_backward, maxpool_forward

__all__ = [
    "conv2d_forward", "conv2d_backward", "maxpool_forward", "maxpool_backward",
    "dense_forward", "dense_backward", "dense_relu_forward", "dense_relu_backward",
    "relu_forward", "relu_backward", "softmax_cross_entropy", "sgd_momentum",
]
