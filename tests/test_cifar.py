"""Tests of CIFAR-10 in fastcnn.data: the binary batches, the archive read in memory, the extracted
folder, every error, caching and the download, all on small files written here in the official format."""

import gzip
import hashlib
import io
import shutil
import tarfile

import numpy as np
import pytest

import fastcnn
from fastcnn import data
from fastcnn.errors import DataError, DataMissingError

from fakes import closed_port_url

ARCHIVE, FOLDER = data.CIFAR10_ARCHIVE, data.CIFAR10_FOLDER
PER_BATCH = 20  # records in each small batch: 100 training images, 20 test images


def records(images, labels):
    """The official encoding, written out byte by byte from its description: for each image a label
    byte, then the red plane's 32 rows of 32, then green, then blue."""
    out = bytearray()
    for image, label in zip(images, labels):
        out.append(int(label))
        for channel in range(3):
            for row in range(32):
                out += bytes(int(v) for v in image[row, :, channel])
    return bytes(out)


def fake_batches(seed=0):
    """``{batch file name: bytes}`` for every split, and the (N, 32, 32, 3) images and labels of each split."""
    rng = np.random.default_rng(seed)
    files, splits = {}, {}
    for split, batches in data.CIFAR10_BATCHES.items():
        xs, ys = [], []
        for batch in batches:
            x = rng.integers(0, 256, (PER_BATCH, 32, 32, 3), dtype=np.uint8)
            y = rng.integers(0, 10, PER_BATCH)
            y[:2] = 0, 9  # both ends of the label range
            x[0, 0, 0], x[0, 0, 1] = 0, 255  # and of the pixels
            files[batch] = records(x, y)
            xs.append(x)
            ys.append(y)
        splits[split] = np.concatenate(xs), np.concatenate(ys)
    return files, splits


