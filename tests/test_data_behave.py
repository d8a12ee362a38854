import json
import os
import pickle

import numpy as np
import pytest

from nlf_tf.data import behave, rle
from nlf_tf.data.example import DatasetError, Example, Skip

DIST_NAMED = [0.1, 0.01, 0.001, 0.002, 0.001, 0.05, 0.005, 0.0005]  # k1 k2 p1 p2 k3 k4 k5 k6
ROT_Y90 = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]  # camera-to-world, 90 deg about y
W, H = 64, 48


def project(points, K, rot_c2w, center, dist):
    """Independent NumPy projection: world -> camera (R = rot_c2w^T) -> OpenCV rational model."""
    p = (np.asarray(points, np.float64) - center) @ np.asarray(rot_c2w)  # rows: R^T (X - c)
    x, y = p[:, 0] / p[:, 2], p[:, 1] / p[:, 2]
    k1, k2, p1, p2, k3, k4, k5, k6 = dist
    r2 = x * x + y * y
    radial = (1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3) / (1 + k4 * r2 + k5 * r2 ** 2
                                                            + k6 * r2 ** 3)
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([K[0][0] * xd + K[0][2], K[1][1] * yd + K[1][2]], axis=1)


def expected_box(points2d, imsize, factor=1.05):
    lo, hi = points2d.min(axis=0), points2d.max(axis=0)
    centre, size = (lo + hi) / 2, (hi - lo) * factor
    x0, y0 = np.maximum(centre - size / 2, 0)
    x1, y1 = np.minimum(centre + size / 2, imsize)
    return np.array([x0, y0, x1 - x0, y1 - y0])


# ---------------------------------------------------------------------------------------------
# A tiny hand-made BEHAVE folder (no body model: BODY_25 joints only)

def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(data, f)


def color_block(fx, fy, cx, cy, dist=(0,) * 8, opencv=True, named=True, width=W, height=H):
    block = dict(fx=fx, fy=fy, cx=cx, cy=cy, width=width, height=height)
    if named:
        block.update(dict(zip(('k1', 'k2', 'p1', 'p2', 'k3', 'k4', 'k5', 'k6'), dist)))
    if opencv:
        block['opencv'] = [fx, fy, cx, cy, *dist]
    return block


def write_jpeg(path, image):
    import tensorflow as tf
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(tf.io.encode_jpeg(image, quality=95).numpy())


