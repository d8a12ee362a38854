"""Geometry and numeric helpers of NLF: masked reductions, projection, field-of-view tests,
centring, Procrustes alignment, norms, AUC/PCK, soft-argmax and ragged densification.

Everything here is a pure TensorFlow function whose settings are explicit arguments; the
argument names follow the original NLF code. Units: metres in 3D, pixels of the square
training crop in 2D; camera x right, y down, z forward.
"""

import tensorflow as tf


# ----------------------------------------------------------------------------------------
# Masked reductions
# ----------------------------------------------------------------------------------------

def _expand_mask(is_valid, rank):
    """Appends trailing singleton axes so that a [B, N] mask broadcasts to a rank-`rank` x."""
    is_valid = tf.convert_to_tensor(is_valid)
    for _ in range(rank - is_valid.shape.rank):
        is_valid = is_valid[..., tf.newaxis]
    return is_valid


def nan_to_num(x, num=0):
    return tf.where(tf.math.is_nan(x), tf.cast(num, x.dtype), x)


def reduce_mean_masked(input_tensor, is_valid=None, axis=None, keepdims=False):
    """Mean over the entries selected by `is_valid`, whose shape is a prefix of the input's.

    With `axis=None` the result is the plain mean of all selected sub-tensors, and a NaN
    result (in particular: nothing selected) becomes 0. With an axis, the count comes from the
    mask expanded with singleton axes, so coordinate axes absent from the mask are *not*
    counted: for x [B,N,2], m [B,N], axis=(1,2) this is the mean over points of the per-point
    coordinate sum. 0/0 gives 0 there.
    """
    input_tensor = tf.convert_to_tensor(input_tensor)
    if is_valid is None:
        return nan_to_num(tf.reduce_mean(input_tensor, axis=axis, keepdims=keepdims))

    is_valid = tf.convert_to_tensor(is_valid)
    if axis is None and not keepdims:
        # Equivalent to the mean of tf.boolean_mask(x, m), but with static shapes (XLA-ready).
        is_valid_exp = _expand_mask(is_valid, input_tensor.shape.rank)
        is_valid_b = tf.broadcast_to(is_valid_exp, tf.shape(input_tensor))
        selected_sum = tf.reduce_sum(tf.where(is_valid_b, input_tensor, tf.zeros_like(input_tensor)))
        n_selected = tf.reduce_sum(tf.cast(is_valid_b, input_tensor.dtype))
        return nan_to_num(tf.math.divide_no_nan(selected_sum, n_selected))

    is_valid = _expand_mask(is_valid, input_tensor.shape.rank)
    # Multiplication (not tf.where) as in the original: a NaN at an invalid entry propagates.
    replaced = tf.cast(is_valid, input_tensor.dtype) * input_tensor
    sum_valid = tf.reduce_sum(replaced, axis=axis, keepdims=keepdims)
    n_valid = tf.reduce_sum(
        tf.cast(tf.broadcast_to(is_valid, tf.shape(is_valid)), input_tensor.dtype),
        axis=axis, keepdims=keepdims)
    return tf.math.divide_no_nan(sum_valid, n_valid)


def reduce_sum_masked(input_tensor, is_valid, axis=None, keepdims=False):
    """Sum of `m·x` with the mask broadcast over trailing axes."""
    input_tensor = tf.convert_to_tensor(input_tensor)
    is_valid = _expand_mask(is_valid, input_tensor.shape.rank)
    if axis is None and not keepdims:
        is_valid = tf.broadcast_to(is_valid, tf.shape(input_tensor))
        return tf.reduce_sum(tf.where(is_valid, input_tensor, tf.zeros_like(input_tensor)))
    replaced = tf.cast(is_valid, input_tensor.dtype) * input_tensor
    return tf.reduce_sum(replaced, axis=axis, keepdims=keepdims)


