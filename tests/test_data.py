"""Tests of fastcnn.data: the IDX reader, the data folder, loading, caching and downloading."""

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from fastcnn import data
from fastcnn.errors import DataError, DataMissingError

from fakes import closed_port_url

RNG = np.random.default_rng(0)


def idx_bytes(arr, type_code=0x08):
    """The IDX encoding of a uint8 array."""
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def write(path, content, compress):
    path.write_bytes(gzip.compress(content) if compress else content)
    return path


def sha(content):
    return hashlib.sha256(content).hexdigest()


# ---------------------------------------------------------------- read_idx


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 3, 4, 5)])
def test_read_idx_round_trips_exact_values(tmp_path, compress, shape):
    arr = RNG.integers(0, 256, size=shape, dtype=np.uint8)
    path = write(tmp_path / "x-idx", idx_bytes(arr), compress)
    out = data.read_idx(path)
    assert out.dtype == np.uint8
    assert out.shape == shape
    np.testing.assert_array_equal(out, arr)


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    gz_without_suffix = write(tmp_path / "plain-name", idx_bytes(arr), compress=True)
    raw_with_suffix = write(tmp_path / "looks-compressed.gz", idx_bytes(arr), compress=False)
    np.testing.assert_array_equal(data.read_idx(gz_without_suffix), arr)
    np.testing.assert_array_equal(data.read_idx(raw_with_suffix), arr)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_truncated(tmp_path, compress):
    content = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    path = write(tmp_path / "imgs.gz", content[:-100], compress)
    with pytest.raises(DataError, match="truncated") as e:
        data.read_idx(path)
    msg = str(e.value)
    assert "imgs.gz" in msg and "4x28x28 = 3136 bytes" in msg and "3036" in msg


def test_read_idx_truncated_header(tmp_path):
    content = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    for cut in (0, 3, 10):
        path = write(tmp_path / f"cut{cut}", content[:cut], compress=False)
        with pytest.raises(DataError, match="truncated"):
            data.read_idx(path)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_trailing_bytes(tmp_path, compress):
    content = idx_bytes(np.zeros((3, 2), np.uint8)) + b"\x00\x01"
    path = write(tmp_path / "x", content, compress)
    with pytest.raises(DataError, match="2 trailing bytes"):
        data.read_idx(path)


@pytest.mark.parametrize(
    "header, match",
    [
        (b"\x01\x00\x08\x01", "not an IDX file"),
        (b"\x00\x07\x08\x01", "not an IDX file"),
        (b"\x00\x00\x0d\x01", "element type 0x0d"),  # float32: valid IDX, not supported
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x05", "5 dimensions"),
    ],
)
def test_read_idx_bad_magic(tmp_path, header, match):
    path = write(tmp_path / "x", header + struct.pack(">I", 3) + b"abc", compress=True)
    with pytest.raises(DataError, match=match):
        data.read_idx(path)


def test_read_idx_zero_dimension(tmp_path):
    path = write(tmp_path / "x", b"\x00\x00\x08\x02" + struct.pack(">II", 0, 28), compress=False)
    with pytest.raises(DataError, match="zero dimension"):
        data.read_idx(path)


def test_read_idx_checksum(tmp_path):
    content = idx_bytes(np.arange(10, dtype=np.uint8))
    path = write(tmp_path / "labels.gz", content, compress=True)
    # The checksum is of the decompressed content, so the gzip bytes don't matter.
    np.testing.assert_array_equal(data.read_idx(path, sha(content)), np.arange(10))
    with pytest.raises(DataError, match="checksum mismatch") as e:
        data.read_idx(path, "0" * 64)
    assert "labels.gz" in str(e.value) and sha(content) in str(e.value)


