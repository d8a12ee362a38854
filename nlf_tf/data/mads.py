"""Reader for MADS (multi-view part), kp3d.

Layout under `root_dir` (the extracted MADS_multiview.zip):
    multi_view_data/<Action>/<Action>_<Seq>_C{0,1,2}.avi   colour videos, one per camera
    multi_view_data/<Action>/<Action>_<Seq>_GT.mat          GTpose2: cell array, one J x 3 array
                                                            of world mm per frame (NaN missing)
    multi_view_data/<Action>/Calib_Cam{0,1,2}.mat           Bouguet calibration: KK, kc, om_ext,
                                                            T_ext (mm)

Following PosePile (`posepile/ds/mads/main.py`): per video (= per camera), frames with all-NaN
ground truth are skipped and the rest subsampled with AdaptivePoseSampler(100 mm,
check_validity=True) on the world-mm poses; 15-joint frames are scattered into the 19-joint list;
the GT box is the bounding box of the projected valid joints enlarged 1.2x; if detections are
given, the detection with the highest IoU with the GT box is used instead (none -> GT box).
Examples carry the decoded frame (`image`), the distorted source camera and world metres.
All of MADS is training data (split 'train' only).
"""

import glob
import os

import numpy as np

from nlf_tf import specs
from nlf_tf.data.coco import box_iou, box_of_points, expand_box
from nlf_tf.data.detections import detection_boxes, load_detections
from nlf_tf.data.example import DatasetError, Example, Skip
from nlf_tf.data.pose_sampler import AdaptivePoseSampler
from nlf_tf.data.video import as_rgb_frame, read_frames

DATASET = 'mads'
NUM_BOUGUET_COEFFS = 5


def iter_examples(root_dir, split='train', video_reader=None, *, detections=None,
                  sampler_threshold_mm=None, box_enlarge=None):
    """Yields `Example` (category 'kp3d') or `Skip` records, videos in sorted path order.

    Args:
        root_dir: MADS root holding `multi_view_data/`.
        split: only 'train' (MADS has no other split in NLF/PosePile).
        video_reader: callable path -> iterable of uint8 [H, W, 3] RGB frames; default
            `nlf_tf.data.video.read_frames` (needs `pip install nlf-tf[video]`).
        detections: optional person detections: a dict, or the path of a JSON file holding one,
            mapping example ids ('multi_view_data/<Action>/<video>.avi/<frame:06d>') to lists of
            boxes [x, y, w, h(, score...)] in source pixels.
        sampler_threshold_mm, box_enlarge: override the spec's thresholds.
    Raises:
        DatasetError for missing folders/files, unreadable .mat files, missing or malformed
        calibration/ground-truth fields, or undecodable videos.
    """
    if split != 'train':
        raise ValueError(f"MADS has only the split 'train', got {split!r}")
    spec = specs.load_spec(DATASET)
    joint_names = list(spec['joint_names'])
    slots_15 = spec_slots_15(spec)
    world_up = tuple(spec.get('world_up', (0, 1, 0)))
    sampler_threshold_mm = specs.threshold(spec, 'sampler_threshold_mm', sampler_threshold_mm)
    box_enlarge = specs.threshold(spec, 'box_enlarge', box_enlarge)
    if video_reader is None:
        video_reader = read_frames
    detections = load_detections(detections, 'must map example ids to lists of boxes')

    root_dir = os.path.abspath(root_dir)
    data_dir = os.path.join(root_dir, 'multi_view_data')
    if not os.path.isdir(data_dir):
        raise DatasetError(data_dir, 'multi_view_data', 'MADS folder not found')
    video_paths = sorted(glob.glob(os.path.join(data_dir, '*', '*_C[0-9].avi')))
    if not video_paths:
        raise DatasetError(data_dir, 'multi_view_data',
                           'no videos matching <Action>/<Action>_<Seq>_C<i>.avi')

    cameras = {}
    ground_truths = {}
    for video_path in video_paths:
        folder = os.path.dirname(video_path)
        i_cam = video_path[-5]
        calib_path = os.path.join(folder, f'Calib_Cam{i_cam}.mat')
        gt_path = video_path[:-len('C0.avi')] + 'GT.mat'
        if calib_path not in cameras:
            cameras[calib_path] = load_camera(calib_path, world_up)
        if gt_path not in ground_truths:
            # the 3 cameras of a sequence share the ground truth; keep only the current one
            ground_truths = {gt_path: load_ground_truth(gt_path, len(joint_names), slots_15)}
        yield from _iter_video(
            video_path, os.path.relpath(video_path, root_dir).replace(os.sep, '/'),
            cameras[calib_path], ground_truths[gt_path], gt_path, video_reader, detections,
            sampler_threshold_mm, box_enlarge)


