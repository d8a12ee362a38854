"""Ground-truth points of the parametric (`param`) sub-batch, computed from body models.

A param example carries body-model parameters in the crop-camera frame (`body_model` kind
index, `pose`, `shape`, `expression`, `trans`, `kid_factor`, `scale`) and, per sampled point,
sparse interpolation weights over the columns [vertices; joints] of its body model, stored as
padded rows (ELLPACK: `interp_columns` int32 [P, K], `interp_weights` float32 [P, K], padding
entries have weight 0). As in NLF's `prepare_inputs`, the batch is grouped by body-model kind
in the fixed order of `kinds.KINDS`, each group is forwarded through its body model, the
posed [vertices; joints] are scaled by `scale` and interpolated, and the original batch order
is restored. No gradient flows into the ground truth.

The grouped path gathers each kind's examples (dynamic shapes); under XLA (`static_shapes`)
every loaded body model is run on the whole sub-batch instead and the rows of the example's
own kind are selected, which gives the same numbers at (number of kinds)x the body-model cost.
"""

import tensorflow as tf

from nlf_tf.body_models import kinds

PARAM_KEYS = ('body_model', 'pose', 'shape', 'expression', 'trans', 'kid_factor', 'scale',
              'interp_columns', 'interp_weights')


def has_body_model_params(part):
    """True if a param sub-batch dict carries body-model parameters (not ready-made GT)."""
    return 'body_model' in part


def interpolate(points, columns, weights):
    """[n, P, 3] = sum_k weights[n, p, k] * points[n, columns[n, p, k]] (a sparse matmul with
    one [P, V+J] matrix per example, in padded-row form)."""
    gathered = tf.gather(points, columns, batch_dims=1)  # [n, P, K, 3]
    return tf.reduce_sum(gathered * weights[..., tf.newaxis], axis=2)


def _group_points(body_model, part, index=None):
    def take(name):
        value = tf.cast(part[name], tf.float32)
        return value if index is None else tf.gather(value, index)

    out = body_model(pose=take('pose'), shape=take('shape'), expression=take('expression'),
                     kid_factor=take('kid_factor'), trans=take('trans'))
    points = tf.concat([out['vertices'], out['joints']], axis=1)
    points = points * take('scale')[:, tf.newaxis, tf.newaxis]
    columns = tf.cast(part['interp_columns'], tf.int32)
    if index is not None:
        columns = tf.gather(columns, index)
    return interpolate(points, columns, take('interp_weights'))


def parametric_ground_truth(part, body_models, static_shapes=False):
    """(coords3d_true [b, P, 3], has_model [b] bool) of a param sub-batch.

    body_models: {kind name: callable(pose=, shape=, expression=, kid_factor=, trans=) ->
      {'vertices': [n, V, 3], 'joints': [n, J, 3]}} (e.g. `nlf_tf.body_models.tf_model.BodyModel`).
    Examples whose kind has no body model (e.g. the -1 of placeholders) get zeros and
    has_model False.
    """
    kind = tf.cast(part['body_model'], tf.int32)
    columns = part['interp_columns']
    batch = tf.shape(kind)[0]
    num_points = tf.shape(columns)[1]
    loaded = [(i, name) for i, name in enumerate(kinds.KINDS) if name in body_models]
    unknown = set(body_models) - set(kinds.KINDS)
    if unknown:
        raise ValueError(f'unknown body-model kinds {sorted(unknown)}; known: {kinds.KINDS}')
    result = tf.zeros([batch, num_points, 3], tf.float32)
    has_model = tf.zeros([batch], tf.bool)
    if not loaded:
        return result, has_model
    if static_shapes:
        for i, name in loaded:
            selected = tf.equal(kind, i)
            result = tf.where(selected[:, tf.newaxis, tf.newaxis],
                              _group_points(body_models[name], part), result)
            has_model = tf.logical_or(has_model, selected)
    else:
        indices, groups = [], []
        for i, name in loaded:
            index = tf.cast(tf.reshape(tf.where(tf.equal(kind, i)), [-1]), tf.int32)
            indices.append(index)
            groups.append(_group_points(body_models[name], part, index))
        # The concatenated groups are the batch permuted by kind; scattering each row back to
        # its index applies the inverse permutation (rows of unloaded kinds stay zero).
        index = tf.concat(indices, axis=0)
        result = tf.scatter_nd(index[:, tf.newaxis], tf.concat(groups, axis=0),
                               [batch, num_points, 3])
        has_model = tf.scatter_nd(index[:, tf.newaxis], tf.ones_like(index), [batch]) > 0
    return tf.stop_gradient(result), has_model
