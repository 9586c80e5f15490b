"""The kernel cache (kernels/jit.py) and compiling ahead (fastcnn/compiling.py).

Each test that compiles runs a fresh Python with a cache folder of its own and small kernels
(softmax, SGD: a few tenths of a second each), so nothing here depends on what the rest of the
suite compiled; the rehearsal test uses the ordinary cache, which the suite fills anyway.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import fastcnn
from fastcnn import compiling
from fastcnn.architectures import ARCHITECTURES
from fastcnn.kernels import jit

REPO = Path(__file__).resolve().parent.parent


def run(code, cache, **env):
    """Run ``code`` in a fresh Python with the kernel cache in ``cache``; returns the process
    (stdout, stderr as text). FASTCNN_* and NUMBA_CPU_* variables of the test's own are dropped."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FASTCNN_CACHE", "NUMBA_C"))}
    clean.update(FASTCNN_CACHE_DIR=str(cache), **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=clean, capture_output=True, text=True,
                          timeout=300, check=True, cwd="/")  # not the checkout: its fastcnn would come first


# Computes a softmax and reports where fastcnn came from and whether the kernel was compiled
# here or loaded from the cache.
SOFTMAX = """
    import json, numpy as np, fastcnn
    from fastcnn.kernels import jit, loss
    assert np.allclose(loss.softmax(np.zeros((2, 4), np.float32)), 0.25)
    stats = loss._softmax.stats
    print(json.dumps({"file": fastcnn.__file__, "dir": str(jit.cache_dir()), "cpu": jit.cpu_key(),
                      "loaded": sum(stats.cache_hits.values()), "compiled": sum(stats.cache_misses.values())}))
"""