def _iter_video(video_path, video_relpath, camera, poses_mm, gt_path, video_reader, detections,
                sampler_threshold_mm, box_enlarge):
    sampler = AdaptivePoseSampler(sampler_threshold_mm, check_validity=True)
    frames = iter(video_reader(video_path))
    video_ended = False
    for i_frame, pose_mm in enumerate(poses_mm):
        example_id = f'{video_relpath}/{i_frame:06d}'
        # decode in lockstep with the ground truth (frames are only available sequentially)
        frame = None
        if not video_ended:
            frame = next(frames, None)
            video_ended = frame is None
        valid = np.all(np.isfinite(pose_mm), axis=1)
        if not np.any(valid):
            yield Skip(example_id, 'no valid joints', gt_path, f'GTpose2[{i_frame}]')
            continue
        if video_ended:
            yield Skip(example_id, 'frame beyond video length', video_path, 'frames')
            continue
        if sampler.should_skip(pose_mm):
            yield Skip(example_id, 'pose too similar to the last kept frame', gt_path,
                       f'GTpose2[{i_frame}]')
            continue

        frame = as_rgb_frame(frame, video_path, i_frame)
        joints3d = (pose_mm / 1000.0).astype(np.float32)
        in_front = valid.copy()
        in_front[valid] = camera.world_to_camera(joints3d[valid])[:, 2] > 0
        if not np.any(in_front):
            yield Skip(example_id, 'no joint in front of the camera', gt_path,
                       f'GTpose2[{i_frame}]')
            continue
        imcoords = camera.world_to_image(joints3d[in_front])
        gt_box = expand_box(box_of_points(imcoords), box_enlarge)
        if not np.all(np.isfinite(gt_box)) or gt_box[2] <= 0 or gt_box[3] <= 0:
            yield Skip(example_id, 'zero-area box', gt_path, f'GTpose2[{i_frame}]')
            continue
        box = gt_box
        if detections is not None:
            candidates = detections.get(example_id)
            if candidates:
                boxes = detection_boxes(candidates, example_id)
                box = boxes[int(np.argmax([box_iou(gt_box, b) for b in boxes]))]
        yield Example(
            dataset=DATASET, category='kp3d', example_id=example_id, image_path=None,
            image=frame, camera=camera, box=np.asarray(box, np.float32), joints2d=None,
            joints3d=joints3d)


def spec_slots_15(spec):
    """Slots of the 19-joint list filled by 15-joint ground truth (the spec's "slots_15")."""
    joint_names = list(spec['joint_names'])
    slots = list(spec.get('slots_15', ()))
    if len(joint_names) != 19 or len(slots) != 15 or sorted(set(slots)) != slots or any(
            not 0 <= i < 19 for i in slots):
        raise ValueError(f'data spec {DATASET!r} needs 19 joint_names and 15 increasing '
                         f'"slots_15" indices, got {len(joint_names)} names and {slots}')
    return slots


