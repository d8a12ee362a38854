"""In-graph training augmentation: the crop camera (geometry), image warping and appearance.

Everything here is made of TensorFlow ops only (usable inside `tf.data.Dataset.map`), works on
ONE example and draws its randomness from stateless RNG keys (shape [2] int64), so an example's
augmentation depends only on its key.

Cameras are (K [3, 3], R [3, 3]) pairs: K the intrinsics (pixel centres at integer coordinates),
R the world->camera rotation. The crop camera always shares the optical centre of the stored
camera, so stored pixels map to crop pixels by the homography K_c R_c R_s^T K_s^-1 (the stored
images have no lens distortion).

Geometry (NLF `look_at_box` and the loaders, spec datasets.md §7.1):
- with a 3D camera: optional partial-visibility sub-box, box-centre shift, turn towards the box
  centre (upright w.r.t. world_up, zero roll), square pixels, zoom so that the box's long side
  spans S pixels, principal point at ((S - 1) / 2, (S - 1) / 2); then zoom and roll
  augmentation and the optional horizontal flip (camera R row 0 negated).
- without (2D datasets; the stored camera is the near-orthographic from_fov(8 deg) one): box-centre
  shift, zoom by S / max(box w, h), zoom and roll augmentation, flip, and finally the principal
  point is moved so that the (shifted) box centre lands at the crop centre.
"""

import dataclasses
import math

import tensorflow as tf

from nlf_tf.data import occluders

# Augmentation settings with the original NLF flag names and defaults. A config object (EasyDict)
# that lacks one of them falls back to this default.
DEFAULTS = dict(
    geom_aug=True,
    hflip_aug=True,
    color_aug=True,
    rot_aug=20.0,
    full_rot_aug_prob=0.1,
    scale_aug_up=25.0,
    scale_aug_down=25.0,
    shift_aug=10.0,
    partial_visibility_prob=0.15,
    jpeg_aug_prob=0.25,
    occlude_aug_prob=0.5,
    occlude_aug_scale=1.0,
    background_aug_prob=0.7,
    border_value=0.0,
    occluder_dir=None,
    background_dir=None,
)

# Colour augmentation ranges of NLF (nlf/common/augmentation/color.py).
BRIGHTNESS_DELTA = 0.125
CONTRAST_RANGE = (0.5, 1.5)
HUE_DELTA_DEG = 72.0
SATURATION_RANGE = (0.5, 1.5)
JPEG_QUALITY_RANGE = (15, 59)  # inclusive
# Random erasing: area fraction and aspect ratio ranges, and the number of candidate rectangles
# drawn at once (the first one that fits is used; NLF re-draws until one fits).
ERASE_AREA_RANGE = (0.0, 1.0 / 3.0)
ERASE_ASPECT_RANGE = (0.3, 1.0 / 0.3)
ERASE_CANDIDATES = 16

# Number of uniform draws used by sample_geometry (fixed so keys stay stable).
_NUM_GEOMETRY_DRAWS = 12


@dataclasses.dataclass(frozen=True)
class AugmentationSettings:
    geom_aug: bool
    hflip_aug: bool
    color_aug: bool
    rot_aug: float
    full_rot_aug_prob: float
    scale_aug_up: float
    scale_aug_down: float
    shift_aug: float
    partial_visibility_prob: float
    jpeg_aug_prob: float
    occlude_aug_prob: float
    occlude_aug_scale: float
    background_aug_prob: float
    border_value: float
    occluder_dir: str = None
    background_dir: str = None


