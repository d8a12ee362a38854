"""Tests for nlf_tf.canonical_space: LBS, mirror partners, exact symmetry, frame."""

import numpy as np
import pytest

from nlf_tf import canonical_space as cs

MIRROR = np.array([-1.0, 1.0, 1.0])


def _rot(axis, degrees):
    """Rotation matrix about a coordinate axis (independent of cs.rodrigues)."""
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    if axis == 'x':
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == 'y':
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _chain_model():
    """2-bone chain 0 -> 1 -> 2 along +y; vertices 0..2 sit at the joints, 3 is blended."""
    verts = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.1, 1.5, 0.2]])
    weights = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0.25, 0.75]], np.float64)
    posedirs = np.zeros([4, 3, 18])
    posedirs[3, 0, 0] = 0.5  # pose blend shape on vertex 3's x, driven by (R1 - I)[0, 0]
    return dict(v_template=verts, shapedirs=np.zeros([4, 3, 1]), posedirs=posedirs,
                J_regressor=np.eye(3, 4), weights=weights,
                kintree_table=np.array([[-1, 0, 1], [0, 1, 2]]), f=np.array([[0, 1, 3]]))


def test_rodrigues_matches_axis_rotations():
    np.testing.assert_allclose(cs.rodrigues([0, 0, np.deg2rad(30)]), _rot('z', 30), atol=1e-12)
    np.testing.assert_allclose(cs.rodrigues([np.deg2rad(-50), 0, 0]), _rot('x', -50), atol=1e-12)
    np.testing.assert_allclose(cs.rodrigues([0, 0, 0]), np.eye(3), atol=1e-12)


def test_lbs_two_bone_chain_by_hand():
    model = _chain_model()
    r0, r1, r2 = _rot('x', 20), _rot('z', 90), _rot('y', 45)
    pose = np.deg2rad([[20, 0, 0], [0, 0, 90], [0, 45, 0]])
    verts, joints = cs.lbs(model, pose)

    j0, j1, j2 = model['v_template'][:3]
    # Forward kinematics written out bone by bone.
    g1_t = r0 @ (j1 - j0) + j0
    g2_t = r0 @ r1 @ (j2 - j1) + g1_t
    np.testing.assert_allclose(joints, [j0, g1_t, g2_t], atol=1e-12)

    v3 = model['v_template'][3] + [0.5 * (r1[0, 0] - 1), 0, 0]  # pose blend shape first
    by_joint1 = r0 @ r1 @ (v3 - j1) + g1_t
    by_joint2 = r0 @ r1 @ r2 @ (v3 - j2) + g2_t
    np.testing.assert_allclose(verts[3], 0.25 * by_joint1 + 0.75 * by_joint2, atol=1e-12)
    np.testing.assert_allclose(verts[:3], [j0, g1_t, g2_t], atol=1e-12)


def test_lbs_with_betas():
    model = _chain_model()
    model['shapedirs'][:, 1, 0] = 1.0  # beta 0 shifts every vertex up by beta
    verts, joints = cs.lbs(model, np.zeros([3, 3]), betas=[0.3])
    np.testing.assert_allclose(verts, model['v_template'] + [0, 0.3, 0], atol=1e-12)
    np.testing.assert_allclose(joints, model['v_template'][:3] + [0, 0.3, 0], atol=1e-12)


def test_mirror_partners_is_involution_recovering_pairs():
    rng = np.random.default_rng(0)
    left = rng.uniform([0.05, -1, -0.2], [0.6, 1, 0.2], size=[40, 3])
    mid = np.concatenate([np.zeros([6, 1]), rng.uniform(-1, 1, size=[6, 2])], axis=1)
    points = np.concatenate([left, left * MIRROR + rng.normal(0, 1e-4, size=[40, 3]), mid])
    perm = rng.permutation(len(points))
    shuffled = points[perm]
    partner = cs.mirror_partners(shuffled)
    assert np.array_equal(partner[partner], np.arange(len(points)))
    # Recover the partner in terms of the original indices.
    inverse = np.argsort(perm)
    orig_partner = perm[partner[inverse]]
    expected = np.concatenate([np.arange(40, 80), np.arange(40), np.arange(80, 86)])
    np.testing.assert_array_equal(orig_partner, expected)


