"""The canonical space shared by all annotation categories (surface points, joints, samples).

Every canonical point lives in ONE frame, the same as `data_specs/demo.json`:

- metres; x = the person's LEFT, y = DOWN, z = FORWARD (the direction the person faces);
- the SMPL root joint (pelvis) at the origin;
- exactly left/right symmetric: for every vertex i with mirror partner m(i),
  (-x_i, y_i, z_i) == p_m(i) bit for bit (so a horizontal flip is "negate x, swap partners").

Note that SMPL's own axes are x = left, y = up, z = forward, so going to this frame flips y
only; the frame is therefore a mirror image of SMPL's (left-handed w.r.t. the body). Every
point keeps its meaning (left stays +x, front stays +z), which is all the canonical space needs.
(The original NLF keeps SMPL's y-up axes; the port's design chose y down.)

Construction (`canonical_smpl`):

1. Pose the template (zero shape unless `betas` are given) with NumPy linear blend skinning,
   including the pose blend shapes, into a fixed symmetric pose. `CANONICAL_POSE_DEG` gives the
   pose per SMPL joint NAME as an axis-angle vector in degrees in SMPL's axes. The chosen pose
   is SMPL's own rest pose (all rotations zero): a T-pose with the arms straight out sideways
   and horizontal, palms down, and the legs straight down and slightly apart (SMPL's rest
   ankles are about 9 cm either side of the midline). It is kept at rest so that the surface
   agrees with the joint table's canonical positions (`data_specs/*.json`, a T-pose with the
   legs vertical at hip width) to within a few centimetres; abducting the legs would move the
   ankles' surface tens of centimetres away from the table's ankle joints, more than the
   model's bounded joint offsets (0.07 m) can absorb. (The original NLF abducts each leg 40
   degrees and raises the arms 30 degrees, with its joint table derived from that mesh.)
   Models with a different joint count need an explicit `pose`.
2. Convert to the frame above (y -> -y).
3. Find each vertex's mirror partner: the vertex nearest to its x-mirrored position, made into
   an involutive permutation by greedy matching (candidate pairs taken in order of increasing
   mismatch |mirror(p_i) - p_j|, each vertex matched once; self-pairs allowed for vertices on
   the midline). See `mirror_partners`.
4. Symmetrise: p_i <- (p_i + mirror(p_partner(i))) / 2. Joints are symmetrised the same way,
   with partners by name (left_* <-> right_*) for the 24-joint SMPL tree and geometric
   partners otherwise. Joints are the LBS-posed joint positions (rest joints regressed with
   `J_regressor`, then moved through the kinematic chain).
5. Translate so that the (symmetrised) root joint is at the origin.
"""

import functools
import os

import numpy as np
import scipy.spatial

SMPL_JOINT_NAMES = (
    'pelvis', 'left_hip', 'right_hip', 'spine1', 'left_knee', 'right_knee', 'spine2',
    'left_ankle', 'right_ankle', 'spine3', 'left_foot', 'right_foot', 'neck', 'left_collar',
    'right_collar', 'head', 'left_shoulder', 'right_shoulder', 'left_elbow', 'right_elbow',
    'left_wrist', 'right_wrist', 'left_hand', 'right_hand')

# Axis-angle (degrees, SMPL axes: x left, y up, z forward) per joint name; unlisted joints are at
# zero rotation. The rest pose is used (see the module docstring), so the limb joints are listed
# at zero only to show where a different stance would go: +z on the left hip (and -z on the
# right) swings the legs outwards, +z on the left shoulder/collar (-z on the right) raises the
# arms.
CANONICAL_POSE_DEG = {
    'left_hip': (0.0, 0.0, 0.0),
    'right_hip': (0.0, 0.0, 0.0),
    'left_shoulder': (0.0, 0.0, 0.0),
    'right_shoulder': (0.0, 0.0, 0.0),
}

# SMPL axes (x left, y up, z forward) -> canonical axes (x left, y down, z forward).
SMPL_TO_CANONICAL_SIGNS = np.array([1.0, -1.0, 1.0])
_MIRROR = np.array([-1.0, 1.0, 1.0])


def canonical_pose_rotvecs(joint_names=SMPL_JOINT_NAMES, pose_deg=None):
    """Axis-angle pose (float64 [J, 3], radians) from a {joint name: degrees} dict."""
    pose_deg = CANONICAL_POSE_DEG if pose_deg is None else pose_deg
    unknown = sorted(set(pose_deg) - set(joint_names))
    if unknown:
        raise ValueError(f'canonical pose names unknown joints: {unknown}')
    pose = np.zeros([len(joint_names), 3])
    for i, name in enumerate(joint_names):
        if name in pose_deg:
            pose[i] = np.deg2rad(np.asarray(pose_deg[name], np.float64))
    return pose


