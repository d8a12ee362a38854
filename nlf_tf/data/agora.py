"""Reader for AGORA (synthetic renders of scanned people with SMPL-X fits), category 'param'.

Layout under `root_dir` (as PosePile lays out the AGORA download, spec datasets.md §2.1):
    train_0/ ... train_9/<imgPath>             the renders (3840x2160 PNG; the 1280x720 variant
    validation/<imgPath>                       `<stem>_1280x720.png` and smaller images work too)
    Cam/{train,validation}_<i>.pkl             pandas DataFrames, one row per image (read with
                                               pandas, `pip install nlf-tf[agora]`)
    SMPLX/{train,validation}_<i>_withjv.pkl    the same rows plus joints/vertices; used only when
                                               the Cam/ file is missing
    smplx_gt/<subfolder>/<scan>.pkl            per-subject SMPL-X fit in the SCAN frame (plain
                                               pickle of numpy arrays, leading batch dim 1)
    {train,validation}/<scene_prefix>/<base>_<k:05d>.png   masks: k = 0 colour-label image,
                                               k = p + 1 amodal mask of person p
    seg_rgbs.txt                               AirSim palette: row p = label colour of person p

Per image row and person p (PosePile `posepile/ds/agora/main.py`, `extract_masks.py`,
`add_parametric.py`):
- camera per scene family (`get_camera`): fixed poses for hdri / archviz cam00-cam03 / ag2, the
  DataFrame's camX/camY/camZ/camYaw otherwise (with a -1.7 m ground-plane offset); focal
  50/18/28 mm on a 36 mm sensor; K is for 3840 px width and is scaled by (image width / 3840);
- persons with isValid false or occlusion > occlusion_max (75) are skipped;
- modal mask = label pixels within the tolerance (|difference| < 10 per channel, as PosePile) of
  palette row p, intersected with the person's amodal mask; GT box = its bounding box; the
  "all people" mask (every label pixel that is not the pure-red background) is the example mask;
- with detections, GT boxes are matched to detection boxes by Hungarian assignment on IoU; a
  match with IoU >= 0.5 replaces the box; an unmatched person (always the case without
  detections) with occlusion > 50 is skipped; a box with min(w, h) < min_box_side x (image width
  / 3840) is skipped (100 px at 4K);
- the fit is moved from the scan frame into the image's world frame (`adjust_body`: global
  rotation pre-multiplied by Rz(pi) Ry(-(Yaw + 90 deg)), translation corrected for the rotation
  about the rest pelvis and shifted by the person location).

Parameter decisions (spec §2.3): `pose` (165) = global_orient, body_pose, jaw, leye, reye, left
hand + mean, right hand + mean (the hand mean of the chosen gender's SMPL-X file, i.e. the
absolute / flat-hand-mean convention); `shape` = the 10 betas only; `expression` = the 10
expression coefficients, which drive the model's EXPRESSION blend shapes. (NLF appended the
expression values to the betas, which with SMPL-X v1.1 files made them act as shape components
11-20; we keep them where they belong, so `shape` has 10 values.) Kids: the 11th beta is
`kid_factor` (SMIL-X template blend, needs `<body_model_dir>/smplx/smplx_kid_template.npy`, which
AGORA ships), female kids use the neutral model (AGORA's recommendation), male kids the male one.

Skips (counted) name the file and field: missing image / mask / fit file, a fit pickle with
missing or malformed keys, per-person DataFrame lists of unequal length, an unknown gender, a
person whose label colour is not in the palette, the person filters. Structural problems (missing
DataFrames or palette, a DataFrame without a required column, a malformed palette, missing
body-model files or kid template) raise DatasetError.
"""

import glob
import os
import re

import numpy as np

from nlf_tf import safe_pickle, specs
from nlf_tf.data import detections as detections_lib
from nlf_tf.data.coco import box_iou
from nlf_tf.data.example import DatasetError, Example, Skip

DATASET = 'agora'
FAMILY = 'smplx'
REFERENCE_WIDTH = 3840  # K below is for 3840x2160 renders
REFERENCE_HEIGHT = 2160
SENSOR_WIDTH_MM = 36.0
BACKGROUND_RGB = (255, 0, 0)  # label colour of "no person" (BGR (0, 0, 255) in OpenCV terms)
LOW_RES_SUFFIX = '_1280x720'

# Unreal (cm; x forward, y right, z up) -> world (m; x right, y down, z forward).
UNREAL_TO_WORLD = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
OTHER_SCENE_GROUND_OFFSET = (0.0, -1.7, 0.0)  # metres, world frame, added to the camera location