def _toy_symmetric_model():
    """5 joints (root, left/right arm bases, left/right hands; regressed from vertices 8+9, 2, 3,
    4, 5) and 10 vertices, SMPL axes."""
    verts = np.array([
        [0.0, 0.9, 0.1], [0.0, 1.2, -0.1],            # midline
        [0.21, 1.45, 0.05], [-0.2, 1.45, 0.05],       # arm bases (slightly asymmetric)
        [0.6, 1.42, 0.0], [-0.605, 1.42, 0.0],        # hands (slightly asymmetric)
        [0.4, 1.4, 0.03], [-0.4, 1.4, 0.03],          # forearms, blended
        [0.1, 1.0, 0.1], [-0.1, 1.0, 0.1]])           # hips
    j_regressor = np.zeros([5, 10])
    for j, v in enumerate([0, 2, 3, 4, 5]):
        j_regressor[j, v] = 1.0
    j_regressor[0] = 0.0
    j_regressor[0, [8, 9]] = 0.5
    weights = np.zeros([10, 5])
    weights[[0, 1, 8, 9], 0] = 1
    weights[2, 1] = weights[3, 2] = weights[4, 3] = weights[5, 4] = 1
    weights[6, [1, 3]] = 0.5
    weights[7, [2, 4]] = 0.5
    return dict(v_template=verts, shapedirs=np.zeros([10, 3, 2]), posedirs=np.zeros([10, 3, 36]),
                J_regressor=j_regressor, weights=weights,
                kintree_table=np.array([[-1, 0, 0, 1, 2], [0, 1, 2, 3, 4]]),
                f=np.array([[0, 1, 2]]))


def _assert_exactly_symmetric(points):
    for p in points:
        matches = np.all(points == p * MIRROR, axis=1)
        assert matches.any(), f'no exact mirror partner for {p}'


def test_canonical_toy_model_exact_symmetry_frame_and_values():
    model = _toy_symmetric_model()
    pose = np.zeros([5, 3])
    pose[1] = [0, 0, np.deg2rad(10)]   # left arm raised 10 degrees (+z in SMPL axes)
    pose[2] = [0, 0, np.deg2rad(-10)]  # right arm likewise
    verts, joints = cs.canonical_smpl(model, pose=pose)
    assert verts.dtype == np.float32 and joints.dtype == np.float32
    _assert_exactly_symmetric(verts)
    _assert_exactly_symmetric(joints)
    np.testing.assert_array_equal(joints[0], [0, 0, 0])  # root at the origin

    # Hand computation: pose, flip y, average each left point with its mirrored right partner.
    raw_verts, raw_joints = cs.lbs(model, pose)
    flip = np.array([1.0, -1.0, 1.0])
    rv, rj = raw_verts * flip, raw_joints * flip
    root = (rj[0] + rj[0] * MIRROR) / 2
    expected_hand = (rv[4] + rv[5] * MIRROR) / 2 - root
    np.testing.assert_allclose(verts[4], expected_hand, atol=1e-6)
    np.testing.assert_allclose(verts[5], expected_hand * MIRROR, atol=1e-6)
    expected_lhand_joint = (rj[3] + rj[4] * MIRROR) / 2 - root
    np.testing.assert_allclose(joints[3], expected_lhand_joint, atol=1e-6)
    # y is down: the arm joints (above the root) have negative y; the raised left hand is
    # higher (more negative y) than the left arm base, and on the +x side.
    assert joints[1, 1] < 0 and joints[3, 1] < joints[1, 1] and joints[3, 0] > 0.5
    # Pose by hand: each rest arm vector (hand joint minus arm-base joint, regressed from
    # vertices 2..5) turned 10 degrees up about z, y flipped, left and mirrored right averaged.
    rest = model['v_template']
    left_arm = _rot('z', 10) @ (rest[4] - rest[2]) * flip
    right_arm = _rot('z', -10) @ (rest[5] - rest[3]) * flip
    np.testing.assert_allclose(joints[3] - joints[1], (left_arm + right_arm * MIRROR) / 2,
                               atol=1e-6)
    np.testing.assert_allclose(cs.canonical_smpl_vertices(model, pose=pose), verts)
    np.testing.assert_allclose(cs.canonical_smpl_joints(model, pose=pose), joints)


def test_non_smpl_model_needs_explicit_pose():
    with pytest.raises(ValueError, match='pass the canonical pose'):
        cs.canonical_smpl_vertices(_toy_symmetric_model())


SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]


