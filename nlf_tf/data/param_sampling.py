"""In-graph point sampling and camera-frame parameters of parametric (body-model) examples.

Spec datasets.md §7.2 (NLF `nlf/tf/loading/parametric.py`). Every function that runs per example
is made of TensorFlow ops only (usable in `tf.data.Dataset.map`) and draws its randomness from a
stateless key (shape [2] int64).

Points of one example (P = num_points, J = the family's joint count), in this row order:
- surface: faces drawn with replacement with probability `face_probs` (inverse CDF), a uniform
  point of each face (barycentrics by the square-root trick); canonical point = barycentric
  combination of the canonical vertices; interpolation row = the 3 barycentrics on the face's
  vertex columns;
- interior: a contiguous block of the precomputed interior pool starting at a uniform random
  offset (NLF's choice: one offset per example, cheap, and over many examples uniform);
  interpolation rows = the pool's precomputed sparse rows;
- joints: the canonical joints in model order, identity rows on the joint columns.
Interpolation rows index the columns [vertices (V); joints (J)] of the family's body model and
are stored ELLPACK style with K_MAX = 8 entries per row, padded with column 0 / weight 0, so all
families share one dense layout. The trainer forwards the body model and evaluates
scale * (rows @ [vertices; joints]) to get the camera-frame ground truth.

Counts (`point_counts`): for P = 1024 (NLF) surface = 640 - (J - floor(J / 2)) and interior =
384 - floor(J / 2) (SMPL 628 + 372 + 24, SMPL+H 614 + 358 + 52, SMPL-X 612 + 357 + 55); for other
P the surface budget is round(P * 640 / 1024) (halves rounded up) and the interior budget the
rest, with the same subtractions.

Camera frame (`camera_frame_params`, NLF `mmapped_smpl.py rototranslate` with
post_translate=False): the global rotation acts about the rest-pose pelvis p(beta, psi, kid), so
moving the posed body by X -> R (X - c) (R world->camera, c the optical centre in world metres)
gives global rotation R R_g and translation R p - p + R (trans - c / scale); the other joint
rotations are relative and stay.
"""

import math

import numpy as np
import tensorflow as tf

from nlf_tf.body_models import kinds
# The body model's axis-angle -> matrix (float32 here), so loader and trainer rotate alike.
from nlf_tf.body_models.tf_model import rotvec_to_matrix

K_MAX = 8  # interpolation entries per point (ELLPACK width) for every family
REFERENCE_POINTS = 1024
REFERENCE_SURFACE = 640

def _key(key, *data):
    key = tf.cast(key, tf.int64)
    for d in data:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(d, tf.int64), alg='philox')
    return key


# ----------------------------------------------------------------------------------------
# Counts
# ----------------------------------------------------------------------------------------

