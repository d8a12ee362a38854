"""Object occluders from Pascal VOC 2012: bank extraction (at construction) and in-graph pasting.

Extraction (spec datasets.md §9, NLF's Pascal VOC occluder loader), from the VOC root folder
with `Annotations/` (XML), `JPEGImages/` and `SegmentationObject/` (indexed-colour PNGs whose
palette index k + 1 marks the k-th <object> of the image's XML): every object of a segmented
image that is not a person, not difficult and not truncated, whose mask has at least
`MIN_MASK_PIXELS` pixels inside its box, is cut out of its box as RGBA with alpha 255 inside,
`RIM_ALPHA` (192 = 0.75) on the rim that an erosion by an 8 x 8 elliptic structuring element
removes, 0 outside the object, and downscaled by 0.5 (area averaging). Everything is done with
TensorFlow image ops and xml.etree (no PIL / OpenCV).

The bank keeps at most `max_occluders` cut-outs: the segmented images are visited in a
seeded random order and extraction stops once enough objects were found (bounding memory and
start-up time). The cut-outs are packed back to back in ONE flat uint8 tensor [T, 4] (RGBA
pixels, row-major per cut-out) with offsets [N] and sizes [N, 2] (h, w), instead of a padded
[N, Hmax, Wmax, 4] array: VOC images are at most 500 x 500, so a cut-out is at most 250 x 250,
and padding everything to that would cost N x 250 KB (125 MB for 500 occluders), while the
flat bank costs only the real pixels (typically 10-30 KB per cut-out, ~5-15 MB for 500).
The bank tensors are eager constants captured by the tf.data functions (they are serialised
into the dataset graph only when tf.data needs to serialise it, e.g. for distribution, and
stay far below the 2 GB GraphDef limit: at most 125 MB for max_occluders=500).

Pasting (in graph, stateless): 1-6 occluders (uniform count), each a uniformly chosen cut-out
scaled by U(0.2, 1.0) x S / 256 x `scale_factor` (area averaging when shrinking, bilinear when
enlarging, new size = round(size x factor)), centred at a uniform position in [0, S)^2 (rounded
to a pixel; top-left = centre - size // 2), alpha-blended over the image in turn.
"""

import dataclasses
import functools
import glob
import os
import struct
import xml.etree.ElementTree

import numpy as np
import tensorflow as tf

DEFAULT_MAX_OCCLUDERS = 500
MIN_MASK_PIXELS = 500
RIM_ALPHA = 192  # 0.75 x 255, rounded up like the original uint8 value
DOWNSCALE = 0.5
SCALE_RANGE = (0.2, 1.0)
MAX_PER_IMAGE = 6  # occluders per augmented image: uniform in 1..MAX_PER_IMAGE


def _erosion_element():
    """8 x 8 elliptic structuring element with anchor (4, 4) (OpenCV's MORPH_ELLIPSE rule:
    row i spans the columns c +- round(c * sqrt(1 - (i - r)^2 / r^2)), r = c = 4)."""
    size, r = 8, 4
    element = np.zeros((size, size), np.float32)
    for i in range(size):
        dy = i - r
        dx = int(round(r * np.sqrt((r * r - dy * dy) / (r * r)))) if abs(dy) <= r else -1
        if dx >= 0:
            element[i, max(r - dx, 0):min(r + dx + 1, size)] = 1.0
    return element


EROSION_ELEMENT = _erosion_element()
_ANCHOR = 4


# ----------------------------------------------------------------------------------------
# Bank extraction (construction time, eager)
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class OccluderBank:
    """Packed RGBA cut-outs. pixels uint8 [T, 4]; offsets int64 [N] (first pixel row of each
    cut-out); sizes int32 [N, 2] (h, w). `tensors` holds the same as eager tf constants."""
    pixels: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray

    def __post_init__(self):
        if len(self.sizes) == 0:
            raise ValueError('an occluder bank needs at least one occluder')
        self.tensors = dict(pixels=tf.constant(self.pixels), offsets=tf.constant(self.offsets),
                            sizes=tf.constant(self.sizes))

    @property
    def count(self):
        return len(self.sizes)

    @property
    def nbytes(self):
        return self.pixels.nbytes + self.offsets.nbytes + self.sizes.nbytes

    def occluder(self, index):
        """uint8 [h, w, 4] cut-out `index` (NumPy)."""
        h, w = self.sizes[index]
        start = self.offsets[index]
        return self.pixels[start:start + h * w].reshape(h, w, 4)


