"""Tests for the DensePose-COCO reader (nlf_tf.data.densepose_coco) on tiny native fixtures."""

import json

import numpy as np
import pytest
import scipy.io

from nlf_tf import canonical_space
from nlf_tf.data import densepose_coco, rle
from nlf_tf.data.example import DatasetError, Example, Skip
from nlf_tf.data.polygon import polygons_to_mask

IMAGE = 'COCO_train2014_000000000001.jpg'
HEIGHT, WIDTH = 480, 640
SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]


def _smpl_like_model():
    """24-joint SMPL tree with 24 vertices (one per joint), slightly asymmetric, SMPL axes."""
    rng = np.random.default_rng(3)
    verts = rng.uniform(-0.5, 0.5, size=[24, 3])
    verts[0] = 0
    return dict(v_template=verts, shapedirs=np.zeros([24, 3, 1]), posedirs=np.zeros([24, 3, 207]),
                J_regressor=np.eye(24), weights=np.eye(24),
                kintree_table=np.array([SMPL_PARENTS, list(range(24))]),
                f=np.array([[0, 1, 2]]))


def _write_uv_mat(path, drop=None):
    # UV vertices 0..3 span the unit square (chart 1, two triangles); 4..6 a small triangle of
    # chart 2. Stored 1-based and with MATLAB-like shapes as in the real file.
    fields = dict(
        All_FaceIndices=np.array([[1], [1], [2]], np.float64),
        All_Faces=np.array([[1, 2, 3], [2, 4, 3], [5, 6, 7]], np.float64),
        All_U_norm=np.array([[0, 1, 0, 1, 0.2, 0.4, 0.2]], np.float64).T,
        All_V_norm=np.array([[0, 0, 1, 1, 0.2, 0.2, 0.4]], np.float64).T,
        All_vertices=np.array([[5, 6, 7, 8, 10, 11, 12]], np.float64))
    if drop:
        del fields[drop]
    scipy.io.savemat(path, fields)


def _keypoints(n_visible_limbs=10, n_occluded_limbs=2, face_flag=0):
    kp = np.zeros([17, 3])
    kp[:, 0] = np.arange(17) * 3 + 610
    kp[:, 1] = np.arange(17) * 5 + 120
    kp[:5, 2] = face_flag
    flags = [2] * n_visible_limbs + [1] * n_occluded_limbs
    flags += [0] * (12 - len(flags))
    kp[5:, 2] = flags
    kp[kp[:, 2] == 0, :2] = 0
    return kp.reshape(-1).tolist()


def _annotation(ann_id, **changes):
    ann = dict(
        id=ann_id, image_id=1, category_id=1, iscrowd=0,
        bbox=[600.4, 100.6, 99.7, 200.2], keypoints=_keypoints(), num_keypoints=12,
        segmentation=[[600, 110, 630, 110, 630, 150, 600, 150]],
        dp_masks=[{}] * 14,
        dp_x=[0.0, 255.0, 127.5], dp_y=[0.0, 255.0, 51.0],
        dp_I=[1, 1, 2], dp_U=[0.2, 0.7, 0.5], dp_V=[0.3, 0.6, 0.45])
    ann.update(changes)
    return {k: v for k, v in ann.items() if v is not None}


def _make_root(tmp_path, annotations):
    root = tmp_path / 'densepose'
    (root / 'DensePose_COCO').mkdir(parents=True)
    (root / 'UV_data').mkdir()
    (root / 'coco' / 'train2014').mkdir(parents=True)
    (root / 'coco' / 'train2014' / IMAGE).write_bytes(b'not decoded by the reader')
    _write_uv_mat(root / 'UV_data' / 'UV_Processed.mat')
    data = dict(images=[dict(id=1, file_name=IMAGE, height=HEIGHT, width=WIDTH)],
                annotations=annotations, categories=[dict(id=1, name='person')])
    (root / 'DensePose_COCO' / 'densepose_coco_2014_train.json').write_text(json.dumps(data))
    return root


