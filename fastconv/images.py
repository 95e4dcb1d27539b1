"""Reading one grayscale image for `fastconv predict`: .npy, binary/ASCII PGM, or via Pillow."""
import numpy as np


def _read_pgm(data, path):
    """Parses a P5 (binary) or P2 (ASCII) PGM with maxval <= 255."""
    tokens, pos = [], 2
    while len(tokens) < 3:  # width, height, maxval; '#' starts a comment
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.find(b"\n", pos) + 1 or len(data)
            continue
        start = pos
        while pos < len(data) and not data[pos:pos + 1].isspace():
            pos += 1
        if start == pos:
            raise ValueError(f"{path}: truncated PGM header")
        tokens.append(data[start:pos])
    try:
        width, height, maxval = (int(t) for t in tokens)
    except ValueError:
        raise ValueError(f"{path}: malformed PGM header") from None
    if not (0 < width <= 4096 and 0 < height <= 4096 and 0 < maxval <= 255):
        raise ValueError(f"{path}: unsupported PGM size or maxval ({width}x{height}, maxval {maxval})")
    if data[:2] == b"P5":
        pixels = np.frombuffer(data, dtype=np.uint8, count=-1, offset=pos + 1)
    else:
        pixels = np.array(data[pos:].split(), dtype=np.int64)
    if pixels.size < width * height:
        raise ValueError(f"{path}: PGM has {pixels.size} pixels, header says {width * height}")
    image = pixels[:width * height].reshape(height, width).astype(np.float64)
    return np.rint(image * (255.0 / maxval)).astype(np.uint8)


def read_grayscale(path):
    """The image at `path` as a uint8 (H, W) array."""
    path = str(path)
    if path.endswith(".npy"):
        array = np.load(path, allow_pickle=False)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 2 or array.dtype.kind not in "uif":
            raise ValueError(f"{path}: expected a 2-D numeric array, got shape {array.shape} dtype {array.dtype}")
        if array.dtype.kind == "f" and array.max(initial=0) <= 1.0:
            array = array * 255.0  # a float image in [0, 1]
        return np.clip(np.rint(array), 0, 255).astype(np.uint8)
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] in (b"P5", b"P2"):
        return _read_pgm(data, path)
    try:
        from PIL import Image
    except ImportError:
        raise ValueError(f"{path}: reading this image format needs Pillow (pip install 'fastconv[images]'); "
                         "PGM and .npy work without it") from None
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"), dtype=np.uint8)
    except OSError as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None


def has_light_background(image):
    """True if the image's border (where a centred digit's background is) is mostly light."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., 0]
    border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    return bool(np.median(border) > 127)
