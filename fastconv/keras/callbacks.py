"""Callbacks: hooks the trainer calls around training, epochs and batches (Keras' names and arguments)."""
import csv
import math
import os
import time
import warnings

import numpy as np

from fastconv.keras.progbar import Progbar


class Callback:
    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None): pass
    def on_train_batch_begin(self, batch, logs=None): pass
    def on_train_batch_end(self, batch, logs=None): pass
    def on_test_begin(self, logs=None): pass
    def on_test_end(self, logs=None): pass
    def on_test_batch_begin(self, batch, logs=None): pass
    def on_test_batch_end(self, batch, logs=None): pass
    def on_predict_begin(self, logs=None): pass
    def on_predict_end(self, logs=None): pass
    def on_predict_batch_begin(self, batch, logs=None): pass
    def on_predict_batch_end(self, batch, logs=None): pass


class CallbackList:
    """Forwards every hook to each callback in order."""

    def __init__(self, callbacks, model, params):
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks must be keras.callbacks.Callback instances, got {type(callback).__name__}")
            callback.set_model(model)
            callback.set_params(params)

    def _call(self, hook, *args):
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def __getattr__(self, hook):
        if hook.startswith("on_"):
            return lambda *args: self._call(hook, *args)
        raise AttributeError(hook)


class History(Callback):
    """Records every epoch's logs in `history` (a dict of lists); fit returns it."""

    def __init__(self):
        super().__init__()
        self.epoch, self.history = [], {}

    def on_train_begin(self, logs=None):
        self.epoch, self.history = [], {}
        self.model.history = self

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)


class ProgbarLogger(Callback):
    """Prints "Epoch i/n" and a Progbar per epoch (and one for evaluate/predict)."""

    def __init__(self, verbose=1):
        super().__init__()
        self.verbose = verbose
        self._bar = None

    def _new_bar(self, steps):
        self._bar = Progbar(steps, verbose=self.verbose)

    def _update(self, current, logs, finalize):
        logs = logs or {}
        self._bar.stateful_metrics.update(logs)  # the trainer's logs are already running averages
        self._bar.update(current, list(logs.items()), finalize=finalize)

    def on_epoch_begin(self, epoch, logs=None):
        print(f"Epoch {epoch + 1}/{self.params.get('epochs')}")
        self._new_bar(self.params.get("steps"))

    def on_train_batch_end(self, batch, logs=None):
        self._update(batch + 1, logs, finalize=False)

    def on_epoch_end(self, epoch, logs=None):
        self._update(self._bar._seen, logs, finalize=True)

    def on_test_begin(self, logs=None):
        self._new_bar(self.params.get("steps"))

    def on_test_batch_end(self, batch, logs=None):
        self._update(batch + 1, logs, finalize=False)

    def on_test_end(self, logs=None):
        self._update(self._bar._seen, logs, finalize=True)

    def on_predict_begin(self, logs=None):
        self._new_bar(self.params.get("steps"))

    def on_predict_batch_end(self, batch, logs=None):
        self._update(batch + 1, None, finalize=False)

    def on_predict_end(self, logs=None):
        self._update(self._bar._seen, None, finalize=True)


def _monitor_mode(mode, monitor):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    return mode


