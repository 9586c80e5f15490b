"""Image folders: the layouts, bad pictures, the cache and its invalidation, memory-mapped batches,
and the commands on a model trained on a folder. Every folder is a few tiny pictures written here."""

import io
import json
import os
import re
import signal

import numpy as np
import pytest
from PIL import Image

import fastcnn
from fastcnn import SGD, ConfigError, DataError, fit
from fastcnn.architectures import ARCHITECTURES
from fastcnn.cli import main
from fastcnn.data import image_folder
from fastcnn.folders import Split, load_picture, read_picture, row_reader


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test decodes into a cache of its own."""
    monkeypatch.setenv("FASTCNN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def shade(label, i, size=(6, 8)):
    """A grey picture whose brightness says its class (and a little which one it is)."""
    return np.full(size, 40 * label + 5 * i, np.uint8)


def write(folder, counts, size=(6, 8), fmt="png", start=0):
    """``counts`` pictures of each class ({"cat": 3, ...}) under folder/<class>/; their pixels, by
    class in sorted order."""
    out = {}
    for label, (name, n) in enumerate(sorted(counts.items())):
        (folder / name).mkdir(parents=True, exist_ok=True)
        out[name] = [shade(label, i, size) for i in range(start, start + n)]
        for i, pixels in enumerate(out[name], start):
            Image.fromarray(pixels).save(folder / name / f"{i:03d}.{fmt}")
    return out


def test_a_folder_of_class_folders_in_sorted_order(tmp_path):
    pixels = write(tmp_path / "pics", {"dog": 2, "cat": 3, "ant": 1})  # a class with one picture works
    folder = image_folder(tmp_path / "pics", verbose=False)
    assert folder.classes == ("ant", "cat", "dog") and folder.color == "grey" and folder.image_size == (6, 8)
    assert folder.test is None and folder.val is None and folder.decoded
    images, labels = folder.train  # a pair, as fit takes it
    assert isinstance(images, np.memmap) and images.dtype == np.uint8 and images.shape == (6, 6, 8, 1)
    assert labels.tolist() == [0, 1, 1, 1, 2, 2] and not images.flags.writeable
    want = np.stack(pixels["ant"] + pixels["cat"] + pixels["dog"])[..., None]
    assert np.array_equal(images, want)
    assert folder.train.classes == folder.classes and folder.train.name == "train"


@pytest.mark.parametrize("layout", ["train/ and test/", "test/ beside the classes", "train/, val/ and test/"])
def test_train_test_and_val_folders_are_used_as_such(tmp_path, layout):
    root = tmp_path / "pics"
    if layout == "test/ beside the classes":
        write(root, {"a": 3, "b": 2})
    else:
        write(root / "train", {"a": 3, "b": 2})
    write(root / "test", {"a": 1, "b": 2})
    if "val/" in layout:
        write(root / "val", {"b": 1})  # a split may lack a class
    folder = image_folder(root, verbose=False)
    assert folder.classes == ("a", "b") and len(folder.train[1]) == 5 and folder.test[1].tolist() == [0, 1, 1]
    assert (folder.val is not None) == ("val/" in layout)
    if folder.val is not None:
        assert folder.val.labels.tolist() == [1] and folder.val.name == "val"


def test_a_test_class_the_training_pictures_lack_is_refused(tmp_path):
    write(tmp_path / "pics" / "train", {"a": 2, "b": 2})
    write(tmp_path / "pics" / "test", {"a": 1, "zebra": 1})
    with pytest.raises(DataError, match="test/ has pictures of zebra, which the training pictures don't have"):
        image_folder(tmp_path / "pics", verbose=False)


def cmyk_jpeg(path):
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(path)  # pure red in CMYK


def test_bad_pictures_are_named_counted_and_skipped(tmp_path, capsys):
    root = tmp_path / "pics"
    write(root, {"cat": 2, "dog": 2})
    (root / "cat" / "empty.png").write_bytes(b"")
    (root / "cat" / "letter.jpg").write_text("not a picture at all")
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 800), np.uint8)).save(noise, format="PNG")
    (root / "dog" / "cut.png").write_bytes(noise.getvalue()[:2000])  # the header is whole, the pixels are not
    (root / "dog" / "notes.txt").write_text("ignored: not a picture by its name")
    (root / "dog" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored silently
    (root / "owl").mkdir()  # an empty class folder
    deep = (np.arange(48).reshape(6, 8) * 1300).astype(np.uint16)  # a 16-bit PNG, up to 61,100
    Image.fromarray(deep).save(root / "dog" / "sixteen.png")
    cmyk_jpeg(root / "cat" / "cmyk.jpg")
    folder = image_folder(root, color="grey")
    skipped = dict(folder.skipped)
    assert skipped == {"cat/empty.png": "empty file (0 bytes)", "cat/letter.jpg": "not an image file Pillow can read",
                       "dog/cut.png": skipped["dog/cut.png"]} and "truncated" in skipped["dog/cut.png"]
    assert folder.empty == ["owl/"] and folder.ignored == ["dog/notes.txt"] and folder.classes == ("cat", "dog")
    err = capsys.readouterr().err
    for said in ("skipped 3 pictures", "cat/empty.png", "cat/letter.jpg", "dog/cut.png", "owl/", "dog/notes.txt"):
        assert said in err
    images, labels = folder.train
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]  # cat: 000, 001, cmyk; dog: 000, 001, sixteen
    # The 16-bit picture is scaled to 8 bits, not clipped at 255; the CMYK one read as its colour.
    assert np.array_equal(images[5, :, :, 0], np.round(deep / 65535 * 255).astype(np.uint8))
    assert abs(int(images[2, 0, 0, 0]) - 76) <= 3  # red's luma: 0.299 * 255
    rgb = image_folder(root, color="rgb", verbose=False)
    assert np.abs(rgb.train[0][2].astype(int) - [255, 0, 0]).max() <= 3


def test_a_folder_with_nothing_to_learn_is_refused(tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no class folders in it"):
        image_folder(tmp_path / "none", verbose=False)
    with pytest.raises(DataError, match="no such folder"):
        image_folder(tmp_path / "missing", verbose=False)
    bad = tmp_path / "bad"
    for name in ("a", "b"):
        (bad / name).mkdir(parents=True)
        (bad / name / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"none of its 2 pictures can be read \(a/x.png: empty file"):
        image_folder(bad, verbose=False)
    with pytest.raises(DataError, match="no picture in it can be read"):
        image_folder(bad, image_size=(4, 4), color="grey", verbose=False)  # found while decoding
    write(tmp_path / "one", {"cat": 3})
    with pytest.raises(DataError, match=r"pictures of one class only \(cat\)"):
        image_folder(tmp_path / "one", verbose=False)
    for wrong, message in (((0, 5), "image_size"), ((5,), "image_size"), ("28x28", "image_size")):
        with pytest.raises(ConfigError, match=message):
            image_folder(tmp_path / "one", image_size=wrong)
    with pytest.raises(ConfigError, match="color: expected one of grey, rgb"):
        image_folder(tmp_path / "one", color="cmyk")


def test_default_size_and_colour_come_from_the_pictures(tmp_path):
    root = tmp_path / "pics"
    write(root, {"a": 3, "b": 1}, size=(10, 20))
    write(root, {"c": 1}, size=(7, 7))
    folder = image_folder(root, verbose=False)
    assert folder.image_size == (10, 20) and folder.color == "grey"  # the most common size
    for i, name in enumerate("aabcc"):
        Image.new("RGB", (30, 300), (0, 128, 255)).save(root / name / f"tall{i}.png")
    folder = image_folder(root, verbose=False)  # now 300x30 is the most common: shrunk to at most 64
    assert folder.image_size == (64, 6) and folder.color == "rgb" and folder.train[0].shape[1:] == (64, 6, 3)
    chosen = image_folder(root, image_size=(5, 9), color="grey", verbose=False)
    assert chosen.train[0].shape == (10, 5, 9, 1)


def test_the_cache_is_used_until_the_folder_changes(tmp_path, cache):
    root = tmp_path / "pics"
    write(root, {"a": 2, "b": 2})
    assert image_folder(root, verbose=False).decoded
    again = image_folder(root, verbose=False)
    assert not again.decoded and again.classes == ("a", "b")
    assert {p.name for p in cache.iterdir()} == {again.entry.parent.name}
    changes = [
        lambda: Image.fromarray(shade(5, 0)).save(root / "a" / "new.png"),                  # added
        lambda: (root / "b" / "001.png").unlink(),                                           # removed
        lambda: Image.fromarray(shade(3, 3)).save(root / "a" / "000.png"),                   # rewritten
        lambda: os.utime(root / "a" / "001.png", ns=(0, 5 * 10**18)),                        # touched
        lambda: (root / "a" / "new.png").rename(root / "b" / "new.png"),                     # moved to another class
    ]
    for change in changes:
        change()
        folder = image_folder(root, verbose=False)
        assert folder.decoded, change
        assert not image_folder(root, verbose=False).decoded
    assert folder.train[1].tolist() == [0, 0, 1, 1]
    assert np.array_equal(folder.train[0][0, :, :, 0], shade(3, 3))
    # An entry whose arrays were written to since, of the same size, is decoded again (it was read
    # as the pictures' pixels); so is one cut short, and what a killed decoding left goes.
    pixels = folder.entry / "train.u8"
    before = pixels.stat()
    with open(pixels, "r+b") as f:
        f.write(bytes(before.st_size))
    if pixels.stat().st_mtime_ns == before.st_mtime_ns:  # within the file system clock's tick (a few ms)
        os.utime(pixels, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert pixels.stat().st_size == before.st_size
    zeroed = image_folder(root, verbose=False)
    assert zeroed.decoded and np.array_equal(zeroed.train[0][0, :, :, 0], shade(3, 3))
    (folder.entry / "train.u8").write_bytes(b"short")
    (folder.entry.parent / f".{folder.entry.name}.killed").mkdir()
    assert image_folder(root, verbose=False).decoded
    assert sorted(p.name for p in folder.entry.parent.iterdir()) == ["6x8-grey", "auto.json", "lock"]
    # Another size or colour is another entry; the first stays.
    assert image_folder(root, image_size=(3, 4), verbose=False).decoded
    assert not image_folder(root, verbose=False).decoded


def test_processes_decode_what_one_process_does(tmp_path):
    root = tmp_path / "pics"
    write(root, {"a": 40, "b": 30})
    (root / "a" / "bad.png").write_bytes(b"nope")
    one = image_folder(root, workers=1, cache=tmp_path / "one", verbose=False)
    two = image_folder(root, workers=2, cache=tmp_path / "two", verbose=False)
    assert two.decoded and np.array_equal(one.train[0], two.train[0]) and np.array_equal(one.train[1], two.train[1])
    assert one.skipped == two.skipped == [("a/bad.png", "not an image file Pillow can read")]


def test_read_picture_turns_and_flattens_as_predict_does(tmp_path):
    im = Image.new("RGB", (8, 4), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 2, 2))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: shown a quarter turn clockwise
    im.save(tmp_path / "turned.png", exif=exif)
    upright = read_picture(tmp_path / "turned.png", (8, 4), "rgb")
    assert upright.shape == (8, 4, 3) and upright[0, 3].tolist() == [0, 0, 255]  # the blue corner: top right
    im.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    clear = Image.new("RGBA", (3, 3), (0, 0, 0, 0))
    assert (read_picture(_png(clear), (3, 3), "grey") == 255).all()  # transparency shown on white
    picture = load_picture(tmp_path / "turned.jpg", (8, 4), "grey")
    assert picture.dtype == np.float32 and picture.shape == (8, 4, 1) and 0 <= picture.min() <= picture.max() <= 1
    with pytest.raises(fastcnn.ImageError, match="nope.png: no such file"):
        read_picture(tmp_path / "nope.png", (4, 4), "grey")


def _png(im):
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    buf.seek(0)
    return buf


def test_fit_on_memory_mapped_pixels_equals_fit_on_floats(tmp_path):
    """uint8 batches are scaled as they are gathered, to exactly the floats load_dataset makes."""
    root = tmp_path / "pics"
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        for i in range(30):
            Image.fromarray(rng.integers(0, 256, (12, 12), np.uint8)).save(root / name / f"{i}.png")
    folder = image_folder(root, verbose=False)
    x, y = folder.train
    floats = np.asarray(x).astype(np.float32)
    floats /= 255
    runs = []
    for images in (x, floats):
        model = ARCHITECTURES["original"].build((12, 12, 1), 3, seed=0)
        history = fit(model, SGD(model, 0.05), (images, y), epochs=2, batch_size=16, seed=3, progress=False)
        runs.append((model.parameters.copy(), history))
    assert np.array_equal(runs[0][0], runs[1][0])
    assert [h["val_loss"] for h in runs[0][1]] == [h["val_loss"] for h in runs[1][1]]


def test_row_reader_reads_rows_from_the_file_not_the_mapping(tmp_path):
    path = tmp_path / "rows.u8"
    data = np.random.default_rng(0).integers(0, 256, (500, 7, 5, 3), np.uint8)
    data.tofile(path)
    mapped = np.memmap(path, np.uint8, "r", shape=data.shape)
    rows = np.array([499, 0, 17, 17, 250])
    out = np.empty((5, 7, 5, 3), np.uint8)
    assert np.array_equal(row_reader(mapped)(rows, out), data[rows])
    for other in (mapped[100:], data, data.astype(np.float32)):  # a view, an array: np.take
        want = np.take(other, rows[rows < len(other)], axis=0)
        assert np.array_equal(row_reader(other)(rows[rows < len(other)], np.empty_like(want)), want)
    from_row_3 = np.memmap(path, np.uint8, "r", offset=3 * 105, shape=(10, 7, 5, 3))  # a row is 105 bytes
    assert np.array_equal(row_reader(from_row_3)(np.array([9, 1]), out[:2]), data[[12, 4]])
    if os.path.exists("/proc/self/smaps"):  # and nothing of the file was mapped into this process by it
        big = tmp_path / "big.u8"
        np.ones((4096, 1024), np.uint8).tofile(big)
        mapped = np.memmap(big, np.uint8, "r", shape=(4096, 1024))
        row_reader(mapped)(np.arange(0, 4096, 7), np.empty((586, 1024), np.uint8))
        lines = open("/proc/self/smaps").read().splitlines()
        at = next(i for i, line in enumerate(lines) if line.endswith(str(big)))
        assert next(int(line.split()[1]) for line in lines[at + 1:] if line.startswith("Rss:")) == 0


def test_split_is_a_pair_with_names():
    s = Split(np.zeros((2, 3, 3, 1), np.uint8), np.array([0, 1]), ["x", "y"], "test")
    images, labels = s
    assert len(s) == 2 and s.classes == ("x", "y") and s.images is images and "test" in repr(s)


# --- the commands on a model trained on a folder -------------------------------------------------

FLAGS = ["--no-progress", "--threads", "1"]


@pytest.fixture
def trained_folder(tmp_path, capsys):
    """A folder of two classes (dark and light 10x10 pictures, train/ and test/), a model trained
    on it, and what training said."""
    root = tmp_path / "pics"
    rng = np.random.default_rng(1)
    for split, n in (("train", 60), ("test", 10)):
        for name, level in (("dark", 40), ("light", 200)):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(level, 30, (10, 10)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    out = tmp_path / "model.npz"
    assert main(["train", "--data", str(root), "--out", str(out), "--epochs", "2", "--batch-size", "16", *FLAGS]) == 0
    return root, out, capsys.readouterr().out


def test_train_on_a_folder_records_its_classes_and_tests_once(trained_folder, capsys):
    root, out, said = trained_folder
    assert f"Training on {root}" in said and "10 held out to validate on" in said and "Test accuracy" in said
    saved = fastcnn.load_checkpoint(out)
    training = saved.training
    assert training["classes"] == ["dark", "light"] and saved.model.input_shape == (10, 10, 1)
    assert training["settings"]["data"] == str(root) and training["settings"]["image_size"] == [10, 10]
    assert training["validation"] == {"on": "held-out", "fraction": 1 / 12, "images": 10}
    assert training["test"]["images"] == 20 and training["test"]["accuracy"] >= 0.9
    assert main(["history", str(out)]) == 0
    said = capsys.readouterr().out
    assert "validation: 10 images held out of the training set" in said and "test accuracy" in said
    assert "data " + str(root) in said and "image size 10x10" in said
    assert "validation split" not in said  # it read "validation split, validation split 0.08333", then the line above


def test_predict_evaluate_and_export_use_the_folders_classes(trained_folder, tmp_path, capsys):
    root, out, _ = trained_folder
    big = tmp_path / "light photo.jpg"
    Image.new("RGB", (64, 48), (210, 200, 190)).save(big)  # any size and mode: read as the folder's were
    assert main(["predict", str(out), str(big), "--save-preprocessed"]) == 0
    said = capsys.readouterr().out
    assert f"{big}: light (" in said and "dark: " in said and "digit" not in said
    assert Image.open(f"{big}.10x10.png").size == (10, 10)
    assert main(["evaluate", str(out), "--plot", str(tmp_path / "wrong.png")]) == 0
    said = capsys.readouterr().out
    assert f"on 20 pictures of {root}/test" in said and "dark" in said
    pytest.importorskip("matplotlib")
    from fastcnn.plots import plot_errors
    pixels = np.full((2, 4, 4, 1), 100, np.uint8)  # uint8 pictures are drawn as pixels, not clipped to white
    plot_errors(tmp_path / "two.png", pixels, np.array([0, 1]), np.array([1, 0]), np.ones((2, 2)) / 2, ["a", "b"])
    drawn = np.asarray(Image.open(tmp_path / "two.png").convert("L")).astype(int)
    assert (abs(drawn - 100) <= 2).sum() > 1000  # two grey squares
    assert main(["evaluate", str(out), "--data", str(tmp_path / "elsewhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    pytest.importorskip("onnx")
    assert main(["export", str(out), str(tmp_path / "m.onnx")]) == 0
    import onnx
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta["class_names"]) == ["dark", "light"] and "10x10 greyscale" in meta["preprocessing"]


def test_serve_reads_pictures_as_the_folder_did(trained_folder):
    pytest.importorskip("flask")
    from fastcnn.serve import create_app
    saved = fastcnn.load_checkpoint(trained_folder[1])
    app = create_app(saved.model, ("dark", "light"), folder=True).test_client()
    assert 'data-input="picture"' in app.get("/").get_data(as_text=True)
    answer = app.post("/predict", data=_png(Image.new("L", (30, 20), 20)).getvalue()).json
    assert answer["classes"][answer["prediction"]] == "dark" and np.array(answer["image"]).shape == (10, 10)


def test_validation_test_reproduces_the_original_and_says_so(trained_folder, tmp_path, capsys):
    root, _, _ = trained_folder
    out = tmp_path / "orig.npz"
    assert main(["train", "--data", str(root), "--out", str(out), "--epochs", "1", "--validation", "test",
                 *FLAGS]) == 0
    said = capsys.readouterr().out
    assert "validating on the test set after each epoch (--validation test" in said and "Test accuracy" not in said
    assert "(the test set was also the validation set: --validation test)" in said
    training = fastcnn.load_checkpoint(out).training
    assert training["validation"]["on"] == "test" and "test" not in training
    assert main(["history", str(out)]) == 0
    assert "validation: the test set (20 images), as the original project did" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="validation_split: 0.2 was given, but --validation test doesn't use it"):
        fastcnn.cli.train.train(tmp_path / "x.npz", data=str(root), validation="test", validation_split=0.2)


def test_a_folder_that_changed_under_a_resumed_run_is_said(trained_folder, tmp_path, capsys):
    root, out, _ = trained_folder
    Image.fromarray(np.full((10, 10), 30, np.uint8)).save(root / "train" / "dark" / "extra.png")
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3", *FLAGS]) == 0
    err = capsys.readouterr().err
    assert "its pictures changed since this run started" in err and "the run being resumed trained on" in err
    assert fastcnn.load_checkpoint(out).training["folder"]["images"] == 121


def test_settings_for_folders_are_checked(tmp_path):
    from fastcnn.cli.train import train
    for given, message in ((dict(data="x", dataset="mnist"), "both given; give one"),
                           (dict(image_size=(28, 28)), r"image_size: \(28, 28\) was given, but a --dataset run "
                                                       r"\(only --data folders are resized\)"),
                           (dict(color="rgb"), "color: rgb was given, but a --dataset run"),
                           (dict(data="x", image_size=(0, 4)), "image_size: expected H W")):
        with pytest.raises(ConfigError, match=message):
            train(tmp_path / "m.npz", **given)
    with pytest.raises(DataError, match="no such folder"):
        train(tmp_path / "m.npz", data=str(tmp_path / "nowhere"), threads=1)
    assert not (tmp_path / "m.npz").exists()



def test_without_progress_only_the_skipped_pictures_are_said(tmp_path, capsys):
    # fastcnn train --no-progress still drew the bars of reading and decoding a folder.
    root = tmp_path / "pics"
    write(root, {"cat": 2, "dog": 2})
    (root / "cat" / "letter.jpg").write_text("not a picture at all")
    image_folder(root, progress=False)
    err = capsys.readouterr().err
    assert "cat/letter.jpg" in err and "\r" not in err and "pictures/s" not in err and " pictures]" not in err
    image_folder(tmp_path / "pics", (8, 8), "rgb", progress=True)  # another size: decoded again, with its bar
    assert "\r" in capsys.readouterr().err


def test_what_predict_saved_beside_a_picture_is_not_trained_on(tmp_path, capsys):
    # Pictures predicted from the training folder left a.png.32x32.png beside them: the next
    # decode took them for more pictures of the class (80 read instead of 60).
    root = tmp_path / "pics"
    write(root, {"cat": 2, "dog": 2})
    first = sorted((root / "cat").iterdir())[0]
    Image.open(first).save(root / "cat" / f"{first.name}.32x32.png")
    Image.open(first).save(root / "cat" / "lone.8x8.png")  # the same shape of name, no picture beside it
    folder = image_folder(root)
    assert len(folder.train[1]) == 5
    assert folder.ignored == [f"cat/{first.name}.32x32.png (fastcnn predict --save-preprocessed's copy of "
                              f"{first.name})"]
    assert "ignored 1 file that is not a training picture" in capsys.readouterr().err


def test_evaluate_says_a_class_has_no_test_pictures(trained_folder, capsys):
    # It printed 0.0000 for the class, as if every picture of it were wrong.
    root, out, _ = trained_folder
    for picture in (root / "test" / "light").iterdir():
        picture.unlink()
    assert main(["evaluate", str(out)]) == 0
    said = capsys.readouterr().out
    assert re.search(r"light  no test images", said) and re.search(r"dark  \d\.\d{4}", said)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the signal mask from /proc")
def test_the_decoding_workers_leave_ctrl_c_to_this_process_which_ends_them(tmp_path):
    # Ctrl-C reaches every process of the terminal's group: workers still importing printed tracebacks of
    # their own, and a pool whose workers were stopped that way could hang the program's exit.
    from fastcnn.folders import _Workers, _survey_chunk
    root = tmp_path / "pics"
    write(root, {"a": 6, "b": 6})
    paths = sorted(str(p.relative_to(root)) for p in root.rglob("*.png")) * 60  # chunks enough for two workers
    with pytest.raises(KeyboardInterrupt):
        with _Workers(2, len(paths), progress=False) as workers:
            for _ in workers.map(_survey_chunk, paths, (str(root),), False, "reading"):
                processes = list(workers._pool._processes.values())
                masks = [int(re.search(r"SigBlk:\s*([0-9a-f]+)", open(f"/proc/{p.pid}/status").read())[1], 16)
                         for p in processes]
                assert len(masks) == 2 and all(m & (1 << (signal.SIGINT - 1)) for m in masks)  # SIGINT blocked
                raise KeyboardInterrupt
    assert all(not p.is_alive() for p in processes)