def body25(shift=(0.0, 0.0, 0.0)):
    """25 joints in a 0.5 x 1.2 m grid around (0, 0, 3) (world = Kinect 1 frame), plus shift."""
    i = np.arange(25)
    joints = np.stack([(i % 5) * 0.125 - 0.25, (i // 5) * 0.3 - 0.6, 3.0 + 0.01 * i], axis=1)
    return joints + shift


def write_frame(seq_dir, frame, joints, kinects=(0, 1), fit=True, mask=True):
    frame_dir = os.path.join(seq_dir, frame)
    scores = np.full((25, 1), 0.9)
    write_json(os.path.join(frame_dir, 'person', 'person_J3d.json'),
               dict(body_joints3d=np.concatenate([joints, scores], 1).tolist()))
    if fit:
        path = os.path.join(frame_dir, 'person', 'fit02', 'person_fit.pkl')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            pickle.dump(dict(pose=np.full(156, 0.01, np.float32),
                             betas=np.arange(10, dtype=np.float32) / 10,
                             trans=np.array([0.1, 0.2, 3.0], np.float32)), f)
    for k in kinects:
        write_jpeg(os.path.join(frame_dir, f'k{k}.color.jpg'), np.full((H, W, 3), 90, np.uint8))
        if mask:
            m = np.zeros((H, W, 1), np.uint8)
            m[10:30, 20:40] = 255
            write_jpeg(os.path.join(frame_dir, f'k{k}.person_mask.jpg'), m)


KINECTS = {  # k: (K, rotation camera-to-world, translation, distortion)
    0: ([[50.0, 0, 2.0], [0, 52.0, 23.0], [0, 0, 1]], ROT_Y90, [-3.0, 0.0, 3.0], DIST_NAMED),
    1: ([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]], np.eye(3).tolist(), [0.0, 0.0, 0.0],
        [0.0] * 8),
}


def write_handmade(root):
    """Sequences: Date01_Sub01_x (train, male; frames A, B, A again, D without fit),
    Date03_Sub04_y (test, female; one frame), Date02_Sub02_gone (train, listed but absent)."""
    write_json(os.path.join(root, 'split.json'), dict(
        train=['Date01_Sub01_x', 'Date02_Sub02_gone'], test=['Date03_Sub04_y']))
    for k, (K, rot, t, dist) in KINECTS.items():
        write_json(os.path.join(root, 'calibs', 'intrinsics', str(k), 'calibration.json'),
                   dict(color=color_block(K[0][0], K[1][1], K[0][2], K[1][2], dist)))
        for date in ('Date01', 'Date03'):
            write_json(os.path.join(root, 'calibs', date, 'config', str(k), 'config.json'),
                       dict(rotation=np.reshape(rot, -1).tolist(), translation=t))
    for name, gender in (('Date01_Sub01_x', 'male'), ('Date03_Sub04_y', 'female')):
        seq_dir = os.path.join(root, 'sequences', name)
        write_json(os.path.join(seq_dir, 'info.json'), dict(
            gender=gender, kinects=[0, 1], intrinsic='../../calibs/intrinsics',
            config=f'../../calibs/{name[:6]}/config', cat='box', empty=None, beta=None))
    seq = os.path.join(root, 'sequences', 'Date01_Sub01_x')
    write_frame(seq, 't0001.000', body25())
    write_frame(seq, 't0002.000', body25((0.15, 0, 0)))
    write_frame(seq, 't0003.000', body25((0.0, 0.03, 0)))   # back to A: buffered sampler drops
    write_frame(seq, 't0004.000', body25((0.5, 0, 0)), fit=False)
    write_frame(os.path.join(root, 'sequences', 'Date03_Sub04_y'), 't0001.000', body25())
    return root


@pytest.fixture
def handmade(tmp_path):
    return write_handmade(str(tmp_path / 'behave'))


# ---------------------------------------------------------------------------------------------
# Camera

def test_camera_from_calibration_hand_checked(tmp_path):
    intr = str(tmp_path / 'calibration.json')
    conf = str(tmp_path / 'config.json')
    # named keys win over "opencv" (PosePile reads k1..k6, p1, p2)
    block = color_block(600.0, 610.0, 320.5, 240.25, DIST_NAMED)
    block['opencv'] = [0.0] * 12
    write_json(intr, dict(color=block, depth=color_block(1, 1, 0, 0)))
    write_json(conf, dict(rotation=np.reshape(ROT_Y90, -1).tolist(), translation=[2.0, 0.5, 1.0]))
    camera, imshape = behave.load_camera(intr, conf)
    assert imshape == (H, W)
    np.testing.assert_array_equal(camera.intrinsic_matrix,
                                  [[600.0, 0, 320.5], [0, 610.0, 240.25], [0, 0, 1]])
    np.testing.assert_array_equal(camera.rot_world_to_cam, np.array(ROT_Y90).T)
    np.testing.assert_array_equal(camera.optical_center, [2.0, 0.5, 1.0])
    np.testing.assert_array_equal(camera.distortion, DIST_NAMED)  # k1 k2 p1 p2 k3 k4 k5 k6
    np.testing.assert_array_equal(camera.world_up, [0, -1, 0])

    # the world point (4, 0.4, 0.8) is (0.2, -0.1, 2) in the camera: normalized (0.1, -0.05),
    # r^2 = 0.0125; rational radial factor and tangential terms written out by hand
    r2 = 0.0125
    radial = (1 + 0.1 * r2 + 0.01 * r2 ** 2 + 0.001 * r2 ** 3) / (
        1 + 0.05 * r2 + 0.005 * r2 ** 2 + 0.0005 * r2 ** 3)
    xd = 0.1 * radial + 2 * 0.001 * 0.1 * -0.05 + 0.002 * (r2 + 2 * 0.01)
    yd = -0.05 * radial + 0.001 * (r2 + 2 * 0.0025) + 2 * 0.002 * 0.1 * -0.05
    np.testing.assert_allclose(camera.world_to_camera([[4.0, 0.4, 0.8]]), [[0.2, -0.1, 2.0]],
                               atol=1e-6)
    np.testing.assert_allclose(camera.world_to_image([[4.0, 0.4, 0.8]]),
                               [[600.0 * xd + 320.5, 610.0 * yd + 240.25]], atol=1e-3)


def test_camera_distortion_from_opencv_list(tmp_path):
    intr = str(tmp_path / 'calibration.json')
    conf = str(tmp_path / 'config.json')
    write_json(intr, dict(color=color_block(600.0, 600.0, 320.0, 240.0, DIST_NAMED, named=False)))
    write_json(conf, dict(rotation=np.eye(3).reshape(-1).tolist(), translation=[0, 0, 0]))
    camera, _ = behave.load_camera(intr, conf)
    np.testing.assert_array_equal(camera.distortion, DIST_NAMED)
    points = np.array([[0.3, -0.2, 2.0], [-0.5, 0.4, 3.0]])
    np.testing.assert_allclose(
        camera.world_to_image(points),
        project(points, camera.intrinsic_matrix, np.eye(3), np.zeros(3), DIST_NAMED), atol=1e-3)


def _block_without(*keys, **changes):
    block = color_block(600.0, 600.0, 320.0, 240.0, DIST_NAMED)
    for key in keys:
        del block[key]
    block.update(changes)
    return block


@pytest.mark.parametrize('block, field', [
    # wrong number of coefficients in "opencv" (used when the named keys are absent)
    (_block_without('k1', 'k2', 'p1', 'p2', 'k3', 'k4', 'k5', 'k6', opencv=[1.0] * 13),
     'color.opencv'),
    (_block_without('k1', 'k2', 'p1', 'p2', 'k3', 'k4', 'k5', 'k6', opencv=[1.0] * 9),
     'color.opencv'),
    (_block_without('k6', 'opencv'), 'color.k6'),  # neither all named keys nor "opencv"
    (_block_without(fx=-5.0), 'color.fx'),
    (_block_without('width'), 'color.width'),
    (_block_without('cy'), 'color.cy'),
])
def test_bad_calibration(tmp_path, block, field):
    intr = str(tmp_path / 'calibration.json')
    conf = str(tmp_path / 'config.json')
    write_json(intr, dict(color=block))
    write_json(conf, dict(rotation=np.eye(3).reshape(-1).tolist(), translation=[0, 0, 0]))
    with pytest.raises(DatasetError) as info:
        behave.load_camera(intr, conf)
    assert info.value.file == intr and info.value.field == field


@pytest.mark.parametrize('config, field', [
    (dict(rotation=[1, 0, 0, 0, 1, 0, 0, 0, 2], translation=[0, 0, 0]), 'rotation'),
    (dict(rotation=[1, 0, 0, 0, 1, 0, 0, 0, -1], translation=[0, 0, 0]), 'rotation'),
    (dict(rotation=[1, 0, 0, 0, 1, 0], translation=[0, 0, 0]), 'rotation'),
    (dict(rotation=np.eye(3).reshape(-1).tolist(), translation=[0, 0]), 'translation'),
    (dict(rotation=np.eye(3).reshape(-1).tolist()), 'translation'),
])
def test_bad_config(tmp_path, config, field):
    intr = str(tmp_path / 'calibration.json')
    conf = str(tmp_path / 'config.json')
    write_json(intr, dict(color=color_block(600.0, 600.0, 320.0, 240.0)))
    write_json(conf, config)
    with pytest.raises(DatasetError) as info:
        behave.load_camera(intr, conf)
    assert info.value.file == conf and info.value.field == field


# ---------------------------------------------------------------------------------------------
# Reader on the hand-made folder

def test_train_split_sampler_boxes_and_skips(handmade):
    records = list(behave.iter_examples(handmade))
    examples = [r for r in records if isinstance(r, Example)]
    skips = [r for r in records if isinstance(r, Skip)]
    ids = [e.example_id for e in examples]
    seq = 'sequences/Date01_Sub01_x'
    # train only (default), frames A and B kept (both Kinects), A again dropped by the buffer
    assert ids == [f'{seq}/t0001.000/k0.color.jpg', f'{seq}/t0001.000/k1.color.jpg',
                   f'{seq}/t0002.000/k0.color.jpg', f'{seq}/t0002.000/k1.color.jpg']
    reasons = {(s.example_id, s.reason) for s in skips}
    assert reasons == {
        ('sequences/Date02_Sub02_gone', 'sequence folder missing'),
        (f'{seq}/t0003.000', 'pose too similar to a recently kept frame'),
        (f'{seq}/t0004.000', 'missing SMPL+H fit'),
    }
    missing_fit = next(s for s in skips if s.reason == 'missing SMPL+H fit')
    assert missing_fit.file.endswith(os.path.join('t0004.000', 'person', 'fit02',
                                                  'person_fit.pkl'))

    clipped = 0
    for e in examples:
        e.validate()
        k = int(e.example_id[-len('0.color.jpg')])
        K, rot, t, dist = KINECTS[k]
        frame = int(e.example_id.split('/')[2][1:5])
        joints = body25({1: (0, 0, 0), 2: (0.15, 0, 0)}[frame])
        box = expected_box(project(joints, K, rot, t, dist), (W, H))
        np.testing.assert_allclose(e.box, box, atol=1e-3)
        clipped += box[0] == 0
        assert e.category == 'param' and e.dataset == 'behave'
        assert e.image_path == os.path.join(handmade, *e.example_id.split('/'))
        assert e.body_params['body_model'] == 'smplh_m'
        np.testing.assert_allclose(e.body_params['pose'], np.full(156, 0.01))
        np.testing.assert_allclose(e.body_params['shape'], np.arange(10) / 10)
        np.testing.assert_allclose(e.body_params['trans'], [0.1, 0.2, 3.0])
        mask = rle.decode(e.mask_rle)
        assert mask.shape == (H, W) and mask[10:30, 20:40].all() and mask.sum() == 400
    assert clipped == 2  # Kinect 0's principal point at x = 2 cuts the boxes at the left edge


def test_plain_sampler_would_keep_the_return(handmade):
    # a buffer of one kept pose is the plain sampler: the return to A is kept then
    ids = [r.example_id for r in behave.iter_examples(handmade, sampler_buffer_size=1)
           if isinstance(r, Example)]
    assert 'sequences/Date01_Sub01_x/t0003.000/k0.color.jpg' in ids


def test_test_split_and_unknown_split(handmade):
    records = list(behave.iter_examples(handmade, split='test'))
    assert [r.example_id for r in records] == [
        'sequences/Date03_Sub04_y/t0001.000/k0.color.jpg',
        'sequences/Date03_Sub04_y/t0001.000/k1.color.jpg']
    assert all(r.body_params['body_model'] == 'smplh_f' for r in records)
    with pytest.raises(ValueError, match='split'):
        list(behave.iter_examples(handmade, split='val'))


def test_detection_replaces_box_if_iou_above_half(handmade):
    image_id = 'sequences/Date01_Sub01_x/t0001.000/k1.color.jpg'
    gt = next(r for r in behave.iter_examples(handmade) if r.example_id == image_id).box
    near = gt + np.array([1.0, 0.5, 0.0, 0.0], np.float32)
    far = np.array([0.0, 0.0, 5.0, 5.0], np.float32)
    detections = {image_id: [far.tolist(), near.tolist() + [0.9]]}
    got = next(r for r in behave.iter_examples(handmade, detections=detections)
               if r.example_id == image_id).box
    np.testing.assert_allclose(got, near)
    detections = {image_id: [far.tolist()]}  # IoU < 0.5: keep the joint box
    got = next(r for r in behave.iter_examples(handmade, detections=detections)
               if r.example_id == image_id).box
    np.testing.assert_allclose(got, gt)


def test_missing_mask_and_image_are_counted_skips(handmade):
    frame = os.path.join(handmade, 'sequences', 'Date01_Sub01_x', 't0001.000')
    os.remove(os.path.join(frame, 'k0.person_mask.jpg'))
    os.remove(os.path.join(frame, 'k1.color.jpg'))
    records = [r for r in behave.iter_examples(handmade) if 't0001.000' in r.example_id]
    assert [(type(r).__name__, r.reason) for r in records] == [
        ('Skip', 'missing person mask'), ('Skip', 'missing image')]
    assert records[0].file == os.path.join(frame, 'k0.person_mask.jpg')


def _first_error(root, **kwargs):
    with pytest.raises(DatasetError) as info:
        list(behave.iter_examples(root, **kwargs))
    return info.value


def _fit_path(root, frame='t0001.000'):
    return os.path.join(root, 'sequences', 'Date01_Sub01_x', frame, 'person', 'fit02',
                        'person_fit.pkl')


@pytest.mark.parametrize('fit, field', [
    (dict(pose=np.zeros(156), trans=np.zeros(3)), 'betas'),
    (dict(betas=np.zeros(10), trans=np.zeros(3)), 'pose'),
    (dict(pose=np.zeros(72), betas=np.zeros(10), trans=np.zeros(3)), 'pose'),
    (dict(pose=np.zeros(156), betas=np.zeros(10), trans=np.zeros(2)), 'trans'),
    (dict(pose=np.full(156, np.nan), betas=np.zeros(10), trans=np.zeros(3)), 'pose'),
    ([1, 2, 3], 'file'),
])
def test_bad_fit_pickle(handmade, fit, field):
    with open(_fit_path(handmade), 'wb') as f:
        pickle.dump(fit, f)
    error = _first_error(handmade)
    assert (error.file, error.field) == (_fit_path(handmade), field)


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_fit_pickle_with_foreign_globals_is_refused(handmade):
    with open(_fit_path(handmade), 'wb') as f:
        pickle.dump(dict(pose=np.zeros(156), betas=np.zeros(10), trans=np.zeros(3), x=_Evil()), f)
    error = _first_error(handmade)
    assert error.file == _fit_path(handmade) and 'refusing' in str(error)


@pytest.mark.parametrize('gender', ['neutral', 'other', 3])
def test_unknown_gender(handmade, gender):
    path = os.path.join(handmade, 'sequences', 'Date01_Sub01_x', 'info.json')
    with open(path) as f:
        info = json.load(f)
    info['gender'] = gender
    write_json(path, info)
    error = _first_error(handmade)
    assert (error.file, error.field) == (path, 'gender')


def test_missing_structural_files(handmade):
    info = os.path.join(handmade, 'sequences', 'Date01_Sub01_x', 'info.json')
    calib = os.path.join(handmade, 'calibs', 'intrinsics', '1', 'calibration.json')
    split = os.path.join(handmade, 'split.json')
    os.remove(calib)
    assert _first_error(handmade).file == calib
    os.remove(info)
    assert _first_error(handmade).file == info
    os.remove(split)
    assert _first_error(handmade).file == split


def test_bad_joints_file_and_no_sequence_present(handmade):
    path = os.path.join(handmade, 'sequences', 'Date01_Sub01_x', 't0001.000', 'person',
                        'person_J3d.json')
    write_json(path, dict(body_joints3d=[[0.0, 0.0, 1.0, 1.0]] * 24))
    error = _first_error(handmade)
    assert (error.file, error.field) == (path, 'body_joints3d')
    write_json(os.path.join(handmade, 'split.json'), dict(train=['Date09_Sub09_none']))
    error = _first_error(handmade)
    assert error.field == 'train' and 'none of the 1 train sequences' in str(error)


def test_info_json_folders_fall_back_to_the_calibs_tree(handmade):
    path = os.path.join(handmade, 'sequences', 'Date01_Sub01_x', 'info.json')
    with open(path) as f:
        info = json.load(f)
    info['intrinsic'] = '/nonexistent/calibs/intrinsics'
    info['config'] = '/nonexistent/calibs/Date01/config'
    write_json(path, info)
    assert sum(isinstance(r, Example) for r in behave.iter_examples(handmade)) == 4
    os.rename(os.path.join(handmade, 'calibs', 'Date01'), os.path.join(handmade, 'calibs', 'D1'))
    error = _first_error(handmade)
    assert (error.file, error.field) == (path, 'config')


# ---------------------------------------------------------------------------------------------
# Synthetic BEHAVE rendered from the synthetic SMPL+H bodies

@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
    from nlf_tf.body_models import synthetic as body_synthetic
    from nlf_tf.data import synthetic_behave

    base = tmp_path_factory.mktemp('synthetic_behave')
    body_model_dir = str(base / 'body_models')
    body_synthetic.write_synthetic_body_models(body_model_dir, families=('smplh',))
    summary = synthetic_behave.write_behave(str(base / 'behave'), 0, body_model_dir)
    return summary, body_model_dir


def test_synthetic_examples_joints_land_on_the_mask_and_boxes(synthetic):
    from nlf_tf.body_models import files, kinds, numpy_model

    summary, body_model_dir = synthetic
    root = summary['root']
    records = list(behave.iter_examples(root, body_model_dir=body_model_dir))
    examples = [r for r in records if isinstance(r, Example)]
    skips = [r for r in records if isinstance(r, Skip)]
    train = summary['split']['train']
    kept_frames = {(name, f) for name in train for f in summary['sequences'][name]['frames']
                   if f not in summary['sequences'][name]['repeated']}
    assert len(examples) == 4 * len(kept_frames)
    assert {(e.example_id.split('/')[1], e.example_id.split('/')[2]) for e in examples} == \
        kept_frames
    assert sorted((s.example_id, s.reason) for s in skips) == sorted(
        (f'sequences/{name}/{f}', 'pose too similar to a recently kept frame')
        for name in train for f in summary['sequences'][name]['repeated'])

    height, width = summary['image_shape']
    fractions = []
    for e in examples:
        e.validate()
        params = e.body_params
        gender = summary['sequences'][e.example_id.split('/')[1]]['gender']
        assert params['body_model'] == kinds.kind_name('smplh', gender)
        model = files.load_body_model(body_model_dir, 'smplh', gender)
        _, joints = numpy_model.forward(model, params['pose'][None], params['shape'][None],
                                        trans=params['trans'][None])
        joints = joints[0]
        # independent projection with the calibration files' numbers
        frame_dir = os.path.dirname(e.image_path)
        k = int(os.path.basename(e.image_path)[1])
        seq = e.example_id.split('/')[1]
        with open(os.path.join(root, 'calibs', 'intrinsics', str(k), 'calibration.json')) as f:
            color = json.load(f)['color']
        with open(os.path.join(root, 'calibs', seq[:6], 'config', str(k), 'config.json')) as f:
            config = json.load(f)
        K = [[color['fx'], 0, color['cx']], [0, color['fy'], color['cy']], [0, 0, 1]]
        dist = [color[key] for key in ('k1', 'k2', 'p1', 'p2', 'k3', 'k4', 'k5', 'k6')]
        rot = np.reshape(config['rotation'], (3, 3))
        uv = project(joints, K, rot, np.array(config['translation']), dist)
        np.testing.assert_allclose(e.camera.world_to_image(joints), uv, atol=1e-2)

        mask = rle.decode(e.mask_rle)
        assert mask.shape == (height, width)
        pix = np.round(uv).astype(int)
        inside = (pix[:, 0] >= 0) & (pix[:, 0] < width) & (pix[:, 1] >= 0) & (pix[:, 1] < height)
        on_mask = np.zeros(len(pix), bool)
        on_mask[inside] = mask[pix[inside, 1], pix[inside, 0]] > 0
        fractions.append(on_mask.mean())

        with open(os.path.join(frame_dir, 'person', 'person_J3d.json')) as f:
            body25_pts = np.reshape(json.load(f)['body_joints3d'], (25, 4))[:, :3]
        all_uv = np.concatenate([uv, project(body25_pts, K, rot, np.array(config['translation']),
                                             dist)])
        np.testing.assert_allclose(e.box, expected_box(all_uv, (width, height)), atol=0.02)
    assert min(fractions) >= 0.9, fractions


def test_synthetic_without_body_model_uses_body25_boxes(synthetic):
    summary, _ = synthetic
    examples = [r for r in behave.iter_examples(summary['root'], split='test')
                if isinstance(r, Example)]
    assert examples and all(e.body_params['body_model'] == 'smplh_m' for e in examples)
    for e in examples:
        frame_dir = os.path.dirname(e.image_path)
        with open(os.path.join(frame_dir, 'person', 'person_J3d.json')) as f:
            pts = np.reshape(json.load(f)['body_joints3d'], (25, 4))[:, :3]
        h, w = summary['image_shape']
        box = expected_box(e.camera.world_to_image(pts).astype(np.float64), (w, h))
        np.testing.assert_allclose(e.box, box, atol=0.02)
