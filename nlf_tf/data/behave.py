"""Reader for BEHAVE (human-object interaction, 4 Azure Kinects), parametric (SMPL+H).

Layout under `root_dir` (PosePile's: the Date zips unzipped into `sequences/`, `calibs.zip` into
the root):
    split.json                                    {"train": [sequence names], "test": [...]}
    calibs/intrinsics/<k>/calibration.json        Kinect k factory calibration; "color": fx, fy,
                                                  cx, cy, width, height, k1..k6, p1, p2, opencv
    calibs/DateXX/config/<k>/config.json          "rotation" (9, row-major), "translation" (3, m):
                                                  camera-to-world of Kinect k's colour camera
    sequences/<seq>/info.json                     gender, kinects, intrinsic / config folders
                                                  (relative to the sequence folder)
    sequences/<seq>/t<SSSS>.<mmm>/                one folder per annotated frame:
        k<k>.color.jpg, k<k>.person_mask.jpg      colour image, person mask (> 127 = person)
        person/person_J3d.json                    body_joints3d: 25 x (x, y, z [m], score), BODY_25
        person/fit02/person_fit.pkl               pose (156), betas (10), trans (3, m), world frame

Following PosePile (`posepile/ds/behave/main.py`, `add_parametric.py`):
  * camera: R_world->cam = (config rotation)^T, optical centre = config translation, K from the
    colour calibration, 8 distortion coefficients (k1, k2, p1, p2, k3, k4, k5, k6; OpenCV's
    rational model), world up (0, -1, 0) (the world is Kinect 1's colour frame, y down);
  * per sequence, frames in sorted order pass the buffered adaptive sampler
    (`BufferedAdaptivePoseSampler(100 mm, check_validity, assume_nan_unchanged, buffer 100)`) on
    the world-mm joints [body-model joints; BODY_25 joints]; all Kinects of a kept frame give
    examples;
  * box = bounding box of the projected joints (with distortion) enlarged 1.05x, replaced by the
    best-IoU detection if its IoU > 0.5, intersected with the image; zero area -> skipped;
  * mask = k<k>.person_mask.jpg > 127 (as COCO RLE);
  * body_params: 'smplh_m' / 'smplh_f' by info.json gender, pose = the 156 values as stored
    (absolute, no hand mean added, as PosePile passes them on), shape = the betas, trans (world).

Decisions where PosePile is silent or differs:
  * body-model joints: PosePile forwards the fit through the gendered 24-joint SMPL model; we use
    all 52 joints of the SMPL+H model the parameters belong to (`body_model_dir`). Without
    `body_model_dir` only the BODY_25 joints are used (sampler and box).
  * BODY_25 rows that are exactly (0, 0, 0) or non-finite are treated as missing (NaN).
  * a frame without its fit or joint file, an example whose colour image or mask is missing, and
    a listed sequence whose folder is missing are counted `Skip`s; malformed files (JSON, pickle,
    calibration) raise `DatasetError` naming the file and the field.
  * the image size used for clipping is the calibration's colour width x height (2048 x 1536 on
    the real data); the mask must have that size.
  * info.json folders that do not exist (e.g. absolute paths of the authors' machines) fall back
    to `calibs/intrinsics` and `calibs/<DateXX>/config` (DateXX = sequence name up to the first
    '_').
"""

import os

import numpy as np

from nlf_tf import safe_pickle, specs
from nlf_tf.data import rle
from nlf_tf.data.coco import box_iou, box_of_points, expand_box
from nlf_tf.data.detections import detection_boxes, load_detections
from nlf_tf.data.example import DatasetError, Example, Skip, load_json_object
from nlf_tf.data.pose_sampler import BufferedAdaptivePoseSampler

DATASET = 'behave'
FAMILY = 'smplh'
SPLITS = ('train', 'test')
DISTORTION_KEYS = ('k1', 'k2', 'p1', 'p2', 'k3', 'k4', 'k5', 'k6')
OPENCV_LENGTH = 4 + len(DISTORTION_KEYS)  # 4 intrinsics, then the 8 distortion coefficients
NUM_BODY25 = 25
POSE_SIZE = 156  # 52 SMPL+H joints x 3
DEFAULT_KINECTS = (0, 1, 2)  # the official toolkit's default when info.json lacks "kinects"