def load_camera(path, world_up=(0, 1, 0)):
    """`Camera` from a Bouguet calibration file (KK, kc, om_ext, T_ext in mm), world up = +y."""
    from nlf_tf.data.camera import Camera

    data = _load_mat(path)
    KK = _numeric_field(data, 'KK', path, (3, 3))
    kc = _numeric_field(data, 'kc', path, None).reshape(-1)
    if kc.size != NUM_BOUGUET_COEFFS:
        raise DatasetError(path, 'kc', f'expected {NUM_BOUGUET_COEFFS} Bouguet distortion '
                                       f'coefficients (k1, k2, p1, p2, k3), got {kc.size}')
    om_ext = _numeric_field(data, 'om_ext', path, None).reshape(-1)
    if om_ext.size != 3:
        raise DatasetError(path, 'om_ext', f'expected a 3-vector (Rodrigues), got {om_ext.size} '
                                           f'values')
    T_ext = _numeric_field(data, 'T_ext', path, None).reshape(-1)
    if T_ext.size != 3:
        raise DatasetError(path, 'T_ext', f'expected a 3-vector (mm), got {T_ext.size} values')
    if not np.allclose(KK[2], [0, 0, 1]) or KK[0, 0] <= 0 or KK[1, 1] <= 0 or KK[1, 0] != 0:
        raise DatasetError(path, 'KK', f'not an intrinsic matrix [[fx, s, cx], [0, fy, cy], '
                                       f'[0, 0, 1]] with fx, fy > 0: {KK.tolist()}')
    return Camera.from_bouguet(KK, kc, om_ext, T_ext, units='mm', world_up=world_up)


def load_ground_truth(path, num_joints, slots_15):
    """float64 [N, num_joints, 3] world mm from a `<Action>_<Seq>_GT.mat` file (NaN = missing).

    Frames given with 15 joints are scattered into the slots `slots_15`; an empty cell is a
    frame without ground truth (all NaN).
    """
    data = _load_mat(path)
    if 'GTpose2' not in data:
        raise DatasetError(path, 'GTpose2', 'required variable missing')
    cells = data['GTpose2']
    if not isinstance(cells, np.ndarray):
        raise DatasetError(path, 'GTpose2', f'expected a cell array, got {type(cells).__name__}')
    if cells.dtype == object:
        if cells.ndim > 2 or (cells.ndim == 2 and min(cells.shape) > 1):
            raise DatasetError(path, 'GTpose2', f'expected a 1-D cell array (one cell per '
                                                f'frame), got shape {cells.shape}')
        frames = list(cells.reshape(-1))
    elif cells.ndim == 3 and cells.shape[2] == 3:
        frames = list(cells)  # a plain numeric [N, J, 3] array is accepted too
    else:
        raise DatasetError(path, 'GTpose2', f'expected a cell array of J x 3 arrays, got a '
                                            f'{cells.dtype} array of shape {cells.shape}')

    poses = np.full((len(frames), num_joints, 3), np.nan)
    for i, cell in enumerate(frames):
        field = f'GTpose2[{i}]'
        try:
            cell = np.asarray(cell, dtype=np.float64)
        except (TypeError, ValueError):
            raise DatasetError(path, field, 'must be a numeric J x 3 array') from None
        if cell.size == 0:
            continue
        if cell.shape == (num_joints, 3):
            poses[i] = cell
        elif cell.shape == (len(slots_15), 3):
            poses[i, list(slots_15)] = cell
        else:
            raise DatasetError(path, field, f'expected shape ({num_joints}, 3) or '
                                            f'({len(slots_15)}, 3), got {cell.shape}')
    poses[np.isinf(poses)] = np.nan
    return poses


def _load_mat(path):
    import scipy.io

    if not os.path.isfile(path):
        raise DatasetError(path, 'file', 'file not found')
    try:
        return scipy.io.loadmat(path)
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files
        raise DatasetError(path, 'file', f'unsupported .mat version (save with -v7): {e}') from e
    except Exception as e:  # scipy raises ValueError/TypeError/... for corrupt files
        raise DatasetError(path, 'file', f'cannot read .mat file: {e}') from e


def _numeric_field(data, name, path, shape):
    if name not in data:
        raise DatasetError(path, name, 'required calibration field missing')
    try:
        value = np.asarray(data[name], dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(path, name, 'must be numeric') from None
    if shape is not None and value.shape != shape:
        raise DatasetError(path, name, f'expected shape {shape}, got {value.shape}')
    if not np.all(np.isfinite(value)):
        raise DatasetError(path, name, 'contains non-finite values')
    return value
