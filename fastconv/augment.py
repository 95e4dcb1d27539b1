"""Batch augmentation for digit images: small random shifts and rotations, in NumPy.

Works on uint8 (N, H, W) or (N, H, W, 1) batches and returns the same dtype, so a training set can
stay uint8 in memory. Each output pixel samples its rotated/shifted source pixel (nearest neighbour;
pixels from outside the image are 0, the background of MNIST).
"""
import numpy as np


def random_shift_rotate(images, rng, max_shift=2, max_degrees=10.0):
    """Return a copy of `images` with each image moved by up to `max_shift` pixels per axis and
    rotated by up to `max_degrees` about its centre."""
    images = np.asarray(images)
    n, h, w = images.shape[:3]
    angles = np.deg2rad(rng.uniform(-max_degrees, max_degrees, size=n))
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    # Inverse mapping: for each output pixel, the source pixel it comes from.
    dy = rows[None] - cy - shifts[:, 0, None, None]
    dx = cols[None] - cx - shifts[:, 1, None, None]
    src_y = np.rint(cos * dy + sin * dx + cy).astype(np.intp)
    src_x = np.rint(-sin * dy + cos * dx + cx).astype(np.intp)
    inside = (src_y >= 0) & (src_y < h) & (src_x >= 0) & (src_x < w)
    flat = images.reshape(n, h * w, -1)
    index = np.where(inside, src_y * w + src_x, 0)
    out = np.take_along_axis(flat, index.reshape(n, h * w, 1), axis=1)
    out[~inside.reshape(n, h * w)] = 0
    return out.reshape(images.shape)