def install_copy(where):
    """fastcnn as an install at ``where`` would lay it out: fastcnn/ with the kernels inside."""
    shutil.copytree(REPO / "fastcnn", where / "fastcnn", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "kernels", where / "fastcnn" / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    return where


def test_two_installs_share_the_cache_and_write_nothing_beside_the_sources(tmp_path):
    cache = tmp_path / "cache"
    first, second = install_copy(tmp_path / "venv1"), install_copy(tmp_path / "venv2")
    a = json.loads(run(SOFTMAX, cache, PYTHONPATH=str(first)).stdout)
    b = json.loads(run(SOFTMAX, cache, PYTHONPATH=str(second)).stdout)
    assert a["file"].startswith(str(first)) and b["file"].startswith(str(second))
    assert (a["compiled"], a["loaded"]) == (1, 0)
    assert (b["compiled"], b["loaded"]) == (0, 1)  # the second install compiled nothing
    assert a["dir"] == b["dir"] and a["dir"].startswith(str(cache / fastcnn.__version__ / a["cpu"]))
    assert not list(second.rglob("*.nbi")) and not list(second.rglob("*.nbc"))  # a read-only install is fine


def test_code_for_another_cpu_is_never_loaded(tmp_path):
    cache = tmp_path / "cache"
    here = json.loads(run(SOFTMAX, cache).stdout)
    # NUMBA_CPU_NAME alone keeps this CPU's features (AVX-512 here): still another target, another key.
    for env in ({"NUMBA_CPU_NAME": "haswell"}, {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}):
        other = json.loads(run(SOFTMAX, cache, **env).stdout)
        assert other["cpu"].startswith("haswell-") and other["cpu"] != here["cpu"] and other["dir"] != here["dir"]
        assert (other["compiled"], other["loaded"]) == (1, 0)
        again = json.loads(run(SOFTMAX, cache, **env).stdout)
        assert (again["cpu"], again["compiled"], again["loaded"]) == (other["cpu"], 0, 1)
    assert len(list((cache / fastcnn.__version__).iterdir())) == 3


# SGD's kernel compiled with LLVM's pass timings recorded: which libraries went through LLVM's
# module pipeline, and whether the update is still right.
LOOP_BODIES = """
    import json, numpy as np
    from llvmlite import binding
    from fastcnn.kernels import jit, optim
    p, v, g = np.ones(1000, np.float32), np.zeros(1000, np.float32), np.full(1000, 2, np.float32)
    optim.sgd_momentum(p, v, g, 0.25, 0.9)
    (cres,) = optim._sgd_momentum.overloads.values()
    def libraries(library):
        yield library
        for linked in library._linking_libraries:
            yield from libraries(linked)
    bodies = {fn.name for lib in libraries(cres.library) if lib.name.startswith(jit._LOOP_BODY_LIBRARIES)
              for fn in lib._final_module.functions if not fn.is_declaration}
    print(json.dumps({"right": bool(np.all(p == 0.5) and np.all(v == -0.5)), "kernel": cres.library.name,
                      "passes": {lib.name: [name for name, _ in lib.recorded_timings] for lib in libraries(cres.library)},
                      "shared": [fn.name for fn in cres.library._final_module.functions
                                 if fn.name in bodies and fn.linkage != binding.Linkage.internal]}))
"""


def test_a_loop_body_goes_through_llvms_module_pipeline_once_in_its_kernel(tmp_path):
    out = json.loads(run(LOOP_BODIES, tmp_path / "cache", NUMBA_LLVM_PASS_TIMINGS="1").stdout)
    assert out["right"]
    full = "Module passes (full optimization)"
    bodies = [name for name in out["passes"] if name.startswith(jit._LOOP_BODY_LIBRARIES)]
    assert len(bodies) == 3, out["passes"].keys()  # the loop's body, its gufunc wrapper, the call onto the threads
    assert not [name for name in bodies if full in out["passes"][name]]
    assert full in out["passes"][out["kernel"]]
    # and the kernel calls its own, optimised copies: not the first definition of each name that
    # the JIT engine holds (the loop-body libraries' unoptimised ones; the kernel ran at half speed)
    assert out["shared"] == []


# Imports fastcnn, multiplies by BLAS (the GEMM and the GEMV paths), then imports scipy.linalg
# as a user would and multiplies again.
BLAS_IMPORT = """
    import json, sys, numpy as np, fastcnn
    from fastcnn.kernels import blas, dense
    rng = np.random.default_rng(0)
    w, b = rng.random((300, 20), np.float32), np.zeros(20, np.float32)
    def right():
        return [bool(np.allclose(dense.dense_forward(x, w, b), x @ w, rtol=1e-5))
                for x in (rng.random((16, 300), np.float32), rng.random((1, 300), np.float32))]
    out = {"before": right(), "linalg": "scipy.linalg" in sys.modules}
    import scipy.linalg, scipy.linalg.cython_blas
    a = rng.random((5, 5), np.float32)
    out.update(after=right(), same=scipy.linalg.cython_blas is blas._BLAS,
               scipy=bool(np.allclose(scipy.linalg.blas.sgemm(1.0, a, a), a @ a, rtol=1e-5)))
    print(json.dumps(out))
"""


def test_scipys_blas_is_loaded_without_scipy_linalg_and_a_later_import_of_it_is_whole(tmp_path):
    # Importing scipy.linalg took 0.18 s of a 1 s warm start, for two addresses; Numba's check
    # for a BLAS, run when its first kernel loads, imported it too.
    out = json.loads(run(BLAS_IMPORT, tmp_path / "cache").stdout)
    assert out == {"before": [True, True], "linalg": False, "after": [True, True], "same": True, "scipy": True}


# A direct convolution (its kernel allocates its scratch: Numba's runtime) from the cache, then a
# compile of something new in the same process; which of Numba's compiler registries were loaded.
LOAD_THEN_COMPILE = """
    import json, sys, numba, numpy as np
    from fastcnn.kernels import conv, reference
    rng = np.random.default_rng(0)
    x, w, b = rng.random((2, 7, 5, 1), np.float32), rng.random((3, 3, 1, 4), np.float32), np.ones(4, np.float32)
    same = bool(np.allclose(conv.conv2d_forward(x, w, b, 1, 1), reference.conv2d_forward(x, w, b, 1, 1), atol=1e-5))
    registries = "numba.np.polynomial.polynomial_core" in sys.modules  # one of those a context refresh imports
    later = float(numba.njit(lambda a: np.sort(a)[0])(np.array([3.0, 1.0, 2.0])))
    print(json.dumps({"same": same, "loaded": sum(conv._conv2d_forward.stats.cache_hits.values()),
                      "registries": registries, "later": later}))
"""


def test_a_kernel_read_from_the_cache_needs_no_compiler_registries_and_a_later_compile_still_works(tmp_path):
    # Numba refreshes its whole target context before it loads a kernel (0.1 s of a 0.8-1 s warm
    # start); fastcnn's cache sets up only Numba's runtime, which the kernel's allocations use.
    cache = tmp_path / "cache"
    first = json.loads(run(LOAD_THEN_COMPILE, cache).stdout)
    assert first == {"same": True, "loaded": 0, "registries": True, "later": 1.0}  # compiled: refreshed
    warm = json.loads(run(LOAD_THEN_COMPILE, cache).stdout)
    assert warm == {"same": True, "loaded": 1, "registries": False, "later": 1.0}


# Compiles a parallel kernel and one parallel function of Numba's own, noting which code libraries
# are handed to the JIT engine (made machine code) while each compiles.
HANDED_TO_ENGINE = """
    import json, numba, numpy as np
    from numba.core import codegen
    from fastcnn.kernels import conv, jit, reference
    handed = []
    add = codegen.JITCPUCodegen._add_module
    codegen.JITCPUCodegen._add_module = lambda self, module: (handed.append(module.name), add(self, module))[1]
    rng = np.random.default_rng(0)
    x, w, b = rng.random((2, 7, 5, 1), np.float32), rng.random((3, 3, 1, 4), np.float32), np.ones(4, np.float32)
    same = bool(np.allclose(conv.conv2d_forward(x, w, b, 1, 1), reference.conv2d_forward(x, w, b, 1, 1), atol=1e-5))
    kernel = [name.startswith(jit._LOOP_BODY_LIBRARIES) for name in handed]
    handed.clear()
    def twice(a):  # (by index: a list comprehension over prange appends in whatever order threads finish)
        out = np.empty_like(a)
        for i in numba.prange(len(a)):
            out[i] = 2 * a[i]
        return out
    doubled = numba.njit(parallel=True)(twice)(np.arange(3.0)).tolist()
    print(json.dumps({"same": same, "loaded": sum(conv._conv2d_forward.stats.cache_hits.values()),
                      "kernel": [any(kernel), len(kernel) > 0],
                      "numba": [any(n.startswith(jit._LOOP_BODY_LIBRARIES) for n in handed), list(doubled)]}))
"""


def test_a_kernels_loop_bodies_become_machine_code_only_inside_the_kernel(tmp_path):
    # Numba makes each prange body's libraries machine code of their own, never run, before the
    # kernel links them in (0.8-1.2 s of CPU in the original network's first step): a kernel's
    # compile hands none of them to the engine; a parallel function of Numba's own is left as it was.
    cache = tmp_path / "cache"
    first = json.loads(run(HANDED_TO_ENGINE, cache).stdout)
    assert first == {"same": True, "loaded": 0, "kernel": [False, True], "numba": [True, [0.0, 2.0, 4.0]]}
    warm = json.loads(run(HANDED_TO_ENGINE, cache).stdout)  # and the kernel loads from the cache, the same
    assert warm == {"same": True, "loaded": 1, "kernel": [False, True], "numba": [True, [0.0, 2.0, 4.0]]}


# Compiles the kernels whose sums start as zeros and counts the parallel loops Numba lowers in each.
PARALLEL_LOOPS = """
    import collections, inspect, json, numpy as np
    from numba.parfors import parfor_lowering
    lowered = collections.Counter()
    lower = parfor_lowering._lower_parfor_parallel
    def counted(lowerer, parfor):
        lowered[lowerer.fndesc.qualname] += 1
        return lower(lowerer, parfor)
    parfor_lowering.ParforLower.lower_inst.__globals__["_lower_parfor_parallel"] = counted
    from fastcnn.kernels import batchnorm, batchnorm_pool, dense, reference
    rng = np.random.default_rng(0)
    x, w, dy = rng.random((64, 600), np.float32), rng.random((600, 16), np.float32), rng.random((64, 16), np.float32)
    dense.dense_relu_backward(dy, x, w, dy)
    xs, ones, zeros = rng.random((8, 12, 12, 16), np.float32), np.ones(16, np.float32), np.zeros(16, np.float32)
    batchnorm.batchnorm_forward(xs, ones, zeros)
    batchnorm.batchnorm_backward(xs, xs, ones, zeros, zeros, ones, relu=True)
    y, argmax = reference.batchnorm_relu_pool_forward(xs, zeros, ones, ones, zeros)
    batchnorm_pool.batchnorm_relu_pool_backward(y, xs, y, argmax, ones, zeros, ones)
    kernels = [dense._dense_backward, batchnorm._channel_moments, batchnorm._batchnorm_backward, batchnorm_pool._backward]
    print(json.dumps({k.__name__: [lowered[k.__name__], inspect.getsource(k.py_func).count("prange(")] for k in kernels}))
"""


def test_a_parallel_kernel_lowers_only_its_own_parallel_loops(tmp_path):
    # np.zeros at a parallel kernel's top level becomes a parallel loop of its own, one more for
    # Numba to compile (0.3-0.5 s of CPU each): the sums start as zeros by plain loops instead.
    out = json.loads(run(PARALLEL_LOOPS, tmp_path / "cache").stdout)
    assert out == {"_dense_backward": [1, 1], "_channel_moments": [1, 1], "_batchnorm_backward": [2, 2],
                   "_backward": [2, 2]}


def test_a_kernel_compiles_with_fewer_collections_and_the_collector_is_put_back(monkeypatch):
    import gc
    assert gc.get_freeze_count() > 0  # import fastcnn left what it imported to the permanent generation
    monkeypatch.setattr(gc, "get_threshold", lambda: (700, 10, 10))  # the default, whatever this process has
    settings = []
    monkeypatch.setattr(gc, "set_threshold", lambda *t: settings.append(t))

    def compile(signature):  # a kernel's compile that compiles another one inside (Numba does)
        if signature == "outer":
            jit._compiling(compile)("inner")
        return "compiled"

    assert jit._compiling(compile)("outer") == "compiled"
    assert settings == [(jit._YOUNG_OBJECTS, 10, 10), (700, 10, 10)]  # once for both, then put back

    def failing(signature):
        raise RuntimeError("a compile that fails")
    settings.clear()
    with pytest.raises(RuntimeError, match="fails"):
        jit._compiling(failing)("x")
    assert settings[-1] == (700, 10, 10)
    monkeypatch.setattr(gc, "get_threshold", lambda: (0, 10, 10))  # the collector turned off: left off
    settings.clear()
    jit._compiling(compile)("x")
    assert settings == [(0, 10, 10)]
    wrapper = jit._compiling(compile).__code__
    assert all(kernel.compile.__code__ is wrapper for kernel in jit.KERNELS.values())  # and every kernel compiles so


def test_cache_folder_settings(monkeypatch, tmp_path):
    for name in ("FASTCNN_CACHE_DIR", "NUMBA_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert jit.cache_root() == tmp_path / "home" / ".cache" / "fastcnn" / "kernels"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert jit.cache_root() == tmp_path / "xdg" / "fastcnn" / "kernels"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))  # the user's Numba cache: ours inside it
    assert jit.cache_root() == tmp_path / "numba" / "fastcnn"
    monkeypatch.setenv("FASTCNN_CACHE_DIR", "~/kernels")
    assert jit.cache_root() == tmp_path / "home" / "kernels"
    build = jit.cache_dir().relative_to(jit.cache_root()).parts
    assert build[:2] == (fastcnn.__version__, jit.cpu_key()) and build[2].startswith("numba")


def test_a_cache_that_cannot_be_written_is_said_once_and_the_kernels_still_run(tmp_path):
    (tmp_path / "a file").write_text("not a folder")
    done = run(SOFTMAX, tmp_path / "a file" / "cache")
    assert done.stderr.count("can't be cached in") == 1 and "FASTCNN_CACHE_DIR" in done.stderr
    assert done.stderr.startswith("fastcnn: warning: ") and "RuntimeWarning" not in done.stderr  # a line, not a warning
    assert json.loads(done.stdout)["compiled"] == 1
    # fastcnn compile, whose one purpose is the cache, says nothing would be kept and fails (it said it was done).
    failed = subprocess.run([sys.executable, "-m", "fastcnn.cli", "compile", "--model", "original"],
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, FASTCNN_CACHE_DIR=str(tmp_path / "a file")))
    assert failed.returncode == 2 and "so nothing it compiled would be kept; set FASTCNN_CACHE_DIR" in failed.stderr


@pytest.mark.parametrize("damage", ["data cut short", "index cut short", "index not Numba's"])
def test_an_unreadable_cache_entry_is_compiled_again_and_replaced(tmp_path, damage):
    # A file cut short (a full disk, a killed process) or written by something else: the kernel
    # is compiled again, said in one line, and the entry replaced; the next process loads it.
    cache = tmp_path / "cache"
    build = Path(json.loads(run(SOFTMAX, cache).stdout)["dir"])
    target = next(build.glob("loss._softmax-*.nbc" if damage == "data cut short" else "loss._softmax-*.nbi"))
    target.write_bytes(b"garbage\n" if damage == "index not Numba's" else target.read_bytes()[:40])
    again = run(SOFTMAX, cache)
    assert json.loads(again.stdout)["compiled"] == 1
    said = [line for line in again.stderr.splitlines() if "could not be read" in line]
    assert len(said) == 1 and said[0].startswith("fastcnn: a compiled kernel in the cache could not be read "
                                                 "(loss._softmax: ") and "Traceback" not in again.stderr
    after = run(SOFTMAX, cache)
    assert (json.loads(after.stdout)["loaded"], after.stderr) == (1, "")


def test_the_rehearsal_finds_every_kernel_a_pass_calls():
    # In a fresh process, every kernel call the rehearsals note is exactly what training (SGD and
    # Adam) and predicting each named network then call: nothing missed, nothing extra.
    code = """
        import json, numpy as np, fastcnn
        from fastcnn import compiling
        from fastcnn.architectures import ARCHITECTURES
        from fastcnn.kernels import jit
        noted, called = set(), set()
        for name, shape in (("original", (28, 28, 1)), ("deep", (28, 28, 1)), ("cifar", (32, 32, 3))):
            model = ARCHITECTURES[name].build(shape, 10, 0)
            plan = model.plan(shape)
            optimizers = [fastcnn.SGD(model, 0.01), fastcnn.Adam(model)]
            noted |= {(j.kernel, str(j.signature))
                      for j in compiling.rehearsed([(plan, True), (plan, False)], optimizers)}
            plan.prepared.update((True, False))  # run as they are: load or compile each kernel on its own
            model.train_step(np.zeros((64, *shape), np.float32), np.zeros(64, np.int64))
            for opt in optimizers:
                opt.step()
            model.predict(np.zeros((300, *shape), np.float32))
            model.predict(np.zeros((1, *shape), np.float32))
        called = {(name, str(sig)) for name, d in jit.KERNELS.items() for sig in d.overloads}
        print(json.dumps({"missed": sorted(called - noted), "extra": sorted(noted - called), "n": len(called)}))
    """
    env = {k: v for k, v in os.environ.items() if k != "FASTCNN_CACHE_DIR"}
    out = json.loads(subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                                    text=True, timeout=900, check=True).stdout)
    assert out["missed"] == [] and out["extra"] == [] and out["n"] >= 15