def _text(element, tag, default=None):
    found = element.find(tag)
    return default if found is None or found.text is None else found.text.strip()


def parse_annotation(path):
    """(image file name, segmented, [(object index, name, difficult, truncated, box)]) of one VOC
    XML file; box = (xmin, ymin, xmax, ymax) in VOC's 1-based inclusive pixel coordinates."""
    try:
        root = xml.etree.ElementTree.parse(path).getroot()
    except xml.etree.ElementTree.ParseError as e:
        raise ValueError(f'{path}: malformed XML annotation ({e})') from None
    filename = _text(root, 'filename')
    if not filename:
        raise ValueError(f'{path}: field "filename" is missing')
    segmented = _text(root, 'segmented', '0') != '0'
    objects = []
    for i, obj in enumerate(root.findall('object')):
        box = obj.find('bndbox')
        try:
            coords = tuple(int(round(float(_text(box, k))))
                           for k in ('xmin', 'ymin', 'xmax', 'ymax'))
        except (TypeError, ValueError, AttributeError):
            raise ValueError(f'{path}: field "object[{i}].bndbox" is missing or malformed') \
                from None
        objects.append((i, _text(obj, 'name', ''), _text(obj, 'difficult', '0') != '0',
                        _text(obj, 'truncated', '0') != '0', coords))
    return filename, segmented, objects


def eligible_objects(objects):
    """The objects kept by the filters: not a person, not difficult, not truncated."""
    return [o for o in objects if o[1] != 'person' and not o[2] and not o[3]]


def png_palette(data):
    """uint8 [n, 3] palette (PLTE chunk) of a colour-type-3 PNG, or None for other PNGs.

    tf.io.decode_png expands palette images to RGB, so the label indices of a VOC
    segmentation PNG are recovered by matching colours against this palette."""
    if data[:8] != b'\x89PNG\r\n\x1a\n':
        raise ValueError('not a PNG file')
    pos, color_type = 8, None
    while pos + 8 <= len(data):
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b'IHDR':
            color_type = body[9]
        elif kind == b'PLTE':
            return (np.frombuffer(body, np.uint8).reshape(-1, 3) if color_type == 3 else None)
        elif kind in (b'IDAT', b'IEND'):
            break
        pos += 12 + length
    return None


def label_mask(png_bytes, label, palette=None):
    """bool [H, W] of the pixels with label index `label` in a segmentation PNG (palette or
    8-bit grey)."""
    if palette is None:
        palette = png_palette(png_bytes)
    if palette is None:
        labels = tf.io.decode_png(png_bytes, channels=1)[..., 0]
        return labels == label
    if label >= len(palette):
        return tf.zeros(tf.shape(tf.io.decode_png(png_bytes, channels=1))[:2], tf.bool)
    rgb = tf.io.decode_png(png_bytes, channels=3)
    return tf.reduce_all(rgb == tf.constant(palette[label]), axis=-1)


def erode(mask):
    """Binary erosion of bool [h, w] by EROSION_ELEMENT; outside the array counts as foreground
    (so the crop border does not erode, like OpenCV's default border)."""
    m = tf.cast(mask, tf.float32)[tf.newaxis, :, :, tf.newaxis]
    size = EROSION_ELEMENT.shape[0]
    m = tf.pad(m, [[0, 0], [_ANCHOR, size - 1 - _ANCHOR], [_ANCHOR, size - 1 - _ANCHOR], [0, 0]],
               constant_values=1.0)
    hits = tf.nn.conv2d(m, EROSION_ELEMENT[:, :, None, None], strides=1, padding='VALID')
    return hits[0, :, :, 0] > float(EROSION_ELEMENT.sum()) - 0.5


def cut_out(image, mask):
    """uint8 RGBA [h', w', 4] cut-out at DOWNSCALE of an image crop uint8 [h, w, 3] and its
    object mask bool [h, w] (alpha 255 inside, RIM_ALPHA on the eroded-away rim)."""
    eroded = erode(mask)
    alpha = tf.where(eroded, 255, tf.where(mask, RIM_ALPHA, 0))
    rgba = tf.concat([tf.cast(image, tf.float32), tf.cast(alpha, tf.float32)[..., None]], -1)
    h, w = int(mask.shape[0]), int(mask.shape[1])
    new_size = [max(1, int(round(h * DOWNSCALE))), max(1, int(round(w * DOWNSCALE)))]
    small = tf.image.resize(rgba, new_size, method='area')
    return tf.cast(tf.clip_by_value(tf.round(small), 0, 255), tf.uint8).numpy()


