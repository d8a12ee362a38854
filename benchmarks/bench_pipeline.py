"""(d) Input pipeline throughput: examples/s of the tf.data training pipeline vs decode-only vs a
straightforward Python implementation, side by side on the same prepared fixture in one run.

The fixture is written with `nlf_tf.data.prepare.prepare_dataset` into a temporary folder:
COCO-style kp2d examples (the real 'coco' spec, 17 joints) whose stored images are 480x640 JPEGs
(quality 95) of smooth synthetic content, in 4 shards. Measured:
  1. pipeline: `make_training_dataset` with the default augmentation settings (geometry, flip,
     colour, JPEG p=0.25, random erasing), 256 px crops, 1024 points, kp2d sub-batch 32;
  2. decode-only: TFRecordDataset -> parse the JPEG field -> tf.io.decode_jpeg, parallel map,
     batched by 32 (the floor any pipeline on these files pays);
  3. python: the same per-example steps written plainly in Python/NumPy (proto parsing, eager
     JPEG decode, crop camera with `nlf_tf.data.camera`, `Camera.reproject_image` warp,
     colour jitter incl. HSV in NumPy, JPEG re-encoding, random erasing, GT transform, filler
     points) fed through `tf.data.Dataset.from_generator` and batched by 32.
Each is run for a fixed wall-clock budget after a warm-up of a quarter of it; prints examples/s
and the ratios pipeline/decode-only and pipeline/python.

  python benchmarks/bench_pipeline.py [--quick] [--examples=N] [--seconds=S]
"""

import _common  # noqa: F401 (sets up sys.path and the TF log level)

import argparse
import math
import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf

from nlf_tf import config, joint_table, specs
from nlf_tf.data import pipeline, prepare
from nlf_tf.data.camera import Camera
from nlf_tf.data.example import Example

HEIGHT, WIDTH = 480, 640
BATCH = 32
SIDE = 256
NUM_POINTS = 1024
NUM_SHARDS = 4


# ----------------------------------------------------------------------------------------
# Fixture
# ----------------------------------------------------------------------------------------

def _synthetic_photo(rng):
    """Smooth colour field with some texture: compresses like a photo (~50-100 kB at q95)."""
    coarse = rng.uniform(0, 255, (1, 12, 16, 3)).astype(np.float32)
    image = tf.image.resize(coarse, (HEIGHT, WIDTH), method='bicubic')[0].numpy()
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _examples(n, num_joints):
    camera = Camera.from_fov(8, (HEIGHT, WIDTH))
    for i in range(n):
        rng = np.random.default_rng(i)
        w, h = rng.uniform(120, 260), rng.uniform(260, 420)
        box = np.array([rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h), w, h], np.float32)
        joints = box[:2] + rng.uniform(0.05, 0.95, (num_joints, 2)).astype(np.float32) * box[2:]
        joints[rng.uniform(size=num_joints) < 0.2] = np.nan
        yield Example(dataset='coco', category='kp2d', example_id=f'bench{i}#0', image_path=None,
                      image=_synthetic_photo(rng), camera=camera, box=box, joints2d=joints)


def write_fixture(folder, n):
    num_joints = len(specs.load_spec('coco')['joint_names'])
    prepare.prepare_dataset(_examples(n, num_joints), folder, 'coco', 'bench',
                            num_shards=NUM_SHARDS, crop=False, log=lambda *a, **k: None,
                            num_workers=2)
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith('.tfrecord'))


# ----------------------------------------------------------------------------------------
# The three input pipelines
# ----------------------------------------------------------------------------------------

def training_pipeline(files, seed=1):
    cfg = config.default_config(seed=seed, proc_side=SIDE, num_points=NUM_POINTS,
                                batch_size=0, batch_size_parametric=0, batch_size_densepose=0,
                                batch_size_2d=BATCH)
    names, _ = joint_table.build_joint_table(['coco'])
    data = pipeline.make_training_dataset(cfg, [('coco', 'kp2d', files, 1.0)], names)
    return data.map(lambda batch: batch['kp2d'])


def decode_only(files):
    def decode(serialized):
        jpeg = tf.io.parse_single_example(
            serialized, {'image_jpeg': tf.io.FixedLenFeature([], tf.string)})['image_jpeg']
        image = tf.io.decode_jpeg(jpeg, channels=3)
        return tf.ensure_shape(image, [HEIGHT, WIDTH, 3])

    return (tf.data.TFRecordDataset(files).repeat()
            .map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH)
            .prefetch(tf.data.AUTOTUNE))


