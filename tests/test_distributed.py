"""Data-parallel training on MPI: real `mpiexec -n 2` / `-n 3` jobs, each a subprocess with a timeout,
so a hang fails the test instead of blocking the suite.

The test extra installs mpi4py and the mpich wheel, whose mpiexec lands next to the Python.
"""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

import fastconv

REPO = pathlib.Path(__file__).resolve().parents[1]
# mpiexec comes with the mpich wheel, next to this Python; a site's MPI puts it on PATH.
MPIEXEC = shutil.which("mpiexec", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("mpiexec")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "FASTCONV_NO_DOWNLOAD": "1", "FASTCONV_DATA": str(REPO / "data"),
       "PYTHONPATH": str(pathlib.Path(fastconv.__file__).resolve().parents[1])}
OUTSIDE = tempfile.gettempdir()


SHM = pathlib.Path("/dev/shm")


def mpich_segments():
    return set(SHM.glob("mpich_shm_*")) if SHM.is_dir() else set()


def orphaned(segments):
    """The segments no live process maps: MPICH's shared-memory files of ranks killed before they unlinked
    them (the fault tests kill ranks on purpose), which would otherwise stay in /dev/shm for good."""
    mapped = set()
    for maps in pathlib.Path("/proc").glob("[0-9]*/maps"):
        try:
            lines = maps.read_text().splitlines()
        except OSError:  # a process that ended, or another user's
            continue
        mapped.update(line.split(maxsplit=5)[-1] for line in lines if "/dev/shm/" in line)
    return {path for path in segments if str(path) not in mapped}