def rodrigues(rotvecs):
    """Rotation matrices (float64 [..., 3, 3]) of axis-angle vectors [..., 3]."""
    rotvecs = np.asarray(rotvecs, np.float64)
    angle = np.linalg.norm(rotvecs, axis=-1, keepdims=True)
    safe = np.where(angle > 0, angle, 1.0)
    axis = rotvecs / safe
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zeros = np.zeros_like(x)
    cross = np.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], -1).reshape(
        rotvecs.shape[:-1] + (3, 3))
    sin = np.sin(angle)[..., np.newaxis]
    cos = np.cos(angle)[..., np.newaxis]
    eye = np.eye(3)
    return eye + sin * cross + (1 - cos) * (cross @ cross)


def lbs(model, pose_rotvecs, betas=None):
    """Linear blend skinning of a model dict (see `nlf_tf.body_models.smpl_file`), in NumPy.

    Args:
        model: dict with v_template, shapedirs, posedirs, J_regressor, weights, kintree_table.
        pose_rotvecs: [J, 3] axis-angle per joint (radians), relative to the parent.
        betas: optional [S'] shape coefficients (S' <= S); zero shape if None.
    Returns:
        (vertices float64 [V, 3], joints float64 [J, 3]) in the model's own axes.
    """
    v_template = np.asarray(model['v_template'], np.float64)
    parents = np.asarray(model['kintree_table'], np.int64)[0]
    n_joints = len(parents)
    pose = np.asarray(pose_rotvecs, np.float64)
    if pose.shape != (n_joints, 3):
        raise ValueError(f'pose must be [{n_joints}, 3] axis-angle vectors, got {pose.shape}')

    v_shaped = v_template
    if betas is not None:
        betas = np.asarray(betas, np.float64).reshape(-1)
        shapedirs = np.asarray(model['shapedirs'], np.float64)
        if len(betas) > shapedirs.shape[2]:
            raise ValueError(f'{len(betas)} betas given but the model has '
                             f'{shapedirs.shape[2]} shape components')
        v_shaped = v_template + shapedirs[:, :, :len(betas)] @ betas
    rest_joints = np.asarray(model['J_regressor'], np.float64) @ v_shaped

    rotations = rodrigues(pose)
    # Pose blend shapes are driven by (R - I) of all non-root joints, flattened row-major.
    pose_feature = (rotations[1:] - np.eye(3)).reshape(-1)
    v_posed = v_shaped + np.asarray(model['posedirs'], np.float64) @ pose_feature

    # Global rigid transform of each joint: parent transform composed with the local one.
    global_rot = np.zeros([n_joints, 3, 3])
    global_trans = np.zeros([n_joints, 3])
    for j in range(n_joints):
        p = parents[j]
        if p < 0:
            global_rot[j] = rotations[j]
            global_trans[j] = rest_joints[j]
        else:
            global_rot[j] = global_rot[p] @ rotations[j]
            global_trans[j] = global_rot[p] @ (rest_joints[j] - rest_joints[p]) + global_trans[p]

    # Skinning transforms map rest-pose points: x -> R_g (x - J_rest) + t_g.
    skin_trans = global_trans - np.einsum('jab,jb->ja', global_rot, rest_joints)
    weights = np.asarray(model['weights'], np.float64)
    vert_rot = np.einsum('vj,jab->vab', weights, global_rot)
    vert_trans = weights @ skin_trans
    vertices = np.einsum('vab,vb->va', vert_rot, v_posed) + vert_trans
    return vertices, global_trans


def mirror_partners(points, num_candidates=8):
    """Involutive permutation pairing each point with its mirror image across x = 0.

    Candidate pairs (i, j) are the `num_candidates` nearest points j to (-x_i, y_i, z_i); they
    are accepted greedily in order of increasing mismatch (ties broken by index), each point
    used once; j == i is allowed (points on the midline). Points left unmatched (only if their
    candidates were all taken) are matched the same way among themselves with all pairs as
    candidates. Returns int64 [N] with partner[partner[i]] == i.
    """
    points = np.asarray(points, np.float64)
    n = len(points)
    partner = np.full(n, -1, np.int64)
    if n == 0:
        return partner
    k = min(num_candidates, n)
    dist, idx = scipy.spatial.cKDTree(points).query(points * _MIRROR, k=k)
    dist = dist.reshape(n, k)
    idx = idx.reshape(n, k)
    _greedy_match(np.repeat(np.arange(n), k), idx.reshape(-1), dist.reshape(-1), partner)

    leftover = np.flatnonzero(partner < 0)
    if len(leftover):
        sub = points[leftover]
        d = np.linalg.norm((sub * _MIRROR)[:, np.newaxis] - sub[np.newaxis], axis=-1)
        ii, jj = np.meshgrid(leftover, leftover, indexing='ij')
        _greedy_match(ii.reshape(-1), jj.reshape(-1), d.reshape(-1), partner)
    return partner


