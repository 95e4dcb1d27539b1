#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris/libFuzzer) of fastconv.datasets.read_idx.

    pip install atheris
    python tools/fuzz_idx.py -max_total_time=180          # 3 minutes; prints "Done N runs in S second(s)"
    python tools/fuzz_idx.py CORPUS_DIR -runs=100000      # any libFuzzer flags; CORPUS_DIR is created and seeded

Every input is read both raw and as a gzip stream. The only accepted outcomes are an array or a
ValueError; any other exception is a finding (libFuzzer stops and writes the input to crash-*).
Absurd headers must be refused before allocating, so the run also uses -rss_limit_mb (default 2048).
"""
import gzip
import io
import os
import struct
import sys
import tempfile

import atheris
import numpy as np

with atheris.instrument_imports(include=["fastconv.datasets"]):
    from fastconv.datasets.idx import read_idx


def seeds():
    """Small valid IDX files of every type, raw and gzip-compressed."""
    rng = np.random.default_rng(0)
    for code, dtype in ((0x08, "u1"), (0x09, "i1"), (0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")):
        for shape in ((3,), (2, 3), (2, 2, 2), (0, 4)):
            array = rng.integers(0, 100, size=shape).astype(dtype)
            raw = bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", d) for d in shape) + array.tobytes()
            yield f"{code:02x}_{'x'.join(map(str, shape))}", raw
            yield f"{code:02x}_{'x'.join(map(str, shape))}_gz", gzip.compress(raw, mtime=0)


def TestOneInput(data):
    for payload in (data, gzip.compress(data, compresslevel=1, mtime=0)):
        try:
            array = read_idx(io.BytesIO(payload))
        except ValueError:
            continue
        if not isinstance(array, np.ndarray) or not array.dtype.isnative:
            raise AssertionError(f"read_idx returned {type(array).__name__} {getattr(array, 'dtype', '')}")


def main():
    args = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    flags = [arg for arg in sys.argv[1:] if arg.startswith("-")]
    corpus = args[0] if args else os.path.join(tempfile.gettempdir(), "fastconv-fuzz-idx")
    os.makedirs(corpus, exist_ok=True)
    if not os.listdir(corpus):
        for name, raw in seeds():
            with open(os.path.join(corpus, name), "wb") as f:
                f.write(raw)
    if not any(flag.startswith("-rss_limit_mb") for flag in flags):
        flags.append("-rss_limit_mb=2048")
    atheris.Setup([sys.argv[0], *flags, corpus, *args[1:]], TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
