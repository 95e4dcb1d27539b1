"""TensorBoard event files written without TensorFlow: the scalars keras.callbacks.TensorBoard logs.

A file is a sequence of TFRecords (a little-endian uint64 length, its masked CRC-32C, the bytes, their
masked CRC-32C), each an `Event` protocol buffer: first one naming the format ("brain.Event:2"), then
one per scalar, a `Summary` holding one `Value` (tag, simple_value) at a step. TensorBoard reads these
as its scalars.
"""
import itertools
import math
import os
import socket
import struct
import time


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # Castagnoli's polynomial, reflected
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data):
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value):
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(number, wire_type):
    return _varint(number << 3 | wire_type)


def _length_delimited(number, payload):
    return _key(number, 2) + _varint(len(payload)) + payload


def _event(wall_time, step=0, file_version=None, summary=None):
    """An Event: wall_time (field 1, double), step (2, int64), file_version (3) or summary (5)."""
    message = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(step)
    if file_version is not None:
        message += _length_delimited(3, file_version.encode())
    if summary is not None:
        message += _length_delimited(5, summary)
    return message


def _scalar(tag, value):
    """A Summary (field 1: Value) whose Value holds tag (1) and simple_value (2, float)."""
    return _length_delimited(1, _length_delimited(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value))


_files_made = itertools.count()


class EventFileWriter:
    """An event file in `directory` (made if missing), named as TensorFlow names them."""

    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}."
                f"{next(_files_made)}.v2")
        self.path = os.path.join(directory, name)
        self._file = open(self.path, "wb")
        self._write(_event(time.time(), file_version="brain.Event:2"))

    def _write(self, record):
        length = struct.pack("<Q", len(record))
        self._file.write(length + struct.pack("<I", _masked_crc(length)) + record +
                         struct.pack("<I", _masked_crc(record)))

    def scalar(self, tag, value, step):
        """Record a finite number (anything else is skipped: TensorBoard plots numbers only)."""
        try:
            value = float(value)
        except (TypeError, ValueError):
            return
        if math.isfinite(value):
            self._write(_event(time.time(), step=int(step), summary=_scalar(tag, value)))

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()
