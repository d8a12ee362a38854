"""AGORA reader: cameras per scene family, scan->world parameters, palette and masks, person
filters, fit parameters (hand mean, kids, genders) and bad input."""

import os
import pickle
import shutil
import sys

import numpy as np
import pytest

from nlf_tf.body_models import kinds, numpy_model
from nlf_tf.data import agora
from nlf_tf.data.coco import box_iou
from nlf_tf.data.example import DatasetError, Example, Skip

A = np.sqrt(0.5)
S3 = np.sqrt(3.0) / 2


# --------------------------------------------------------------------------------------------
# Cameras

def test_hdri_camera_4k():
    cam = agora.get_camera('ag_trainset_renderpeople_body_hdri_50mm_5_10_00001.png', [1, 2, 3], 77)
    f = 50 / 36 * 3840
    np.testing.assert_allclose(cam.intrinsic_matrix, [[f, 0, 1920], [0, f, 1080], [0, 0, 1]])
    np.testing.assert_allclose(cam.rot_world_to_cam, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(cam.optical_center, [0, -1.7, 0], atol=1e-12)  # 170 cm up
    np.testing.assert_allclose(cam.world_up, [0, -1, 0])


def test_archviz_cam00_camera():
    cam = agora.get_camera('ag_trainset_renderpeople_bfh_archviz_5_10_cam00_00003.png',
                           [0, 0, 0], 0)
    np.testing.assert_allclose(cam.intrinsic_matrix[0, 0], 1920.0)  # 18 mm on 36 mm, 3840 px
    # Rx(30 deg) Ry(-135 deg), worked out by hand.
    expected = [[-A, 0, -A], [-A / 2, S3, A / 2], [A * S3, 0.5, -A * S3]]
    np.testing.assert_allclose(cam.rot_world_to_cam, expected, atol=1e-12)
    # Unreal (400, -275, 265) cm -> world (y, -z, x) m.
    np.testing.assert_allclose(cam.optical_center, [-2.75, -2.65, 4.0], atol=1e-12)
    # The optical axis looks down (+y) and towards the scene centre.
    forward = cam.rot_world_to_cam.T @ [0, 0, 1]
    assert forward[1] == pytest.approx(0.5) and forward[0] > 0 and forward[2] < 0


@pytest.mark.parametrize('cam,location,yaw', [
    ('cam01', (400, 225, 265), -135), ('cam02', (-490, 170, 265), -45),
    ('cam03', (-490, -275, 265), 45)])
def test_other_archviz_cameras(cam, location, yaw):
    c = agora.get_camera(f'ag_trainset_axyz_bfh_archviz_5_10_{cam}_00001.png', [9, 9, 9], 9)
    x, y, z = location
    np.testing.assert_allclose(c.optical_center, [y / 100, -z / 100, x / 100], atol=1e-12)
    t, p = np.deg2rad(-yaw), np.deg2rad(30)
    ry = [[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]]
    rx = [[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]]
    np.testing.assert_allclose(c.rot_world_to_cam, np.array(rx) @ ry, atol=1e-12)


def test_ag2_camera():
    cam = agora.get_camera('ag_trainset_axyz_bfh_ag2_5_10_00001.png', [5, 5, 5], 40)
    f = 28 / 36 * 3840
    np.testing.assert_allclose(cam.intrinsic_matrix[:2, :2], [[f, 0], [0, f]])
    c, s = np.cos(np.deg2rad(15)), np.sin(np.deg2rad(15))
    np.testing.assert_allclose(cam.rot_world_to_cam, [[1, 0, 0], [0, c, -s], [0, s, c]],
                               atol=1e-12)
    np.testing.assert_allclose(cam.optical_center, [0, -1.7, 0], atol=1e-12)


def test_other_scene_camera_uses_dataframe_and_ground_offset():
    cam = agora.get_camera('ag_trainset_3dpeople_bfh_brushifyforest_5_15_00001.png',
                           [100, -200, 50], 30)
    f = 28 / 36 * 3840
    np.testing.assert_allclose(cam.intrinsic_matrix, [[f, 0, 1920], [0, f, 1080], [0, 0, 1]])
    c, s = np.cos(np.deg2rad(-30)), np.sin(np.deg2rad(-30))
    np.testing.assert_allclose(cam.rot_world_to_cam, [[c, 0, s], [0, 1, 0], [-s, 0, c]],
                               atol=1e-12)
    # (camY, -camZ, camX) / 100 + (0, -1.7, 0)
    np.testing.assert_allclose(cam.optical_center, [-2.0, -0.5 - 1.7, 1.0], atol=1e-12)
    with pytest.raises(ValueError, match='needs the camera location'):
        agora.get_camera('ag_trainset_3dpeople_bfh_flowers_5_15_00001.png')


def test_intrinsics_scale_with_image_width():
    name = 'ag_trainset_renderpeople_bfh_archviz_5_10_cam02_00001.png'
    big = agora.get_camera(name, None, None)
    small = agora.get_camera(name, None, None, image_width=1280)
    np.testing.assert_allclose(small.intrinsic_matrix, [[640, 0, 640], [0, 640, 360], [0, 0, 1]])
    np.testing.assert_allclose(small.rot_world_to_cam, big.rot_world_to_cam)
    # The same world point lands at 1/3 of its 4K pixel position.
    point = big.optical_center + big.rot_world_to_cam.T @ [0.3, -0.2, 5.0]
    np.testing.assert_allclose(small.world_to_image(point[None]),
                               big.world_to_image(point[None]) / 3, rtol=1e-5)
    tiny = agora.get_camera(name, None, None, image_width=384)
    np.testing.assert_allclose(tiny.intrinsic_matrix[:2], [[192, 0, 192], [0, 192, 108]])


# --------------------------------------------------------------------------------------------
# Scan -> world (adjust_body)

def _tiny_model(rng, num_joints=55, num_vertices=40):
    """A random skinned model in the `files.load_body_model` layout (any weights summing to 1
    make the global rotation a rigid motion about the rest pelvis)."""
    parents = np.array([-1] + [int(rng.integers(0, j)) for j in range(1, num_joints)])
    weights = rng.uniform(0, 1, (num_vertices, num_joints)) ** 4
    weights /= weights.sum(1, keepdims=True)
    regressor = rng.uniform(0, 1, (num_joints, num_vertices))
    regressor /= regressor.sum(1, keepdims=True)
    return dict(
        family='smplx', gender='n', kind='smplx_n', num_joints=num_joints,
        num_vertices=num_vertices, v_template=rng.normal(0, 0.3, (num_vertices, 3)),
        shapedirs=rng.normal(0, 0.02, (num_vertices, 3, 10)),
        exprdirs=rng.normal(0, 0.01, (num_vertices, 3, 10)),
        posedirs=rng.normal(0, 0.01, (num_vertices, 3, 9 * (num_joints - 1))),
        J_regressor=regressor, weights=weights, parents=parents,
        kid_shapedir=rng.normal(0, 0.05, (num_vertices, 3)), hand_mean=rng.normal(0, 0.2, 90),
        faces=np.zeros((0, 3), np.int32))


def test_scan_to_world_rotation_by_hand():
    rot, offset = agora.scan_to_world(0.0, [100, 200, 300])
    # Rz(pi) Ry(-90 deg): SMPL's up (+y) becomes world up (-y), a half turn.
    np.testing.assert_allclose(rot, [[0, 0, 1], [0, -1, 0], [1, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(offset, [2.0, -3.0, 1.0])
    rot90, _ = agora.scan_to_world(90.0, [0, 0, 0])
    np.testing.assert_allclose(rot90, [[1, 0, 0], [0, -1, 0], [0, 0, -1]], atol=1e-12)
    np.testing.assert_allclose(rot90, rot90.T, atol=1e-12)  # symmetric: a half turn


@pytest.mark.parametrize('kid_factor', [0.0, 0.6])
def test_adjust_body_equals_moving_the_posed_scan_body(kid_factor):
    rng = np.random.default_rng(3)
    model = _tiny_model(rng)
    pose = rng.normal(0, 0.4, 165)
    betas, expression = rng.normal(0, 1, 10), rng.normal(0, 1, 10)
    transl = rng.normal(0, 0.5, 3)
    yaw, location = 37.0, [250.0, -120.0, 15.0]
    verts_scan, joints_scan = numpy_model.forward(
        model, pose[None], betas[None], expression[None], kid_factor, transl[None])
    rot, offset = agora.scan_to_world(yaw, location)

    pelvis = numpy_model.rest_pelvis(model, betas[None], expression[None], kid_factor)[0]
    new_pose, new_trans = agora.adjust_body(pose, transl, pelvis, yaw, location)
    verts_world, joints_world = numpy_model.forward(
        model, new_pose[None], betas[None], expression[None], kid_factor, new_trans[None])
    np.testing.assert_allclose(verts_world[0], verts_scan[0] @ rot.T + offset, atol=1e-9)
    np.testing.assert_allclose(joints_world[0], joints_scan[0] @ rot.T + offset, atol=1e-9)
    np.testing.assert_array_equal(new_pose[3:], pose[3:])  # only the global rotation changes
    # PosePile's row-vector form gives the same translation (rot is symmetric).
    np.testing.assert_allclose(new_trans, transl + (pelvis + transl) @ (rot - np.eye(3))
                               + offset, atol=1e-12)
    if kid_factor:
        # The kid blend shape moves the pivot: ignoring it would misplace the body.
        adult_pelvis = numpy_model.rest_pelvis(model, betas[None], expression[None], 0.0)[0]
        _, wrong = agora.adjust_body(pose, transl, adult_pelvis, yaw, location)
        assert np.linalg.norm(wrong - new_trans) > 1e-3


# --------------------------------------------------------------------------------------------
# Palette and masks

def test_load_palette(tmp_path):
    path = tmp_path / 'seg_rgbs.txt'
    path.write_text('0\t[55, 181, 57]\n1\t[153, 108, 6]\n\n2\t[112, 105, 191]\n')
    np.testing.assert_array_equal(agora.load_palette(str(path)),
                                  [[55, 181, 57], [153, 108, 6], [112, 105, 191]])
    path.write_text('0\t[55, 181, 57]\n1\t(153, 108, 6)\n')
    with pytest.raises(DatasetError, match="line 2"):
        agora.load_palette(str(path))
    path.write_text('0\t[55, 181, 57]\n2\t[1, 2, 3]\n')
    with pytest.raises(DatasetError, match='numbered'):
        agora.load_palette(str(path))
    with pytest.raises(DatasetError, match='not found'):
        agora.load_palette(str(tmp_path / 'missing.txt'))


def _label_image():
    red = agora.BACKGROUND_RGB
    label = np.array([[red, red, (100, 50, 20), (109, 41, 29)],
                      [red, (110, 50, 20), (100, 50, 20), (7, 200, 30)],
                      [(254, 0, 0), red, (7, 200, 30), (3, 3, 3)]], np.uint8)
    return label


def test_modal_and_all_people_masks():
    label = _label_image()
    amodal = np.ones(label.shape[:2], bool)
    amodal[0, 3] = False
    # Within +-9 of (100, 50, 20) matches; a channel 10 away does not (PosePile: |d| < 10).
    modal = agora.modal_mask(label, amodal, (100, 50, 20), 10)
    np.testing.assert_array_equal(modal, [[0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(agora.colour_match(label, (100, 50, 20), 10)[0], [0, 0, 1, 1])
    # All people: everything that is not exactly pure red (254, 0, 0 counts as a person pixel).
    np.testing.assert_array_equal(agora.all_people_mask(label),
                                  [[0, 0, 1, 1], [0, 1, 1, 1], [1, 0, 1, 1]])
    np.testing.assert_array_equal(agora.mask_box(modal), [2, 0, 1, 2])
    assert agora.mask_box(np.zeros((3, 4), bool)) is None
    palette = np.array([[100, 50, 20], [7, 200, 30]])
    fraction, colour = agora.unknown_colours(label, np.ones((3, 4), bool), palette, 10)
    # Unknown: (110, 50, 20), (254, 0, 0) and (3, 3, 3) of 8 foreground pixels.
    assert fraction == pytest.approx(3 / 8)
    assert colour in {(110, 50, 20), (254, 0, 0), (3, 3, 3)}


def test_mask_file_names():
    assert agora.mask_file_base('ag_trainset_renderpeople_bfh_archviz_5_10_cam02_00001.png') == (
        'ag_trainset_renderpeople_bfh_archviz',
        'ag_trainset_renderpeople_bfh_archviz_5_10_mask_cam02_000001')
    assert agora.mask_file_base('ag_validationset_renderpeople_body_hdri_50mm_5_10_00123.png') \
        == ('ag_validationset_renderpeople_body_hdri',
            'ag_validationset_renderpeople_body_hdri_50mm_5_10_mask_000123')
    assert agora.mask_file_base(
        'ag_trainset_3dpeople_bfh_flowers_5_15_00007_1280x720.png')[1] == \
        'ag_trainset_3dpeople_bfh_flowers_5_15_mask_000007'
    assert agora.mask_file_base('holiday_photo.png') is None


# --------------------------------------------------------------------------------------------
# Person filters and detections

def test_candidate_and_box_filters():
    assert agora.candidate_reason(False, 10, 75) == 'isValid is false'
    assert agora.candidate_reason(True, 75.5, 75) == 'occlusion > 75'
    assert agora.candidate_reason(True, 75, 75) is None
    box = np.array([0, 0, 120, 300.0])
    assert agora.box_reason(box, False, 60, 100, 50).startswith('occlusion > 50 without')
    assert agora.box_reason(box, True, 60, 100, 50) is None  # matched: kept
    assert agora.box_reason(box, False, 50, 100, 50) is None
    assert agora.box_reason(np.array([0, 0, 99, 300.0]), True, 0, 100, 50) == 'box too small'
    assert agora.box_reason(np.array([0, 0, 300, 99.9]), True, 0, 100, 50) == 'box too small'


def test_detection_matching_is_a_global_assignment():
    gt = [np.array([0, 0, 10, 10.0]), np.array([3, 0, 10, 10.0])]
    # IoU(gt0, A) = 0.82, IoU(gt1, A) = 0.67, IoU(gt0, B) = 0.74, IoU(gt1, B) = 0.38: greedy
    # would give A to gt0 and leave gt1 unmatched; the Hungarian assignment matches both.
    dets = np.array([[1, 0, 10, 10, 0.9], [-1.5, 0, 10, 10, 0.8]])
    assert box_iou(gt[0], dets[0, :4]) == pytest.approx(9 / 11)
    assert box_iou(gt[1], dets[1, :4]) == pytest.approx(5.5 / 14.5)
    result = agora.match_detections(gt, dets, 0.5)
    assert result[0][1] and result[1][1]
    np.testing.assert_array_equal(result[0][0], dets[1, :4])
    np.testing.assert_array_equal(result[1][0], dets[0, :4])
    far = agora.match_detections(gt, np.array([[100, 100, 10, 10]]), 0.5)
    assert not far[0][1] and not far[1][1]
    np.testing.assert_array_equal(far[1][0], gt[1])
    assert all(not m for _, m in agora.match_detections(gt, None, 0.5))


# --------------------------------------------------------------------------------------------
# Fits, genders, kids

def _fit(rng, kid=False):
    fit = {k: rng.normal(0, 0.3, (1, n)).astype(np.float32) for k, n in agora.FIT_POSE_KEYS}
    fit['betas'] = rng.normal(0, 1, (1, 11 if kid else 10)).astype(np.float32)
    fit['expression'] = rng.normal(0, 1, (1, 10)).astype(np.float32)
    fit['transl'] = rng.normal(0, 1, (1, 3)).astype(np.float32)
    return fit


def test_fit_to_params_adds_the_hand_mean_and_splits_the_kid_factor():
    rng = np.random.default_rng(0)
    fit = {k: np.asarray(v[0], np.float64) for k, v in _fit(rng, kid=True).items()}
    hand_mean = rng.normal(0, 0.3, 90)
    pose, betas, expression, transl, kid = agora.fit_to_params(fit, True, hand_mean)
    assert pose.shape == (165,)
    np.testing.assert_array_equal(pose[:3], fit['global_orient'])
    np.testing.assert_array_equal(pose[3:66], fit['body_pose'])
    np.testing.assert_array_equal(pose[66:75], np.concatenate(
        [fit['jaw_pose'], fit['leye_pose'], fit['reye_pose']]))
    np.testing.assert_allclose(pose[75:120], fit['left_hand_pose'] + hand_mean[:45])
    np.testing.assert_allclose(pose[120:165], fit['right_hand_pose'] + hand_mean[45:])
    np.testing.assert_array_equal(betas, fit['betas'][:10])
    assert kid == fit['betas'][10]
    np.testing.assert_array_equal(expression, fit['expression'])
    np.testing.assert_array_equal(transl, fit['transl'])
    # An adult keeps all betas and kid factor 0.
    adult = dict(fit, betas=fit['betas'][:10])
    _, betas, _, _, kid = agora.fit_to_params(adult, False, hand_mean)
    assert len(betas) == 10 and kid == 0.0


def test_genders_and_kids():
    assert agora.body_gender('female', False) == 'f'
    assert agora.body_gender('female', True) == 'n'  # female kids: neutral model
    assert agora.body_gender('male', True) == 'm'
    assert agora.body_gender('Male', False) == 'm'
    for bad in ('other', '', None, 3):
        with pytest.raises(ValueError, match='unknown gender'):
            agora.body_gender(bad, False)


def test_load_fit_checks_keys_and_refuses_foreign_pickles(tmp_path):
    rng = np.random.default_rng(1)
    path = str(tmp_path / 'fit.pkl')
    fit = _fit(rng)
    with open(path, 'wb') as f:
        pickle.dump(fit, f)
    loaded = agora.load_fit(path)
    np.testing.assert_allclose(loaded['body_pose'], fit['body_pose'][0])
    broken = dict(fit)
    del broken['expression']
    with open(path, 'wb') as f:
        pickle.dump(broken, f)
    with pytest.raises(agora.FitError, match='missing') as info:
        agora.load_fit(path)
    assert info.value.field == 'expression'
    with open(path, 'wb') as f:
        pickle.dump(dict(fit, left_hand_pose=np.zeros((1, 12))), f)
    with pytest.raises(agora.FitError) as info:
        agora.load_fit(path)
    assert info.value.field == 'left_hand_pose'
    with open(path, 'wb') as f:
        pickle.dump({'x': os.path.join}, f)  # a global that is not a numpy array
    with pytest.raises(agora.FitError, match='refusing'):
        agora.load_fit(path)
    with pytest.raises(agora.FitError, match='at most'):
        agora.fit_to_params({k: np.asarray(v[0], np.float64) for k, v in dict(
            fit, betas=np.zeros((1, kinds.SHAPE_SIZE + 1))).items()}, False, np.zeros(90))


def test_reader_arguments(tmp_path):
    with pytest.raises(ValueError, match='split'):
        next(agora.iter_examples(str(tmp_path), 'test', body_model_dir=str(tmp_path)))
    with pytest.raises(ValueError, match='body_model_dir'):
        next(agora.iter_examples(str(tmp_path), 'train'))
    (tmp_path / 'seg_rgbs.txt').write_text('0\t[1, 2, 3]\n')
    with pytest.raises(DatasetError, match='no AGORA DataFrames'):
        next(agora.iter_examples(str(tmp_path), 'train', body_model_dir=str(tmp_path)))


# --------------------------------------------------------------------------------------------
# The reader on a synthetic folder with defects

@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
    from nlf_tf.body_models.synthetic import write_synthetic_body_models
    from nlf_tf.data.synthetic_agora import write_agora
    base = tmp_path_factory.mktemp('agora_reader')
    body_models = str(base / 'body_models')
    write_synthetic_body_models(body_models, families=('smplx',))
    root = write_agora(str(base / 'agora'), 7, body_models, num_images=3)
    return dict(root=root, body_models=body_models)


def _copy(synthetic, tmp_path):
    root = str(tmp_path / 'agora')
    shutil.copytree(synthetic['root'], root)
    return root


def _read(root, body_models, **options):
    records = list(agora.iter_examples(root, 'train', body_model_dir=body_models, **options))
    examples = {r.example_id: r for r in records if isinstance(r, Example)}
    skips = {r.example_id: r for r in records if isinstance(r, Skip)}
    return examples, skips


def _edit_frame(root, edit):
    import pandas as pd
    path = os.path.join(root, 'Cam', 'train_0.pkl')
    df = pd.read_pickle(path)
    edited = edit(df)
    (df if edited is None else edited).to_pickle(path)
    return path


def _person_id(df, i_row, p):
    return f'train_0/{df["imgPath"][i_row]}#{p}'


def test_reader_keeps_everyone_of_the_clean_folder(synthetic):
    examples, skips = _read(synthetic['root'], synthetic['body_models'])
    assert len(examples) >= 5
    assert all(s.reason in ('occlusion > 50 without a matching detection', 'box too small')
               for s in skips.values()), skips
    for ex in examples.values():
        ex.validate()
        assert ex.category == 'param' and ex.dataset == 'agora'
        assert ex.body_params['body_model'] in ('smplx_f', 'smplx_m', 'smplx_n')


def test_person_filters(synthetic, tmp_path):
    root = _copy(synthetic, tmp_path)
    first, _ = _read(root, synthetic['body_models'])
    ids = sorted(first)
    box = first[ids[3]].box.copy()

    def edit(df):
        for i_row in range(len(df)):
            for p in range(len(df.at[i_row, 'isValid'])):
                pid = _person_id(df, i_row, p)
                occlusion = list(df.at[i_row, 'occlusion'])
                valid = list(df.at[i_row, 'isValid'])
                if pid == ids[0]:
                    valid[p] = False
                elif pid == ids[1]:
                    occlusion[p] = 80.0
                elif pid in (ids[2], ids[3]):
                    occlusion[p] = 60.0
                df.at[i_row, 'occlusion'] = occlusion
                df.at[i_row, 'isValid'] = valid
    _edit_frame(root, edit)
    image_of = ids[3].rsplit('#', 1)[0]
    detections = {image_of: np.array([[box[0] + 1, box[1], box[2], box[3], 0.9]])}
    examples, skips = _read(root, synthetic['body_models'], detections=detections)
    assert skips[ids[0]].reason == 'isValid is false'
    assert skips[ids[0]].field.startswith('isValid[row')
    assert skips[ids[1]].reason == 'occlusion > 75'
    assert skips[ids[2]].reason == 'occlusion > 50 without a matching detection'
    # A matched detection keeps the 60 % occluded person and replaces the box.
    np.testing.assert_array_equal(examples[ids[3]].box, [box[0] + 1, box[1], box[2], box[3]])
    assert set(ids[4:]) <= set(examples)
    # Small boxes: the threshold is for 4K and scales with the width (384 / 3840 = 0.1).
    assert len(ids) >= 6
    side = min(first[ids[4]].box[2:])
    examples, skips = _read(root, synthetic['body_models'], min_box_side=10 * side + 1)
    assert skips[ids[4]].reason == 'box too small' and skips[ids[4]].field == 'modal mask box'
    examples, skips = _read(root, synthetic['body_models'], min_box_side=10 * side - 1)
    assert ids[4] in examples


def test_unequal_person_lists_and_unknown_gender(synthetic, tmp_path):
    root = _copy(synthetic, tmp_path)

    def edit(df):
        df.at[0, 'Yaw'] = list(df.at[0, 'Yaw'])[:-1]
        genders = list(df.at[1, 'gender'])
        genders[0] = 'robot'
        df.at[1, 'gender'] = genders
    path = _edit_frame(root, edit)
    import pandas as pd
    df = pd.read_pickle(path)
    examples, skips = _read(root, synthetic['body_models'])
    row0 = f'train_0/{df["imgPath"][0]}'
    assert skips[row0].reason == 'per-person lists of unequal length'
    assert skips[row0].file == path and skips[row0].field.startswith('Yaw[row 0]')
    assert not any(i.startswith(row0 + '#') for i in examples)
    bad = skips[_person_id(df, 1, 0)]
    assert bad.reason == 'unknown gender' and bad.field.startswith('gender[row 1][0]')
    assert 'robot' in bad.field
    assert _person_id(df, 1, 1) in examples


def test_broken_fit_pickle(synthetic, tmp_path):
    import pandas as pd
    root = _copy(synthetic, tmp_path)
    df = pd.read_pickle(os.path.join(root, 'Cam', 'train_0.pkl'))
    fit_path = os.path.join(root, df['gt_path_smplx'][0][0][:-4] + '.pkl')
    with open(fit_path, 'rb') as f:
        fit = pickle.load(f)
    del fit['betas']
    with open(fit_path, 'wb') as f:
        pickle.dump(fit, f)
    os.remove(os.path.join(root, df['gt_path_smplx'][1][0][:-4] + '.pkl'))
    _, skips = _read(root, synthetic['body_models'])
    bad = skips[_person_id(df, 0, 0)]
    assert (bad.reason, bad.file) == ('invalid fit pickle', fit_path)
    assert bad.field.startswith('betas')
    missing = skips[_person_id(df, 1, 0)]
    assert missing.reason == 'missing fit file' and missing.file.endswith('.pkl')


def test_palette_problems(synthetic, tmp_path):
    from nlf_tf.data.synthetic_agora import make_palette, write_palette
    root = _copy(synthetic, tmp_path)
    palette_path = os.path.join(root, 'seg_rgbs.txt')
    # Colours of another palette: the label colours match no row.
    write_palette(palette_path, (make_palette() + 128) % 256)
    examples, skips = _read(root, synthetic['body_models'])
    assert not examples
    reasons = {s.reason for s in skips.values()}
    assert 'mask colour not in the palette' in reasons
    bad = next(s for s in skips.values() if s.reason == 'mask colour not in the palette')
    assert bad.file.endswith('_00000.png') and bad.field.startswith('label colour (')
    # A palette with fewer rows than people is a structural error.
    write_palette(palette_path, make_palette()[:1])
    with pytest.raises(DatasetError, match='palette has 1 rows'):
        _read(root, synthetic['body_models'])
    os.remove(palette_path)
    with pytest.raises(DatasetError, match='seg_rgbs'):
        _read(root, synthetic['body_models'])


def test_missing_masks_images_and_columns(synthetic, tmp_path):
    import pandas as pd
    root = _copy(synthetic, tmp_path)
    df = pd.read_pickle(os.path.join(root, 'Cam', 'train_0.pkl'))
    scene, base = agora.mask_file_base(df['imgPath'][0])
    os.remove(os.path.join(root, 'train', scene, f'{base}_00002.png'))  # person 1's amodal mask
    os.remove(os.path.join(root, 'train_0', df['imgPath'][1]))
    # The low-resolution name variant is found as well.
    stem = os.path.join(root, 'train_0', df['imgPath'][2][:-4])
    os.rename(stem + '.png', stem + '_1280x720.png')
    examples, skips = _read(root, synthetic['body_models'])
    assert skips[_person_id(df, 0, 1)].reason == 'missing mask'
    assert skips[_person_id(df, 1, 0)].reason == 'missing image'
    assert examples[_person_id(df, 2, 0)].image_path == stem + '_1280x720.png'
    _edit_frame(root, lambda d: d.drop(columns=['occlusion']))
    with pytest.raises(DatasetError, match="'occlusion'"):
        _read(root, synthetic['body_models'])


def test_kids_need_the_kid_template(synthetic, tmp_path):
    body_models = str(tmp_path / 'body_models')
    shutil.copytree(synthetic['body_models'], body_models)
    os.remove(os.path.join(body_models, 'smplx', 'smplx_kid_template.npy'))
    root = _copy(synthetic, tmp_path)
    _edit_frame(root, lambda d: d.__setitem__('kid', [[True] * len(v) for v in d['isValid']]))
    with pytest.raises(DatasetError, match='smplx_kid_template.npy'):
        _read(root, body_models)


def test_female_kids_use_the_neutral_model(synthetic, tmp_path):
    import pandas as pd
    root = _copy(synthetic, tmp_path)
    df = pd.read_pickle(os.path.join(root, 'Cam', 'train_0.pkl'))
    fit_path = os.path.join(root, df['gt_path_smplx'][0][0][:-4] + '.pkl')
    with open(fit_path, 'rb') as f:
        fit = pickle.load(f)
    if fit['betas'].shape[1] == 10:  # make person 0 a kid with kid factor 0.5
        fit['betas'] = np.concatenate([fit['betas'], [[0.5]]], axis=1).astype(np.float32)
    with open(fit_path, 'wb') as f:
        pickle.dump(fit, f)

    def edit(d, gender):
        kid, genders = list(d.at[0, 'kid']), list(d.at[0, 'gender'])
        kid[0], genders[0] = True, gender
        d.at[0, 'kid'], d.at[0, 'gender'] = kid, genders
    for gender, kind in (('female', 'smplx_n'), ('male', 'smplx_m')):
        _edit_frame(root, lambda d: edit(d, gender))
        examples, skips = _read(root, synthetic['body_models'], max_occlusion_unmatched=100)
        ex = examples[_person_id(df, 0, 0)]
        assert ex.body_params['body_model'] == kind
        assert ex.body_params['kid_factor'] == pytest.approx(fit['betas'][0, -1])
        np.testing.assert_array_equal(ex.body_params['shape'], fit['betas'][0, :10])


def test_pandas_missing(synthetic, monkeypatch):
    monkeypatch.setitem(sys.modules, 'pandas', None)
    with pytest.raises(DatasetError, match=r'pip install nlf-tf\[agora\]'):
        _read(synthetic['root'], synthetic['body_models'])
