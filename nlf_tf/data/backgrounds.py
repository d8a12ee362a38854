"""Background replacement (spec datasets.md §9.1): a bank of INRIA Holidays images, an in-graph
COCO-RLE decoder and the in-graph blend behind the person.

Bank (construction time): the images of `<background_dir>/jpg_small/` (or of `background_dir`
itself if it has no jpg_small/ folder) listed in `<background_dir>/non_person_images.txt` if
that file exists, else all *.jpg / *.jpeg files, sorted; at most `max_backgrounds` of them (a
seeded random subset if there are more). Each is kept as JPEG bytes (decoded in graph only when
used): unchanged if its shorter side is at most `ceil(1.5 S)` (the most a crop ever samples:
zoom <= 1.5 x the cover factor), else downscaled (area) to that shorter side and re-encoded at
quality 95. Memory: the JPEG bytes, e.g. ~30-80 KB per image at S = 256 (<= ~80 MB for the
default 1000 images); serialised into the dataset graph only when tf.data serialises it.

Blend (in graph, per param/kp3d example with a valid mask of the stored image's size): with
probability 0.2 for datasets whose spec has "realistic_background": true, else
--background_aug_prob, the person's RLE mask (stored-image frame) is decoded, warped into the
crop by the image's homography (bilinear: soft edges; 0 outside the stored image), a random
bank image is zoomed by U(1.2, 1.5) x max(S / h, S / w), centred on the crop, shifted by a
unit-disc sample x 0.1 S, and the crop becomes mask x crop + (1 - mask) x background.
"""

import dataclasses
import functools
import glob
import math
import os

import numpy as np
import tensorflow as tf

DEFAULT_MAX_BACKGROUNDS = 1000
REALISTIC_BACKGROUND_PROB = 0.2
ZOOM_RANGE = (1.2, 1.5)
SHIFT_FRACTION = 0.1
REENCODE_QUALITY = 95
LIST_FILE = 'non_person_images.txt'
IMAGE_SUBDIR = 'jpg_small'


# ----------------------------------------------------------------------------------------
# COCO RLE, in graph
# ----------------------------------------------------------------------------------------

def rle_string_to_counts(counts_string):
    """(run lengths int64 [n], ok bool) from a COCO compressed RLE string (scalar tf.string).

    Vectorised: character k carries the 5-bit group g_k = byte - 48 (bit 0x20: more groups
    follow); a number is the little-endian sum of its groups' low 5 bits, sign-extended when its
    last group has bit 0x10; from the 4th number on each is a delta to the number two places
    earlier (so the even- and odd-indexed chains are cumulative sums). ok is False for
    characters outside '0'..'o', a string ending inside a number or a number of > 12 groups."""
    chars = tf.cast(tf.io.decode_raw(counts_string, tf.uint8), tf.int64)
    groups = chars - 48
    length = tf.size(groups, out_type=tf.int64)
    ends = tf.bitwise.bitwise_and(groups, 0x20) == 0
    ends_int = tf.cast(ends, tf.int64)
    n = tf.reduce_sum(ends_int)
    number_id = tf.cumsum(ends_int, exclusive=True)  # in [0, n]; n = unfinished tail
    is_start = tf.concat([[True], ends[:-1]], 0)[:length]
    starts = tf.boolean_mask(tf.range(length), is_start)
    position = tf.range(length) - tf.gather(starts, number_id)  # group index within its number
    safe_shift = 5 * tf.minimum(position, 11)
    low = tf.bitwise.bitwise_and(groups, 0x1F)
    contrib = tf.bitwise.left_shift(low, safe_shift)
    negative = ends & (tf.bitwise.bitwise_and(groups, 0x10) != 0)
    contrib -= tf.where(negative, tf.bitwise.left_shift(tf.ones_like(low), safe_shift + 5), 0)
    values = tf.math.unsorted_segment_sum(contrib, number_id, n + 1)[:n]
    ok = tf.reduce_all((groups >= 0) & (groups <= 63)) & tf.reduce_all(position <= 11)
    ok &= tf.logical_or(length == 0, tf.reduce_any(ends[-1:]))

    index = tf.range(n)
    odd = tf.cumsum(values[1::2])
    even = tf.cumsum(values[2::2])
    counts = (tf.scatter_nd(index[:1, None], values[:1], [n])
              + tf.scatter_nd(index[1::2, None], odd, [n])
              + tf.scatter_nd(index[2::2, None], even, [n]))
    return counts, ok


