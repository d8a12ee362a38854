import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from nlf_tf.data import prepare, rle, tfrecord
from nlf_tf.data.camera import Camera, rodrigues
from nlf_tf.data.example import DatasetError, Example, Skip


# ---------------------------------------------------------------------------------------------
# Fixtures: tiny synthetic examples
# ---------------------------------------------------------------------------------------------

def _blob_image(shape, center, sigma=2.5):
    h, w = shape
    ys, xs = np.mgrid[:h, :w]
    value = np.exp(-((xs - center[0]) ** 2 + (ys - center[1]) ** 2) / (2 * sigma ** 2))
    return np.repeat(np.round(value * 255)[..., np.newaxis], 3, axis=2).astype(np.uint8)


def _example_2d(i, shape=(40, 56)):
    rng = np.random.default_rng(i)
    image = rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)
    box = np.array([8 + i % 5, 6 + i % 3, 20, 24], np.float32)
    joints = box[:2] + rng.uniform(0, 1, (5, 2)).astype(np.float32) * box[2:]
    joints[1] = np.nan
    return Example(dataset='coco', category='kp2d', example_id=f'img{i}#0', image_path=None,
                   image=image, camera=Camera.from_fov(8, shape), box=box, joints2d=joints)


def _items(n, skip_every=0):
    """n items; every skip_every-th one a Skip."""
    items = []
    for i in range(n):
        if skip_every and i % skip_every == skip_every - 1:
            items.append(Skip(f'img{i}#0', 'too few joints', 'ann.json', 'keypoints'))
        else:
            items.append(_example_2d(i))
    return items


def _shard_bytes(out_dir):
    return {name: open(os.path.join(out_dir, name), 'rb').read()
            for name in sorted(os.listdir(out_dir)) if name.endswith('.tfrecord')}


def _ids(path):
    return [tfrecord.parse_example(r)['example_id'].numpy().decode()
            for r in tfrecord.read_records(path)]


def _quiet(*args, **kwargs):
    pass


# ---------------------------------------------------------------------------------------------
# Crop geometry
# ---------------------------------------------------------------------------------------------

def _distorted_camera():
    k = np.array([[300.0, 0, 62], [0, 310.0, 50], [0, 0, 1]])
    return Camera(k, rodrigues([0.1, -0.2, 0.05]), [0.5, -1.0, 2.0],
                  distortion=[-0.25, 0.08, 0.002, -0.001, 0.0], world_up=(0, -1, 0))


def _kp3d_example(camera, shape=(100, 128)):
    rng = np.random.default_rng(0)
    # 3D joints in front of the camera, off the optical axis (so the turn matters)
    cam_points = np.stack([rng.uniform(-0.3, 0.3, 8) + 0.35, rng.uniform(-0.4, 0.4, 8),
                           rng.uniform(3.8, 4.2, 8)], axis=1)
    world = camera.camera_to_world(cam_points)
    joints2d = camera.world_to_image(world)
    lo, hi = joints2d.min(0) - 4, joints2d.max(0) + 4
    box = np.concatenate([lo, hi - lo])
    image = _blob_image(shape, joints2d[0])
    return Example(dataset='mads', category='kp3d', example_id='s#0', image_path=None,
                   image=image, camera=camera, box=box, joints2d=joints2d, joints3d=world)


def test_crop_projection_matches_reprojected_2d_and_image_content():
    example = _kp3d_example(_distorted_camera())
    record = prepare.process_example(example)
    parsed = {k: v.numpy() for k, v in tfrecord.parse_example(tf.constant(record)).items()}
    stored_camera = tfrecord.camera_from_parsed(parsed)
    assert stored_camera.distortion is None
    # joints3d stay world metres
    np.testing.assert_allclose(parsed['joints3d'], example.joints3d, atol=1e-6)
    # projection of the 3D joints with the stored camera == the stored (reprojected) 2D joints
    np.testing.assert_allclose(stored_camera.world_to_image(parsed['joints3d']),
                               parsed['joints2d'], atol=2e-3)
    # the crop camera looks at the box centre: its optical axis is the box-centre ray
    center = example.box[:2] + example.box[2:] / 2
    ray = example.camera.image_to_world(center) - example.camera.optical_center
    axis = stored_camera.rot_world_to_cam[2]
    np.testing.assert_allclose(axis, ray / np.linalg.norm(ray), atol=1e-5)
    # the image content moved with the geometry: the blob drawn at joint 0 is found at the
    # stored joint 0 (distorted-source warp path)
    image = tf.io.decode_jpeg(parsed['image_jpeg']).numpy().astype(np.float32)[..., 0]
    assert image.shape == (parsed['image_height'], parsed['image_width'])
    peak = np.array(np.unravel_index(np.argmax(image), image.shape))[::-1]
    np.testing.assert_allclose(peak, parsed['joints2d'][0], atol=1.0)


