"""SMPL / SMPL+H / SMPL-X forward pass as a Keras layer (float32, batched, differentiable).

`BodyModel` computes the same function as the NumPy reference `numpy_model.forward` (see there
for the formulas) on a batch of bodies in TensorFlow, so the trainer can turn parametric ground
truth (pose, shape, expression, kid factor, translation) into vertices and joints on the
accelerator. Differences from the reference, all for speed:
- the rest joints are regressed from precomputed regressed blend shapes
  (J_regressor·v_template, J_regressor·shapedirs, ...), which is the same linear map;
- the kinematic chain is evaluated one tree depth at a time (all joints of a depth at once).

The model arrays are constants of the layer (not weights): they are not trained and not saved
in checkpoints; `get_config` stores where they came from (body_model_dir, family, gender).
The layer computes in float32 whatever the global dtype policy.
"""

import keras
import numpy as np
import tensorflow as tf

from nlf_tf.body_models import files, kinds


def rotvec_to_matrix(rotvecs):
    """Rotation matrices [..., 3, 3] of axis-angle vectors [..., 3] (Rodrigues' formula).

    Written with the unnormalised cross-product matrix K of r: R = I + a K + b K², where
    a = sin θ / θ and b = (1 − cos θ) / θ² = 2 sin²(θ/2) / θ² (no cancellation in float32).
    Near θ = 0 their Taylor series are used, so value and gradient are exact at zero rotation.
    """
    rotvecs = tf.convert_to_tensor(rotvecs)
    sq_angle = tf.reduce_sum(tf.square(rotvecs), axis=-1)[..., tf.newaxis, tf.newaxis]
    small = sq_angle < 1e-6
    # Keep the non-Taylor branch away from 0 / 0 so its gradient is finite everywhere.
    safe_sq = tf.where(small, tf.ones_like(sq_angle), sq_angle)
    angle = tf.sqrt(safe_sq)
    a = tf.where(small, 1 - sq_angle / 6, tf.sin(angle) / angle)
    half_sin = tf.sin(angle / 2)
    b = tf.where(small, 0.5 - sq_angle / 24, 2 * tf.square(half_sin) / safe_sq)
    x, y, z = tf.unstack(rotvecs, axis=-1)
    zero = tf.zeros_like(x)
    k = tf.reshape(tf.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1),
                   tf.concat([tf.shape(rotvecs)[:-1], [3, 3]], axis=0))
    eye = tf.eye(3, dtype=rotvecs.dtype)
    return eye + a * k + b * tf.matmul(k, k)