def _check_voc_root(voc_root):
    for sub in ('Annotations', 'JPEGImages', 'SegmentationObject'):
        if not os.path.isdir(os.path.join(voc_root, sub)):
            raise ValueError(f'--occluder_dir={voc_root!r}: folder {sub}/ not found (expected the '
                             f'Pascal VOC 2012 root with Annotations/, JPEGImages/, '
                             f'SegmentationObject/)')


def extract_occluders(voc_root, max_occluders=DEFAULT_MAX_OCCLUDERS, seed=0):
    """List of uint8 RGBA cut-outs from the VOC root (see the module docstring)."""
    voc_root = os.fspath(voc_root)
    _check_voc_root(voc_root)
    if int(max_occluders) < 1:
        raise ValueError(f'--max_occluders must be >= 1, got {max_occluders!r}')
    candidates = []
    for path in sorted(glob.glob(os.path.join(voc_root, 'Annotations', '*.xml'))):
        filename, segmented, objects = parse_annotation(path)
        kept = eligible_objects(objects)
        if segmented and kept:
            candidates.append((path, filename, kept))
    order = np.random.default_rng([int(seed), 0x0CC1]).permutation(len(candidates))
    result = []
    for c in order:
        path, filename, kept = candidates[c]
        stem = os.path.splitext(filename)[0]
        image_path = os.path.join(voc_root, 'JPEGImages', filename)
        seg_path = os.path.join(voc_root, 'SegmentationObject', stem + '.png')
        for p in (image_path, seg_path):
            if not os.path.isfile(p):
                raise ValueError(f'{path}: segmented image {filename!r} lacks the file {p}')
        image = tf.io.decode_jpeg(tf.io.read_file(image_path), channels=3)
        png = tf.io.read_file(seg_path).numpy()
        palette = png_palette(png)
        height, width = int(image.shape[0]), int(image.shape[1])
        for index, _, _, _, (x0, y0, x1, y1) in kept:
            # VOC boxes are 1-based and inclusive.
            r0, r1 = max(y0 - 1, 0), min(y1, height)
            c0, c1 = max(x0 - 1, 0), min(x1, width)
            if r1 <= r0 or c1 <= c0:
                continue
            mask = label_mask(png, index + 1, palette)
            if tuple(mask.shape) != (height, width):
                raise ValueError(f'{seg_path}: size {tuple(mask.shape)} differs from the image '
                                 f'{(height, width)}')
            mask = mask[r0:r1, c0:c1]
            if int(tf.reduce_sum(tf.cast(mask, tf.int32))) < MIN_MASK_PIXELS:
                continue
            result.append(cut_out(image[r0:r1, c0:c1], mask))
            if len(result) >= max_occluders:
                return result
    return result


def pack(cutouts):
    """OccluderBank of a list of uint8 [h, w, 4] cut-outs."""
    sizes = np.array([c.shape[:2] for c in cutouts], np.int32).reshape(-1, 2)
    counts = sizes[:, 0].astype(np.int64) * sizes[:, 1]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    pixels = (np.concatenate([c.reshape(-1, 4) for c in cutouts]) if cutouts
              else np.zeros((0, 4), np.uint8))
    return OccluderBank(pixels=pixels.astype(np.uint8), offsets=offsets, sizes=sizes)


@functools.lru_cache(maxsize=4)
def build_occluder_bank(voc_root, max_occluders=DEFAULT_MAX_OCCLUDERS, seed=0):
    """OccluderBank from a Pascal VOC 2012 root (cached per arguments). Raises ValueError if the
    folder layout is wrong or no object passes the filters."""
    cutouts = extract_occluders(voc_root, max_occluders, seed)
    if not cutouts:
        raise ValueError(f'--occluder_dir={voc_root!r}: no segmented non-person, non-difficult, '
                         f'non-truncated object with >= {MIN_MASK_PIXELS} mask pixels found')
    return pack(cutouts)


# ----------------------------------------------------------------------------------------
# In-graph pasting
# ----------------------------------------------------------------------------------------

