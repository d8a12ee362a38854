"""The prepare job: reader Examples -> efficient crops -> sharded TFRecord files + manifest.

Per example (spec §1.4, PosePile's "efficient example" cache): the camera is turned towards the box
centre (3D datasets; 2D datasets keep their stand-in camera) and undistorted; a square region of
side max(cos30·w + sin30·h, cos30·h + sin30·w)·1.522 around the box (room for ±30° rotation
augmentation plus margin), intersected with the image, is resampled at scale
s = min(1.2, 1.5·256 / max(w, h)) in linear light and stored as JPEG. The box (through its side
midpoints), 2D joints, DensePose points and the mask are mapped into the crop; 3D joints and the
body-model parameters of param examples (`Example.body_params`) stay in the world frame and the
crop's camera is stored with the example.

Output folder layout: `<dataset>-<split>-<i:05d>-of-<n:05d>.tfrecord` shards, `manifest.json`
(written last; lists shards and counts) and, while the job runs, `progress.json` plus temporary
`*.tmp` segment files. Example k (in reader order, counting kept examples) goes to shard
k mod n. The job checkpoints every `checkpoint_every` reader items (and when interrupted): it
flushes the open segment files and records their sizes; a rerun truncates the segments to the
recorded sizes, skips the already handled reader items without processing them and appends new
segments. At the end each shard's segments are concatenated into `<shard>.tmp`, which is then
renamed; finished shards are recorded so that an interrupted finalisation also resumes.
"""

import collections
import concurrent.futures
import json
import math
import os
import re
import time

import numpy as np

from nlf_tf.data import rle
from nlf_tf.data import tfrecord
from nlf_tf.data.example import DatasetError, Example, Skip

PROGRESS_FILE = 'progress.json'
MANIFEST_FILE = 'manifest.json'
JOB_KIND = 'nlf-tf-prepare'

# (1/0.85)·1.1·(1/0.85): PosePile's enlargement of the rotation-safe square (≈ 1.522).
CROP_ENLARGE = 1.1 / 0.85 ** 2
MAX_UPSCALE = 1.2
TARGET_BOX_SIDE = 1.5 * 256
GAMMA = 2.2


class PrepareError(RuntimeError):
    """The output folder cannot be used (foreign files, different settings, damaged progress)."""


# --------------------------------------------------------------------------------------------
# Geometry of the efficient crop
# --------------------------------------------------------------------------------------------

def _reproject_points(points, old_camera, new_camera):
    """Maps pixels of old_camera to new_camera (same optical centre); NaN rows stay NaN."""
    if points is None:
        return None
    points = np.asarray(points, np.float32)
    result = np.full(points.shape, np.nan, np.float32)
    finite = np.all(np.isfinite(points), axis=-1)
    if np.any(finite):
        result[finite] = old_camera.reproject_points(points[finite], new_camera)
    return result


def _box_from_side_midpoints(box, old_camera, new_camera):
    """Box (x, y, w, h) in new_camera from the reprojection of the side midpoints of `box`."""
    box = np.asarray(box, np.float64)
    center = box[:2] + box[2:] / 2
    half_w = np.array([box[2] / 2, 0.0])
    half_h = np.array([0.0, box[3] / 2])
    midpoints = np.stack([center - half_w, center + half_w, center - half_h, center + half_h])
    new = old_camera.reproject_points(midpoints, new_camera).astype(np.float64)
    width = np.linalg.norm(new[1] - new[0])
    height = np.linalg.norm(new[3] - new[2])
    new_center = new.mean(axis=0)
    return np.array([new_center[0] - width / 2, new_center[1] - height / 2, width, height])


def _image_extent(image_shape, old_camera, new_camera, samples_per_side=16):
    """(x0, y0, x1, y1) bounding the source image's border as seen by new_camera.

    The border is sampled densely rather than at the corners only, because with distortion or a
    turned camera the image edges become curves.
    """
    height, width = image_shape
    t = np.linspace(0.0, 1.0, samples_per_side)
    xs = -0.5 + t * width
    ys = -0.5 + t * height
    border = np.concatenate([
        np.stack([xs, np.full_like(xs, -0.5)], 1),
        np.stack([xs, np.full_like(xs, height - 0.5)], 1),
        np.stack([np.full_like(ys, -0.5), ys], 1),
        np.stack([np.full_like(ys, width - 0.5), ys], 1)])
    new = old_camera.reproject_points(border, new_camera)
    new = new[np.all(np.isfinite(new), axis=1)]
    if len(new) == 0:
        return None
    return np.concatenate([new.min(axis=0), new.max(axis=0)]).astype(np.float64)