def test_crop_geometry_2d_matches_hand_computation():
    shape = (300, 400)
    camera = Camera.from_fov(8, shape)
    box = np.array([120.0, 60.0, 100.0, 180.0], np.float32)
    image = _blob_image(shape, (170.0, 150.0), sigma=4)
    example = Example(dataset='coco', category='kp2d', example_id='a#0', image_path=None,
                      image=image, camera=camera, box=box,
                      joints2d=np.array([[170.0, 150.0], [np.nan, np.nan]], np.float32),
                      mask_rle=rle.encode(_rect_mask(shape, 130, 70, 190, 200))).validate()
    new, crop = prepare.efficient_crop(example, image)
    # Independent computation: no turn for 2D data, so everything is a crop + scale.
    w, h = 100.0, 180.0
    side = max(math.cos(math.pi / 6) * w + 0.5 * h, math.cos(math.pi / 6) * h + 0.5 * w)
    side *= (1 / 0.85) * 1.1 * (1 / 0.85)
    scale = min(1.2, 1.5 * 256 / max(w, h))
    x0 = max(170.0 - side / 2, -0.5)
    y0 = max(150.0 - side / 2, -0.5)
    x1 = min(170.0 + side / 2, 399.5)
    y1 = min(150.0 + side / 2, 299.5)
    assert crop.shape == (round((y1 - y0) * scale), round((x1 - x0) * scale), 3)
    k = camera.intrinsic_matrix
    expected_k = np.array([[k[0, 0] * scale, 0, (k[0, 2] - x0) * scale],
                           [0, k[1, 1] * scale, (k[1, 2] - y0) * scale], [0, 0, 1]])
    np.testing.assert_allclose(new.camera.intrinsic_matrix, expected_k, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(new.box, [(120 - x0) * scale, (60 - y0) * scale, w * scale,
                                         h * scale], atol=1e-3)
    np.testing.assert_allclose(new.joints2d[0], [(170 - x0) * scale, (150 - y0) * scale],
                               atol=1e-3)
    assert np.isnan(new.joints2d[1]).all()
    peak = np.array(np.unravel_index(np.argmax(crop[..., 0]), crop.shape[:2]))[::-1]
    np.testing.assert_allclose(peak, new.joints2d[0], atol=1.0)
    # mask: the rectangle's pixel centres 130..190 x 70..200 map by the same affine map
    mask = rle.decode(new.mask_rle)
    assert mask.shape == crop.shape[:2]
    ys, xs = np.nonzero(mask)
    np.testing.assert_allclose([xs.min(), xs.max()], [(130 - x0) * scale, (190 - x0) * scale],
                               atol=1.0)
    np.testing.assert_allclose([ys.min(), ys.max()], [(70 - y0) * scale, (200 - y0) * scale],
                               atol=1.0)


def _rect_mask(shape, x0, y0, x1, y1):
    mask = np.zeros(shape, np.uint8)
    mask[y0:y1 + 1, x0:x1 + 1] = 1
    return mask


def test_box_centre_maps_to_crop_centre():
    example = _kp3d_example(_distorted_camera(), shape=(400, 500))
    new, crop = prepare.efficient_crop(example.validate(), example.image)
    center = new.box[:2] + new.box[2:] / 2
    h, w = crop.shape[:2]
    np.testing.assert_allclose(center, [(w - 1) / 2, (h - 1) / 2], atol=1.0)


@pytest.mark.parametrize('distorted, antialias', [(False, 1), (False, 2), (True, 1), (True, 2)])
def test_warp_image_matches_camera_reproject_image(distorted, antialias):
    rng = np.random.default_rng(1)
    image = rng.random((30, 40, 2)).astype(np.float32)
    camera = _distorted_camera() if distorted else Camera(_distorted_camera().intrinsic_matrix)
    new_camera = camera.turn_towards(target_image_point=[20, 14]).undistort().scale_output(0.8)
    ours = prepare.warp_image(image, camera, new_camera, (25, 33), antialias)
    reference = camera.reproject_image(image, new_camera, (25, 33), antialias_factor=antialias)
    np.testing.assert_allclose(ours, reference, atol=2e-4)


def _param_params():
    return dict(body_model='smplh_f', pose=np.linspace(-0.5, 0.5, 156), shape=np.arange(10) / 4,
                trans=[0.25, -0.5, 4.0], kid_factor=0.0, scale=0.9, is_shape_valid=True)


def test_param_example_keeps_world_body_params_through_the_crop(tmp_path):
    example = _kp3d_example(_distorted_camera())
    example.category, example.dataset = 'param', 'behave'
    example.body_params = _param_params()
    record = prepare.process_example(example)
    parsed = {k: v.numpy() for k, v in tfrecord.parse_example(tf.constant(record)).items()}
    # The crop turned the camera, but the parameters (world frame) are stored unchanged.
    assert not np.allclose(parsed['rotation'], example.camera.rot_world_to_cam, atol=1e-3)
    assert parsed['category'] == b'param' and parsed['body_model'] == b'smplh_f'
    np.testing.assert_allclose(parsed['pose'], np.linspace(-0.5, 0.5, 156), atol=1e-7)
    np.testing.assert_allclose(parsed['shape'], np.arange(10) / 4)
    np.testing.assert_allclose(parsed['trans'], [0.25, -0.5, 4.0])
    assert parsed['expression'].shape == (0,)
    np.testing.assert_allclose(parsed['scale'], 0.9)
    assert parsed['kid_factor'] == 0 and parsed['is_shape_valid'] == 1

    # The job writes them too (and refuses a param example without parameters).
    example = _kp3d_example(Camera(_distorted_camera().intrinsic_matrix))
    example.category, example.dataset = 'param', 'behave'
    example.body_params = dict(_param_params(), is_shape_valid=False)
    prepare.prepare_dataset([example], str(tmp_path / 'out'), 'behave', 'train', num_shards=1,
                            crop=False, log=_quiet)
    record, = tfrecord.read_records(
        str(tmp_path / 'out' / 'behave-train-00000-of-00001.tfrecord'))
    parsed = tfrecord.parse_example(record)
    assert parsed['is_shape_valid'].numpy() == 0
    np.testing.assert_allclose(parsed['trans'].numpy(), [0.25, -0.5, 4.0])
    example.body_params = None
    with pytest.raises(DatasetError, match='body_params'):
        prepare.process_example(example)


# ---------------------------------------------------------------------------------------------
# The job: sharding, counts, resume, refusal
# ---------------------------------------------------------------------------------------------

def test_sharding_round_robin_and_deterministic(tmp_path):
    items = _items(11, skip_every=4)
    manifest = prepare.prepare_dataset(items, str(tmp_path / 'a'), 'coco', 'train',
                                       num_shards=3, log=_quiet)
    prepare.prepare_dataset(_items(11, skip_every=4), str(tmp_path / 'b'), 'coco', 'train',
                            num_shards=3, log=_quiet, num_workers=2)
    assert _shard_bytes(tmp_path / 'a') == _shard_bytes(tmp_path / 'b')
    kept = [it.example_id for it in items if isinstance(it, Example)]
    for i, shard in enumerate(manifest['shards']):
        assert shard['file'] == f'coco-train-{i:05d}-of-00003.tfrecord'
        assert _ids(tmp_path / 'a' / shard['file']) == kept[i::3]
        assert shard['num_examples'] == len(kept[i::3])
    assert manifest['num_examples'] == 9 and manifest['num_read'] == 11
    assert manifest['category'] == 'kp2d' and manifest['dataset'] == 'coco'
    assert manifest['schema_version'] == tfrecord.SCHEMA_VERSION
    assert json.load(open(tmp_path / 'a' / 'manifest.json')) == manifest
    assert sorted(os.listdir(tmp_path / 'a')) == sorted(
        [s['file'] for s in manifest['shards']] + ['manifest.json'])
    # a rerun of a finished folder does nothing and returns the manifest
    assert prepare.prepare_dataset(items, str(tmp_path / 'a'), 'coco', 'train', num_shards=3,
                                   log=_quiet) == manifest


class _Interrupting:
    def __init__(self, items, after):
        self.items, self.after = items, after

    def __call__(self):
        for i, item in enumerate(self.items):
            if i == self.after:
                raise KeyboardInterrupt
            yield item


@pytest.mark.parametrize('checkpoint_every', [3, 1000])
def test_resume_after_interruption_gives_identical_output(tmp_path, monkeypatch,
                                                          checkpoint_every):
    items = _items(13, skip_every=5)
    reference = prepare.prepare_dataset(items, str(tmp_path / 'ref'), 'coco', 'train',
                                        num_shards=3, log=_quiet)
    out = str(tmp_path / 'out')
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_dataset(_Interrupting(items, 8), out, 'coco', 'train', num_shards=3,
                                log=_quiet, checkpoint_every=checkpoint_every)
    progress = json.load(open(os.path.join(out, 'progress.json')))
    assert progress['items_done'] == 8  # the interrupt checkpoint is taken at a clean point
    assert any(name.endswith('.tmp') for name in os.listdir(out))

    processed = []
    original = prepare.process_example
    monkeypatch.setattr(prepare, 'process_example',
                        lambda ex, **kw: processed.append(ex.example_id) or original(ex, **kw))
    logs = []
    manifest = prepare.prepare_dataset(lambda: iter(items), out, 'coco', 'train', num_shards=3,
                                       log=logs.append, checkpoint_every=checkpoint_every)
    assert any('resuming' in line for line in logs)
    # items before the checkpoint were not processed again
    assert processed == [it.example_id for it in items[8:] if isinstance(it, Example)]
    assert _shard_bytes(out) == _shard_bytes(tmp_path / 'ref')
    assert manifest == reference
    assert not [n for n in os.listdir(out) if n.endswith('.tmp') or n == 'progress.json']


def test_resume_after_hard_crash_truncates_uncommitted_records(tmp_path, monkeypatch):
    items = _items(10)
    reference = prepare.prepare_dataset(items, str(tmp_path / 'ref'), 'coco', 'train',
                                        num_shards=2, log=_quiet)
    out = str(tmp_path / 'out')
    # A crash without the interrupt checkpoint: records written after the last checkpoint stay
    # in the segment files and must be discarded on resume.
    real_write = prepare._write_json_atomic
    calls = {'n': 0}

    def failing_write(path, data):
        calls['n'] += 1
        if calls['n'] > 3:  # initial state, segment list, checkpoint after 4 items; then crash
            raise SystemExit('power cut')
        real_write(path, data)

    monkeypatch.setattr(prepare, '_write_json_atomic', failing_write)
    with pytest.raises(SystemExit):
        prepare.prepare_dataset(items, out, 'coco', 'train', num_shards=2, log=_quiet,
                                checkpoint_every=4)
    monkeypatch.setattr(prepare, '_write_json_atomic', real_write)
    assert json.load(open(os.path.join(out, 'progress.json')))['items_done'] == 4
    manifest = prepare.prepare_dataset(items, out, 'coco', 'train', num_shards=2, log=_quiet)
    assert manifest == reference
    assert _shard_bytes(out) == _shard_bytes(tmp_path / 'ref')


def test_skip_reasons_counted_and_listed(tmp_path):
    corrupt = tmp_path / 'broken.jpg'
    corrupt.write_bytes(b'this is not an image')
    good = tmp_path / 'good.jpg'
    good.write_bytes(tf.io.encode_jpeg(np.full((40, 56, 3), 99, np.uint8)).numpy())
    camera = Camera.from_fov(8, (40, 56))
    items = _items(4, skip_every=2) + [
        Example('coco', 'kp2d', 'c#0', str(corrupt), None, camera, [1, 1, 10, 10]),
        Example('coco', 'kp2d', 'g#0', str(good), None, camera, [1, 1, 10, 10]),
        Example('coco', 'kp2d', 'o#0', str(good), None, camera, [500, 500, 10, 10]),
        Example('coco', 'kp2d', 'z#0', str(good), None, camera, [1, 1, 0, 10]),
    ]
    logs = []
    manifest = prepare.prepare_dataset(items, str(tmp_path / 'out'), 'coco', 'val',
                                       num_shards=2, log=logs.append, max_listed_skips=3)
    assert manifest['skipped'] == {'too few joints': 2, 'corrupt image': 1,
                                   'box outside image': 1, 'zero-area box': 1}
    assert manifest['num_skipped'] == 5 and manifest['num_examples'] == 3
    assert manifest['skipped_examples'][2] == {'example_id': 'c#0', 'reason': 'corrupt image',
                                               'file': str(corrupt), 'field': 'image_path'}
    assert len(manifest['skipped_examples']) == 3
    assert any('skipped 1: corrupt image' in line for line in logs)
    assert any('kept 3 examples' in line for line in logs)


def test_dataset_errors_stop_the_job(tmp_path):
    camera = Camera.from_fov(8, (40, 56))
    missing = Example('coco', 'kp2d', 'm#0', str(tmp_path / 'nope.jpg'), None, camera,
                      [1, 1, 10, 10])
    with pytest.raises(DatasetError) as info:
        prepare.prepare_dataset(_items(2) + [missing], str(tmp_path / 'a'), 'coco', 'train',
                                num_shards=1, log=_quiet)
    assert info.value.file == str(tmp_path / 'nope.jpg') and info.value.field == 'image_path'

    def reader():
        yield _example_2d(0)
        raise DatasetError('ann.json', 'annotations', 'missing')

    with pytest.raises(DatasetError, match="ann.json: field 'annotations'"):
        prepare.prepare_dataset(reader, str(tmp_path / 'b'), 'coco', 'train', num_shards=1,
                                log=_quiet)
    other = _example_2d(5)
    other.category = 'dense'
    with pytest.raises(DatasetError, match='category'):
        prepare.prepare_dataset(_items(2) + [other], str(tmp_path / 'c'), 'coco', 'train',
                                num_shards=1, log=_quiet)


def test_refuses_foreign_files_and_changed_settings(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'coco-train-00000-of-00002.tfrecord').write_bytes(b'user data')
    with pytest.raises(prepare.PrepareError, match='refusing to overwrite'):
        prepare.prepare_dataset(_items(2), str(out), 'coco', 'train', num_shards=4, log=_quiet)
    assert (out / 'coco-train-00000-of-00002.tfrecord').read_bytes() == b'user data'

    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'manifest.json').write_text('{"mine": true}')
    with pytest.raises(prepare.PrepareError, match='not written by nlf-tf-prepare'):
        prepare.prepare_dataset(_items(2), str(foreign), 'coco', 'train', log=_quiet)

    done = str(tmp_path / 'done')
    prepare.prepare_dataset(_items(2), done, 'coco', 'train', num_shards=2, log=_quiet)
    with pytest.raises(prepare.PrepareError, match='num_shards'):
        prepare.prepare_dataset(_items(2), done, 'coco', 'train', num_shards=3, log=_quiet)

    partial = str(tmp_path / 'partial')
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_dataset(_Interrupting(_items(4), 2), partial, 'coco', 'train',
                                num_shards=2, log=_quiet)
    with pytest.raises(prepare.PrepareError, match='crop'):
        prepare.prepare_dataset(_items(4), partial, 'coco', 'train', num_shards=2, crop=False,
                                log=_quiet)


