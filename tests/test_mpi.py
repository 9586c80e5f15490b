"""Data-parallel training under mpiexec: 2 processes train the model 1 does, bit-identically run
to run; resume works across process counts; a signal to one process stops both at one step with
one checkpoint; a process that dies, fails or hangs ends the job soon, saying so.

Each test launches ``mpiexec -n 2`` on this machine (tests/mpi_driver.py: ``fastcnn train`` on
the fake MNIST folder of 320 images, batches of 64, so 5 steps an epoch, 1 thread a process),
each launch with a timeout. Skipped without mpi4py or mpiexec (pip install -e '.[mpi]').
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastcnn
from fakes import fake_mnist
from fastcnn import distributed

MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
                                reason="needs mpi4py and mpiexec: pip install -e '.[mpi]'")
DRIVER = str(Path(__file__).with_name("mpi_driver.py"))
LAUNCH_TIMEOUT = 60  # s; a launch takes 3-6 s on 2 busy cores


def test_the_processes_parts_of_a_batch_are_contiguous_and_cover_it():
    for n in (1, 2, 7, 64):
        for size in range(1, n + 1):
            parts = [distributed._part(n, rank, size) for rank in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert {stop - start for start, stop in parts} <= {n // size, -(-n // size)}


def test_one_process_never_imports_mpi(monkeypatch):
    monkeypatch.setattr(distributed, "_world", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # importing it would now fail
    start, part = distributed.world().slice(np.arange(5))
    assert distributed.world().size == 1 and start == 0 and part.tolist() == [0, 1, 2, 3, 4]


def test_mpiexec_without_mpi4py_says_what_to_install(monkeypatch):
    monkeypatch.setattr(distributed, "_world", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(fastcnn.FastCNNError, match=r"one of 2 processes.*pip install 'fastcnn\[mpi\]'"):
        distributed.world()


@needs_mpi
def test_a_foreign_mpiexec_is_named_not_trained_with_alone():
    """Another MPI's mpiexec starts processes that each see a world of one: refused, not K solo runs."""
    done = subprocess.run([sys.executable, "-c", "from fastcnn import distributed; distributed.world()"],
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env={**os.environ, "PMI_SIZE": "2"})
    assert "mpiexec started 2 processes but MPI sees 1" in done.stderr


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "sums.json").write_text(json.dumps(fake_mnist(root)))
    return root


@pytest.fixture(scope="module")
def launch(data_dir):
    def run(k, out, *args, fault=None, timeout=LAUNCH_TIMEOUT, env=None, threads=1):
        """``fastcnn train --out out --threads 1 args`` in ``k`` processes (k=1: plain python)."""
        environ = {name: v for name, v in os.environ.items() if not name.startswith(("PMI_", "OMPI_", "MPI_TEST"))}
        environ.update(env or {}, **({"MPI_TEST_FAULT": fault} if fault else {}))
        cmd = ([MPIEXEC, "-n", str(k)] if k > 1 else []) + [sys.executable, DRIVER, str(data_dir),
                                                          "--out", str(out), *args]
        cmd += ["--threads", str(threads)] if threads else []
        started = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=environ)
        done.seconds = time.monotonic() - started
        return done
    return run


def ok(done):
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def weights(path):
    return fastcnn.load_checkpoint(path).model.parameters


