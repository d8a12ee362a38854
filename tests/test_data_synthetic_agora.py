"""Synthetic AGORA folder: native layout, consistent masks and labels, and the reader's ground
truth landing on the pixels where the fixture drew each person."""

import os

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage

from nlf_tf.body_models import files, numpy_model
from nlf_tf.body_models.synthetic import write_synthetic_body_models
from nlf_tf.data import agora, rle
from nlf_tf.data.example import Example, Skip
from nlf_tf.data.synthetic_agora import SETTINGS_FILE, make_palette, write_agora

NUM_IMAGES = 5


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp('synthetic_agora')
    body_models = str(base / 'body_models')
    write_synthetic_body_models(body_models, families=('smplx',))
    root = write_agora(str(base / 'agora'), 0, body_models, num_images=NUM_IMAGES)
    records = list(agora.iter_examples(root, 'train', body_model_dir=body_models))
    return dict(root=root, body_models=body_models, records=records)


def _frame(root, kind='Cam'):
    name = 'train_0.pkl' if kind == 'Cam' else 'train_0_withjv.pkl'
    return pd.read_pickle(os.path.join(root, kind, name))


def _amodal(root, image_name, p):
    scene, base = agora.mask_file_base(image_name)
    return np.any(agora.read_png_rgb(
        os.path.join(root, 'train', scene, f'{base}_{p + 1:05d}.png')) != 0, axis=-1)


def _label(root, image_name):
    scene, base = agora.mask_file_base(image_name)
    return agora.read_png_rgb(os.path.join(root, 'train', scene, f'{base}_00000.png'))


def _split_id(example_id):
    relpath, p = example_id.rsplit('#', 1)
    return os.path.basename(relpath), int(p)


def test_native_layout(folders):
    root = folders['root']
    df = _frame(root)
    assert len(df) == NUM_IMAGES
    for column in agora.ROW_COLUMNS + agora.PERSON_COLUMNS:
        assert column in df.columns
    jv = _frame(root, 'SMPLX')
    assert list(jv['imgPath']) == list(df['imgPath'])
    assert {'gt_joints_2d', 'gt_joints_3d', 'gt_verts'} <= set(jv.columns)
    families = [agora.scene_family(name) for name in df['imgPath']]
    assert set(families) == {'cam02', 'hdri', 'other', 'ag2', 'cam00'}
    palette = agora.load_palette(os.path.join(root, 'seg_rgbs.txt'))
    np.testing.assert_array_equal(palette, make_palette())
    for _, row in df.iterrows():
        assert os.path.isfile(os.path.join(root, 'train_0', row['imgPath']))
        assert agora.png_size(os.path.join(root, 'train_0', row['imgPath'])) == (216, 384)
        for path in row['gt_path_smplx']:
            assert path.startswith('smplx_gt/') and path.endswith('.obj')
            assert os.path.isfile(os.path.join(root, path[:-4] + '.pkl'))
        fit = agora.load_fit(os.path.join(root, row['gt_path_smplx'][0][:-4] + '.pkl'))
        assert len(fit['betas']) == (11 if row['kid'][0] else 10)


def test_labels_masks_and_occlusion_agree(folders):
    root = folders['root']
    palette = make_palette()
    for _, row in _frame(root).iterrows():
        label = _label(root, row['imgPath'])
        n = len(row['isValid'])
        person_pixels = np.zeros(label.shape[:2], bool)
        for p in range(n):
            amodal = _amodal(root, row['imgPath'], p)
            visible = np.all(label == palette[p], axis=-1)
            assert np.all(amodal[visible])  # visible pixels are part of the amodal mask
            person_pixels |= visible
            expected = 100 * (1 - visible.sum() / amodal.sum())
            assert row['occlusion'][p] == pytest.approx(expected)
            assert row['isValid'][p] == (row['occlusion'][p] <= 90)
        # Every other label pixel is the pure-red background.
        np.testing.assert_array_equal(person_pixels, agora.all_people_mask(label))


def _hit_fraction(camera, points, mask):
    """Fraction of world points whose nearest pixel is in `mask`."""
    height, width = mask.shape
    pixels = np.round(camera.world_to_image(points)).astype(int)
    inside = ((pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0)
              & (pixels[:, 1] < height))
    hits = np.zeros(len(pixels), bool)
    hits[inside] = mask[pixels[inside, 1], pixels[inside, 0]]
    return hits.mean()


