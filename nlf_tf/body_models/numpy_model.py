"""Straightforward NumPy float64 forward pass of SMPL / SMPL+H / SMPL-X (the reference).

Works on the dicts of `nlf_tf.body_models.files.load_body_model`. Written for clarity, not
speed: it is the ground truth the TF layer (`tf_model.BodyModel`) is tested against, and the
dataset readers use it to compute joints and rest pelvises.

Model (in the model's own axes, metres):
  v_shaped = v_template + shapedirs·β + exprdirs·ψ + kid_shapedir·kid
  J_rest   = J_regressor · v_shaped
  v_posed  = v_shaped + posedirs · vec(R_j − I, j = 1..J−1)
  each joint's global transform G_j = G_parent(j) · [R_j | J_rest_j − J_rest_parent(j)],
  vertices = Σ_j weights_vj · G_j (v_posed − J_rest_j) + trans, joints = G_j's translation + trans.
The pose is axis-angle per joint, relative to the parent, in the "flat hand mean" convention
(the hand poses are absolute, i.e. already include any hand mean; see `add_hand_mean`).
The global rotation (joint 0) therefore acts about the rest pelvis J_rest_0 (`rest_pelvis`).
"""

import numpy as np

from nlf_tf.body_models import kinds
from nlf_tf.canonical_space import rodrigues  # batched float64 Rodrigues formula


def hand_slots(family):
    """(first left-hand joint, first right-hand joint) of a family, or None for SMPL."""
    names = kinds.JOINT_NAMES[family]
    if 'left_index1' not in names:
        return None
    return names.index('left_index1'), names.index('right_index1')


def add_hand_mean(model, pose):
    """Pose [N, 3J] with the model's hand mean added to the 15 + 15 finger joints.

    Converts hand poses stored relative to the mean hand (SMPL-X / SMPL+H files with
    `use_pca=False, flat_hand_mean=False` in the smplx library, e.g. AGORA's fits) into the
    absolute ("flat hand mean") convention that `forward` takes. SMPL: unchanged copy.
    """
    pose = _as_pose(model, pose).reshape(-1, 3 * model['num_joints']).copy()
    slots = hand_slots(model['family'])
    if slots is not None:
        left, right = slots
        hand_mean = np.asarray(model['hand_mean'], np.float64)
        pose[:, 3 * left:3 * left + 45] += hand_mean[:45]
        pose[:, 3 * right:3 * right + 45] += hand_mean[45:]
    return pose


def shaped_template(model, betas=None, expression=None, kid_factor=0.0, num=None):
    """v_shaped (float64 [N, V, 3]): template plus shape, expression and kid blend shapes."""
    v_template = np.asarray(model['v_template'], np.float64)
    betas, expression, kid_factor, n = _shape_inputs(model, betas, expression, kid_factor, num)
    v_shaped = v_template[np.newaxis] + np.einsum('vcs,ns->nvc', model['shapedirs'], betas)
    if expression.shape[1]:
        v_shaped = v_shaped + np.einsum('vce,ne->nvc', model['exprdirs'], expression)
    if np.any(kid_factor != 0):
        if model.get('kid_shapedir') is None:
            raise ValueError(
                f"kid_factor is nonzero but the {model['kind']} model has no kid template; "
                f"put {model['family']}_kid_template.npy (AGORA's SMIL template) into the "
                f"--body_model_dir {model['family']}/ folder")
        v_shaped = v_shaped + kid_factor[:, np.newaxis, np.newaxis] * model['kid_shapedir']
    return v_shaped


def rest_pelvis(model, betas, expression=None, kid_factor=0.0):
    """Rest-pose root joint J_regressor[0] · v_shaped (float64 [N, 3]) for betas [N, <=S].

    This is the point the global rotation acts about. `betas` may be None (zero shape, N = 1)
    or 1-D (one person, N = 1).
    """
    num = None
    if betas is None:
        num = np.shape(expression)[0] if np.ndim(expression) == 2 else 1
    v_shaped = shaped_template(model, betas, expression, kid_factor, num)
    return np.einsum('v,nvc->nc', np.asarray(model['J_regressor'], np.float64)[0], v_shaped)


