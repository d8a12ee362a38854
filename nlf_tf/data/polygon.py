"""Rasterisation of COCO segmentation polygons into boolean masks.

Pixel (row y, column x) is inside when its centre, the point (x, y) in the project's pixel
convention (pixel centres at integer coordinates), lies inside the polygon by the even-odd rule.
This is what pycocotools' polygon rasteriser approximates (it samples boundaries at 5x resolution),
so masks agree with COCO's except for a few boundary pixels. A segmentation with several polygons
is the union of their masks.
"""

import numpy as np


def polygon_to_mask(polygon, shape):
    """Bool [H, W] mask of one polygon given as a flat [x0, y0, x1, y1, ...] list or [N, 2]."""
    height, width = _check_shape(shape)
    points = np.asarray(polygon, dtype=np.float64)
    if points.ndim == 1:
        if points.size % 2:
            raise ValueError(f'a flat polygon needs an even number of values, got {points.size}')
        points = points.reshape(-1, 2)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f'polygon must be flat [x0, y0, ...] or [N, 2], got shape {points.shape}')
    if not np.all(np.isfinite(points)):
        raise ValueError('polygon has non-finite coordinates')
    mask = np.zeros((height, width), dtype=bool)
    if len(points) < 3:
        return mask

    # For every edge and every pixel row y crossed by it (half-open in y so that a vertex shared
    # by two edges is counted once), toggle the parity at the first column to the right of the
    # crossing; a cumulative sum along the row then yields the even-odd inside test per pixel.
    start = points
    end = np.roll(points, -1, axis=0)
    toggles = np.zeros((height, width + 1), dtype=np.int32)
    for (x0, y0), (x1, y1) in zip(start, end):
        if y0 == y1:
            continue
        y_lo, y_hi = min(y0, y1), max(y0, y1)
        rows = np.arange(max(np.ceil(y_lo), 0), min(np.ceil(y_hi), height), dtype=np.int64)
        if rows.size == 0:
            continue
        x_cross = x0 + (rows - y0) * (x1 - x0) / (y1 - y0)
        cols = np.clip(np.ceil(x_cross), 0, width).astype(np.int64)
        np.add.at(toggles, (rows, cols), 1)
    return (np.cumsum(toggles, axis=1)[:, :width] % 2) == 1


def polygons_to_mask(polygons, shape):
    """Union of `polygon_to_mask` over a list of polygons (the COCO `segmentation` list form)."""
    height, width = _check_shape(shape)
    mask = np.zeros((height, width), dtype=bool)
    for polygon in polygons:
        mask |= polygon_to_mask(polygon, (height, width))
    return mask


def _check_shape(shape):
    if len(shape) != 2:
        raise ValueError(f'mask shape must be (H, W), got {shape}')
    height, width = int(shape[0]), int(shape[1])
    if height <= 0 or width <= 0:
        raise ValueError(f'mask shape must be positive, got {shape}')
    return height, width