def settings_from_config(cfg):
    """AugmentationSettings from a config mapping (missing names take DEFAULTS); checks ranges."""
    values = {}
    for name, default in DEFAULTS.items():
        value = cfg.get(name, default) if hasattr(cfg, 'get') else getattr(cfg, name, default)
        values[name] = default if value is None and default is not None else value
    for name in ('full_rot_aug_prob', 'partial_visibility_prob', 'jpeg_aug_prob',
                 'occlude_aug_prob', 'background_aug_prob'):
        if not 0.0 <= float(values[name]) <= 1.0:
            raise ValueError(f'--{name} must be a probability in [0, 1], got {values[name]!r}')
    for name in ('rot_aug', 'scale_aug_up', 'shift_aug', 'occlude_aug_scale'):
        if float(values[name]) < 0:
            raise ValueError(f'--{name} must be >= 0, got {values[name]!r}')
    if not 0 <= float(values['scale_aug_down']) < 100:
        raise ValueError(f'--scale_aug_down must be in [0, 100) percent, got '
                         f'{values["scale_aug_down"]!r}')
    if not 0 <= float(values['border_value']) <= 255:
        raise ValueError(f'--border_value must be in [0, 255], got {values["border_value"]!r}')
    for name in ('geom_aug', 'hflip_aug', 'color_aug'):
        values[name] = bool(values[name])
    for name in ('rot_aug', 'full_rot_aug_prob', 'scale_aug_up', 'scale_aug_down', 'shift_aug',
                 'partial_visibility_prob', 'jpeg_aug_prob', 'occlude_aug_prob',
                 'occlude_aug_scale', 'background_aug_prob', 'border_value'):
        values[name] = float(values[name])
    return AugmentationSettings(**values)


# ----------------------------------------------------------------------------------------
# Random keys
# ----------------------------------------------------------------------------------------

def fold_key(key, *data):
    """A new stateless key from `key` and integers `data` (Philox, device independent)."""
    key = tf.cast(key, tf.int64)
    for d in data:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(d, tf.int64), alg='philox')
    return key


def _uniform(key, shape=(), minval=0.0, maxval=1.0):
    return tf.random.stateless_uniform(shape, seed=key, minval=minval, maxval=maxval,
                                       alg='philox')


# ----------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------

def identity_geometry():
    """Geometry draws that change nothing (no partial box, shift, zoom, roll or flip)."""
    return dict(partial=tf.constant(False), partial_box=tf.constant([0.0, 0.0, 1.0]),
                shift=tf.zeros([2]), zoom=tf.constant(1.0), roll=tf.constant(0.0),
                flip=tf.constant(False))


def sample_geometry(key, settings, allow_partial):
    """Random geometry draws of one example (see identity_geometry for the keys).

    partial_box = (side fraction in [0.5, 1), x and y position fractions in [0, 1)) of the
    partial-visibility sub-square; shift = unit-disc sample times shift_aug / 100 (multiplied by
    the box's long side later); zoom in [1 - down/100, 1 + up/100]; roll in radians.
    `allow_partial` (Python or scalar tensor bool) enables the partial-visibility crop.
    """
    u = _uniform(key, [_NUM_GEOMETRY_DRAWS])
    s = settings
    if not s.geom_aug:
        geometry = identity_geometry()
    else:
        partial = tf.logical_and(tf.cast(allow_partial, tf.bool),
                                 u[0] < s.partial_visibility_prob)
        radius = tf.sqrt(u[4]) * (s.shift_aug / 100.0)
        angle = 2.0 * math.pi * u[5]
        zoom = (1.0 - s.scale_aug_down / 100.0) + u[6] * (s.scale_aug_up + s.scale_aug_down) / 100.0
        max_roll = tf.where(u[7] < s.full_rot_aug_prob, 180.0, s.rot_aug) * (math.pi / 180.0)
        geometry = dict(
            partial=partial, partial_box=tf.stack([0.5 + 0.5 * u[1], u[2], u[3]]),
            shift=tf.stack([radius * tf.cos(angle), radius * tf.sin(angle)]),
            zoom=zoom, roll=(2.0 * u[8] - 1.0) * max_roll, flip=tf.constant(False))
    if s.hflip_aug:
        geometry['flip'] = u[9] < 0.5
    return geometry