def mean_stdev_masked(input_tensor, is_valid, items_axis=1, dimensions_axis=2, fixed_ref=None):
    """Masked per-coordinate mean and the RMS distance of the valid items from it.

    The "stdev" sums the squared deviations over the coordinate axis and divides by the number
    of valid items only (not items × coordinates); it is sqrt(... + 1e-10), so 1e-5 when
    nothing is valid.
    """
    input_tensor = tf.convert_to_tensor(input_tensor)
    if fixed_ref is not None:
        mean = fixed_ref
    else:
        mean = reduce_mean_masked(input_tensor, is_valid, axis=items_axis, keepdims=True)
    centered = input_tensor - mean
    is_valid = _expand_mask(is_valid, input_tensor.shape.rank)
    n_valid = tf.reduce_sum(tf.cast(is_valid, input_tensor.dtype), axis=items_axis, keepdims=True)
    sum_of_squared_deviations = reduce_sum_masked(
        tf.square(centered), is_valid, axis=[items_axis, dimensions_axis], keepdims=True)
    stdev = tf.sqrt(tf.math.divide_no_nan(sum_of_squared_deviations, n_valid) + 1e-10)
    return mean, stdev


# ----------------------------------------------------------------------------------------
# Projection
# ----------------------------------------------------------------------------------------

def to_homogeneous(x):
    return tf.concat([x, tf.ones_like(x[..., :1])], axis=-1)


def unproject(coords2d, intrinsics):
    """Normalised image coordinates (K⁻¹·[u, v, 1])[:2] of pixel coordinates [..., N, 2]."""
    inv_intrinsics = tf.linalg.inv(tf.cast(intrinsics, coords2d.dtype))
    return tf.matmul(to_homogeneous(coords2d), inv_intrinsics, transpose_b=True)[..., :2]


def back_project(camcoords2d, delta_z, z_offset):
    """The points on the rays of normalised coordinates [B,N,2] at depths delta_z + z_offset."""
    return to_homogeneous(camcoords2d) * tf.expand_dims(
        delta_z + tf.expand_dims(z_offset, -1), -1)


def project(points):
    """Plain pinhole division by z, in normalised coordinates (no clamp)."""
    return points[..., :2] / points[..., 2:3]


def project_pose(coords3d, intrinsic_matrix, min_depth=0.001):
    """Projects [..., N, 3] camera points to pixels with K [..., 3, 3].

    The whole point is divided by max(z, min_depth), not just the depth clamped: for
    z < min_depth the principal-point term shrinks with z/min_depth (and flips sign for z < 0).
    Masks and losses depend on this exact behaviour. The initial NLF upload used 0.001; the later
    revision uses 0.1.
    """
    coords3d = tf.convert_to_tensor(coords3d)
    projected = coords3d / tf.maximum(tf.cast(min_depth, coords3d.dtype), coords3d[..., 2:])
    return tf.matmul(
        projected, tf.cast(intrinsic_matrix, coords3d.dtype)[..., :2, :], transpose_b=True)


def is_within_fov(imcoords, border_factor=0.75, proc_side=256, stride=32, centered_stride=True):
    """Whether both pixel coordinates lie in [lower, upper] (inclusive).

    The border is measured in backbone strides; negative factors accept points beyond the crop.
    Without centred stride the feature cells sit half a stride earlier, hence the offset.
    """
    offset = 0 if centered_stride else -stride / 2
    lower = tf.cast(stride * border_factor + offset, imcoords.dtype)
    upper = tf.cast(proc_side - stride * border_factor + offset, imcoords.dtype)
    return tf.reduce_all(tf.logical_and(imcoords >= lower, imcoords <= upper), axis=-1)


# ----------------------------------------------------------------------------------------
# Centring and alignment
# ----------------------------------------------------------------------------------------

def center_relative_pose(coords3d, joint_validity_mask=None, center_is_mean=False,
                         center_joints=None):
    """Subtracts a per-example centre from all points (valid or not).

    With `center_is_mean` the centre is the masked mean (over `center_joints` if given, 0 if no
    point is valid); otherwise it is the last point of each example.
    """
    coords3d = tf.convert_to_tensor(coords3d)
    if center_is_mean:
        if joint_validity_mask is None:
            center = tf.reduce_mean(coords3d, axis=1, keepdims=True)
        elif center_joints is not None:
            center = reduce_mean_masked(
                tf.gather(coords3d, center_joints, axis=1),
                tf.gather(joint_validity_mask, center_joints, axis=1), axis=1, keepdims=True)
        else:
            center = reduce_mean_masked(coords3d, joint_validity_mask, axis=1, keepdims=True)
    else:
        center = coords3d[:, -1:]
    return coords3d - center


