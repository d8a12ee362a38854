import json
import os
import pickle

import numpy as np
import pytest

from nlf_tf.data import synthetic_behave
from nlf_tf.data.camera import Camera

DIST_KEYS = ('k1', 'k2', 'p1', 'p2', 'k3', 'k4', 'k5', 'k6')


# ---------------------------------------------------------------------------------------------
# Written folder

@pytest.fixture(scope='module')
def written(tmp_path_factory):
    from nlf_tf.body_models import synthetic as body_synthetic

    base = tmp_path_factory.mktemp('synthetic_behave_writer')
    body_model_dir = str(base / 'body_models')
    body_synthetic.write_synthetic_body_models(body_model_dir, families=('smplh',))
    sequences = (('Date01_Sub01_boxsmall_hand', 'train', 'male'),
                 ('Date03_Sub07_yogamat_hand', 'test', 'female'))
    summary = synthetic_behave.write_behave(str(base / 'a'), 3, body_model_dir,
                                            frames_per_sequence=3, sequences=sequences)
    return summary, body_model_dir, base, sequences


def _json(path):
    with open(path) as f:
        return json.load(f)


def _pickle(path):
    with open(path, 'rb') as f:
        return pickle.load(f)


def _decode(path):
    import tensorflow as tf
    with open(path, 'rb') as f:
        return tf.io.decode_jpeg(f.read()).numpy()


def test_layout_split_info_and_calibration(written):
    summary, _, _, _ = written
    root = summary['root']
    assert _json(os.path.join(root, 'split.json')) == {
        'train': ['Date01_Sub01_boxsmall_hand'], 'test': ['Date03_Sub07_yogamat_hand']}
    info = _json(os.path.join(root, 'sequences', 'Date03_Sub07_yogamat_hand', 'info.json'))
    assert info['gender'] == 'female' and info['kinects'] == [0, 1, 2, 3]
    seq_dir = os.path.join(root, 'sequences', 'Date03_Sub07_yogamat_hand')
    assert os.path.isdir(os.path.join(seq_dir, info['config'], '3'))
    assert os.path.isdir(os.path.join(seq_dir, info['intrinsic'], '3'))
    height, width = summary['image_shape']
    assert (height, width) == (192, 256)
    for k in range(4):
        color = _json(os.path.join(root, 'calibs', 'intrinsics', str(k),
                                   'calibration.json'))['color']
        assert (color['width'], color['height']) == (width, height)
        assert len(color['opencv']) == 12
        np.testing.assert_allclose(color['opencv'][4:], [color[key] for key in DIST_KEYS])
        assert color['k1'] != 0 and color['k4'] != 0  # rational model in use
        for date in ('Date01', 'Date03'):
            config = _json(os.path.join(root, 'calibs', date, 'config', str(k), 'config.json'))
            rot = np.reshape(config['rotation'], (3, 3))
            np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)
            assert np.linalg.det(rot) > 0
            if k == 1:  # the world is Kinect 1's colour frame
                np.testing.assert_array_equal(rot, np.eye(3))
                assert config['translation'] == [0.0, 0.0, 0.0]