def test_fit_prepares_the_batch_sizes_its_training_and_evaluation_run_at():
    # Evaluating 256 images at a time never takes the dense layer's few-rows kernel (one image):
    # fit rehearses its evaluation at the sizes it will run, not at predict's one image.
    # (The few-rows kernel is stood in for: the rehearsal notes only the calls that would compile,
    # and whether it is compiled already depends on what this process ran before.)
    from fastcnn.kernels import dense
    from fastcnn.training import evaluation_batches
    plan = ARCHITECTURES["deep"].build((28, 28, 1), 10, 0).plan((28, 28, 1))
    for size, few in ((1, True), (256, False)):
        rows = []
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(dense, "_dense_forward_few", lambda y, *args: rows.append(len(y)))
            compiling.rehearsed([(plan, False)], batches={False: (size,)})
        assert (rows != []) == few
    labels = np.zeros(10_000)
    assert evaluation_batches([(None, labels)]) == (16, 256)  # 39 batches of 256, then 16
    assert evaluation_batches([(None, labels, np.arange(300)), (None, labels[:100])]) == (44, 100, 256)
    assert evaluation_batches([(None, labels[:512], None)]) == (256,)
    from fakes import bars
    asked = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compiling, "prepare", lambda plan, modes, *args, **kwargs: asked.append((modes, kwargs)))
        model = ARCHITECTURES["original"].build((28, 28, 1), 10, 0)
        fastcnn.fit(model, fastcnn.SGD(model, 0.01), bars(64, 0), test=bars(300, 1), validation_split=0, progress=False)
    assert asked[0][0] == (True, False) and asked[0][1]["batches"] == {True: (64,), False: (44, 256)}
    asked.clear()
    with pytest.MonkeyPatch.context() as patch:  # training's last batch: 70 = 2 x 32 + 6 rows
        patch.setattr(compiling, "prepare", lambda plan, modes, *args, **kwargs: asked.append((modes, kwargs)))
        model = ARCHITECTURES["original"].build((28, 28, 1), 10, 0)
        fastcnn.fit(model, fastcnn.SGD(model, 0.01), bars(70, 0), batch_size=32, validation_split=0, progress=False)
    assert asked[0][0] == (True,) and asked[0][1]["batches"][True] == (6, 32)