def iter_examples(root_dir, split='train', body_model_dir=None, detections=None, *,
                  sampler_threshold_mm=None, sampler_buffer_size=None, box_enlarge=None,
                  detection_min_iou=None, mask_threshold=None):
    """Yields `Example` (category 'param') or `Skip` records.

    Sequences of `split` in sorted name order, their frame folders in sorted order, the Kinects
    of a kept frame in info.json order.

    Args:
        root_dir: BEHAVE root holding `split.json`, `calibs/` and `sequences/`.
        split: 'train' (what NLF uses) or 'test'.
        body_model_dir: folder with `smplh/SMPLH_{MALE,FEMALE}.pkl` (see
            `nlf_tf.body_models.files`); its joints join the BODY_25 joints for the frame
            sampler and the box. None: BODY_25 joints only.
        detections: optional person detections: a dict, or the path of a JSON file holding one,
            mapping image paths relative to the root ('sequences/<seq>/<frame>/k<k>.color.jpg',
            also the example ids) to lists of boxes [x, y, w, h(, score...)] in pixels.
        sampler_threshold_mm, sampler_buffer_size, box_enlarge, detection_min_iou,
        mask_threshold: override the spec's thresholds.
    Raises:
        ValueError for an unknown split; DatasetError for missing or malformed split, info,
        calibration, joint or fit files (naming the file and the field).
    """
    if split not in SPLITS:
        raise ValueError(f'BEHAVE splits are {SPLITS}, got {split!r}')
    spec = specs.load_spec(DATASET)

    def threshold(value, key):
        return specs.threshold(spec, key, value)

    sampler_threshold_mm = threshold(sampler_threshold_mm, 'sampler_threshold_mm')
    sampler_buffer_size = int(threshold(sampler_buffer_size, 'sampler_buffer_size'))
    box_enlarge = threshold(box_enlarge, 'box_enlarge')
    detection_min_iou = threshold(detection_min_iou, 'detection_min_iou')
    mask_threshold = threshold(mask_threshold, 'mask_threshold')
    world_up = tuple((spec.get('camera') or {}).get('world_up', (0, -1, 0)))
    detections = load_detections(detections, 'must map image paths to lists of boxes')

    root_dir = os.path.abspath(root_dir)
    sequence_names = load_split(os.path.join(root_dir, 'split.json'))[split]
    sequences_dir = os.path.join(root_dir, 'sequences')
    if not os.path.isdir(sequences_dir):
        raise DatasetError(sequences_dir, 'sequences', 'BEHAVE sequences folder not found')
    present = [name for name in sorted(sequence_names)
               if os.path.isdir(os.path.join(sequences_dir, name))]
    if sequence_names and not present:
        raise DatasetError(sequences_dir, split,
                           f'none of the {len(sequence_names)} {split} sequences of split.json '
                           f'is present (e.g. {sorted(sequence_names)[0]!r})')

    for name in sorted(sequence_names):
        seq_dir = os.path.join(sequences_dir, name)
        if name not in present:
            yield Skip(f'sequences/{name}', 'sequence folder missing', seq_dir,
                       f'split.json:{split}')
            continue
        yield from _iter_sequence(
            root_dir, name, body_model_dir, detections, world_up, sampler_threshold_mm,
            sampler_buffer_size, box_enlarge, detection_min_iou, mask_threshold)


def _iter_sequence(root_dir, name, body_model_dir, detections, world_up, sampler_threshold_mm,
                   sampler_buffer_size, box_enlarge, detection_min_iou, mask_threshold):
    from nlf_tf.body_models import kinds

    seq_dir = os.path.join(root_dir, 'sequences', name)
    info = load_sequence_info(seq_dir, root_dir)
    kind = info['kind']
    cameras = {k: load_camera(os.path.join(info['intrinsic_dir'], str(k), 'calibration.json'),
                              os.path.join(info['config_dir'], str(k), 'config.json'), world_up)
               for k in info['kinects']}
    model = None
    if body_model_dir is not None:
        from nlf_tf.body_models import files as body_model_files
        model = body_model_files.load_body_model(body_model_dir, FAMILY,
                                                 kinds.GENDERS[kind[-1]])

    sampler = BufferedAdaptivePoseSampler(sampler_threshold_mm, check_validity=True,
                                          assume_nan_unchanged=True,
                                          buffer_size=sampler_buffer_size)
    frames = sorted(entry for entry in os.listdir(seq_dir)
                    if entry.startswith('t') and os.path.isdir(os.path.join(seq_dir, entry)))
    for frame in frames:
        frame_dir = os.path.join(seq_dir, frame)
        frame_id = f'sequences/{name}/{frame}'
        joints_path = os.path.join(frame_dir, 'person', 'person_J3d.json')
        fit_path = os.path.join(frame_dir, 'person', 'fit02', 'person_fit.pkl')
        if not os.path.isfile(fit_path):
            yield Skip(frame_id, 'missing SMPL+H fit', fit_path, 'file')
            continue
        if not os.path.isfile(joints_path):
            yield Skip(frame_id, 'missing 3D joints', joints_path, 'file')
            continue
        fit = load_fit(fit_path)
        joints = load_body25(joints_path)
        if model is not None:
            joints = np.concatenate([model_joints(model, fit), joints], axis=0)
        if sampler.should_skip(joints * 1000.0):
            yield Skip(frame_id, 'pose too similar to a recently kept frame', joints_path,
                       'body_joints3d')
            continue
        body_params = dict(body_model=kind, pose=fit['pose'].astype(np.float32),
                           shape=fit['betas'].astype(np.float32),
                           trans=fit['trans'].astype(np.float32))
        for k in info['kinects']:
            yield _example(root_dir, frame_dir, frame_id, k, cameras[k], joints, body_params,
                           detections, box_enlarge, detection_min_iou, mask_threshold)