def test_fits_frames_and_renders_agree(written):
    from nlf_tf.body_models import files, numpy_model

    summary, body_model_dir, _, sequences = written
    root = summary['root']
    height, width = summary['image_shape']
    for name, _, gender in sequences:
        frames = summary['sequences'][name]['frames']
        assert frames == ['t0000.000', 't0001.000', 't0002.000']
        assert summary['sequences'][name]['repeated'] == ['t0002.000']
        seq_dir = os.path.join(root, 'sequences', name)
        fits = [_pickle(os.path.join(seq_dir, f, 'person', 'fit02', 'person_fit.pkl'))
                for f in frames]
        for fit in fits:
            assert {k: (v.dtype, v.shape) for k, v in fit.items()} == {
                'pose': (np.float32, (156,)), 'betas': (np.float32, (10,)),
                'trans': (np.float32, (3,))}
        for key in ('pose', 'betas', 'trans'):
            np.testing.assert_array_equal(fits[2][key], fits[0][key])
        model = files.load_body_model(body_model_dir, 'smplh', gender)
        vertices, joints = numpy_model.forward(
            model, np.stack([f['pose'] for f in fits]), fits[0]['betas'],
            trans=np.stack([f['trans'] for f in fits]))
        # new frames are >= 0.2 m apart (pelvis), the person upright (head above the pelvis)
        assert np.linalg.norm(joints[1, 0] - joints[0, 0]) >= 0.19
        assert np.all(joints[:, 15, 1] < joints[:, 0, 1] - 0.3)
        j3d = [np.reshape(_json(os.path.join(seq_dir, f, 'person', 'person_J3d.json'))[
            'body_joints3d'], (25, 4)) for f in frames]
        np.testing.assert_allclose(j3d[0][:, :3], j3d[2][:, :3])
        np.testing.assert_allclose(j3d[0][8, :3], joints[0, 0], atol=1e-6)  # MidHip = pelvis
        np.testing.assert_allclose(j3d[0][1, :3], joints[0, 12], atol=1e-6)  # neck

        date = name[:6]
        for k in range(4):
            color = _json(os.path.join(root, 'calibs', 'intrinsics', str(k),
                                       'calibration.json'))['color']
            config = _json(os.path.join(root, 'calibs', date, 'config', str(k), 'config.json'))
            camera = Camera([[color['fx'], 0, color['cx']], [0, color['fy'], color['cy']],
                             [0, 0, 1]], np.reshape(config['rotation'], (3, 3)).T,
                            config['translation'], [color[key] for key in DIST_KEYS])
            for f, frame in enumerate(frames[:2]):
                image = _decode(os.path.join(seq_dir, frame, f'k{k}.color.jpg'))
                mask = _decode(os.path.join(seq_dir, frame, f'k{k}.person_mask.jpg'))
                assert image.shape == (height, width, 3) and mask.shape == (height, width, 1)
                person = mask[..., 0] > 127
                assert 0.02 < person.mean() < 0.5
                # every surface vertex projects onto the silhouette (or right at its edge)
                uv = np.round(camera.world_to_image(vertices[f])).astype(int)
                assert np.all((uv >= 0) & (uv < [width, height]))
                assert person[uv[:, 1], uv[:, 0]].mean() > 0.9
                grown = person.copy()  # 1-pixel dilation (3 x 3)
                grown[1:] |= person[:-1]
                grown[:-1] |= person[1:]
                grown[:, 1:] |= grown[:, :-1].copy()
                grown[:, :-1] |= grown[:, 1:].copy()
                assert grown[uv[:, 1], uv[:, 0]].all()
                # and the silhouette is no larger than the projected vertices' hull allows
                lo, hi = uv.min(axis=0), uv.max(axis=0)
                rows, cols = np.nonzero(person)
                assert cols.min() >= lo[0] - 2 and cols.max() <= hi[0] + 2
                assert rows.min() >= lo[1] - 2 and rows.max() <= hi[1] + 2
                # the person is drawn in saturated part colours, the background is greyish
                chroma = image.max(axis=2).astype(int) - image.min(axis=2)
                assert chroma[person].mean() > chroma[~person].mean() + 20


def test_deterministic_per_seed(written):
    summary, body_model_dir, base, sequences = written
    again = synthetic_behave.write_behave(str(base / 'b'), 3, body_model_dir,
                                          frames_per_sequence=3, sequences=sequences)
    other = synthetic_behave.write_behave(str(base / 'c'), 4, body_model_dir,
                                          frames_per_sequence=3, sequences=sequences[:1])
    rel = os.path.join('sequences', sequences[0][0], 't0001.000', 'person', 'fit02',
                       'person_fit.pkl')
    first = _pickle(os.path.join(summary['root'], rel))
    np.testing.assert_array_equal(_pickle(os.path.join(again['root'], rel))['pose'],
                                  first['pose'])
    assert not np.array_equal(_pickle(os.path.join(other['root'], rel))['pose'], first['pose'])
    rel = os.path.join('calibs', 'intrinsics', '2', 'calibration.json')
    assert _json(os.path.join(summary['root'], rel)) == _json(os.path.join(again['root'], rel))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='frames_per_sequence'):
        synthetic_behave.write_behave(str(tmp_path), 0, str(tmp_path), frames_per_sequence=2)