def test_a_batchs_values_are_checked_by_a_kernel_compiled_with_the_plans(monkeypatch):
    # predict, forward and train_step check a batch's values with a kernel (kernels.values_within)
    # that the plan's preparation compiles with the others: each mode is prepared before the check
    # runs, which would otherwise compile on its own first, alone, ahead of the rest.
    events = []
    prepare, check = compiling.prepare, fastcnn.kernels.values_within
    monkeypatch.setattr(compiling, "prepare", lambda plan, modes, *a, **k: events.append(("prepare", modes))
                        or prepare(plan, modes, *a, **k))
    monkeypatch.setattr(fastcnn.kernels, "values_within", lambda x, limit: events.append(("check", len(x)))
                        or check(x, limit))
    x, y = np.zeros((3, 28, 28, 1), np.float32), np.zeros(3, np.int64)
    for call, mode in (("predict", (False,)), ("forward", (False,)), ("train_step", (True,)), ("forward", (True,))):
        model = ARCHITECTURES["original"].build((28, 28, 1), 10, 0)
        if mode == (False,):
            model.eval()
        events.clear()
        getattr(model, call)(*((x, y) if call == "train_step" else (x,)))
        # the rehearsals' own checks (of 1, 64 or 256 zero images) inside the preparation, then the batch's
        assert events[0] == ("prepare", mode) and events.count(("check", 3)) == 1 and events[-1] == ("check", 3)
        assert any(e[0] == "check" for e in events[1:-1]), (call, events)
        x[0, 0, 0, 0] = np.nan
        with pytest.raises(fastcnn.ShapeError, match="image 0 holds NaN or Inf"):
            getattr(model, call)(*((x, y) if call == "train_step" else (x,)))
        x[0, 0, 0, 0] = 0.0


