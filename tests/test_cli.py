"""The `fastconv` command, run as a real subprocess on the vendored MNIST."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import fastconv

REPO = pathlib.Path(__file__).resolve().parents[1]


# The vendored MNIST is found through $FASTCONV_DATA; commands run outside the checkout so that they
# import the installed fastconv, not the source folder.
# PYTHONPATH makes them import the very fastconv these tests imported (installed, or built in place).
ENV = {**os.environ, "FASTCONV_NO_DOWNLOAD": "1", "FASTCONV_DATA": str(REPO / "data"),
       "PYTHONPATH": str(pathlib.Path(fastconv.__file__).resolve().parents[1])}
OUTSIDE = tempfile.gettempdir()


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fastconv", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=OUTSIDE)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "seed.fastconv"
    result = run("train", "--model", "seed", "--epochs", "1", "--train-size", "3000", "--seed", "1",
                 "--save", str(path))
    return path, result


def test_train_reports_and_saves_a_model_that_learned(trained):
    path, result = trained
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "images/s" in out and "confusion matrix" in out and path.exists()
    assert ", 1 epoch, " in out and "epochs" not in out
    # One line per epoch: the progress bar, with the rate and the validation metrics inside it.
    bars = [line for line in out.splitlines() if "images/s" in line]
    assert len(bars) == 1 and bars[0].startswith("47/47 [") and "val_accuracy" in bars[0]
    assert "epoch 1: training" not in out
    accuracy = float(out.split("test accuracy: ")[1].split()[0])
    assert accuracy > 0.85  # 3000 images, one epoch: well above chance (0.10)


def test_evaluate_and_predict_use_the_saved_model(trained, tmp_path):
    path, _ = trained
    result = run("evaluate", str(path))
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split(": ")[1].split()[0]) > 0.85

    from fastconv.datasets import mnist
    _, (x_test, y_test) = mnist.load_data(REPO / "data" / "mnist")
    npy = tmp_path / "digit.npy"
    np.save(npy, x_test[0])
    pgm = tmp_path / "digit.pgm"
    pgm.write_bytes(b"P5\n28 28\n255\n" + x_test[1].tobytes())
    result = run("predict", str(path), str(npy), str(pgm))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split(": ")[1].split()[0] == str(y_test[0])
    assert lines[1].split(": ")[1].split()[0] == str(y_test[1])


@pytest.mark.parametrize("args,words", [
    (["train", "--model", "resnet"], "invalid choice"),
    (["train", "--dataset", "cifar"], "invalid choice"),
    (["train", "--epochs", "0"], "positive integer"),
    (["evaluate", "no-such-model.fastconv"], "model file not found"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_gives_one_line_and_nonzero_exit(args, words):
    result = run(*args)
    assert result.returncode != 0
    assert words in result.stderr and "Traceback" not in result.stderr


def test_corrupt_model_and_wrong_image_size_are_clear_errors(trained, tmp_path):
    path, _ = trained
    corrupt = tmp_path / "corrupt.fastconv"
    corrupt.write_bytes(path.read_bytes()[:200])
    result = run("evaluate", str(corrupt))
    assert result.returncode != 0 and "Traceback" not in result.stderr and "error" in result.stderr
    image = tmp_path / "big.npy"
    np.save(image, np.zeros((32, 32), np.uint8))
    result = run("predict", str(path), str(image))
    assert result.returncode != 0 and "28x28" in result.stderr and "Traceback" not in result.stderr


def test_ctrl_c_stops_after_the_step_and_keeps_the_last_checkpoint(tmp_path):
    path = tmp_path / "interrupted.fastconv"
    proc = subprocess.Popen([sys.executable, "-m", "fastconv", "train", "--model", "mlp", "--epochs", "50",
                             "--train-size", "2000", "--save", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=OUTSIDE)
    deadline = time.time() + 120
    while not path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert path.exists(), proc.communicate()[1]
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    # Mid-epoch ("the last completed checkpoint is ...") or, if Ctrl-C came during validation, after the
    # epoch completed ("its checkpoint is ..."): either way the message names the saved file.
    assert "Interrupted" in out and "checkpoint is" in out and str(path) in out
    assert "Traceback" not in err
    check = run("evaluate", str(path))
    assert check.returncode == 0, check.stderr


def test_bench_peak_prints_a_table():
    result = run("bench", "peak", "--threads", "1")
    assert result.returncode == 0, result.stderr
    stamp, *lines = result.stdout.strip().splitlines()
    assert stamp.startswith("fastconv ") and "commit" in stamp and "load average" in stamp
    assert lines[0].split() == ["isa", "threads", "peak", "GFLOPS"]
    assert all(float(line.split()[-1]) > 0 for line in lines[2:])


def test_bench_gemm_prints_gflops_and_both_ratios():
    result = run("bench", "gemm", "--threads", "1", "--sizes", "48x32x40/ta", "--rounds", "3")
    assert result.returncode == 0, result.stderr
    row = result.stdout.strip().splitlines()[-1].split()
    assert row[:2] == ["48x32x40/ta", "1"]
    fc, peak_share, ref, best_ratio, median_ratio = float(row[2]), row[3], float(row[4]), float(row[5]), float(row[6])
    assert fc > 0 and ref > 0 and peak_share.endswith("%")
    # the table rounds GFLOPS to 0.1 and ratios to 0.01: the printed ratio is the ratio of the unrounded GFLOPS
    assert (fc - 0.05) / (ref + 0.05) - 0.0051 <= best_ratio <= (fc + 0.05) / (ref - 0.05) + 0.0051
    assert median_ratio > 0


def test_seconds_per_call_is_the_fastest_batch(monkeypatch):
    """A call's time is its batches' best: calls of 2 ms with two 10 ms stalls (another process taking
    the core) read 2 ms, where the mean of the 17 calls timed was 2.9."""
    from fastconv import bench
    clock = [0.0]
    costs = iter([2e-3] * 4 + [10e-3] * 2 + [2e-3] * 100)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])

    def call():
        clock[0] += next(costs)

    assert bench.seconds_per_call(call, min_time=0.05) == pytest.approx(2e-3)
    assert clock[0] >= 0.05


def test_seconds_per_call_batches_short_calls(monkeypatch):
    """Calls much shorter than a batch are timed together: 1 us calls in batches of about 1 ms."""
    from fastconv import bench
    clock, calls = [0.0], [0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])

    def call():
        clock[0] += 1e-6
        calls[0] += 1

    assert bench.seconds_per_call(call, min_time=0.01, batch_time=1e-3) == pytest.approx(1e-6)
    assert 10_000 <= calls[0] <= 14_000


def test_interleaved_times_alternate_the_order_of_the_libraries(monkeypatch):
    from fastconv import bench
    calls = []
    monkeypatch.setattr(bench, "seconds_per_call", lambda fn, min_time: fn())
    times = bench.interleaved_times([lambda: calls.append("a") or 1.0, lambda: calls.append("b") or 2.0],
                                    rounds=3, settle=0)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert times == [[1.0, 2.0]] * 3


def test_bench_quick_prints_the_table_and_writes_json(tmp_path):
    path = tmp_path / "bench.json"
    result = run("bench", "--quick", "--json", str(path))
    assert result.returncode == 0, result.stderr
    assert "train step" in result.stdout and "maxpool bwd" in result.stdout
    rows = json.loads(path.read_text())["rows"]
    ops = {row["op"] for row in rows}
    assert {"gemm", "conv2d fwd", "conv2d bwd", "maxpool fwd", "maxpool bwd", "train step"} <= ops
    assert all(row["seconds"]["fastconv"] > 0 and row["seconds"]["numpy"] > 0 for row in rows)


def test_augmented_training_writes_the_plot(tmp_path):
    pytest.importorskip("matplotlib")  # the optional `plot` extra; the next test covers its absence
    plot = tmp_path / "curves.png"
    result = run("train", "--model", "lenet5", "--epochs", "2", "--train-size", "1000", "--augment",
                 "--save", str(tmp_path / "m.fastconv"), "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    assert "Epoch 2/2" in result.stdout and "augment on" in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_clear_error_before_training(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "matplotlib.py").write_text("raise ImportError('matplotlib is not installed')\n")
    env = {**ENV, "PYTHONPATH": f"{blocker}{os.pathsep}{ENV['PYTHONPATH']}"}
    result = subprocess.run([sys.executable, "-m", "fastconv", "train", "--plot", str(tmp_path / "p.png")],
                            capture_output=True, text=True, env=env, cwd=OUTSIDE, timeout=120)
    assert result.returncode != 0 and "pip install 'fastconv[plot]'" in result.stderr
    assert "Traceback" not in result.stderr and "Epoch" not in result.stdout


def test_predict_reads_png_with_pillow(trained, tmp_path):
    image_module = pytest.importorskip("PIL.Image")  # the optional `images` extra
    from fastconv.datasets import mnist
    _, (x_test, y_test) = mnist.load_data(REPO / "data" / "mnist")
    png = tmp_path / "digit.png"
    image_module.fromarray(x_test[2]).save(png)
    result = run("predict", str(trained[0]), str(png))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(": ")[1].split()[0] == str(y_test[2])


def test_bench_train_rows_step_with_their_own_batch(monkeypatch):
    """Each training row runs its model on its own batch (seed 64, keras-cnn 128), not the last row's."""
    from fastconv import bench_suite, bench_training
    seen = []
    monkeypatch.setattr(bench_training, "make_trainer",
                        lambda impl, name: lambda images, labels: seen.append((name, len(images), len(labels))))
    rows = bench_suite.train_rows(np.random.default_rng(0), None)
    for row in rows:
        row.fns["fastconv"]()
    assert seen == [(name, batch, batch) for name, batch in bench_suite.TRAIN_STEPS]


