"""Tests of the tf.data training pipeline on tiny TFRecords written here (synthetic images with
coloured dots at known joints, known cameras)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from nlf_tf import config
from nlf_tf.body_models import kinds
from nlf_tf.data import augmentation
from nlf_tf.data import param_sampling
from nlf_tf.data import pipeline
from nlf_tf.data import tfrecord

JOINTS = ['pelv', 'lwri', 'rwri']
SPECS = {
    'toy2d': dict(joint_names=JOINTS, suffix='_toy', mirror_pairs=[['lwri', 'rwri']]),
    'toy3d': dict(joint_names=JOINTS, suffix='_toy', mirror_pairs=[['lwri', 'rwri']]),
    'toydense': dict(joint_names=JOINTS, suffix='_toy', mirror_pairs=[['lwri', 'rwri']]),
}
# Global table in another order than the dataset, so point_ids must be looked up by name.
TABLE = ['other', 'rwri_toy', 'pelv_toy', 'lwri_toy']
ROW = {'pelv': 2, 'lwri': 3, 'rwri': 1}
# Dot colour per joint: pelv blue, lwri red, rwri green.
COLOURS = {'pelv': (0, 0, 255), 'lwri': (255, 0, 0), 'rwri': (0, 255, 0)}
HEIGHT, WIDTH = 60, 80
SIDE, POINTS = 48, 12


# ----------------------------------------------------------------------------------------
# Fixture writer (own tf.train.Example code with the COMMON SCHEMA feature names)
# ----------------------------------------------------------------------------------------

def _draw_dots(points, radius=3.0):
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    image = np.full((HEIGHT, WIDTH, 3), 40, np.uint8)
    for name, (x, y) in zip(JOINTS, points):
        if np.all(np.isfinite([x, y])):
            image[(xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2] = COLOURS[name]
    return image


def _jpeg(image):
    return tf.io.encode_jpeg(image, quality=100, chroma_downsampling=False).numpy()


def _record(dataset, category, image_jpeg, intrinsics, rotation=np.eye(3), center=np.zeros(3),
            has_camera=0, box=(10, 5, 50, 50), joints2d=None, joints3d=None, dense=None,
            dense_canonical=None, height=HEIGHT, width=WIDTH, up=(0, -1, 0)):
    def floats(x):
        x = np.zeros(0) if x is None else np.asarray(x, np.float32).reshape(-1)
        return tf.train.Feature(float_list=tf.train.FloatList(value=x.tolist()))

    def ints(x):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(x)))

    def text(x):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[x]))

    n_dense = 0 if dense is None else len(dense)
    feature = {
        'dataset': text(dataset.encode()), 'category': text(category.encode()),
        'example_id': text(b'x'), 'image_jpeg': text(image_jpeg),
        'image_height': ints([height]), 'image_width': ints([width]),
        'intrinsics': floats(intrinsics), 'rotation': floats(rotation),
        'optical_center': floats(center), 'world_up': floats(up),
        'has_camera': ints([has_camera]), 'box': floats(box),
        'joints2d': floats(joints2d), 'joints3d': floats(joints3d),
        'num_joints': ints([len(JOINTS)]),
        'dense_imcoords': floats(dense), 'dense_faces': ints([0] * (3 * n_dense)),
        'dense_barycoords': floats(np.full((n_dense, 3), 1 / 3)),
        'dense_canonical': floats(dense_canonical),
        'mask_rle_counts': text(b''), 'mask_height': ints([0]), 'mask_width': ints([0]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def fov_camera(height=HEIGHT, width=WIDTH, fov_deg=8.0):
    f = max(height, width) / (2 * math.tan(math.radians(fov_deg) / 2))
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]], np.float32)


def rotation_matrix(axis, angle):
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def record_2d(rng, category='kp2d', joints=None):
    if joints is None:
        joints = np.stack([rng.uniform(22, 58, 3), rng.uniform(12, 48, 3)], 1)
    joints = np.asarray(joints, np.float32)
    dense = dense_can = None
    if category == 'dense':
        dense = np.array([[30.0, 20.0], [45.0, 58.0]], np.float32)  # 2nd: y > 0.95 H
        dense_can = np.array([[0.1, -0.3, 0.05], [-0.2, 0.4, 0.0]], np.float32)
    return _record('toydense' if category == 'dense' else 'toy2d', category,
                   _jpeg(_draw_dots(joints)), fov_camera(), box=(15, 5, 50, 50),
                   joints2d=joints, dense=dense, dense_canonical=dense_can)


STORED_K = np.array([[70, 0, (WIDTH - 1) / 2], [0, 72, (HEIGHT - 1) / 2], [0, 0, 1]], np.float32)
STORED_R = rotation_matrix([0.3, 1.0, 0.2], 0.4).astype(np.float32)
CENTER = np.array([0.1, -0.2, 0.3], np.float32)


def record_3d(rng):
    pixels = np.stack([rng.uniform(25, 55, 3), rng.uniform(15, 45, 3)], 1)
    depth = rng.uniform(3.0, 4.0, 3)
    rays = np.concatenate([pixels, np.ones((3, 1))], 1) @ np.linalg.inv(STORED_K).T
    world = CENTER + (rays * depth[:, None]) @ STORED_R
    return _record('toy3d', 'kp3d', _jpeg(_draw_dots(pixels)), STORED_K, STORED_R, CENTER,
                   has_camera=1, box=(20, 10, 40, 40), joints3d=world), pixels


def write_tfrecord(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for r in records:
            writer.write(r)
    return str(path)


def dot_centre(image, name):
    """Centroid of the pixels of a joint's dot colour in a float crop (None if absent)."""
    want = np.array(COLOURS[name]) / 255.0
    close = np.all(np.abs(np.asarray(image) - want) < 0.35, axis=-1)
    if close.sum() < 3:
        return None
    yy, xx = np.nonzero(close)
    return np.array([xx.mean(), yy.mean()])


