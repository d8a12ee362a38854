"""Synthetic native-format datasets: real readers, body model / UV file, and --data=synthetic."""

import collections
import os

import numpy as np
import pytest

from nlf_tf import canonical_space, config, data_sources, demo_data, specs
from nlf_tf.body_models import smpl_file
from nlf_tf.data import densepose_coco, synthetic
from nlf_tf.data.example import Example, Skip

SEED = 3
NUM_IMAGES = 12
MADS_FRAMES = 4
# Skips a reader may report for synthetic data (per-person, not structural).
ALLOWED_SKIPS = {'too few visible keypoints'}
PARAM_ALLOWED_SKIPS = {'pose too similar to a recently kept frame'}


@pytest.fixture(scope='module')
def logdir(tmp_path_factory):
    # Written where --data=synthetic looks for it, so the end-to-end test reuses it.
    return str(tmp_path_factory.mktemp('run'))


@pytest.fixture(scope='module')
def folders(logdir):
    return synthetic.write_synthetic_datasets(
        os.path.join(logdir, 'synthetic_data'), SEED, num_images=NUM_IMAGES,
        mads_frames=MADS_FRAMES)


@pytest.fixture(scope='module')
def records(folders):
    out = {}
    for name, call in synthetic.reader_calls(folders).items():
        items = list(call())
        out[name] = ([r for r in items if isinstance(r, Example)],
                     [r for r in items if isinstance(r, Skip)])
    return out


def _joint_index(spec_name):
    return {n: i for i, n in enumerate(specs.load_spec(spec_name)['joint_names'])}


def test_layout_and_idempotence(folders, logdir):
    root = os.path.join(logdir, 'synthetic_data')
    for rel in ('coco/annotations/person_keypoints_train2014.json',
                'coco/train2014/COCO_train2014_000000000001.jpg',
                'coco_wholebody/annotations/coco_wholebody_train_v1.0.json',
                'coco_wholebody/train2017/000000000001.jpg',
                'densepose_coco/DensePose_COCO/densepose_coco_2014_train.json',
                'densepose_coco/UV_data/UV_Processed.mat',
                'densepose_coco/train2014/COCO_train2014_000000000001.jpg',
                'mads/multi_view_data/Jazz/Jazz_S1_C2.avi',
                'mads/multi_view_data/Jazz/Jazz_S1_GT.mat',
                'mads/multi_view_data/Jazz/Calib_Cam0.mat',
                'body_models/smpl_synthetic.npz',
                'body_models/smplx/SMPLX_NEUTRAL.npz', 'body_models/smplh/SMPLH_FEMALE.pkl',
                'agora/Cam/train_0.pkl', 'agora/seg_rgbs.txt', 'behave/split.json',
                'behave/calibs/intrinsics/0/calibration.json'):
        assert os.path.isfile(os.path.join(root, rel)), rel
    mtime = os.path.getmtime(os.path.join(root, synthetic.SETTINGS_FILE))
    assert synthetic.write_synthetic_datasets(root, SEED, NUM_IMAGES,
                                              mads_frames=MADS_FRAMES) == folders
    assert os.path.getmtime(os.path.join(root, synthetic.SETTINGS_FILE)) == mtime
    with pytest.raises(ValueError, match='other settings'):
        synthetic.write_synthetic_datasets(root, SEED + 1, NUM_IMAGES, mads_frames=MADS_FRAMES)


def test_readers_accept_every_folder(records):
    assert set(records) == set(synthetic.ALL_DATASETS)
    for name in synthetic.PARAM_DATASETS:
        examples, skips = records[name]
        assert {s.reason for s in skips} <= PARAM_ALLOWED_SKIPS, name
        assert len(examples) >= 8, name
        for ex in examples:
            assert ex.validate().category == 'param' and ex.body_params is not None
    for name in synthetic.DATASETS:
        examples, skips = records[name]
        reasons = collections.Counter(s.reason for s in skips)
        assert set(reasons) <= ALLOWED_SKIPS, (name, reasons)
        expected = 3 * MADS_FRAMES if name == 'mads' else NUM_IMAGES
        assert len(examples) + len(skips) == expected, name
        assert len(examples) >= expected // 2, (name, reasons)
        for ex in examples:
            ex.validate()
    for ex in records['coco_wholebody'][0]:
        # most of the 133 points are labelled (body, feet, face, hands)
        assert np.count_nonzero(np.isfinite(ex.joints2d[:, 0])) >= 60
    for ex in records['densepose_coco'][0]:
        assert 20 <= len(ex.dense_imcoords) <= synthetic.MAX_DP_POINTS