def _example(root_dir, frame_dir, frame_id, k, camera_and_shape, joints, body_params,
             detections, box_enlarge, detection_min_iou, mask_threshold):
    camera, (height, width) = camera_and_shape
    image_path = os.path.join(frame_dir, f'k{k}.color.jpg')
    example_id = os.path.relpath(image_path, root_dir).replace(os.sep, '/')
    if not os.path.isfile(image_path):
        return Skip(example_id, 'missing image', image_path, 'file')
    mask_path = os.path.join(frame_dir, f'k{k}.person_mask.jpg')
    if not os.path.isfile(mask_path):
        return Skip(example_id, 'missing person mask', mask_path, 'file')

    valid = np.all(np.isfinite(joints), axis=1)
    in_front = valid.copy()
    in_front[valid] = camera.world_to_camera(joints[valid])[:, 2] > 0
    if not np.any(in_front):
        return Skip(example_id, 'no joint in front of the camera', frame_id, 'joints')
    box = joint_box(camera, joints[in_front], box_enlarge)
    if detections is not None and detections.get(example_id):
        boxes = detection_boxes(detections[example_id], example_id)
        ious = [box_iou(box, b) for b in boxes]
        best = int(np.argmax(ious))
        if ious[best] > detection_min_iou:
            box = boxes[best]
    box = intersect_box(box, (height, width))
    if not box[2] > 0 or not box[3] > 0:
        return Skip(example_id, 'zero-area box', frame_id, 'joints')

    mask = read_mask(mask_path)
    if mask is None:
        return Skip(example_id, 'corrupt person mask', mask_path, 'file')
    if mask.shape != (height, width):
        return Skip(example_id, 'person mask size differs from the calibration', mask_path,
                    f'shape {list(mask.shape)} != {[height, width]}')
    return Example(
        dataset=DATASET, category='param', example_id=example_id, image_path=image_path,
        image=None, camera=camera, box=box, mask_rle=rle.encode(mask > mask_threshold),
        body_params=dict(body_params))


# ---------------------------------------------------------------------------------------------
# Geometry helpers

def model_joints(model, fit):
    """World joints [J, 3] (metres, float64) of the SMPL+H fit, forwarded through `model`."""
    from nlf_tf.body_models import numpy_model

    _, joints = numpy_model.forward(model, fit['pose'][np.newaxis], fit['betas'][np.newaxis],
                                    trans=fit['trans'][np.newaxis])
    return np.asarray(joints[0], np.float64)


def joint_box(camera, joints_world, enlarge):
    """[x, y, w, h] bounding box of the projected (distorted) joints, scaled `enlarge` times."""
    return expand_box(box_of_points(camera.world_to_image(joints_world)), enlarge)


def intersect_box(box, imshape):
    """[x, y, w, h] intersection of `box` with the image [0, W] x [0, H] (zeros if empty)."""
    height, width = imshape
    x, y, w, h = np.asarray(box, np.float64)
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    if not (x1 > x0 and y1 > y0):
        return np.zeros(4, np.float32)
    return np.array([x0, y0, x1 - x0, y1 - y0], np.float32)


# ---------------------------------------------------------------------------------------------
# File readers

