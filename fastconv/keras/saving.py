"""Saving models and weights in one file, without pickle.

Layout (little-endian):
    8 bytes  magic b"\\x89FCKERAS"
    4 bytes  format version (uint32, currently 1)
    8 bytes  header length in bytes (uint64)
    header   UTF-8 JSON: {"kind": "model"|"weights", "model": config|null, "compile": config|null,
                          "weights": [{"name": str, "shape": [int, ...], "dtype": "<f4"|"<f8"}, ...]}
    data     the weight arrays, raw and C-ordered, one after another, nothing after them.

Loading checks every part before trusting it: the magic and version, the header length against the
file size, the JSON structure, that the arrays exactly fill the rest of the file, that the model config
names only known layer classes and asks for no more weights than the file holds, and that each array
matches its layer's weight. Arrays are read as raw numbers (numpy.frombuffer), so a file can never run
code. Writes go to a temporary file in the same directory, are fsynced, then os.replace'd over the
target, so a crash mid-save leaves the previous file intact. Saving over a symlink rewrites the file it
points to, an existing file keeps its permissions, and temporaries left by killed saves of the same
target are removed.
"""
import contextlib
import json
import os
import stat
import struct

import numpy as np

from fastconv._tempfiles import locked_temporary, remove_abandoned
from fastconv.keras import keras_format, object_registry
from fastconv.keras.layers import LAYER_CLASSES
from fastconv.keras.layers.base import limit_weights
from fastconv.keras.models import model_from_config
from fastconv.keras.object_registry import (  # noqa: F401  (keras.saving's public names)
    custom_object_scope, get_custom_objects, get_registered_name, get_registered_object, register_keras_serializable,
)

MAGIC = b"\x89FCKERAS"
VERSION = 1
_PREFIX = struct.Struct("<8sIQ")
MAX_HEADER_BYTES = 64 * 1024 * 1024
_DTYPES = ("<f4", "<f8")