def homography(k_from, r_from, k_to, r_to):
    """3x3 map of pixels of camera (k_from, r_from) to pixels of (k_to, r_to), same centre."""
    return k_to @ r_to @ tf.transpose(r_from) @ tf.linalg.inv(k_from)


def apply_homography(h, points):
    """[N, 2] points through the 3x3 homography h (NaN stays NaN)."""
    points = tf.convert_to_tensor(points, tf.float32)
    hom = tf.concat([points, tf.ones_like(points[:, :1])], axis=1) @ tf.transpose(h)
    return hom[:, :2] / hom[:, 2:]


def _normalize(v):
    return v / tf.norm(v)


def partial_box(box, fractions):
    """Sub-square of `box` [x, y, w, h] expanded to a square about its centre: side = fractions[0]
    times the square side, top-left at fractions[1:] times the remaining room."""
    side = tf.maximum(box[2], box[3])
    corner = box[:2] + 0.5 * (box[2:] - side)
    sub_side = fractions[0] * side
    sub_corner = corner + fractions[1:] * (side - sub_side)
    return tf.concat([sub_corner, tf.stack([sub_side, sub_side])], axis=0)


def _roll_matrix(angle):
    c, s = tf.cos(angle), tf.sin(angle)
    zero, one = tf.zeros_like(c), tf.ones_like(c)
    return tf.reshape(tf.stack([c, -s, zero, s, c, zero, zero, zero, one]), [3, 3])


def _with_principal_point(k, point):
    return tf.tensor_scatter_nd_update(k, [[0, 2], [1, 2]], point)


def _zoom(k, factor):
    return tf.concat([k[:2] * tf.stack([factor, factor, 1.0])[tf.newaxis], k[2:]], axis=0)


def crop_camera(intrinsics, rotation, world_up, box, has_camera, proc_side, geometry):
    """The crop camera (K_c [3, 3], R_c [3, 3]) of one example.

    intrinsics / rotation: the stored camera; world_up [3]; box [4] x, y, w, h stored pixels;
    has_camera: scalar bool (True: 3D path with look-at, False: 2D path); geometry: draws from
    sample_geometry (or identity_geometry). All float32.
    """
    k_s = tf.convert_to_tensor(intrinsics, tf.float32)
    r_s = tf.convert_to_tensor(rotation, tf.float32)
    up = tf.convert_to_tensor(world_up, tf.float32)
    box = tf.convert_to_tensor(box, tf.float32)
    side = float(proc_side)
    centre_px = tf.fill([2], (side - 1.0) / 2.0)

    def camera_3d():
        b = tf.cond(geometry['partial'], lambda: partial_box(box, geometry['partial_box']),
                    lambda: box)
        centre = b[:2] + 0.5 * b[2:] + geometry['shift'] * tf.maximum(b[2], b[3])
        # Turn towards the centre's viewing ray (world frame), upright w.r.t. world_up.
        ray = tf.linalg.matvec(tf.linalg.inv(k_s), tf.concat([centre, [1.0]], 0))
        new_z = _normalize(tf.linalg.matvec(r_s, ray, transpose_a=True))
        new_x = _normalize(tf.linalg.cross(new_z, up))
        new_y = tf.linalg.cross(new_z, new_x)
        r_t = tf.stack([new_x, new_y, new_z])
        f_mean = 0.5 * (k_s[0, 0] + k_s[1, 1])
        k_t = tf.tensor_scatter_nd_update(k_s, [[0, 0], [1, 1]], tf.stack([f_mean, f_mean]))
        # The midpoints of the two short sides (of the shifted box) span its long side.
        w, h = b[2], b[3]
        x, y = centre[0] - 0.5 * w, centre[1] - 0.5 * h
        ends = tf.cond(
            w > h, lambda: tf.stack([[x, y + h / 2], [x + w, y + h / 2]]),
            lambda: tf.stack([[x + w / 2, y], [x + w / 2, y + h]]))
        ends_t = apply_homography(homography(k_s, r_s, k_t, r_t), ends)
        k_t = _zoom(k_t, side / tf.norm(ends_t[1] - ends_t[0]))
        return _with_principal_point(k_t, centre_px), r_t, centre

    def camera_2d():
        crop_side = tf.maximum(box[2], box[3])
        centre = box[:2] + 0.5 * box[2:] + geometry['shift'] * crop_side
        return _zoom(k_s, side / crop_side), r_s, centre

    k_c, r_c, centre = tf.cond(tf.cast(has_camera, tf.bool), camera_3d, camera_2d)
    k_c = _zoom(k_c, geometry['zoom'])
    r_c = _roll_matrix(geometry['roll']) @ r_c
    r_c = tf.where(geometry['flip'], r_c * tf.constant([[-1.0], [1.0], [1.0]]), r_c)
    # 2D path: move the principal point so that the box centre lands at the crop centre (a no-op
    # up to rounding on the 3D path, where the camera looks at the centre already).
    projected = apply_homography(homography(k_s, r_s, k_c, r_c), centre[tf.newaxis])[0]
    k_c = tf.cond(tf.cast(has_camera, tf.bool), lambda: k_c,
                  lambda: _with_principal_point(k_c, k_c[:2, 2] + centre_px - projected))
    return k_c, r_c