def load_split(path):
    """{'train': [names], 'test': [names]} from split.json (a missing split is an empty list)."""
    data = load_json_object(path, missing='BEHAVE split file not found',
                            not_object='must be {"train": [sequence names], "test": [...]}')
    if not any(key in data for key in SPLITS):
        raise DatasetError(path, 'train', 'neither "train" nor "test" is listed')
    out = {}
    for key in SPLITS:
        names = data.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise DatasetError(path, key, 'must be a list of sequence names')
        out[key] = list(names)
    return out


def load_sequence_info(seq_dir, root_dir):
    """info.json of a sequence: dict gender ('male'/'female'), kind ('smplh_m'/'smplh_f'),
    kinects (list of ints), intrinsic_dir, config_dir (absolute, existing folders)."""
    from nlf_tf.body_models import kinds

    path = os.path.join(seq_dir, 'info.json')
    info = load_json_object(path, missing='sequence info file not found')
    if 'gender' not in info:
        raise DatasetError(path, 'gender', 'required field missing')
    try:
        kind = kinds.kind_name(FAMILY, info['gender'])
    except ValueError as e:
        raise DatasetError(path, 'gender', str(e)) from None
    kinects = info.get('kinects', list(DEFAULT_KINECTS))
    if (not isinstance(kinects, list) or not kinects or len(set(map(str, kinects))) != len(kinects)
            or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0
                       for k in kinects)):
        raise DatasetError(path, 'kinects', f'must be a non-empty list of distinct Kinect ids, '
                                            f'got {kinects!r}')
    date = os.path.basename(seq_dir).split('_', 1)[0]
    fallbacks = {'intrinsic': os.path.join(root_dir, 'calibs', 'intrinsics'),
                 'config': os.path.join(root_dir, 'calibs', date, 'config')}
    dirs = {}
    for key, fallback in fallbacks.items():
        value = info.get(key)
        if value is not None and not isinstance(value, str):
            raise DatasetError(path, key, f'must be a folder path, got {value!r}')
        candidates = ([os.path.normpath(os.path.join(seq_dir, value))] if value else []) + [
            fallback]
        found = next((c for c in candidates if os.path.isdir(c)), None)
        if found is None:
            raise DatasetError(path, key, f'calibration folder not found (tried '
                                          f'{", ".join(candidates)})')
        dirs[key] = found
    return dict(gender=kinds.GENDERS[kind[-1]], kind=kind, kinects=kinects,
                intrinsic_dir=dirs['intrinsic'], config_dir=dirs['config'])


def load_camera(intrinsics_path, config_path, world_up=(0, -1, 0)):
    """(Camera, (height, width)) of a Kinect colour camera from calibration.json + config.json.

    K from color fx, fy, cx, cy; distortion (k1, k2, p1, p2, k3, k4, k5, k6) from the named keys,
    or from `opencv[4:12]` if the keys are absent; R_world->cam = rotation^T; centre =
    translation (metres).
    """
    from nlf_tf.data.camera import Camera

    calib = load_json_object(intrinsics_path, missing='Kinect calibration file not found')
    color = calib.get('color')
    if not isinstance(color, dict):
        raise DatasetError(intrinsics_path, 'color', 'required object missing')

    def number(key, positive=False):
        if key not in color:
            raise DatasetError(intrinsics_path, f'color.{key}', 'required field missing')
        value = color[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(
                value) or (positive and value <= 0):
            raise DatasetError(intrinsics_path, f'color.{key}',
                               f'must be a finite{" positive" if positive else ""} number, got '
                               f'{value!r}')
        return float(value)

    fx, fy = number('fx', True), number('fy', True)
    cx, cy = number('cx'), number('cy')
    width, height = number('width', True), number('height', True)
    if width != int(width) or height != int(height):
        raise DatasetError(intrinsics_path, 'color.width', f'image size must be integer, got '
                                                           f'{width} x {height}')
    if all(key in color for key in DISTORTION_KEYS):
        distortion = np.array([number(key) for key in DISTORTION_KEYS])
    elif 'opencv' in color:
        values = color['opencv']
        if not isinstance(values, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise DatasetError(intrinsics_path, 'color.opencv', 'must be a list of numbers')
        if len(values) != OPENCV_LENGTH:
            raise DatasetError(
                intrinsics_path, 'color.opencv',
                f'expected {OPENCV_LENGTH} values (4 intrinsics, then the {len(DISTORTION_KEYS)} '
                f'distortion coefficients {", ".join(DISTORTION_KEYS)}), got {len(values)}')
        distortion = np.array(values[4:], np.float64)
        if not np.all(np.isfinite(distortion)):
            raise DatasetError(intrinsics_path, 'color.opencv', 'contains non-finite values')
    else:
        missing = next(key for key in DISTORTION_KEYS if key not in color)
        raise DatasetError(intrinsics_path, f'color.{missing}',
                           f'distortion coefficient missing (need {", ".join(DISTORTION_KEYS)} '
                           f'or "opencv")')
    intrinsics = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])

    config = load_json_object(config_path, missing='Kinect config (extrinsics) file not found')
    rotation = _numbers(config, 'rotation', config_path, 9).reshape(3, 3)
    translation = _numbers(config, 'translation', config_path, 3)
    if (not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4)
            or np.linalg.det(rotation) < 0):
        raise DatasetError(config_path, 'rotation', f'not a rotation matrix: {rotation.tolist()}')
    camera = Camera(intrinsics, rotation.T, translation, distortion=distortion,
                    world_up=world_up)
    return camera, (int(height), int(width))