def tar_gz(members):
    """A .tar.gz of ``members`` (member name -> bytes, or a ``tarfile.TarInfo`` for links and folders)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in members.items():
            if isinstance(content, tarfile.TarInfo):
                tar.addfile(content)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def official_archive(files):
    """The archive as published: a folder with the batches and the class-name list (skipped)."""
    members = {f"{FOLDER}/batches.meta.txt": "\n".join(data.CLASS_NAMES["cifar10"]).encode()}
    members.update({f"{FOLDER}/{name}": content for name, content in files.items()})
    return tar_gz(members)


def md5(content):
    return hashlib.md5(content).hexdigest()


def put_archive(root, checksums, archive):
    folder = root / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ARCHIVE).write_bytes(archive)
    checksums["cifar10"][ARCHIVE] = md5(archive)
    return folder / ARCHIVE


def put_extracted(root, files):
    folder = root / "cifar10" / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def check_split(x, y, expected):
    images, labels = expected
    assert x.shape == (len(labels), 32, 32, 3) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.shape == (len(labels),) and y.dtype == np.int64
    np.testing.assert_array_equal(x, images / np.float32(255))
    np.testing.assert_array_equal(y, labels)
    assert x.min() == 0.0 and x.max() == 1.0


# ---------------------------------------------------------------- the batches


@pytest.mark.parametrize("channel, row, col", [(0, 0, 1), (1, 5, 7), (2, 31, 30), (0, 17, 0)])
def test_a_pixel_lands_at_its_row_column_and_channel(channel, row, col):
    record = bytearray(data._CIFAR10_RECORD * 2)
    record[data._CIFAR10_RECORD] = 7  # the second record's label
    record[data._CIFAR10_RECORD + 1 + channel * 1024 + row * 32 + col] = 200  # plane, then row, then column
    images, labels = data.read_cifar10_batch(bytes(record), "batch")
    assert images.shape == (2, 32, 32, 3) and labels.tolist() == [0, 7]
    assert images[1, row, col, channel] == 200 and np.count_nonzero(images) == 1


def test_archive_loads_both_splits_in_batch_order(tmp_path, fake_checksums):
    files, splits = fake_batches()
    put_archive(tmp_path, fake_checksums, official_archive(files))
    for split in ("train", "test"):
        x, y = data.load_dataset("cifar10", split, data_dir=tmp_path, download=False)
        check_split(x, y, splits[split])
    assert len(x) == PER_BATCH and len(data.load_dataset("cifar10", "train", tmp_path)[0]) == 5 * PER_BATCH
    assert sorted(p.name for p in (tmp_path / "cifar10").iterdir()) == [ARCHIVE]  # nothing extracted


def test_extracted_folder_gives_the_same_arrays(tmp_path, fake_checksums):
    files, splits = fake_batches()
    put_extracted(tmp_path / "extracted", files)  # no checksum needed: none is published for these
    put_archive(tmp_path / "archive", fake_checksums, official_archive(files))
    for split in ("train", "test"):
        x, y = data.load_dataset("cifar10", split, data_dir=tmp_path / "extracted", download=False)
        check_split(x, y, splits[split])
        x2, y2 = data.load_dataset("cifar10", split, data_dir=tmp_path / "archive", download=False)
        np.testing.assert_array_equal(x2, x)
        np.testing.assert_array_equal(y2, y)


def test_the_archive_is_preferred_to_extracted_files(tmp_path, fake_checksums):
    # The archive has a published checksum, the extracted files have none: the archive wins.
    files, splits = fake_batches(seed=0)
    other, _ = fake_batches(seed=1)
    put_archive(tmp_path, fake_checksums, official_archive(files))
    put_extracted(tmp_path, other)
    check_split(*data.load_dataset("cifar10", "test", data_dir=tmp_path), splits["test"])


def test_cache_is_read_only_and_rereads_a_replaced_archive(tmp_path, fake_checksums):
    files, _ = fake_batches(seed=0)
    put_archive(tmp_path, fake_checksums, official_archive(files))
    x1, y1 = data.load_dataset("cifar10", "test", data_dir=tmp_path)
    with pytest.raises(ValueError):
        x1[0] = 0
    x2, _ = data.load_dataset("cifar10", "test", data_dir=tmp_path)
    assert np.shares_memory(x1, x2)
    other, splits = fake_batches(seed=1)
    put_archive(tmp_path, fake_checksums, official_archive(other))
    check_split(*data.load_dataset("cifar10", "test", data_dir=tmp_path), splits["test"])


# ---------------------------------------------------------------- every error, naming the file


def with_batch(files, name, content):
    return {**files, name: content}


@pytest.mark.parametrize("form", ["archive", "extracted"])
@pytest.mark.parametrize("damage, match", [
    (lambda b: b[:-1], r"truncated or not a CIFAR-10 batch: 61459 bytes is 19 records of 3073 bytes .* and 3072 bytes over"),
    (lambda b: b + b"\x00", r"truncated or not a CIFAR-10 batch: .* 1 bytes over"),
    (lambda b: b"", r"empty, expected records of 3073 bytes"),
    (lambda b: b[:3073] + b"\x0a" + b[3074:], r"record 1 has label 10, expected labels 0 to 9"),
    (lambda b: b[:3073] + b"\xff" + b[3074:], r"record 1 has label 255"),
])
def test_a_damaged_batch_is_named(tmp_path, fake_checksums, form, damage, match):
    files, _ = fake_batches()
    files = with_batch(files, "test_batch.bin", damage(files["test_batch.bin"]))
    if form == "archive":
        put_archive(tmp_path, fake_checksums, official_archive(files))
        where = f"{ARCHIVE}:{FOLDER}/test_batch.bin"
    else:
        put_extracted(tmp_path, files)
        where = f"{FOLDER}/test_batch.bin"
    with pytest.raises(DataError, match=match) as e:
        data.load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert where in str(e.value)


def test_a_missing_member(tmp_path, fake_checksums):
    files, _ = fake_batches()
    del files["data_batch_3.bin"]
    path = put_archive(tmp_path, fake_checksums, official_archive(files))
    with pytest.raises(DataError, match=f"no member {FOLDER}/data_batch_3.bin") as e:
        data.load_dataset("cifar10", "train", data_dir=tmp_path, download=False)
    assert str(path) in str(e.value)
    assert len(data.load_dataset("cifar10", "test", data_dir=tmp_path)[0]) == PER_BATCH  # test is all there


def test_members_outside_the_folder_do_not_count(tmp_path, fake_checksums):
    files, _ = fake_batches()
    # The right names at the top level or under another folder are not the archive's batches.
    archive = tar_gz({"test_batch.bin": files["test_batch.bin"], f"other/{FOLDER}/test_batch.bin": b""})
    put_archive(tmp_path, fake_checksums, archive)
    with pytest.raises(DataError, match=f"no member {FOLDER}/test_batch.bin"):
        data.load_dataset("cifar10", "test", data_dir=tmp_path, download=False)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE])
def test_a_member_that_is_a_link_or_folder_is_refused(tmp_path, fake_checksums, kind):
    link = tarfile.TarInfo(f"{FOLDER}/test_batch.bin")
    link.type, link.linkname = kind, "/etc/passwd"
    put_archive(tmp_path, fake_checksums, tar_gz({"link": link}))
    with pytest.raises(DataError, match=f"{FOLDER}/test_batch.bin is not a regular file"):
        data.load_dataset("cifar10", "test", data_dir=tmp_path, download=False)


def test_the_published_checksum_is_enforced(tmp_path):
    files, _ = fake_batches()
    archive = official_archive(files)
    put_archive(tmp_path, {"cifar10": {}}, archive)  # the real table, not the test's sums
    with pytest.raises(DataError, match="checksum mismatch: MD5 of the file is") as e:
        data.load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    msg = str(e.value)
    assert md5(archive) in msg and "c32a1d4ab5d03f1284b67883e8d87530" in msg and ARCHIVE in msg


def test_a_wrong_checksum(tmp_path, fake_checksums):
    files, _ = fake_batches()
    put_archive(tmp_path, fake_checksums, official_archive(files))
    fake_checksums["cifar10"][ARCHIVE] = "0" * 32
    with pytest.raises(DataError, match="checksum mismatch: MD5"):
        data.load_dataset("cifar10", "test", data_dir=tmp_path, download=False)


@pytest.mark.parametrize("content", [b"not an archive at all", gzip.compress(b"gzip, but not a tar" * 100),
                                     official_archive(fake_batches()[0])[:5000], b""])
def test_not_a_tar_gz(tmp_path, fake_checksums, content):
    put_archive(tmp_path, fake_checksums, content)  # its own checksum, so the tar reading is tested
    with pytest.raises(DataError, match=r"not a readable \.tar\.gz archive") as e:
        data.load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert ARCHIVE in str(e.value)


def test_missing_without_download(tmp_path):
    files, _ = fake_batches()
    put_extracted(tmp_path, {k: v for k, v in files.items() if k != "data_batch_5.bin"})  # test is complete
    assert len(data.load_dataset("cifar10", "test", data_dir=tmp_path, download=False)[0]) == PER_BATCH
    # One batch of train's five missing is named (it was "missing cifar-10-binary.tar.gz", and a download).
    for download in (False, True):
        with pytest.raises(DataError, match=rf"{FOLDER}: has data_batch_1.bin, .*data_batch_4.bin, test_batch.bin but "
                                            rf"not data_batch_5.bin \(train\); extract {ARCHIVE} again, or put the "
                                            rf"archive itself in "):
            data.load_dataset("cifar10", "train", data_dir=tmp_path, download=download)
    # The test split's one batch missing was "missing cifar-10-binary.tar.gz", and a download of it.
    (tmp_path / "cifar10" / FOLDER / "test_batch.bin").unlink()
    with pytest.raises(DataError, match=rf"but not test_batch.bin \(test\); extract {ARCHIVE} again"):
        data.load_dataset("cifar10", "test", data_dir=tmp_path)
    assert sorted(p.name for p in (tmp_path / "cifar10").iterdir()) == [FOLDER]  # nothing downloaded
    shutil.rmtree(tmp_path / "cifar10")
    with pytest.raises(DataMissingError, match="download=False") as e:
        data.load_dataset("cifar10", "train", data_dir=tmp_path, download=False)
    msg = str(e.value)
    for expected in (f"cifar10: missing {ARCHIVE} in {tmp_path / 'cifar10'}", f"extracted: {FOLDER}/*.bin",
                     "FASTCNN_DATA", "cifar10/ sub-folder"):
        assert expected in msg


# ---------------------------------------------------------------- downloading


@pytest.mark.parametrize("first", ["404", "closed port", "wrong content"])
@pytest.mark.parametrize("send_length", [True, False])
def test_download_with_a_progress_bar_and_a_failing_mirror(tmp_path, server, fake_checksums, monkeypatch,
                                                           capsys, first, send_length):
    files, splits = fake_batches()
    archive = official_archive(files)
    fake_checksums["cifar10"][ARCHIVE] = md5(archive)
    server.files[f"/good/{ARCHIVE}"] = archive
    server.files[f"/bad/{ARCHIVE}"] = official_archive(fake_batches(seed=5)[0])  # well-formed, not the one
    server.send_length = send_length  # without a length the bar counts bytes with no total
    bad = {"404": server.url + "/missing/", "closed port": closed_port_url(), "wrong content": server.url + "/bad/"}
    monkeypatch.setitem(data.MIRRORS, "cifar10", [bad[first], server.url + "/good/"])

    x, y = data.load_dataset("cifar10", "train", data_dir=tmp_path)
    check_split(x, y, splits["train"])
    folder = tmp_path / "cifar10"
    assert sorted(p.name for p in folder.iterdir()) == [ARCHIVE]  # verified; no temporary file left
    assert (folder / ARCHIVE).read_bytes() == archive
    assert ARCHIVE in capsys.readouterr().err  # the progress bar, on stderr
    # The other split comes from the same archive, nothing is downloaded again.
    server.requests.clear()
    data.clear_cache()
    check_split(*data.load_dataset("cifar10", "test", data_dir=tmp_path), splits["test"])
    assert server.requests == []


def test_download_all_mirrors_fail(tmp_path, server, fake_checksums, monkeypatch):
    fake_checksums["cifar10"][ARCHIVE] = md5(b"the real one")
    server.files[f"/bad/{ARCHIVE}"] = b"something else"
    monkeypatch.setitem(data.MIRRORS, "cifar10", [server.url + "/nothing/", closed_port_url(), server.url + "/bad/"])
    with pytest.raises(DataMissingError) as e:
        data.load_dataset("cifar10", "test", data_dir=tmp_path)
    msg = str(e.value)
    for expected in (ARCHIVE, "FASTCNN_DATA", str(tmp_path / "cifar10"), "HTTP 404", "refused", "checksum mismatch"):
        assert expected in msg
    assert not (tmp_path / "cifar10").exists()  # the folder it made for the download is gone again


def test_no_test_reaches_the_real_site():
    # Every download test above replaces the mirrors; the real one is the publisher's, over HTTPS.
    assert data.MIRRORS["cifar10"] == ["https://www.cs.toronto.edu/~kriz/"]


def test_the_cifar_network_trains_predicts_and_evaluates_from_the_cli(tmp_path, fake_checksums, capsys):
    """RGB end to end: `train --model cifar` on a small archive in the official format, then
    `predict` on a colour picture and `evaluate` with its plots."""
    from PIL import Image

    from fastcnn.cli import main
    files, _ = fake_batches()
    put_archive(tmp_path, fake_checksums, official_archive(files))
    out = tmp_path / "cifar.npz"
    assert main(["train", "--model", "cifar", "--epochs", "1", "--batch-size", "20", "--data-dir", str(tmp_path),
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Training on cifar10: 100 images" in printed and "cifar network" in printed
    model = fastcnn.load(out)
    assert model.input_shape == (32, 32, 3) and len(model.predict(np.zeros((1, 32, 32, 3), np.float32))[0]) == 10
    picture = tmp_path / "ship.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(picture)
    assert main(["predict", str(out), str(picture), "--save-preprocessed"]) == 0
    printed = capsys.readouterr().out
    assert any(name in printed for name in data.CLASS_NAMES["cifar10"]) and "airplane:" in printed
    assert Image.open(f"{picture}.32x32.png").size == (32, 32)
    assert main(["evaluate", str(out), "--data-dir", str(tmp_path), "--plot", str(tmp_path / "e.png")]) == 0
    assert "on 20 cifar10 images" in capsys.readouterr().out and (tmp_path / "e.png").stat().st_size > 0