def crop_geometry(example, image_shape):
    """Plans the efficient crop of `example` (source image of `image_shape` = (H, W)).

    Returns (crop_camera, out_shape (H, W), scale) or None when the crop region is empty (the
    box lies outside the image).
    """
    camera = example.camera
    box = np.asarray(example.box, np.float64)
    center = box[:2] + box[2:] / 2
    if example.category in tfrecord.CATEGORIES_WITH_CAMERA:
        aimed = camera.turn_towards(target_image_point=center).undistort()
    else:
        aimed = camera.undistort()  # 2D datasets: pure crop and scale
    new_box = _box_from_side_midpoints(box, camera, aimed)
    new_center = new_box[:2] + new_box[2:] / 2
    w, h = new_box[2], new_box[3]
    cos30, sin30 = math.cos(math.radians(30)), 0.5
    side = max(cos30 * w + sin30 * h, cos30 * h + sin30 * w) * CROP_ENLARGE
    region = np.concatenate([new_center - side / 2, new_center + side / 2])
    extent = _image_extent(image_shape, camera, aimed)
    if extent is None:
        return None
    region[:2] = np.maximum(region[:2], extent[:2])
    region[2:] = np.minimum(region[2:], extent[2:])
    scale = min(MAX_UPSCALE, TARGET_BOX_SIDE / max(w, h))
    out_w = int(round((region[2] - region[0]) * scale))
    out_h = int(round((region[3] - region[1]) * scale))
    if out_w < 1 or out_h < 1:
        return None
    crop_camera = aimed.shift_image(-region[:2]).scale_output(scale)
    return crop_camera, (out_h, out_w), scale


def _source_pixel_map(camera, render_camera, render_shape):
    """Source pixel (x, y) for every render pixel, [h, w, 2] float64 (far outside if behind).

    The render camera is distortion-free, so its pixel rays are a linear map of the pixel grid;
    only the source camera's distortion needs evaluating (forward, no iterations).
    """
    from nlf_tf.data.camera import distort_points
    h, w = render_shape
    m = (camera.rot_world_to_cam @ render_camera.rot_world_to_cam.T @
         np.linalg.inv(render_camera.intrinsic_matrix))
    xs = np.arange(w, dtype=np.float64)[np.newaxis, :, np.newaxis]
    ys = np.arange(h, dtype=np.float64)[:, np.newaxis, np.newaxis]
    rays = xs * m[:, 0] + ys * m[:, 1] + m[:, 2]
    in_front = rays[..., 2] > 1e-9
    with np.errstate(divide='ignore', invalid='ignore'):
        normalized = rays[..., :2] / rays[..., 2:]
    if camera.distortion is not None:
        normalized = distort_points(normalized, camera.distortion)
    k = camera.intrinsic_matrix
    pixels = normalized @ k[:2, :2].T + k[:2, 2]
    pixels[~in_front] = -1e9
    return pixels