# Scene family -> (focal mm, location cm or None (= from the DataFrame), yaw deg or None, pitch)
SCENE_CAMERAS = {
    'hdri': (50.0, (0.0, 0.0, 170.0), 0.0, 0.0),
    'cam00': (18.0, (400.0, -275.0, 265.0), 135.0, 30.0),
    'cam01': (18.0, (400.0, 225.0, 265.0), -135.0, 30.0),
    'cam02': (18.0, (-490.0, 170.0, 265.0), -45.0, 30.0),
    'cam03': (18.0, (-490.0, -275.0, 265.0), 45.0, 30.0),
    'ag2': (28.0, (0.0, 0.0, 170.0), 0.0, 15.0),
    'other': (28.0, None, None, 0.0),
}

ROW_COLUMNS = ('imgPath', 'camX', 'camY', 'camZ', 'camYaw')
PERSON_COLUMNS = ('X', 'Y', 'Z', 'Yaw', 'gender', 'kid', 'occlusion', 'isValid', 'gt_path_smplx')

# SMPL-X fit pickle keys and their sizes (after dropping the batch dimension).
FIT_POSE_KEYS = (('global_orient', 3), ('body_pose', 63), ('jaw_pose', 3), ('leye_pose', 3),
                 ('reye_pose', 3), ('left_hand_pose', 45), ('right_hand_pose', 45))
FIT_KEYS = tuple(k for k, _ in FIT_POSE_KEYS) + ('betas', 'expression', 'transl')

_SECTIONS = {'train': ('train', 'train_{i}', 'train'),
             'val': ('validation', 'validation', 'validation')}
_MASK_NAME = re.compile(
    r'(?P<name>(?P<scene>.+?)_(\d+mm_)?(5_10|5_15))(?P<cam>(_cam\d+)?)_(?P<num>\d+)$')
_PALETTE_LINE = re.compile(r'\s*(\d+)\s+\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]\s*$')


# --------------------------------------------------------------------------------------------
# Camera and coordinate frames

def scene_family(image_name):
    """'hdri', 'cam00'..'cam03', 'ag2' or 'other' from an AGORA image file name (PosePile's
    substring tests, in its order)."""
    for family in ('hdri', 'cam00', 'cam01', 'cam02', 'cam03', 'ag2'):
        if family in image_name:
            return family
    return 'other'


def unreal_to_world(location_cm):
    """World metres (y down) of an Unreal location in cm (x forward, y right, z up)."""
    return UNREAL_TO_WORLD @ (np.asarray(location_cm, np.float64).reshape(3) / 100.0)


def world_to_unreal(point_m):
    """Inverse of `unreal_to_world`: Unreal cm of a world point in metres."""
    return UNREAL_TO_WORLD.T @ np.asarray(point_m, np.float64).reshape(3) * 100.0


def camera_rotation(yaw_deg, pitch_deg):
    """World->camera rotation Rx(pitch) Ry(-yaw) (transforms3d 'syxz' with (-yaw, pitch, 0))."""
    from nlf_tf.data.camera import _rot_x, _rot_y
    return _rot_x(np.deg2rad(pitch_deg)) @ _rot_y(-np.deg2rad(yaw_deg))


def get_camera(image_name, cam_location_cm=None, cam_yaw_deg=None, image_width=REFERENCE_WIDTH):
    """The `Camera` of an AGORA image (world metres, y down, world_up (0, -1, 0)).

    `cam_location_cm` / `cam_yaw_deg` (the DataFrame's camX/Y/Z and camYaw) are used only for
    scenes without a fixed camera; K (fx = fy = focal / 36 mm x 3840, c = (1920, 1080)) is scaled
    by image_width / 3840 (`Camera.scale_output`).
    """
    from nlf_tf.data.camera import Camera

    family = scene_family(image_name)
    focal_mm, location, yaw, pitch = SCENE_CAMERAS[family]
    ground = np.zeros(3)
    if location is None:
        if cam_location_cm is None or cam_yaw_deg is None:
            raise ValueError(f'{image_name}: scene family {family!r} needs the camera location '
                             f'and yaw from the DataFrame')
        location, yaw = cam_location_cm, cam_yaw_deg
        ground = np.asarray(OTHER_SCENE_GROUND_OFFSET)
    focal = focal_mm / SENSOR_WIDTH_MM * REFERENCE_WIDTH
    intrinsics = np.array([[focal, 0.0, REFERENCE_WIDTH / 2], [0.0, focal, REFERENCE_HEIGHT / 2],
                           [0.0, 0.0, 1.0]])
    camera = Camera(intrinsics, camera_rotation(float(yaw), float(pitch)),
                    unreal_to_world(location) + ground, world_up=(0, -1, 0))
    scale = float(image_width) / REFERENCE_WIDTH
    return camera if scale == 1.0 else camera.scale_output(scale)


