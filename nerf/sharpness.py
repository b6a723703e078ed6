"""CPBD: a no-reference sharpness metric in [0, 1] (higher = sharper).

An in-house implementation of the Cumulative Probability of Blur Detection of N. D. Narvekar and L. J. Karam,
"A No-Reference Image Blur Metric Based on the Cumulative Probability of Blur Detection (CPBD)", IEEE Trans. Image
Processing 20(9), 2011. It follows, step by step, the reference port of the authors' MATLAB code (PyPI ``cpbd`` 1.0.7,
``cpbd.compute``), vectorised with numpy:

1. The image becomes grayscale on 8-bit integer levels 0..255, held as float64: the reference is fed 8-bit ``"L"``
   images (its CLI reads with ``mode="L"``), so RGB is converted exactly as PIL's ``"L"`` (BT.601 luma, rounded) and
   float input is quantised to 8 bits first. This matters: the widths end at flat runs, which rounding creates (an
   unrounded gray scored up to 0.04 lower than the reference on real frames).
2. Canny edges (``skimage.feature.canny`` with its defaults, exactly as the reference calls it) classify the 64x64
   blocks: a block is an edge block if more than 0.2 % of its pixels are Canny edges. Partial blocks at the right and
   bottom borders are ignored, as in the reference.
3. Edges for width measurement: the thinned, thresholded horizontal Sobel gradient (the reference's Octave-style
   ``sobel``); an edge's width is measured along its row, as in Marziliano et al., between the local extrema on either
   side of it (at most 101 pixels per side), for edges whose gradient direction (``np.gradient``) rounds to 0 or 180
   degrees; other edges get no width. As in the reference, the Sobel thinning keeps strict maxima only, so a step
   with no intermediate pixel (two tied maxima) has no measured edge; widths are at least 2.
4. Each edge in an edge block gets P_blur = 1 - exp(-|w / w_JNB|^3.6), with the just-noticeable width w_JNB = 5 if the
   block's contrast (max - min, truncated to an integer) is <= 50, else 3.
5. CPBD = the share of those edges with P_blur <= 0.63, with P_blur rounded to a percent as the reference's histogram
   does (so P_blur = 1 - 1/e, a width equal to w_JNB, counts as not blurred).

An image with no edge blocks, or with no measured edge inside them (flat images, images under 64 pixels on a side),
scores 0.0, as the reference does.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BLOCK = 64
"""The side of the square blocks, in pixels."""
EDGE_BLOCK_SHARE = 0.002
"""A block is an edge block when its share of Canny edge pixels exceeds this."""
BETA = 3.6
"""The exponent of the probability-of-blur-detection model."""
P_SHARP = 63
"""The cumulative probability is read at P_blur = 0.63 (in the reference's percent buckets)."""
MAX_MARGIN = 100
"""The reference stops the search for an extremum after 101 pixels on each side."""
_LUMA = np.array([19595.0, 38470.0, 7471.0]) / 65536  # PIL's fixed-point BT.601 weights
_SOBEL_X = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]) / 8.0


def to_gray(image: np.ndarray) -> np.ndarray:
    """The image (HxW or HxWx3 RGB, uint8 or float in [0, 1]) as float64 grayscale on integer levels 0..255."""
    img = np.asarray(image)
    if np.issubdtype(img.dtype, np.floating):
        img = np.rint(np.clip(img, 0.0, 1.0) * 255.0)
    img = img.astype(np.float64)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        img = np.floor(img[..., :3] @ _LUMA + 0.5)  # exactly PIL's (19595 R + 38470 G + 7471 B + 2**15) >> 16
    elif img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim != 2:
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {np.shape(image)}")
    return img


def _sobel_edges(gray: np.ndarray) -> np.ndarray:
    """Thinned vertical edges: squared horizontal Sobel above the reference's threshold, and a local maximum."""
    strength = ndimage.convolve(gray, _SOBEL_X) ** 2
    strength[strength <= 2 * np.sqrt(strength.mean())] = 0
    pad = np.pad(strength, 1)
    core = pad[1:-1, 1:-1]
    across = (core > pad[1:-1, :-2]) & (core > pad[1:-1, 2:])
    along = (core > pad[:-2, 1:-1]) & (core > pad[2:, 1:-1])
    return across | along


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the length of the run of True values ending at each column, and of the one starting at it."""
    idx = np.arange(mask.shape[1])
    ending = idx - np.maximum.accumulate(np.where(mask, -1, idx), axis=1)
    starting = idx - np.maximum.accumulate(np.where(mask[:, ::-1], -1, idx), axis=1)
    return ending, starting[:, ::-1]


def edge_widths(gray: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Marziliano edge widths along the rows at the given edge pixels (0 where there is no measured edge)."""
    height, width = gray.shape
    widths = np.zeros_like(gray)
    if height < 3 or width < 3:
        return widths
    grad_y, grad_x = np.gradient(gray)
    angles = np.where(grad_x != 0, np.arctan2(grad_y, grad_x) * (180 / np.pi), 0.0)
    if not angles.any():  # as the reference: no direction anywhere, no widths
        return widths
    quantized = np.round(angles / 45)[1:-1, 1:-1]
    # diffs[:, k + 1] = gray[:, k + 1] - gray[:, k]; the zero padding stops runs at the image border.
    diffs = np.pad(np.diff(gray, axis=1), ((0, 0), (1, 1)))
    widths_for = []
    for mask in (diffs > 0, diffs < 0):  # rising (gradient at 0 degrees), then falling (at +-180 degrees)
        ending, starting = _runs(mask[1:-1])
        left = np.minimum(ending[:, : width - 2], MAX_MARGIN) + 1  # the run ending 2 pixels left of the edge
        right = np.minimum(starting[:, 3:], MAX_MARGIN) + 1  # the run starting 1 pixel right of the edge
        widths_for.append(left + right)
    inner = edges[1:-1, 1:-1]
    widths[1:-1, 1:-1] = np.where(
        inner & (quantized == 0), widths_for[0], np.where(inner & (np.abs(quantized) == 4), widths_for[1], 0)
    )
    return widths


def _blocks(a: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The (rows, cols, BLOCK, BLOCK) view of the whole blocks of a 2-D array."""
    return a[: rows * BLOCK, : cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK).swapaxes(1, 2)


def cpbd(image: np.ndarray) -> float:
    """CPBD sharpness in [0, 1] (higher = sharper) of an image: HxW grayscale or HxWx3 RGB, uint8 or float in [0,1]."""
    from skimage.feature import canny  # imported here: skimage is slow to import

    gray = to_gray(image)
    rows, cols = gray.shape[0] // BLOCK, gray.shape[1] // BLOCK
    if rows == 0 or cols == 0:
        return 0.0
    is_edge_block = _blocks(canny(gray), rows, cols).sum(axis=(2, 3)) > BLOCK * BLOCK * EDGE_BLOCK_SHARE
    blocks = _blocks(gray, rows, cols)
    contrast = (blocks.max(axis=(2, 3)) - blocks.min(axis=(2, 3))).astype(np.int64)
    jnb = np.where(contrast <= 50, 5.0, 3.0)
    widths = _blocks(edge_widths(gray, _sobel_edges(gray)), rows, cols)
    measured = is_edge_block[:, :, None, None] & (widths > 0)
    if not measured.any():
        return 0.0
    ratio = widths[measured] / np.broadcast_to(jnb[:, :, None, None], widths.shape)[measured]
    p_blur = 1 - np.exp(-(np.abs(ratio) ** BETA))
    return float(np.mean(np.rint(p_blur * 100) <= P_SHARP))