def rle_is_valid(counts_string, height, width):
    """Scalar bool: the string parses, has no negative run and covers exactly height x width."""
    counts, ok = rle_string_to_counts(counts_string)
    total = tf.cast(height, tf.int64) * tf.cast(width, tf.int64)
    return (ok & tf.reduce_all(counts >= 0) & (tf.reduce_sum(counts) == total)
            & (tf.size(counts) > 0))


def decode_rle(counts_string, height, width):
    """uint8 [height, width] 0/1 mask of a COCO compressed RLE string (column-major runs,
    starting with zeros), in graph; raises InvalidArgumentError naming `mask_rle_counts` if the
    string is malformed or does not cover height x width pixels."""
    counts, ok = rle_string_to_counts(counts_string)
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    total = tf.cast(height, tf.int64) * tf.cast(width, tf.int64)
    checks = [
        tf.debugging.Assert(ok, ['mask_rle_counts is not a valid COCO RLE string']),
        tf.debugging.Assert(tf.reduce_all(counts >= 0),
                            ['mask_rle_counts has a negative run length']),
        tf.debugging.Assert(tf.reduce_sum(counts) == total,
                            ['mask_rle_counts does not cover mask_height x mask_width pixels']),
    ]
    with tf.control_dependencies(checks):
        values = tf.cast(tf.range(tf.size(counts)) % 2, tf.uint8)  # odd runs are ones
        flat = tf.repeat(values, tf.maximum(counts, 0))
    return tf.transpose(tf.reshape(flat, tf.stack([width, height])))


# ----------------------------------------------------------------------------------------
# Bank (construction time, eager)
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class BackgroundBank:
    """JPEG-encoded backgrounds: jpegs list of bytes [N], sizes int32 [N, 2] (h, w) of the
    stored (possibly downscaled) images. `tensors` holds them as eager tf constants."""
    jpegs: list
    sizes: np.ndarray

    def __post_init__(self):
        if not self.jpegs:
            raise ValueError('a background bank needs at least one image')
        self.tensors = dict(jpegs=tf.constant(self.jpegs, tf.string),
                            sizes=tf.constant(self.sizes, tf.int32))

    @property
    def count(self):
        return len(self.jpegs)

    @property
    def nbytes(self):
        return sum(len(j) for j in self.jpegs) + self.sizes.nbytes


def background_paths(background_dir):
    """Sorted image paths of the bank (see the module docstring)."""
    background_dir = os.fspath(background_dir)
    if not os.path.isdir(background_dir):
        raise ValueError(f'--background_dir={background_dir!r} is not a folder')
    image_dir = os.path.join(background_dir, IMAGE_SUBDIR)
    if not os.path.isdir(image_dir):
        image_dir = background_dir
    list_path = os.path.join(background_dir, LIST_FILE)
    if os.path.isfile(list_path):
        with open(list_path, encoding='utf-8') as f:
            names = [line.strip() for line in f if line.strip()]
        paths = []
        for line_number, name in enumerate(names, 1):
            path = os.path.join(image_dir, name)
            if not os.path.isfile(path):
                raise ValueError(f'{list_path}, line {line_number}: image {name!r} not found '
                                 f'in {image_dir}')
            paths.append(path)
    else:
        paths = [p for p in glob.glob(os.path.join(image_dir, '*'))
                 if p.lower().endswith(('.jpg', '.jpeg'))]
    if not paths:
        raise ValueError(f'--background_dir={background_dir!r}: no background images found '
                         f'(expected {IMAGE_SUBDIR}/*.jpg, optionally listed in {LIST_FILE})')
    return sorted(paths)


