"""Photo-like pictures of real MNIST test digits, made in code: what a phone sees of a digit on paper.

Each condition of issue 10 is one function of ``(digit coverage, rng)`` that returns a page as
float RGB in [0, 1]; :func:`photo_set` renders digits under every condition, alternately as PNG
and JPEG, greyscale and RGB, and returns the encoded files. Everything is drawn from one seed,
so the set is the same on every run.
"""

import io
import warnings

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.morphology import disk, skeletonize

WHITE = np.array([1.0, 1.0, 1.0])
LUMA = np.array([0.299, 0.587, 0.114])  # what Pillow's convert("L") weighs R, G, B by


def coverage(digit, side):
    """The 28x28 MNIST digit (white on black) as ink coverage in [0, 1], ``side`` pixels square."""
    im = Image.fromarray(np.asarray(digit[..., 0], np.float32)).resize((side, side), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(im, np.float64), 0, 1)


def compose(cov, canvas, at, paper, ink):
    """A page of ``canvas`` (h, w) in colour ``paper`` with the digit's coverage blended in ``ink`` at ``at``."""
    h, w = canvas
    alpha = np.zeros((h, w))
    y, x = at
    alpha[y:y + cov.shape[0], x:x + cov.shape[1]] = cov
    paper = np.broadcast_to(np.asarray(paper, np.float64), (h, w, 3))
    return paper * (1 - alpha[..., None]) + np.asarray(ink, np.float64) * alpha[..., None]


def place(rng, canvas, side):
    """A random top-left corner that keeps a ``side``-square digit inside ``canvas``."""
    return int(rng.integers(0, canvas[0] - side + 1)), int(rng.integers(0, canvas[1] - side + 1))


def plain(digit, rng, paper=None, side=None, canvas=None):
    """A digit in dark ink on lightly tinted paper, somewhere on a phone-sized page."""
    canvas = canvas or (int(rng.integers(300, 420)), int(rng.integers(300, 480)))
    side = side or int(rng.integers(140, min(canvas) - 20))
    paper = WHITE * rng.uniform(0.8, 1.0) if paper is None else paper
    ink = paper * rng.uniform(0.05, 0.3)
    return compose(coverage(digit, side), canvas, place(rng, canvas, side), paper, ink)


def paper_brightness(digit, rng):
    level = rng.uniform(0.35, 1.0)  # from dim grey to white; the ink is 10% to 60% as bright
    paper = level * WHITE
    canvas = (360, 360)
    side = int(rng.integers(150, 300))
    return compose(coverage(digit, side), canvas, place(rng, canvas, side), paper, paper * rng.uniform(0.1, 0.6))


def lighting_gradient(digit, rng):
    page = plain(digit, rng)
    h, w, _ = page.shape
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:h, 0:w]
    t = (np.cos(angle) * xs / w + np.sin(angle) * ys / h)
    t = (t - t.min()) / (t.max() - t.min())
    dim = rng.uniform(0.25, 0.45)  # the darkest corner gets a quarter to 45% of the light
    light = dim + (1 - dim) * t
    return page * light[..., None]


def sensor_noise(digit, rng):
    page = plain(digit, rng)
    return page + rng.normal(0, rng.uniform(0.05, 0.12), page.shape[:2])[..., None]


def slight_blur(digit, rng):
    return ndimage.gaussian_filter(plain(digit, rng), (rng.uniform(1.5, 3.5),) * 2 + (0,))


def jpeg_artefacts(digit, rng):
    return plain(digit, rng)  # photo_set saves this one as a low-quality JPEG


def small_off_centre(digit, rng):
    canvas = (int(rng.integers(700, 900)), int(rng.integers(900, 1200)))
    return plain(digit, rng, side=int(rng.integers(50, 90)), canvas=canvas)


def sheet_on_table(digit, rng):
    h, w = 480, 640
    table = rng.uniform(0.15, 0.5) * np.array([1.0, rng.uniform(0.7, 0.95), rng.uniform(0.5, 0.8)])  # wood
    page = np.broadcast_to(table, (h, w, 3)).copy()
    sh, sw = int(h * rng.uniform(0.65, 0.85)), int(w * rng.uniform(0.55, 0.8))
    top, left = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
    page[top:top + sh, left:left + sw] = plain(digit, rng, side=int(rng.integers(120, min(sh, sw) - 20)),
                                               canvas=(sh, sw))
    return page