# ----- writing -----
def _atomic_write(path, chunks):
    path = os.fspath(path)
    # Like an editor: a symlink keeps pointing at the file it names, which is the one rewritten, and
    # the rewritten file keeps its permissions.
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    prefix = f".{os.path.basename(target)}."
    remove_abandoned(directory, prefix, ".tmp")  # left by saves that were killed
    mode = _mode_for(target)
    with locked_temporary(directory, prefix, ".tmp") as (fd, temporary):
        _write_and_replace(fd, temporary, target, path, chunks, mode)
    try:  # make the rename itself durable; not every platform can open a directory
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _mode_for(target):
    """The permission bits for ``target``: those it has, or for a new file 0o666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask():
    # os.umask can only be read by setting it, which would race with other threads creating files.
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    return 0o022


def _write_and_replace(fd, temporary, target, path, chunks, mode):
    try:
        with os.fdopen(fd, "wb") as file:
            for chunk in chunks:
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException as error:
        os.unlink(temporary)
        if isinstance(error, OSError):  # e.g. a full disk: say which file, and that nothing was lost
            message = f"could not save {path}: {error.strerror or error}; the previous file, if any, is unchanged"
            raise (OSError(error.errno, message) if error.errno is not None else OSError(message)) from error
        raise


def _write(path, kind, model_config, compile_config, variables):
    # np.require, not ascontiguousarray: that makes a scalar weight (Normalization's count) 1-D.
    arrays = [np.require(v.value, dtype=v.value.dtype.newbyteorder("<"), requirements="C") for v in variables]
    header = {
        "kind": kind, "model": model_config, "compile": compile_config,
        "weights": [{"name": v.path, "shape": list(a.shape), "dtype": a.dtype.str} for v, a in zip(variables, arrays)],
    }
    header_bytes = json.dumps(header).encode("utf-8")
    chunks = [_PREFIX.pack(MAGIC, VERSION, len(header_bytes)), header_bytes] + [memoryview(a).cast("B") for a in arrays]
    _atomic_write(path, chunks)


def _compile_config(model):
    from fastconv.keras import losses, optimizers
    trainer = model._trainer
    if trainer is None or trainer.losses[0] is None:
        return None
    loss_configs = [losses.serialize(loss) for loss in trainer.losses]
    optimizer_config = optimizers.serialize(trainer.optimizer)
    if None in loss_configs or optimizer_config is None:
        return None  # user-defined loss or optimizer classes cannot be rebuilt from a file
    # Metrics are saved by name; one that a name cannot rebuild (a custom name or function) is left
    # out rather than making the file fail to load.
    metric_names = [metric.name for metric in trainer.metrics[0] if _metric_from_name(metric.name, trainer.losses[0])]
    return {"loss": loss_configs, "optimizer": optimizer_config, "metrics": metric_names,
            "loss_weights": trainer.loss_weights}


def _metric_from_name(name, loss):
    from fastconv.keras import metrics
    try:
        return metrics.get(name, loss)
    except ValueError:
        return None


def _written_by_rank_0(write, filepath):
    """Under a keras.distribution over several ranks only rank 0 writes: the others hold the same
    weights, and two writers of one path would race. The others return once rank 0 has written the
    file (or raise its error), so that a load_model that follows on every rank reads the new one."""
    from fastconv.keras import distributed, distribution
    if distribution.active() is None:
        write()
    elif not distribution.is_chief():
        distributed.await_written(filepath)
    else:
        try:
            write()
        except BaseException as error:  # Ctrl-C too: the others stop with it rather than wait
            distributed.announce_written(filepath, error)
            raise
        distributed.announce_written(filepath)


def save_model(model, filepath):
    def write():
        if keras_format.is_keras_archive_path(filepath):  # Keras 3's own zip format, which Keras opens
            return keras_format.save_model(model, filepath)
        if not model.built:
            raise ValueError(f"model {model.name!r} has not been built yet, so it has no weights to save")
        _write(filepath, "model", model.to_config(), _compile_config(model), model.weights)
    _written_by_rank_0(write, filepath)


def save_weights(model, filepath):
    def write():
        if keras_format.is_weights_h5_path(filepath):  # Keras 3's HDF5 layout
            return keras_format.save_weights(model, filepath)
        if not model.built:
            raise ValueError(f"model {model.name!r} has not been built yet, so it has no weights to save")
        _write(filepath, "weights", None, None, model.weights)
    _written_by_rank_0(write, filepath)


# ----- reading -----
def _fail(path, message):
    raise ValueError(f"{os.fspath(path)!s}: {message}")


def _read_header(file, path, file_size):
    prefix = file.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size:
        _fail(path, "file is truncated (shorter than the fastconv.keras header)")
    magic, version, header_length = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        _fail(path, "not a fastconv.keras file (bad magic bytes)")
    if version != VERSION:
        _fail(path, f"unsupported format version {version} (this fastconv reads version {VERSION})")
    if header_length > min(MAX_HEADER_BYTES, file_size - _PREFIX.size):
        _fail(path, f"header claims {header_length} bytes, more than the file holds; the file is truncated or corrupt")
    try:
        header = json.loads(file.read(header_length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        _fail(path, f"header is not valid JSON ({error})")
    if not isinstance(header, dict) or set(header) != {"kind", "model", "compile", "weights"}:
        _fail(path, "header must be an object with keys kind, model, compile, weights")
    if header["kind"] not in ("model", "weights") or not isinstance(header["weights"], list):
        _fail(path, "header has an invalid kind or weights list")
    data_bytes = 0
    for entry in header["weights"]:
        if (not isinstance(entry, dict) or set(entry) != {"name", "shape", "dtype"} or not isinstance(entry["name"], str)
                or entry["dtype"] not in _DTYPES or not isinstance(entry["shape"], list)
                or not all(type(d) is int and d >= 0 for d in entry["shape"])):
            _fail(path, f"invalid weight entry in header: {str(entry)[:200]}")
        size = 1
        for dim in entry["shape"]:
            size *= dim
        entry["nbytes"] = size * np.dtype(entry["dtype"]).itemsize
        data_bytes += entry["nbytes"]
    expected = _PREFIX.size + header_length + data_bytes
    if expected != file_size:
        _fail(path, f"the header describes {expected} bytes but the file has {file_size}; it is truncated or corrupt")
    return header


def _check_matches(path, entries, variables):
    if len(entries) != len(variables):
        _fail(path, f"the file holds {len(entries)} weight arrays but the model has {len(variables)}")
    for entry, variable in zip(entries, variables):
        if tuple(entry["shape"]) != variable.shape:
            _fail(path, f"weight {entry['name']!r} has shape {tuple(entry['shape'])} in the file but the model's "
                        f"{variable.name!r} has shape {variable.shape}")


def _read_weights(file, entries, variables):
    for entry, variable in zip(entries, variables):
        data = file.read(entry["nbytes"])
        array = np.frombuffer(data, dtype=entry["dtype"]).reshape(entry["shape"])
        variable.assign(array)


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Rebuild a model saved by model.save: architecture, weights and (if saved) compile settings.

    Custom layers and subclassed models load when registered with register_keras_serializable or
    given in custom_objects ({class name: class})."""
    if custom_objects is not None and not isinstance(custom_objects, dict):
        raise TypeError(f"custom_objects must be a dict {{name: class}}, got {type(custom_objects).__name__}")
    if keras_format.holds_keras_format(filepath):  # a Keras 3 .keras archive, by its first bytes
        return keras_format.load_model(filepath, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)

    with open(filepath, "rb") as file:
        header = _read_header(file, filepath, os.fstat(file.fileno()).st_size)
        if header["kind"] != "model":
            _fail(filepath, "this file holds weights only; build the model and call model.load_weights")
        total_values = sum(int(np.prod(entry["shape"], dtype=object)) for entry in header["weights"])
        try:
            with limit_weights(total_values):
                model = model_from_config(header["model"], object_registry.resolver(LAYER_CLASSES, custom_objects))
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as error:
            _fail(filepath, f"invalid model config: {error}")
        _check_matches(filepath, header["weights"], model.weights)
        _read_weights(file, header["weights"], model.weights)
    if compile and header["compile"] is not None:
        _compile_from_config(model, header["compile"], filepath)
    return model