def _improved(current, best, mode, min_delta):
    if best is None:
        return True
    return current > best + min_delta if mode == "max" else current < best - min_delta


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than min_delta for `patience` epochs."""

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto", baseline=None,
                 restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        self.monitor, self.min_delta, self.patience = monitor, abs(min_delta), int(patience)
        self.verbose, self.mode = verbose, _monitor_mode(mode, monitor)
        self.baseline, self.restore_best_weights = baseline, restore_best_weights
        self.start_from_epoch = start_from_epoch

    def on_train_begin(self, logs=None):
        self.wait, self.stopped_epoch = 0, 0
        self.best, self.best_weights, self.best_epoch = self.baseline, None, 0

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            warnings.warn(f"EarlyStopping monitors {self.monitor!r}, which is not in the logs "
                          f"({', '.join(logs or {})})", RuntimeWarning)
            return
        if epoch < self.start_from_epoch:
            return
        self.wait += 1
        if _improved(current, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.wait = current, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.restore_best_weights and self.best_weights is not None:
                self.model.set_weights(self.best_weights)
            if self.verbose:
                print(f"Epoch {epoch + 1}: early stopping (best {self.monitor} {self.best:.4f} at epoch {self.best_epoch + 1})")


class ModelCheckpoint(Callback):
    """Save the model (or its weights) after each epoch to filepath formatted with epoch and logs.

    Writes are atomic (see keras.saving), so an interrupted save leaves the previous file intact.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, save_weights_only=False,
                 mode="auto", save_freq="epoch"):
        super().__init__()
        if save_freq != "epoch":
            raise ValueError(f"save_freq must be 'epoch', got {save_freq!r}")
        self.filepath = os.fspath(filepath)
        self.monitor, self.verbose = monitor, verbose
        self.save_best_only, self.save_weights_only = save_best_only, save_weights_only
        self.mode = _monitor_mode(mode, monitor)
        self.best = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        try:
            path = self.filepath.format(epoch=epoch + 1, **logs)
        except KeyError as error:
            raise ValueError(f"ModelCheckpoint filepath {self.filepath!r} uses {error}, which is not in the logs "
                             f"(available: epoch, {', '.join(logs)})") from None
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                warnings.warn(f"ModelCheckpoint monitors {self.monitor!r}, which is not in the logs", RuntimeWarning)
                return
            if not _improved(current, self.best, self.mode, 0):
                return
            self.best = current
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)
        if self.verbose:
            print(f"Epoch {epoch + 1}: saved to {path}")


