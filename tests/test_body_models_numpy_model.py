"""Tests for nlf_tf.body_models.numpy_model (the NumPy float64 reference forward pass)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from nlf_tf import canonical_space
from nlf_tf.body_models import files, kinds, numpy_model
from test_body_models_files import (descendants, model_arrays, write_kid_template,
                                    write_model)

FAMILIES = ('smpl', 'smplh', 'smplx')


@pytest.fixture(autouse=True)
def _fresh_cache():
    files.clear_cache()
    yield
    files.clear_cache()


def _load(tmp_path, family, seed=0, **kwargs):
    gender = kinds.FAMILY_GENDERS[family][0]
    arrays = model_arrays(family, seed=seed, **kwargs)
    write_model(str(tmp_path), family, gender, arrays)
    return files.load_body_model(tmp_path, family, gender), arrays


def _random_pose(rng, n, n_joints, scale=0.4):
    return rng.normal(0, scale, [n, 3 * n_joints])


@pytest.mark.parametrize('family', FAMILIES)
def test_zero_pose_and_shape_gives_the_template(tmp_path, family):
    model, arrays = _load(tmp_path, family)
    n_joints = model['num_joints']
    vertices, joints, pelvis = numpy_model.forward(model, np.zeros([2, 3 * n_joints]),
                                                   return_rest_pelvis=True)
    assert vertices.shape == (2, model['num_vertices'], 3) and vertices.dtype == np.float64
    np.testing.assert_allclose(vertices[1], arrays['v_template'], rtol=0, atol=1e-15)
    np.testing.assert_allclose(joints[0], arrays['J_regressor'] @ arrays['v_template'],
                               atol=1e-15)
    np.testing.assert_allclose(pelvis, joints[:, 0], atol=0)


@pytest.mark.parametrize('family', FAMILIES)
def test_blend_shapes_are_linear_in_betas_and_expression(tmp_path, family):
    model, arrays = _load(tmp_path, family, seed=1)
    rng = np.random.default_rng(0)
    pose = np.zeros([1, 3 * model['num_joints']])
    base, base_joints = numpy_model.forward(model, pose)
    n_shape = model['shapedirs'].shape[2]
    # Unit betas pick the file's shapedirs columns; joints follow the regressor.
    for k in (0, n_shape - 1):
        betas = np.zeros([1, k + 1])
        betas[0, k] = 1.0
        v, j = numpy_model.forward(model, pose, betas=betas)
        np.testing.assert_allclose(v[0] - base[0], arrays['shapedirs'][:, :, k], atol=1e-12)
        np.testing.assert_allclose(j[0] - base_joints[0],
                                   arrays['J_regressor'] @ arrays['shapedirs'][:, :, k],
                                   atol=1e-12)
    # Linearity (betas shorter than S are zero-padded).
    b1, b2 = rng.normal(size=[1, 4]), rng.normal(size=[1, 4])
    v1 = numpy_model.forward(model, pose, betas=b1)[0] - base
    v2 = numpy_model.forward(model, pose, betas=b2)[0] - base
    v12 = numpy_model.forward(model, pose, betas=2 * b1 - 3 * b2)[0] - base
    np.testing.assert_allclose(v12, 2 * v1 - 3 * v2, atol=1e-12)

    if family == 'smplx':
        # Expression k is shapedirs column 10 + k of the (v1.0) file.
        expression = np.zeros([1, 10])
        expression[0, 3] = 2.0
        v = numpy_model.forward(model, pose, expression=expression)[0]
        np.testing.assert_allclose(v[0] - base[0], 2 * arrays['shapedirs'][:, :, 13],
                                   atol=1e-12)
        e1 = rng.normal(size=[1, 10])
        ve = numpy_model.forward(model, pose, betas=b1, expression=e1)[0] - base
        ve_only = numpy_model.forward(model, pose, expression=e1)[0] - base
        np.testing.assert_allclose(ve, v1 + ve_only, atol=1e-12)
    else:
        assert model['exprdirs'].shape[2] == 0


def test_smplx_v11_expression_columns(tmp_path):
    arrays = model_arrays('smplx', seed=2, verts_per_joint=1, shapedir_columns=400)
    write_model(str(tmp_path), 'smplx', 'm', arrays)
    model = files.load_body_model(tmp_path, 'smplx', 'm')
    pose = np.zeros([1, 165])
    base = numpy_model.forward(model, pose)[0]
    v = numpy_model.forward(model, pose, expression=np.eye(10)[[4]])[0]
    np.testing.assert_allclose(v[0] - base[0], arrays['shapedirs'][:, :, 304], atol=1e-12)
    betas = np.zeros([1, 300])
    betas[0, 299] = 1.0
    v = numpy_model.forward(model, pose, betas=betas)[0]
    np.testing.assert_allclose(v[0] - base[0], arrays['shapedirs'][:, :, 299], atol=1e-12)


@pytest.mark.parametrize('family', FAMILIES)
def test_global_rotation_and_translation_are_rigid_about_the_rest_pelvis(tmp_path, family):
    model, _ = _load(tmp_path, family, seed=3)
    rng = np.random.default_rng(1)
    n = 3
    pose = _random_pose(rng, n, model['num_joints'])
    betas = rng.normal(size=[n, 5])
    expression = rng.normal(size=[n, 10])
    pose_local = pose.copy()
    pose_local[:, :3] = 0
    v0, j0, pelvis = numpy_model.forward(model, pose_local, betas, expression,
                                         return_rest_pelvis=True)
    trans = rng.normal(size=[n, 3])
    v, j = numpy_model.forward(model, pose, betas, expression, trans=trans)
    rot = Rotation.from_rotvec(pose[:, :3]).as_matrix()
    expected_v = np.einsum('nab,nvb->nva', rot, v0 - pelvis[:, None]) + (pelvis + trans)[:, None]
    expected_j = np.einsum('nab,nvb->nva', rot, j0 - pelvis[:, None]) + (pelvis + trans)[:, None]
    np.testing.assert_allclose(v, expected_v, atol=1e-12)
    np.testing.assert_allclose(j, expected_j, atol=1e-12)
    np.testing.assert_allclose(
        pelvis, numpy_model.rest_pelvis(model, betas, expression), atol=1e-14)
    np.testing.assert_allclose(
        pelvis[1], model['J_regressor'][0] @ (
            model['v_template'] + model['shapedirs'][:, :, :5] @ betas[1]
            + model['exprdirs'] @ expression[1, :model['exprdirs'].shape[2]]), atol=1e-14)


@pytest.mark.parametrize('family,joint_name', [('smpl', 'left_elbow'), ('smplh', 'right_index1'),
                                               ('smplx', 'neck'), ('smplx', 'left_hip')])
def test_rotating_a_joint_moves_only_its_descendants(tmp_path, family, joint_name):
    model, arrays = _load(tmp_path, family, seed=4, posedir_scale=0.0)
    joint = kinds.JOINT_NAMES[family].index(joint_name)
    rng = np.random.default_rng(2)
    pose = _random_pose(rng, 1, model['num_joints'])
    betas = rng.normal(size=[1, 3])
    v_a, j_a = numpy_model.forward(model, pose, betas)
    pose_b = pose.copy()
    pose_b[0, 3 * joint:3 * joint + 3] += [0.3, -0.5, 0.2]
    v_b, j_b = numpy_model.forward(model, pose_b, betas)

    moved_subtree = descendants(family, joint)
    assert moved_subtree  # the chosen joints are not leaves
    joint_moved = np.linalg.norm(j_b[0] - j_a[0], axis=-1) > 1e-9
    assert set(np.flatnonzero(joint_moved)) == moved_subtree
    # A vertex moves iff it is skinned to the rotated joint or one of its descendants.
    subtree = sorted(moved_subtree | {joint})
    skinned = arrays['weights'][:, subtree].sum(axis=1) > 0
    vertex_moved = np.linalg.norm(v_b[0] - v_a[0], axis=-1) > 1e-9
    np.testing.assert_array_equal(vertex_moved, skinned)


def test_matches_independent_single_body_lbs(tmp_path):
    # canonical_space.lbs is a separate single-body implementation (betas, pose blend shapes).
    model, _ = _load(tmp_path, 'smpl', seed=5)
    rng = np.random.default_rng(3)
    pose = _random_pose(rng, 2, 24, scale=0.8)
    betas = rng.normal(size=[2, 10])
    vertices, joints = numpy_model.forward(model, pose, betas)
    for i in range(2):
        v_ref, j_ref = canonical_space.lbs(model, pose[i].reshape(24, 3), betas[i])
        np.testing.assert_allclose(vertices[i], v_ref, atol=1e-12)
        np.testing.assert_allclose(joints[i], j_ref, atol=1e-12)


def test_pose_blend_shapes(tmp_path):
    # Rotating only joint 1 by 180 degrees about x: R - I = diag(0, -2, -2) for that joint.
    model, arrays = _load(tmp_path, 'smpl', seed=6)
    pose = np.zeros([1, 72])
    pose[0, 3] = np.pi
    v_posed = numpy_model.forward(model, pose)[0]
    zero_posedirs = dict(model, posedirs=np.zeros_like(model['posedirs']))
    v_unposed = numpy_model.forward(zero_posedirs, pose)[0]
    offset = -2 * arrays['posedirs'][:, :, 4] - 2 * arrays['posedirs'][:, :, 8]
    # The offset is applied in the rest pose, then carried by each vertex's blended rotation:
    # joint 1 and its descendants are rotated by R, all other joints not at all.
    rot = Rotation.from_rotvec([np.pi, 0, 0]).as_matrix()
    subtree = sorted(descendants('smpl', 1) | {1})
    w1 = arrays['weights'][:, subtree].sum(axis=1)[:, None, None]
    blended = w1 * rot + (1 - w1) * np.eye(3)
    np.testing.assert_allclose(v_posed[0] - v_unposed[0],
                               np.einsum('vab,vb->va', blended, offset), atol=1e-12)


@pytest.mark.parametrize('family', ['smplh', 'smplx'])
def test_add_hand_mean(tmp_path, family):
    model, arrays = _load(tmp_path, family, seed=7)
    n_joints = model['num_joints']
    pose = np.random.default_rng(4).normal(size=[2, 3 * n_joints])
    with_mean = numpy_model.add_hand_mean(model, pose)
    left = kinds.JOINT_NAMES[family].index('left_index1')
    right = kinds.JOINT_NAMES[family].index('right_index1')
    assert (left, right) == {'smplh': (22, 37), 'smplx': (25, 40)}[family]
    expected = pose.copy()
    expected[:, 3 * left:3 * left + 45] += arrays['hands_meanl']
    expected[:, 3 * right:3 * right + 45] += arrays['hands_meanr']
    np.testing.assert_array_equal(with_mean, expected)
    # The mean hand is the hand pose of the flat-hand-mean pose of zeros plus the mean.
    flat = numpy_model.add_hand_mean(model, np.zeros([1, 3 * n_joints]))
    assert np.count_nonzero(flat) == np.count_nonzero(arrays['hands_meanl']) + np.count_nonzero(
        arrays['hands_meanr'])


def test_add_hand_mean_smpl_is_identity(tmp_path):
    model, _ = _load(tmp_path, 'smpl')
    pose = np.ones([1, 72])
    np.testing.assert_array_equal(numpy_model.add_hand_mean(model, pose), pose)


@pytest.mark.parametrize('family', ['smpl', 'smplx'])
def test_kid_factor(tmp_path, family):
    gender = 'n'
    arrays = model_arrays(family, seed=8)
    write_model(str(tmp_path), family, gender, arrays)
    model_adult = files.load_body_model(tmp_path, family, gender)
    pose = np.zeros([2, 3 * model_adult['num_joints']])
    with pytest.raises(ValueError, match='kid template'):
        numpy_model.forward(model_adult, pose, kid_factor=[0.0, 1.0])

    kid = 0.6 * arrays['v_template'] + np.array([0.5, 1.0, -2.0])
    write_kid_template(str(tmp_path), family, kid)
    files.clear_cache()
    model = files.load_body_model(tmp_path, family, gender)
    vertices, joints, pelvis = numpy_model.forward(model, pose, kid_factor=[0.0, 1.0],
                                                   return_rest_pelvis=True)
    np.testing.assert_allclose(vertices[0], arrays['v_template'], atol=1e-12)
    # kid_factor 1 gives the kid template centred on its vertex mean.
    np.testing.assert_allclose(vertices[1], kid - kid.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(joints[1], arrays['J_regressor'] @ (kid - kid.mean(axis=0)),
                               atol=1e-12)
    np.testing.assert_allclose(
        numpy_model.rest_pelvis(model, np.zeros([2, 10]), kid_factor=[0.0, 1.0]), pelvis,
        atol=1e-14)
    # Scalar kid factor and a half kid.
    half = numpy_model.forward(model, pose[:1], kid_factor=0.5)[0]
    np.testing.assert_allclose(half[0], (vertices[0] + vertices[1]) / 2, atol=1e-12)


def test_input_validation_and_batch_conventions(tmp_path):
    model, _ = _load(tmp_path, 'smpl', seed=9)
    with pytest.raises(ValueError, match='pose: a smpl_f pose must be \\[N, 72\\]'):
        numpy_model.forward(model, np.zeros([1, 165]))
    with pytest.raises(ValueError, match='betas: has 3 rows, expected 2'):
        numpy_model.forward(model, np.zeros([2, 72]), betas=np.zeros([3, 10]))
    with pytest.raises(ValueError, match='kid_factor'):
        numpy_model.forward(model, np.zeros([2, 72]), kid_factor=np.zeros([3]))
    with pytest.raises(ValueError, match='pose: contains non-finite'):
        numpy_model.forward(model, np.full([1, 72], np.nan))

    rng = np.random.default_rng(5)
    pose = _random_pose(rng, 2, 24)
    betas = rng.normal(size=[2, 12])  # more than S = 10: extra columns dropped
    a = numpy_model.forward(model, pose, betas)
    b = numpy_model.forward(model, pose.reshape(2, 24, 3), betas[:, :10])
    np.testing.assert_array_equal(a[0], b[0])
    # 1-D betas and trans apply to every body.
    c = numpy_model.forward(model, pose, betas[0], trans=[1.0, 2.0, 3.0])
    d = numpy_model.forward(model, pose, np.stack([betas[0]] * 2))
    np.testing.assert_allclose(c[0], d[0] + [1.0, 2.0, 3.0], atol=1e-14)
    # Empty batch.
    v, j = numpy_model.forward(model, np.zeros([0, 72]), np.zeros([0, 10]))
    assert v.shape == (0, model['num_vertices'], 3) and j.shape == (0, 24, 3)
    assert numpy_model.rest_pelvis(model, None).shape == (1, 3)
