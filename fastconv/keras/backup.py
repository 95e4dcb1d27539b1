"""keras.callbacks.BackupAndRestore: resume a fit that was cut off, exactly where it stood.

At the end of every epoch the callback writes the whole training state to backup_dir/training_state.npz:
the model's weights, the optimizer's step count and state (momenta, accumulators), the epoch, and the
random generator behind shuffling and dropout. A fit started again with the same callback (after a
crash, a pre-emption, a killed job) loads it and goes on from the next epoch, so an interrupted run ends
with the same weights as one that was not (bitwise on the same number of ranks). The file is replaced
atomically (written beside it, flushed to disk, renamed over it), so a crash while saving leaves the
previous epoch's state. When fit completes, the backup is deleted (delete_checkpoint=True).

Under a keras.distribution over several ranks, rank 0 writes the file and, on restore, reads it and
sends the state to the other ranks, so it resumes on any number of ranks and needs to be on rank 0's
disk only.
"""
import json
import os

import numpy as np

from fastconv.keras import backend
from fastconv.keras.callbacks import Callback

STATE_FILE = "training_state.npz"
FORMAT = "fastconv-training-state-1"


def _distributed_active():
    from fastconv.keras import distribution
    return distribution.active() is not None


def _chief():
    from fastconv.keras import distribution
    return distribution.is_chief()


class BackupAndRestore(Callback):
    """Keras 3's `keras.callbacks.BackupAndRestore(backup_dir, save_freq="epoch", delete_checkpoint=True)`."""

    def __init__(self, backup_dir, save_freq="epoch", double_checkpoint=False, delete_checkpoint=True):
        super().__init__()
        if not backup_dir:
            raise ValueError("backup_dir is required: the directory to keep the training state in")
        if save_freq != "epoch":
            raise ValueError(f"save_freq must be 'epoch', got {save_freq!r}")
        if double_checkpoint:
            raise ValueError("double_checkpoint is not needed: the state file is replaced atomically")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq, self.delete_checkpoint = save_freq, bool(delete_checkpoint)
        self.path = os.path.join(self.backup_dir, STATE_FILE)

    # ----- restore -----
    def on_train_begin(self, logs=None):
        state = None
        if _chief() and os.path.exists(self.path):
            state = _read(self.path)
        if _distributed_active():
            from fastconv.keras import distributed
            state = distributed.broadcast_object(state, 0)
        if state is not None:
            _restore(self.model, state, self.path)
            self.model._initial_epoch = state["epoch"] + 1

    # ----- save -----
    def on_epoch_end(self, epoch, logs=None):
        if _chief():
            os.makedirs(self.backup_dir, exist_ok=True)
            _write(self.path, _capture(self.model, epoch))

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and _chief() and os.path.exists(self.path):
            os.remove(self.path)


def _capture(model, epoch):
    optimizer = model.optimizer
    weights = model.weights
    index = {id(v): i for i, v in enumerate(weights)}
    slots = [(index[id(v)], [np.array(s) for s in arrays]) for v, arrays in optimizer._slots.items() if id(v) in index]
    meta = {"format": FORMAT, "epoch": int(epoch),
            "weights": [[list(v.shape), v.dtype.str] for v in weights],
            "optimizer": type(optimizer).__name__, "iterations": int(optimizer.iterations),
            "momentum_product": getattr(optimizer, "_momentum_product", None),
            "slots": [[i, len(arrays)] for i, arrays in slots],
            "rng": backend.rng().bit_generator.state}
    arrays = {f"w{i}": v.value for i, v in enumerate(weights)}
    for i, slot_arrays in slots:
        for j, array in enumerate(slot_arrays):
            arrays[f"s{i}_{j}"] = array
    return meta, arrays


def _write(path, state):
    meta, arrays = state
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            np.savez(file, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _read(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            arrays = {name: data[name] for name in data.files if name != "meta"}
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path}: not a readable training state ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fastconv training state")
    return {"epoch": int(meta["epoch"]), "meta": meta, "arrays": arrays}


def _restore(model, state, path):
    meta, arrays = state["meta"], state["arrays"]
    weights = model.weights
    # By shape, not name: layer names count up within a process, so a rebuilt model's differ.
    expected = [[list(v.shape), v.dtype.str] for v in weights]
    if meta["weights"] != expected:
        raise ValueError(f"{path} holds the state of another model: its weights (shape, dtype) are "
                         f"{meta['weights']}, this model's {expected}")
    optimizer = model.optimizer
    if meta["optimizer"] != type(optimizer).__name__:
        raise ValueError(f"{path} holds the state of the optimizer {meta['optimizer']}, this model uses "
                         f"{type(optimizer).__name__}")
    for i, variable in enumerate(weights):
        variable.value[...] = arrays[f"w{i}"]
    optimizer.iterations = meta["iterations"]
    if meta["momentum_product"] is not None:
        optimizer._momentum_product = meta["momentum_product"]
    optimizer._slots = {}
    for i, count in meta["slots"]:
        variable = weights[i]
        slots = optimizer._new_slots(variable.value)
        if len(slots) != count:
            raise ValueError(f"{path}: the optimizer state of {variable.path!r} has {count} arrays, "
                             f"{type(optimizer).__name__} keeps {len(slots)}")
        for j, slot in enumerate(slots):
            slot[...] = arrays[f"s{i}_{j}"]
        optimizer._slots[variable] = slots
    backend.rng().bit_generator.state = meta["rng"]