def warp_image(image, camera, new_camera, out_shape, antialias_factor=1, preprocess=None):
    """Resamples `image` [H, W, C] of `camera` into `new_camera` (bilinear, black border).

    Gives the same result as `camera.reproject_image` (same pixel convention and border
    blending) but faster: only the part of the source that the output sees is converted with
    `preprocess` (default: to float32); a distortion-free source is then a homography warp done
    by TensorFlow's C++ kernel, a distorted one a per-pixel map sampled with SciPy's
    `map_coordinates` (or the camera module when SciPy is missing). With `antialias_factor`
    a > 1 the image is rendered a times larger and box-filtered down. Returns float32.
    """
    a = int(antialias_factor)
    out_h, out_w = out_shape
    render_camera = new_camera
    if a > 1:
        # Render pixel (i, j) covers output pixel ((i + 0.5) / a - 0.5, ...).
        render_camera = new_camera.scale_output(a).shift_image(((a - 1) / 2, (a - 1) / 2))
    render_h, render_w = out_h * a, out_w * a
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., np.newaxis]
    if preprocess is None:
        preprocess = lambda x: x.astype(np.float32)  # noqa: E731
    src_h, src_w = image.shape[:2]

    if camera.distortion is None:
        homography = camera.homography_to(render_camera)
        inverse = np.linalg.inv(homography)
        corners = np.array([[0, 0, 1], [render_w - 1, 0, 1], [0, render_h - 1, 1],
                            [render_w - 1, render_h - 1, 1]], np.float64) @ inverse.T
        pixel_map = None
        footprint = corners[:, :2] / corners[:, 2:] if np.all(corners[:, 2] > 0) else None
    else:
        pixel_map = _source_pixel_map(camera, render_camera, (render_h, render_w))
        footprint = pixel_map.reshape(-1, 2)
        footprint = footprint[footprint[:, 0] > -1e8]
    # Source region read by the bilinear sampling (one pixel of margin), clipped to the image.
    if footprint is not None and len(footprint):
        x0, y0 = np.clip(np.floor(footprint.min(axis=0)) - 1, 0, [src_w, src_h]).astype(int)
        x1, y1 = np.clip(np.ceil(footprint.max(axis=0)) + 2, 0, [src_w, src_h]).astype(int)
    else:
        x0, y0, x1, y1 = 0, 0, src_w, src_h
    if x1 <= x0 or y1 <= y0:
        return np.zeros((out_h, out_w, image.shape[2]), np.float32)
    region = np.ascontiguousarray(preprocess(image[y0:y1, x0:x1]), np.float32)

    if pixel_map is None:
        import tensorflow as tf
        # The op wants the map from OUTPUT to INPUT pixels (of the region), with H[2, 2] = 1.
        to_region = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64) @ inverse
        to_region = (to_region / to_region[2, 2]).reshape(-1)[:8]
        warped = tf.raw_ops.ImageProjectiveTransformV3(
            images=region[np.newaxis], transforms=to_region[np.newaxis].astype(np.float32),
            output_shape=np.array([render_h, render_w], np.int32),
            fill_value=np.float32(0), interpolation='BILINEAR', fill_mode='CONSTANT')[0].numpy()
    else:
        try:
            import scipy.ndimage
        except ImportError:  # slower pure-NumPy path of the camera module
            full = np.zeros(image.shape, np.float32)
            full[y0:y1, x0:x1] = region
            warped = camera.reproject_image(full, render_camera, (render_h, render_w),
                                            interpolation='linear', border_value=0)
        else:
            coords = [pixel_map[..., 1].reshape(-1) - y0, pixel_map[..., 0].reshape(-1) - x0]
            # 'grid-constant' blends with the border value outside, like the camera module.
            warped = np.stack([scipy.ndimage.map_coordinates(
                region[..., c], coords, order=1, mode='grid-constant', cval=0.0)
                for c in range(region.shape[2])], axis=-1).reshape(render_h, render_w, -1)
    warped = np.asarray(warped, np.float32)
    if a > 1:
        warped = warped.reshape(out_h, a, out_w, a, -1).mean(axis=(1, 3))
    return warped


def _to_linear_light(image):
    return (image.astype(np.float32) * np.float32(1 / 255)) ** np.float32(GAMMA)