def forward(model, pose, betas=None, expression=None, kid_factor=0.0, trans=None,
            return_rest_pelvis=False):
    """Posed vertices (float64 [N, V, 3]) and joints ([N, J, 3]) of a batch of bodies.

    Args:
        model: a `files.load_body_model` dict.
        pose: [N, 3J] (or [N, J, 3]) axis-angle per joint relative to its parent, radians,
            hand poses absolute (flat-hand-mean convention; see `add_hand_mean`).
        betas: [N, <=S] shape coefficients (zero-padded to S; extra columns are dropped), or
            1-D (the same for everyone), or None (zero shape).
        expression: [N, <=E] expression coefficients (SMPL-X), like betas; None = zero.
        kid_factor: scalar or [N] weight of the kid blend shape (needs the kid template).
        trans: [N, 3] (or [3]) translation added at the end; None = zero.
        return_rest_pelvis: also return the rest pelvis [N, 3] (see `rest_pelvis`).
    Returns:
        (vertices, joints) or (vertices, joints, rest_pelvis).
    """
    n_joints = model['num_joints']
    pose = _as_pose(model, pose)
    n = pose.shape[0]
    parents = np.asarray(model['parents'], np.int64)

    v_shaped = shaped_template(model, betas, expression, kid_factor, num=n)
    rest_joints = np.einsum('jv,nvc->njc', np.asarray(model['J_regressor'], np.float64),
                            v_shaped)

    rotations = rodrigues(pose)  # [N, J, 3, 3]
    # Pose blend shapes are driven by (R - I) of all non-root joints, flattened row-major.
    pose_feature = (rotations[:, 1:] - np.eye(3)).reshape(n, 9 * (n_joints - 1))
    v_posed = v_shaped + np.einsum('vcp,np->nvc', np.asarray(model['posedirs'], np.float64),
                                   pose_feature)

    global_rot = np.zeros([n, n_joints, 3, 3])
    global_pos = np.zeros([n, n_joints, 3])
    for j in range(n_joints):
        p = parents[j]
        if p < 0:
            global_rot[:, j] = rotations[:, j]
            global_pos[:, j] = rest_joints[:, j]
        else:
            global_rot[:, j] = global_rot[:, p] @ rotations[:, j]
            global_pos[:, j] = global_pos[:, p] + np.einsum(
                'nab,nb->na', global_rot[:, p], rest_joints[:, j] - rest_joints[:, p])

    # Vertex v follows x -> sum_j w_vj (G_j (x - J_rest_j) + pos_j).
    weights = np.asarray(model['weights'], np.float64)
    offsets = global_pos - np.einsum('njab,njb->nja', global_rot, rest_joints)
    vert_rot = np.einsum('vj,njab->nvab', weights, global_rot)
    vert_off = np.einsum('vj,nja->nva', weights, offsets)
    vertices = np.einsum('nvab,nvb->nva', vert_rot, v_posed) + vert_off
    joints = global_pos

    if trans is not None:
        trans = np.broadcast_to(_float_array(trans, 'trans'), (n, 3))
        vertices = vertices + trans[:, np.newaxis]
        joints = joints + trans[:, np.newaxis]
    if return_rest_pelvis:
        return vertices, joints, rest_joints[:, 0].copy()
    return vertices, joints


def _float_array(value, field):
    try:
        result = np.asarray(value, np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f'{field}: not numeric: {e}') from None
    if not np.all(np.isfinite(result)):
        raise ValueError(f'{field}: contains non-finite values')
    return result


def _as_pose(model, pose):
    n_joints = model['num_joints']
    pose = _float_array(pose, 'pose')
    if pose.ndim == 3 and pose.shape[1:] == (n_joints, 3):
        return pose
    if pose.ndim == 2 and pose.shape[1] == 3 * n_joints:
        return pose.reshape(-1, n_joints, 3)
    raise ValueError(f"pose: a {model['kind']} pose must be [N, {3 * n_joints}] or "
                     f"[N, {n_joints}, 3], got {list(pose.shape)}")


def _coefficients(values, size, n, field):
    """[N, size] from None / [k] / [N, k]: zero-padded or truncated to `size` columns."""
    if values is None:
        return np.zeros([1 if n is None else n, size])
    values = _float_array(values, field)
    if values.ndim == 1:
        values = values[np.newaxis]
    if values.ndim != 2:
        raise ValueError(f'{field}: must be [N, k], got {list(values.shape)}')
    if n is not None and values.shape[0] != n:
        if values.shape[0] != 1:
            raise ValueError(f'{field}: has {values.shape[0]} rows, expected {n}')
        values = np.repeat(values, n, axis=0)
    values = values[:, :size]
    return np.pad(values, [(0, 0), (0, size - values.shape[1])])


def _shape_inputs(model, betas, expression, kid_factor, n):
    if n is None and betas is not None and np.ndim(betas) == 2:
        n = np.shape(betas)[0]
    betas = _coefficients(betas, model['shapedirs'].shape[2], n, 'betas')
    n = betas.shape[0]
    expression = _coefficients(expression, model['exprdirs'].shape[2], n, 'expression')
    kid = _float_array(kid_factor, 'kid_factor')
    if kid.ndim > 1 or (kid.ndim == 1 and kid.shape[0] not in (1, n)):
        raise ValueError(f'kid_factor: must be a scalar or [{n}], got {list(kid.shape)}')
    kid = np.broadcast_to(kid.reshape(-1), (n,)) if kid.ndim else np.full(n, float(kid))
    return betas, expression, kid, n
