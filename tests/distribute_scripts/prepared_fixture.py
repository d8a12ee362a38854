"""A tiny `nlf-tf-prepare`-style folder for the sharding and skip-counter tests: COCO kp2d
records whose images are a uniform grey level per shard file, so the crops the pipeline makes
(with geometric and appearance augmentation off) tell which file each example came from.
Used by tests/test_distribute.py (as distribute_scripts.prepared_fixture) and by the scripts
next to it (as prepared_fixture)."""

import json
import os

import numpy as np

HEIGHT, WIDTH = 48, 64
# Augmentation off: a crop is the box warped to proc_side, every pixel the file's grey level.
NO_AUGMENTATION = dict(geom_aug=False, hflip_aug=False, color_aug=False, jpeg_aug_prob=0.0,
                       occlude_aug_prob=0.0, partial_visibility_prob=0.0,
                       background_aug_prob=0.0)


def grey_level(file_index):
    return 40 + 50 * file_index


def write_prepared_coco(folder, num_files=4, records_per_file=3, bad_records=()):
    """Writes `num_files` shards into `folder` plus its manifest.json. File f holds
    `records_per_file` good COCO kp2d records of grey level `grey_level(f)`; each (f, r) in
    `bad_records` adds, after the good records of file f, r records whose JPEG bytes are
    not an image (the pipeline skips and counts them). Returns the shard paths."""
    import tensorflow as tf
    from nlf_tf.data import tfrecord
    from nlf_tf.data.camera import Camera
    from nlf_tf.data.example import Example

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(1)
    bad = dict(bad_records)
    paths, counts = [], []
    for f in range(num_files):
        path = os.path.join(folder, f'coco-train-{f:05d}-of-{num_files:05d}.tfrecord')
        image = np.full((HEIGHT, WIDTH, 3), grey_level(f), np.uint8)
        jpeg = tf.io.encode_jpeg(image, quality=95).numpy()
        with tf.io.TFRecordWriter(path) as writer:
            for r in range(records_per_file + bad.get(f, 0)):
                joints = np.stack([rng.uniform(20, 44, 17), rng.uniform(12, 36, 17)], 1)
                example = Example(
                    dataset='coco', category='kp2d', example_id=f'{f}/{r}', image_path=None,
                    image=image, camera=Camera.from_fov(55, (HEIGHT, WIDTH)),
                    box=[16, 8, 32, 32], joints2d=joints.astype(np.float32)).validate()
                good = r < records_per_file
                writer.write(tfrecord.serialize_example(
                    example, jpeg if good else b'not a jpeg', HEIGHT, WIDTH))
        paths.append(path)
        counts.append(records_per_file + bad.get(f, 0))
    manifest = dict(dataset='coco', split='train', category='kp2d', num_examples=sum(counts),
                    shards=[dict(file=os.path.basename(p), num_examples=n)
                            for p, n in zip(paths, counts)])
    with open(os.path.join(folder, 'manifest.json'), 'w') as f:
        json.dump(manifest, f)
    return paths


def file_of_crops(images):
    """The shard file index of each crop (float images [B, S, S, 3] in [0, 1]), from the
    median grey level of its centre; -1 for a black placeholder (all records bad)."""
    images = np.asarray(images)
    s = images.shape[1]
    centre = np.median(images[:, s // 4:3 * s // 4, s // 4:3 * s // 4, :], axis=(1, 2, 3)) * 255
    index = np.round((centre - 40) / 50).astype(int)
    index[centre < 20] = -1
    return index
