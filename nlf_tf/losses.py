"""NLF's training losses: the uncertainty-weighted norm `my_norm`, the losses of examples with
3D ground truth (param, kp3d) and with 2D ground truth (dense, kp2d), and their aggregation.

Functions take the run's config (`nlf_tf.config.default_config()`-like EasyDict) and the
adjusted training step explicitly; nothing reads global flags.
"""

import easydict
import numpy as np
import tensorflow as tf

from nlf_tf import geometry


def fov_kwargs(cfg, training=True):
    return dict(
        proc_side=cfg.proc_side, stride=cfg.stride_train if training else cfg.stride_test,
        centered_stride=cfg.centered_stride)


def near_fov_border(cfg):
    # The 2D losses accept points far outside the crop (20 strides at 256 px): predictions that
    # lie outside still get pulled toward the image; the FOV masks of reconstruction drop them.
    return -20 * (cfg.proc_side / 256)


def my_norm(x, uncert=None, nll_loss=True, beta_nll=1.0, charb_eps=0.0, fix_uncert_factor=False):
    """Per-point loss of residual vectors x [..., d] with predicted uncertainty u [...].

    NLL form: (charbonnier(x/u) + f·ln u)·sg(u)^beta_nll with f = sqrt(d) (1/sqrt(d) with
    fix_uncert_factor). It is minimised at u = ‖x‖/d (or ‖x‖), which is why inference scales u.
    """
    x = tf.convert_to_tensor(x)
    if uncert is None:
        return geometry.charbonnier(x, epsilon=2e-2, axis=-1)
    if not nll_loss:
        return geometry.charbonnier(x, epsilon=charb_eps, axis=-1)
    dim = tf.cast(tf.shape(x)[-1], tf.float32)
    factor = tf.math.rsqrt(dim) if fix_uncert_factor else tf.math.sqrt(dim)
    # beta-NLL: weighting by the (gradient-stopped) uncertainty keeps the high-uncertainty points
    # from being ignored by the NLL's 1/u factor.
    beta_factor = tf.stop_gradient(uncert) ** beta_nll if beta_nll else 1
    return (geometry.charbonnier(
        x / tf.expand_dims(uncert, -1), epsilon=charb_eps, axis=-1)
            + factor * tf.math.log(uncert)) * beta_factor


def _my_norm_cfg(cfg):
    return dict(nll_loss=cfg.nll_loss, beta_nll=cfg.beta_nll, charb_eps=cfg.charb_eps,
                fix_uncert_factor=cfg.fix_uncert_factor)


def stop_grad_before_step(x, step, current_step):
    """`x` itself from `current_step >= step` on; before that its value without gradient, or 0 if
    it is not finite. Graph conditionals, so the unused branch's gradient is never formed."""
    x = tf.convert_to_tensor(x)

    def before():
        return tf.cond(tf.reduce_all(tf.math.is_finite(x)),
                       lambda: tf.stop_gradient(x), lambda: tf.zeros_like(x))

    return tf.cond(tf.convert_to_tensor(current_step) >= step, lambda: tf.identity(x), before)