def test_reader_ground_truth_lands_on_the_drawn_person(folders):
    root, body_models = folders['root'], folders['body_models']
    examples = [r for r in folders['records'] if isinstance(r, Example)]
    assert len(examples) >= 8
    df, jv = _frame(root), _frame(root, 'SMPLX')
    rows = {name: i for i, name in enumerate(df['imgPath'])}
    unoccluded = 0
    for ex in examples:
        ex.validate()
        params = ex.body_params
        model = files.load_body_model(body_models, 'smplx', params['body_model'][-1])
        verts, joints = numpy_model.forward(
            model, params['pose'][None], params['shape'][None], params['expression'][None],
            params['kid_factor'], params['trans'][None])
        image_name, p = _split_id(ex.example_id)
        i_row = rows[image_name]
        # The reader's world parameters reproduce the writer's rigidly moved body exactly.
        np.testing.assert_allclose(ex.camera.world_to_camera(joints[0]),
                                   jv['gt_joints_3d'][i_row][p], atol=2e-4)
        np.testing.assert_allclose(ex.camera.world_to_camera(verts[0]),
                                   jv['gt_verts'][i_row][p], atol=2e-4)
        # ... and project onto the pixels drawn for this person.
        # Fingers are thinner than a pixel here, so the pixel nearest to a finger joint may
        # be left empty by the rasteriser (it fills pixels whose centre is inside a
        # triangle): body joints must hit the mask itself, all joints the mask grown by 1 px.
        amodal = _amodal(root, image_name, p)
        grown = scipy.ndimage.binary_dilation(amodal)
        body = slice(0, 25)  # 22 body joints, jaw, eyes
        assert _hit_fraction(ex.camera, joints[0][body], amodal) >= 0.95, ex.example_id
        assert _hit_fraction(ex.camera, joints[0], grown) >= 0.9, ex.example_id
        assert _hit_fraction(ex.camera, verts[0], grown) >= 0.9, ex.example_id
        if df['occlusion'][i_row][p] == 0:
            unoccluded += 1
            # The mask box covers the pixels [x, x + w) x [y, y + h), i.e. the image extent
            # [x - 0.5, x + w - 0.5]; the rasterised outline may miss up to a pixel of mesh.
            projected = ex.camera.world_to_image(verts[0])
            x, y, w, h = ex.box
            lo, hi = np.array([x, y]) - 0.5, np.array([x + w, y + h]) - 0.5
            assert np.all(projected >= lo - 1.5) and np.all(projected <= hi + 1.5)
            assert np.all((projected >= lo) & (projected <= hi), axis=1).mean() >= 0.97
            np.testing.assert_allclose(projected.min(0), lo, atol=1.5)
            np.testing.assert_allclose(projected.max(0), hi, atol=1.5)
        # The example mask is the image's all-people mask.
        np.testing.assert_array_equal(rle.decode(ex.mask_rle),
                                      agora.all_people_mask(_label(root, image_name)))
        assert ex.image_path == os.path.join(root, 'train_0', image_name)
    assert unoccluded >= 3


def test_reader_pose_carries_the_hand_mean_of_the_gender(folders):
    root, body_models = folders['root'], folders['body_models']
    examples = [r for r in folders['records'] if isinstance(r, Example)]
    df = _frame(root)
    rows = {name: i for i, name in enumerate(df['imgPath'])}
    kinds_seen = set()
    for ex in examples:
        image_name, p = _split_id(ex.example_id)
        i_row = rows[image_name]
        gender, kid = df['gender'][i_row][p], df['kid'][i_row][p]
        expected_kind = {'female': 'n' if kid else 'f', 'male': 'm'}[gender]
        assert ex.body_params['body_model'] == f'smplx_{expected_kind}'
        kinds_seen.add((expected_kind, bool(kid)))
        npz = np.load(os.path.join(body_models, 'smplx', {
            'f': 'SMPLX_FEMALE.npz', 'm': 'SMPLX_MALE.npz', 'n': 'SMPLX_NEUTRAL.npz'}[
            expected_kind]))
        fit = agora.load_fit(os.path.join(root, df['gt_path_smplx'][i_row][p][:-4] + '.pkl'))
        np.testing.assert_allclose(ex.body_params['pose'][75:120],
                                   fit['left_hand_pose'] + npz['hands_meanl'], atol=1e-6)
        np.testing.assert_allclose(ex.body_params['pose'][120:],
                                   fit['right_hand_pose'] + npz['hands_meanr'], atol=1e-6)
        assert len(ex.body_params['shape']) == 10
        np.testing.assert_allclose(ex.body_params['expression'], fit['expression'], atol=1e-7)
        if kid:
            assert ex.body_params['kid_factor'] == pytest.approx(fit['betas'][10])
        else:
            assert ex.body_params['kid_factor'] == 0
    assert any(kid for _, kid in kinds_seen) and any(not kid for _, kid in kinds_seen)


def test_writer_is_idempotent_and_refuses_foreign_folders(folders, tmp_path):
    root = folders['root']
    before = os.path.getmtime(os.path.join(root, SETTINGS_FILE))
    assert write_agora(root, 0, folders['body_models'], num_images=NUM_IMAGES) == root
    assert os.path.getmtime(os.path.join(root, SETTINGS_FILE)) == before
    with pytest.raises(ValueError, match='other settings'):
        write_agora(root, 1, folders['body_models'], num_images=NUM_IMAGES)
    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'notes.txt').write_text('mine')
    with pytest.raises(ValueError, match='refusing'):
        write_agora(str(foreign), 0, folders['body_models'], num_images=1)
    assert os.listdir(foreign) == ['notes.txt']
    with pytest.raises(ValueError, match='16:9'):
        write_agora(str(tmp_path / 'square'), 0, folders['body_models'], image_size=(100, 100))
    assert not any(isinstance(r, Skip) and r.reason.startswith('mask colour')
                   for r in folders['records'])