def _rgb_to_hsv(rgb):
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc, minc = rgb.max(-1), rgb.min(-1)
    delta = maxc - minc
    s = np.where(maxc > 0, delta / np.maximum(maxc, 1e-12), 0.0)
    d = np.maximum(delta, 1e-12)
    h = np.where(maxc == r, (g - b) / d, np.where(maxc == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, s, maxc], -1)


def _hsv_to_rgb(hsv):
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(np.int64) % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(hsv.shape, hsv.dtype)
    for k, channels in enumerate(choices):
        mask = i == k
        for c in range(3):
            out[..., c][mask] = channels[c][mask]
    return out


def _colour_jitter(image, rng):
    brightness = rng.uniform(-0.125, 0.125)
    contrast, saturation = rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5)
    hue = rng.uniform(-0.2, 0.2)
    ops = [lambda x: x + brightness, lambda x: (x - 0.5) * contrast + 0.5]

    def hue_op(x):
        hsv = _rgb_to_hsv(x)
        hsv[..., 0] = (hsv[..., 0] + hue) % 1.0
        return _hsv_to_rgb(hsv)

    def saturation_op(x):
        hsv = _rgb_to_hsv(x)
        hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 1)
        return _hsv_to_rgb(hsv)

    for index in rng.permutation(4):
        image = np.clip((ops + [hue_op, saturation_op])[index](image), 0.0, 1.0)
    return image


def _random_erase(image, rng):
    for _ in range(16):
        area = rng.uniform(0, 1 / 3) * SIDE * SIDE
        aspect = rng.uniform(0.3, 1 / 0.3)
        h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if h <= SIDE and w <= SIDE:
            y, x = rng.integers(0, SIDE - h + 1), rng.integers(0, SIDE - w + 1)
            image[y:y + h, x:x + w] = rng.integers(0, 256, (h, w, 3)) / 255.0
            return image
    return image


def python_example(serialized, rows, mirror, rng):
    """One augmented example, plainly in Python/NumPy (the same steps as make_example)."""
    feature = tf.train.Example.FromString(serialized).features.feature
    floats = lambda name: np.array(feature[name].float_list.value, np.float64)  # noqa: E731
    image = tf.io.decode_jpeg(feature['image_jpeg'].bytes_list.value[0], channels=3).numpy()
    stored = Camera(floats('intrinsics').reshape(3, 3), floats('rotation').reshape(3, 3),
                    floats('optical_center'), world_up=floats('world_up'))
    box = floats('box')
    joints = floats('joints2d').reshape(-1, 2)

    # Geometry (2D path): box-centre shift, zoom to the long side, zoom and roll aug, flip.
    angle, radius = rng.uniform(0, 2 * math.pi), math.sqrt(rng.uniform()) * 0.1
    centre = box[:2] + box[2:] / 2 + radius * max(box[2:]) * np.array(
        [math.cos(angle), math.sin(angle)])
    max_roll = math.pi if rng.uniform() < 0.1 else math.radians(20)
    flip = rng.uniform() < 0.5
    crop = stored.zoom(SIDE / max(box[2:]) * rng.uniform(0.75, 1.25))
    crop = crop.rotate(roll=rng.uniform(-max_roll, max_roll))
    if flip:
        crop = crop.horizontal_flip()
    crop = crop.shift_image((SIDE - 1) / 2 - stored.reproject_points(centre[None], crop)[0])
    warped = stored.reproject_image(image, crop, (SIDE, SIDE), border_value=0)

    # Appearance: colour jitter, JPEG re-encoding (p 0.25), random erasing (p 0.25).
    out = _colour_jitter(warped.astype(np.float32) / 255.0, rng)
    if rng.uniform() < 0.25:
        encoded = tf.io.encode_jpeg(np.round(out * 255).astype(np.uint8),
                                    quality=int(rng.integers(15, 60)))
        out = tf.io.decode_jpeg(encoded).numpy() / 255.0
    if rng.uniform() < 0.25:
        out = _random_erase(out, rng)

    # Targets: valid joints mirrored and reprojected, then filler points.
    valid = np.all(np.isfinite(joints), 1) & (joints[:, 1] <= 0.95 * image.shape[0]) & np.all(
        joints >= 0, 1)
    perm = mirror if flip else np.arange(len(joints))
    joints, valid = joints[perm], valid[perm]
    coords = stored.reproject_points(joints[valid], crop)
    n = len(coords)
    point_ids = np.full(NUM_POINTS, -1, np.int32)
    point_ids[:n] = rows[perm][valid]
    coords2d = np.zeros((NUM_POINTS, 2), np.float32)
    coords2d[:n] = coords
    canonical = rng.uniform(pipeline.FILLER_BOX[0], pipeline.FILLER_BOX[1], (NUM_POINTS, 3))
    canonical[:n] = 0
    return dict(image=out.astype(np.float32), intrinsics=crop.intrinsic_matrix.astype(np.float32),
                point_ids=point_ids, canonical_points=canonical.astype(np.float32),
                point_validity=np.arange(NUM_POINTS) < n, coords2d_true=coords2d)