def scan_to_world(yaw_deg, location_cm):
    """(M [3, 3], offset [3]): a point of the scan frame maps to M p + offset in the world.

    M = Rz(pi) Ry(-(yaw + 90 deg)) turns SMPL's y-up scan frame into the y-down world and applies
    the person's yaw; offset = the person location (Unreal cm) in world metres.
    """
    from nlf_tf.data.camera import _rot_y, _rot_z
    rot = _rot_z(np.pi) @ _rot_y(-np.deg2rad(float(yaw_deg) + 90.0))
    return rot, unreal_to_world(location_cm)


def adjust_body(pose, trans, rest_pelvis, yaw_deg, location_cm):
    """Moves SMPL-family parameters from the scan frame to the world frame.

    The body model rotates the body by the global orientation R about the rest-pose pelvis p
    (J0 of the shaped template) and then adds `trans`. For the rigid map x -> M x + o, the new
    parameters are R' = M R and trans' = trans + (M - I)(p + trans) + o (equal to PosePile's
    row-vector form since M is a symmetric half turn). Returns (pose float64 copy, trans [3]).
    """
    from scipy.spatial.transform import Rotation

    from nlf_tf.data.camera import rodrigues
    pose = np.array(pose, np.float64).reshape(-1)
    trans = np.asarray(trans, np.float64).reshape(3)
    pelvis = np.asarray(rest_pelvis, np.float64).reshape(3)
    rot, offset = scan_to_world(yaw_deg, location_cm)
    pose[:3] = Rotation.from_matrix(rot @ rodrigues(pose[:3])).as_rotvec()
    new_trans = trans + (rot - np.eye(3)) @ (pelvis + trans) + offset
    return pose, new_trans


# --------------------------------------------------------------------------------------------
# Masks

def load_palette(path):
    """int32 [N, 3] RGB label colours from an AirSim `seg_rgbs.txt` (`<i>\\t[r, g, b]` lines,
    row i = colour of person i). DatasetError naming the file and line if malformed."""
    if not os.path.isfile(path):
        raise DatasetError(path, 'file', 'AGORA label palette (AirSim seg_rgbs.txt) not found')
    colours = []
    with open(path, encoding='utf-8') as f:
        for i_line, line in enumerate(f):
            if not line.strip():
                continue
            m = _PALETTE_LINE.match(line)
            if m is None:
                raise DatasetError(path, f'line {i_line + 1}',
                                   f'expected "<index>\\t[r, g, b]", got {line.strip()!r}')
            index, rgb = int(m[1]), [int(m[k]) for k in (2, 3, 4)]
            if index != len(colours):
                raise DatasetError(path, f'line {i_line + 1}',
                                   f'rows must be numbered 0, 1, 2, ...; expected {len(colours)},'
                                   f' got {index}')
            if max(rgb) > 255:
                raise DatasetError(path, f'line {i_line + 1}', f'colour values must be 0-255, '
                                                               f'got {rgb}')
            colours.append(rgb)
    if not colours:
        raise DatasetError(path, 'file', 'empty palette')
    return np.asarray(colours, np.int32)


def colour_match(label_rgb, colour, tolerance):
    """bool [H, W]: pixels whose every channel differs from `colour` by less than `tolerance`."""
    diff = np.abs(label_rgb.astype(np.int32) - np.asarray(colour, np.int32))
    return np.all(diff < tolerance, axis=-1)


def all_people_mask(label_rgb):
    """bool [H, W]: every label pixel that is not exactly the background colour."""
    return ~np.all(label_rgb == np.asarray(BACKGROUND_RGB, label_rgb.dtype), axis=-1)


def modal_mask(label_rgb, amodal, colour, tolerance):
    """Visible pixels of one person: label colour match intersected with its amodal mask."""
    return colour_match(label_rgb, colour, tolerance) & amodal


def unknown_colours(label_rgb, region, palette, tolerance):
    """(fraction, most frequent colour or None) of the foreground label pixels in `region` whose
    colour matches no palette row."""
    pixels = label_rgb[region & all_people_mask(label_rgb)].astype(np.int32)
    if len(pixels) == 0:
        return 0.0, None
    unique, counts = np.unique(pixels, axis=0, return_counts=True)
    known = np.any(np.all(np.abs(unique[:, None, :] - palette[None]) < tolerance, axis=-1), axis=1)
    if np.all(known):
        return 0.0, None
    unknown_counts = np.where(known, 0, counts)
    return (float(unknown_counts.sum()) / len(pixels),
            tuple(int(v) for v in unique[np.argmax(unknown_counts)]))