def test_iuv_converter_by_hand(tmp_path):
    _write_uv_mat(tmp_path / 'uv.mat')
    conv = densepose_coco.IUVConverter(str(tmp_path / 'uv.mat'))
    faces, bary = conv([1, 1, 2, 2], [0.2, 0.7, 0.5, 0.25], [0.3, 0.6, 0.45, 0.25])
    # (0.2, 0.3) lies in UV face (0, 1, 2) -> SMPL vertices (4, 5, 6), bary (1-u-v, u, v).
    # (0.7, 0.6) lies in UV face (1, 3, 2): (1 - b, a + b) = (0.7, 0.6) -> a = b = 0.3.
    # (0.5, 0.45) lies outside chart 2's only triangle; nearest UV vertex is (0.4, 0.2), its
    #   second corner -> one-hot (0, 1, 0).
    # (0.25, 0.25) lies inside chart 2's triangle: (0.2 + 0.2 a, 0.2 + 0.2 b) -> a = b = 0.25.
    np.testing.assert_array_equal(faces, [[4, 5, 6], [5, 7, 6], [9, 10, 11], [9, 10, 11]])
    np.testing.assert_allclose(bary, [[0.5, 0.2, 0.3], [0.4, 0.3, 0.3], [0, 1, 0],
                                      [0.5, 0.25, 0.25]], atol=1e-12)


def test_reader_example_fields(tmp_path):
    root = _make_root(tmp_path, [_annotation(7)])
    model = _smpl_like_model()
    records = list(densepose_coco.iter_examples(str(root), smpl_model=model))
    assert len(records) == 1 and isinstance(records[0], Example)
    ex = records[0].validate()
    assert ex.dataset == 'densepose_coco' and ex.category == 'dense'
    assert ex.example_id == f'train2014/{IMAGE}#7'
    assert ex.image_path == str(root / 'coco' / 'train2014' / IMAGE)
    np.testing.assert_array_equal(ex.box, [600, 101, 100, 200])  # rounded bbox

    # Clipped box: x 600..640 (image width), y 101..301 -> px = dp / 255 * (40, 200) + (600, 101)
    np.testing.assert_allclose(ex.dense_imcoords, [[600, 101], [640, 301], [620, 141]],
                               atol=1e-4)
    np.testing.assert_array_equal(ex.dense_faces, [[4, 5, 6], [5, 7, 6], [9, 10, 11]])
    np.testing.assert_allclose(ex.dense_barycoords, [[0.5, 0.2, 0.3], [0.4, 0.3, 0.3],
                                                     [0, 1, 0]], atol=1e-6)
    canonical = canonical_space.canonical_smpl_vertices(model)
    expected = np.array([0.5 * canonical[4] + 0.2 * canonical[5] + 0.3 * canonical[6],
                         0.4 * canonical[5] + 0.3 * canonical[7] + 0.3 * canonical[6],
                         canonical[10]])
    np.testing.assert_allclose(ex.dense_canonical, expected, atol=1e-6)

    # Keypoints: face points (v=0) invalid, the 12 limb joints valid at their coordinates.
    assert np.all(np.isnan(ex.joints2d[:5]))
    np.testing.assert_array_equal(ex.joints2d[5:, 0], np.arange(5, 17) * 3 + 610)
    np.testing.assert_array_equal(ex.joints2d[5:, 1], np.arange(5, 17) * 5 + 120)

    mask = rle.decode(ex.mask_rle)
    assert mask.shape == (HEIGHT, WIDTH)
    np.testing.assert_array_equal(
        mask, polygons_to_mask([[600, 110, 630, 110, 630, 150, 600, 150]], (HEIGHT, WIDTH)))
    assert mask[120, 615] == 1 and mask[200, 615] == 0

    f = WIDTH / (2 * np.tan(np.deg2rad(8) / 2))
    np.testing.assert_allclose(ex.camera.intrinsic_matrix,
                               [[f, 0, (WIDTH - 1) / 2], [0, f, (HEIGHT - 1) / 2], [0, 0, 1]])