def _stick_smpl_model():
    """24-joint SMPL tree, one vertex per joint (J_regressor = weights = I), SMPL axes."""
    left = {'hip': (0.1, -0.05, 0), 'knee': (0.1, -0.45, 0), 'ankle': (0.1, -0.85, 0),
            'foot': (0.1, -0.9, 0.1), 'collar': (0.05, 0.45, 0), 'shoulder': (0.17, 0.45, 0),
            'elbow': (0.45, 0.45, 0), 'wrist': (0.7, 0.45, 0), 'hand': (0.8, 0.45, 0)}
    centre = {'pelvis': (0, 0, 0), 'spine1': (0, 0.1, 0), 'spine2': (0, 0.2, 0),
              'spine3': (0, 0.3, 0), 'neck': (0, 0.5, 0), 'head': (0, 0.65, 0.02)}
    pos = []
    for name in cs.SMPL_JOINT_NAMES:
        if name in centre:
            pos.append(centre[name])
        else:
            side, part = name.split('_', 1)
            x, y, z = left[part]
            pos.append((x if side == 'left' else -x * 1.01, y, z))  # right side 1% wider
    verts = np.array(pos, np.float64)
    return dict(v_template=verts, shapedirs=np.zeros([24, 3, 1]), posedirs=np.zeros([24, 3, 207]),
                J_regressor=np.eye(24), weights=np.eye(24),
                kintree_table=np.array([SMPL_PARENTS, list(range(24))]),
                f=np.array([[0, 1, 2]]))


def test_smpl_tree_default_pose_is_the_symmetrised_rest_pose():
    model = _stick_smpl_model()
    verts, joints = cs.canonical_smpl(model)
    rest = model['v_template'] * [1, -1, 1]  # y flipped; the pelvis is already at the origin
    partner = cs.smpl_joint_partners()
    np.testing.assert_allclose(joints, (rest + rest[partner] * MIRROR) / 2, atol=1e-6)
    np.testing.assert_allclose(verts, joints, atol=1e-6)


def test_smpl_tree_pose_by_joint_names():
    model = _stick_smpl_model()
    pose = cs.canonical_pose_rotvecs(pose_deg={'left_hip': (0, 0, 15), 'right_hip': (0, 0, -15)})
    verts, joints = cs.canonical_smpl(model, pose=pose)
    idx = {n: i for i, n in enumerate(cs.SMPL_JOINT_NAMES)}
    _assert_exactly_symmetric(joints)
    for name in cs.SMPL_JOINT_NAMES:
        if name.startswith('left_'):
            np.testing.assert_array_equal(joints[idx['right_' + name[5:]]],
                                          joints[idx[name]] * MIRROR)
    np.testing.assert_array_equal(joints[idx['pelvis']], [0, 0, 0])
    # Head above the pelvis -> negative y; face forward -> positive z; left -> positive x.
    assert joints[idx['head'], 1] < 0 and joints[idx['head'], 2] > 0
    assert joints[idx['left_wrist'], 0] > 0.6
    # Left leg abducted 15 degrees: the knee moves outwards by 0.4 m * sin(angle).
    angle = np.deg2rad(15)
    hip = (0.1 + 0.101) / 2
    np.testing.assert_allclose(joints[idx['left_hip']], [hip, 0.05, 0], atol=1e-6)
    np.testing.assert_allclose(
        joints[idx['left_knee']] - joints[idx['left_hip']],
        [0.4 * np.sin(angle), 0.4 * np.cos(angle), 0], atol=1e-6)
    # Arms stay horizontal (T-pose): wrist at shoulder height.
    assert joints[idx['left_wrist'], 1] == pytest.approx(joints[idx['left_shoulder'], 1], abs=1e-6)
    # One vertex per joint, weights = I: the canonical vertices are the canonical joints.
    np.testing.assert_allclose(verts, joints, atol=1e-6)


def test_canonical_pose_rotvecs_by_name():
    pose = cs.canonical_pose_rotvecs(pose_deg={'left_elbow': (0, 90, 0)})
    expected = np.zeros([24, 3])
    expected[18] = [0, np.pi / 2, 0]
    np.testing.assert_allclose(pose, expected)
    with pytest.raises(ValueError, match='unknown joints'):
        cs.canonical_pose_rotvecs(pose_deg={'left_tail': (0, 0, 1)})


def test_canonical_from_model_file(tmp_path):
    model = _stick_smpl_model()
    path = tmp_path / 'stick.npz'
    np.savez(path, **model)
    np.testing.assert_array_equal(cs.canonical_smpl_vertices(str(path)),
                                  cs.canonical_smpl_vertices(model))