def efficient_crop(example, image):
    """Crops `example` (source frame) with `image` (uint8 [H, W, 3]).

    Returns (new Example in the crop frame, crop image uint8) or a Skip.
    """
    plan = crop_geometry(example, image.shape[:2])
    if plan is None:
        return Skip(example.example_id, 'box outside image', example.source, 'box')
    crop_camera, out_shape, scale = plan
    camera = example.camera
    # Antialias (render at 2x, box-filter down) when shrinking, as PosePile does.
    antialias = 2 if scale < 1 else 1

    # Resample in linear light (gamma 2.2), like PosePile, so that edges keep their brightness.
    warped = warp_image(image, camera, crop_camera, out_shape, antialias,
                        preprocess=_to_linear_light)
    crop = np.round(np.clip(warped, 0.0, 1.0) ** (1.0 / GAMMA) * 255.0).astype(np.uint8)

    mask_rle = None
    if example.mask_rle is not None:
        try:
            mask = rle.decode(example.mask_rle)
        except ValueError as e:
            raise DatasetError(example.source, 'mask_rle', str(e)) from None
        if mask.shape != tuple(image.shape[:2]):
            return Skip(example.example_id, 'mask size differs from image size',
                        example.source, 'mask_rle')
        warped_mask = warp_image(mask, camera, crop_camera, out_shape, antialias)[..., 0]
        mask_rle = rle.encode(warped_mask > 0.5)  # PosePile: > 127 of 255

    new = Example(
        dataset=example.dataset, category=example.category, example_id=example.example_id,
        image_path=example.image_path, image=None, camera=crop_camera,
        box=_box_from_side_midpoints(example.box, camera, crop_camera).astype(np.float32),
        joints2d=_reproject_points(example.joints2d, camera, crop_camera),
        joints3d=example.joints3d,
        dense_imcoords=_reproject_points(example.dense_imcoords, camera, crop_camera),
        dense_faces=example.dense_faces, dense_barycoords=example.dense_barycoords,
        mask_rle=mask_rle, dense_canonical=example.dense_canonical,
        # World-frame body-model parameters do not depend on the camera: kept as they are.
        body_params=example.body_params)
    return new, crop


# --------------------------------------------------------------------------------------------
# Per-example processing: load, crop, encode, serialise
# --------------------------------------------------------------------------------------------

def _encode_jpeg(image, quality):
    import tensorflow as tf
    return tf.io.encode_jpeg(image, quality=quality).numpy()


def _load_image(example):
    """(uint8 [H, W, 3] image, original encoded bytes or None) or a Skip for corrupt files."""
    if example.image is not None:
        return example.image, None
    import tensorflow as tf
    try:
        with open(example.image_path, 'rb') as f:
            data = f.read()
    except FileNotFoundError:
        raise DatasetError(example.image_path, 'image_path', 'image file not found') from None
    except OSError as e:
        raise DatasetError(example.image_path, 'image_path', f'cannot read: {e}') from None
    try:
        image = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    except (tf.errors.OpError, ValueError):
        return Skip(example.example_id, 'corrupt image', example.image_path, 'image_path'), None
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        return Skip(example.example_id, 'corrupt image', example.image_path, 'image_path'), None
    return image, data


def process_example(example, crop=True, jpeg_quality=95):
    """A reader Example -> serialised TFRecord bytes, or a Skip."""
    example.validate()
    if example.box[2] <= 0 or example.box[3] <= 0:
        return Skip(example.example_id, 'zero-area box', example.source, 'box')
    image, data = _load_image(example)
    if isinstance(image, Skip):
        return image
    if crop:
        result = efficient_crop(example, image)
        if isinstance(result, Skip):
            return result
        stored, crop_image = result
        jpeg = _encode_jpeg(crop_image, jpeg_quality)
        height, width = crop_image.shape[:2]
    else:
        if example.camera.distortion is not None:
            raise DatasetError(example.source, 'camera.distortion',
                               'the camera has lens distortion, so the original image cannot be '
                               'stored as is; enable the crop (--prepare_crop) to undistort it')
        stored = example
        if example.mask_rle is not None:
            size = [int(v) for v in example.mask_rle['size']]
            if size != list(image.shape[:2]):
                return Skip(example.example_id, 'mask size differs from image size',
                            example.source, 'mask_rle')
        if data is not None and data[:2] == b'\xff\xd8':
            jpeg = data  # the original JPEG, byte for byte
        else:
            jpeg = _encode_jpeg(image, jpeg_quality)
        height, width = image.shape[:2]
    return tfrecord.serialize_example(stored, jpeg, height, width)


# --------------------------------------------------------------------------------------------
# Output folder bookkeeping
# --------------------------------------------------------------------------------------------

def _write_json_atomic(path, data):
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path):
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise PrepareError(f'{path} cannot be read as JSON ({e}); it is not ours or damaged. '
                           f'Choose another output folder or remove it.') from None
    if not isinstance(data, dict) or data.get('job') != JOB_KIND:
        raise PrepareError(f'{path} was not written by nlf-tf-prepare; refusing to overwrite '
                           f'it. Choose another output folder.')
    return data