def test_a_kernel_that_refuses_the_rehearsals_unset_values_does_not_fail_the_pass(monkeypatch):
    # A kernel compiled already runs for real in a rehearsal, on what the stopped ones left unset:
    # the max-pool's backward, compiled once the process has run an overlapping pool, refused an
    # argmax its uncompiled forward never wrote, and the model's first step raised that error.
    from fastcnn import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential
    from fastcnn import kernels as compiled
    calls = []
    real = compiled.maxpool_backward_into

    def refuses_the_first(dx, dy, argmax):
        calls.append(len(calls))
        if len(calls) == 1:  # the rehearsal's call
            raise compiled.checks.ShapeError("argmax: indices must lie in 0..63 for a 8x8 input")
        real(dx, dy, argmax)
    monkeypatch.setattr(compiled, "maxpool_backward_into", refuses_the_first)
    layers = lambda: [Conv2D(2, 3, 3), MaxPool2D(2, 1), ReLU(), Flatten(), Dense(108, 4)]  # noqa: E731
    fast, ref = Sequential(layers(), seed=1), Sequential(layers(), seed=1, backend="numpy")
    x, y = np.random.default_rng(0).standard_normal((3, 9, 9, 2)).astype(np.float32), np.arange(3)
    assert [type(step).__name__ for step in fast.plan(x.shape[1:]).steps][:2] == ["Conv", "Pool"]
    assert abs(fast.train_step(x, y)[0] - ref.train_step(x, y)[0]) < 1e-5
    assert calls == [0, 1]  # refused in the rehearsal, then ran in the step
    np.testing.assert_allclose(fast.gradients, ref.gradients, atol=5e-5 * np.abs(ref.gradients).max())


def test_the_rehearsal_changes_nothing_and_runs_no_layer_of_the_users():
    calls = []

    class Double(fastcnn.Layer):
        def forward(self, x):
            calls.append("forward")
            return 2 * x

        def backward(self, dy):
            calls.append("backward")
            return 2 * dy

    layers = ARCHITECTURES["deep"].layers((28, 28, 1), 10)
    model = fastcnn.Sequential(layers[:8] + [Double()] + layers[8:], input_shape=(28, 28, 1))
    opt = fastcnn.SGD(model, 0.1)
    model.gradients[...] = 1.0
    before = [a.copy() for a in (model.parameters, model.gradients, opt.velocity, *(b for _, b in model.named_buffers()))]
    plan = model.plan((28, 28, 1))
    compiling.rehearsed([(plan, True), (plan, False)], [opt])
    after = (model.parameters, model.gradients, opt.velocity, *(b for _, b in model.named_buffers()))
    assert all(np.array_equal(a, b) for a, b in zip(before, after)) and calls == [] and opt.steps == 0
    model.train_step(np.zeros((4, 28, 28, 1), np.float32), np.zeros(4, np.int64))
    assert calls == ["forward", "backward"]


# A helper process compiles the softmax (this process compiles nothing); then compile_jobs
# compiles the softmax cross-entropy here, saying so (_SILENT_AT_MOST 0: every compile is said).
# The helper is a copy of this process (fork), or with another Python thread alive (THREAD=1),
# which a copy might wait for forever, a fresh interpreter.
POOL = """
    import json, os, threading, numpy as np
    from fastcnn import compiling
    if os.environ.get("THREAD"):
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    from fastcnn.kernels import jit, loss
    compiling._SILENT_AT_MOST = 0.0
    f32 = lambda *shape: np.zeros(shape, np.float32)
    with compiling._intercepted(calls := []):
        loss.softmax_into(f32(2, 3), f32(2, 3))
        loss.softmax_cross_entropy_into(f32(2, 3), f32(2), f32(2, 3), np.zeros(2, np.int64))
    jobs = compiling.missing(calls)
    helped = 0
    if jobs:
        groups, queue = {jobs[0].kernel: [jobs[0].signature]}, compiling._Queue([jobs[0].kernel])
        helper = compiling._Helper.start(compiling._can_fork())
        helper.serve(queue, groups, compiling._Progress(groups, False))
        helped = len(helper.records)
        assert helper.forked == (not os.environ.get("THREAD"))
        assert not loss._softmax.overloads and not compiling.missing(jobs[:1])  # in the cache, not here
    compiled = compiling.compile_jobs(compiling.missing(calls), processes=1) if compiling.missing(calls) else 0
    print(json.dumps({"jobs": len(jobs), "helped": helped, "compiled": compiled, "left": len(compiling.missing(calls)),
                      "dir": str(jit.cache_dir())}))
"""


@pytest.mark.parametrize("thread", ["", "1"], ids=["forked", "fresh interpreter"])
def test_a_helper_process_compiles_into_the_cache_and_compile_jobs_says_so_and_records_the_times(tmp_path, thread):
    done = run(POOL, tmp_path / "cache", THREAD=thread)
    out = json.loads(done.stdout)
    assert (out["jobs"], out["helped"], out["compiled"], out["left"]) == (2, 1, 1, 0)
    assert "fastcnn: compiling 1 kernel for this CPU" in done.stderr and "fastcnn: compiled in" in done.stderr
    times = json.loads((Path(out["dir"]) / "compile-times.json").read_text())
    assert list(times["kernels"]) == ["loss._softmax_cross_entropy"]  # (the helper's went to no compile_jobs)
    again = run(POOL, tmp_path / "cache")  # all in the cache: nothing compiled, nothing said
    assert json.loads(again.stdout)["jobs"] == 0 and "compil" not in again.stderr


