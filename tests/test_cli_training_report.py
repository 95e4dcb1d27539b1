"""What `fastconv train` shows and saves while training, in-process: one progress bar per epoch with
the training rate inside it, and Ctrl-C handling that keeps every epoch that finished."""
import io
import os
import signal

import numpy as np
import pytest

from fastconv import keras
from fastconv.cli import EpochReport
from fastconv.keras import progbar as progbar_module
from fastconv.keras.progbar import Progbar

IMAGES, BATCH = 40, 8  # 5 steps per epoch


def small_model():
    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(IMAGES, 4)).astype(np.float32), rng.integers(0, 3, IMAGES)


@pytest.fixture
def sigint_to_report():
    """Installs a report's Ctrl-C handler as `fastconv train` does, for the length of a test."""
    previous = signal.getsignal(signal.SIGINT)
    yield lambda report: signal.signal(signal.SIGINT, report.request_stop)
    signal.signal(signal.SIGINT, previous)


def ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_during_validation_keeps_the_finished_epoch(tmp_path, monkeypatch, capsys, sigint_to_report):
    path = tmp_path / "m.fastconv"
    model = small_model()
    report = EpochReport(IMAGES, BATCH, path)
    sigint_to_report(report)
    trainer = model._trainer
    validation_calls = []

    def test_step_pressing_ctrl_c(*args, **kwargs):
        validation_calls.append(report.epoch)
        if report.epoch == 1 and validation_calls.count(1) == 2:  # in epoch 2's validation
            ctrl_c()
        return type(trainer).test_step(trainer, *args, **kwargs)

    monkeypatch.setattr(trainer, "test_step", test_step_pressing_ctrl_c)
    x, y = data()
    history = model.fit(x, y, batch_size=BATCH, epochs=5, validation_data=(x, y), callbacks=[report], verbose=0)
    assert report.interrupted
    assert len(history.history["loss"]) == 2  # stopped after the epoch whose validation was interrupted
    assert report.last_saved_epoch == 2 and path.exists()
    assert report.interruption_message() == f"Interrupted after epoch 2, which completed; its checkpoint is {path}."
    saved = keras.models.load_model(path, compile=False)
    for saved_weight, weight in zip(saved.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(saved_weight, weight)


def test_ctrl_c_mid_epoch_keeps_the_previous_checkpoint(tmp_path, capsys, sigint_to_report):
    path = tmp_path / "m.fastconv"
    model = small_model()
    report = EpochReport(IMAGES, BATCH, path)
    sigint_to_report(report)
    saved_after_epoch_1 = []

    class PressCtrlC(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                saved_after_epoch_1.append(path.read_bytes())

        def on_train_batch_begin(self, batch, logs=None):
            if report.epoch == 1 and batch == 2:
                ctrl_c()

    x, y = data()
    model.fit(x, y, batch_size=BATCH, epochs=5, validation_data=(x, y), callbacks=[report, PressCtrlC()], verbose=0)
    assert report.step == 3 and report.last_saved_epoch == 1
    assert path.read_bytes() == saved_after_epoch_1[0]  # the partial epoch did not replace it
    assert report.interruption_message() == (
        f"Interrupted during epoch 2, after step 3; the last completed checkpoint is {path} (epoch 1).")
    # The rate of the cut-short epoch counts the 24 images trained, not the epoch's 40.
    assert report.bar._count == 3 * BATCH
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line.startswith("3/5 [") and "images/s" in last_line


def test_a_second_ctrl_c_quits_at_once(tmp_path):
    report = EpochReport(IMAGES, BATCH, tmp_path / "m.fastconv")
    report.request_stop(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        report.request_stop(signal.SIGINT, None)


def test_one_progress_line_per_epoch_with_the_rate_inside(tmp_path, capsys):
    model = small_model()
    report = EpochReport(IMAGES, BATCH, tmp_path / "m.fastconv")
    x, y = data()
    model.fit(x, y, batch_size=BATCH, epochs=2, validation_data=(x, y), callbacks=[report], verbose=0)
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("Epoch")] == ["Epoch 1/2", "Epoch 2/2"]
    assert len(lines) == 4, lines  # "Epoch i/n" and one bar line each, nothing else
    for bar in lines[1::2]:
        assert bar.startswith("5/5 [==============================] - ")
        assert " images/s - loss: " in bar and bar.endswith(bar.split(" - ")[-1])
        assert "val_accuracy: " in bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_the_finished_bar_ends_its_line_before_anything_else(tmp_path, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    model = small_model()
    report = EpochReport(IMAGES, BATCH, tmp_path / "m.fastconv")
    x, y = data()
    model.fit(x, y, batch_size=BATCH, epochs=2, validation_data=(x, y), callbacks=[report], verbose=0)
    text = terminal.getvalue()
    # The redrawn bar ("\r...") is closed by a newline before the next epoch's header.
    assert "\nEpoch 2/2\n" in text and text.endswith("\n")
    for line in text.split("\n"):
        assert line.count("Epoch") <= 1 and not ("Epoch" in line and "[" in line)


def test_progbar_rate_is_over_the_time_of_the_counted_items(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progbar_module.time, "time", lambda: now[0])
    stream = io.StringIO()
    bar = Progbar(4, verbose=1, count_name="images")
    monkeypatch.setattr(bar, "_stream", lambda: stream)
    for step in range(1, 5):
        now[0] += 0.5
        bar.update(step, [("loss", 1.0)], finalize=False, count=step * 10)
    now[0] += 8.0  # validation: not part of the training rate
    bar.update(4, [("val_loss", 2.0)], finalize=True)
    assert " - 20 images/s - " in stream.getvalue()  # 40 images in 2 s
    assert stream.getvalue().startswith("4/4 [")
