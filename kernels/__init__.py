"""fastcnn's compute kernels: Numba-compiled, float32, NHWC; ``reference`` holds their NumPy twins.

Every function here has a twin of the same name and signature in ``kernels.reference``: the
checked ones (``conv2d_forward``, ...), which validate their arguments and allocate their results,
and the unchecked cores the execution plan calls (``conv2d_forward_into``, ...), which write into
the caller's buffers, outputs first.
"""

from .conv import conv2d_backward, conv2d_backward_into, conv2d_forward, conv2d_forward_into
from .conv_pool import (conv_relu_pool_backward, conv_relu_pool_backward_into, conv_relu_pool_forward,
                        conv_relu_pool_forward_into)
from .dense import (dense_backward, dense_backward_into, dense_forward, dense_forward_into, dense_relu_backward,
                    dense_relu_forward, relu_backward, relu_backward_into, relu_forward, relu_forward_into)
from .loss import softmax, softmax_cross_entropy, softmax_cross_entropy_into, softmax_into
from .optim import sgd_momentum, sgd_momentum_into
from .pool import maxpool_backward, maxpool_backward_into, maxpool_forward, maxpool_forward_into

CHECKED = [
    "conv2d_forward", "conv2d_backward", "conv_relu_pool_forward", "conv_relu_pool_backward",
    "maxpool_forward", "maxpool_backward", "dense_forward", "dense_backward", "dense_relu_forward",
    "dense_relu_backward", "relu_forward", "relu_backward", "softmax", "softmax_cross_entropy", "sgd_momentum",
]
CORES = [
    "conv2d_forward_into", "conv2d_backward_into", "conv_relu_pool_forward_into", "conv_relu_pool_backward_into",
    "maxpool_forward_into", "maxpool_backward_into", "dense_forward_into", "dense_backward_into",
    "relu_forward_into", "relu_backward_into", "softmax_into", "softmax_cross_entropy_into", "sgd_momentum_into",
]
__all__ = CHECKED + CORES