def decoded(serialized):
    return pipeline.decode_record(tfrecord.parse_example(tf.constant(serialized)))


def toy_table():
    table = pipeline.DatasetTable('toy2d', SPECS['toy2d'], TABLE)
    return dict(rows=tf.constant(table.rows), mirror=tf.constant(table.mirror),
                is_root=tf.constant(table.is_root))


NO_APPEARANCE = augmentation.settings_from_config(dict(color_aug=False, jpeg_aug_prob=0.0,
                                                       occlude_aug_prob=0.0))


# ----------------------------------------------------------------------------------------
# Single examples
# ----------------------------------------------------------------------------------------

def test_dataset_table_rows_mirror_root():
    table = pipeline.DatasetTable('toy2d', SPECS['toy2d'], TABLE)
    np.testing.assert_array_equal(table.rows, [2, 3, 1])
    np.testing.assert_array_equal(table.mirror, [0, 2, 1])
    np.testing.assert_array_equal(table.is_root, [True, False, False])
    with pytest.raises(ValueError, match='not in the global joint table'):
        pipeline.DatasetTable('toy2d', SPECS['toy2d'], ['pelv_toy'])


def test_dataset_table_of_real_specs():
    from nlf_tf import joint_table
    from nlf_tf import specs

    names, _ = joint_table.build_joint_table(['coco', 'mads'])
    mads = specs.load_spec('mads')
    table = pipeline.DatasetTable('mads', mads, names, 'kp3d')
    joints = mads['joint_names']
    np.testing.assert_array_equal([names[r] for r in table.rows],
                                  [n + mads['suffix'] for n in joints])
    for i, j in enumerate(table.mirror):
        partner = joints[j]
        assert partner == joints[i] or {joints[i][0], partner[0]} == {'l', 'r'}
        assert partner[1:] == joints[i][1:]
    assert [joints[i] for i in np.nonzero(table.is_root)[0]] == ['pelv']
    assert table.single_person and not table.drop_negative
    coco = pipeline.DatasetTable('coco', specs.load_spec('coco'), names, 'kp2d')
    assert coco.drop_negative and not coco.is_root.any()
    dense = pipeline.DatasetTable('densepose_coco', specs.load_spec('densepose_coco'), names,
                                  'dense')
    assert not dense.drop_negative


def test_readers_registry_is_lazy():
    import sys

    from nlf_tf.data import readers

    assert set(readers.READERS) == {'coco', 'coco_wholebody', 'densepose_coco', 'mads', 'agora',
                                    'behave'}
    assert readers.READERS['coco_wholebody'].fixed_options == {'variant': 'wholebody'}
    assert readers.READERS['mads'].module == 'nlf_tf.data.mads'
    with pytest.raises(KeyError, match='unknown dataset'):
        readers.READERS['h36m']
    with pytest.raises(ValueError, match='fixed by this reader'):
        readers.READERS['coco']('/nonexistent', variant='body')
    for name in readers.READERS:
        assert callable(readers.READERS[name].load())
    assert 'nlf_tf.data.mads' in sys.modules


@pytest.mark.parametrize('flip', [False, True])
def test_kp2d_flip_matches_mirrored_image(flip):
    rng = np.random.default_rng(0)
    joints = np.array([[40, 30], [28, 20], [55, 40]], np.float32)
    record = decoded(record_2d(rng, joints=joints))
    geometry = augmentation.identity_geometry()
    geometry['flip'] = tf.constant(flip)
    geometry['roll'] = tf.constant(0.3)
    geometry['zoom'] = tf.constant(1.1)
    ex = pipeline.make_example(record, 'kp2d', toy_table(), geometry, SIDE, POINTS, NO_APPEARANCE)
    ids = ex['point_ids'].numpy()
    coords = ex['coords2d_true'].numpy()
    np.testing.assert_array_equal(ex['point_validity'].numpy(), np.arange(POINTS) < 3)
    np.testing.assert_array_equal(ids[3:], -1)
    # Flipped: the slot order is unchanged (pelv, lwri, rwri) but the lwri slot carries the
    # mirrored position of the stored rwri joint, and vice versa.
    np.testing.assert_array_equal(ids[:3], [2, 3, 1])
    for slot, name in enumerate(JOINTS):
        source = JOINTS[[0, 2, 1][slot]] if flip else name
        found = dot_centre(ex['image'], source)
        np.testing.assert_allclose(found, coords[slot], atol=0.8)
    # The flipped crop is the mirror image of the unflipped one (same geometry otherwise).
    if flip:
        geometry['flip'] = tf.constant(False)
        plain = pipeline.make_example(record, 'kp2d', toy_table(), geometry, SIDE, POINTS,
                                      NO_APPEARANCE)
        np.testing.assert_allclose(ex['image'].numpy(), plain['image'].numpy()[:, ::-1],
                                   atol=1e-4)
        mirrored = plain['coords2d_true'].numpy()[[0, 2, 1]]
        mirrored[:, 0] = SIDE - 1 - mirrored[:, 0]
        np.testing.assert_allclose(coords[:3], mirrored, atol=1e-3)