def test_no_crop_stores_original_jpeg_and_refuses_distortion(tmp_path):
    data = tf.io.encode_jpeg(np.full((40, 56, 3), 120, np.uint8), quality=80).numpy()
    path = tmp_path / 'img.jpg'
    path.write_bytes(data)
    example = Example('coco', 'kp2d', 'a#0', str(path), None, Camera.from_fov(8, (40, 56)),
                      [1, 2, 10, 12], joints2d=[[3.0, 4.0]])
    prepare.prepare_dataset([example], str(tmp_path / 'out'), 'coco', 'train', num_shards=1,
                            crop=False, log=_quiet)
    record, = tfrecord.read_records(str(tmp_path / 'out' / 'coco-train-00000-of-00001.tfrecord'))
    parsed = tfrecord.parse_example(record)
    assert parsed['image_jpeg'].numpy() == data
    assert (int(parsed['image_height']), int(parsed['image_width'])) == (40, 56)
    np.testing.assert_array_equal(parsed['joints2d'].numpy(), [[3.0, 4.0]])
    np.testing.assert_array_equal(parsed['box'].numpy(), [1, 2, 10, 12])

    distorted = Example('mads', 'kp3d', 'b#0', str(path), None, _distorted_camera(),
                        [1, 2, 10, 12], joints3d=[[0, 0, 3.0]])
    with pytest.raises(DatasetError, match='camera.distortion'):
        prepare.prepare_dataset([distorted], str(tmp_path / 'out2'), 'mads', 'train',
                                num_shards=1, crop=False, log=_quiet)