def _our_file_pattern(dataset, split):
    return re.compile(rf'^{re.escape(dataset)}-{re.escape(split)}-\d{{5}}-of-\d{{5}}'
                      rf'\.tfrecord(\.s\d+)?(\.tmp)?$')


def _segment_name(shard_file, session):
    return f'{shard_file}.s{session:04d}.tmp'


def _settings_mismatch(saved, settings):
    diffs = [f'{k}={saved.get(k)!r} (now {v!r})' for k, v in settings.items()
             if saved.get(k) != v]
    return ', '.join(diffs)


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------

def prepare_dataset(examples, out_dir, dataset, split, num_shards=16, crop=True,
                    progress_every=100, log=print, limit=None, checkpoint_every=500,
                    jpeg_quality=95, num_workers=1, max_listed_skips=10):
    """Runs (or resumes) the prepare job; returns the manifest dict (also in manifest.json).

    Args:
        examples: an iterable of Example/Skip records, or a zero-argument callable returning one
            (e.g. `functools.partial(reader.iter_examples, root, split)`). It is iterated once
            per run; a resumed run iterates it again from the start and skips the items handled
            before without processing them, so the reader must yield the same order every time.
        out_dir: output folder (created if needed). One dataset split per folder.
        dataset, split: names used in the shard file names and recorded in the manifest.
        num_shards: number of output files (examples are dealt round-robin).
        crop: store efficient crops (default); False stores the original images (only for
            cameras without distortion).
        progress_every: log a progress line every this many reader items (0: never).
        log: function receiving progress/summary lines.
        limit: stop after this many kept examples (for trying things out).
        checkpoint_every: record resumable progress every this many reader items.
        jpeg_quality: quality of re-encoded JPEGs.
        num_workers: threads cropping/encoding in parallel (the output does not depend on it).
        max_listed_skips: how many skipped examples are listed individually.
    Raises:
        DatasetError: structural problem of the input (message names file and field).
        PrepareError: the output folder holds foreign files or a job with other settings.
    """
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f'num_shards must be a positive integer, got {num_shards!r}')
    if limit is not None and limit < 1:
        raise ValueError(f'limit must be positive or None, got {limit!r}')
    for name, value in (('dataset', dataset), ('split', split)):
        if not value or not re.fullmatch(r'[A-Za-z0-9_.]+', value):
            raise ValueError(f'{name} must be a plain name (letters, digits, _ and .), '
                             f'got {value!r}')
    os.makedirs(out_dir, exist_ok=True)
    settings = {'job': JOB_KIND, 'schema_version': tfrecord.SCHEMA_VERSION, 'dataset': dataset,
                'split': split, 'num_shards': num_shards, 'crop': bool(crop), 'limit': limit,
                'jpeg_quality': jpeg_quality}
    progress_path = os.path.join(out_dir, PROGRESS_FILE)
    manifest_path = os.path.join(out_dir, MANIFEST_FILE)
    shard_files = [tfrecord.shard_name(dataset, split, i, num_shards) for i in range(num_shards)]

    if os.path.exists(manifest_path):
        manifest = _read_json(manifest_path)
        mismatch = _settings_mismatch(manifest, settings)
        if mismatch:
            raise PrepareError(f'{out_dir} already holds a finished preparation with other '
                               f'settings: {mismatch}. Choose another output folder.')
        missing = [s['file'] for s in manifest['shards']
                   if not os.path.isfile(os.path.join(out_dir, s['file']))]
        if missing:
            raise PrepareError(f'{manifest_path} lists shards that are missing: '
                               f'{", ".join(missing[:3])}. Delete the folder and rerun.')
        log(f'{dataset}/{split}: already prepared in {out_dir} '
            f'({manifest["num_examples"]} examples); nothing to do.')
        return manifest

    pattern = _our_file_pattern(dataset, split)
    if os.path.exists(progress_path):
        state = _read_json(progress_path)
        mismatch = _settings_mismatch(state, settings)
        if mismatch:
            raise PrepareError(f'{out_dir} holds an unfinished preparation with other settings: '
                               f'{mismatch}. Rerun with the same settings to resume, or choose '
                               f'another output folder.')
        _restore_segments(out_dir, state, pattern)
        state['session'] += 1
        log(f'{dataset}/{split}: resuming in {out_dir} after {state["items_done"]} reader items '
            f'({sum(state["shard_counts"])} examples kept).')
    else:
        foreign = sorted(f for f in os.listdir(out_dir) if pattern.match(f))
        if foreign:
            raise PrepareError(
                f'{out_dir} already contains {", ".join(foreign[:3])}'
                f'{" ..." if len(foreign) > 3 else ""} but no {PROGRESS_FILE} or {MANIFEST_FILE}; '
                f'refusing to overwrite files that this job did not write. Choose another output '
                f'folder or remove them.')
        state = dict(settings, session=0, items_done=0, iteration_done=False, category=None,
                     shard_counts=[0] * num_shards, skipped={}, skipped_examples=[],
                     last_item_id=None, segments=[[] for _ in range(num_shards)],
                     finished_shards=[])
        _write_json_atomic(progress_path, state)

    if not state['iteration_done']:
        _run_iteration(examples, out_dir, shard_files, state, progress_path, crop=crop,
                       progress_every=progress_every, log=log, limit=limit,
                       checkpoint_every=checkpoint_every, jpeg_quality=jpeg_quality,
                       num_workers=num_workers, max_listed_skips=max_listed_skips)

    # Finalisation: each shard's segments -> <shard>.tmp -> <shard>, recorded one by one.
    for index, shard_file in enumerate(shard_files):
        if index in state['finished_shards']:
            continue
        segments = [os.path.join(out_dir, name) for name, _ in state['segments'][index]]
        tfrecord.concatenate_atomically(segments, os.path.join(out_dir, shard_file))
        state['finished_shards'].append(index)
        _write_json_atomic(progress_path, state)
        for path in segments:
            os.remove(path)

    manifest = dict(settings)
    manifest.update(
        category=state['category'],
        shards=[{'file': f, 'num_examples': n} for f, n in zip(shard_files, state['shard_counts'])],
        num_examples=sum(state['shard_counts']),
        num_read=state['items_done'],
        num_skipped=sum(state['skipped'].values()),
        skipped=dict(sorted(state['skipped'].items())),
        skipped_examples=state['skipped_examples'])
    _write_json_atomic(manifest_path, manifest)
    os.remove(progress_path)
    for line in summary_lines(manifest):
        log(line)
    return manifest