def test_kp2d_invalidation_and_compaction():
    rng = np.random.default_rng(1)
    # pelv below 0.95 H (invalid), lwri negative x (invalid for kp2d), rwri fine.
    joints = np.array([[40, 58], [-1, 20], [55, 40]], np.float32)
    record = decoded(record_2d(rng, joints=joints))
    ex = pipeline.make_example(record, 'kp2d', toy_table(), augmentation.identity_geometry(),
                               SIDE, POINTS, NO_APPEARANCE)
    np.testing.assert_array_equal(ex['point_ids'].numpy()[:2], [1, -1])
    np.testing.assert_array_equal(ex['point_validity'].numpy(), np.arange(POINTS) < 1)
    assert np.all(ex['coords2d_true'].numpy()[1:] == 0)
    # Dense keypoints keep negative coordinates (only the 0.95 H test).
    record = decoded(record_2d(rng, 'dense', joints=joints))
    ex = pipeline.make_example(record, 'dense', toy_table(), augmentation.identity_geometry(),
                               SIDE, POINTS, NO_APPEARANCE,
                               filler_key=tf.constant([1, 2], tf.int64))
    ids = ex['point_ids'].numpy()
    np.testing.assert_array_equal(ids[:4], [3, 1, -1, -1])
    np.testing.assert_array_equal(ex['point_validity'].numpy(), np.arange(POINTS) < 4)
    coords = ex['coords2d_true'].numpy()
    # The DensePose point below 0.95 H stays valid with target (0, 0) (NLF quirk).
    np.testing.assert_array_equal(coords[3], [0, 0])
    h = augmentation.homography(record['intrinsics'], record['rotation'], ex['intrinsics'],
                                record['rotation']).numpy()
    expected = h @ [30.0, 20.0, 1.0]
    np.testing.assert_allclose(coords[2], expected[:2] / expected[2], atol=1e-3)
    canonical = ex['canonical_points'].numpy()
    np.testing.assert_allclose(canonical[2:4], [[0.1, -0.3, 0.05], [-0.2, 0.4, 0.0]])
    low, high = np.array(pipeline.FILLER_BOX)
    assert np.all((canonical[4:] >= low) & (canonical[4:] <= high))
    assert np.ptp(canonical[4:], axis=0).min() > 0  # random, not constant


def test_dense_flip_negates_canonical_x():
    rng = np.random.default_rng(2)
    record = decoded(record_2d(rng, 'dense'))
    geometry = augmentation.identity_geometry()
    geometry['flip'] = tf.constant(True)
    ex = pipeline.make_example(record, 'dense', toy_table(), geometry, SIDE, POINTS,
                               NO_APPEARANCE)
    np.testing.assert_allclose(ex['canonical_points'].numpy()[3:5],
                               [[-0.1, -0.3, 0.05], [0.2, 0.4, 0.0]])


def test_kp3d_projection_lands_on_dot_with_augmentation():
    rng = np.random.default_rng(3)
    settings = augmentation.settings_from_config(dict(color_aug=False, jpeg_aug_prob=0.0,
                                                      occlude_aug_prob=0.0, rot_aug=40.0))
    rolls = []
    for i in range(4):
        serialized, _ = record_3d(rng)
        record = decoded(serialized)
        geometry = augmentation.sample_geometry(tf.constant([7, i], tf.int64), settings, True)
        rolls.append(float(geometry['roll']))
        ex = pipeline.make_example(record, 'kp3d', toy_table(), geometry, SIDE, POINTS, settings)
        coords = ex['coords3d_true'].numpy()
        valid = ex['point_validity'].numpy()
        assert valid[:3].all() and not valid[3:].any()
        assert int(ex['root_index']) == 0
        projected = coords[:3] @ ex['intrinsics'].numpy().T
        projected = projected[:, :2] / projected[:, 2:]
        flip = bool(geometry['flip'])
        for slot, name in enumerate(JOINTS):
            source = JOINTS[[0, 2, 1][slot]] if flip else name
            found = dot_centre(ex['image'], source)
            if found is not None and np.all((projected[slot] > 3) & (projected[slot] < SIDE - 4)):
                np.testing.assert_allclose(found, projected[slot], atol=1.0)
        # Metric depths are those of the world points (rotations preserve distances).
        world = record['joints3d'].numpy()
        dist = np.linalg.norm(world - CENTER, axis=1)[[0, 2, 1] if flip else [0, 1, 2]]
        np.testing.assert_allclose(np.linalg.norm(coords[:3], axis=1), dist, rtol=1e-5)
    assert max(abs(r) for r in rolls) > 0.05