def test_reader_skips_with_reasons(tmp_path):
    anns = [
        _annotation(1, dp_masks=None),
        _annotation(2, dp_x=[], dp_y=[], dp_I=[], dp_U=[], dp_V=[]),
        _annotation(3, keypoints=_keypoints(n_visible_limbs=5, n_occluded_limbs=7)),
        _annotation(4, keypoints=_keypoints(n_visible_limbs=6, n_occluded_limbs=2)),
        # 6 visible, 9 labelled but only 4 limb joints valid
        _annotation(5, keypoints=_keypoints(n_visible_limbs=1, n_occluded_limbs=3, face_flag=2)),
        _annotation(6, bbox=[10.2, 10.0, 0.3, 50.0]),
        _annotation(7, dp_I=[1, 25, 2]),
        _annotation(8, dp_I=[1, 24, 2]),
        _annotation(9, dp_U=[0.2, float('nan'), 0.5]),
        _annotation(10, bbox=[700.0, 10.0, 50.0, 50.0]),
        _annotation(11),
    ]
    root = _make_root(tmp_path, anns)
    records = list(densepose_coco.iter_examples(str(root), smpl_model=_smpl_like_model()))
    assert len(records) == len(anns)
    reasons = {int(r.example_id.split('#')[1]): r.reason for r in records if isinstance(r, Skip)}
    assert reasons == {
        1: 'no DensePose annotation', 2: 'no DensePose points',
        3: 'too few visible keypoints', 4: 'too few labelled keypoints',
        5: 'too few limb joints', 6: 'zero-area box',
        7: 'DensePose chart index out of range', 8: reasons[8],
        9: 'non-finite DensePose values', 10: 'box outside the image'}
    assert 'chart 24 has no faces' in reasons[8]
    assert isinstance(records[-1], Example)
    skip = records[6]
    assert skip.file.endswith('densepose_coco_2014_train.json') and skip.field.endswith('dp_I')


def test_reader_missing_image_is_skipped(tmp_path):
    root = _make_root(tmp_path, [_annotation(1)])
    (root / 'coco' / 'train2014' / IMAGE).unlink()
    (record,) = densepose_coco.iter_examples(str(root), smpl_model=_smpl_like_model())
    assert isinstance(record, Skip) and record.reason == 'missing image'


def test_reader_structural_errors(tmp_path):
    root = _make_root(tmp_path, [_annotation(1)])
    model = _smpl_like_model()
    with pytest.raises(DatasetError, match='--smpl_model'):
        densepose_coco.iter_examples(str(root))

    with pytest.raises(DatasetError, match='UV_Processed.mat'):
        densepose_coco.iter_examples(str(root), smpl_model=model,
                                     uv_processed=str(tmp_path / 'none.mat'))

    _write_uv_mat(tmp_path / 'bad.mat', drop='All_Faces')
    with pytest.raises(DatasetError, match="bad.mat: field 'All_Faces'"):
        densepose_coco.iter_examples(str(root), smpl_model=model,
                                     uv_processed=str(tmp_path / 'bad.mat'))

    bad_json = tmp_path / 'bad.json'
    bad_json.write_text('{"images": [], "annotations": [')
    with pytest.raises(DatasetError, match='bad.json.*malformed JSON'):
        densepose_coco.iter_examples(str(root), smpl_model=model, annotation_file=str(bad_json))

    with pytest.raises(DatasetError, match="'smpl_model'"):
        densepose_coco.iter_examples(str(root), smpl_model=str(tmp_path / 'no_model.pkl'))

    with pytest.raises(TypeError, match='unknown options'):
        densepose_coco.iter_examples(str(root), smpl_model=model, colour='blue')


def test_reader_with_model_file_and_overrides(tmp_path):
    root = _make_root(tmp_path, [_annotation(1)])
    model_path = tmp_path / 'model.npz'
    np.savez(model_path, **_smpl_like_model())
    images = tmp_path / 'elsewhere'
    images.mkdir()
    (images / IMAGE).write_bytes(b'x')
    (ex,) = densepose_coco.iter_examples(str(root), smpl_model=str(model_path),
                                         images_dir=str(images))
    assert ex.image_path == str(images / IMAGE)
    np.testing.assert_allclose(
        ex.dense_canonical[2],
        canonical_space.canonical_smpl_vertices(_smpl_like_model())[10], atol=1e-6)