def compute_loss_with_3d_gt(inps, preds, cfg, adjusted_step):
    """Losses of a sub-batch with 3D ground truth.

    inps: coords3d_true [b,P,3], point_validity [b,P] (or None: all valid), root_index [b] or
      scalar (-1: mean-relative), intrinsics [b,3,3].
    preds: coords3d_abs [b,P,3], uncert [b,P].
    Returns (EasyDict(loss3d, loss3d_abs, loss2d), total).
    """
    coords3d_true = inps['coords3d_true']
    pred = preds['coords3d_abs']
    uncert = preds['uncert']
    point_validity = inps.get('point_validity')
    if point_validity is None:
        point_validity = tf.ones_like(pred[..., 0], dtype=tf.bool)
    norm_kwargs = _my_norm_cfg(cfg)
    losses = easydict.EasyDict()
    diff = coords3d_true - pred

    # Centre-relative: root-relative where the example has a root joint, else mean-relative.
    meanrel_diff = geometry.center_relative_pose(
        diff, joint_validity_mask=point_validity, center_is_mean=True)
    root_index = tf.cast(inps['root_index'], tf.int32)
    if root_index.shape.rank == 0:
        root_index = tf.fill(tf.shape(diff)[:1], root_index)
    sanitized_root_index = tf.where(root_index == -1, tf.zeros_like(root_index), root_index)
    root_diff = tf.gather(diff, sanitized_root_index, axis=1, batch_dims=1)[:, tf.newaxis]
    rootrel_diff = diff - root_diff
    center_relative_diff = tf.where(
        root_index[:, tf.newaxis, tf.newaxis] == -1, meanrel_diff, rootrel_diff)
    losses.loss3d = geometry.reduce_mean_masked(
        my_norm(center_relative_diff, uncert, **norm_kwargs), point_validity)

    # Absolute (camera frame): depth errors grow with distance, so scale them to what they would
    # be 5 m away; points closer than 30 cm are numerically unreliable and left out.
    absdiff = tf.abs(diff)
    scale_factor_for_far = tf.minimum(np.float32(1), 5 / tf.abs(coords3d_true[..., 2:]))
    absdiff_scaled = tf.concat([absdiff[..., :2], absdiff[..., 2:] * scale_factor_for_far], axis=-1)
    is_valid_and_far_enough = tf.logical_and(point_validity, coords3d_true[..., 2] > 0.3)
    # One uncertainty is predicted; the absolute one is approximated as 4 times it.
    losses.loss3d_abs = geometry.reduce_mean_masked(
        my_norm(absdiff_scaled, uncert * 4.0, **norm_kwargs), is_valid_and_far_enough)

    # 2D reprojection, scaled so that the crop side corresponds to the heatmap's metric box.
    coords2d_pred = geometry.project_pose(pred, inps['intrinsics'], min_depth=cfg.min_depth)
    coords2d_true = geometry.project_pose(
        coords3d_true, inps['intrinsics'], min_depth=cfg.min_depth)
    scale_2d = 1 / cfg.proc_side * cfg.box_size_m
    border = near_fov_border(cfg)
    is_in_fov_pred = tf.logical_and(
        geometry.is_within_fov(coords2d_pred, border, **fov_kwargs(cfg)), pred[..., 2] > 0.001)
    is_near_fov_true = tf.logical_and(
        geometry.is_within_fov(coords2d_true, border, **fov_kwargs(cfg)),
        coords3d_true[..., 2] > 0.001)
    losses.loss2d = geometry.reduce_mean_masked(
        my_norm((coords2d_true - coords2d_pred) * scale_2d, uncert, **norm_kwargs),
        tf.logical_and(is_valid_and_far_enough, tf.logical_and(is_in_fov_pred, is_near_fov_true)))

    total = tf.add_n([
        losses.loss3d, losses.loss2d,
        cfg.absloss_factor * stop_grad_before_step(
            losses.loss3d_abs, cfg.absloss_start_step, adjusted_step)])
    return losses, total


def compute_loss_with_2d_gt(inps, preds, cfg):
    """Loss of a sub-batch with 2D ground truth (coords2d_true [b,P,2] px, point_validity).

    Unlike the 3D-GT 2D loss, the predicted depth is not checked here.
    """
    scale_2d = 1 / cfg.proc_side * cfg.box_size_m
    coords2d_pred = geometry.project_pose(
        preds['coords3d_abs'], inps['intrinsics'], min_depth=cfg.min_depth)
    border = near_fov_border(cfg)
    is_in_fov_pred = geometry.is_within_fov(coords2d_pred, border, **fov_kwargs(cfg))
    is_near_fov_true = geometry.is_within_fov(inps['coords2d_true'], border, **fov_kwargs(cfg))
    return geometry.reduce_mean_masked(
        my_norm((inps['coords2d_true'] - coords2d_pred) * scale_2d, preds['uncert'],
                **_my_norm_cfg(cfg)),
        tf.logical_and(tf.logical_and(is_in_fov_pred, is_near_fov_true), inps['point_validity']))


def compute_losses(inps, preds, cfg, adjusted_step):
    """All loss components of a four-category batch and their weighted sum `loss`.

    inps/preds: dicts with 'param', 'kp3d', 'dense', 'kp2d' entries.
    """
    losses = easydict.EasyDict()
    parts, losses.loss_parambatch = compute_loss_with_3d_gt(
        inps['param'], preds['param'], cfg, adjusted_step)
    losses.loss_abs_param = parts.loss3d_abs
    losses.loss_rel_param = parts.loss3d
    losses.loss_px_param = parts.loss2d

    parts, losses.loss_kpbatch = compute_loss_with_3d_gt(
        inps['kp3d'], preds['kp3d'], cfg, adjusted_step)
    losses.loss_abs_kp = parts.loss3d_abs
    losses.loss_rel_kp = parts.loss3d
    losses.loss_px_kp = parts.loss2d

    losses.loss_densebatch = compute_loss_with_2d_gt(inps['dense'], preds['dense'], cfg)
    losses.loss_2dbatch = compute_loss_with_2d_gt(inps['kp2d'], preds['kp2d'], cfg)
    losses.loss = tf.add_n([
        cfg.loss_factor_param * losses.loss_parambatch,
        cfg.loss_factor_kp * losses.loss_kpbatch,
        cfg.loss_factor_dense * losses.loss_densebatch,
        cfg.loss_factor_2d * losses.loss_2dbatch])
    return losses