def test_predict_inverts_a_light_background_and_says_so(trained, tmp_path):
    path, _ = trained
    from fastconv.datasets import mnist
    x_test, y_test = mnist.load_test_data(REPO / "data" / "mnist")
    picks = [0, 1]  # a 7 and a 2, which the model classifies right as MNIST has them (checked above)
    files = []
    for index in picks:
        files.append(tmp_path / f"black-on-white-{index}.npy")
        np.save(files[-1], 255 - x_test[index])  # a dark digit drawn on white paper
    result = run("predict", str(path), *map(str, files))
    assert result.returncode == 0, result.stderr
    for line, index in zip(result.stdout.strip().splitlines(), picks):
        assert line.split(": ")[1].split()[0] == str(y_test[index])
        assert "inverted: light background" in line
    result = run("predict", "--no-invert", str(path), str(files[0]))
    assert "inverted" not in result.stdout


def test_evaluate_needs_only_the_test_files(trained, tmp_path):
    path, _ = trained
    only_test = tmp_path / "data" / "mnist"
    only_test.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (only_test / name).symlink_to(REPO / "data" / "mnist" / name)
    env = {**ENV, "FASTCONV_DATA": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "fastconv", "evaluate", str(path)], capture_output=True,
                            text=True, timeout=120, env=env, cwd=OUTSIDE)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split(": ")[1].split()[0]) > 0.85