class BodyModel(keras.layers.Layer):
    """Posed vertices and joints of one SMPL-family model (one family and gender).

    Args:
        body_model_dir: folder with the official model files (see `files`).
        family: 'smpl' | 'smplh' | 'smplx'.
        gender: 'female' | 'male' | 'neutral' (or 'f' | 'm' | 'n').
        num_betas: at most this many shape coefficients are used (also capped by the model's).

    Call: `layer(pose, shape=None, expression=None, kid_factor=None, trans=None)` with
        pose [N, >=3J] axis-angle per joint (flat-hand-mean convention; columns beyond 3J,
        e.g. the padding of a 165-wide pose, are ignored), shape [N, k] (zero-padded /
        truncated to the used shape components), expression [N, k] (SMPL-X; likewise),
        kid_factor [N] (ignored if the model has no kid template), trans [N, 3];
        returns {'vertices': [N, V, 3], 'joints': [N, J, 3]} float32.
    """

    def __init__(self, body_model_dir, family, gender, num_betas=kinds.SHAPE_SIZE, **kwargs):
        kwargs.setdefault('dtype', 'float32')
        kwargs.setdefault('trainable', False)
        super().__init__(**kwargs)
        self.body_model_dir = str(body_model_dir)
        self.family = family
        self.gender = gender
        self.num_betas = int(num_betas)
        if self.num_betas < 0:
            raise ValueError(f'num_betas must be >= 0, got {num_betas}')
        model = files.load_body_model(self.body_model_dir, family, gender)
        self.kind = model['kind']
        self.num_joints = model['num_joints']
        self.num_vertices = model['num_vertices']
        self.num_shape = min(self.num_betas, model['shapedirs'].shape[2])
        self.num_expression = model['exprdirs'].shape[2]
        self.has_kid_template = model['kid_shapedir'] is not None
        self.faces = np.array(model['faces'])
        self.parents = np.array(model['parents'])
        self._depth_levels = _depth_levels(self.parents)
        self._make_constants(model)
        self.built = True

    @classmethod
    def from_dir(cls, body_model_dir, family, gender, num_betas=kinds.SHAPE_SIZE, **kwargs):
        return cls(body_model_dir, family, gender, num_betas=num_betas, **kwargs)

    def _make_constants(self, model):
        n_verts, n_joints = self.num_vertices, self.num_joints
        j_reg = model['J_regressor']
        shapedirs = model['shapedirs'][:, :, :self.num_shape]
        exprdirs = model['exprdirs']
        kid = (model['kid_shapedir'] if self.has_kid_template
               else np.zeros([n_verts, 3]))

        def const(x):
            return tf.constant(np.asarray(x, np.float32))

        # Created eagerly so that tf.functions capture them by reference instead of embedding
        # the (up to ~60 MB) arrays into every traced graph.
        with tf.init_scope():
            self._v_template = const(model['v_template'])
            # [k, V * 3]: coefficient rows times flattened vertex offsets.
            self._shapedirs = const(np.transpose(shapedirs, (2, 0, 1)).reshape(-1, n_verts * 3))
            self._exprdirs = const(np.transpose(exprdirs, (2, 0, 1)).reshape(-1, n_verts * 3))
            self._kiddir = const(kid)
            self._posedirs = const(np.transpose(model['posedirs'], (2, 0, 1)).reshape(
                -1, n_verts * 3))
            self._joint_template = const(j_reg @ model['v_template'])
            self._joint_shapedirs = const(np.einsum('jv,vcs->sjc', j_reg, shapedirs).reshape(
                -1, n_joints * 3))
            self._joint_exprdirs = const(np.einsum('jv,vce->ejc', j_reg, exprdirs).reshape(
                -1, n_joints * 3))
            self._joint_kiddir = const(j_reg @ kid)
            self._weights = const(model['weights'])

    def call(self, pose, shape=None, expression=None, kid_factor=None, trans=None):
        n_joints, n_verts = self.num_joints, self.num_vertices
        pose = tf.cast(pose, tf.float32)
        num = tf.shape(pose)[0]
        pose = tf.reshape(pose[:, :3 * n_joints], [-1, n_joints, 3])

        v_shaped = tf.broadcast_to(self._v_template, [num, n_verts, 3])
        rest_joints = tf.broadcast_to(self._joint_template, [num, n_joints, 3])
        for coeffs, size, dirs, joint_dirs in (
                (shape, self.num_shape, self._shapedirs, self._joint_shapedirs),
                (expression, self.num_expression, self._exprdirs, self._joint_exprdirs)):
            if coeffs is None or size == 0:
                continue
            coeffs = _fit_columns(tf.cast(coeffs, tf.float32), size)
            v_shaped = v_shaped + tf.reshape(tf.matmul(coeffs, dirs), [-1, n_verts, 3])
            rest_joints = rest_joints + tf.reshape(tf.matmul(coeffs, joint_dirs),
                                                   [-1, n_joints, 3])
        if kid_factor is not None and self.has_kid_template:
            kid = tf.reshape(tf.cast(kid_factor, tf.float32), [-1, 1, 1])
            v_shaped = v_shaped + kid * self._kiddir
            rest_joints = rest_joints + kid * self._joint_kiddir

        rotations = rotvec_to_matrix(pose)  # [N, J, 3, 3]
        # Pose blend shapes are driven by (R - I) of the non-root joints, flattened row-major.
        pose_feature = tf.reshape(rotations[:, 1:] - tf.eye(3), [-1, 9 * (n_joints - 1)])
        v_posed = v_shaped + tf.reshape(tf.matmul(pose_feature, self._posedirs),
                                        [-1, n_verts, 3])

        global_rot, global_pos = self._kinematic_chain(rotations, rest_joints)

        # Vertex v follows x -> sum_j w_vj (G_j x + (pos_j - G_j J_rest_j)).
        offsets = global_pos - tf.einsum('njab,njb->nja', global_rot, rest_joints)
        transforms = tf.concat([tf.reshape(global_rot, [-1, n_joints, 9]), offsets], axis=-1)
        vert_transforms = tf.einsum('vj,njk->nvk', self._weights, transforms)
        vert_rot = tf.reshape(vert_transforms[..., :9], [-1, n_verts, 3, 3])
        vertices = (tf.einsum('nvab,nvb->nva', vert_rot, v_posed) + vert_transforms[..., 9:])
        joints = global_pos
        if trans is not None:
            trans = tf.reshape(tf.cast(trans, tf.float32), [-1, 1, 3])
            vertices = vertices + trans
            joints = joints + trans
        return dict(vertices=vertices, joints=joints)

    def _kinematic_chain(self, rotations, rest_joints):
        """Global rotations [N, J, 3, 3] and positions [N, J, 3], one tree depth at a time."""
        parents = self.parents
        rot_by_joint = [None] * self.num_joints
        pos_by_joint = [None] * self.num_joints
        root = self._depth_levels[0][0]
        rot_by_joint[root] = rotations[:, root]
        pos_by_joint[root] = rest_joints[:, root]
        for level in self._depth_levels[1:]:
            level_parents = parents[level]
            parent_rot = tf.stack([rot_by_joint[p] for p in level_parents], axis=1)
            parent_pos = tf.stack([pos_by_joint[p] for p in level_parents], axis=1)
            local_rot = tf.gather(rotations, level, axis=1)
            bone = tf.gather(rest_joints, level, axis=1) - tf.gather(rest_joints, level_parents,
                                                                     axis=1)
            rot = tf.matmul(parent_rot, local_rot)
            pos = parent_pos + tf.einsum('nkab,nkb->nka', parent_rot, bone)
            for i, j in enumerate(level):
                rot_by_joint[j] = rot[:, i]
                pos_by_joint[j] = pos[:, i]
        return tf.stack(rot_by_joint, axis=1), tf.stack(pos_by_joint, axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(body_model_dir=self.body_model_dir, family=self.family,
                      gender=self.gender, num_betas=self.num_betas)
        return config


def _fit_columns(values, size):
    """[N, size]: columns beyond `size` dropped, missing ones zero-filled (static or dynamic)."""
    values = values[:, :size]
    have = values.shape[1]
    if have is not None:
        if have == size:
            return values
        return tf.pad(values, [[0, 0], [0, size - have]])
    padded = tf.pad(values, [[0, 0], [0, size - tf.shape(values)[1]]])
    return tf.ensure_shape(padded, [None, size])


def _depth_levels(parents):
    """Joint ids grouped by depth in the tree (root first); parents precede children."""
    depth = np.zeros(len(parents), np.int64)
    for j, p in enumerate(parents):
        depth[j] = 0 if p < 0 else depth[p] + 1
    return [np.flatnonzero(depth == d) for d in range(depth.max() + 1)]