def _compile_from_config(model, config, path):
    if not isinstance(config, dict) or set(config) != {"loss", "optimizer", "metrics", "loss_weights"}:
        _fail(path, "invalid compile config")
    from fastconv.keras import losses
    loss = config["loss"]
    if isinstance(loss, list) and len(loss) == 1:
        loss = loss[0]
    try:
        # Serialized losses become Loss objects first: a dict passed to compile means one loss per output.
        loss = [losses.get(item) for item in loss] if isinstance(loss, list) else losses.get(loss)
        model.compile(optimizer=config["optimizer"], loss=loss, metrics=config["metrics"],
                      loss_weights=config["loss_weights"])
    except (ValueError, TypeError) as error:
        _fail(path, f"invalid compile config: {error}")


def load_weights(model, filepath):
    """Load weights saved by save_weights (or model.save) into a model of the same architecture."""
    if keras_format.holds_keras_format(filepath):  # Keras 3's .weights.h5 or .keras, by their first bytes
        return keras_format.load_weights(model, filepath)
    if not model.built:
        raise ValueError(f"model {model.name!r} has not been built yet; build it before loading weights")
    with open(filepath, "rb") as file:
        header = _read_header(file, filepath, os.fstat(file.fileno()).st_size)
        _check_matches(filepath, header["weights"], model.weights)
        _read_weights(file, header["weights"], model.weights)