def relative_difference(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def straight(launch, tmp_path_factory):
    """Uninterrupted 2-epoch runs (10 steps): one process, and two processes twice."""
    folder = tmp_path_factory.mktemp("straight")
    runs = {name: ok(launch(k, folder / f"{name}.npz", "--epochs", "2"))
            for name, k in (("one", 1), ("two", 2), ("two_again", 2))}
    return folder, runs


@needs_mpi
def test_two_processes_train_the_model_one_process_does(straight):
    folder, runs = straight
    one, two, again = (weights(folder / f"{name}.npz") for name in ("one", "two", "two_again"))
    assert relative_difference(two, one) <= 1e-4
    assert np.array_equal(two, again)  # the same K: bit for bit
    assert "1 thread in each of 2 processes" in runs["two"].stdout
    assert runs["two"].stdout.count("Epoch 2/2  loss") == 1  # rank 0 alone prints
    history = fastcnn.load_checkpoint(folder / "two.npz").training["history"]
    assert history[-1]["val_acc"] > 0.5  # and the two processes really learnt


@needs_mpi
@pytest.mark.parametrize("first, then", [(1, 2), (2, 1)])
def test_resume_with_another_number_of_processes(launch, straight, tmp_path, first, then):
    folder, _ = straight
    out = tmp_path / "m.npz"
    ok(launch(first, out, "--epochs", "1"))
    resumed = ok(launch(then, out, "--epochs", "2", "--resume"))
    assert "(resumed)" in resumed.stdout
    assert fastcnn.load_checkpoint(out).optimizer.steps == 10
    assert relative_difference(weights(out), weights(folder / "one.npz")) <= 1e-4


@needs_mpi
def test_a_signal_to_one_process_stops_both_at_one_step_with_one_checkpoint(launch, straight, tmp_path,
                                                                           tmp_path_factory):
    folder, _ = straight
    out = tmp_path / "m.npz"
    stops = tmp_path_factory.mktemp("stops")
    stopped = launch(2, out, "--epochs", "2", fault="1:7:SIGINT", env={"MPI_TEST_STOPS": str(stops)})
    assert stopped.returncode == 130, stopped.stderr
    assert {p.name: p.read_text() for p in stops.iterdir()} == {"0": "7", "1": "7"}
    said = re.findall(r"stopped by SIGINT after step 7 .*resume with: (mpiexec .* --no-progress)", stopped.stderr)
    assert len(said) == 1, stopped.stderr
    saved = fastcnn.load_checkpoint(out)
    assert (saved.training["epoch"], saved.training["batch"], saved.optimizer.steps) == (1, 2, 7)
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # one checkpoint, no temporary left
    # The command it printed, with the driver standing in for the fastcnn command:
    resume = said[0].split()
    assert resume[:4] == ["mpiexec", "-n", "2", "fastcnn"] and resume[4:7] == ["train", "--out", str(out)]
    ok(launch(2, out, *resume[7:]))
    assert np.array_equal(weights(out), weights(folder / "two.npz"))  # as if never stopped


@needs_mpi
def test_threads_default_to_the_cores_shared_and_a_batch_too_small_to_share_is_refused(launch, tmp_path):
    import numba
    done = launch(2, tmp_path / "m.npz", "--batch-size", "319", "--validation", "test",  # all 320 images
                  threads=None)  # in batches of 319: a last batch of 1
    shared = max(1, numba.config.NUMBA_NUM_THREADS // 2)
    assert f"{shared} thread{'s' * (shared > 1)} in each of 2 processes" in done.stdout
    assert done.returncode == 2 and "leave a batch of 1, fewer than the 2 processes" in done.stderr, done.stderr


@needs_mpi
def test_a_killed_process_ends_the_other_within_seconds(launch, tmp_path):
    done = launch(2, tmp_path / "m.npz", "--epochs", "50", fault="1:3:SIGKILL")
    assert done.returncode != 0 and done.seconds < 30
    assert "Killed" in done.stdout + done.stderr, done.stdout + done.stderr  # mpiexec says which process, how


@needs_mpi
def test_an_error_in_one_process_ends_the_other(launch, tmp_path):
    done = launch(2, tmp_path / "m.npz", "--epochs", "50", fault="1:3:error")
    assert done.returncode == 2 and done.seconds < 30
    assert "fastcnn train (process 1 of 2): error: the fault the test injected" in done.stderr


@needs_mpi
def test_a_process_that_hangs_ends_the_job_after_the_timeout(launch, tmp_path):
    done = launch(2, tmp_path / "m.npz", "--epochs", "50", fault="1:3:SIGSTOP", env={"FASTCNN_MPI_TIMEOUT": "2"})
    # Rank 0 aborts with status 3; mpiexec then kills the stopped rank, and reports either status.
    assert done.returncode != 0 and done.seconds < 30, (done.returncode, done.seconds, done.stderr)
    assert "process 0 of 2: no answer from the other processes for 2 s" in done.stderr


@needs_mpi
def test_a_folder_and_callbacks_under_two_processes(launch, tmp_path):
    """Both processes read the folder's cache (one decodes, the other waits for it), rank 0
    validates and sends its results, so both stop, keep and lower the rate alike, as one process does."""
    from PIL import Image
    from fakes import bars
    x, y = bars(320, 0)
    for i, (image, label) in enumerate(zip(x, y)):
        folder = tmp_path / "pics" / ("train" if i < 260 else "test") / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(image[:, :, 0], 0, 1) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    flags = ["--data", str(tmp_path / "pics"), "--epochs", "4", "--keep-best", "--early-stopping", "1",
             "--reduce-lr-on-plateau", "0", "--monitor", "val_acc"]
    env = {"FASTCNN_CACHE": str(tmp_path / "cache")}
    runs = {k: ok(launch(k, tmp_path / f"{k}.npz", *flags, env=env)) for k in (2, 1)}
    assert runs[2].stdout.count("Test accuracy") == 1  # rank 0 tests, and alone says so
    files = {k: (fastcnn.load_checkpoint(tmp_path / f"{k}.npz"), fastcnn.load_checkpoint(tmp_path / f"{k}.last.npz"))
             for k in (1, 2)}
    (best1, last1), (best2, last2) = files[1], files[2]
    assert best2.training["best"]["epoch"] == best1.training["best"]["epoch"]
    assert len(last2.training["history"]) == len(last1.training["history"])
    assert last2.training.get("stopped", {}).get("epoch") == last1.training.get("stopped", {}).get("epoch")
    assert last2.optimizer.lr == last1.optimizer.lr
    assert relative_difference(best2.model.parameters, best1.model.parameters) <= 1e-4
    assert best2.training["classes"] == [f"c{k}" for k in range(10)]


@needs_mpi
def test_a_graph_model_trains_with_augmentation_on_two_processes(launch, tmp_path):
    """The resnet (a graph model, augmented by its recipe) data-parallel: each process draws its
    own rows' maps, so two runs on two processes agree bit for bit. (Not with one process: each
    process normalises with its own slice's batch statistics.)"""
    runs = [ok(launch(2, tmp_path / f"{name}.npz", "--model", "resnet", "--epochs", "1", "--batch-size", "64"))
            for name in ("a", "b")]
    assert "shift-rotate augmentation" in runs[0].stdout and runs[0].stdout.count("Epoch 1/1  loss") == 1
    a, b = (fastcnn.load_checkpoint(tmp_path / f"{name}.npz") for name in ("a", "b"))
    assert type(a.model) is fastcnn.Model and np.array_equal(a.model.parameters, b.model.parameters)