def _greedy_match(first, second, cost, partner):
    order = np.lexsort((second, first, cost))
    for c in order:
        i, j = first[c], second[c]
        if partner[i] < 0 and partner[j] < 0:
            partner[i] = j
            partner[j] = i


def symmetrize(points, partner):
    """(p_i + mirror(p_partner(i))) / 2 for every i, made exactly symmetric. float64 [N, 3]."""
    points = np.asarray(points, np.float64)
    partner = np.asarray(partner, np.int64)
    if not np.array_equal(partner[partner], np.arange(len(points))):
        raise ValueError('mirror partners must form an involution (partner[partner[i]] == i)')
    result = (points + points[partner] * _MIRROR) / 2
    return _enforce_symmetry(result, partner)


def _enforce_symmetry(points, partner):
    # The average above is already symmetric up to float rounding of additions, which are
    # commutative and sign-symmetric in IEEE arithmetic; copying the mirrored lower-index
    # member makes the guarantee explicit and survives later casts.
    points = points.copy()
    lower = np.flatnonzero(np.arange(len(points)) < partner)
    points[partner[lower]] = points[lower] * _MIRROR
    points[partner == np.arange(len(points)), 0] = 0.0
    return points


def smpl_joint_partners(joint_names=SMPL_JOINT_NAMES):
    """Mirror partner per joint by name: left_* <-> right_*, other joints are their own."""
    index = {name: i for i, name in enumerate(joint_names)}
    partner = np.arange(len(joint_names), dtype=np.int64)
    for i, name in enumerate(joint_names):
        for a, b in (('left_', 'right_'), ('right_', 'left_')):
            if name.startswith(a):
                other = b + name[len(a):]
                if other not in index:
                    raise ValueError(f'joint {name!r} has no mirror joint {other!r}')
                partner[i] = index[other]
    return partner


def canonical_smpl(model, pose=None, betas=None, joint_names=None):
    """Canonical (vertices float32 [V, 3], joints float32 [J, 3]) of a body model.

    Args:
        model: a dict from `nlf_tf.body_models.smpl_file.load_smpl_model`, or a path to a
            model file (.npz / .pkl).
        pose: optional [J, 3] axis-angle (radians, model axes) overriding the canonical pose;
            required unless the model has the 24-joint SMPL tree.
        betas: optional shape coefficients (default: the template's shape).
        joint_names: optional joint names for name-based joint mirroring (default: the SMPL
            names for 24-joint models, geometric pairing otherwise).
    """
    if isinstance(model, (str, os.PathLike)):
        model = _load_cached(os.fspath(model))
    n_joints = np.asarray(model['kintree_table']).shape[1]
    if joint_names is None and n_joints == len(SMPL_JOINT_NAMES):
        joint_names = SMPL_JOINT_NAMES
    if pose is None:
        if joint_names is None or tuple(joint_names) != SMPL_JOINT_NAMES:
            raise ValueError(f'the model has {n_joints} joints, not the 24-joint SMPL tree; '
                             f'pass the canonical pose explicitly as [{n_joints}, 3] rotvecs')
        pose = canonical_pose_rotvecs(SMPL_JOINT_NAMES)

    vertices, joints = lbs(model, pose, betas)
    vertices = vertices * SMPL_TO_CANONICAL_SIGNS
    joints = joints * SMPL_TO_CANONICAL_SIGNS

    vertices = symmetrize(vertices, mirror_partners(vertices))
    joint_partner = (smpl_joint_partners(joint_names) if joint_names is not None
                     else mirror_partners(joints))
    if len(joint_partner) != n_joints:
        raise ValueError(f'{len(joint_partner)} joint names given for {n_joints} joints')
    joints = symmetrize(joints, joint_partner)

    root = int(np.flatnonzero(np.asarray(model['kintree_table'])[0] < 0)[0])
    if joint_partner[root] != root:
        raise ValueError('the root joint must be its own mirror partner')
    offset = joints[root].copy()  # its x is exactly 0, so the shift keeps the symmetry exact
    return (np.asarray(vertices - offset, np.float32),
            np.asarray(joints - offset, np.float32))


def canonical_smpl_vertices(model, pose=None, betas=None):
    """float32 [V, 3] canonical vertex positions (see `canonical_smpl`)."""
    return canonical_smpl(model, pose=pose, betas=betas)[0]


def canonical_smpl_joints(model, pose=None, betas=None, joint_names=None):
    """float32 [J, 3] canonical joint positions (see `canonical_smpl`)."""
    return canonical_smpl(model, pose=pose, betas=betas, joint_names=joint_names)[1]


@functools.lru_cache(maxsize=4)
def _load_cached(path):
    from nlf_tf.body_models import smpl_file
    return smpl_file.load_smpl_model(path)