def _fold(key, value):
    return tf.random.experimental.stateless_fold_in(
        tf.cast(key, tf.int64), tf.cast(value, tf.int64), alg='philox')


def _uniform(key, shape):
    return tf.random.stateless_uniform(shape, seed=key, alg='philox')


def sample_draws(key, num_bank, side, scale_factor=1.0):
    """Random draws of one image's occlusion: count int32 (1..MAX_PER_IMAGE), index int32 [M],
    scale float32 [M] (resize factor of each cut-out), centre float32 [M, 2] (x, y in [0, S));
    M = MAX_PER_IMAGE, only the first `count` are used."""
    u = _uniform(_fold(key, 0), [MAX_PER_IMAGE, 4])
    count = tf.minimum(1 + tf.cast(tf.floor(_uniform(_fold(key, 1), []) * MAX_PER_IMAGE),
                                   tf.int32), MAX_PER_IMAGE)
    index = tf.minimum(tf.cast(tf.floor(u[:, 0] * tf.cast(num_bank, tf.float32)), tf.int32),
                       tf.cast(num_bank, tf.int32) - 1)
    scale = ((SCALE_RANGE[0] + u[:, 1] * (SCALE_RANGE[1] - SCALE_RANGE[0]))
             * (float(side) / 256.0) * float(scale_factor))
    centre = u[:, 2:4] * float(side)
    return dict(count=count, index=index, scale=scale, centre=centre)


def scaled_occluder(bank_tensors, index, scale):
    """float32 RGBA [h', w', 4] (0-255) of cut-out `index` resized by `scale` (area averaging
    when shrinking, bilinear otherwise; size = max(1, round(size x scale)))."""
    size = bank_tensors['sizes'][index]
    start = bank_tensors['offsets'][index]
    count = tf.cast(size[0], tf.int64) * tf.cast(size[1], tf.int64)
    occluder = tf.reshape(bank_tensors['pixels'][start:start + count], [size[0], size[1], 4])
    occluder = tf.cast(occluder, tf.float32)
    new_size = tf.maximum(1, tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32))
    return tf.cond(scale < 1.0,
                   lambda: tf.image.resize(occluder, new_size, method='area'),
                   lambda: tf.image.resize(occluder, new_size, method='bilinear'))


def paste(image, rgba, centre):
    """Alpha-blends float RGBA [h, w, 4] (0-255) over image [S, S, 3] (float32 in [0, 1]) with
    its centre at pixel round(centre) (x, y); parts outside the image are dropped."""
    side_h, side_w = tf.shape(image)[0], tf.shape(image)[1]
    size = tf.shape(rgba)[:2]
    c = tf.cast(tf.round(centre), tf.int32)
    start = tf.stack([c[1], c[0]]) - size // 2  # (row, col) of the top-left corner
    limit = tf.stack([side_h, side_w])
    lo = tf.clip_by_value(start, 0, limit)
    hi = tf.clip_by_value(start + size, 0, limit)
    extent = tf.maximum(hi - lo, 0)
    part = tf.slice(rgba, tf.concat([lo - start, [0]], 0), tf.concat([extent, [4]], 0))
    placed = tf.pad(part, [[lo[0], limit[0] - lo[0] - extent[0]],
                           [lo[1], limit[1] - lo[1] - extent[1]], [0, 0]])
    alpha = placed[..., 3:] / 255.0
    out = alpha * (placed[..., :3] / 255.0) + (1.0 - alpha) * image
    return tf.ensure_shape(out, image.shape)


# Plain TF ops (no Python control flow on tensors): autograph conversion would only slow tracing.
@tf.autograph.experimental.do_not_convert
def paste_occluders(image, bank_tensors, key, scale_factor=1.0):
    """Pastes 1-6 random occluders of the bank onto image [S, S, 3] (float32, [0, 1]).

    bank_tensors: OccluderBank.tensors; key: stateless RNG key [2]; scale_factor:
    --occlude_aug_scale. Same key, same result."""
    image = tf.convert_to_tensor(image, tf.float32)
    side = int(image.shape[0])
    draws = sample_draws(key, tf.shape(bank_tensors['sizes'])[0], side, scale_factor)

    def body(i, x):
        rgba = scaled_occluder(bank_tensors, draws['index'][i], draws['scale'][i])
        return i + 1, paste(x, rgba, draws['centre'][i])

    return tf.while_loop(lambda i, x: i < draws['count'], body, (tf.constant(0), image))[1]