def launch(command, timeout):
    """Run a command in its own process group; on timeout kill the whole group (every rank) and fail.
    Afterwards remove the shared-memory files it left that nothing maps any more."""
    before = mpich_segments()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                               cwd=OUTSIDE, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"{' '.join(map(str, command))} hung for {timeout}s\nstdout:\n{out}\nstderr:\n{err}")
    finally:
        remove_orphaned_segments(before)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def remove_orphaned_segments(before, wait=2.0):
    """Delete the segments made since `before` once nothing maps them; a rank of a killed job may still be
    exiting when mpiexec returns, so wait up to `wait` seconds for it."""
    deadline = time.monotonic() + wait
    while True:
        new = mpich_segments() - before
        for path in orphaned(new):
            path.unlink(missing_ok=True)
        if not mpich_segments() - before or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def mpirun(ranks, script, *args, timeout=90):
    assert MPIEXEC, "mpiexec not found: install the mpi extra (pip install '.[test,mpi]')"
    return launch([MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py", str(script), *map(str, args)], timeout)


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


# One training run, configured by a JSON argument: "one" (a single process), "dp" (a
# keras.distribution.DataParallel over the ranks), "hvd" (Horovod style: DistributedOptimizer, each
# rank its own part of the data) or "tape" (a GradientTape loop with a DistributedOptimizer). Each
# rank writes its weights and logs to OUT-RANK.npz / OUT-RANK.json.
TRAIN = textwrap.dedent("""
    import json, os, signal, sys
    import numpy as np
    from fastconv import keras

    config = json.loads(sys.argv[1])
    mode, out = config["mode"], config["out"]
    rank = ranks = None
    if mode != "one":
        from fastconv.keras import distributed
        distributed.init()
        rank, ranks = distributed.rank(), distributed.size()
    keras.utils.set_random_seed(config.get("seed", 0) + (rank or 0) * config.get("seed_per_rank", 0))
    data = np.random.default_rng(1)
    count = config["samples"]
    x = data.normal(size=(count, 8, 8, 1)).astype(np.float32)
    y = data.integers(0, 3, count)
    x_val, y_val = data.normal(size=(40, 8, 8, 1)).astype(np.float32), data.integers(0, 3, 40)
    # tanh, not relu: a relu input within rounding of 0 can flip and turn rounding into a real difference
    layers = [keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="tanh"), keras.layers.Flatten()]
    if config.get("batchnorm"):
        layers.insert(2, keras.layers.BatchNormalization(momentum=0.5))
    if config.get("dropout"):
        layers.append(keras.layers.Dropout(0.3))
    if config.get("shared_dense"):  # one Dense called twice: two gradients of its kernel in each step
        inputs = keras.Input((8, 8, 1))
        shared = keras.layers.Dense(6, activation="tanh")
        features = keras.layers.Dense(6)(keras.layers.Flatten()(keras.layers.Conv2D(4, 3, activation="tanh")(inputs)))
        outputs = keras.layers.Dense(3, activation="softmax")(shared(shared(features)))
        model = keras.Model(inputs, outputs)
    else:
        model = keras.Sequential(layers + [keras.layers.Dense(3, activation="softmax")])
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    callbacks = []
    if mode in ("hvd", "tape"):
        optimizer = distributed.DistributedOptimizer(optimizer)
        callbacks = [distributed.BroadcastGlobalVariablesCallback(0), distributed.MetricAverageCallback()]
        if config.get("warmup"):
            callbacks.append(distributed.LearningRateWarmupCallback(0.1, warmup_epochs=2))
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    started, buffers = [], []
    if mode == "dp":  # count the gradients the backward pass wrote straight into the reduction's memory
        gradient_buffer = distributed.gradient_buffer
        def counted_buffer(variable):
            found = gradient_buffer(variable)
            buffers.append(found is not None)
            return found
        distributed.gradient_buffer = counted_buffer
    if "bucket_bytes" in config:  # gradient buckets of that size; count those the backward pass starts
        distributed._BUCKET_BYTES = config["bucket_bytes"]
        finish = distributed._GradientReduction.finish
        def counted_finish(self, grads, *args):
            started.append(sum(s is not None for s in self.sums))
            return finish(self, grads, *args)
        distributed._GradientReduction.finish = counted_finish

    if "fail_rank" in config and config["fail_rank"] == rank:
        class Fail(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch == 2:
                    if config["how"] == "raise":
                        raise RuntimeError(f"rank {rank} fails on purpose")
                    os.kill(os.getpid(), signal.SIGKILL)
        callbacks.append(Fail())
    if config.get("stop_on_last_rank"):
        class StopAlone(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch == 1 and rank == ranks - 1:
                    self.model.stop_training = True
        callbacks.append(StopAlone())
    if config.get("backup"):
        callbacks.append(keras.callbacks.BackupAndRestore(config["backup"]))
    if "crash_at_epoch" in config:
        class Crash(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == config["crash_at_epoch"] and rank == ranks - 1:
                    raise RuntimeError("the last rank crashes")
        callbacks.append(Crash())
    if config.get("checkpoint"):
        callbacks += [keras.callbacks.ModelCheckpoint(config["checkpoint"]),
                      keras.callbacks.CSVLogger(config["csv"], append=True)]

    logs = {}
    if mode == "dp":
        keras.distribution.set_distribution(keras.distribution.DataParallel())
        if rank == 1 and config.get("drop_on_rank_1"):
            x, y = x[:-config["drop_on_rank_1"]], y[:-config["drop_on_rank_1"]]
    if mode == "hvd":  # Horovod's contract: each rank its own rows, batch_size per rank
        x, y = x[rank::ranks], y[rank::ranks]
    if mode == "tape":
        x, y = x[rank::ranks], y[rank::ranks]
        loss_function = keras.losses.SparseCategoricalCrossentropy()
        for start in range(0, len(x), config["batch"]):
            with keras.GradientTape() as tape:
                loss = loss_function(y[start:start + config["batch"]], model(x[start:start + config["batch"]]))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
    else:
        if config.get("initial_epoch"):
            model = keras.models.load_model(config["resume"])
        fit_x, fit_y, batch, steps = x, y, config["batch"], None
        if config.get("generator"):  # read once: every rank reads all of it and keeps its rows
            def batches():
                for _ in range(config["epochs"]):
                    end = len(x) - (config.get("rank_1_short", 0) if rank == 1 else 0)
                    for start in range(0, end, config["batch"]):
                        yield x[start:start + config["batch"]], y[start:start + config["batch"]]
            fit_x, fit_y, batch, steps = batches(), None, None, -(-len(x) // config["batch"])
        history = model.fit(fit_x, fit_y, batch_size=batch, epochs=config["epochs"], shuffle=config["shuffle"],
                            steps_per_epoch=steps,
                            validation_data=(x_val, y_val), callbacks=callbacks, verbose=config.get("verbose", 0),
                            initial_epoch=config.get("initial_epoch", 0))
        logs = {"history": history.history, "evaluate": model.evaluate(x_val, y_val, verbose=0, return_dict=True),
                "predicted": model.predict(x_val, batch_size=16, verbose=0).tolist(), "started": started}
        if config.get("shared_dense"):
            logs["buffers"] = sum(buffers)
    np.savez(f"{out}-{rank or 0}.npz", *model.get_weights())
    with open(f"{out}-{rank or 0}.json", "w") as file:
        json.dump(logs, file)
""")


@pytest.fixture
def train(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN)

    def run(ranks, timeout=90, **config):
        config = {"seed": 0, "samples": 160, "batch": 32, "epochs": 2, "shuffle": True, **config}
        config.setdefault("out", str(tmp_path / f"{config['mode']}{ranks}"))
        if ranks is None:
            return launch([sys.executable, str(script), json.dumps(config)], timeout)
        return mpirun(ranks, script, json.dumps(config), timeout=timeout)
    return run


def results(out, ranks=1):
    weights = [np.load(f"{out}-{rank}.npz") for rank in range(ranks)]
    weights = [[w[name] for name in sorted(w.files, key=lambda n: int(n.split("_")[1]))] for w in weights]
    logs = [json.loads(pathlib.Path(f"{out}-{rank}.json").read_text()) for rank in range(ranks)]
    return weights, logs


def assert_bitwise_equal(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_close_logs(first, second):
    assert first.keys() == second.keys()
    for key in first:
        if isinstance(first[key], dict):
            assert_close_logs(first[key], second[key])
        else:
            # an accuracy may move by one sample (of 40 validation ones) on a prediction within rounding of a tie
            np.testing.assert_allclose(first[key], second[key], rtol=1e-5, atol=0.026 if "accuracy" in key else 1e-6,
                                       err_msg=key)


@pytest.mark.parametrize("ranks, samples", [(2, 160), (3, 97)])
def test_data_parallel_fit_matches_one_process_on_the_global_batch(train, tmp_path, ranks, samples):
    """batch_size is the global batch; 97 samples in batches of 32 end with a batch of 1, so on 3 ranks
    two of them have nothing in it and still take part in the step."""
    ok(train(None, mode="one", samples=samples, out=str(tmp_path / "one")))
    ok(train(ranks, mode="dp", samples=samples, verbose=1, out=str(tmp_path / "a")))
    # again, with a gradient bucket per variable, started during the backward pass
    result = ok(train(ranks, mode="dp", samples=samples, out=str(tmp_path / "b"), bucket_bytes=1))
    (single,), (single_logs,) = results(tmp_path / "one")
    first, first_logs = results(tmp_path / "a", ranks)
    second, second_logs = results(tmp_path / "b", ranks)
    for weights in first[1:] + second:  # every rank, and a second run, bitwise the same
        assert_bitwise_equal(first[0], weights)
    # from the second step on (the first checks the layout) the backward pass starts all 4 buckets,
    # except on the ranks with nothing in an epoch's last batch of 1 sample (97 = 3 x 32 + 1)
    steps = -(-samples // 32)
    for rank, logs in enumerate(second_logs):
        expected = [0] + [4] * (2 * steps - 1)
        if samples % 32 == 1 and rank < ranks - 1:
            expected[steps - 1] = expected[2 * steps - 1] = 0
        assert logs["started"] == expected, (rank, logs["started"])
    assert all(logs == first_logs[0] for logs in first_logs)  # every rank logs and returns the same
    for mine, reference in zip(first[0], single):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)
    assert_close_logs(first_logs[0], single_logs)
    # predict splits each batch (16, 16, 8) across the ranks and gathers all rows, in order, on every rank
    np.testing.assert_allclose(first_logs[0]["predicted"], single_logs["predicted"], rtol=1e-5, atol=1e-6)
    assert result.stdout == ""  # verbose=0 prints nothing on any rank


@pytest.mark.parametrize("bucket_bytes", [1, 1 << 20])
def test_a_layer_called_twice_sums_both_gradients_across_ranks(train, tmp_path, bucket_bytes):
    """A Dense kernel's first gradient in a step is written straight into the reduction's shared
    memory; the shared layer's second call adds to it rather than overwriting it."""
    ok(train(None, mode="one", shared_dense=True, out=str(tmp_path / "one")))
    ok(train(2, mode="dp", shared_dense=True, bucket_bytes=bucket_bytes, out=str(tmp_path / "dp")))
    (single,), _ = results(tmp_path / "one")
    weights, logs = results(tmp_path / "dp", 2)
    assert_bitwise_equal(weights[0], weights[1])
    for mine, reference in zip(weights[0], single):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)
    assert all(log["buffers"] > 0 for log in logs)  # the path without a copy was taken


@pytest.mark.parametrize("ranks, samples", [(2, 160), (3, 97)])
def test_batch_normalization_is_synchronised_across_ranks(train, tmp_path, ranks, samples):
    """In training, BatchNormalization normalises with the global batch's statistics and updates its
    moving ones from them, so the run matches one process (not a per-rank normalisation)."""
    ok(train(None, mode="one", samples=samples, batchnorm=True, out=str(tmp_path / "one")))
    ok(train(ranks, mode="dp", samples=samples, batchnorm=True, out=str(tmp_path / "dp")))
    (single,), (single_logs,) = results(tmp_path / "one")
    weights, logs = results(tmp_path / "dp", ranks)
    for other in weights[1:]:
        assert_bitwise_equal(weights[0], other)
    assert len(single) == 8  # conv 2, batch norm 4 (with the moving statistics), dense 2
    for mine, reference in zip(weights[0], single):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-5)
    assert_close_logs(logs[0], single_logs)


def test_progress_is_printed_by_rank_0_only(train, tmp_path):
    result = ok(train(2, mode="dp", verbose=2, epochs=2))
    assert result.stdout.count("Epoch 2/2") == 1
    assert result.stdout.count("val_accuracy") == 2


def test_horovod_style_training_matches_one_process(train, tmp_path):
    """DistributedOptimizer averages the ranks' gradients: two ranks with per-rank batches of 16 on the
    even and odd rows take the steps of one process on batches of 32 made of both ranks' rows. The
    ranks start from different seeds; BroadcastGlobalVariablesCallback gives them rank 0's weights."""
    count = 160
    order = np.concatenate([np.arange(count)[r::2][start:start + 16] for start in range(0, count // 2, 16)
                            for r in range(2)])
    assert sorted(order) == list(range(count))
    ok(train(2, mode="hvd", batch=16, shuffle=False, seed_per_rank=7, samples=count))
    weights, logs = results(tmp_path / "hvd2", 2)
    assert_bitwise_equal(weights[0], weights[1])
    assert logs[0]["history"] == logs[1]["history"]  # MetricAverageCallback

    # the same steps on one process: rows reordered so that each batch of 32 is both ranks' batches
    script = tmp_path / "one.py"
    script.write_text(TRAIN.replace("x, y = x[rank::ranks], y[rank::ranks]",
                                    f"x, y = x[{order.tolist()}], y[{order.tolist()}]")
                      .replace('if mode == "hvd":', 'if mode == "one":'))
    ok(launch([sys.executable, str(script), json.dumps({"mode": "one", "out": str(tmp_path / "one"), "batch": 32,
                                                        "shuffle": False, "samples": count, "epochs": 2})], 90))
    (single,), _ = results(tmp_path / "one")
    for mine, reference in zip(weights[0], single):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)


def test_generator_data_is_split_the_same_way(train, tmp_path):
    ok(train(None, mode="one", generator=True, samples=97, out=str(tmp_path / "one")))
    ok(train(2, mode="dp", generator=True, samples=97))
    (single,), (single_logs,) = results(tmp_path / "one")
    weights, logs = results(tmp_path / "dp2", 2)
    assert_bitwise_equal(weights[0], weights[1])
    for mine, reference in zip(weights[0], single):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)
    assert_close_logs(logs[0], single_logs)


