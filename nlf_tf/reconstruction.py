"""Absolute 3D reconstruction: from per-point 2D image positions and translation-free 3D
offsets to camera-space 3D, by solving for the unknown translation (NLF `reconstruct_absolute`).
"""

import tensorflow as tf

from nlf_tf import geometry


def reconstruct_absolute(
        coords2d, coords3d_rel, intrinsics, mix_3d_inside_fov=None, weak_perspective=False,
        point_validity_mask=None, border_factor1=0.75, border_factor2=None,
        mix_based_on_3d=True, proc_side=256, stride=32, centered_stride=True,
        fullpersp_l2_regul=1e-4, min_depth=0.001):
    """Camera-space 3D points [B,N,3] from 2D predictions [B,N,2] (pixels) and relative 3D
    predictions [B,N,3] (metres, unknown translation), with intrinsics [B,3,3].

    The translation is solved from the points predicted inside the FOV (`border_factor1`, in
    strides) that are also in `point_validity_mask`. Each output point is then either the
    back-projection of its 2D prediction at the depth of its 3D estimate (blended with the
    translated 3D estimate by `mix_3d_inside_fov`) if that lands inside the FOV
    (`border_factor2`) in front of the camera, or else the translated 3D estimate.
    """
    coords2d = tf.convert_to_tensor(coords2d)
    coords3d_rel = tf.convert_to_tensor(coords3d_rel)
    fov_kwargs = dict(proc_side=proc_side, stride=stride, centered_stride=centered_stride)
    coords2d_normalized = geometry.unproject(coords2d, intrinsics)
    if border_factor2 is None:
        border_factor2 = border_factor1

    in_fov1 = geometry.is_within_fov(coords2d, border_factor1, **fov_kwargs)
    if point_validity_mask is not None:
        in_fov1 = tf.logical_and(in_fov1, point_validity_mask)

    if weak_perspective:
        ref = solve_translation_weak_perspective(coords2d_normalized, coords3d_rel, in_fov1)
    else:
        ref = solve_translation_full_perspective(
            coords2d_normalized, coords3d_rel, in_fov1, l2_regul=fullpersp_l2_regul)

    coords_abs_3d_based = coords3d_rel + tf.expand_dims(ref, 1)
    coords_abs_2d_based = geometry.back_project(
        coords2d_normalized, coords3d_rel[..., 2], ref[:, 2])

    if mix_3d_inside_fov is not None:
        mix = tf.cast(mix_3d_inside_fov, coords3d_rel.dtype)
        coords_abs_2d_based = mix * coords_abs_3d_based + (1 - mix) * coords_abs_2d_based

    coords_for_decision = coords_abs_3d_based if mix_based_on_3d else coords_abs_2d_based
    proj_for_decision = geometry.project_pose(coords_for_decision, intrinsics, min_depth=min_depth)
    in_fov2 = tf.logical_and(
        geometry.is_within_fov(proj_for_decision, border_factor2, **fov_kwargs),
        coords_abs_3d_based[..., 2] > 0.001)
    return tf.where(in_fov2[..., tf.newaxis], coords_abs_2d_based, coords_abs_3d_based)


def solve_translation_weak_perspective(normalized_2d, coords3d_rel, validity_mask):
    """Translation [B,3] placing the valid 3D centroid on the ray of the 2D centroid, at the
    depth where the 2D spread (RMS distance from the centroid) matches the 3D xy spread.

    Exact for fronto-parallel planar point sets. No valid point gives (0, 0, 1).
    """
    mean3d, stdev3d = geometry.mean_stdev_masked(
        coords3d_rel[..., :2], validity_mask, items_axis=1, dimensions_axis=2)
    mean2d, stdev2d = geometry.mean_stdev_masked(
        normalized_2d[..., :2], validity_mask, items_axis=1, dimensions_axis=2)
    del mean3d
    stdev2d = tf.maximum(stdev2d, 1e-5)
    stdev3d = tf.maximum(stdev3d, 1e-5)
    old_mean = geometry.reduce_mean_masked(coords3d_rel, validity_mask, axis=1, keepdims=True)
    new_mean_z = tf.math.divide_no_nan(stdev3d, stdev2d)
    new_mean = geometry.to_homogeneous(mean2d) * new_mean_z
    return tf.squeeze(new_mean - old_mean, 1)


def solve_translation_full_perspective(normalized_2d, coords3d_rel, validity_mask,
                                       l2_regul=1e-4):
    """Translation [B,3] by ridge least squares on the pinhole equations
    t_x − n_x·t_z = n_x·q_z − q_x (and the same for y), one pair of rows per point.

    Both sides are RMS-normalised over the valid points first; invalid points keep a weight of
    1e-4 instead of being removed (so the system stays well-posed with few valid points), valid
    ones get 1 + 1e-4 exactly as in the original.
    """
    n_batch = tf.shape(normalized_2d)[0]
    n_points = tf.shape(normalized_2d)[1]

    def rms_normalize_and_reshape(x):
        scale = tf.sqrt(geometry.reduce_mean_masked(
            tf.square(x), validity_mask, axis=(1, 2), keepdims=True) + 1e-10)
        return scale, tf.reshape(x / scale, [-1, n_points * 2, 1])

    eyes = tf.tile(tf.eye(2, dtype=normalized_2d.dtype)[tf.newaxis], [n_batch, n_points, 1])
    scale2d, reshaped2d = rms_normalize_and_reshape(normalized_2d)
    a = tf.concat([eyes, -reshaped2d], axis=2)  # [B, 2N, 3]

    rel_backproj = normalized_2d * coords3d_rel[:, :, 2:] - coords3d_rel[:, :, :2]
    scale_rel_backproj, b = rms_normalize_and_reshape(rel_backproj)  # b: [B, 2N, 1]

    weights = tf.cast(validity_mask, normalized_2d.dtype) + 1e-4
    weights = tf.repeat(weights, 2, axis=1)[..., tf.newaxis]
    ref = _ridge_lstsq(a * weights, b * weights, l2_regul)  # [B, 3, 1]
    ref = tf.concat([ref[:, :2], ref[:, 2:] / scale2d], axis=1) * scale_rel_backproj
    return tf.squeeze(ref, axis=-1)


def _ridge_lstsq(matrix, rhs, l2_regularizer):
    """Solves (AᵀA + λI) x = Aᵀb by Cholesky, the same computation as
    tf.linalg.lstsq(fast=True), written with ops that XLA can compile."""
    gramian = tf.matmul(matrix, matrix, transpose_a=True) + l2_regularizer * tf.eye(
        3, dtype=matrix.dtype)
    chol = tf.linalg.cholesky(gramian)
    return tf.linalg.cholesky_solve(chol, tf.matmul(matrix, rhs, transpose_a=True))