def stored_short_side(proc_side):
    return int(math.ceil(ZOOM_RANGE[1] * int(proc_side)))


def prepare_background(data, proc_side):
    """(JPEG bytes, (h, w)) of one background file's bytes, downscaled if larger than needed."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    h, w = int(image.shape[0]), int(image.shape[1])
    cap = stored_short_side(proc_side)
    is_jpeg = data[:2] == b'\xff\xd8'
    if min(h, w) <= cap and is_jpeg:
        return data, (h, w)
    if min(h, w) > cap:
        factor = cap / min(h, w)
        h, w = max(1, int(round(h * factor))), max(1, int(round(w * factor)))
        image = tf.cast(tf.clip_by_value(tf.round(
            tf.image.resize(image, [h, w], method='area')), 0, 255), tf.uint8)
    return tf.io.encode_jpeg(image, quality=REENCODE_QUALITY).numpy(), (h, w)


@functools.lru_cache(maxsize=4)
def build_background_bank(background_dir, proc_side, max_backgrounds=DEFAULT_MAX_BACKGROUNDS,
                          seed=0):
    """BackgroundBank of the folder for crops of side `proc_side` (cached per arguments)."""
    if int(max_backgrounds) < 1:
        raise ValueError(f'max_backgrounds must be >= 1, got {max_backgrounds!r}')
    paths = background_paths(background_dir)
    if len(paths) > max_backgrounds:
        chosen = np.random.default_rng([int(seed), 0xB6]).choice(
            len(paths), int(max_backgrounds), replace=False)
        paths = [paths[i] for i in sorted(chosen)]
    jpegs, sizes = [], []
    for path in paths:
        with open(path, 'rb') as f:
            data = f.read()
        try:
            jpeg, size = prepare_background(data, proc_side)
        except tf.errors.InvalidArgumentError:
            raise ValueError(f'{path}: not a decodable image') from None
        jpegs.append(jpeg)
        sizes.append(size)
    return BackgroundBank(jpegs=jpegs, sizes=np.array(sizes, np.int32).reshape(-1, 2))


# ----------------------------------------------------------------------------------------
# In graph
# ----------------------------------------------------------------------------------------

def _fold(key, value):
    return tf.random.experimental.stateless_fold_in(
        tf.cast(key, tf.int64), tf.cast(value, tf.int64), alg='philox')


def background_probability(realistic, default_prob):
    """Scalar float32: REALISTIC_BACKGROUND_PROB if `realistic` (bool tensor) else default."""
    return tf.where(tf.cast(realistic, tf.bool), REALISTIC_BACKGROUND_PROB, float(default_prob))


def sample_draws(key, num_bank):
    """Draws of one replacement: u (the apply draw, compare to the probability), index int32,
    zoom float32 in [1.2, 1.5), shift float32 [2] (unit-disc sample, times 0.1 S later)."""
    u = tf.random.stateless_uniform([5], seed=_fold(key, 0), alg='philox')
    index = tf.minimum(tf.cast(tf.floor(u[1] * tf.cast(num_bank, tf.float32)), tf.int32),
                       tf.cast(num_bank, tf.int32) - 1)
    radius = tf.sqrt(u[3])
    angle = 2.0 * math.pi * u[4]
    return dict(u=u[0], index=index, zoom=ZOOM_RANGE[0] + u[2] * (ZOOM_RANGE[1] - ZOOM_RANGE[0]),
                shift=tf.stack([radius * tf.cos(angle), radius * tf.sin(angle)]))


def _projective(image, transform, side, fill_mode, fill_value=0.0):
    """ImageProjectiveTransformV3 of one float image; transform maps OUTPUT to INPUT pixels."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=transform[tf.newaxis],
        output_shape=tf.constant([side, side], tf.int32),
        fill_value=tf.constant(fill_value, tf.float32), interpolation='BILINEAR',
        fill_mode=fill_mode)[0]


