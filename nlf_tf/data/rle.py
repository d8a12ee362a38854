"""COCO run-length encoding (RLE) of binary masks, without pycocotools.

A COCO RLE is a dict {'size': [H, W], 'counts': ...}. The mask is read in column-major
(Fortran) order and described by alternating run lengths, starting with a run of zeros (which may
be empty). `counts` is either a plain list of ints ("uncompressed" RLE, used by COCO for crowd
annotations) or a compressed string: each run length (for runs after the second, the difference
to the run two places earlier) is written as a little-endian sequence of 5-bit groups, each
stored as the character chr(48 + group), where bit 0x20 means "more groups follow" and bit 0x10
of the last group is the sign bit. This matches COCO's maskApi (rleToString / rleFrString).
"""

import numpy as np


def decode(rle):
    """uint8 [H, W] mask with values 0/1 from a COCO RLE dict (list or compressed counts)."""
    height, width = _size_of(rle)
    counts = rle.get('counts') if isinstance(rle, dict) else None
    if isinstance(counts, (str, bytes)):
        runs = string_to_counts(counts)
    elif isinstance(counts, (list, tuple, np.ndarray)):
        runs = np.asarray(counts, dtype=np.int64).reshape(-1)
    else:
        raise ValueError(f'RLE field "counts" must be a list of ints or a string, got '
                         f'{type(counts).__name__}')
    if np.any(runs < 0):
        raise ValueError('RLE field "counts" has a negative run length')
    total = int(runs.sum())
    if total != height * width:
        raise ValueError(f'RLE field "counts" covers {total} pixels but "size" is '
                         f'{height}x{width} = {height * width}')
    # Odd-indexed runs are ones.
    values = np.zeros(len(runs), dtype=np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T.copy()


def encode(mask):
    """Compressed COCO RLE {'size': [H, W], 'counts': str} of a 2D mask (nonzero = foreground)."""
    return {'size': list(np.shape(mask)), 'counts': counts_to_string(mask_to_counts(mask))}


def mask_to_counts(mask):
    """Uncompressed run lengths (list of ints) of a 2D mask, column-major, starting with zeros."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f'mask must be 2D [H, W], got shape {mask.shape}')
    flat = (mask.T.reshape(-1) != 0).astype(np.int8)
    if flat.size == 0:
        return [0]
    change = np.flatnonzero(np.diff(flat)) + 1
    boundaries = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(boundaries).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return runs


def counts_to_string(counts):
    """COCO's compressed string form of a list of run lengths."""
    counts = [int(c) for c in counts]
    chars = []
    for i, value in enumerate(counts):
        # Delta coding against the run two places back; COCO only applies it from index 3 on.
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            group = x & 0x1F
            x >>= 5  # arithmetic shift: negative numbers end at -1
            more = (x != -1) if (group & 0x10) else (x != 0)
            if more:
                group |= 0x20
            chars.append(chr(group + 48))
    return ''.join(chars)


def string_to_counts(string):
    """Run lengths (int64 array) from COCO's compressed string form."""
    if isinstance(string, bytes):
        string = string.decode('ascii')
    counts = []
    pos = 0
    n = len(string)
    while pos < n:
        x = 0
        shift = 0
        more = True
        while more:
            if pos >= n:
                raise ValueError('RLE counts string ends in the middle of a number')
            group = ord(string[pos]) - 48
            if group < 0 or group > 63:
                raise ValueError(f'RLE counts string has an invalid character {string[pos]!r}')
            x |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            pos += 1
            shift += 5
            if not more and (group & 0x10):
                x -= 1 << shift  # sign-extend
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return np.asarray(counts, dtype=np.int64)


def area(rle):
    """Number of foreground pixels of a COCO RLE."""
    return int(decode(rle).sum())


def _size_of(rle):
    if not isinstance(rle, dict):
        raise ValueError(f'an RLE must be a dict with "size" and "counts", got {type(rle).__name__}')
    size = rle.get('size')
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f'RLE field "size" must be [H, W], got {size!r}') from None
    if height < 0 or width < 0:
        raise ValueError(f'RLE field "size" must be non-negative, got {size!r}')
    return height, width
