"""fastcnn's compute kernels: Numba-compiled, float32, NHWC; ``reference`` holds their NumPy twins.

Every function here has a twin of the same name and signature in ``kernels.reference``: the
checked ones (``conv2d_forward``, ...), which validate their arguments and allocate their results,
and the unchecked cores the execution plan calls (``conv2d_forward_into``, ...), which write into
the caller's buffers, outputs first.
"""

from .activations import (sigmoid_backward, sigmoid_backward_into, sigmoid_forward, sigmoid_forward_into,
                          tanh_backward, tanh_backward_into, tanh_forward, tanh_forward_into)
from .avgpool import (avgpool_backward, avgpool_backward_into, avgpool_forward, avgpool_forward_into,
                      global_avgpool_backward, global_avgpool_backward_into, global_avgpool_forward,
                      global_avgpool_forward_into)
from .batchnorm import (batchnorm_backward, batchnorm_backward_into, batchnorm_eval_forward,
                        batchnorm_eval_forward_into, batchnorm_forward, batchnorm_forward_into)
from .batchnorm_pool import (batchnorm_relu_pool_backward, batchnorm_relu_pool_backward_into,
                             batchnorm_relu_pool_forward, batchnorm_relu_pool_forward_into)
from .conv import (conv2d_backward, conv2d_backward_into, conv2d_forward, conv2d_forward_into, conv2d_moments_forward,
                   conv2d_moments_forward_into, conv2d_relu_forward, conv2d_relu_forward_into)
from .conv_pool import (conv_relu_pool_backward, conv_relu_pool_backward_into, conv_relu_pool_forward,
                        conv_relu_pool_forward_into)
from .dense import (dense_backward, dense_backward_into, dense_forward, dense_forward_into, dense_relu_backward,
                    dense_relu_forward, relu_backward, relu_backward_into, relu_forward, relu_forward_into)
from .dropout import (dropout_backward, dropout_backward_into, dropout_forward, dropout_forward_into,
                      dropout_key)
from .loss import softmax, softmax_cross_entropy, softmax_cross_entropy_into, softmax_into
from .optim import adam, adam_into, sgd_momentum, sgd_momentum_into
from .algorithms import paths  # which algorithm ran each convolution (not a kernel: no twin)
from .pool import maxpool_backward, maxpool_backward_into, maxpool_forward, maxpool_forward_into

CHECKED = [
    "conv2d_forward", "conv2d_relu_forward", "conv2d_moments_forward", "conv2d_backward", "batchnorm_relu_pool_forward",
    "batchnorm_relu_pool_backward", "conv_relu_pool_forward", "conv_relu_pool_backward",
    "maxpool_forward", "maxpool_backward", "avgpool_forward", "avgpool_backward", "global_avgpool_forward",
    "global_avgpool_backward", "dense_forward", "dense_backward", "dense_relu_forward", "dense_relu_backward",
    "relu_forward", "relu_backward", "tanh_forward", "tanh_backward", "sigmoid_forward", "sigmoid_backward",
    "batchnorm_forward", "batchnorm_eval_forward", "batchnorm_backward", "dropout_forward", "dropout_backward",
    "softmax", "softmax_cross_entropy", "sgd_momentum", "adam",
]
CORES = [
    "conv2d_forward_into", "conv2d_relu_forward_into", "conv2d_moments_forward_into", "conv2d_backward_into", "batchnorm_relu_pool_forward_into",
    "batchnorm_relu_pool_backward_into", "conv_relu_pool_forward_into", "conv_relu_pool_backward_into",
    "maxpool_forward_into", "maxpool_backward_into", "avgpool_forward_into", "avgpool_backward_into",
    "global_avgpool_forward_into", "global_avgpool_backward_into", "dense_forward_into", "dense_backward_into",
    "relu_forward_into", "relu_backward_into", "tanh_forward_into", "tanh_backward_into", "sigmoid_forward_into",
    "sigmoid_backward_into", "batchnorm_forward_into", "batchnorm_eval_forward_into", "batchnorm_backward_into",
    "dropout_forward_into", "dropout_backward_into", "softmax_into", "softmax_cross_entropy_into",
    "sgd_momentum_into", "adam_into",
]
# Neither checked nor a core: how a run makes the key of one dropout mask (the same in reference).
HELPERS = ["dropout_key"]
__all__ = CHECKED + CORES + HELPERS
