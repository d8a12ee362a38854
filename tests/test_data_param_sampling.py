"""Tests of the parametric point sampling and camera-frame parameters (nlf_tf.data.param_sampling)
on tiny asset dicts built here with NumPy and a tiny random NumPy LBS model."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial.transform import Rotation

from nlf_tf.body_models import kinds
from nlf_tf.data import param_sampling

# ----------------------------------------------------------------------------------------
# Tiny assets
# ----------------------------------------------------------------------------------------


def tiny_assets(family='smpl', num_interior=60, seed=0, k=4):
    """A small closed mesh (a squashed octahedron with random vertex jitter), the family's
    joint count of random joints, and interior points that are exact ELL combinations of
    [vertices; joints] (float64 -> float32 of the same rows)."""
    rng = np.random.default_rng(seed)
    vertices = np.array([[1, 0, 0], [-1, 0, 0], [0, 1.5, 0], [0, -1.5, 0], [0, 0, 0.5],
                         [0, 0, -0.5]], np.float64) * 0.4 + rng.normal(0, 0.02, (6, 3))
    faces = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5],
                      [3, 1, 5], [0, 3, 5]], np.int32)
    num_joints = kinds.NUM_JOINTS[family]
    joints = rng.uniform(-0.2, 0.2, (num_joints, 3))
    nodes = np.concatenate([vertices, joints]).astype(np.float32)
    columns = np.stack([rng.choice(len(nodes), k, replace=False) for _ in range(num_interior)])
    weights = rng.dirichlet(np.ones(k), num_interior).astype(np.float32)
    weights[::5, -1] = 0.0  # padding-like entries (column kept, weight 0)
    columns[::5, -1] = 0
    weights[::5] /= weights[::5].sum(1, keepdims=True)
    interior = np.einsum('nk,nkd->nd', weights.astype(np.float64),
                         nodes[columns].astype(np.float64)).astype(np.float32)
    face_probs = rng.dirichlet(np.ones(len(faces)) * 2).astype(np.float32)
    kind_list = [kinds.kind_name(family, g) for g in kinds.FAMILY_GENDERS[family]]
    g = len(kind_list)
    return dict(
        format_version=1, family=family, method='test', vertices=vertices.astype(np.float32),
        joints=joints.astype(np.float32), faces=faces, face_probs=face_probs,
        interior_points=interior, interior_columns=columns.astype(np.int32),
        interior_weights=weights, kinds=np.array(kind_list),
        rest_pelvis=rng.normal(0, 0.1, (g, 3)).astype(np.float32),
        rest_pelvis_shapedirs=rng.normal(0, 0.01, (g, 3, kinds.SHAPE_SIZE)).astype(np.float32),
        rest_pelvis_exprdirs=rng.normal(0, 0.01, (g, 3, kinds.EXPRESSION_SIZE)).astype(
            np.float32),
        rest_pelvis_kiddir=rng.normal(0, 0.05, (g, 3)).astype(np.float32),
        fingerprints='{}', num_vertices=len(vertices), num_joints=num_joints)


# ----------------------------------------------------------------------------------------
# Counts
# ----------------------------------------------------------------------------------------

def test_point_counts_nlf_and_small_budgets():
    # P = 1024: surface 640 - (J - J // 2), interior 384 - J // 2, then the J joints.
    assert param_sampling.point_counts(1024, 24) == (628, 372, 24)
    assert param_sampling.point_counts(1024, 52) == (614, 358, 52)
    assert param_sampling.point_counts(1024, 55) == (612, 357, 55)
    for j in (24, 52, 55):
        assert sum(param_sampling.point_counts(1024, j)) == 1024
    # P = 64: budgets 40 / 24 -> 40 - 12, 24 - 12.
    assert param_sampling.point_counts(64, 24) == (28, 12, 24)
    # P = 100: 100 * 5 / 8 = 62.5 rounds up to 63 -> 63 - 12, 37 - 12.
    assert param_sampling.point_counts(100, 24) == (51, 25, 24)
    with pytest.raises(ValueError, match='num_points=32 is too small'):
        param_sampling.point_counts(32, 55)


# ----------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------

def _sample(raw, seed, p):
    assets = param_sampling.ParamAssets(raw)
    return [np.asarray(x) for x in param_sampling.sample_points(
        assets, tf.constant([seed, 17], tf.int64), p)]


def test_sample_layout_surface_interior_joints():
    raw = tiny_assets('smpl')
    p = 64
    n_surface, n_interior, n_joints = param_sampling.point_counts(p, 24)
    points, columns, weights, root = _sample(raw, 1, p)
    assert points.shape == (p, 3) and points.dtype == np.float32
    assert columns.shape == (p, 8) and columns.dtype == np.int32
    assert weights.shape == (p, 8) and weights.dtype == np.float32
    assert int(root) == p - 24
    v = len(raw['vertices'])

    # Surface rows: 3 columns of one face of the mesh, barycentrics >= 0 summing to 1, and the
    # point is that combination of the face's vertices (so it lies on the face).
    face_set = {tuple(f) for f in raw['faces']}
    for i in range(n_surface):
        assert tuple(columns[i, :3]) in face_set
        assert np.all(columns[i, 3:] == 0) and np.all(weights[i, 3:] == 0)
        assert np.all(weights[i, :3] >= 0)
        np.testing.assert_allclose(weights[i, :3].sum(), 1.0, atol=1e-6)
        corners = raw['vertices'][columns[i, :3]]
        np.testing.assert_allclose(points[i], weights[i, :3] @ corners, atol=1e-6)
        normal = np.cross(corners[1] - corners[0], corners[2] - corners[0])
        assert abs((points[i] - corners[0]) @ normal) < 1e-6 * np.linalg.norm(normal)

    # Interior rows: the pool rows at one contiguous offset.
    block = slice(n_surface, n_surface + n_interior)
    offset = int(np.nonzero(np.all(raw['interior_points'] == points[n_surface], axis=1))[0][0])
    pool = slice(offset, offset + n_interior)
    np.testing.assert_array_equal(points[block], raw['interior_points'][pool])
    np.testing.assert_array_equal(columns[block, :4], raw['interior_columns'][pool])
    np.testing.assert_array_equal(weights[block, :4], raw['interior_weights'][pool])
    assert np.all(columns[block, 4:] == 0) and np.all(weights[block, 4:] == 0)

    # Joint rows: identity on the joint columns V .. V + J - 1, canonical joints.
    joints = slice(p - n_joints, p)
    np.testing.assert_array_equal(points[joints], raw['joints'])
    np.testing.assert_array_equal(columns[joints, 0], v + np.arange(24))
    np.testing.assert_array_equal(weights[joints, 0], 1.0)
    assert np.all(weights[joints, 1:] == 0)

    # Interpolating [vertices; joints] with the rows reproduces every canonical point.
    nodes = np.concatenate([raw['vertices'], raw['joints']])
    interpolated = np.einsum('pk,pkd->pd', weights, nodes[columns])
    np.testing.assert_allclose(interpolated, points, atol=1e-6)


def test_sampling_is_deterministic_and_offsets_vary():
    raw = tiny_assets('smpl')
    a, b = _sample(raw, 5, 64), _sample(raw, 5, 64)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    n_surface, n_interior, _ = param_sampling.point_counts(64, 24)
    offsets = set()
    for seed in range(30):
        points = _sample(raw, seed, 64)[0]
        first = points[n_surface]
        offsets.add(int(np.nonzero(np.all(raw['interior_points'] == first, axis=1))[0][0]))
    assert all(0 <= o <= 60 - n_interior for o in offsets)
    assert len(offsets) > 10


def test_face_frequencies_follow_face_probs():
    raw = tiny_assets('smpl', num_interior=400)
    assets = param_sampling.ParamAssets(raw)
    n_surface = param_sampling.point_counts(1024, 24)[0]
    counts = np.zeros(len(raw['faces']))
    face_index = {tuple(f): i for i, f in enumerate(raw['faces'])}
    barycentrics = []
    for seed in range(16):
        _, columns, weights, _ = param_sampling.sample_points(assets, tf.constant([seed, 3]),
                                                              1024)
        for row in np.asarray(columns)[:n_surface, :3]:
            counts[face_index[tuple(row)]] += 1
        barycentrics.append(np.asarray(weights)[:n_surface, :3])
    # Uniform over each triangle: every barycentric has mean 1/3 (std 0.24 per sample) and
    # the third one is below 1/2 with probability 3/4.
    barycentrics = np.concatenate(barycentrics)
    np.testing.assert_allclose(barycentrics.mean(0), 1 / 3, atol=0.01)
    np.testing.assert_allclose(np.mean(barycentrics < 0.5, axis=0), 0.75, atol=0.02)
    total = counts.sum()
    expected = raw['face_probs'] / raw['face_probs'].sum()
    sigma = np.sqrt(expected * (1 - expected) / total)
    assert np.all(np.abs(counts / total - expected) < 5 * sigma + 1e-3)


def test_sampling_in_graph_and_pool_too_small():
    raw = tiny_assets('smpl', num_interior=10)
    assets = param_sampling.ParamAssets(raw)
    with pytest.raises(ValueError, match='hold 10 interior points.*needs 12'):
        assets.check_num_points(64)
    raw = tiny_assets('smplx', num_interior=400)
    assets = param_sampling.ParamAssets(raw)
    fn = tf.function(lambda key: param_sampling.sample_points(assets, key, 1024))
    points, columns, weights, root = fn(tf.constant([1, 2], tf.int64))
    assert points.shape == (1024, 3) and int(root) == 1024 - 55
    assert columns.shape == (1024, 8)


def test_asset_validation_names_the_field():
    raw = tiny_assets('smplh')
    del raw['face_probs']
    with pytest.raises(ValueError, match="'face_probs' is missing"):
        param_sampling.ParamAssets(raw)
    raw = tiny_assets('smplh')
    raw['joints'] = raw['joints'][:24]
    with pytest.raises(ValueError, match="'joints' must have shape \\[52, 3\\]"):
        param_sampling.ParamAssets(raw)
    raw = tiny_assets('smplh')
    raw['interior_columns'][0, 0] = 10_000
    with pytest.raises(ValueError, match='interior_columns'):
        param_sampling.ParamAssets(raw)
    raw = tiny_assets('smplh')
    raw['kinds'] = np.array(['smplx_n'])
    with pytest.raises(ValueError, match='kinds'):
        param_sampling.ParamAssets(raw)
    with pytest.raises(ValueError, match='family'):
        param_sampling.ParamAssets(tiny_assets('smplh'), 'smpl')


# ----------------------------------------------------------------------------------------
# COO
# ----------------------------------------------------------------------------------------

def test_to_coo_is_row_major_and_equals_dense():
    columns = np.array([[5, 2, 0, 0], [3, 3, 1, 0], [7, 0, 0, 0]], np.int32)
    weights = np.array([[0.2, 0.8, 0.0, 0.0], [0.25, 0.25, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]],
                       np.float32)
    indices, values = (np.asarray(x) for x in param_sampling.to_coo(columns, weights))
    assert indices.dtype == np.int64 and values.dtype == np.float32
    # Hand-derived: row 0 -> (0,2) 0.8, (0,5) 0.2; row 1 -> (1,1) 0.5, (1,3) 0.25 + 0.25;
    # row 2 -> (2,7) 1.
    np.testing.assert_array_equal(indices, [[0, 2], [0, 5], [1, 1], [1, 3], [2, 7]])
    np.testing.assert_allclose(values, [0.8, 0.2, 0.5, 0.5, 1.0])
    # Random rows of a sampled example: row-major sorted, no duplicates, dense matrix equal.
    raw = tiny_assets('smpl')
    _, columns, weights, _ = _sample(raw, 2, 64)
    indices, values = (np.asarray(x) for x in param_sampling.to_coo(columns, weights))
    linear = indices[:, 0] * 1000 + indices[:, 1]
    assert np.all(np.diff(linear) > 0)
    width = len(raw['vertices']) + 24
    dense = np.zeros((64, width), np.float32)
    np.add.at(dense, (np.repeat(np.arange(64), 8), columns.reshape(-1)), weights.reshape(-1))
    from_coo = np.zeros_like(dense)
    from_coo[indices[:, 0], indices[:, 1]] = values
    np.testing.assert_allclose(from_coo, dense, atol=1e-7)


# ----------------------------------------------------------------------------------------
# Rotations and the camera frame
# ----------------------------------------------------------------------------------------

def test_rotation_conversions_match_scipy():
    rng = np.random.default_rng(4)
    rotvecs = [rng.normal(size=3) for _ in range(20)]
    rotvecs += [np.zeros(3), np.array([1e-5, -2e-5, 0.0]),
                np.array([0.0, np.pi - 1e-4, 0.0]), np.array([np.pi / np.sqrt(2)] * 2 + [0.0])]
    rotvecs = np.array(rotvecs, np.float32)
    matrices = np.asarray(param_sampling.rotvec_to_matrix(rotvecs))
    np.testing.assert_allclose(matrices, Rotation.from_rotvec(rotvecs).as_matrix(), atol=2e-6)
    back = np.asarray(param_sampling.matrix_to_rotvec(matrices))
    np.testing.assert_allclose(Rotation.from_rotvec(back).as_matrix(),
                               Rotation.from_rotvec(rotvecs).as_matrix(), atol=1e-5)
    angles = np.linalg.norm(back, axis=1)
    assert np.all(angles <= np.pi + 1e-5)


def _rodrigues(rotvec):
    return Rotation.from_rotvec(rotvec).as_matrix()


def tiny_lbs_model(rng, num_vertices=30):
    parents = np.array([-1, 0, 1, 1, 0])
    j = len(parents)
    weights = rng.uniform(0, 1, (num_vertices, j)) ** 3
    regressor = rng.uniform(0, 1, (j, num_vertices)) ** 4
    return dict(
        parents=parents,
        v_template=rng.normal(0, 0.3, (num_vertices, 3)) + [0.0, 0.9, 0.0],
        shapedirs=rng.normal(0, 0.05, (num_vertices, 3, 4)),
        exprdirs=rng.normal(0, 0.02, (num_vertices, 3, 2)),
        kiddir=rng.normal(0, 0.1, (num_vertices, 3)),
        posedirs=rng.normal(0, 0.01, (num_vertices, 3, 9 * (j - 1))),
        weights=weights / weights.sum(1, keepdims=True),
        J_regressor=regressor / regressor.sum(1, keepdims=True))


def lbs_forward(model, pose, betas, expression, kid, trans):
    """Plain NumPy LBS (float64): vertices and joints, global rotation about the rest pelvis."""
    v_shaped = (model['v_template'] + model['shapedirs'] @ betas
                + model['exprdirs'] @ expression + kid * model['kiddir'])
    rest = model['J_regressor'] @ v_shaped
    rots = np.stack([_rodrigues(r) for r in pose.reshape(-1, 3)])
    v_posed = v_shaped + model['posedirs'] @ (rots[1:] - np.eye(3)).reshape(-1)
    world_rot, world_pos = [], []
    for i, parent in enumerate(model['parents']):
        if parent < 0:
            world_rot.append(rots[i])
            world_pos.append(rest[i])
        else:
            world_rot.append(world_rot[parent] @ rots[i])
            world_pos.append(world_pos[parent] + world_rot[parent] @ (rest[i] - rest[parent]))
    world_rot, world_pos = np.stack(world_rot), np.stack(world_pos)
    # Vertex skinning: each joint maps rest point x to R_j (x - rest_j) + pos_j.
    per_joint = (np.einsum('jab,vb->vja', world_rot, v_posed)
                 - np.einsum('jab,jb->ja', world_rot, rest)[None] + world_pos[None])
    vertices = np.einsum('vj,vja->va', model['weights'], per_joint)
    return vertices + trans, world_pos + trans


def test_camera_frame_params_match_moving_the_posed_body():
    rng = np.random.default_rng(7)
    model = tiny_lbs_model(rng)
    j = len(model['parents'])
    pose = rng.normal(0, 0.5, 3 * j)
    pose[:3] = [2.0, -0.7, 1.1]
    betas, expression, kid = rng.normal(0, 1, 4), rng.normal(0, 1, 2), 0.6
    trans = np.array([0.4, -0.3, 2.0])
    scale = 1.3
    rot = _rodrigues([0.3, -1.2, 0.5])
    center = np.array([-0.5, 0.2, -3.0])

    # Reference: pose in the world (world = scale * model output), then X -> R (X - c).
    verts_w, joints_w = lbs_forward(model, pose, betas, expression, kid, trans)
    want_v = (scale * verts_w - center) @ rot.T
    want_j = (scale * joints_w - center) @ rot.T

    # The rest pelvis through the asset-style per-kind table (J0 of each blend shape).
    j0 = model['J_regressor'][0]
    raw = tiny_assets('smpl')
    raw['kinds'] = np.array(['smpl_n'])
    raw['rest_pelvis'] = (j0 @ model['v_template'])[None].astype(np.float32)
    raw['rest_pelvis_shapedirs'] = np.pad(np.einsum('v,vas->as', j0, model['shapedirs']),
                                          [(0, 0), (0, 124)])[None].astype(np.float32)
    raw['rest_pelvis_exprdirs'] = np.pad(np.einsum('v,vas->as', j0, model['exprdirs']),
                                         [(0, 0), (0, 8)])[None].astype(np.float32)
    raw['rest_pelvis_kiddir'] = (j0 @ model['kiddir'])[None].astype(np.float32)
    table = param_sampling.kind_table([param_sampling.ParamAssets(raw)])
    kind = param_sampling.kind_index_of(table, tf.constant('smpl_n'))
    assert int(kind) == kinds.kind_index('smpl_n')
    assert int(param_sampling.kind_index_of(table, tf.constant('smplq_n'))) == -1
    pelvis = param_sampling.rest_pelvis(
        table, kind, tf.constant(np.pad(betas, (0, 124)), tf.float32),
        tf.constant(np.pad(expression, (0, 8)), tf.float32), tf.constant(kid, tf.float32))
    v_shaped = (model['v_template'] + model['shapedirs'] @ betas
                + model['exprdirs'] @ expression + kid * model['kiddir'])
    np.testing.assert_allclose(pelvis, j0 @ v_shaped, atol=1e-5)

    new_pose, new_trans = param_sampling.camera_frame_params(
        pose.astype(np.float32), trans.astype(np.float32), rot.astype(np.float32),
        center.astype(np.float32), np.float32(scale), pelvis)
    new_pose, new_trans = np.asarray(new_pose, np.float64), np.asarray(new_trans, np.float64)
    np.testing.assert_array_equal(new_pose[3:], pose[3:].astype(np.float32))
    got_v, got_j = lbs_forward(model, new_pose, betas, expression, kid, new_trans)
    np.testing.assert_allclose(scale * got_v, want_v, atol=2e-5)
    np.testing.assert_allclose(scale * got_j, want_j, atol=2e-5)

    # Batched form gives the same.
    batch_pose, batch_trans = param_sampling.camera_frame_params(
        np.stack([pose] * 2).astype(np.float32), np.stack([trans] * 2).astype(np.float32),
        np.stack([rot] * 2).astype(np.float32), np.stack([center] * 2).astype(np.float32),
        np.full(2, scale, np.float32), tf.stack([pelvis] * 2))
    np.testing.assert_allclose(batch_pose[1], new_pose, atol=1e-6)
    np.testing.assert_allclose(batch_trans[1], new_trans, atol=1e-6)