def test_a_rank_whose_generator_ends_early_fails_naming_it(train):
    result = train(2, timeout=60, mode="dp", generator=True, samples=96, epochs=1, rank_1_short=64)
    assert result.returncode != 0
    assert "at batch 2, rank 1 has no data left and rank 0 has" in result.stderr


def test_learning_rate_warmup_reaches_the_scaled_rate(train, tmp_path):
    """Horovod's warm-up on 2 ranks over 2 epochs: from 0.1 / 2 towards 0.1, reached at the end of
    epoch 2 (0.1 / 2 * (1 / 2 + 1) after the first)."""
    ok(train(2, mode="hvd", warmup=True, epochs=3))
    _, logs = results(tmp_path / "hvd2", 2)
    np.testing.assert_allclose(logs[0]["history"]["lr"], [0.075, 0.1, 0.1], rtol=1e-12)


def test_gradient_tape_loop_with_distributed_optimizer(train, tmp_path):
    ok(train(2, mode="tape", batch=16, samples=96))
    weights, _ = results(tmp_path / "tape2", 2)
    assert_bitwise_equal(weights[0], weights[1])
    ok(train(2, mode="tape", batch=16, samples=96, out=str(tmp_path / "again")))
    assert_bitwise_equal(weights[0], results(tmp_path / "again", 2)[0][0])