def warp_image(image, h_src_to_dst, proc_side, border_value=0.0):
    """Resamples `image` [H, W, 3] (float32) into the S x S destination frame (bilinear).

    `h_src_to_dst` maps source pixels to destination pixels; outside the source the output is
    `border_value` (given on the 0-255 scale like the original flag, divided by 255 here).
    """
    h_inv = tf.linalg.inv(h_src_to_dst)  # the op maps OUTPUT pixels to INPUT pixels
    h_inv = h_inv / h_inv[2, 2]
    transform = tf.reshape(h_inv, [9])[:8][tf.newaxis]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.convert_to_tensor(image, tf.float32)[tf.newaxis], transforms=transform,
        output_shape=tf.constant([proc_side, proc_side], tf.int32),
        fill_value=tf.constant(float(border_value) / 255.0, tf.float32),
        interpolation='BILINEAR', fill_mode='CONSTANT')[0]
    out.set_shape([proc_side, proc_side, 3])
    return out


# ----------------------------------------------------------------------------------------
# Appearance
# ----------------------------------------------------------------------------------------

def color_augment(image, key):
    """Brightness, contrast (about 0.5), hue and saturation, in a random order; [0, 1] kept."""
    u = _uniform(key, [8])
    brightness = (2.0 * u[0] - 1.0) * BRIGHTNESS_DELTA
    contrast = CONTRAST_RANGE[0] + u[1] * (CONTRAST_RANGE[1] - CONTRAST_RANGE[0])
    hue = (2.0 * u[2] - 1.0) * (HUE_DELTA_DEG / 360.0)  # adjust_hue wraps around the circle
    saturation = SATURATION_RANGE[0] + u[3] * (SATURATION_RANGE[1] - SATURATION_RANGE[0])
    ops = [
        lambda x: x + brightness,
        lambda x: (x - 0.5) * contrast + 0.5,
        lambda x: tf.image.adjust_hue(x, hue),
        lambda x: tf.image.adjust_saturation(x, saturation),  # clips saturation at 1
    ]
    order = tf.argsort(u[4:8])

    def body(i, x):
        # Clipping after each op keeps the HSV conversions in their valid range.
        x = tf.clip_by_value(tf.switch_case(order[i], [lambda f=f: f(x) for f in ops]), 0.0, 1.0)
        return i + 1, tf.ensure_shape(x, image.shape)

    # A loop (not 4 unrolled switches) keeps the traced graph small.
    return tf.while_loop(lambda i, x: i < 4, body, (tf.constant(0), image))[1]