def test_coco_keypoints_are_the_demo_joints(records):
    # Shared joints (shoulders ... ankles) are exactly the projected demo joints.
    skeleton = demo_data.load_demo_skeleton()
    scenes = synthetic.render_scenes(np.random.default_rng([SEED, 1]), NUM_IMAGES,
                                     synthetic.DEFAULT_IMAGE_SIDE)
    uv = demo_data.project(scenes['joints'], scenes['intrinsics'])
    coco_index = _joint_index('coco')
    shared = [n for n in coco_index if n in skeleton.names]
    assert len(shared) == 12
    for ex in records['coco'][0]:
        k = int(ex.example_id.split('_')[-1].split('.')[0]) - 1
        for name in shared:
            got = ex.joints2d[coco_index[name]]
            want = uv[k, skeleton.names.index(name)]
            np.testing.assert_allclose(got, want, atol=0.006)
        # nose/eyes/ears: within the head capsule's reach of the head bone
        head = uv[k, skeleton.names.index('head')]
        neck = uv[k, skeleton.names.index('neck')]
        reach = np.linalg.norm(head - neck) + 0.2 * scenes['intrinsics'][k, 0, 0] / 4
        for name in ('nose', 'leye', 'rear'):
            point = ex.joints2d[coco_index[name]]
            assert np.linalg.norm(point - head) < reach


def test_mads_joints_land_on_the_rendered_person(records):
    skeleton = demo_data.load_demo_skeleton()
    scene = synthetic.mads_scene(np.random.default_rng([SEED, 4]), MADS_FRAMES)
    mads_index = _joint_index('mads')
    on_skeleton = [mads_index[n] for n in mads_index if n in skeleton.names]
    assert len(on_skeleton) == 15
    examples = records['mads'][0]
    assert len(examples) == 3 * MADS_FRAMES
    for ex in examples:
        cam = int(ex.example_id.split('_C')[1][0])
        frame = int(ex.example_id.rsplit('/', 1)[1])
        assert ex.camera.distortion is not None
        pixels = ex.camera.world_to_image(ex.joints3d[on_skeleton])
        cols, rows = np.round(pixels).astype(int).T
        height, width = synthetic.MADS_FRAME_SHAPE
        assert np.all((cols >= 0) & (cols < width) & (rows >= 0) & (rows < height))
        mask = scene['bone_index'][cam][frame]
        assert np.all(mask[rows, cols] >= 0), ex.example_id
        # the decoded video frame is the rendered one (JPEG-level differences only)
        assert ex.image.shape == (height, width, 3)
        diff = np.abs(ex.image.astype(float) - scene['frames'][cam][frame])
        assert np.mean(diff) < 6  # JPEG (quality 90) artefacts; decoders differ slightly
        # world metres: the pelvis is ~1 m above the floor (world y up)
        assert 0.6 < ex.joints3d[mads_index['pelv'], 1] < 1.3


def test_body_model_and_uv_file(folders):
    model = smpl_file.load_smpl_model(folders['smpl_model'])
    mesh = synthetic.build_tube_mesh()
    assert model['v_template'].shape == (len(mesh['vertices']), 3)
    assert 200 <= len(mesh['vertices']) <= 600
    assert model['posedirs'].shape[2] == 207 and model['J_regressor'].shape[0] == 24
    np.testing.assert_array_equal(model['kintree_table'][0], synthetic.SMPL_PARENTS)
    vertices, joints = canonical_space.canonical_smpl(model)
    np.testing.assert_allclose(vertices, mesh['vertices'], atol=1e-6)
    skeleton = demo_data.load_demo_skeleton()
    demo = dict(zip(skeleton.names, skeleton.canonical))
    names = canonical_space.SMPL_JOINT_NAMES
    for smpl_name, expected in (('pelvis', demo['pelv']), ('left_hip', demo['lhip']),
                                ('right_knee', demo['rkne']), ('left_wrist', demo['lwri']),
                                ('neck', demo['neck']),
                                ('left_foot', demo['lank'] + [0, 0, 0.13]),
                                ('right_hand', demo['rwri'] + [-0.08, 0, 0])):
        np.testing.assert_allclose(joints[names.index(smpl_name)], expected, atol=1e-6)
    # skinning: each vertex follows one joint; rows of the regressor are affine combinations
    np.testing.assert_allclose(model['weights'].sum(1), 1)
    np.testing.assert_allclose(model['J_regressor'].sum(1), 1, atol=1e-12)

    # UV_Processed.mat: every face's UV centroid maps back to that face (same mesh point).
    converter = densepose_coco.IUVConverter(
        os.path.join(folders['densepose_coco'], 'UV_data', 'UV_Processed.mat'),
        num_smpl_vertices=len(mesh['vertices']))
    rng = np.random.default_rng(0)
    faces = rng.choice(len(mesh['faces']), 60, replace=False)
    bary = rng.dirichlet([2, 2, 2], 60)
    uv = np.einsum('ncx,nc->nx', mesh['uv'][mesh['face_uv'][faces]], bary)
    got_faces, got_bary = converter(mesh['face_chart'][faces], uv[:, 0], uv[:, 1])
    np.testing.assert_array_equal(got_faces, mesh['faces'][faces])
    np.testing.assert_allclose(got_bary, bary, atol=1e-9)
    assert set(np.unique(mesh['face_chart'])) == set(range(1, 25)) - {3, 4, 5, 6}