def summary_lines(manifest):
    """Human-readable lines with the kept and skipped counts of a manifest."""
    lines = [f'{manifest["dataset"]}/{manifest["split"]}: kept {manifest["num_examples"]} '
             f'examples in {manifest["num_shards"]} shards, skipped {manifest["num_skipped"]}.']
    for reason, count in manifest['skipped'].items():
        lines.append(f'  skipped {count}: {reason}')
    for skip in manifest['skipped_examples']:
        lines.append(f'  e.g. {skip["example_id"]}: {skip["reason"]} '
                     f'(file {skip["file"]}, field {skip["field"]})')
    return lines


def _restore_segments(out_dir, state, pattern):
    """Truncates listed segments to their committed size and removes unlisted temporary files."""
    listed = set()
    for index, segments in enumerate(state['segments']):
        if index in state['finished_shards']:
            continue
        for name, size in segments:
            path = os.path.join(out_dir, name)
            listed.add(name)
            if not os.path.isfile(path) or os.path.getsize(path) < size:
                raise PrepareError(f'{path} is missing or shorter than recorded in '
                                   f'{PROGRESS_FILE}; the folder is damaged. Delete it and rerun.')
            os.truncate(path, size)
    for name in os.listdir(out_dir):
        if name.endswith('.tmp') and pattern.match(name) and name not in listed:
            os.remove(os.path.join(out_dir, name))  # left by a run that died before checkpointing


def _items_to_process(examples, state):
    """Reader items not handled in earlier runs, as (index, item); checks the reader's order."""
    iterable = examples() if callable(examples) else examples
    done = state['items_done']
    for index, item in enumerate(iterable):
        if index < done:
            if index == done - 1 and state['last_item_id'] is not None:
                item_id = getattr(item, 'example_id', None)
                if item_id != state['last_item_id']:
                    raise PrepareError(
                        f'cannot resume: reader item {index} is {item_id!r} but the earlier run '
                        f'had {state["last_item_id"]!r} there (the input changed?). Delete the '
                        f'output folder and rerun.')
            continue
        yield index, item