def jpeg_augment(image, key, prob):
    """With probability `prob`, JPEG re-encoding at a uniform quality in [15, 59]."""
    u = _uniform(fold_key(key, 0))
    shape = image.shape

    def compress():
        out = tf.image.stateless_random_jpeg_quality(
            image, JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1, seed=fold_key(key, 1))
        return tf.reshape(out, tf.shape(image))

    out = tf.cond(u < prob, compress, lambda: image)
    out.set_shape(shape)
    return out


def random_erase(image, key):
    """A rectangle of area U(0, 1/3) * S^2 and aspect U(0.3, 1/0.3), fully inside the image,
    filled with uniform noise (256 levels, like uint8 noise). No-op if no candidate fits."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    fh, fw = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    u = _uniform(fold_key(key, 0), [4, ERASE_CANDIDATES])
    area = (ERASE_AREA_RANGE[0] + u[0] * (ERASE_AREA_RANGE[1] - ERASE_AREA_RANGE[0])) * fh * fw
    aspect = ERASE_ASPECT_RANGE[0] + u[1] * (ERASE_ASPECT_RANGE[1] - ERASE_ASPECT_RANGE[0])
    rect_h = tf.round(tf.sqrt(area * aspect))
    rect_w = tf.round(tf.sqrt(area / aspect))
    fits = tf.logical_and(rect_h <= fh, rect_w <= fw)
    first = tf.argmax(tf.cast(fits, tf.int32))
    ok = tf.reduce_any(fits)
    rh, rw = rect_h[first], rect_w[first]
    y0 = tf.floor(u[2, first] * (fh - rh + 1.0))
    x0 = tf.floor(u[3, first] * (fw - rw + 1.0))
    rows = tf.range(fh)[:, tf.newaxis]
    cols = tf.range(fw)[tf.newaxis, :]
    inside = (rows >= y0) & (rows < y0 + rh) & (cols >= x0) & (cols < x0 + rw) & ok
    noise = tf.floor(_uniform(fold_key(key, 1), tf.shape(image)) * 256.0) / 255.0
    return tf.where(inside[..., tf.newaxis], noise, image)


def appearance_augment(image, key, settings, occluder_bank=None):
    """Occlusion (object occluders or random erasing), colour and JPEG augmentation of an
    S x S x 3 float32 image in [0, 1], in NLF's order. `occluder_bank`: the tensors of an
    nlf_tf.data.occluders.OccluderBank (None: the "objects" draws do nothing)."""
    u = _uniform(fold_key(key, 0), [2])
    # NLF draws the occlusion type first (objects or erase, 50/50), then applies it with prob
    # occlude_aug_prob. Without an occluder bank the objects half does nothing (the pipeline
    # logs this once).
    use_erase = tf.logical_and(u[0] >= 0.5, u[1] < settings.occlude_aug_prob)
    # --- begin: object occluders (nlf_tf.data.occluders), before colour/JPEG ---
    if occluder_bank is not None and settings.occlude_aug_prob > 0:
        use_objects = tf.logical_and(u[0] < 0.5, u[1] < settings.occlude_aug_prob)
        shape = image.shape
        image = tf.cond(use_objects, lambda: occluders.paste_occluders(
            image, occluder_bank, fold_key(key, 4), settings.occlude_aug_scale), lambda: image)
        image.set_shape(shape)
    # --- end: object occluders ---
    if settings.color_aug:
        image = color_augment(image, fold_key(key, 1))
    if settings.jpeg_aug_prob > 0:
        image = jpeg_augment(image, fold_key(key, 2), settings.jpeg_aug_prob)
    if settings.occlude_aug_prob > 0:
        shape = image.shape
        image = tf.cond(use_erase, lambda: random_erase(image, fold_key(key, 3)), lambda: image)
        image.set_shape(shape)
    return tf.clip_by_value(image, 0.0, 1.0)