def test_limit_and_progress(tmp_path):
    logs = []
    manifest = prepare.prepare_dataset(_items(20), str(tmp_path / 'out'), 'coco', 'train',
                                       num_shards=2, limit=5, progress_every=2, log=logs.append)
    assert manifest['num_examples'] == 5 and manifest['num_read'] == 5
    assert sum('read,' in line for line in logs) == 2  # after items 2 and 4


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def cli(monkeypatch):
    from absl import flags

    from nlf_tf.cli import prepare as cli_prepare
    calls = []

    def iter_examples(root_dir, split, **options):
        calls.append((root_dir, split, options))
        yield from _items(6, skip_every=3)

    monkeypatch.setattr(cli_prepare, 'get_reader', lambda name: iter_examples)

    def run(*args):
        flags.FLAGS.unparse_flags()
        argv = flags.FLAGS(['nlf-tf-prepare', *args])
        try:
            return cli_prepare.main(argv)
        finally:
            flags.FLAGS.unparse_flags()

    run.calls = calls
    return run


def test_cli_runs_the_job(cli, tmp_path, capsys):
    out = tmp_path / 'out'
    code = cli('--dataset=coco', f'--root={tmp_path}', '--split=val', f'--out={out}',
               '--num_shards=2', '--progress_every=2')
    assert code == 0
    assert cli.calls == [(str(tmp_path), 'val', {})]
    manifest = json.load(open(out / 'manifest.json'))
    assert manifest['num_examples'] == 4 and manifest['skipped'] == {'too few joints': 2}
    text = capsys.readouterr().out
    assert 'kept 4 examples' in text and 'skipped 2: too few joints' in text
    assert 'coco/val: 2 read' in text