# ----------------------------------------------------------------------------------------
# Whole pipeline
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp('shards')
    rng = np.random.default_rng(5)
    kp2d = [write_tfrecord(root / f'kp2d-{i}.tfrecord', [record_2d(rng) for _ in range(4)])
            for i in range(2)]
    dense = [write_tfrecord(root / 'dense.tfrecord', [record_2d(rng, 'dense') for _ in range(3)])]
    kp3d = [write_tfrecord(root / 'kp3d.tfrecord', [record_3d(rng)[0] for _ in range(5)])]
    bad_jpeg = _record('toy2d', 'kp2d', b'not a jpeg', fov_camera(),
                       joints2d=np.zeros((3, 2), np.float32))
    k = fov_camera()
    k[0, 0] = np.nan
    nan_camera = _record('toy2d', 'kp2d', _jpeg(_draw_dots(np.full((3, 2), 30.0))), k,
                         joints2d=np.full((3, 2), 30.0, np.float32))
    bad = [write_tfrecord(root / 'bad.tfrecord',
                          [record_2d(rng), bad_jpeg, record_2d(rng), nan_camera])]
    return dict(kp2d=kp2d, dense=dense, kp3d=kp3d, bad=bad)


def _cfg(**overrides):
    values = dict(batch_size_parametric=0, batch_size=3, batch_size_densepose=2,
                  batch_size_2d=4, proc_side=SIDE, num_points=POINTS, seed=3)
    values.update(overrides)
    cfg = config.default_config()
    cfg.update(values)  # augmentation settings may not be in the flag table yet
    return cfg


def _sources(shards):
    return [('toy2d', 'kp2d', shards['kp2d'], 1.0), ('toy3d', 'kp3d', shards['kp3d'], 1.0),
            ('toydense', 'dense', shards['dense'], 1.0)]


def _take(dataset, n):
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in dataset.take(n)]


def test_batches_have_exact_sizes_shapes_and_dtypes(shards):
    cfg = _cfg()
    batches = _take(pipeline.make_training_dataset(
        cfg, _sources(shards), TABLE, dataset_specs=SPECS, end_step=2), 10)
    assert len(batches) == 2
    sizes = dict(param=0, kp3d=3, dense=2, kp2d=4)
    for batch in batches:
        assert list(batch) == list(pipeline.CATEGORIES)
        for c, b in sizes.items():
            part = batch[c]
            expected = dict(image=((b, SIDE, SIDE, 3), np.float32),
                            intrinsics=((b, 3, 3), np.float32),
                            point_ids=((b, POINTS), np.int32),
                            canonical_points=((b, POINTS, 3), np.float32),
                            point_validity=((b, POINTS), bool))
            if c == 'param':
                expected.update(
                    root_index=((b,), np.int32), body_model=((b,), np.int32),
                    pose=((b, 165), np.float32), shape=((b, 128), np.float32),
                    expression=((b, 10), np.float32), trans=((b, 3), np.float32),
                    kid_factor=((b,), np.float32), scale=((b,), np.float32),
                    interp_columns=((b, POINTS, 8), np.int32),
                    interp_weights=((b, POINTS, 8), np.float32))
            elif c == 'kp3d':
                expected.update(coords3d_true=((b, POINTS, 3), np.float32),
                                root_index=((b,), np.int32))
            else:
                expected['coords2d_true'] = ((b, POINTS, 2), np.float32)
            assert set(part) == set(expected), c
            for key, (shape, dtype) in expected.items():
                assert part[key].shape == shape and part[key].dtype == dtype, (c, key)
            assert np.all((part['image'] >= 0) & (part['image'] <= 1))
            assert np.all(np.isfinite(part['intrinsics']))
            invalid = ~part['point_validity']
            coords = part.get('coords3d_true', part.get('coords2d_true'))
            assert c == 'param' or np.all(coords[invalid] == 0)
        kp3d = batch['kp3d']
        assert kp3d['point_validity'][:, :3].all() and not kp3d['point_validity'][:, 3:].any()
        np.testing.assert_array_equal(kp3d['root_index'], 0)
        assert np.all(kp3d['coords3d_true'][:, :3, 2] > 2.5)  # camera metres, in front
        assert set(batch['kp2d']['point_ids'][batch['kp2d']['point_validity']]) <= {1, 2, 3}
        # dense: 3 joints + 2 DensePose points per example (all our fixture joints are valid).
        np.testing.assert_array_equal(batch['dense']['point_validity'].sum(1), 5)
        np.testing.assert_array_equal(batch['dense']['point_ids'][:, 3:], -1)