def rigid_align(coords_pred, coords_true, joint_validity_mask=None, scale_align=False,
                reflection_align=False):
    """Aligns each example of `coords_pred` to `coords_true` by rotation, translation and
    optionally uniform scale (Procrustes), estimated on the valid points and applied to all.

    Reflections are removed (unless allowed) by flipping along the least significant singular
    direction. Degenerate examples (zero spread) give NaN/Inf as in the original.
    """
    coords_pred = tf.convert_to_tensor(coords_pred)
    coords_true = tf.convert_to_tensor(coords_true)
    if joint_validity_mask is None:
        joint_validity_mask = tf.ones_like(coords_pred[..., 0], dtype=tf.bool)
    mask = joint_validity_mask[..., tf.newaxis]
    zero = tf.constant(0, coords_true.dtype)
    n_valid = tf.math.count_nonzero(mask, axis=1, dtype=coords_true.dtype, keepdims=True)
    correction = tf.cast(tf.shape(mask)[1], coords_true.dtype) / n_valid

    def normalize(z):
        z = tf.where(mask, z, zero)
        mean = tf.reduce_mean(z, axis=1, keepdims=True) * correction
        centered = tf.where(mask, z - mean, zero)
        norm = tf.norm(centered, axis=(1, 2), ord='fro', keepdims=True)
        return mean, norm, centered / norm

    mean_x, norm_x, normalized_x = normalize(coords_true)
    mean_y, norm_y, normalized_y = normalize(coords_pred)
    a = tf.matmul(normalized_y, normalized_x, transpose_a=True)
    s, u, v = tf.linalg.svd(a)
    t = tf.matmul(u, v, transpose_b=True)
    s = s[..., tf.newaxis]

    if scale_align:
        relative_scale = norm_x / norm_y
        output_scale = relative_scale * tf.reduce_sum(s, axis=1, keepdims=True)
    else:
        relative_scale = None
        output_scale = tf.constant(1, coords_true.dtype)

    if not reflection_align:
        has_reflection = (_det3x3(t) < 0)[..., tf.newaxis, tf.newaxis]
        t_mirror = t - 2 * tf.matmul(u[..., -1:], v[..., -1:], transpose_b=True)
        t = tf.where(has_reflection, t_mirror, t)
        if scale_align:
            output_scale = tf.where(
                has_reflection, output_scale - 2 * relative_scale * s[:, -1:], output_scale)

    return tf.matmul(coords_pred - mean_y, t) * output_scale + mean_x


def _det3x3(m):
    # Cofactor expansion instead of tf.linalg.det, which XLA cannot compile.
    if m.shape[-1] != 3:
        return tf.linalg.det(m)
    return (m[..., 0, 0] * (m[..., 1, 1] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 1])
            - m[..., 0, 1] * (m[..., 1, 0] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 0])
            + m[..., 0, 2] * (m[..., 1, 0] * m[..., 2, 1] - m[..., 1, 1] * m[..., 2, 0]))


# ----------------------------------------------------------------------------------------
# Norms, AUC, PCK
# ----------------------------------------------------------------------------------------

@tf.custom_gradient
def _euclidean_norm_keepdims(x):
    norm = tf.sqrt(tf.reduce_sum(tf.square(x), axis=-1, keepdims=True))

    def grad(upstream):
        # d‖x‖/dx = x/‖x‖ is undefined at 0; divide_no_nan makes it exactly 0 there.
        return upstream * tf.math.divide_no_nan(x, norm)

    return norm, grad


def euclidean_norm(x, keepdims=False):
    """‖x‖₂ over the last axis with a gradient that is 0 (not NaN) at x = 0."""
    result = _euclidean_norm_keepdims(tf.convert_to_tensor(x))
    return result if keepdims else tf.squeeze(result, axis=-1)


