"""Image folders at scale: write Fashion-MNIST as a folder of PNGs, or a folder of many more
pictures, and measure what training on them costs (set-up time, peak memory).

    python benchmarks/image_folders.py fashion DIR               # DIR/train/<class>/*.png, DIR/test/<class>/*.png
    python benchmarks/image_folders.py many DIR --count 300000   # DIR/<class>/*.png: Fashion-MNIST's pictures,
                                                                 # shifted a pixel or two, until there are --count
    python benchmarks/image_folders.py check DIR                 # the folder's decoded pixels against the IDX files
    python benchmarks/image_folders.py gather DIR                # a batch read from the folder vs from memory
    python benchmarks/image_folders.py peak -- fastcnn train --data DIR ...   # the command's peak RSS

The pictures come from the IDX files in $FASTCNN_DATA/fashion-mnist (the class folders are named
after Fashion-MNIST's classes, "T-shirt/top" as "T-shirt-top"). ``peak`` runs the command and
prints its peak resident memory (the kernel's ru_maxrss of the child, which counts the pages of a
memory map that the process holds, not the page cache behind it) and its wall time.
"""

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fastcnn.data import CLASS_NAMES, load_dataset


def folder_names():
    return [name.replace("/", "-") for name in CLASS_NAMES["fashion-mnist"]]


def write(folder, images, labels, start=0):
    """Each picture as folder/<class>/<number>.png; returns the next number."""
    names = folder_names()
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels), start):
        Image.fromarray(image).save(folder / names[label] / f"{i:06d}.png")
    return start + len(labels)


def pixels(split):
    x, y = load_dataset("fashion-mnist", split)
    return np.round(x[..., 0] * 255).astype(np.uint8), y


def fashion(args):
    for split in ("train", "test"):
        x, y = pixels(split)
        write(args.dir / split, x, y)
        print(f"{args.dir / split}: {len(y):,} pictures")


def many(args):
    x, y = pixels("train")
    rng = np.random.default_rng(0)
    written, start = 0, 0
    while written < args.count:
        take = min(len(y), args.count - written)
        dy, dx = rng.integers(-2, 3, 2)
        shifted = np.roll(x[:take], (dy, dx), axis=(1, 2))
        start = write(args.dir, shifted, y[:take], start)
        written += take
        print(f"{args.dir}: {written:,} pictures", flush=True)


def check(args):
    """The decoded folder holds exactly the IDX pixels, picture for picture: class by class (in
    the folders' sorted order), each class's pictures in the order of their numbers."""
    from fastcnn.folders import image_folder
    folder = image_folder(args.dir)
    assert list(folder.classes) == sorted(folder_names()), folder.classes
    label_of = np.array([folder.classes.index(name) for name in folder_names()])
    for split in ("train", "test"):
        x, y = pixels(split)
        mine = getattr(folder, split)
        labels = label_of[y]
        order = np.lexsort((np.arange(len(y)), labels))
        same = np.array_equal(mine.images[..., 0], x[order]) and np.array_equal(mine.labels, labels[order])
        print(f"{split}: {len(mine.labels):,} pictures, {'identical to' if same else 'DIFFERENT from'} the IDX files")


def gather(args):
    """A training batch of 64 random rows: read from the folder's cache (as fit does) against
    taken from the same pictures as a float32 array in memory; medians of 5 rounds of 900 batches."""
    import time

    from fastcnn.data import as_float_pixels
    from fastcnn.folders import image_folder, row_reader
    images = image_folder(args.dir, verbose=False).train.images
    floats = np.asarray(images, np.float32) / 255
    take, raw = row_reader(images), np.empty((64, *images.shape[1:]), np.uint8)
    out = np.empty((64, *images.shape[1:]), np.float32)
    order = np.random.default_rng(0).permutation(len(images))[:64 * 900].reshape(900, 64)

    def rate(read):
        times = []
        for _ in range(5):
            started = time.perf_counter()
            for rows in order:
                read(rows)
            times.append((time.perf_counter() - started) / len(order))
        return sorted(times)[2]
    from_folder = rate(lambda rows: as_float_pixels(take(rows, raw), out))
    in_memory = rate(lambda rows: np.take(floats, rows, axis=0, out=out))
    print(f"a batch of 64: {from_folder * 1e3:.3f} ms from the folder, {in_memory * 1e3:.3f} ms from memory")


def peak(args):
    started = time.perf_counter()
    status = subprocess.call(args.command)
    seconds = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kB on Linux
    print(f"peak RSS {rss / 2**20:,.0f} MiB, {seconds:.1f} s, exit status {status}", file=sys.stderr)
    return status


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    for name, run in (("fashion", fashion), ("many", many), ("check", check), ("gather", gather)):
        s = sub.add_parser(name)
        s.add_argument("dir", type=Path)
        s.set_defaults(run=run)
        if name == "many":
            s.add_argument("--count", type=int, default=300_000)
    s = sub.add_parser("peak")
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(run=peak)
    args = p.parse_args()
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    return args.run(args)


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    from common import script
    sys.exit(script(main))
