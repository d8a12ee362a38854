"""Tests of nlf-tf-inspect on tiny prepared folders written here with prepare_dataset."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from nlf_tf import config
from nlf_tf.cli import inspect as cli
from nlf_tf.data import inspect as lib
from nlf_tf.data import prepare
from nlf_tf.data.camera import Camera
from nlf_tf.data.example import Example, Skip

SHAPE = (60, 80)          # source image (H, W)
SIDE, POINTS = 40, 32     # proc_side, num_points
NUM_JOINTS = 17           # the real coco / densepose_coco specs
NUM_DENSE = 4
GREEN = (0, 255, 0)
RED = (255, 0, 0)
NO_AUG = ['--nogeom_aug', '--nohflip_aug', '--nocolor_aug', '--jpeg_aug_prob=0',
          '--occlude_aug_prob=0', '--background_aug_prob=0']


def _noise(rng):
    # Grey-ish noise: never exactly pure green or red, so drawn points are unambiguous.
    return rng.integers(40, 200, size=SHAPE + (3,), dtype=np.uint8)


def _box(i):
    return np.array([14.0 + 2 * i, 8.0 + i, 40.0 + 2 * i, 36.0], np.float32)


def _joints(rng, box):
    joints = box[:2] + rng.uniform(0.05, 0.95, (NUM_JOINTS, 2)).astype(np.float32) * box[2:]
    joints[3] = np.nan  # one unlabelled joint
    return joints


def _coco_items():
    items = []
    for i in range(10):
        rng = np.random.default_rng(i)
        box = _box(i)
        if i in (2, 7):
            items.append(Skip(f'img{i}#0', 'too few joints', 'person_keypoints_train.json',
                              'keypoints'))
            continue
        if i == 5:
            box = np.array([10, 10, 0, 20], np.float32)  # -> Skip 'zero-area box'
        items.append(Example(dataset='coco', category='kp2d', example_id=f'img{i}#0',
                             image_path=None, image=_noise(rng), camera=Camera.from_fov(8, SHAPE),
                             box=box, joints2d=_joints(rng, _box(i))))
    return items


def _dense_items():
    items = []
    for i in range(3):
        rng = np.random.default_rng(100 + i)
        box = _box(i)
        dense = box[:2] + rng.uniform(0.1, 0.9, (NUM_DENSE, 2)).astype(np.float32) * box[2:]
        items.append(Example(
            dataset='densepose_coco', category='dense', example_id=f'd{i}#0', image_path=None,
            image=_noise(rng), camera=Camera.from_fov(8, SHAPE), box=box,
            joints2d=_joints(rng, box), dense_imcoords=dense,
            dense_faces=np.zeros((NUM_DENSE, 3), np.int32),
            dense_barycoords=np.full((NUM_DENSE, 3), 1 / 3, np.float32),
            dense_canonical=rng.uniform(-0.3, 0.3, (NUM_DENSE, 3)).astype(np.float32)))
    return items


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp('prepared')
    coco, dense = str(root / 'coco_train'), str(root / 'densepose_train')
    quiet = lambda *a, **k: None  # noqa: E731
    # crop=False stores the source images as they are, so the expected crop geometry below only
    # depends on the examples written here.
    prepare.prepare_dataset(_coco_items(), coco, 'coco', 'train', num_shards=2, crop=False,
                            log=quiet)
    prepare.prepare_dataset(_dense_items(), dense, 'densepose_coco', 'train', num_shards=1,
                            crop=False, log=quiet)
    return dict(coco=coco, dense=dense)


def _expected_points():
    """Expected crop pixels of every kept example without augmentation: the 2D path zooms by
    S / max(w, h) and puts the box centre at the crop centre (S - 1) / 2 (independent of the
    pipeline code)."""
    result = []
    for item in _coco_items() + _dense_items():
        if isinstance(item, Skip) or item.box[2] == 0:
            continue
        box = item.box
        scale = SIDE / max(box[2], box[3])
        to_crop = lambda p: (p - (box[:2] + box[2:] / 2)) * scale + (SIDE - 1) / 2  # noqa
        joints = to_crop(item.joints2d)
        joints = joints[np.all(np.isfinite(joints), axis=1)]
        dense = (to_crop(item.dense_imcoords) if item.dense_imcoords is not None
                 else np.zeros((0, 2)))
        result.append((item.example_id, item.category, joints, dense))
    return result


def _square_mask(points, radius=1):
    mask = np.zeros((SIDE, SIDE), bool)
    for x, y in np.round(points).astype(int):
        mask[max(y - radius, 0):y + radius + 1, max(x - radius, 0):x + radius + 1] = True
    return mask


def _colour_mask(cell, colour):
    return np.all(cell == np.array(colour, np.uint8), axis=-1)


# ----------------------------------------------------------------------------------------
# Counts
# ----------------------------------------------------------------------------------------

def test_summary_counts_from_manifests(folders):
    manifests = [lib.load_manifest(folders['coco']), lib.load_manifest(folders['dense'])]
    summary = lib.summarize(manifests)
    got = [(g.dataset, g.split, g.category, g.folders, g.shards, g.examples, g.skipped)
           for g in summary['groups']]
    # category order param, kp3d, dense, kp2d; 10 coco items: 2 reader skips + 1 zero-area box
    assert got == [('densepose_coco', 'train', 'dense', 1, 1, 3, 0),
                   ('coco', 'train', 'kp2d', 1, 2, 7, 3)]
    assert summary['skipped'] == {('coco', 'train'): {'too few joints': 2, 'zero-area box': 1},
                                  ('densepose_coco', 'train'): {}}
    assert summary['per_category'] == {'dense': 3, 'kp2d': 7}
    assert (summary['total_examples'], summary['total_skipped']) == (10, 3)

    lines = [' '.join(line.split()) for line in lib.summary_lines(manifests, 2)]
    assert lines[0] == '2 prepared folder(s), 10 examples, 3 skipped.'
    assert 'densepose_coco train dense 1 1 3 0' in lines
    assert 'coco train kp2d 1 2 7 3' in lines
    assert 'Examples per category: dense 3, kp2d 7' in lines
    assert 'coco train too few joints 2' in lines
    assert 'coco train zero-area box 1' in lines
    # the first 2 skipped examples of the coco folder, in reader order, with file and field
    start = lines.index('First skipped examples:')
    assert lines[start + 1:] == [
        'coco/train img2#0: too few joints (file person_keypoints_train.json, field keypoints)',
        'coco/train img5#0: zero-area box (file <coco img5#0>, field box)']


def test_load_manifest_errors_name_the_folder_and_field(tmp_path, folders):
    with pytest.raises(lib.InspectError, match='no manifest.json'):
        lib.load_manifest(str(tmp_path))
    bad = tmp_path / 'bad'
    bad.mkdir()
    manifest = json.load(open(os.path.join(folders['coco'], 'manifest.json')))
    del manifest['num_examples']
    (bad / 'manifest.json').write_text(json.dumps(manifest))
    with pytest.raises(lib.InspectError, match='field "num_examples"'):
        lib.load_manifest(str(bad))


# ----------------------------------------------------------------------------------------
# Grid helpers
# ----------------------------------------------------------------------------------------

def test_grid_layout_and_draw_colours():
    images = [np.full((4, 5, 3), i / 10, np.float32) for i in range(5)]
    grid = lib.make_grid(images, columns=3, gap=1, gap_value=1.0)
    assert grid.shape == (2 * 4 + 1, 3 * 5 + 2, 3)
    for i in range(5):
        x, y = (i % 3) * 6, (i // 3) * 5
        np.testing.assert_allclose(grid[y:y + 4, x:x + 5], i / 10)
    np.testing.assert_allclose(grid[4], 1.0)            # gap row
    np.testing.assert_allclose(grid[5:, 12:], 1.0)      # empty 6th cell
    assert lib.grid_shape(16) == (4, 4) and lib.grid_shape(5) == (2, 3)

    crop = lib.Crop('dense', np.full((9, 9, 3), 0.5, np.float32),
                    np.array([[2, 2], [2.4, 2.6], [6, 6], [0, 0]], np.float32),
                    np.array([True, False, False, True]), np.array([True, True, True, False]))
    drawn = lib.draw_crop(crop)
    # the joint at (2, 2) is drawn over the other point at (2, 3): green wins
    np.testing.assert_array_equal(drawn[1:4, 1:4], np.broadcast_to([0, 1, 0], (3, 3, 3)))
    np.testing.assert_array_equal(drawn[4, 1:4], np.broadcast_to([1, 0, 0], (3, 3)))
    np.testing.assert_array_equal(drawn[5:8, 5:8], np.broadcast_to([1, 0, 0], (3, 3, 3)))
    np.testing.assert_array_equal(drawn[0, 0], [0.5, 0.5, 0.5])  # invalid point not drawn


def test_write_png_is_atomic_and_exact(tmp_path):
    image = np.random.default_rng(0).uniform(0, 1, (7, 11, 3)).astype(np.float32)
    path = lib.write_png(image, str(tmp_path / 'sub' / 'x.png'))
    assert os.listdir(tmp_path / 'sub') == ['x.png']
    back = tf.io.decode_png(open(path, 'rb').read()).numpy()
    np.testing.assert_array_equal(back, np.round(image * 255).astype(np.uint8))


# ----------------------------------------------------------------------------------------
# End to end through the CLI (real training pipeline)
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def cli_run(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp('inspect')
    flag_values = cli.define_flags(flags.FlagValues())
    flag_values(['nlf-tf-inspect', f'--prepared_dirs={folders["coco"]},{folders["dense"]}',
                 f'--out_png={out / "png"}', f'--logdir={out / "tb"}', '--num_crops=6',
                 f'--proc_side={SIDE}', f'--num_points={POINTS}', '--batch_size_2d=2',
                 '--batch_size_densepose=1', '--max_skipped_examples=1'] + NO_AUG)
    lines, errors = [], []
    code = cli.inspect_main(flag_values, print_fn=lines.append, error_fn=errors.append)
    return dict(code=code, lines=lines, errors=errors, out=out)


def test_cli_prints_counts_and_writes_outputs(cli_run):
    assert cli_run['code'] == 0, cli_run['errors']
    lines = [' '.join(line.split()) for line in cli_run['lines']]
    assert 'coco train kp2d 1 2 7 3' in lines
    assert 'coco/train img2#0: too few joints (file person_keypoints_train.json, field keypoints)' \
        in lines
    # per step one dense and two kp2d examples, interleaved in category order: dense, kp2d, kp2d
    assert 'Drew 6 augmented crops (dense 2, kp2d 4); joints green, other points red.' in lines
    names = sorted(os.listdir(cli_run['out'] / 'png'))
    assert names == ['crop_000_dense.png', 'crop_001_kp2d.png', 'crop_002_kp2d.png',
                     'crop_003_dense.png', 'crop_004_kp2d.png', 'crop_005_kp2d.png', 'grid.png']


def test_cli_grid_shows_points_at_expected_pixels(cli_run):
    grid = tf.io.decode_png(open(cli_run['out'] / 'png' / 'grid.png', 'rb').read()).numpy()
    # 6 crops -> 2 rows x 3 columns of SIDE pixels with 2-pixel gaps
    assert grid.shape == (2 * SIDE + 2, 3 * SIDE + 4, 3)
    expected = _expected_points()
    matched = []
    for index, category in enumerate(['dense', 'kp2d', 'kp2d', 'dense', 'kp2d', 'kp2d']):
        x0, y0 = lib.cell_origin(index, SIDE, columns=3)
        cell = grid[y0:y0 + SIDE, x0:x0 + SIDE]
        green, red = _colour_mask(cell, GREEN), _colour_mask(cell, RED)
        assert green.any()
        # The crop must be one of the kept examples: exactly its joint squares are green and
        # exactly its DensePose squares (where not covered by a joint) are red.
        hits = [eid for eid, cat, joints, dense in expected
                if cat == category and np.array_equal(green, _square_mask(joints))
                and np.array_equal(red, _square_mask(dense) & ~_square_mask(joints))]
        assert len(hits) == 1, (index, category)
        matched.append(hits[0])
    assert len(set(matched)) >= 4  # different examples, not one repeated
    # the per-crop PNG is the grid cell
    crop = tf.io.decode_png(open(cli_run['out'] / 'png' / 'crop_001_kp2d.png', 'rb').read())
    np.testing.assert_array_equal(crop.numpy(), grid[0:SIDE, SIDE + 2:2 * SIDE + 2])


def test_cli_writes_tensorboard_image(cli_run):
    events = glob.glob(str(cli_run['out'] / 'tb' / 'events.out.tfevents.*'))
    assert len(events) == 1
    images = [value for event in tf.compat.v1.train.summary_iterator(events[0])
              for value in event.summary.value if value.tag == lib.SUMMARY_TAG]
    assert len(images) == 1
    strings = images[0].tensor.string_val
    png = tf.io.decode_png(strings[2]).numpy()
    grid = tf.io.decode_png(open(cli_run['out'] / 'png' / 'grid.png', 'rb').read()).numpy()
    np.testing.assert_array_equal(png, grid)
    assert (int(strings[0]), int(strings[1])) == (grid.shape[1], grid.shape[0])


def test_inspection_config_turns_off_categories_without_data(folders):
    cfg = config.default_config(batch_size=32, batch_size_2d=8, batch_size_densepose=4,
                                batch_size_parametric=64)
    got = lib.inspection_config(cfg, [folders['coco']])
    assert (got.batch_size, got.batch_size_2d, got.batch_size_densepose,
            got.batch_size_parametric) == (0, 8, 0, 0)
    assert got.data == 'prepared' and got.prepared_dirs == folders['coco']
    assert cfg.batch_size == 32  # the caller's config is not changed
    with pytest.raises(lib.InspectError, match='no training crops'):
        lib.inspection_config(cfg, [folders['coco']], categories=['kp3d'])
    with pytest.raises(lib.InspectError, match='unknown'):
        lib.inspection_config(cfg, [folders['coco']], categories=['kp2'])


def test_cli_errors(tmp_path):
    flag_values = cli.define_flags(flags.FlagValues())
    flag_values(['nlf-tf-inspect', f'--prepared_dirs={tmp_path}'])
    errors = []
    assert cli.inspect_main(flag_values, print_fn=lambda x: None, error_fn=errors.append) == 2
    assert 'no manifest.json' in errors[0] and '--prepared_dirs' in errors[0]


def test_param_crops_get_their_ground_truth_from_the_body_models(tmp_path):
    from nlf_tf.body_models import synthetic as synthetic_models
    from nlf_tf.data import readers, synthetic_behave

    models = str(tmp_path / 'body_models')
    synthetic_models.write_synthetic_body_models(models, families=('smplh',))
    synthetic_behave.write_behave(str(tmp_path / 'behave'), 0, models, frames_per_sequence=3)
    out = str(tmp_path / 'prepared_behave')
    prepare.prepare_dataset(
        lambda: readers.get_reader('behave')(str(tmp_path / 'behave'), 'train',
                                             body_model_dir=models),
        out, 'behave', 'train', num_shards=1, log=lambda *a, **k: None)
    from nlf_tf.body_models import canonical_assets
    canonical_assets.ensure_assets(models, families=['smplh'], num_interior=2000,
                                   log=lambda *a: None)  # small: training keeps it
    cfg = config.default_config(proc_side=64, num_points=128, batch_size_parametric=4,
                                body_model_dir=models, seed=2, geom_aug=False)
    crops, skipped = lib.training_crops(cfg, [out], num_crops=4)
    assert [c.category for c in crops] == ['param'] * 4 and not skipped.any()
    for crop in crops:
        assert crop.is_joint.sum() == 52 and crop.is_joint[-52:].all()
        assert crop.valid.all()
        joints = crop.points2d[crop.is_joint]
        # The body-model joints are computed (finite) and, without geometric augmentation,
        # lie in the crop (the box is the 1.05x box of the projected joints).
        assert np.isfinite(joints).all()
        assert np.mean(np.all((joints >= 0) & (joints <= 63), axis=1)) > 0.95