def test_estimates_come_from_the_records_of_this_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCNN_CACHE_DIR", str(tmp_path))
    groups = {"loss._softmax": ["sig a", "sig b"], "optim._sgd_momentum": ["sig"]}
    fresh = compiling.Records.load()
    assert not fresh.measured()
    reference = {k: compiling.REFERENCE_SECONDS[k] for k in groups}  # what they took on the reference machine
    assert fresh.estimates(groups) == pytest.approx({"loss._softmax": 2 * reference["loss._softmax"],
                                                     "optim._sgd_momentum": reference["optim._sgd_momentum"]})
    measured = fresh.estimates(groups, measured=("optim._sgd_momentum", 3 * reference["optim._sgd_momentum"]))
    assert measured["loss._softmax"] == pytest.approx(6 * reference["loss._softmax"])  # this machine: 3x the reference
    # Another build on this CPU (an earlier version) recorded the softmax: that counts, per signature.
    other = tmp_path / "0.1.0" / jit.cpu_key() / "an old build"
    other.mkdir(parents=True)
    (other / "compile-times.json").write_text(json.dumps({"kernels": {"loss._softmax": {"sig a": 0.5}}}))
    times = compiling.Records.load()
    assert times.measured()
    estimate = times.estimates(groups)
    assert estimate["loss._softmax"] == pytest.approx(1.0)  # sig b: as the costliest recorded one
    assert estimate["optim._sgd_momentum"] == pytest.approx(0.5 / reference["loss._softmax"]
                                                            * reference["optim._sgd_momentum"])
    # Records of the wrong form (damaged, or another version's) are left out, not a crash of every
    # run that compiles (AttributeError: 'str' object has no attribute 'values').
    here = compiling.Records.load().path
    here.parent.mkdir(parents=True, exist_ok=True)
    for bad in ({"kernels": {"loss._softmax": "x"}}, {"kernels": []}, {"kernels": {"loss._softmax": {"a": "x"}}},
                {"kernels": {"optim._sgd_momentum": [1.5]}, "start": "soon"}, [1, 2]):
        for path in (here, other / "compile-times.json"):
            path.write_text(json.dumps(bad))
        times = compiling.Records.load()
        assert not times.measured() and times.start == compiling._START_GUESS
        assert times.estimates(groups) == pytest.approx(fresh.estimates(groups)), bad
        times.add([("loss._softmax", "sig a", 0.25)])
        times.save()
        assert json.loads(here.read_text())["kernels"] == {"loss._softmax": {"sig a": 0.25}}
    # Another CPU's records don't count.
    monkeypatch.setattr("numba.config.CPU_NAME", "haswell")
    assert not compiling.Records.load().measured()


def test_the_reference_compile_times_name_kernels_that_exist_and_others_come_from_the_cost_model():
    # A kernel renamed or removed would leave its reference behind, and the estimates would fall
    # back to the cost model for the new name without a word. (Importing fastcnn.kernels imported
    # every kernel module, so jit.KERNELS is whole.)
    assert set(compiling.REFERENCE_SECONDS) <= set(jit.KERNELS)
    assert all(0 < seconds < 60 for seconds in compiling.REFERENCE_SECONDS.values())
    unlisted = sorted(set(jit.KERNELS) - set(compiling.REFERENCE_SECONDS))
    assert unlisted, "every kernel is listed: nothing left to check the fallback on"
    kernel = unlisted[0]
    assert compiling._reference_seconds(kernel) == pytest.approx(
        compiling._model_seconds(kernel) * compiling._model_scale())
    assert 0.2 < compiling._model_scale() < 5


def test_the_pool_is_used_only_where_it_pays():
    assert compiling._helpers_worth([5.0, 4.0, 3.0], processes=2, start=0.7) == 1
    assert compiling._helpers_worth([5.0, 4.0, 3.0], processes=8, start=0.7) == 2  # no more than kernels
    assert compiling._helpers_worth([0.3, 0.2], processes=2, start=0.7) == 0  # starting one costs more
    assert compiling._helpers_worth([5.0], processes=2, start=0.7) == 0
    assert compiling._makespan([5.0, 4.0, 3.0], 2, 0.7) == pytest.approx(7.7)  # here 5; the helper 0.7 + 4 + 3


def test_predicting_a_few_pictures_compiles_nothing_and_says_what_the_kernels_say(tmp_path):
    # An empty cache: `fastcnn predict` on a few pictures runs the NumPy twins (nothing compiled)
    # and prints what the compiled kernels print; more pictures than FEW_PICTURES compile.
    code = """
        import contextlib, io, json, os, numpy as np
        from PIL import Image
        from fastcnn.architectures import mnist_network
        from fastcnn.cli import main, use
        from fastcnn.kernels import jit
        work = os.environ["WORK"]
        model, pictures = os.path.join(work, "m.npz"), [os.path.join(work, f"{i}.png") for i in range(3)]
        mnist_network(seed=0).save(model)
        for i, path in enumerate(pictures):
            digit = np.zeros((28, 28), np.uint8)
            digit[4 + i:20 + i, 10:14 + 2 * i] = 255
            Image.fromarray(digit).save(path)
        def predict():
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert main(["predict", model, *pictures]) == 0
            return out.getvalue(), sum(len(d.overloads) for d in jit.KERNELS.values())
        twins, none = predict()
        use.FEW_PICTURES = 1
        kernels, some = predict()
        print(json.dumps({"twins": twins, "kernels": kernels, "compiled": [none, some]}))
    """
    done = run(code, tmp_path / "cache", WORK=str(tmp_path))
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["compiled"][0] == 0 and out["compiled"][1] > 0
    assert out["twins"] == out["kernels"] and out["twins"].count("%") == 3 * 11
    assert done.stderr.count("fastcnn: compiling") == 1  # the second run's: the twins' said nothing


def test_a_models_backend_can_be_changed():
    model = ARCHITECTURES["original"].build((28, 28, 1), 10, 0)
    model.eval()
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    compiled = model.predict(x)
    model.backend = "numpy"
    assert model.plan().kernels.__name__.endswith("reference")
    np.testing.assert_allclose(model.predict(x), compiled, rtol=1e-5, atol=1e-6)
    model.backend = "numba"
    np.testing.assert_array_equal(model.predict(x), compiled)
    with pytest.raises(fastcnn.ConfigError, match="backend: expected one of"):
        model.backend = "torch"


def test_a_compile_nobody_prepared_says_so_after_a_second(tmp_path):
    code = """
        import numpy as np
        from fastcnn import compiling
        from fastcnn.kernels import optim
        compiling._SILENT_AT_MOST = 0.0
        p = np.zeros(3, np.float32)
        optim.sgd_momentum(p, p.copy(), p.copy(), 0.1, 0.9)
    """
    assert "compiling the kernel optim._sgd_momentum for this CPU" in run(code, tmp_path / "cache").stderr


