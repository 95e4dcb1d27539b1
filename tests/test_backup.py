"""keras.callbacks.BackupAndRestore on one process (tests/test_distributed.py resumes MPI jobs)."""
import os

import numpy as np
import pytest

from fastconv import keras


def make_model(optimizer="adam"):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="tanh"), keras.layers.Dropout(0.2),
                              keras.layers.Dense(2)])
    model.compile(optimizer=optimizer, loss="mse")
    return model


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.random((64, 4), dtype=np.float32), rng.random((64, 2), dtype=np.float32)


class StopAt(keras.callbacks.Callback):
    """Stands for a crash: raises at the start of an epoch."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("optimizer", [keras.optimizers.Adam, keras.optimizers.Nadam,
                                       lambda: keras.optimizers.SGD(0.1, momentum=0.9)])
def test_an_interrupted_fit_resumes_bitwise_where_it_stood(tmp_path, data, optimizer):
    x, y = data
    keras.utils.set_random_seed(1)
    model = make_model(optimizer())
    model.fit(x, y, batch_size=8, epochs=4, verbose=0)
    uninterrupted = model.get_weights()

    keras.utils.set_random_seed(1)
    model = make_model(optimizer())
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, batch_size=8, epochs=4, verbose=0,
                  callbacks=[keras.callbacks.BackupAndRestore(tmp_path), StopAt(2)])
    assert os.listdir(tmp_path) == ["training_state.npz"]

    keras.utils.set_random_seed(99)  # another start: everything comes from the backup
    model = make_model(optimizer())
    history = model.fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(tmp_path)])
    assert history.epoch == [2, 3]
    for mine, reference in zip(model.get_weights(), uninterrupted):
        assert np.array_equal(mine, reference)
    assert os.listdir(tmp_path) == []  # deleted once fit completed


def test_the_backup_of_another_model_is_refused(tmp_path, data):
    x, y = data
    with pytest.raises(KeyboardInterrupt):
        make_model().fit(x, y, epochs=2, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(tmp_path), StopAt(1)])
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="holds the state of another model"):
        other.fit(x, y, epochs=2, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(tmp_path)])
    sgd = make_model("sgd")
    with pytest.raises(ValueError, match="the optimizer Adam, this model uses SGD"):
        sgd.fit(x, y, epochs=2, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(tmp_path)])


def test_a_crash_while_saving_keeps_the_previous_state(tmp_path, data, monkeypatch):
    x, y = data
    model = make_model()
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=3, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(tmp_path), StopAt(1)])
    before = (tmp_path / "training_state.npz").read_bytes()

    def failing_savez(file, **arrays):
        file.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        make_model().fit(x, y, epochs=3, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(tmp_path)])
    assert os.listdir(tmp_path) == ["training_state.npz"]  # no temporary left behind
    assert (tmp_path / "training_state.npz").read_bytes() == before


def test_bad_arguments_and_files_are_clear_errors(tmp_path, data):
    with pytest.raises(ValueError, match="backup_dir"):
        keras.callbacks.BackupAndRestore("")
    with pytest.raises(ValueError, match="save_freq"):
        keras.callbacks.BackupAndRestore(tmp_path, save_freq=10)
    (tmp_path / "training_state.npz").write_bytes(b"not a zip")
    x, y = data
    with pytest.raises(ValueError, match="not a readable training state"):
        make_model().fit(x, y, epochs=1, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(tmp_path)])


def test_fastconv_train_resume_goes_on_after_a_killed_run(tmp_path):
    import pathlib
    import signal
    import subprocess
    import sys

    import fastconv
    repo = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "FASTCONV_NO_DOWNLOAD": "1", "FASTCONV_DATA": str(repo / "data"),
           "PYTHONPATH": str(pathlib.Path(fastconv.__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "fastconv", "train", "--train-size", "512", "--epochs", "2", "--seed", "1",
               "--resume", str(tmp_path / "state"), "--save", str(tmp_path / "model.fastconv")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        for line in process.stdout:
            if line.startswith("Epoch 2/2"):  # epoch 1 is complete and backed up
                process.send_signal(signal.SIGKILL)
                break
        process.wait(timeout=120)
    finally:
        process.kill()
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    assert (tmp_path / "state" / "training_state.npz").exists()

    resumed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "Epoch 2/2" in resumed.stdout and "Epoch 1/2" not in resumed.stdout
    assert "test accuracy" in resumed.stdout
    assert not (tmp_path / "state" / "training_state.npz").exists()  # the run completed