def charbonnier(x, epsilon=1e-3, axis=-1, keepdims=False):
    """ε = 0: ‖x‖/sqrt(d) (safe gradient); else sqrt(mean_k x_k² + ε²) − ε."""
    x = tf.convert_to_tensor(x)
    if epsilon == 0:
        if axis != -1:
            raise ValueError('charbonnier with epsilon=0 supports only axis=-1')
        return euclidean_norm(x, keepdims) / tf.sqrt(tf.cast(tf.shape(x)[-1], x.dtype))
    return tf.sqrt(
        tf.reduce_mean(tf.square(x), axis=axis, keepdims=keepdims)
        + tf.square(tf.cast(epsilon, x.dtype))) - tf.cast(epsilon, x.dtype)


def auc(x, t1, t2):
    """Area under the PCK curve for thresholds uniform in [t1, t2], per distance x."""
    t1 = tf.cast(t1, x.dtype)
    t2 = tf.cast(t2, x.dtype)
    return tf.nn.relu(tf.cast(1, x.dtype) - tf.nn.relu(x - t1) / (t2 - t1))


def pck(x, t):
    """Whether distance x is within threshold t (inclusive), as float 0/1."""
    return tf.cast(x <= t, tf.float32)


# ----------------------------------------------------------------------------------------
# Softmax and heatmap decoding
# ----------------------------------------------------------------------------------------

def softmax(target, axis=-1):
    """Softmax jointly over all of `axis` (an int or a list of ints)."""
    max_along_axis = tf.reduce_max(target, axis, keepdims=True)
    exponentiated = tf.exp(target - max_along_axis)
    return exponentiated / tf.reduce_sum(exponentiated, axis, keepdims=True)


def decode_heatmap(inp, axis=-1):
    """Expected position along each of `axis` (in that order) of a normalised heatmap, as
    coordinates in [0, 1] (first cell 0, last cell 1), stacked on a new last axis."""
    if not isinstance(axis, (tuple, list)):
        axis = [axis]
    rank = inp.shape.rank
    heatmap_axes = [ax if ax >= 0 else rank + ax for ax in axis]
    result = []
    for ax in heatmap_axes:
        others = [o for o in heatmap_axes if o != ax]
        marginal = tf.reduce_sum(inp, axis=others, keepdims=True) if others else inp
        coords = tf.cast(tf.linspace(0.0, 1.0, tf.shape(inp)[ax]), inp.dtype)
        decoded = tf.tensordot(marginal, coords, axes=[[ax], [0]])
        result.append(tf.squeeze(tf.expand_dims(decoded, ax), heatmap_axes))
    return tf.stack(result, axis=-1)


def soft_argmax(inp, axis):
    return decode_heatmap(softmax(inp, axis=axis), axis=axis)


# ----------------------------------------------------------------------------------------
# Ragged → dense, ramps
# ----------------------------------------------------------------------------------------

def to_mask_tensor(ragged, length=None):
    """Boolean [B, length] mask: entry j of row b is valid iff j < row_length(b)."""
    row_lengths = ragged.row_lengths()
    max_length = tf.reduce_max(row_lengths) if length is None else length
    return tf.range(max_length, dtype=row_lengths.dtype)[tf.newaxis] < row_lengths[:, tf.newaxis]


def ragged_to_dense(ragged, length, default_value=0):
    """Pads (or truncates) a ragged [B, None, ...] tensor to exactly `length` rows per example.

    Returns the dense tensor and its boolean validity mask [B, length].
    """
    dense_shape = [None, length] + [None] * (ragged.shape.rank - 2)
    dense = ragged.to_tensor(default_value=default_value, shape=dense_shape)
    return dense, to_mask_tensor(ragged, length)


def ramp(x, start, length):
    """0 before `start`, linear up to 1 over `length`, 1 afterwards (graph-safe)."""
    x = tf.cast(x, tf.float32)
    return tf.clip_by_value((x - start) / length, 0.0, 1.0)