def ruled_line(digit, rng):
    h, w = 400, 400
    side = int(rng.integers(160, 240))
    top, left = int(rng.integers(10, h - side - 20)), int(rng.integers(0, w - side + 1))
    paper = WHITE * rng.uniform(0.85, 1.0)
    cov = coverage(digit, side)
    page = compose(cov, (h, w), (top, left), paper, paper * rng.uniform(0.05, 0.3))
    rows = np.flatnonzero(cov.max(axis=1) > 0.5)
    base = top + rows[-1] + int(rng.integers(-2, 8))  # on the baseline, or just under it
    spacing = int(rng.integers(40, 70))
    thick = int(rng.integers(2, 5))
    line = np.array([0.45, 0.55, 0.85]) * paper  # blue-grey rules, as on a school pad
    for y in range(base % spacing, h, spacing):
        page[y:y + thick] = np.minimum(page[y:y + thick], line)
    return page


def red_on_green(digit, rng):
    paper = np.array([rng.uniform(0.3, 0.45), rng.uniform(0.65, 0.8), rng.uniform(0.3, 0.45)])
    ink = np.array([0.95, rng.uniform(0.3, 0.5), 0.2])
    ink = np.clip(ink * (paper @ LUMA) / (ink @ LUMA), 0, 1)  # the same brightness: blank in grey
    side = int(rng.integers(150, 280))
    return compose(coverage(digit, side), (360, 360), place(rng, (360, 360), side), paper, ink)


def thin_pen(digit, rng):
    side = int(rng.integers(180, 300))
    centre = skeletonize(coverage(digit, side) > 0.5)
    stroke = ndimage.binary_dilation(centre, disk(int(rng.integers(1, 3))))  # 3 or 5 pixels wide
    cov = ndimage.gaussian_filter(stroke.astype(np.float64), 0.7)
    canvas = (400, 400)
    paper = WHITE * rng.uniform(0.8, 1.0)
    return compose(cov, canvas, place(rng, canvas, side), paper, paper * rng.uniform(0.05, 0.3))


def tiny(digit, rng):
    page = plain(digit, rng, side=int(rng.integers(60, 80)), canvas=(90, 90))
    return np.asarray(Image.fromarray(to_uint8(page)).resize((10, 10), Image.Resampling.BOX)) / 255


CONDITIONS = {
    "paper brightness": paper_brightness,
    "lighting gradient": lighting_gradient,
    "sensor noise": sensor_noise,
    "slight blur": slight_blur,
    "JPEG": jpeg_artefacts,
    "small, off-centre": small_off_centre,
    "sheet on a table": sheet_on_table,
    "ruled line": ruled_line,
    "red on green": red_on_green,
    "thin pen": thin_pen,
    "tiny 10x10": tiny,
}