def test_cli_errors_exit_2(cli, tmp_path, capsys):
    code = cli('--dataset=coco', f'--root={tmp_path / "missing"}', f'--out={tmp_path / "o"}')
    assert code == 2
    assert 'does not exist' in capsys.readouterr().err

    code = cli('--dataset=densepose_coco', f'--root={tmp_path}', f'--out={tmp_path / "o"}')
    assert code == 2
    assert '--smpl_model' in capsys.readouterr().err

    (tmp_path / 'o2').mkdir()
    (tmp_path / 'o2' / 'coco-train-00000-of-00001.tfrecord').write_bytes(b'x')
    code = cli('--dataset=coco', f'--root={tmp_path}', f'--out={tmp_path / "o2"}',
               '--num_shards=1')
    assert code == 2
    assert 'refusing to overwrite' in capsys.readouterr().err


def test_cli_passes_smpl_model_to_densepose(cli, tmp_path):
    model = tmp_path / 'SMPL_NEUTRAL.pkl'
    model.write_bytes(b'model')
    # the fake reader yields 'coco' examples, so the job stops with a clear dataset mismatch
    code = cli('--dataset=densepose_coco', f'--root={tmp_path}', f'--out={tmp_path / "o"}',
               f'--smpl_model={model}')
    assert code == 2
    assert cli.calls[0][2] == {'smpl_model': str(model)}


@pytest.mark.parametrize('dataset', ['agora', 'behave'])
def test_cli_parametric_datasets_need_and_get_the_body_model_dir(cli, tmp_path, capsys, dataset):
    code = cli(f'--dataset={dataset}', f'--root={tmp_path}', f'--out={tmp_path / "o"}')
    assert code == 2
    assert '--body_model_dir' in capsys.readouterr().err
    models = tmp_path / 'body_models'
    models.mkdir()
    detections = tmp_path / 'detections.json'
    detections.write_text('{}')
    # the fake reader yields 'coco' examples, so the job stops with a clear dataset mismatch
    code = cli(f'--dataset={dataset}', f'--root={tmp_path}', f'--out={tmp_path / "o"}',
               f'--body_model_dir={models}', f'--detections={detections}')
    assert code == 2
    assert cli.calls[-1][2] == {'body_model_dir': str(models), 'detections': str(detections)}