def test_dropout_runs_repeat_bitwise_and_agree_across_ranks(train, tmp_path):
    ok(train(2, mode="dp", dropout=True, out=str(tmp_path / "a")))
    ok(train(2, mode="dp", dropout=True, out=str(tmp_path / "b")))
    first, _ = results(tmp_path / "a", 2)
    assert_bitwise_equal(first[0], first[1])
    assert_bitwise_equal(first[0], results(tmp_path / "b", 2)[0][0])


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failing_rank_ends_the_whole_job(train, how):
    """Rank 1 raises (python -m mpi4py aborts the job) or is SIGKILLed (mpiexec ends the others) in
    the middle of an epoch, while rank 0 waits in the gradient reduction: the job ends, not hangs."""
    before = mpich_segments()
    result = train(2, timeout=60, mode="dp", samples=320, epochs=5, fail_rank=1, how=how)
    assert result.returncode != 0
    if how == "raise":
        assert "rank 1 fails on purpose" in result.stderr
    assert not orphaned(mpich_segments() - before)  # launch removed what the killed ranks left


def test_a_callback_stopping_one_rank_stops_all_at_the_same_batch(train, tmp_path):
    """Only the last rank's callback sets stop_training, after batch 2: every rank ends fit there
    (none waits for the others in the next reduction) with the same weights."""
    ok(train(2, timeout=60, mode="dp", epochs=3, stop_on_last_rank=True))
    weights, logs = results(tmp_path / "dp2", 2)
    assert_bitwise_equal(weights[0], weights[1])
    assert len(logs[0]["history"]["loss"]) == 1 and logs[0] == logs[1]


def test_ranks_with_different_data_fail_at_the_start_naming_the_rank(train):
    result = train(2, timeout=60, mode="dp", drop_on_rank_1=7)
    assert result.returncode != 0
    assert "the training data" in result.stderr and "rank 1 has" in result.stderr


def test_checkpoints_and_logs_are_written_once_by_rank_0_and_resume(train, tmp_path):
    checkpoint, csv = tmp_path / "model.fastconv", tmp_path / "log.csv"
    ok(train(2, mode="dp", epochs=2, checkpoint=str(checkpoint), csv=str(csv)))
    assert checkpoint.exists()
    rows = csv.read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch")  # a header and one row per epoch, not per rank
    saved, _ = results(tmp_path / "dp2", 2)
    # a new job (3 ranks now) starts from the checkpoint and goes on from epoch 2
    ok(train(3, mode="dp", epochs=3, initial_epoch=2, resume=str(checkpoint), checkpoint=str(checkpoint),
             csv=str(csv), out=str(tmp_path / "resumed")))
    resumed, logs = results(tmp_path / "resumed", 3)
    assert_bitwise_equal(resumed[0], resumed[2])
    assert len(logs[0]["history"]["loss"]) == 1
    assert len(csv.read_text().splitlines()) == 4
    assert not np.array_equal(resumed[0][0], saved[0][0])