def test_compile_command_on_a_filled_cache_and_with_bad_arguments(capsys):
    from fastcnn.cli import main
    assert main(["compile", "--model", "original", "--model", "original"]) == 0  # the suite has them already
    out = capsys.readouterr()
    assert "kernels of original are compiled for this CPU" in out.out and str(jit.cache_dir()) in out.out
    assert main(["compile", "--processes", "0"]) == 2
    assert "--processes: expected a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compile", "--model", "resnet50"])
    assert "invalid choice: 'resnet50'" in capsys.readouterr().err


def test_only_the_most_recently_used_builds_are_kept(tmp_path, monkeypatch):
    # Edited kernels make a new build folder; the oldest of more than KEEP_BUILDS go when one is made.
    cpu = tmp_path / fastcnn.__version__ / jit.cpu_key()
    for age, name in enumerate(["b0", "b1", "b2", "b3", "b4"]):
        (cpu / name).mkdir(parents=True)
        os.utime(cpu / name, (1000.0 * (age + 1),) * 2)
    monkeypatch.setattr(jit, "cache_dir", lambda: cpu / "new")
    jit._prepared_cache_dir.cache_clear()
    try:
        assert jit._prepared_cache_dir() == cpu / "new"
        assert sorted(p.name for p in cpu.iterdir()) == ["b2", "b3", "b4", "new"][-jit.KEEP_BUILDS:]
    finally:
        jit._prepared_cache_dir.cache_clear()


def test_a_models_first_training_step_compiles_its_optimizers_step_with_it(monkeypatch):
    seen, real = [], compiling.prepare

    def prepare(plan, modes=(True, False), optimizer=None, **kw):
        seen.append((tuple(modes), optimizer))
        return real(plan, modes, optimizer, **kw)

    monkeypatch.setattr(compiling, "prepare", prepare)
    model = fastcnn.Sequential([fastcnn.Conv2D(4, 3), fastcnn.ReLU(), fastcnn.Flatten(), fastcnn.Dense(3)],
                               input_shape=(6, 5, 1))
    opt = fastcnn.SGD(model, 0.1)
    x, y = np.zeros((2, 6, 5, 1), np.float32), np.zeros(2, np.int64)
    model.train_step(x, y)
    model.train_step(x, y)
    assert seen == [((True,), opt)]  # once, with the optimizer
    other = fastcnn.Sequential([fastcnn.Flatten(), fastcnn.Dense(3)], input_shape=(6, 5, 1))
    fastcnn.SGD(other, 0.1)  # gone before the first step: nothing to compile for it
    other.train()
    other.forward(x)
    assert seen[-1] == ((True,), None)


# The direct weight gradient compiled alone: how many times its register-tile helpers compiled.
WEIGHT_ROWS = """
    import json, numpy as np
    from fastcnn.kernels import conv, reference
    rng = np.random.default_rng(0)
    x, dy = rng.random((3, 6, 5, 1), np.float32), rng.random((3, 6, 5, 4), np.float32)
    w = np.zeros((3, 3, 1, 4), np.float32)
    _, dw, db = conv.conv2d_backward(dy, x, w, 1, 1, need_dx=False)
    _, rdw, rdb = reference.conv2d_backward(dy, x, w, 1, 1)
    print(json.dumps({"right": bool(np.allclose(dw, rdw, atol=1e-5) and np.allclose(db, rdb, atol=1e-5)),
                      "weight_rows": len(conv.weight_rows.signatures), "tile": len(conv._weight_tile.signatures)}))
"""


# Then, in another process with the same cache, the fused conv -> ReLU -> pool backward, which
# shares those helpers: which functions it compiled.
SHARED_HELPERS = """
    import json, numpy as np
    from numba.core import event
    from fastcnn.kernels import conv, conv_pool, reference
    compiled = []
    class Compiles(event.Listener):
        def on_start(self, ev):
            compiled.append(ev.data["dispatcher"].py_func.__qualname__)
        def on_end(self, ev):
            pass
    event.register("numba:compile", Compiles())
    rng = np.random.default_rng(0)
    x, w, b = rng.random((2, 6, 6, 1), np.float32), rng.random((3, 3, 1, 4), np.float32) - 0.5, np.zeros(4, np.float32)
    y, argmax = reference.conv_relu_pool_forward(x, w, b, 1, 1)
    dy = rng.random(y.shape, np.float32)
    _, dw, db = conv_pool.conv_relu_pool_backward(dy, x, w, y, argmax, 1, 1, need_dx=False)
    _, rdw, rdb = reference.conv_relu_pool_backward(dy, x, w, y, argmax, 1, 1)
    print(json.dumps({"right": bool(np.allclose(dw, rdw, atol=1e-5) and np.allclose(db, rdb, atol=1e-5)),
                      "compiled": sorted({"_conv_relu_pool_backward_weight", "weight_rows", "_weight_tile"} & set(compiled))}))
"""


def test_a_helper_given_a_prange_index_compiles_once_and_other_processes_load_it(tmp_path):
    # Numba types a prange loop's index int64 in the kernel, then uint64 in the loop body's own
    # compile: a helper handed it would compile for both (1.3-1.9 s of CPU more), so the kernels
    # hand it over as uint64.
    out = json.loads(run(WEIGHT_ROWS, tmp_path / "cache").stdout)
    assert out == {"right": True, "weight_rows": 1, "tile": 1}
    # Helpers are cached as kernels are: a kernel compiled later, elsewhere, loads the ones it shares.
    out = json.loads(run(SHARED_HELPERS, tmp_path / "cache").stdout)
    assert out == {"right": True, "compiled": ["_conv_relu_pool_backward_weight"]}


def test_a_process_takes_first_the_kernels_that_share_a_helper_with_one_it_took(monkeypatch):
    helpers = {"wino.forward": {"inputs", "products"}, "conv.forward": {"rows"}, "wino.gradient": {"inputs"},
               "wino.pool": {"products"}, "dense.forward": set()}
    monkeypatch.setattr(compiling, "_helpers", lambda kernel: frozenset(helpers[kernel]))
    queue = compiling._Queue(list(helpers))  # costliest first
    assert queue.take("helper") == "wino.forward"  # and claims the two that share its helpers
    assert queue.take(compiling._HERE) == "conv.forward"  # the costliest nobody claimed
    assert queue.take("helper") == "wino.gradient"  # its own claims first
    queue.put_back("wino.gradient")  # the helper failed: anyone's, first
    assert queue.take(compiling._HERE) == "wino.gradient"
    assert queue.take(compiling._HERE) == "dense.forward"
    assert queue.take(compiling._HERE) == "wino.pool"  # nothing else is left: another's claim
    assert queue.take("helper") is None and queue.take_probe({}) is None