def test_same_seed_identical_and_resume_equals_uninterrupted(shards):
    cfg = _cfg(batch_size=0, batch_size_densepose=0)
    sources = _sources(shards)[:1]
    make = lambda **kw: pipeline.make_training_dataset(  # noqa: E731
        cfg, sources, TABLE, dataset_specs=SPECS, shuffle_block=3, **kw)
    first = _take(make(end_step=5), 10)
    again = _take(make(end_step=5), 10)
    resumed = _take(make(start_step=3, end_step=5), 10)
    assert len(first) == 5 and len(resumed) == 2
    for a, b in zip(first, again):
        tf.nest.map_structure(np.testing.assert_array_equal, a, b)
    for a, b in zip(first[3:], resumed):
        tf.nest.map_structure(np.testing.assert_array_equal, a, b)
    # Steps differ from each other (records and augmentation advance).
    assert not np.array_equal(first[3]['kp2d']['image'], first[4]['kp2d']['image'])


def test_bad_records_skipped_and_counted(shards):
    cfg = _cfg(batch_size=0, batch_size_densepose=0, batch_size_2d=2, color_aug=False)
    counter = tf.Variable(tf.zeros([4], tf.int64))
    dataset = pipeline.make_training_dataset(
        cfg, [('toy2d', 'kp2d', shards['bad'], 1.0)], TABLE, dataset_specs=SPECS, end_step=4,
        shuffle_block=4, skip_counter=counter, include_skip_counts=True)
    batches = _take(dataset, 4)
    # 4 steps x 2 = 8 records = two passes over the file with 2 bad records each.
    assert sum(int(b['num_skipped'][3]) for b in batches) == 4
    np.testing.assert_array_equal(counter.numpy(), [0, 0, 0, 4])
    for b in batches:
        assert b['kp2d']['image'].shape[0] == 2
        has_points = b['kp2d']['point_validity'].any(axis=1)
        if b['num_skipped'][3] < 2:
            assert has_points.all()  # good examples only (repeated to fill the step)
        else:  # every record of the step was bad: all-invalid black placeholders
            assert not has_points.any() and not b['kp2d']['image'].any()
        assert b['kp3d']['image'].shape == (0, SIDE, SIDE, 3)


def test_missing_source_and_param_errors(shards):
    with pytest.raises(ValueError, match='dense.*batch_size_densepose'):
        pipeline.make_training_dataset(_cfg(), [_sources(shards)[0], _sources(shards)[1]],
                                       TABLE, dataset_specs=SPECS)
    with pytest.raises(ValueError, match="'param'.*no data source.*batch_size_parametric"):
        pipeline.make_training_dataset(_cfg(batch_size_parametric=2), _sources(shards), TABLE,
                                       dataset_specs=SPECS)


def test_mislabelled_source_fails_at_construction(shards):
    with pytest.raises(ValueError, match='field "category" = \'dense\''):
        pipeline.make_training_dataset(
            _cfg(batch_size=0, batch_size_densepose=0),
            [('toydense', 'kp2d', shards['dense'], 1.0)], TABLE, dataset_specs=SPECS)


def test_input_context_shards_by_file(tmp_path):
    rng = np.random.default_rng(11)
    only_pelvis = np.array([[30, 30], [np.nan, np.nan], [np.nan, np.nan]], np.float32)
    files = [write_tfrecord(tmp_path / 'a.tfrecord',
                            [record_2d(rng, joints=only_pelvis) for _ in range(3)]),
             write_tfrecord(tmp_path / 'b.tfrecord', [record_2d(rng) for _ in range(3)])]
    cfg = _cfg(batch_size=0, batch_size_densepose=0, batch_size_2d=3, color_aug=False)
    valid_counts = []
    for index in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=index)
        dataset = pipeline.make_training_dataset(
            cfg, [('toy2d', 'kp2d', files, 1.0)], TABLE, dataset_specs=SPECS, end_step=2,
            input_context=context)
        options = dataset.options().experimental_distribute
        assert options.auto_shard_policy == tf.data.experimental.AutoShardPolicy.OFF
        valid_counts.append({int(n) for b in _take(dataset, 2)
                             for n in b['kp2d']['point_validity'].sum(1)})
    assert valid_counts == [{1}, {3}]


def test_mixing_two_datasets_by_weight(shards, tmp_path):
    rng = np.random.default_rng(9)
    joints = np.array([[30, 30], [30, 30], [30, 30]], np.float32)
    # Second kp2d dataset whose records have only the pelvis valid: tells the sources apart.
    only_pelvis = joints.copy()
    only_pelvis[1:] = np.nan
    other = [write_tfrecord(tmp_path / 'other.tfrecord',
                            [record_2d(rng, joints=only_pelvis) for _ in range(3)])]
    cfg = _cfg(batch_size=0, batch_size_densepose=0, batch_size_2d=8, color_aug=False)
    dataset = pipeline.make_training_dataset(
        cfg, [('toy2d', 'kp2d', shards['kp2d'], 3.0), ('toy2d', 'kp2d', other, 1.0)], TABLE,
        dataset_specs=SPECS, end_step=25)
    counts = [b['kp2d']['point_validity'].sum(axis=1) for b in _take(dataset, 25)]
    share = np.mean(np.concatenate(counts) == 1)
    assert 0.15 < share < 0.35  # expected 0.25