def load_body25(path):
    """float64 [25, 3] world metres from person_J3d.json `body_joints3d` (25 x 4 with scores);
    rows that are (0, 0, 0) or non-finite are NaN."""
    data = load_json_object(path)
    if 'body_joints3d' not in data:
        raise DatasetError(path, 'body_joints3d', 'required field missing')
    try:
        values = np.asarray(data['body_joints3d'], np.float64)
    except (TypeError, ValueError):
        raise DatasetError(path, 'body_joints3d', 'must be numbers') from None
    if values.size != NUM_BODY25 * 4:
        raise DatasetError(path, 'body_joints3d', f'expected {NUM_BODY25} x 4 values (x, y, z, '
                                                  f'score), got shape {list(values.shape)}')
    joints = values.reshape(NUM_BODY25, 4)[:, :3].copy()
    joints[np.all(joints == 0, axis=1) | ~np.all(np.isfinite(joints), axis=1)] = np.nan
    return joints


def load_fit(path):
    """{'pose' [156], 'betas' [S], 'trans' [3]} float64 from person_fit.pkl (restricted unpickler:
    numpy arrays and plain builtins only); DatasetError naming the file and field otherwise."""
    from nlf_tf.body_models import kinds

    fit = safe_pickle.load(
        path,
        refuse=lambda module, name: DatasetError(
            path, 'file', f'refusing to load the global {module}.{name} from the fit pickle '
                          f'(only numpy arrays and plain values are allowed)'),
        error=lambda message: DatasetError(path, 'file', message))
    if not isinstance(fit, dict):
        raise DatasetError(path, 'file', f'expected a pickled dict, got {type(fit).__name__}')
    out = {}
    for key, sizes in (('pose', (POSE_SIZE,)), ('betas', range(1, kinds.SHAPE_SIZE + 1)),
                       ('trans', (3,))):
        if key not in fit:
            raise DatasetError(path, key, f'missing from the fit (keys: {sorted(map(str, fit))})')
        try:
            value = np.asarray(fit[key], np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise DatasetError(path, key, 'must be numeric') from None
        if value.size not in sizes:
            raise DatasetError(path, key, f'expected {_describe(sizes)} values, got {value.size}')
        if not np.all(np.isfinite(value)):
            raise DatasetError(path, key, 'contains non-finite values')
        out[key] = value
    return out


def read_mask(path):
    """uint8 [H, W] grayscale image (JPEG/PNG) or None if it cannot be decoded."""
    import tensorflow as tf

    with open(path, 'rb') as f:
        data = f.read()
    try:
        image = tf.io.decode_image(data, channels=1, expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, ValueError):
        return None
    return image[..., 0]


# ---------------------------------------------------------------------------------------------
# Internals

def _describe(sizes):
    if isinstance(sizes, range):
        return f'{sizes.start} to {sizes.stop - 1}'
    return ' or '.join(map(str, sizes))


def _numbers(data, key, path, size):
    if key not in data:
        raise DatasetError(path, key, 'required field missing')
    try:
        value = np.asarray(data[key], np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DatasetError(path, key, 'must be numbers') from None
    if value.size != size:
        raise DatasetError(path, key, f'expected {size} numbers, got {value.size}')
    if not np.all(np.isfinite(value)):
        raise DatasetError(path, key, 'contains non-finite values')
    return value