def page_drawing(digit, pad=280, frame=420):
    """The bytes the web page sends for ``digit`` drawn on its pad: black strokes with an
    anti-aliased edge on a white ``pad`` x ``pad`` canvas, in a white ``frame`` x ``frame`` margin,
    as an opaque RGBA PNG (what a canvas's ``toBlob`` gives). The strokes are the MNIST digit's
    shape at the pad's scale: 20 to 30 pixels wide, as the page's 22-pixel pen makes them."""
    big = Image.fromarray(np.asarray(digit[..., 0], np.float32)).resize((2 * pad, 2 * pad), Image.Resampling.BICUBIC)
    shape = Image.fromarray((np.asarray(big) > 0.4).astype(np.float32)).resize((pad, pad), Image.Resampling.BOX)
    page = np.full((frame, frame), 255, np.uint8)
    at = (frame - pad) // 2
    page[at:at + pad, at:at + pad] = np.round(255 * (1 - np.clip(np.asarray(shape), 0, 1)))
    buf = io.BytesIO()
    Image.fromarray(np.dstack([page, page, page, np.full_like(page, 255)]), "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def to_uint8(page):
    return np.round(np.clip(page, 0, 1) * 255).astype(np.uint8)


def encode(page, fmt, grey, quality):
    """The page as the bytes of a PNG or JPEG file, greyscale or RGB."""
    im = Image.fromarray(to_uint8(page))
    if grey:
        im = im.convert("L")
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def photo_set(x, y, per_condition, seed=0):
    """``per_condition`` photos of MNIST digits ``x`` (labels ``y``) under each condition.

    Returns a list of ``(condition, file name, file bytes, label)``. The digits are drawn at
    random from ``x``; every other photo is a JPEG and every other pair greyscale (red on green is
    always RGB: in grey it is blank by design).
    """
    rng = np.random.default_rng(seed)
    photos = []
    for c, (condition, make) in enumerate(CONDITIONS.items()):
        for k in range(per_condition):
            i = int(rng.integers(len(x)))
            page = make(x[i], rng)
            fmt = "JPEG" if k % 2 or condition == "JPEG" else "PNG"
            quality = int(rng.integers(15, 40)) if condition == "JPEG" else int(rng.integers(70, 95))
            grey = (k // 2) % 2 == 1 and condition != "red on green"
            name = f"{c:02d}-{condition.split()[0].strip(',')}-{k:03d}-{i}.{'jpg' if fmt == 'JPEG' else 'png'}"
            photos.append((condition, name, encode(page, fmt, grey, quality), int(y[i])))
    return photos


def accuracy_table(model, photos, preprocess):
    """Per condition: (photos read right, photos) with ``preprocess(file) -> (28, 28, 1)``;
    a picture the preprocessing refuses counts as read wrong."""
    seen, truth, conditions = [], [], []
    for condition, name, content, label in photos:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tiny pictures say they are tiny
                seen.append(preprocess(io.BytesIO(content)))
        except Exception:  # noqa: BLE001 - a refusal ("blank") is a wrong answer here
            seen.append(None)
        truth.append(label)
        conditions.append(condition)
    ok = [s is not None for s in seen]
    pred = np.full(len(seen), -1)
    if any(ok):
        pred[ok] = model.predict(np.stack([s for s in seen if s is not None])).argmax(axis=1)
    right = pred == np.array(truth)
    table = {}
    for condition, r in zip(conditions, right):
        n_right, n = table.get(condition, (0, 0))
        table[condition] = (n_right + int(r), n + 1)
    return table


def image_versions(old_path, old_name, new_name):
    """{name: image module}: this checkout's fastcnn.image, after another fastcnn/image.py at
    ``old_path`` (if given), to compare the two."""
    import importlib.util

    from fastcnn import image
    versions = {new_name: image}
    if old_path:
        spec = importlib.util.spec_from_file_location("fastcnn._old_image", old_path)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        versions = {old_name: old, **versions}
    return versions


def main():
    """Print the photo-set accuracy per condition of this checkout's preprocessing and, with
    ``--old image.py``, of another version of fastcnn/image.py beside it."""
    import argparse

    from fastcnn import load
    from fastcnn.data import load_dataset

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("model")
    p.add_argument("--per-condition", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--old", help="another fastcnn/image.py to compare with")
    p.add_argument("--save", help="folder to write the photos into, to look at them")
    args = p.parse_args()
    model = load(args.model)
    x, y = load_dataset("mnist", "test")
    photos = photo_set(x, y, args.per_condition, args.seed)
    if args.save:
        import pathlib
        folder = pathlib.Path(args.save)
        folder.mkdir(parents=True, exist_ok=True)
        for _, name, content, _ in photos:
            (folder / name).write_bytes(content)
    modules = image_versions(args.old, "old", "new")
    versions = {name: module.load_digit for name, module in modules.items()}
    tables = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for version, fn in versions.items():
            tables[version] = accuracy_table(model, photos, fn)
    print(f"| condition | photos | {' | '.join(versions)} |")
    print("|---|---|" + "---|" * len(versions))
    for condition in CONDITIONS:
        n = tables["new"][condition][1]
        print(f"| {condition} | {n} | " + " | ".join(f"{t[condition][0] / n:.1%}" for t in tables.values()) + " |")
    total = len(photos)
    print(f"| all | {total} | " + " | ".join(
        f"{sum(r for r, _ in t.values()) / total:.1%}" for t in tables.values()) + " |")
    clean = x[:2000]
    for version, fn in versions.items():
        pre = modules[version].preprocess_digit
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            acc = (model.predict(np.stack([pre(d) for d in clean])).argmax(axis=1) == y[:2000]).mean()
        print(f"clean MNIST test images 0-1999 through the {version} recipe: {acc:.2%}")
    print(f"clean MNIST test images 0-1999 as they are: {(model.predict(clean).argmax(axis=1) == y[:2000]).mean():.2%}")


if __name__ == "__main__":
    main()
