"""CPU time to read a picture (``fastcnn.image.load_digit``): the web page's drawings of MNIST test
digits (420x420 PNGs, ``tests/photos.page_drawing``) and the photos of ``tests/photos.py``; with
``--old``, another version of fastcnn/image.py beside this one, in the same run.

    git show f2f8485:fastcnn/image.py > /tmp/old_image.py
    FASTCNN_DATA=... python benchmarks/preprocess_speed.py --old /tmp/old_image.py
"""

import argparse
import io
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from photos import image_versions, page_drawing, photo_set  # noqa: E402


def cpu_ms(load, pictures, rounds):
    """The least CPU time per picture over ``rounds`` passes, in ms (a refused picture counts too)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for content in pictures:
            try:
                load(io.BytesIO(content))
            except Exception:  # noqa: BLE001 - a picture refused ("blank") took its time as well
                pass
        best = min(best, (time.process_time() - start) / len(pictures) * 1000)
    return best


def main():
    from fastcnn.data import load_dataset
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", help="another fastcnn/image.py to time beside this one")
    p.add_argument("--drawings", type=int, default=200)
    p.add_argument("--per-condition", type=int, default=20, help="photos of each kind")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    versions = {name: module.load_digit for name, module in image_versions(args.old, "before", "now").items()}
    x, y = load_dataset("mnist", "test")
    sets = {"the page's drawings (420x420 PNG)": [page_drawing(d) for d in x[:args.drawings]],
            "photos (tests/photos.py)": [c for _, _, c, _ in photo_set(x, y, args.per_condition, seed=5)]}
    warnings.simplefilter("ignore")  # tiny pictures say they are tiny
    for name, pictures in sets.items():
        times = {v: cpu_ms(load, pictures, args.rounds) for v, load in versions.items()}
        ratio = f" ({times['before'] / times['now']:.1f}x)" if "before" in times else ""
        print(f"{name}, {len(pictures)}: " + ", ".join(f"{v} {t:.1f} ms" for v, t in times.items())
              + f" of CPU each{ratio}")


if __name__ == "__main__":
    from common import script
    sys.exit(script(main))