def mask_box(mask):
    """[x, y, w, h] pixel extent of a boolean mask (w = x_max - x_min + 1), None if empty."""
    rows = np.flatnonzero(np.any(mask, axis=1))
    cols = np.flatnonzero(np.any(mask, axis=0))
    if len(rows) == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1],
                    np.float32)


def mask_file_base(image_name):
    """(scene folder, file-name base) of the masks of an image: the masks are
    `<scene>/<base>_<k:05d>.png` (AGORA evaluation `find_corresponding_masks`). None if the name
    does not follow the AGORA pattern."""
    stem = os.path.splitext(image_name)[0]
    if stem.endswith(LOW_RES_SUFFIX):
        stem = stem[:-len(LOW_RES_SUFFIX)]
    m = _MASK_NAME.match(stem)
    if m is None:
        return None
    return m['scene'], f'{m["name"]}_mask{m["cam"]}_{int(m["num"]):06d}'


def _existing_variant(path):
    """`path`, or its `_1280x720` variant if only that exists, or None."""
    if os.path.isfile(path):
        return path
    stem, ext = os.path.splitext(path)
    low = stem + LOW_RES_SUFFIX + ext
    return low if os.path.isfile(low) else None


def png_size(path):
    """(height, width) from a PNG header; None if the file is not a PNG."""
    with open(path, 'rb') as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b'\x89PNG\r\n\x1a\n' or head[12:16] != b'IHDR':
        return None
    return int.from_bytes(head[20:24], 'big'), int.from_bytes(head[16:20], 'big')


def read_png_rgb(path):
    """uint8 [H, W, 3] (grey is replicated, alpha dropped, as OpenCV's imread). Raises
    ValueError if the file cannot be decoded."""
    import tensorflow as tf
    with open(path, 'rb') as f:
        data = f.read()
    try:
        return tf.io.decode_png(data, channels=3).numpy()
    except (tf.errors.InvalidArgumentError, ValueError) as e:
        raise ValueError(f'cannot decode PNG: {e}') from None


# --------------------------------------------------------------------------------------------
# Pickles (numpy-only unpickler for fits and detections)

def load_numpy_pickle(path):
    """Unpickles `path` allowing only numpy arrays in plain containers. Raises ValueError."""
    return safe_pickle.load(path, error=ValueError)


class FitError(ValueError):
    """A per-person fit file problem (becomes a counted Skip naming file and field)."""

    def __init__(self, field, message):
        self.field = field
        super().__init__(message)


def load_fit(path):
    """The SMPL-X fit arrays of an AGORA `smplx_gt/*.pkl` as float64 1-D arrays (batch dim
    dropped). Raises FitError(field, message) for missing, non-numeric or mis-sized entries."""
    try:
        data = load_numpy_pickle(path)
    except ValueError as e:
        raise FitError('<file>', str(e)) from None
    if not isinstance(data, dict):
        raise FitError('<file>', f'expected a pickled dict, got {type(data).__name__}')
    fit = {}
    sizes = dict(FIT_POSE_KEYS, transl=3)
    for key in FIT_KEYS:
        if key not in data:
            raise FitError(key, 'missing from the fit pickle')
        try:
            value = np.asarray(data[key], np.float64)
        except (TypeError, ValueError):
            raise FitError(key, f'not numeric ({type(data[key]).__name__})') from None
        if value.ndim == 2 and value.shape[0] == 1:
            value = value[0]
        if value.ndim != 1:
            raise FitError(key, f'expected shape [1, n], got {list(np.shape(data[key]))}')
        if key in sizes and value.size != sizes[key]:
            raise FitError(key, f'expected {sizes[key]} values, got {value.size}')
        if not np.all(np.isfinite(value)):
            raise FitError(key, 'contains non-finite values')
        fit[key] = value
    return fit


def fit_to_params(fit, is_kid, hand_mean):
    """(pose [165] absolute, betas, expression, transl [3], kid_factor) in the SCAN frame.

    Hand poses get `hand_mean` ([90]: left 45 then right 45) added; for kids the last beta is the
    kid factor. Raises FitError for too many betas / expression values or a kid without the
    extra beta.
    """
    from nlf_tf.body_models import kinds
    pose = np.concatenate([fit[key] for key, _ in FIT_POSE_KEYS])
    hand_mean = np.asarray(hand_mean, np.float64).reshape(-1)
    if hand_mean.size != 90:
        raise ValueError(f'hand_mean must have 90 values, got {hand_mean.size}')
    pose[75:165] += hand_mean
    betas = fit['betas']
    kid_factor = 0.0
    if is_kid:
        if betas.size < 2:
            raise FitError('betas', f'a kid needs the shape betas plus the kid factor, got '
                                    f'{betas.size} values')
        betas, kid_factor = betas[:-1], float(betas[-1])
    if betas.size > kinds.SHAPE_SIZE:
        raise FitError('betas', f'{betas.size} betas, at most {kinds.SHAPE_SIZE} supported')
    expression = fit['expression']
    if expression.size > kinds.EXPRESSION_SIZE:
        raise FitError('expression', f'{expression.size} values, at most '
                                     f'{kinds.EXPRESSION_SIZE} supported')
    return pose, betas, expression, fit['transl'], kid_factor