class TerminateOnNaN(Callback):
    """Stop training as soon as a batch loss is NaN or infinite."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: invalid loss, terminating training")
            self.model.stop_training = True


class CSVLogger(Callback):
    """Append one row per epoch (epoch, then each log value) to a CSV file."""

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename, self.separator, self.append = os.fspath(filename), separator, append
        self._file = self._writer = None

    def on_train_begin(self, logs=None):
        from fastconv.keras import distribution
        if not distribution.is_chief():  # the other ranks of a keras.distribution log the same rows
            self._file = self._writer = None
            return
        exists = self.append and os.path.exists(self.filename) and os.path.getsize(self.filename) > 0
        self._file = open(self.filename, "a" if self.append else "w", newline="")
        self._writer = None
        self._write_header = not exists

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._file is None:
            return
        if self._writer is None:
            self._keys = sorted(logs)
            self._writer = csv.DictWriter(self._file, fieldnames=["epoch"] + self._keys, delimiter=self.separator)
            if self._write_header:
                self._writer.writeheader()
        self._writer.writerow({"epoch": epoch, **{key: logs.get(key, "NA") for key in self._keys}})
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoard(Callback):
    """keras.callbacks.TensorBoard's scalars: each epoch's losses, metrics and learning rate as
    "epoch_<name>" in log_dir/train, the validation ones in log_dir/validation, and with update_freq
    ("batch" or every N batches) "batch_<name>" too. fastconv writes the event files itself, without
    TensorFlow: view them with `tensorboard --logdir <log_dir>`. Weight histograms, images, the graph,
    profiles and embeddings are not written. Under a keras.distribution only rank 0 writes."""

    def __init__(self, log_dir="logs", histogram_freq=0, write_graph=True, write_images=False,
                 write_steps_per_second=False, update_freq="epoch", profile_batch=0, embeddings_freq=0,
                 embeddings_metadata=None):
        super().__init__()
        if update_freq not in ("epoch", "batch") and (isinstance(update_freq, bool) or
                                                      not isinstance(update_freq, int) or update_freq < 1):
            raise ValueError(f"update_freq must be 'epoch', 'batch' or a positive int, got {update_freq!r}")
        ignored = {name: value for name, value, off in (
            ("histogram_freq", histogram_freq, 0), ("write_images", write_images, False),
            ("profile_batch", profile_batch, 0), ("embeddings_freq", embeddings_freq, 0)) if value != off}
        if ignored:
            warnings.warn(f"TensorBoard writes scalars only in fastconv; {ignored} has no effect", RuntimeWarning,
                          stacklevel=2)
        self.log_dir, self.write_steps_per_second = os.fspath(log_dir), bool(write_steps_per_second)
        self.update_freq = 1 if update_freq == "batch" else update_freq
        self._writers, self._batch = {}, 0

    def _writer(self, kind):
        if kind not in self._writers:
            from fastconv.keras.tensorboard import EventFileWriter
            self._writers[kind] = EventFileWriter(os.path.join(self.log_dir, kind))
        return self._writers[kind]

    def on_train_begin(self, logs=None):
        from fastconv.keras import distribution
        self._writing, self._batch = distribution.is_chief(), 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started, self._epoch_batches = time.perf_counter(), 0

    def on_train_batch_begin(self, batch, logs=None):
        self._batch += 1
        self._batch_started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._epoch_batches += 1
        if not self._writing:
            return
        writer = self._writer("train")
        if self.write_steps_per_second:
            writer.scalar("batch_steps_per_second", 1 / max(time.perf_counter() - self._batch_started, 1e-9),
                          self._batch)
        if self.update_freq != "epoch" and self._batch % self.update_freq == 0:
            for name, value in (logs or {}).items():
                writer.scalar(f"batch_{name}", value, self._batch)

    def on_epoch_end(self, epoch, logs=None):
        if not self._writing or not logs:
            return
        train = {name: value for name, value in logs.items() if not name.startswith("val_")}
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            train["learning_rate"] = optimizer.learning_rate
        if self.write_steps_per_second:
            train["steps_per_second"] = self._epoch_batches / max(time.perf_counter() - self._epoch_started, 1e-9)
        for kind, values in (("train", train), ("validation", {name[4:]: value for name, value in logs.items()
                                                               if name.startswith("val_")})):
            if values:
                writer = self._writer(kind)
                for name, value in values.items():
                    writer.scalar(f"epoch_{name}", value, epoch)
                writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


class LambdaCallback(Callback):
    """A callback from plain functions: on_epoch_begin(epoch, logs), on_batch_end(batch, logs), ..."""

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_batch_begin=None, on_batch_end=None,
                 on_train_begin=None, on_train_end=None):
        super().__init__()
        hooks = {"on_epoch_begin": on_epoch_begin, "on_epoch_end": on_epoch_end,
                 "on_train_batch_begin": on_batch_begin, "on_train_batch_end": on_batch_end,
                 "on_train_begin": on_train_begin, "on_train_end": on_train_end}
        for hook, function in hooks.items():
            if function is not None:
                setattr(self, hook, function)


class LearningRateScheduler(Callback):
    """Set the learning rate at each epoch start to schedule(epoch, lr) (or schedule(epoch))."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        try:
            lr = self.schedule(epoch, optimizer.learning_rate)
        except TypeError:  # the one-argument form schedule(epoch)
            lr = self.schedule(epoch)
        if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating)) or not math.isfinite(lr):
            raise ValueError(f"the learning-rate schedule must return a finite number, got {lr!r}")
        optimizer.learning_rate = float(lr)
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:  # Keras 3's key (Keras 2 logged "lr")
            logs["learning_rate"] = self.model.optimizer.learning_rate


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by `factor` when `monitor` stops improving for `patience` epochs."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        super().__init__()
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor!r}")
        self.monitor, self.factor, self.patience, self.verbose = monitor, float(factor), int(patience), verbose
        self.mode = _monitor_mode(mode, monitor)
        self.min_delta, self.cooldown, self.min_lr = abs(min_delta), int(cooldown), float(min_lr)

    def on_train_begin(self, logs=None):
        self.best, self.wait, self.cooldown_counter = None, 0, 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        optimizer = self.model.optimizer
        logs["learning_rate"] = optimizer.learning_rate
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"ReduceLROnPlateau monitors {self.monitor!r}, which is not in the logs", RuntimeWarning)
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if _improved(current, self.best, self.mode, self.min_delta):
            self.best, self.wait = current, 0
            return
        if self.cooldown_counter > 0:
            return
        self.wait += 1
        if self.wait >= self.patience:
            new_lr = max(optimizer.learning_rate * self.factor, self.min_lr)
            if new_lr < optimizer.learning_rate:
                optimizer.learning_rate = new_lr
                if self.verbose:
                    print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new_lr}.")
            self.cooldown_counter, self.wait = self.cooldown, 0


from fastconv.keras.backup import BackupAndRestore  # noqa: E402  (it subclasses Callback, defined above)