SAVE_THEN_LOAD = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from fastconv import keras
    from fastconv.keras import distributed, keras_format, saving

    directory, out = sys.argv[1], sys.argv[2]
    distributed.init()
    rank = distributed.rank()
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).normal(size=(64, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    slow = lambda write: lambda *args, **kwargs: (time.sleep(0.5), write(*args, **kwargs))[1]
    saving._write, keras_format.save_model = slow(saving._write), slow(keras_format.save_model)
    found = {}
    for name in ("model.fastconv", "model.keras"):
        path = f"{directory}/{name}"
        model.save(path)  # an older model in the file: a rank that reads before rank 0 has written sees it
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        model.save(path)
        loaded = keras.models.load_model(path)
        found[name] = float(np.abs(loaded.predict(x, verbose=0) - model.predict(x, verbose=0)).max())
    try:  # rank 0 cannot write there: every rank gets its error, none waits
        model.save(f"{directory}/missing/model.fastconv")
    except Exception as error:
        found["error"] = type(error).__name__
    if rank == 0:  # Horovod's idiom still works: rank 0 alone saves, nobody waits for it
        model.save(f"{directory}/rank0.fastconv")
    found["after"] = model.evaluate(x, y, verbose=0)
    with open(f"{out}-{rank}.json", "w") as file:
        json.dump(found, file)
""")


def test_every_rank_loads_the_model_rank_0_just_saved(tmp_path):
    script = tmp_path / "save_then_load.py"
    script.write_text(SAVE_THEN_LOAD)
    ok(mpirun(2, script, tmp_path, tmp_path / "found", timeout=60))
    found = [json.loads((tmp_path / f"found-{rank}.json").read_text()) for rank in range(2)]
    for rank_found in found:
        assert rank_found["model.fastconv"] == 0 and rank_found["model.keras"] == 0
        assert rank_found["error"] in ("FileNotFoundError", "OSError", "ValueError")
    assert found[0]["error"] == found[1]["error"] and found[0]["after"] == found[1]["after"]
    assert (tmp_path / "rank0.fastconv").exists()


def test_backup_and_restore_resumes_a_crashed_job_exactly(train, tmp_path):
    """A job whose last rank crashes at the start of epoch 3 is started again with the same
    BackupAndRestore directory: it goes on from epoch 3 with the weights, optimizer state and random
    state (the shuffling's, from which the ranks' dropout streams derive) saved after epoch 2, and
    ends bitwise where an uninterrupted run does; restarted on 3 ranks instead, it ends there to
    float rounding."""
    common = dict(mode="dp", epochs=4, samples=128)
    ok(train(2, out=str(tmp_path / "whole"), **common))
    crashed = train(2, backup=str(tmp_path / "backup"), crash_at_epoch=2, out=str(tmp_path / "crashed"), **common)
    assert crashed.returncode != 0 and "the last rank crashes" in crashed.stderr
    assert (tmp_path / "backup" / "training_state.npz").exists()
    for ranks in (2, 3):
        backup = tmp_path / f"backup{ranks}"
        shutil.copytree(tmp_path / "backup", backup)
        ok(train(ranks, backup=str(backup), out=str(tmp_path / f"resumed{ranks}"), **common))
        assert not (backup / "training_state.npz").exists()  # a completed fit deletes its backup
    whole, _ = results(tmp_path / "whole", 2)
    resumed, logs = results(tmp_path / "resumed2", 2)
    assert_bitwise_equal(whole[0], resumed[0])
    assert len(logs[0]["history"]["loss"]) == 2  # epochs 3 and 4
    on_three, _ = results(tmp_path / "resumed3", 3)
    for mine, reference in zip(on_three[0], whole[0]):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)


COLLECTIVES = textwrap.dedent("""
    import json, sys
    import numpy as np
    from fastconv import keras
    from fastconv.keras import distributed as hvd

    keras.distribution.initialize()
    keras.distribution.initialize(num_processes=hvd.size())  # again, and checked
    rank, ranks = hvd.rank(), hvd.size()
    mine = np.random.default_rng(rank).normal(size=1001).astype(np.float32) * 10.0 ** rank
    report = {"devices": keras.distribution.list_devices(), "local": [hvd.local_rank(), hvd.local_size()]}
    report["sum"] = hvd.allreduce(mine, op="sum").tobytes().hex()
    report["average"] = hvd.allreduce(mine).tobytes().hex()
    expected = np.zeros(1001)
    for r in range(ranks):  # rank order, in float64, then rounded once
        expected += np.random.default_rng(r).normal(size=1001).astype(np.float32) * 10.0 ** r
    report["sum_as_expected"] = hvd.allreduce(mine, op="sum").tobytes() == expected.astype(np.float32).tobytes()
    report["ints"] = hvd.allreduce(np.array([rank, 1]), op="sum").tolist()
    # large buffers go through a reduce-scatter, small ones (and 2 ranks) an allgather: the same bits
    big = np.random.default_rng(10 + rank).normal(size=100_003).astype(np.float32)
    weights = [0.5, 2.0, 3.0, 1.5][:ranks]
    paths = {}
    for limit in (0, 1 << 40):
        hvd._GATHER_BYTES = limit
        paths[limit] = hvd._rank_ordered_sum(big, weights, divisor=7.0).tobytes()
    report["paths_agree"] = paths[0] == paths[1 << 40]
    expected = np.zeros(big.size)
    for r in range(ranks):
        theirs = np.random.default_rng(10 + r).normal(size=100_003).astype(np.float32)
        expected += theirs.astype(np.float64) * weights[r]
    report["big_as_expected"] = paths[0] == (expected / 7.0).astype(np.float32).tobytes()
    # gradients in one bucket or one per variable (a None on rank 1 counts as zeros): the same bits
    shapes = [(300, 40), (40,), (7, 3), (5,)]
    variables = [keras.Variable(np.zeros(shape, np.float32)) for shape in shapes]
    grads = [np.random.default_rng(20 + rank + i).normal(size=shape).astype(np.float32) for i, shape in enumerate(shapes)]
    grads[2] = None if rank == 1 else grads[2]
    reduced = {}
    for shared in (True, False):  # in shared memory (all ranks are on this machine) or by messages
        hvd._use_shared_memory = shared
        for limit in (1, 1 << 40):  # also each bucket reduce-scattered, or gathered whole
            hvd._BUCKET_BYTES, hvd._GATHER_BYTES = limit, limit - 1
            for _ in range(2):  # a bucket's second round reuses its shared memory
                reduced[shared, limit] = [g.tobytes() for g in hvd.reduce_gradients(grads, variables, weights=weights)]
    report["buckets_agree"] = all(result == reduced[False, 1] for result in reduced.values())
    # values that cancel in rank order only: 1e20 - 1e20 + 1 + ... is 1 + ..., any other order gives 0
    terms = [1e20, -1e20] + [1.0] * (ranks - 2)
    cancel = [keras.Variable(np.zeros(300_000, np.float32))]
    in_order = {}
    for shared in (True, False):
        hvd._use_shared_memory = shared
        for limit in (1, 1 << 40):
            hvd._BUCKET_BYTES, hvd._GATHER_BYTES = limit, limit - 1
            sums = hvd.reduce_gradients([np.full(300_000, terms[rank], np.float32)], cancel, op="sum")[0]
            in_order[f"{shared} {limit}"] = bool((sums == np.float32(ranks - 2)).all())
    report["rank_order"] = in_order
    # what DistributedOptimizer gets: views of the memory every rank reads, so an optimizer cannot write them
    hvd._use_shared_memory, hvd._BUCKET_BYTES, hvd._GATHER_BYTES = True, 1 << 20, 1 << 20
    report["views_read_only"] = not any(g.flags.writeable for g in hvd.reduce_gradients(
        [np.ones(300_000, np.float32)], cancel, copy=False))
    report["shared_memory"] = sorted({type(area).__name__ for area in hvd._areas.values()})
    reduced = {limit: reduced[True, limit] for limit in (1, 1 << 40)}
    expected = sum(w * (np.zeros(shapes[2]) if r == 1 else np.random.default_rng(20 + r + 2).normal(size=shapes[2])
                        .astype(np.float32).astype(np.float64)) for r, w in enumerate(weights)) / sum(weights)
    report["bucket_as_expected"] = reduced[1][2] == expected.astype(np.float32).tobytes()
    report["gathered"] = hvd.allgather(np.full((rank + 1, 2), rank)).tolist()
    report["broadcast"] = hvd.broadcast(np.array([rank, rank], np.float32), root_rank=1).tolist()
    errors = {}
    for name, call in {"shape": lambda: hvd.allreduce(np.zeros(3 + rank)),
                       "root": lambda: hvd.broadcast(np.zeros(2), root_rank=ranks),
                       "processes": lambda: keras.distribution.initialize(num_processes=ranks + 1),
                       "devices": lambda: keras.distribution.DataParallel(devices=["cpu:0"]),
                       "mesh": lambda: keras.distribution.DataParallel(
                           keras.distribution.DeviceMesh((1, ranks), ["model", "batch"])),
                       "op": lambda: hvd.allreduce(mine, op="max")}.items():
        try:
            call()
        except (ValueError, TypeError) as error:
            errors[name] = str(error)
    # DistributedOptimizer's update: SGD(1.0) moves a variable by minus the reduced gradient
    updates = {}
    for op, grad in (("average", np.full(3, rank + 1.0)), ("sum", np.full(3, rank + 1.0)),
                     ("half", None if rank == 0 else np.full(3, 4.0)), ("none", None)):
        variable = keras.Variable(np.zeros(3, np.float32))
        optimizer = hvd.DistributedOptimizer(keras.optimizers.SGD(1.0), op="sum" if op == "sum" else "average")
        optimizer.apply([grad], [variable])
        updates[op] = variable.numpy().tolist()
    report["updates"] = updates
    try:
        hvd.DistributedOptimizer(optimizer)
    except ValueError as error:
        errors["twice"] = str(error)
    report["errors"] = errors
    mesh = keras.distribution.DeviceMesh((ranks,), ["data"])
    report["mesh"] = [keras.distribution.DataParallel(mesh).batch_dim_name, keras.distribution.DataParallel().devices]
    with open(f"{sys.argv[1]}-{rank}.json", "w") as file:
        json.dump(report, file)
""")


def test_collectives_sum_in_rank_order_and_agree_bitwise(tmp_path):
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES)
    ok(mpirun(3, script, tmp_path / "out"))
    reports = [json.loads((tmp_path / f"out-{rank}.json").read_text()) for rank in range(3)]
    for report in reports:
        assert report["sum"] == reports[0]["sum"] and report["average"] == reports[0]["average"]
        assert report["sum_as_expected"] and report["big_as_expected"] and report["paths_agree"]
        assert report["buckets_agree"] and report["bucket_as_expected"]
        assert report["shared_memory"] == ["NoneType", "_SharedArea"]
        assert all(report["rank_order"].values()), report["rank_order"]
        assert report["views_read_only"]
        assert report["ints"] == [3, 3]
        assert report["gathered"] == [[0, 0], [1, 1], [1, 1], [2, 2], [2, 2], [2, 2]]
        assert report["broadcast"] == [1.0, 1.0]
        assert report["devices"] == ["cpu:0", "cpu:1", "cpu:2"]
        assert report["local"][1] == 3
    assert sorted(report["local"][0] for report in reports) == [0, 1, 2]
    errors = reports[1]["errors"]
    assert "rank 1 has ((4,)" in errors["shape"]
    assert "root_rank must be a rank from 0 to 2" in errors["root"]
    assert "num_processes is 4" in errors["processes"]
    assert "devices must be every rank's device" in errors["devices"]
    assert "device_mesh must be a one-axis" in errors["mesh"]
    assert "already a DistributedOptimizer" in errors["twice"]
    # ranks 1, 2, 3 give the gradients 1, 2, 3; a rank without a gradient counts as zeros
    assert reports[0]["updates"] == {"average": [-2.0] * 3, "sum": [-6.0] * 3, "half": [float(np.float32(-8 / 3))] * 3,
                                     "none": [0.0] * 3}
    assert reports[0]["mesh"] == ["data", ["cpu:0", "cpu:1", "cpu:2"]]
    assert "op must be" in errors["op"]


@pytest.mark.parametrize("ranks", [2, 4])
def test_exchanges_on_2_and_4_ranks_give_the_rank_ordered_bits(tmp_path, ranks):
    """A large buffer is reduce-scattered and allgathered, a small one exchanged whole, by point-to-point
    messages with every other rank (4 ranks on this machine's 2 cores is fine): the same bits either way,
    summed in rank order (an odd length splits unevenly), in one bucket or many."""
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES)
    ok(mpirun(ranks, script, tmp_path / "out", timeout=120))
    reports = [json.loads((tmp_path / f"out-{rank}.json").read_text()) for rank in range(ranks)]
    for report in reports:
        assert report["sum"] == reports[0]["sum"] and report["average"] == reports[0]["average"]
        assert report["sum_as_expected"] and report["big_as_expected"] and report["paths_agree"]
        assert report["buckets_agree"] and report["bucket_as_expected"]
        assert all(report["rank_order"].values()), report["rank_order"]
        assert report["ints"] == [sum(range(ranks)), ranks]


def test_two_float32_terms_sum_to_the_float64_paths_bits():
    """Two ranks' float32 gradients are summed (and halved) in float32: the same bits as the sum in
    float64 rounded once, across magnitudes and below float32's normal range; where the float32 sum
    overflows, the float64 path takes over."""
    from fastconv.keras import distributed
    rng = np.random.default_rng(3)
    scales = np.float32(2.0) ** rng.integers(-160, 125, size=(2, 200_000)).astype(np.float32)
    rows = [(rng.normal(size=200_000) * scales[r]).astype(np.float32) for r in range(2)]
    rows[1][:1000] = -rows[0][:1000]  # exact cancellations
    for overflow in (False, True):
        if overflow:
            rows[0][1000:1010] = rows[1][1000:1010] = np.finfo(np.float32).max
        for divisor in (None, 2.0):
            fast, wide = np.empty(200_000, np.float32), np.empty(200_000, np.float32)
            with np.errstate(over="ignore"):  # float64 sums beyond float32's range become inf, as they should
                distributed._ordered_total(rows, None, divisor, fast)
                distributed._ordered_total(rows, [1.0, 1.0], divisor, wide)  # weights take the float64 path
                expected = ((rows[0].astype(np.float64) + rows[1]) / (divisor or 1)).astype(np.float32)
            assert fast.tobytes() == wide.tobytes() == expected.tobytes()
            if overflow and divisor == 2.0:  # halved, the float64 sum is back in range
                assert np.isfinite(fast[1000:1010]).all()


def test_cli_train_under_mpiexec_reaches_98_percent_in_one_epoch(tmp_path):
    """The README's `mpiexec -n 2 fastconv train`: one epoch of all 60,000 images, rank 0 alone prints."""
    saved = tmp_path / "seed.fastconv"
    result = ok(launch([MPIEXEC, "-n", "2", sys.executable, "-m", "fastconv", "train", "--epochs", "1",
                        "--seed", "1", "--save", str(saved)], 400))
    assert result.stdout.count("test accuracy:") == 1
    assert "data-parallel over 2 ranks (2 on this machine): 64 images per step, 32 on each rank" in result.stdout
    bars = [line for line in result.stdout.splitlines() if "images/s" in line]
    assert len(bars) == 1 and bars[0].startswith("938/938 [")  # 938 global batches of 64, as on one process
    accuracy = float(result.stdout.split("test accuracy:")[1].split()[0])
    assert accuracy >= 0.98
    report = result.stdout.split("data-parallel over 2 ranks: gradient reduction ")[1].split("\n")[0]
    assert " ms per step (" in report and "% of the training step" in report
    assert saved.exists()


def test_cli_deterministic_ranks_saves_the_same_weights_on_1_and_2_ranks(tmp_path):
    """`fastconv train --deterministic ranks`, alone (no launcher) and under `mpiexec -n 2`: the same
    weights, to the bit."""
    from fastconv import keras
    command = [sys.executable, "-m", "fastconv", "train", "--deterministic", "ranks", "--train-size", "256",
               "--epochs", "1", "--seed", "2"]
    alone = ok(launch(command + ["--save", str(tmp_path / "n1.fastconv")], 120))
    assert "deterministic='ranks'" in alone.stdout
    ok(launch([MPIEXEC, "-n", "2", *command, "--save", str(tmp_path / "n2.fastconv")], 120))
    weights = [keras.models.load_model(tmp_path / f"n{ranks}.fastconv").get_weights() for ranks in (1, 2)]
    assert_bitwise_equal(*weights)


def test_cli_evaluate_and_predict_under_mpiexec_print_once_what_one_process_prints(tmp_path):
    """`mpiexec -n 2 fastconv evaluate|predict`: each rank computes its part of the test set (or of the
    images), rank 0 alone prints, and it prints what one process does."""
    saved, image = tmp_path / "m.fastconv", tmp_path / "digit.npy"
    ok(launch([sys.executable, "-m", "fastconv", "train", "--train-size", "256", "--epochs", "1", "--save",
               str(saved)], 120))
    np.save(image, (np.arange(28 * 28).reshape(28, 28) % 251).astype(np.uint8))
    for command in (["evaluate", str(saved)], ["predict", str(saved), str(image), str(image), str(image)]):
        alone = ok(launch([sys.executable, "-m", "fastconv", *command], 120))
        ranks = ok(launch([MPIEXEC, "-n", "2", sys.executable, "-m", "fastconv", *command], 120))
        assert ranks.stdout == alone.stdout and alone.stdout.strip()


def test_cli_error_on_one_rank_ends_the_job(tmp_path):
    """Only rank 0 saves, into a directory that does not exist: its error ends every rank."""
    result = launch([MPIEXEC, "-n", "2", sys.executable, "-m", "fastconv", "train", "--train-size", "256",
                     "--epochs", "1", "--save", str(tmp_path / "missing" / "model.fastconv")], 120)
    assert result.returncode != 0
    assert "fastconv train: error:" in result.stderr


def test_without_mpi4py_the_error_names_the_extra_and_plain_training_never_loads_it():
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from fastconv import keras
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer="sgd", loss="mse")
        model.fit(np.zeros((8, 3)), np.zeros((8, 2)), verbose=0)
        assert "mpi4py" not in sys.modules, "a single-process fit loaded mpi4py"
        sys.modules["mpi4py"] = None  # as if it were not installed
        from fastconv.keras import distributed
        for call in (distributed.init, distributed.rank, keras.distribution.DataParallel,
                     lambda: distributed.DistributedOptimizer("sgd")):
            try:
                call()
            except ImportError as error:
                assert 'pip install "fastconv[mpi]"' in str(error), error
            else:
                raise AssertionError("no ImportError")
        print("ok")
    """)
    result = ok(launch([sys.executable, "-c", code], 60))
    assert result.stdout.strip() == "ok"


# deterministic="ranks": a model with every layer whose sums the micro-batch tree reduces, trained on
# a global batch that ends with a partial batch (100 = 3 x 32 + 4: on 4 ranks, three of them hold
# nothing in the last step). Each rank writes its weights and logs.
RANKS_TRAIN = textwrap.dedent("""
    import json, sys
    import numpy as np
    from fastconv import keras

    out = sys.argv[1]
    keras.utils.set_random_seed(0)
    data = np.random.default_rng(1)
    x, y = data.normal(size=(100, 8, 8, 2)).astype(np.float32), data.integers(0, 3, 100)
    keras.distribution.set_distribution(keras.distribution.DataParallel(deterministic="ranks"))
    rank = keras.distribution.distribution().process_id
    model = keras.Sequential([
        keras.Input((8, 8, 2)), keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.BatchNormalization(momentum=0.5), keras.layers.Conv2D(8, 3, padding="same"),
        keras.layers.MaxPooling2D(2), keras.layers.Dropout(0.3), keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu"), keras.layers.BatchNormalization(), keras.layers.Dropout(0.2),
        keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=32, epochs=2, validation_data=(x[:20], y[:20]), verbose=0)
    np.savez(f"{out}-{rank}.npz", *model.get_weights())
    with open(f"{out}-{rank}.json", "w") as file:
        json.dump(history.history, file)
""")


def test_deterministic_ranks_gives_the_same_weights_bitwise_on_1_2_3_and_4_ranks(tmp_path):
    """With deterministic="ranks" the weights after training (Conv2D, Dense, BatchNormalization with its
    moving statistics, Dropout, a partial last batch, ranks without samples) do not depend on the
    number of ranks, to the bit, and neither do the logged loss and metrics (validation included)."""
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_TRAIN)
    outcomes = {}
    for ranks in (1, 2, 3, 4):
        ok(mpirun(ranks, script, tmp_path / f"n{ranks}", timeout=120))
        outcomes[ranks] = results(tmp_path / f"n{ranks}", ranks)
    (reference,), (reference_logs,) = outcomes[1]
    assert len(reference) == 16  # conv 2 + 2, dense 2 + 2, batch norm 4 + 4
    for ranks, (weights, logs) in outcomes.items():
        for rank_weights in weights:
            assert_bitwise_equal(reference, rank_weights)
        assert all(rank_logs == reference_logs for rank_logs in logs)


def test_bench_counts_a_step_undisturbed_only_when_no_process_waited_for_a_cpu():
    from fastconv import bench_distributed as bench
    steps = [0.010, 0.011, 0.050, 0.012, 0.013, 0.014, 0.060]
    waits = [0.0, 0.00005, 0.004, 0.0, 0.0, 0.0, 0.002]  # the slow steps waited for a CPU
    assert bench._quiet_step(steps, waits) == (0.012, 5)
    assert bench._quiet_step(steps[:4], waits[:4]) == (None, 3)  # too few to tell
    assert bench._quiet_step(steps, [None] * 7) == (None, 0)  # the kernel does not say
    wait = bench._cpu_wait_seconds()
    assert wait is None or wait >= 0.0
