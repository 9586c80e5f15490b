"""Train the original MNIST network on every core: the same as ``fastcnn train``.

    python train_mnist.py [--epochs 5] [--lr 0.05] [--threads N] [--out model.npz] [--resume] ...
    mpiexec -n K python train_mnist.py ...   # K processes, data-parallel (pip install 'fastcnn[mpi]')
"""

import sys

from fastcnn.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