def warp_mask(mask, h_src_to_dst, side):
    """float32 [S, S, 1] in [0, 1]: mask [H, W] (0/1) resampled bilinearly through the
    homography (stored -> crop pixels); 0 outside the stored image."""
    h_inv = tf.linalg.inv(tf.cast(h_src_to_dst, tf.float32))
    h_inv = h_inv / h_inv[2, 2]
    out = _projective(tf.cast(mask, tf.float32)[..., tf.newaxis], tf.reshape(h_inv, [9])[:8],
                      side, 'CONSTANT')
    return tf.ensure_shape(out, [side, side, 1])


def render_background(bank_tensors, index, zoom, shift, side):
    """float32 [S, S, 3] in [0, 1]: bank image `index` zoomed by zoom x max(S/h, S/w) about its
    centre, centred on the crop and shifted by shift x 0.1 S pixels (x, y)."""
    image = tf.io.decode_jpeg(bank_tensors['jpegs'][index], channels=3)
    image = tf.cast(image, tf.float32) / 255.0
    size = tf.cast(tf.shape(image)[:2], tf.float32)  # h, w
    factor = zoom * float(side) / tf.reduce_min(size)
    centre_crop = (side - 1) / 2.0 + shift * (SHIFT_FRACTION * side)  # x, y
    centre_bg = (size[::-1] - 1.0) / 2.0  # x, y
    # crop pixel p = factor (q - centre_bg) + centre_crop  =>  q = p / factor + offset
    offset = centre_bg - centre_crop / factor
    inv = 1.0 / factor
    transform = tf.stack([inv, 0.0, offset[0], 0.0, inv, offset[1], 0.0, 0.0])
    out = _projective(image, transform, side, 'NEAREST')
    return tf.ensure_shape(out, [side, side, 3])


def blend(image, mask, background):
    """mask x image + (1 - mask) x background (mask [S, S, 1] in [0, 1])."""
    return mask * image + (1.0 - mask) * background


# Plain TF ops (no Python control flow on tensors): autograph conversion would only slow tracing.
@tf.autograph.experimental.do_not_convert
def replace_background(image, mask_counts, mask_size, stored_size, h_stored_to_crop,
                       bank_tensors, key, prob):
    """Background replacement of one crop (see the module docstring), in graph.

    image [S, S, 3] float32 in [0, 1]; mask_counts scalar tf.string (COCO compressed RLE of the
    person in the stored image, may be empty); mask_size / stored_size [2] (h, w) of the mask and
    the stored image; h_stored_to_crop the 3x3 homography of the image warp; bank_tensors:
    BackgroundBank.tensors; key: stateless RNG key [2]; prob: scalar probability. Examples
    without a usable mask (empty, malformed, or of another size than the stored image) are
    returned unchanged."""
    image = tf.convert_to_tensor(image, tf.float32)
    side = int(image.shape[0])
    draws = sample_draws(key, tf.shape(bank_tensors['jpegs'])[0])
    mask_size = tf.cast(mask_size, tf.int32)
    usable = tf.reduce_all(mask_size == tf.cast(stored_size, tf.int32)) & (
        tf.strings.length(mask_counts) > 0)
    usable = tf.logical_and(usable, tf.cond(
        usable, lambda: rle_is_valid(mask_counts, mask_size[0], mask_size[1]),
        lambda: tf.constant(False)))
    apply = usable & (draws['u'] < prob)

    def replaced():
        mask = warp_mask(decode_rle(mask_counts, mask_size[0], mask_size[1]),
                         h_stored_to_crop, side)
        background = render_background(bank_tensors, draws['index'], draws['zoom'],
                                       draws['shift'], side)
        return blend(image, mask, background)

    out = tf.cond(apply, replaced, lambda: image)
    return tf.ensure_shape(out, image.shape)