def test_train_says_when_it_replaces_a_model_file(tmp_path):
    path = tmp_path / "m.fastconv"
    path.write_bytes(b"an older model")
    result = run("train", "--model", "mlp", "--epochs", "1", "--train-size", "256", "--save", str(path))
    assert result.returncode == 0, result.stderr
    assert f"{path} exists: each completed epoch replaces it" in result.stdout
    assert f"model saved to {path} (replacing the file that was there)" in result.stdout


def test_unknown_optimizer_lists_the_names_a_user_can_give():
    result = run("train", "--optimizer", "adamax")
    assert result.returncode != 0 and "invalid choice: 'adamax'" in result.stderr
    assert "sgd" in result.stderr and "Optimizer" not in result.stderr


def test_installed_from_the_checkout_finds_mnist_offline_from_anywhere(trained, tmp_path):
    """No FASTCONV_DATA, an empty cache, no download: the checkout's vendored copy is found and cached."""
    path, _ = trained
    cache = tmp_path / "cache"
    env = {key: value for key, value in ENV.items() if key != "FASTCONV_DATA"}
    env["XDG_CACHE_HOME"] = str(cache)
    result = subprocess.run([sys.executable, "-m", "fastconv", "evaluate", str(path)], capture_output=True,
                            text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(cache / "fastconv" / "mnist")) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_train_with_bf16_precision_says_what_it_runs_on(tmp_path):
    path = tmp_path / "bf16.fastconv"
    result = run("train", "--precision", "bf16", "--epochs", "1", "--train-size", "1000", "--seed", "1",
                 "--save", str(path))
    assert result.returncode == 0, result.stderr
    kernel = fastconv.config()["kernels"]["gemm_bf16"]
    expected = "no AVX512_BF16" if kernel.startswith("float32") else f"in bfloat16 on {kernel}"
    assert "precision mixed_bfloat16: " in result.stdout and expected in result.stdout
    assert "RuntimeWarning" not in result.stderr  # said once, by the report
    assert float(result.stdout.split("test accuracy: ")[1].split()[0]) > 0.5
    from fastconv import keras
    model = keras.models.load_model(path)
    assert {layer.dtype_policy.name for layer in model.layers if layer.weights} == {"mixed_bfloat16"}
    assert run("train", "--precision", "fp8").returncode != 0