def test_the_first_kernel_that_times_a_new_cpu_takes_a_second_or_more_where_one_does(monkeypatch):
    monkeypatch.setattr(compiling, "_helpers", lambda kernel: frozenset())
    estimate = {"big": 6.0, "middle": 1.3, "small": 1.0, "tiny": 0.3}
    queue = compiling._Queue(list(estimate))  # costliest first
    assert queue.take_probe(estimate) == "small"  # the cheapest of those that take long enough
    assert queue.take_probe(estimate) == "middle"
    queue = compiling._Queue(["a", "b"])
    assert queue.take_probe({"a": 0.5, "b": 0.2}) == "a"  # none does: the costliest


# A small model's first training step (at batch 64: each kernel it runs is prepared), one process
# compiling (no helpers); how many of the kernels this process compiled, and how many it loaded.
FIRST_STEP = """
    import json, numpy as np, fastcnn
    from fastcnn.kernels import jit
    model = fastcnn.Sequential([fastcnn.Dense(16), fastcnn.ReLU(), fastcnn.Dense(3)], input_shape=(5,))
    model.train_step(np.ones((64, 5), np.float32), np.zeros(64, np.int64))
    stats = [d.stats for d in jit.KERNELS.values()]
    print(json.dumps({"compiled": sum(sum(s.cache_misses.values()) for s in stats),
                      "loaded": sum(sum(s.cache_hits.values()) for s in stats)}))
"""


def test_processes_compiling_into_one_cache_at_once_compile_each_kernel_once(tmp_path):
    """Two first runs at once on an empty cache (two terminals, MPI's ranks, test workers): each
    kernel is compiled by one of them and loaded by the other, not compiled twice."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTCNN_CACHE", "NUMBA_C"))}
    env.update(FASTCNN_CACHE_DIR=str(tmp_path), FASTCNN_COMPILE_PROCESSES="1")
    runs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(FIRST_STEP)], env=env, cwd="/",
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [json.loads(run.communicate(timeout=300)[0]) for run in runs]
    compiled, loaded = sum(o["compiled"] for o in outs), sum(o["loaded"] for o in outs)
    assert compiled >= 3 and loaded == compiled, outs


def test_a_kernel_claimed_by_another_process_is_waited_for_then_taken_anyway(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCNN_CACHE_DIR", str(tmp_path))
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from fastcnn import compiling
        with compiling._claimed("dense._dense_forward"):
            print("held", flush=True)
            time.sleep(float(sys.argv[1]))
    """), "1.0"], stdout=subprocess.PIPE, text=True, cwd="/")
    assert holder.stdout.readline() == "held\n"
    started = time.monotonic()
    with compiling._claimed("dense._dense_forward"):  # waits for the other to let go
        waited = time.monotonic() - started
    holder.wait(60)
    assert 0.5 < waited < 30
    holder = subprocess.Popen(holder.args[:-1] + ["30"], stdout=subprocess.PIPE, text=True, cwd="/")
    assert holder.stdout.readline() == "held\n"
    monkeypatch.setattr(compiling, "_WAIT_FOR_OTHERS", 0.3)
    started = time.monotonic()
    try:
        with compiling._claimed("dense._dense_forward"):  # the other may be stopped: not for ever
            waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait(60)
    assert 0.3 <= waited < 5


def test_a_probe_kernel_another_process_compiled_does_not_time_this_machine(tmp_path, monkeypatch):
    """On a CPU with nothing recorded, the first kernel compiled times the machine for the estimate;
    one that was loaded instead (another process compiled it meanwhile) took no time to compile,
    and the estimate stays the reference machine's, not zero."""
    monkeypatch.setenv("FASTCNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compiling, "_compile_here", lambda kernel, signatures, announced=True: None)  # all loaded
    seen = []
    monkeypatch.setattr(compiling._Progress, "begin",
                        lambda self, estimate, wall, processes, started: seen.append(estimate))
    kernels = ["dense._dense_backward", "dense._dense_forward", "loss._softmax"]
    compiling.compile_jobs([compiling.Job(k, ("a signature",)) for k in kernels], processes=1, say=False)
    assert seen == [{k: pytest.approx(compiling.REFERENCE_SECONDS[k]) for k in kernels}]


def test_the_bar_says_the_time_since_the_compile_began_and_what_is_left_by_the_share_done(monkeypatch):
    # It showed tqdm's own times: from the bar's start (after the first kernel, compiled before it),
    # and a time left of 00:00 halfway (tqdm's rate never sees a count that is set).
    import io
    import time

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    progress = compiling._Progress({"a": ["sig"], "b": ["sig"], "c": ["sig"]}, say=True)
    progress.begin({"a": 3.0, "b": 2.0, "c": 1.0}, 5.0, 2, time.perf_counter() - 6.0)  # began 6 s ago
    try:
        assert progress.bar is not None and progress.bar.desc == "compiling kernels 0/3"
        with progress.lock:
            progress.finished.append("a")  # half the estimate done in 6 s: 6 s left
            progress._show()
            assert progress.bar.unit == "00:06<00:06" and progress.bar.desc == "compiling kernels 1/3"
    finally:
        progress.close(6.0)


def test_ctrl_c_during_a_compile_is_not_lost_where_llvmlite_swallows_it():
    # A KeyboardInterrupt raised inside one of llvmlite's callbacks is printed and ignored there: the run
    # went on to train the whole epoch and exit 0 (2 tries in 12).
    import signal
    with pytest.raises(KeyboardInterrupt):
        with compiling._interrupts_kept():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)  # (the handler runs here)
            except KeyboardInterrupt:
                pass  # as llvmlite's callback does
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