# ----------------------------------------------------------------------------------------
# Parametric (body-model) examples
# ----------------------------------------------------------------------------------------

PARAM_SPECS = {
    'toyagora': dict(category='param', body_model=dict(type='smplx'), single_person=False,
                     realistic_background=True),
    'toybehave': dict(category='param', body_model=dict(type='smplh'), single_person=True),
}
PARAM_POINTS = 128  # SMPL-X: 80 - 28 surface, 48 - 27 interior, 55 joints


def param_assets():
    from test_data_param_sampling import tiny_assets
    return {'smplx': tiny_assets('smplx', num_interior=80, seed=1),
            'smplh': tiny_assets('smplh', num_interior=80, seed=2)}


def _with_params(serialized, **params):
    proto = tf.train.Example.FromString(serialized)
    feature = proto.features.feature
    for name, value in params.items():
        if name == 'body_model':
            feature[name].bytes_list.value[:] = [value.encode()]
        elif name == 'is_shape_valid':
            feature[name].int64_list.value[:] = [int(value)]
        else:
            feature[name].float_list.value[:] = np.asarray(value, np.float32).reshape(-1).tolist()
    return proto.SerializeToString()


def _pelvis_of(assets, kind, shape, expression=np.zeros(10), kid=0.0):
    g = list(assets['kinds']).index(kind)
    return (assets['rest_pelvis'][g] + assets['rest_pelvis_shapedirs'][g][:, :len(shape)] @ shape
            + assets['rest_pelvis_exprdirs'][g] @ expression
            + kid * assets['rest_pelvis_kiddir'][g]).astype(np.float64)


def record_param(rng, dataset='toyagora', kind='smplx_n', scale=1.2, pelvis_pixel=(40, 30),
                 **overrides):
    """A param record whose posed pelvis (world) projects onto a blue dot at pelvis_pixel."""
    assets = param_assets()[kind.split('_')[0]]
    num_joints = 55 if kind.startswith('smplx') else 52
    shape = rng.normal(0, 1, 10)
    ray = np.linalg.inv(STORED_K) @ [pelvis_pixel[0], pelvis_pixel[1], 1.0]
    pelvis_world = CENTER + 3.5 * ray @ STORED_R
    # world = scale * (model + trans); the posed pelvis is the rest pelvis + trans.
    trans = pelvis_world / scale - _pelvis_of(assets, kind, shape)
    params = dict(body_model=kind, pose=rng.normal(0, 0.4, 3 * num_joints), shape=shape,
                  trans=trans, scale=scale)
    params.update(overrides)
    dots = np.array([pelvis_pixel, [np.nan, np.nan], [np.nan, np.nan]], np.float32)
    serialized = _record(dataset, 'param', _jpeg(_draw_dots(dots)), STORED_K, STORED_R, CENTER,
                         has_camera=1, box=(20, 10, 40, 40))
    return _with_params(serialized, **params), params


def param_tables():
    return pipeline.ParamTables(param_assets())