def point_counts(num_points, num_joints):
    """(surface, interior, joints) counts of an example with P points of a J-joint model.

    ValueError if the budget is too small for the joints (a count would be negative).
    """
    p, j = int(num_points), int(num_joints)
    if p < 1 or j < 1:
        raise ValueError(f'need num_points >= 1 and num_joints >= 1, got {p}, {j}')
    surface_budget = int(math.floor(p * REFERENCE_SURFACE / REFERENCE_POINTS + 0.5))
    interior_budget = p - surface_budget
    surface = surface_budget - (j - j // 2)
    interior = interior_budget - j // 2
    if surface < 0 or interior < 0:
        raise ValueError(
            f'--num_points={p} is too small for a {j}-joint body model: the surface budget '
            f'{surface_budget} and interior budget {interior_budget} must hold {j - j // 2} and '
            f'{j // 2} of the joints (got surface {surface}, interior {interior})')
    return surface, interior, j


# ----------------------------------------------------------------------------------------
# Assets
# ----------------------------------------------------------------------------------------

def _asset_array(family, assets, name, dtype, shape):
    if name not in assets:
        raise ValueError(f'canonical assets of {family!r}: field {name!r} is missing')
    try:
        array = np.asarray(assets[name], dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f'canonical assets of {family!r}: field {name!r} cannot be converted '
                         f'to {np.dtype(dtype).name}: {e}') from None
    if array.ndim != len(shape) or any(
            want is not None and got != want for got, want in zip(array.shape, shape)):
        pretty = ', '.join('N' if s is None else str(s) for s in shape)
        raise ValueError(f'canonical assets of {family!r}: field {name!r} must have shape '
                         f'[{pretty}], got {list(array.shape)}')
    return array


class ParamAssets:
    """The canonical assets of one body-model family, as TF constants for in-graph sampling.

    Built from a dict of `nlf_tf.body_models.canonical_assets.load_assets` (keys `family`,
    `vertices` [V, 3], `joints` [J, 3], `faces` [F, 3], `face_probs` [F], `interior_points`
    [N, 3], `interior_columns` / `interior_weights` [N, K <= 8], `kinds` [G], `rest_pelvis`
    [G, 3], `rest_pelvis_shapedirs` [G, 3, 128], `rest_pelvis_exprdirs` [G, 3, 10],
    `rest_pelvis_kiddir` [G, 3]). Raises ValueError naming the field if one is malformed.

    Attributes: family, kinds (tuple of kind names with model files), num_vertices,
    num_joints, num_interior (pool size), vertices, joints, faces, face_cdf, interior_points,
    interior_columns [N, K_MAX], interior_weights [N, K_MAX] (tensors), and `pelvis` =
    {kind: (rest_pelvis [3], shapedirs [3, 128], exprdirs [3, 10], kiddir [3])} (NumPy).
    """

    def __init__(self, assets, family=None):
        stored = assets.get('family')
        stored = None if stored is None else str(np.asarray(stored).item())
        family = stored if family is None else family
        if family not in kinds.FAMILIES:
            raise ValueError(f'canonical assets: field "family" must be one of {kinds.FAMILIES}, '
                             f'got {family!r}')
        if stored is not None and stored != family:
            raise ValueError(f'canonical assets given for {family!r} hold field "family" = '
                             f'{stored!r}')
        self.family = family
        num_joints = kinds.NUM_JOINTS[family]
        vertices = _asset_array(family, assets, 'vertices', np.float32, (None, 3))
        joints = _asset_array(family, assets, 'joints', np.float32, (num_joints, 3))
        num_vertices = len(vertices)
        faces = _asset_array(family, assets, 'faces', np.int32, (None, 3))
        face_probs = _asset_array(family, assets, 'face_probs', np.float64, (len(faces),))
        if len(faces) == 0 or faces.min() < 0 or faces.max() >= num_vertices:
            raise ValueError(f'canonical assets of {family!r}: field "faces" must be non-empty '
                             f'with vertex indices in [0, {num_vertices})')
        if not (np.all(np.isfinite(face_probs)) and np.all(face_probs >= 0)
                and face_probs.sum() > 0):
            raise ValueError(f'canonical assets of {family!r}: field "face_probs" must be '
                             f'finite, >= 0 and not all 0')
        points = _asset_array(family, assets, 'interior_points', np.float32, (None, 3))
        columns = _asset_array(family, assets, 'interior_columns', np.int32, (len(points), None))
        weights = _asset_array(family, assets, 'interior_weights', np.float32,
                               (len(points), columns.shape[1]))
        if columns.shape[1] > K_MAX:
            raise ValueError(f'canonical assets of {family!r}: field "interior_columns" has '
                             f'{columns.shape[1]} entries per row, at most {K_MAX} supported')
        if columns.size and (columns.min() < 0 or columns.max() >= num_vertices + num_joints):
            raise ValueError(f'canonical assets of {family!r}: field "interior_columns" must '
                             f'index [0, V + J) = [0, {num_vertices + num_joints})')
        for name, value in (('vertices', vertices), ('joints', joints),
                            ('interior_points', points), ('interior_weights', weights)):
            if not np.all(np.isfinite(value)):
                raise ValueError(f'canonical assets of {family!r}: field {name!r} contains '
                                 f'non-finite values')
        kind_names = [str(k) for k in np.asarray(assets.get('kinds', []), dtype=str).reshape(-1)]
        if 'kinds' not in assets or not kind_names:
            raise ValueError(f'canonical assets of {family!r}: field "kinds" is missing or empty')
        for kind in kind_names:
            if kind not in kinds.KINDS or kinds.family_of(kind) != family:
                raise ValueError(f'canonical assets of {family!r}: field "kinds" lists {kind!r}, '
                                 f'not a {family} kind')
        g = len(kind_names)
        rest = _asset_array(family, assets, 'rest_pelvis', np.float32, (g, 3))
        shapedirs = _asset_array(family, assets, 'rest_pelvis_shapedirs', np.float32,
                                 (g, 3, kinds.SHAPE_SIZE))
        exprdirs = _asset_array(family, assets, 'rest_pelvis_exprdirs', np.float32,
                                (g, 3, kinds.EXPRESSION_SIZE))
        kiddir = _asset_array(family, assets, 'rest_pelvis_kiddir', np.float32, (g, 3))

        self.kinds = tuple(kind_names)
        self.num_vertices = num_vertices
        self.num_joints = num_joints
        self.num_interior = len(points)
        self.pelvis = {k: (rest[i], shapedirs[i], exprdirs[i], kiddir[i])
                       for i, k in enumerate(kind_names)}
        # Cumulative face distribution with an exact 1 at the end, so u in [0, 1) always lands.
        cdf = np.cumsum(face_probs / face_probs.sum())
        cdf[-1] = 1.0
        pad = K_MAX - columns.shape[1]
        self.vertices = tf.constant(vertices)
        self.joints = tf.constant(joints)
        self.faces = tf.constant(faces)
        self.face_cdf = tf.constant(cdf.astype(np.float32))
        self.interior_points = tf.constant(points)
        self.interior_columns = tf.constant(np.pad(columns, [(0, 0), (0, pad)]))
        self.interior_weights = tf.constant(np.pad(weights, [(0, 0), (0, pad)]))

    def check_num_points(self, num_points):
        """ValueError if P points cannot be sampled (budget or interior pool too small)."""
        _, interior, _ = point_counts(num_points, self.num_joints)
        if interior > self.num_interior:
            raise ValueError(
                f'canonical assets of {self.family!r} hold {self.num_interior} interior points '
                f'but --num_points={num_points} needs {interior}; regenerate them with a larger '
                f'--num_interior (nlf-tf-canonical)')


def as_param_assets(assets, family=None):
    return assets if isinstance(assets, ParamAssets) else ParamAssets(assets, family)


# ----------------------------------------------------------------------------------------
# Sampling (in graph)
# ----------------------------------------------------------------------------------------

def sample_points(assets, key, num_points):
    """Canonical points and interpolation rows of one example (see the module docstring).

    Returns (canonical_points float32 [P, 3], columns int32 [P, K_MAX], weights float32
    [P, K_MAX], root_index int32 scalar = P - J, the row of the first joint, the pelvis).
    """
    assets = as_param_assets(assets)
    p = int(num_points)
    n_surface, n_interior, n_joints = point_counts(p, assets.num_joints)
    if n_interior > assets.num_interior:
        assets.check_num_points(p)
    key = tf.cast(key, tf.int64)

    # Surface: inverse-CDF face draws, sqrt-trick barycentrics (uniform over the triangle).
    u = tf.random.stateless_uniform([n_surface], seed=_key(key, 0), alg='philox')
    face_index = tf.minimum(tf.searchsorted(assets.face_cdf, u, side='right'),
                            tf.shape(assets.faces)[0] - 1)
    face = tf.gather(assets.faces, face_index)
    r = tf.random.stateless_uniform([n_surface, 2], seed=_key(key, 1), alg='philox')
    s = tf.sqrt(r[:, 0])
    bary = tf.stack([1.0 - s, s * (1.0 - r[:, 1]), s * r[:, 1]], axis=1)
    surface_points = tf.einsum('nk,nkd->nd', bary, tf.gather(assets.vertices, face))
    surface_columns = tf.pad(face, [[0, 0], [0, K_MAX - 3]])
    surface_weights = tf.pad(bary, [[0, 0], [0, K_MAX - 3]])

    # Interior: one contiguous block at a uniform offset in [0, N - n].
    offset = tf.random.stateless_uniform([], seed=_key(key, 2), minval=0,
                                         maxval=assets.num_interior - n_interior + 1,
                                         dtype=tf.int32, alg='philox')
    interior_points = assets.interior_points[offset:offset + n_interior]
    interior_columns = assets.interior_columns[offset:offset + n_interior]
    interior_weights = assets.interior_weights[offset:offset + n_interior]

    # Joints: identity rows on the joint columns V .. V + J - 1.
    joint_columns = tf.pad(tf.range(assets.num_vertices, assets.num_vertices + n_joints,
                                    dtype=tf.int32)[:, None], [[0, 0], [0, K_MAX - 1]])
    joint_weights = tf.pad(tf.ones([n_joints, 1]), [[0, 0], [0, K_MAX - 1]])

    points = tf.concat([surface_points, interior_points, assets.joints], 0)
    columns = tf.concat([surface_columns, interior_columns, joint_columns], 0)
    weights = tf.concat([surface_weights, interior_weights, joint_weights], 0)
    points.set_shape([p, 3])
    columns.set_shape([p, K_MAX])
    weights.set_shape([p, K_MAX])
    return points, columns, weights, tf.constant(p - n_joints, tf.int32)


def to_coo(columns, weights):
    """Row-major COO form of ELLPACK rows [P, K]: (indices int64 [nnz, 2] (row, column) sorted
    by row then column, values float32 [nnz]). Zero weights (padding) are dropped and repeated
    (row, column) entries summed, so it is the canonical form of the dense matrix."""
    columns = tf.cast(columns, tf.int64)
    weights = tf.convert_to_tensor(weights, tf.float32)
    rows = tf.broadcast_to(tf.range(tf.shape(columns, out_type=tf.int64)[0])[:, None],
                           tf.shape(columns, out_type=tf.int64))
    keep = tf.not_equal(weights, 0.0)
    rows, columns, values = (tf.boolean_mask(x, keep) for x in (rows, columns, weights))
    width = tf.reduce_max(tf.concat([columns, [-1]], 0)) + 1
    linear = rows * width + columns
    order = tf.argsort(linear, stable=True)
    linear, values = tf.gather(linear, order), tf.gather(values, order)
    is_new = tf.concat([tf.ones([tf.minimum(tf.size(linear), 1)], tf.bool),
                        linear[1:] != linear[:-1]], 0)
    segment = tf.cumsum(tf.cast(is_new, tf.int32)) - 1
    values = tf.math.segment_sum(values, segment)
    linear = tf.boolean_mask(linear, is_new)
    indices = tf.stack([linear // width, linear % width], axis=1)
    return indices, values


# ----------------------------------------------------------------------------------------
# Rotations and the camera frame (in graph)
# ----------------------------------------------------------------------------------------

def matrix_to_rotvec(matrix):
    """Axis-angle vectors [..., 3] (angle in [0, pi]) of rotation matrices [..., 3, 3].

    Through the quaternion (Shepperd's method: the largest of w, x, y, z is computed from the
    diagonal and the others from it), so it is accurate at 0 and at pi alike.
    """
    m = tf.convert_to_tensor(matrix, tf.float32)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    trace = m00 + m11 + m22
    candidates = []
    for big, (a, b, c) in (
            (1.0 + trace, (m21 - m12, m02 - m20, m10 - m01)),          # w largest
            (1.0 + m00 - m11 - m22, (m21 - m12, m01 + m10, m02 + m20)),  # x largest
            (1.0 - m00 + m11 - m22, (m02 - m20, m01 + m10, m12 + m21)),  # y largest
            (1.0 - m00 - m11 + m22, (m10 - m01, m02 + m20, m12 + m21))):  # z largest
        root = tf.sqrt(tf.maximum(big, 1e-12))
        half, quarter = 0.5 * root, 0.5 / root
        candidates.append((half, a * quarter, b * quarter, c * quarter))
    w = tf.stack([candidates[0][0], candidates[1][1], candidates[2][1], candidates[3][1]], -1)
    x = tf.stack([candidates[0][1], candidates[1][0], candidates[2][2], candidates[3][2]], -1)
    y = tf.stack([candidates[0][2], candidates[1][2], candidates[2][0], candidates[3][3]], -1)
    z = tf.stack([candidates[0][3], candidates[1][3], candidates[2][3], candidates[3][0]], -1)
    choice = tf.argmax(tf.stack([trace, m00, m11, m22], -1), axis=-1)[..., None]
    quat = tf.concat([tf.gather(q, choice, batch_dims=len(q.shape) - 1) for q in (w, x, y, z)],
                     -1)
    quat = tf.where(quat[..., :1] < 0, -quat, quat)  # w >= 0: angle in [0, pi]
    w, v = quat[..., 0], quat[..., 1:]
    norm = tf.norm(v, axis=-1)
    angle = 2.0 * tf.atan2(norm, w)
    factor = tf.where(norm > 1e-6, angle / tf.maximum(norm, 1e-6),
                      2.0 / tf.maximum(w, 1e-6))
    return v * factor[..., None]


def rest_pelvis(table, kind_index, shape, expression, kid_factor):
    """Rest-pose pelvis [3] of the body (model axes): J0(template) + J0(shapedirs) beta +
    J0(exprdirs) psi + J0(kid shapedir) kid. `table` from `kind_table`, shape [128],
    expression [10] (padded)."""
    return (tf.gather(table['rest_pelvis'], kind_index)
            + tf.linalg.matvec(tf.gather(table['rest_pelvis_shapedirs'], kind_index), shape)
            + tf.linalg.matvec(tf.gather(table['rest_pelvis_exprdirs'], kind_index), expression)
            + tf.gather(table['rest_pelvis_kiddir'], kind_index) * kid_factor)


def camera_frame_params(pose, trans, rot_world_to_cam, optical_center_m, scale, rest_pelvis):
    """Body-model pose and translation in a camera frame (leading batch dims allowed).

    pose [..., 3n] axis-angle (global orientation first), trans [..., 3] world (body-model
    units: world = scale * (model output)), rot_world_to_cam R [..., 3, 3], optical_center_m c
    [..., 3] world metres, scale [...], rest_pelvis p [..., 3] (the body's rest-pose pelvis, see
    `rest_pelvis`). Returns (pose with global orientation R R_g, trans R p - p + R (trans -
    c / scale)), so that scale * model(new params) = R (scale * model(params) - c).
    """
    pose = tf.convert_to_tensor(pose, tf.float32)
    trans = tf.convert_to_tensor(trans, tf.float32)
    rot = tf.convert_to_tensor(rot_world_to_cam, tf.float32)
    center = tf.convert_to_tensor(optical_center_m, tf.float32)
    scale = tf.convert_to_tensor(scale, tf.float32)
    pelvis = tf.convert_to_tensor(rest_pelvis, tf.float32)
    global_rot = tf.linalg.matmul(rot, rotvec_to_matrix(pose[..., :3]))
    new_pose = tf.concat([matrix_to_rotvec(global_rot), pose[..., 3:]], axis=-1)
    new_trans = (tf.linalg.matvec(rot, pelvis) - pelvis
                 + tf.linalg.matvec(rot, trans - center / scale[..., None]))
    return new_pose, new_trans


# ----------------------------------------------------------------------------------------
# Several families: per-kind constants for in-graph lookup by kind index
# ----------------------------------------------------------------------------------------

def kind_table(asset_list):
    """Per-kind constants (index = kinds.KINDS order) from a list of ParamAssets.

    available bool [9] (the kind has assets), family_slot int32 [9] (index into asset_list,
    -1 without assets), pose_size int32 [9] (3 J of the kind's family), rest_pelvis [9, 3],
    rest_pelvis_shapedirs [9, 3, 128], rest_pelvis_exprdirs [9, 3, 10], rest_pelvis_kiddir
    [9, 3] (zeros for kinds without assets).
    """
    n = len(kinds.KINDS)
    available = np.zeros(n, bool)
    slot = np.full(n, -1, np.int32)
    pose_size = np.array([3 * kinds.NUM_JOINTS[kinds.family_of(k)] for k in kinds.KINDS],
                         np.int32)
    rest = np.zeros((n, 3), np.float32)
    shapedirs = np.zeros((n, 3, kinds.SHAPE_SIZE), np.float32)
    exprdirs = np.zeros((n, 3, kinds.EXPRESSION_SIZE), np.float32)
    kiddir = np.zeros((n, 3), np.float32)
    for s, assets in enumerate(asset_list):
        for kind, (p, sd, ed, kd) in assets.pelvis.items():
            i = kinds.kind_index(kind)
            available[i], slot[i] = True, s
            rest[i], shapedirs[i], exprdirs[i], kiddir[i] = p, sd, ed, kd
    return dict(kinds=tf.constant(list(kinds.KINDS)), available=tf.constant(available),
                family_slot=tf.constant(slot), pose_size=tf.constant(pose_size),
                rest_pelvis=tf.constant(rest), rest_pelvis_shapedirs=tf.constant(shapedirs),
                rest_pelvis_exprdirs=tf.constant(exprdirs), rest_pelvis_kiddir=tf.constant(kiddir))


def kind_index_of(table, body_model):
    """Index in kinds.KINDS of a body_model string tensor, -1 if unknown."""
    match = tf.equal(table['kinds'], body_model)
    return tf.where(tf.reduce_any(match),
                    tf.argmax(tf.cast(match, tf.int32), output_type=tf.int32), -1)