def test_densepose_points_lie_on_the_bone_rendered_there(records):
    skeleton = demo_data.load_demo_skeleton()
    scenes = synthetic.render_scenes(np.random.default_rng([SEED, 3]), NUM_IMAGES,
                                     synthetic.DEFAULT_IMAGE_SIDE)
    c = skeleton.canonical.astype(np.float64)
    for ex in records['densepose_coco'][0]:
        k = int(ex.example_id.split('#')[0].split('_')[-1].split('.')[0]) - 1
        cols, rows = np.round(ex.dense_imcoords).astype(int).T
        bones = scenes['bone_index'][k][rows, cols]
        # the 1/255 box quantisation of dp_x/dp_y can move a point onto the next pixel
        assert np.mean(bones >= 0) > 0.9
        ok = bones >= 0
        start, end = c[skeleton.bones[bones[ok], 0]], c[skeleton.bones[bones[ok], 1]]
        d = end - start
        p = ex.dense_canonical[ok].astype(np.float64)
        t = np.clip(np.sum((p - start) * d, 1) / np.sum(d * d, 1), 0, 1)
        dist = np.linalg.norm(p - start - t[:, None] * d, axis=1)
        radius = skeleton.radii[bones[ok]]
        # on (or just inside, by the ring chords) the surface of the bone shown at the pixel
        assert np.mean((dist <= radius + 1e-4) & (dist >= 0.85 * radius)) > 0.9


def test_synthetic_training_data_end_to_end(folders, logdir):
    cfg = config.default_config(
        data='synthetic', logdir=logdir, seed=SEED, proc_side=64, num_points=96,
        batch_size_parametric=2, batch_size=3, batch_size_densepose=2, batch_size_2d=2,
        demo_pool_size=8)
    cfg.synthetic_num_images = NUM_IMAGES
    # the written folders must be the ones build_data uses (mads_frames is the default then)
    if MADS_FRAMES != max(4, NUM_IMAGES // 3):
        pytest.skip('fixture settings differ from the defaults of build_data')
    data = data_sources.build_data(cfg, start_step=0, end_step=2)
    for name in synthetic.ALL_DATASETS:
        assert os.path.isfile(os.path.join(logdir, 'synthetic_prepared', name, 'manifest.json'))
    # The param category reads AGORA (SMPL-X) and BEHAVE (SMPL+H) with the synthetic models.
    assert set(data.body_model_kinds) == {'smplx_f', 'smplx_m', 'smplx_n', 'smplh_f', 'smplh_m'}
    assert data.body_model_dir == folders['body_models']
    assert data.joint_names[:1] == ['nose_coco'] and 'pelv_mads' in data.joint_names
    assert len(data.joint_names) == len(data.canonical_init) == 133 + 19
    batches = list(data.dataset)
    assert len(batches) == 2
    sizes = dict(param=2, kp3d=3, dense=2, kp2d=2)
    for batch in batches:
        assert list(batch) == ['param', 'kp3d', 'dense', 'kp2d']
        for category, sub in batch.items():
            b = sizes[category]
            assert sub['image'].shape == (b, 64, 64, 3)
            assert sub['point_ids'].shape == (b, 96)
            assert sub['canonical_points'].shape == (b, 96, 3)
            key = {'param': 'interp_weights', 'kp3d': 'coords3d_true'}.get(
                category, 'coords2d_true')
            assert sub[key].shape[:2] == (b, 96)
            assert np.any(sub['point_validity'].numpy())
        assert np.all(batch['param']['point_ids'].numpy() == -1)
        assert np.all(batch['param']['body_model'].numpy() >= 0)
        ids = batch['kp3d']['point_ids'].numpy()
        assert all(data.joint_names[i].endswith('_mads') for i in ids[ids >= 0])
        ids = batch['kp2d']['point_ids'].numpy()
        assert all(data.joint_names[i].endswith('_coco') for i in ids[ids >= 0])
        dense = batch['dense']
        surface = (dense['point_ids'].numpy() < 0) & dense['point_validity'].numpy()
        assert surface.any()  # DensePose points with canonical positions
        assert np.all(np.abs(dense['canonical_points'].numpy()[surface]) < 1.0)