def body_gender(gender, is_kid):
    """'f' | 'm' | 'n' for the SMPL-X model; female kids use the neutral model. ValueError for an
    unknown gender string."""
    if not isinstance(gender, str) or gender.strip().lower() not in (
            'female', 'male', 'neutral', 'f', 'm', 'n'):
        raise ValueError(f'unknown gender {gender!r}; expected male, female or neutral')
    g = gender.strip().lower()[0]
    return 'n' if is_kid and g == 'f' else g


# --------------------------------------------------------------------------------------------
# Person selection

def match_detections(gt_boxes, detection_boxes, min_iou):
    """Per GT box: (box, matched). Hungarian assignment maximising IoU; a pair with IoU >=
    `min_iou` replaces the GT box by the detection."""
    import scipy.optimize
    result = [(np.asarray(b, np.float32), False) for b in gt_boxes]
    if len(gt_boxes) == 0 or detection_boxes is None or len(detection_boxes) == 0:
        return result
    detection_boxes = [np.asarray(d, np.float64).reshape(-1)[:4] for d in detection_boxes]
    iou = np.array([[box_iou(g, d) for d in detection_boxes] for g in gt_boxes])
    for i_gt, i_det in zip(*scipy.optimize.linear_sum_assignment(-iou)):
        if iou[i_gt, i_det] >= min_iou:
            result[i_gt] = (detection_boxes[i_det].astype(np.float32), True)
    return result


def candidate_reason(is_valid, occlusion, max_occlusion):
    """Why a person is not even a candidate (None if it is): isValid false or too occluded."""
    if not is_valid:
        return 'isValid is false'
    if occlusion > max_occlusion:
        return f'occlusion > {max_occlusion:g}'
    return None


def box_reason(box, matched, occlusion, min_box_side, max_occlusion_unmatched):
    """Why a candidate with its final box is skipped (None if kept)."""
    if not matched and occlusion > max_occlusion_unmatched:
        return f'occlusion > {max_occlusion_unmatched:g} without a matching detection'
    if min(box[2], box[3]) < min_box_side:
        return 'box too small'
    return None


# --------------------------------------------------------------------------------------------
# The reader

def iter_examples(root_dir, split='train', body_model_dir=None, detections=None, *,
                  min_box_side=None, max_occlusion=None, max_occlusion_unmatched=None,
                  detection_min_iou=None, mask_colour_tolerance=None, palette_path=None):
    """Yields `Example` (category 'param') or `Skip` records: DataFrame files in sorted order,
    rows in file order, persons in row order.

    Args:
        root_dir: AGORA root (see the module docstring).
        split: 'train' (train_0..9) or 'val' (validation_0..9; also 'validation').
        body_model_dir: folder with smplx/SMPLX_{FEMALE,MALE,NEUTRAL}.npz (and
            smplx/smplx_kid_template.npy for kids); needed for the hand means and the rest pelvis.
        detections: optional person detections: a dict, or the path of a pickle (numpy arrays
            only) or JSON file holding one, mapping image paths relative to `root_dir` (e.g.
            'train_0/ag_trainset_..._00001.png'; the bare file name is accepted too) to [N, 4+]
            boxes [x, y, w, h, ...] in pixels of the image as stored.
        min_box_side: minimum box side at 3840 px width (scaled by the image width); default
            from the spec (100); max_occlusion (75), max_occlusion_unmatched (50),
            detection_min_iou (0.5), mask_colour_tolerance (10): spec defaults.
        palette_path: the AirSim palette; default `<root_dir>/seg_rgbs.txt`.
    Raises:
        DatasetError for structural problems (see the module docstring).
    """
    spec = specs.load_spec(DATASET)

    def threshold(value, key):
        return specs.threshold(spec, key, value)

    min_box_side = threshold(min_box_side, 'min_box_side')
    max_occlusion = threshold(max_occlusion, 'occlusion_max')
    max_occlusion_unmatched = threshold(max_occlusion_unmatched, 'occlusion_max_unmatched')
    detection_min_iou = threshold(detection_min_iou, 'detection_min_iou')
    tolerance = threshold(mask_colour_tolerance, 'mask_colour_tolerance')

    split = {'validation': 'val'}.get(split, split)
    if split not in _SECTIONS:
        raise ValueError(f"AGORA split must be 'train' or 'val' (test has no ground truth), "
                         f"got {split!r}")
    if body_model_dir is None:
        raise ValueError('AGORA needs body_model_dir (the SMPL-X model files, '
                         '--body_model_dir): hand means and rest pelvis come from them')
    root_dir = os.path.abspath(os.fspath(root_dir))
    if not os.path.isdir(root_dir):
        raise DatasetError(root_dir, 'root_dir', 'AGORA folder not found')
    palette_path = os.path.join(root_dir, 'seg_rgbs.txt') if palette_path is None else \
        os.fspath(palette_path)
    palette = load_palette(palette_path)
    detections = _load_detections(detections)
    models = _ModelCache(os.fspath(body_model_dir))

    prefix, image_dir_pattern, mask_dir_name = _SECTIONS[split]
    frames = _dataframe_paths(root_dir, prefix)
    mask_dir = os.path.join(root_dir, mask_dir_name)
    for i_section, df_path in frames:
        image_dir = os.path.join(root_dir, image_dir_pattern.format(i=i_section))
        columns, num_rows = _read_dataframe(df_path)
        for i_row in range(num_rows):
            yield from _iter_row(
                root_dir, df_path, i_row, {k: v[i_row] for k, v in columns.items()}, image_dir,
                mask_dir, palette, palette_path, tolerance, detections, models,
                min_box_side, max_occlusion, max_occlusion_unmatched, detection_min_iou)