def test_param_example_camera_frame_points_and_format():
    rng = np.random.default_rng(20)
    serialized, params = record_param(rng)
    record = decoded(serialized)
    tables = param_tables()
    geometry = augmentation.identity_geometry()
    ex = pipeline.make_param_example(record, {}, tables, geometry, SIDE, PARAM_POINTS,
                                     NO_APPEARANCE, sample_key=tf.constant([1, 2], tf.int64))
    ex = {k: v.numpy() for k, v in ex.items()}
    expected = dict(image=((SIDE, SIDE, 3), np.float32), intrinsics=((3, 3), np.float32),
                    point_ids=((PARAM_POINTS,), np.int32),
                    canonical_points=((PARAM_POINTS, 3), np.float32),
                    point_validity=((PARAM_POINTS,), bool), root_index=((), np.int32),
                    body_model=((), np.int32), pose=((165,), np.float32),
                    shape=((128,), np.float32), expression=((10,), np.float32),
                    trans=((3,), np.float32), kid_factor=((), np.float32),
                    scale=((), np.float32), interp_columns=((PARAM_POINTS, 8), np.int32),
                    interp_weights=((PARAM_POINTS, 8), np.float32))
    assert set(ex) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert ex[key].shape == shape and ex[key].dtype == dtype, key
    assert np.all(ex['point_ids'] == -1) and ex['point_validity'].all()
    assert ex['root_index'] == PARAM_POINTS - 55
    assert ex['body_model'] == kinds.kind_index('smplx_n')
    np.testing.assert_allclose(ex['shape'][:10], params['shape'], rtol=1e-6)
    assert np.all(ex['shape'][10:] == 0) and np.all(ex['expression'] == 0)
    np.testing.assert_allclose(ex['pose'][3:], params['pose'][3:], rtol=1e-6)
    assert ex['scale'] == np.float32(1.2) and ex['kid_factor'] == 0
    # Sampled points: those of param_sampling with the same key and assets.
    points, columns, weights, _ = param_sampling.sample_points(
        tables.assets['smplx'], tf.constant([1, 2], tf.int64), PARAM_POINTS)
    np.testing.assert_array_equal(ex['canonical_points'], points)
    np.testing.assert_array_equal(ex['interp_columns'], columns)
    np.testing.assert_array_equal(ex['interp_weights'], weights)

    # Camera frame: global rotation R_c R_g, and the posed pelvis scale * (p + trans') is the
    # world pelvis seen from the crop camera, so it projects onto the drawn dot.
    from scipy.spatial.transform import Rotation
    _, r_c = augmentation.crop_camera(record['intrinsics'], record['rotation'],
                                      record['world_up'], record['box'], True, SIDE, geometry)
    want = r_c.numpy() @ Rotation.from_rotvec(params['pose'][:3]).as_matrix()
    np.testing.assert_allclose(Rotation.from_rotvec(ex['pose'][:3]).as_matrix(), want,
                               atol=1e-5)
    pelvis = 1.2 * (_pelvis_of(param_assets()['smplx'], 'smplx_n', params['shape'])
                    + ex['trans'])
    world_pelvis = 1.2 * (_pelvis_of(param_assets()['smplx'], 'smplx_n', params['shape'])
                          + params['trans'])
    np.testing.assert_allclose(np.linalg.norm(pelvis), np.linalg.norm(world_pelvis - CENTER),
                               rtol=1e-5)
    projected = ex['intrinsics'] @ pelvis
    np.testing.assert_allclose(dot_centre(ex['image'], 'pelv'), projected[:2] / projected[2],
                               atol=1.0)

    # Never flipped; shape-invalid records supervise only the joints.
    flipped = dict(geometry, flip=tf.constant(True))
    again = pipeline.make_param_example(record, {}, tables, flipped, SIDE, PARAM_POINTS,
                                        NO_APPEARANCE, sample_key=tf.constant([1, 2], tf.int64))
    np.testing.assert_array_equal(again['image'], ex['image'])
    np.testing.assert_array_equal(again['pose'], ex['pose'])
    record = decoded(_with_params(serialized, is_shape_valid=0))
    ex = pipeline.make_param_example(record, {}, tables, geometry, SIDE, PARAM_POINTS,
                                     NO_APPEARANCE)
    np.testing.assert_array_equal(ex['point_validity'],
                                  np.arange(PARAM_POINTS) >= PARAM_POINTS - 55)


def test_param_example_smplh_with_augmentation_lands_on_dot():
    rng = np.random.default_rng(21)
    settings = augmentation.settings_from_config(dict(color_aug=False, jpeg_aug_prob=0.0,
                                                      occlude_aug_prob=0.0, rot_aug=40.0))
    tables = param_tables()
    for i in range(3):
        serialized, params = record_param(rng, 'toybehave', 'smplh_f', scale=0.8,
                                          expression=np.zeros(0), kid_factor=0.0)
        geometry = augmentation.sample_geometry(tf.constant([9, i], tf.int64), settings, True)
        ex = pipeline.make_param_example(decoded(serialized), {}, tables, geometry, SIDE,
                                         PARAM_POINTS, settings)
        assert int(ex['body_model']) == kinds.kind_index('smplh_f')
        assert int(ex['root_index']) == PARAM_POINTS - 52
        np.testing.assert_array_equal(ex['pose'][156:], 0)
        pelvis = 0.8 * (_pelvis_of(param_assets()['smplh'], 'smplh_f', params['shape'])
                        + ex['trans'].numpy())
        projected = ex['intrinsics'].numpy() @ pelvis
        found = dot_centre(ex['image'], 'pelv')
        if found is not None and np.all((projected[:2] / projected[2] > 3)
                                        & (projected[:2] / projected[2] < SIDE - 4)):
            np.testing.assert_allclose(found, projected[:2] / projected[2], atol=1.0)


@pytest.fixture(scope='module')
def param_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp('param_shards')
    rng = np.random.default_rng(22)
    agora = [write_tfrecord(root / 'agora.tfrecord',
                            [record_param(rng)[0] for _ in range(4)])]
    behave = [write_tfrecord(root / 'behave.tfrecord',
                             [record_param(rng, 'toybehave', 'smplh_m')[0] for _ in range(3)])]
    bad = [write_tfrecord(root / 'bad.tfrecord', [
        record_param(rng)[0],
        record_param(rng, body_model='smplq_n')[0],                 # unknown kind
        record_param(rng)[0],
        record_param(rng, pose=np.zeros(156))[0],                   # pose of another family
        record_param(rng, body_model='smpl_n', pose=np.zeros(72))[0],  # family without assets
        record_param(rng, scale=np.nan)[0],                         # non-finite
    ])]
    return dict(agora=agora, behave=behave, bad=bad)