def python_pipeline(files, seed=1):
    spec = specs.load_spec('coco')
    names, _ = joint_table.build_joint_table(['coco'])
    table = pipeline.DatasetTable('coco', spec, names, 'kp2d')

    def generate():
        rng = np.random.default_rng(seed)
        for serialized in tf.data.TFRecordDataset(files).repeat().shuffle(256, seed=seed):
            yield python_example(serialized.numpy(), table.rows, table.mirror, rng)

    signature = dict(
        image=tf.TensorSpec([SIDE, SIDE, 3], tf.float32),
        intrinsics=tf.TensorSpec([3, 3], tf.float32),
        point_ids=tf.TensorSpec([NUM_POINTS], tf.int32),
        canonical_points=tf.TensorSpec([NUM_POINTS, 3], tf.float32),
        point_validity=tf.TensorSpec([NUM_POINTS], tf.bool),
        coords2d_true=tf.TensorSpec([NUM_POINTS, 2], tf.float32))
    return (tf.data.Dataset.from_generator(generate, output_signature=signature)
            .batch(BATCH).prefetch(tf.data.AUTOTUNE))


# ----------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------

def examples_per_second(dataset, seconds, warmup_batches=2, warmup_seconds=None,
                        min_batches=3):
    """Iterates `dataset` (batches of BATCH) for about `seconds` and returns (examples/s,
    batches timed). Before the clock starts: `warmup_batches` (graph tracing, files opening)
    and then batches for `warmup_seconds` (default seconds / 4), which drains what the
    prefetch buffers stored during the tracing, so that the timed part is steady state."""
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    warmup_end = time.perf_counter() + (seconds / 4 if warmup_seconds is None else warmup_seconds)
    while time.perf_counter() < warmup_end:
        next(iterator)
    count = 0
    start = time.perf_counter()
    while count < min_batches or time.perf_counter() - start < seconds:
        next(iterator)  # eager tensors: the batch is complete when returned
        count += 1
    return count * BATCH / (time.perf_counter() - start), count


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='small fixture and short budgets (about 40 s in all)')
    parser.add_argument('--examples', type=int, default=None,
                        help='examples in the fixture (default 200, --quick 64)')
    parser.add_argument('--seconds', type=float, default=None,
                        help='measuring budget per pipeline (default 12, --quick 3)')
    parser.add_argument('--keep', default=None,
                        help='write the fixture into this folder and keep it (an existing finished '
                             'fixture there is reused as is)')
    args = parser.parse_args()
    n = args.examples or (64 if args.quick else 200)
    seconds = args.seconds or (3.0 if args.quick else 12.0)

    folder = args.keep or tempfile.mkdtemp(prefix='bench_pipeline_')
    try:
        start = time.perf_counter()
        files = write_fixture(folder, n)
        size = sum(os.path.getsize(f) for f in files)
        print(f'fixture: {n} examples, {HEIGHT}x{WIDTH} JPEG q95, {len(files)} shards, '
              f'{size / n / 1e3:.0f} kB/example (written in {time.perf_counter() - start:.1f} s)')
        print(f'TF {tf.__version__}, {os.cpu_count()} CPU cores; output {BATCH} x {SIDE}px crops, '
              f'{NUM_POINTS} points; {seconds:.0f} s per measurement')
        results = {}
        for name, make in (('pipeline', training_pipeline), ('decode-only', decode_only),
                           ('python', python_pipeline)):
            rate, batches = examples_per_second(make(files), seconds)
            results[name] = rate
            print(f'{name:12s} {rate:8.1f} examples/s  ({batches} batches)', flush=True)
        print(f'RATIO pipeline/decode-only = {results["pipeline"] / results["decode-only"]:.2f}')
        print(f'RATIO pipeline/python      = {results["pipeline"] / results["python"]:.2f}')
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == '__main__':
    main()