def _process_item(item, crop, jpeg_quality):
    if isinstance(item, Skip):
        return item
    if not isinstance(item, Example):
        raise TypeError(f'the reader must yield Example or Skip records, got '
                        f'{type(item).__name__}')
    return process_example(item, crop=crop, jpeg_quality=jpeg_quality)


def _processed(items, fn, num_workers):
    """Yields (index, item, fn(item)) in order, computing up to 2*num_workers ahead in threads."""
    if num_workers <= 1:
        for index, item in items:
            yield index, item, fn(item)
        return
    executor = concurrent.futures.ThreadPoolExecutor(num_workers)
    try:
        pending = collections.deque()
        for index, item in items:
            pending.append((index, item, executor.submit(fn, item)))
            if len(pending) >= 2 * num_workers:
                index, item, future = pending.popleft()
                yield index, item, future.result()
        while pending:
            index, item, future = pending.popleft()
            yield index, item, future.result()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _run_iteration(examples, out_dir, shard_files, state, progress_path, *, crop,
                   progress_every, log, limit, checkpoint_every, jpeg_quality, num_workers,
                   max_listed_skips):
    num_shards = len(shard_files)
    session = state['session']
    open_shards = [i for i in range(num_shards) if i not in state['finished_shards']]
    for index in open_shards:
        state['segments'][index].append([_segment_name(shard_files[index], session), 0])
    _write_json_atomic(progress_path, state)  # lists the new segments before they exist
    writers = {i: tfrecord.SegmentWriter(os.path.join(out_dir, state['segments'][i][-1][0]))
               for i in open_shards}

    def checkpoint():
        for i, writer in writers.items():
            state['segments'][i][-1][1] = writer.flush()
        _write_json_atomic(progress_path, state)

    dataset, split = state['dataset'], state['split']
    start_time = time.monotonic()
    start_items = state['items_done']
    in_commit = False
    results = None
    try:
        items = _items_to_process(examples, state)
        results = _processed(items, lambda item: _process_item(item, crop, jpeg_quality),
                             num_workers)
        for index, item, result in results:
            if isinstance(result, bytes):
                if state['category'] is None:
                    state['category'] = item.category
                elif item.category != state['category']:
                    raise DatasetError(item.source, 'category',
                                       f'{item.category!r} differs from the earlier examples\' '
                                       f'{state["category"]!r}')
                if item.dataset != dataset:
                    raise DatasetError(item.source, 'dataset',
                                       f'{item.dataset!r} differs from the job\'s {dataset!r}')
                shard = sum(state['shard_counts']) % num_shards
                # Between here and the end of the commit the state is briefly inconsistent;
                # an interrupt there must not be checkpointed.
                in_commit = True
                writers[shard].write(result)
                state['shard_counts'][shard] += 1
            else:
                in_commit = True
                state['skipped'][result.reason] = state['skipped'].get(result.reason, 0) + 1
                if len(state['skipped_examples']) < max_listed_skips:
                    state['skipped_examples'].append(
                        {'example_id': result.example_id, 'reason': result.reason,
                         'file': result.file, 'field': result.field})
            state['items_done'] = index + 1
            state['last_item_id'] = getattr(item, 'example_id', None)
            in_commit = False

            done_here = state['items_done'] - start_items
            if progress_every and state['items_done'] % progress_every == 0:
                rate = done_here / max(time.monotonic() - start_time, 1e-9)
                log(f'{dataset}/{split}: {state["items_done"]} read, '
                    f'{sum(state["shard_counts"])} kept, {sum(state["skipped"].values())} '
                    f'skipped ({rate:.1f} items/s)')
            if checkpoint_every and state['items_done'] % checkpoint_every == 0:
                checkpoint()
            if limit is not None and sum(state['shard_counts']) >= limit:
                break
    except BaseException:
        if not in_commit:
            checkpoint()
        for writer in writers.values():
            writer.close()
        raise
    finally:
        if results is not None:
            results.close()  # stops the worker threads when leaving early
    for i, writer in writers.items():
        state['segments'][i][-1][1] = writer.close()
    state['iteration_done'] = True
    _write_json_atomic(progress_path, state)