def _param_cfg(**overrides):
    return _cfg(**dict(dict(batch_size_parametric=3, batch_size=0, batch_size_densepose=0,
                            batch_size_2d=0, num_points=PARAM_POINTS), **overrides))


def test_param_batches_format_and_determinism(param_shards):
    sources = [('toyagora', 'param', param_shards['agora'], 2.0),
               ('toybehave', 'param', param_shards['behave'], 1.0)]
    make = lambda: pipeline.make_training_dataset(  # noqa: E731
        _param_cfg(), sources, TABLE, dataset_specs=PARAM_SPECS, end_step=3, shuffle_block=4,
        param_assets=param_assets())
    first, again = _take(make(), 5), _take(make(), 5)
    assert len(first) == 3
    for a, b in zip(first, again):
        tf.nest.map_structure(np.testing.assert_array_equal, a, b)
    p = PARAM_POINTS
    expected = dict(image=((3, SIDE, SIDE, 3), np.float32), intrinsics=((3, 3, 3), np.float32),
                    point_ids=((3, p), np.int32), canonical_points=((3, p, 3), np.float32),
                    point_validity=((3, p), bool), root_index=((3,), np.int32),
                    body_model=((3,), np.int32), pose=((3, 165), np.float32),
                    shape=((3, 128), np.float32), expression=((3, 10), np.float32),
                    trans=((3, 3), np.float32), kid_factor=((3,), np.float32),
                    scale=((3,), np.float32), interp_columns=((3, p, 8), np.int32),
                    interp_weights=((3, p, 8), np.float32))
    seen = set()
    for batch in first:
        param = batch['param']
        assert set(param) == set(expected)
        for key, (shape, dtype) in expected.items():
            assert param[key].shape == shape and param[key].dtype == dtype, key
        for i, kind in enumerate(param['body_model']):
            name = kinds.KINDS[kind]
            seen.add(name)
            j = 55 if name.startswith('smplx') else 52
            assert param['root_index'][i] == p - j
            assert param['point_validity'][i].all() and np.all(param['point_ids'][i] == -1)
            nodes = param_assets()[name.split('_')[0]]
            nodes = np.concatenate([nodes['vertices'], nodes['joints']])
            assert param['interp_columns'][i].max() < len(nodes)
            np.testing.assert_allclose(
                np.einsum('pk,pkd->pd', param['interp_weights'][i],
                          nodes[param['interp_columns'][i]]),
                param['canonical_points'][i], atol=1e-5)
        assert batch['kp3d']['image'].shape == (0, SIDE, SIDE, 3)
    assert seen == {'smplx_n', 'smplh_m'}


def test_param_bad_records_dropped_and_counted(param_shards):
    counter = tf.Variable(tf.zeros([4], tf.int64))
    dataset = pipeline.make_training_dataset(
        _param_cfg(batch_size_parametric=2), [('toyagora', 'param', param_shards['bad'], 1.0)],
        TABLE, dataset_specs=PARAM_SPECS, end_step=3, shuffle_block=6, skip_counter=counter,
        include_skip_counts=True, param_assets=param_assets())
    batches = _take(dataset, 3)
    # 3 steps x 2 = 6 records = one pass over the file: 4 bad ones.
    assert sum(int(b['num_skipped'][0]) for b in batches) == 4
    np.testing.assert_array_equal(counter.numpy(), [4, 0, 0, 0])
    for b in batches:
        param = b['param']
        if b['num_skipped'][0] == 2:  # placeholders
            np.testing.assert_array_equal(param['body_model'], -1)
            assert not param['point_validity'].any() and not param['image'].any()
            np.testing.assert_array_equal(param['scale'], 1.0)
            assert not param['interp_weights'].any()
        else:
            np.testing.assert_array_equal(param['body_model'], kinds.kind_index('smplx_n'))


def test_param_construction_errors(param_shards):
    sources = [('toyagora', 'param', param_shards['agora'], 1.0)]
    with pytest.raises(ValueError, match='param_assets'):
        pipeline.make_training_dataset(_param_cfg(), sources, TABLE, dataset_specs=PARAM_SPECS)
    with pytest.raises(ValueError, match="uses smplx body models but param_assets has only"):
        pipeline.make_training_dataset(_param_cfg(), sources, TABLE, dataset_specs=PARAM_SPECS,
                                       param_assets={'smplh': param_assets()['smplh']})
    with pytest.raises(ValueError, match='interior points'):
        pipeline.make_training_dataset(_param_cfg(num_points=1024), sources, TABLE,
                                       dataset_specs=PARAM_SPECS, param_assets=param_assets())
    # The real specs of the parametric datasets build tables (no joint-table rows needed).
    from nlf_tf import specs
    for name, family, single in (('agora', 'smplx', False), ('behave', 'smplh', True)):
        table = pipeline.DatasetTable(name, specs.load_spec(name), TABLE, 'param')
        assert table.body_model_family == family and table.single_person == single
        assert table.realistic_background == (name == 'agora')