def _dataframe_paths(root_dir, prefix):
    """[(section index, path)] of the split's DataFrames (Cam/ preferred, SMPLX/ *_withjv as
    fallback)."""
    found = {}
    for kind, pattern in (('SMPLX', f'{prefix}_[0-9]_withjv.pkl'), ('Cam', f'{prefix}_[0-9].pkl')):
        for path in glob.glob(os.path.join(root_dir, kind, pattern)):
            i = int(re.search(rf'{prefix}_(\d)', os.path.basename(path))[1])
            found[i] = path  # Cam/ is globbed last and wins
    if not found:
        raise DatasetError(os.path.join(root_dir, 'Cam'), f'{prefix}_<i>.pkl',
                           f'no AGORA DataFrames found (Cam/{prefix}_<i>.pkl or '
                           f'SMPLX/{prefix}_<i>_withjv.pkl)')
    return sorted(found.items())


def _read_dataframe(path):
    """({column: list of values}, number of rows) of the columns the reader needs."""
    try:
        import pandas as pd
    except ImportError:
        raise DatasetError(path, 'file', 'reading AGORA DataFrames needs pandas: '
                                         'pip install nlf-tf[agora]') from None
    try:
        df = pd.read_pickle(path)
    except Exception as e:  # unpickling errors come in many types
        raise DatasetError(path, 'file', f'cannot read the DataFrame pickle: '
                                         f'{type(e).__name__}: {e}') from None
    if not isinstance(df, pd.DataFrame):
        raise DatasetError(path, 'file', f'expected a pandas DataFrame, got {type(df).__name__}')
    missing = [c for c in ROW_COLUMNS + PERSON_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(path, missing[0], f'required DataFrame column missing (all missing: '
                                             f'{missing})')
    return {c: df[c].tolist() for c in ROW_COLUMNS + PERSON_COLUMNS}, len(df)


def _iter_row(root_dir, df_path, i_row, row, image_dir, mask_dir, palette, palette_path,
              tolerance, detections, models, min_box_side_4k, max_occlusion,
              max_occlusion_unmatched, detection_min_iou):
    image_name = row['imgPath']
    if not isinstance(image_name, str) or not image_name:
        yield Skip(f'{os.path.basename(df_path)}#row{i_row}', 'invalid image name', df_path,
                   f'imgPath[row {i_row}]')
        return
    image_name = os.path.basename(image_name)
    image_relpath = os.path.relpath(os.path.join(image_dir, image_name), root_dir).replace(
        os.sep, '/')
    row_id = image_relpath

    # Per-person lists must all have one entry per person.
    persons = {}
    for col in PERSON_COLUMNS:
        value = row[col]
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            yield Skip(row_id, 'per-person field is not a list', df_path,
                       f'{col}[row {i_row}]')
            return
        persons[col] = list(value)
    num_persons = len(persons['isValid'])
    for col in PERSON_COLUMNS:
        if len(persons[col]) != num_persons:
            yield Skip(row_id, 'per-person lists of unequal length', df_path,
                       f'{col}[row {i_row}] has {len(persons[col])} entries, isValid has '
                       f'{num_persons}')
            return

    def pid(p):
        return f'{image_relpath}#{p}'

    # Candidates: valid and not too occluded.
    candidates = []
    for p in range(num_persons):
        try:
            occlusion = float(persons['occlusion'][p])
        except (TypeError, ValueError):
            occlusion = float('nan')
        if not np.isfinite(occlusion):
            yield Skip(pid(p), 'invalid occlusion value', df_path, f'occlusion[row {i_row}][{p}]')
            continue
        reason = candidate_reason(bool(persons['isValid'][p]), occlusion, max_occlusion)
        if reason is not None:
            field = 'isValid' if reason.startswith('isValid') else 'occlusion'
            yield Skip(pid(p), reason, df_path, f'{field}[row {i_row}][{p}]')
            continue
        candidates.append((p, occlusion))
    if not candidates:
        return

    image_path = _existing_variant(os.path.join(image_dir, image_name))
    if image_path is None:
        for p, _ in candidates:
            yield Skip(pid(p), 'missing image', os.path.join(image_dir, image_name), 'imgPath')
        return
    image_size = png_size(image_path)
    if image_size is None:
        for p, _ in candidates:
            yield Skip(pid(p), 'image is not a PNG', image_path, 'imgPath')
        return

    names = mask_file_base(image_name)
    if names is None:
        for p, _ in candidates:
            yield Skip(pid(p), 'image name does not follow the AGORA pattern', df_path,
                       f'imgPath[row {i_row}]')
        return
    scene, base = names
    mask_folder = os.path.join(mask_dir, scene)
    label_path = _existing_variant(os.path.join(mask_folder, f'{base}_00000.png'))
    if label_path is None:
        for p, _ in candidates:
            yield Skip(pid(p), 'missing mask', os.path.join(mask_folder, f'{base}_00000.png'),
                       'label mask')
        return
    try:
        label = read_png_rgb(label_path)
    except ValueError as e:
        for p, _ in candidates:
            yield Skip(pid(p), f'unreadable mask ({e})', label_path, 'label mask')
        return
    if label.shape[:2] != image_size:
        for p, _ in candidates:
            yield Skip(pid(p), 'mask size differs from image size', label_path, 'label mask')
        return

    # Modal masks and GT boxes of the candidates.
    kept = []
    for p, occlusion in candidates:
        if p >= len(palette):
            raise DatasetError(palette_path, f'row {p}',
                               f'the palette has {len(palette)} rows but {image_relpath} has '
                               f'person {p}')
        amodal_path = _existing_variant(os.path.join(mask_folder, f'{base}_{p + 1:05d}.png'))
        if amodal_path is None:
            yield Skip(pid(p), 'missing mask', os.path.join(mask_folder, f'{base}_{p + 1:05d}.png'),
                       'amodal mask')
            continue
        try:
            amodal = np.any(read_png_rgb(amodal_path) != 0, axis=-1)
        except ValueError as e:
            yield Skip(pid(p), f'unreadable mask ({e})', amodal_path, 'amodal mask')
            continue
        if amodal.shape != image_size:
            yield Skip(pid(p), 'mask size differs from image size', amodal_path, 'amodal mask')
            continue
        modal = modal_mask(label, amodal, palette[p], tolerance)
        box = mask_box(modal)
        if box is None:
            fraction, colour = unknown_colours(label, amodal, palette, tolerance)
            if fraction > 0.5:
                yield Skip(pid(p), 'mask colour not in the palette', label_path,
                           f'label colour {colour} (person {p}: palette row {p} = '
                           f'{tuple(int(v) for v in palette[p])})')
            else:
                yield Skip(pid(p), 'empty modal mask', label_path, f'label colour of person {p}')
            continue
        kept.append((p, occlusion, box))
    if not kept:
        return

    detection_boxes = None
    if detections is not None:
        detection_boxes = _detections_for(detections, image_relpath, image_name)
    boxes = match_detections([b for _, _, b in kept], detection_boxes, detection_min_iou)
    scale = image_size[1] / REFERENCE_WIDTH
    camera = get_camera(image_name, [row['camX'], row['camY'], row['camZ']], row['camYaw'],
                        image_size[1])
    people_rle = None
    for (p, occlusion, _), (box, matched) in zip(kept, boxes):
        reason = box_reason(box, matched, occlusion, min_box_side_4k * scale,
                            max_occlusion_unmatched)
        if reason == 'box too small':
            yield Skip(pid(p), reason, label_path, 'detection box' if matched else 'modal mask box')
            continue
        if reason is not None:
            yield Skip(pid(p), reason, df_path, f'occlusion[row {i_row}][{p}]')
            continue
        params = _person_params(root_dir, df_path, i_row, p, persons, models)
        if isinstance(params, Skip):
            params.example_id = pid(p)
            yield params
            continue
        if people_rle is None:
            from nlf_tf.data import rle
            people_rle = rle.encode(all_people_mask(label))
        yield Example(
            dataset=DATASET, category='param', example_id=pid(p), image_path=image_path,
            image=None, camera=camera, box=np.asarray(box, np.float32), mask_rle=people_rle,
            body_params=params)


def _person_params(root_dir, df_path, i_row, p, persons, models):
    """World-frame body_params of person p, or a Skip (example id filled in by the caller)."""
    from nlf_tf.body_models import numpy_model

    is_kid = bool(persons['kid'][p])
    try:
        gender = body_gender(persons['gender'][p], is_kid)
    except ValueError as e:
        return Skip('', 'unknown gender', df_path, f'gender[row {i_row}][{p}]: {e}')
    fit_rel = persons['gt_path_smplx'][p]
    if not isinstance(fit_rel, str) or not fit_rel:
        return Skip('', 'invalid fit path', df_path, f'gt_path_smplx[row {i_row}][{p}]')
    fit_path = _fit_path(root_dir, fit_rel)
    if fit_path is None:
        return Skip('', 'missing fit file', os.path.join(root_dir, _with_pkl(fit_rel)),
                    f'gt_path_smplx[row {i_row}][{p}]')
    model = models.get(gender, is_kid)
    try:
        fit = load_fit(fit_path)
        pose, betas, expression, transl, kid_factor = fit_to_params(
            fit, is_kid, model['hand_mean'])
    except FitError as e:
        return Skip('', 'invalid fit pickle', fit_path, f'{e.field}: {e}')
    try:
        location = [float(persons[k][p]) for k in ('X', 'Y', 'Z')]
        yaw = float(persons['Yaw'][p])
    except (TypeError, ValueError):
        return Skip('', 'invalid person location', df_path, f'X/Y/Z/Yaw[row {i_row}][{p}]')
    if not np.all(np.isfinite(location + [yaw])):
        return Skip('', 'invalid person location', df_path, f'X/Y/Z/Yaw[row {i_row}][{p}]')
    pelvis = numpy_model.rest_pelvis(model, betas[np.newaxis], expression[np.newaxis],
                                     kid_factor)[0]
    pose, trans = adjust_body(pose, transl, pelvis, yaw, location)
    return dict(body_model=f'{FAMILY}_{gender}', pose=pose.astype(np.float32),
                shape=betas.astype(np.float32), expression=expression.astype(np.float32),
                trans=trans.astype(np.float32), kid_factor=np.float32(kid_factor), scale=1.0,
                is_shape_valid=True)


def _with_pkl(path):
    return os.path.splitext(path)[0] + '.pkl'


def _fit_path(root_dir, fit_rel):
    rel = _with_pkl(fit_rel.replace('\\', '/').lstrip('/'))
    for candidate in (os.path.join(root_dir, rel), os.path.join(root_dir, 'smplx_gt', rel)):
        if os.path.isfile(candidate):
            return candidate
    return None


class _ModelCache:
    """SMPL-X models per gender, loaded on first use; body-model problems -> DatasetError."""

    def __init__(self, body_model_dir):
        self.body_model_dir = body_model_dir
        self.models = {}

    def get(self, gender, is_kid):
        from nlf_tf.body_models import files
        from nlf_tf.body_models.smpl_file import ModelFileError

        if gender not in self.models:
            try:
                self.models[gender] = files.load_body_model(self.body_model_dir, FAMILY, gender)
            except ModelFileError as e:
                raise DatasetError(e.file, e.field, e.message) from None
        model = self.models[gender]
        if is_kid and model.get('kid_shapedir') is None:
            expected = os.path.join(self.body_model_dir, FAMILY, 'smplx_kid_template.npy')
            raise DatasetError(expected, '<file>',
                               'AGORA has kids, whose shape needs the SMIL-X kid template; copy '
                               'smplx_kid_template.npy from the AGORA download there')
        return model


def _load_detections(detections):
    return detections_lib.load_detections(detections, 'must map image paths to lists of boxes',
                                          pickle_not_object='must map image paths to box arrays')


def _detections_for(detections, image_relpath, image_name):
    value = detections.get(image_relpath, detections.get(image_name))
    if value is None:
        return None
    return detections_lib.detection_boxes(value, image_relpath)