def test_read_idx_corrupt_gzip(tmp_path):
    gz = bytearray(gzip.compress(idx_bytes(RNG.integers(0, 256, (50, 28, 28)))))
    cut = write(tmp_path / "cut.gz", bytes(gz[: len(gz) // 2]), compress=False)
    with pytest.raises(DataError, match="corrupt gzip") as e:
        data.read_idx(cut)
    assert "cut.gz" in str(e.value)
    gz[len(gz) // 2: len(gz) // 2 + 16] = b"\xff" * 16  # garbage in the deflate stream
    garbled = write(tmp_path / "garbled.gz", bytes(gz), compress=False)
    with pytest.raises(DataError, match="corrupt gzip"):
        data.read_idx(garbled)
    header_only = write(tmp_path / "header.gz", b"\x1f\x8b\x08\x00", compress=False)
    with pytest.raises(DataError, match="corrupt gzip"):
        data.read_idx(header_only)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataMissingError, match="no-such-file") as e:
        data.read_idx(tmp_path / "no-such-file.gz")
    assert isinstance(e.value, FileNotFoundError)


def test_read_idx_directory_is_data_error(tmp_path):
    with pytest.raises(DataError):
        data.read_idx(tmp_path)


# ---------------------------------------------------------------- data_dir


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path / "env"))
    assert data.data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert data.data_dir() == tmp_path / "env"
    monkeypatch.delenv("FASTCNN_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.data_dir() == tmp_path / "home" / ".cache" / "fastcnn"


# ---------------------------------------------------------------- load_dataset on fake data


def fake_split(n, seed=1):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the range, to check the scaling
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


def make_fake_dataset(root, checksums, n=5, name="mnist", split="train", compress=True, seed=1):
    images, labels = fake_split(n, seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for base, arr in zip(data.SPLITS[split], (images, labels)):
        content = idx_bytes(arr)
        checksums[name][base] = sha(content)
        write(folder / (base + (".gz" if compress else "")), content, compress)
    return images, labels


@pytest.mark.parametrize("compress", [True, False])
def test_load_dataset_fake(tmp_path, fake_checksums, compress):
    images, labels = make_fake_dataset(tmp_path, fake_checksums, n=5, split="test", compress=compress)
    x, y = data.load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    assert x.shape == (5, 28, 28, 1) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.shape == (5,) and y.dtype == np.int64
    np.testing.assert_array_equal(x[..., 0], images.astype(np.float32) / 255)
    assert x[0, 0, 0, 0] == 0.0 and x[0, 0, 1, 0] == 1.0
    np.testing.assert_array_equal(y, [0, 1, 2, 3, 4])


def test_load_dataset_pixels_are_the_files_uint8_and_train_to_the_same_weights(tmp_path, fake_checksums):
    from fastcnn import SGD, fit
    from fastcnn.architectures import mnist_network
    images, labels = make_fake_dataset(tmp_path, fake_checksums, n=40)
    raw, y = data.load_dataset("mnist", "train", data_dir=tmp_path, download=False, pixels=True)
    assert raw.dtype == np.uint8 and raw.shape == (40, 28, 28, 1) and not raw.flags.writeable
    with pytest.raises(ValueError):  # the file's bytes as they are (no copy), and they stay read-only
        raw.flags.writeable = True
    np.testing.assert_array_equal(raw[..., 0], images)
    x, _ = data.load_dataset("mnist", "train", data_dir=tmp_path, download=False)
    weights = []
    for inputs in (x, raw):  # what fastcnn train does with pixels: the same run as with the floats
        model = mnist_network(seed=0)
        fit(model, SGD(model, 0.05), (inputs, y), epochs=1, batch_size=16, validation_split=0.25, seed=0,
            progress=False)
        weights.append(model.parameters)
    assert np.array_equal(*weights)


def test_load_dataset_uses_env_var(tmp_path, fake_checksums, monkeypatch):
    make_fake_dataset(tmp_path, fake_checksums, n=3, name="fashion-mnist")
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path))
    x, y = data.load_dataset("fashion-mnist", download=False)
    assert len(x) == 3
    np.testing.assert_array_equal(y, [0, 1, 2])


def test_load_dataset_cache_cannot_be_corrupted(tmp_path, fake_checksums):
    make_fake_dataset(tmp_path, fake_checksums, n=5)
    x1, y1 = data.load_dataset("mnist", "train", data_dir=tmp_path)
    expected = x1.copy()
    for a in (x1, y1):
        with pytest.raises(ValueError):
            a[0] = 7
        with pytest.raises(ValueError):
            a.flags.writeable = True
    x2, y2 = data.load_dataset("mnist", "train", data_dir=tmp_path)
    assert np.shares_memory(x1, x2)  # served from the cache, not read again
    np.testing.assert_array_equal(x2, expected)


def test_load_dataset_rereads_a_replaced_file(tmp_path, fake_checksums):
    make_fake_dataset(tmp_path, fake_checksums, n=5, seed=1)
    x1, _ = data.load_dataset("mnist", "train", data_dir=tmp_path)
    images, _ = make_fake_dataset(tmp_path, fake_checksums, n=5, seed=2)
    x2, _ = data.load_dataset("mnist", "train", data_dir=tmp_path)
    np.testing.assert_array_equal(x2[..., 0], images / np.float32(255))
    assert not np.array_equal(x1, x2)


def test_load_dataset_count_mismatch(tmp_path, fake_checksums):
    make_fake_dataset(tmp_path, fake_checksums, n=5)
    content = idx_bytes(np.arange(4, dtype=np.uint8))
    fake_checksums["mnist"]["train-labels-idx1-ubyte"] = sha(content)
    write(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", content, compress=True)
    with pytest.raises(DataError, match="5 images") as e:
        data.load_dataset("mnist", "train", data_dir=tmp_path, download=False)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg and "4 labels" in msg


def test_load_dataset_label_out_of_range(tmp_path, fake_checksums):
    make_fake_dataset(tmp_path, fake_checksums, n=5)
    content = idx_bytes(np.array([0, 1, 2, 10, 3], np.uint8))
    fake_checksums["mnist"]["train-labels-idx1-ubyte"] = sha(content)
    write(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", content, compress=True)
    with pytest.raises(DataError, match="label 10"):
        data.load_dataset("mnist", "train", data_dir=tmp_path, download=False)


def test_load_dataset_wrong_image_shape(tmp_path, fake_checksums):
    make_fake_dataset(tmp_path, fake_checksums, n=5)
    content = idx_bytes(np.zeros((5, 32, 32), np.uint8))
    fake_checksums["mnist"]["train-images-idx3-ubyte"] = sha(content)
    write(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", content, compress=True)
    with pytest.raises(DataError, match=r"\(N, 28, 28\)"):
        data.load_dataset("mnist", "train", data_dir=tmp_path, download=False)


def test_load_dataset_checks_real_checksums(tmp_path):
    # Without the test's checksums, a fake file is refused: the published sums are enforced.
    make_fake_dataset(tmp_path, {name: {} for name in data.CHECKSUMS}, n=5)
    with pytest.raises(DataError, match="checksum mismatch"):
        data.load_dataset("mnist", "train", data_dir=tmp_path, download=False)


@pytest.mark.parametrize(
    "kwargs, valid", [({"name": "cifar"}, "'fashion-mnist'"), ({"split": "val"}, "'test'")]
)
def test_load_dataset_bad_name_or_split(tmp_path, kwargs, valid):
    with pytest.raises(ValueError, match=valid):
        data.load_dataset(data_dir=tmp_path, **kwargs)


def test_load_dataset_missing_without_download(tmp_path):
    with pytest.raises(DataMissingError, match="download=False") as e:
        data.load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte" in msg and "FASTCNN_DATA" in msg and str(tmp_path / "mnist") in msg
    assert not (tmp_path / "mnist").exists()  # nothing was downloaded or created


def test_tables():
    assert data.CLASS_NAMES["mnist"] == tuple("0123456789")
    assert data.CLASS_NAMES["fashion-mnist"][0] == "T-shirt/top"
    assert data.CLASS_NAMES["fashion-mnist"][9] == "Ankle boot"
    assert len(data.CLASS_NAMES["fashion-mnist"]) == 10
    assert data.CLASS_NAMES["cifar10"] == ("airplane", "automobile", "bird", "cat", "deer",
                                           "dog", "frog", "horse", "ship", "truck")
    assert set(data.MIRRORS) == set(data.CHECKSUMS) == set(data.DATASETS) == set(data.CLASS_NAMES)
    assert set(data.DATASETS) == {"mnist", "fashion-mnist", "cifar10"}
    assert all(len(s) == 64 for name in ("mnist", "fashion-mnist") for s in data.CHECKSUMS[name].values())
    assert data.CHECKSUMS["cifar10"] == {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"}


# ---------------------------------------------------------------- downloading


def serve_split(server, checksums, prefix, n=6, split="train", seed=3, name="mnist"):
    """Put a fake split on ``server`` under ``prefix`` and register its checksums."""
    images, labels = fake_split(n, seed)
    for base, arr in zip(data.SPLITS[split], (images, labels)):
        content = idx_bytes(arr)
        checksums[name][base] = sha(content)
        server.files[f"{prefix}{base}.gz"] = gzip.compress(content)
    return images, labels


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("first", ["404", "closed port"])
def test_download_falls_back_to_next_mirror(tmp_path, server, fake_checksums, monkeypatch, first):
    images, labels = serve_split(server, fake_checksums, "/good/")
    bad = server.url + "/missing/" if first == "404" else closed_port_url()
    monkeypatch.setitem(data.MIRRORS, "mnist", [bad, server.url + "/good/"])
    x, y = data.load_dataset("mnist", "train", data_dir=tmp_path)
    np.testing.assert_array_equal(x[..., 0], images / np.float32(255))
    np.testing.assert_array_equal(y, labels)
    folder = tmp_path / "mnist"
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert sorted(p.name for p in folder.iterdir()) == names  # verified, and no temporary files
    for name in names:
        assert (folder / name).read_bytes() == server.files[f"/good/{name}"]
    if first == "404":
        assert "/missing/train-images-idx3-ubyte.gz" in server.requests
    # Once on disk, nothing is downloaded again.
    server.requests.clear()
    data.clear_cache()
    x2, _ = data.load_dataset("mnist", "train", data_dir=tmp_path)
    assert server.requests == []
    np.testing.assert_array_equal(x2, x)


def test_download_only_the_missing_file(tmp_path, server, fake_checksums, monkeypatch):
    images, labels = serve_split(server, fake_checksums, "/m/")
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))  # raw, on disk
    monkeypatch.setitem(data.MIRRORS, "mnist", [server.url + "/m/"])
    x, y = data.load_dataset("mnist", "train", data_dir=tmp_path)
    assert server.requests == ["/m/train-images-idx3-ubyte.gz"]
    np.testing.assert_array_equal(y, labels)


def test_download_rejects_wrong_content(tmp_path, server, fake_checksums, monkeypatch):
    images, labels = serve_split(server, fake_checksums, "/good/")
    # The bad mirror serves well-formed IDX files whose content differs from the checksums.
    for base, arr in zip(data.SPLITS["train"], fake_split(6, seed=99)):
        server.files[f"/bad/{base}.gz"] = gzip.compress(idx_bytes(arr))
    server.files["/bad/train-labels-idx1-ubyte.gz"] = b"not gzip, not idx"
    folder = tmp_path / "mnist"

    monkeypatch.setitem(data.MIRRORS, "mnist", [server.url + "/bad/"])
    with pytest.raises(DataMissingError, match="checksum mismatch") as e:
        data.load_dataset("mnist", "train", data_dir=tmp_path)
    assert "train-images-idx3-ubyte.gz" in str(e.value)
    assert not folder.exists()  # rejected, and no temporary file (nor the folder made for them) left behind

    monkeypatch.setitem(data.MIRRORS, "mnist", [server.url + "/bad/", server.url + "/good/"])
    x, y = data.load_dataset("mnist", "train", data_dir=tmp_path)
    np.testing.assert_array_equal(x[..., 0], images / np.float32(255))
    np.testing.assert_array_equal(y, labels)
    assert leftovers(folder) == []
    for base in data.SPLITS["train"]:
        assert (folder / f"{base}.gz").read_bytes() == server.files[f"/good/{base}.gz"]


def test_download_all_mirrors_fail(tmp_path, server, fake_checksums, monkeypatch):
    monkeypatch.setitem(data.MIRRORS, "fashion-mnist", [server.url + "/nothing/", closed_port_url()])
    with pytest.raises(DataMissingError) as e:
        data.load_dataset("fashion-mnist", "test", data_dir=tmp_path)
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    for expected in (
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "FASTCNN_DATA",
        str(tmp_path / "fashion-mnist"),
        "HTTP 404",
        "refused",
    ):
        assert expected in msg
    assert not (tmp_path / "fashion-mnist").exists()  # the folder it made for the download is gone again


# ---------------------------------------------------------------- the real data sets


def real_dir(name):
    root = os.environ.get("FASTCNN_DATA")
    if not root or not (Path(root) / name).is_dir():
        pytest.skip(f"set FASTCNN_DATA to a folder with {name}/ in it to test the real data")
    return Path(root)


def check_real(x, y, n):
    assert x.shape == (n, 28, 28, 1) and x.dtype == np.float32 and x.flags.c_contiguous
    assert x.min() == 0.0 and x.max() == 1.0
    assert y.shape == (n,) and y.dtype == np.int64


def test_real_mnist_test():
    x, y = data.load_dataset("mnist", "test", data_dir=real_dir("mnist"), download=False)
    check_real(x, y, 10000)
    np.testing.assert_array_equal(np.bincount(y), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the famous first test digits


def test_real_mnist_train():
    x, y = data.load_dataset("mnist", "train", data_dir=real_dir("mnist"), download=False)
    check_real(x, y, 60000)
    counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    np.testing.assert_array_equal(np.bincount(y), counts)


def test_real_fashion_mnist_test():
    x, y = data.load_dataset("fashion-mnist", "test", data_dir=real_dir("fashion-mnist"), download=False)
    check_real(x, y, 10000)
    np.testing.assert_array_equal(np.bincount(y), [1000] * 10)
