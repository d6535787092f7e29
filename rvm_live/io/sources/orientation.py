"""Phone video as players show it: the display matrix FFmpeg hands over as frame side data, applied."""

from __future__ import annotations

import numpy as np

from .._av import av


def display_matrix(frame: av.VideoFrame) -> tuple[int, ...] | None:
    """The frame's display matrix (FFmpeg's nine int32, 16.16 fixed point), or None when it has none."""
    for data in frame.side_data:
        if data.type == av.sidedata.sidedata.Type.DISPLAYMATRIX and data.buffer_size == 36:
            return tuple(np.frombuffer(memoryview(data), np.int32).tolist())
    return None


def orient(image: np.ndarray, matrix: tuple[int, ...] | None) -> np.ndarray:
    """``image`` as its display matrix shows it: turned by quarter turns and mirrored, as players do.

    A stored pixel (x, y) is shown at (m0·x + m3·y, m1·x + m4·y), shifted back into the picture (y down). The
    eight orientations cameras write make that 2x2 part a signed permutation: a transpose and flips. Any other
    angle (rare) is taken to the nearest of those."""
    if matrix is None:
        return image
    m0, m1, m3, m4 = matrix[0], matrix[1], matrix[3], matrix[4]
    if abs(m0) + abs(m4) >= abs(m1) + abs(m3):  # x stays x: flips only
        flip_rows, flip_cols = m4 < 0, m0 < 0
    else:  # shown x comes from stored y: the axes swap
        image, flip_rows, flip_cols = image.transpose(1, 0, 2), m1 < 0, m3 < 0
    if flip_rows or flip_cols:
        image = image[::-1 if flip_rows else 1, ::-1 if flip_cols else 1]
    return np.ascontiguousarray(image)
