"""Training metrics of NLF: errors in mm, PCK/AUC at 10 cm, Procrustes error, pixel error."""

import easydict
import numpy as np
import tensorflow as tf

from nlf_tf import geometry


def compute_metrics_with_3d_gt(inps, preds, cfg, suffix=''):
    metrics = easydict.EasyDict()
    valid = inps['point_validity']
    diff = inps['coords3d_true'] - preds['coords3d_abs']
    metrics['mean_error_abs' + suffix] = geometry.reduce_mean_masked(
        tf.norm(diff, axis=-1), valid) * 1000

    # The relative error is always mean-centred (never root-relative), unlike the loss.
    dist = tf.norm(tf.abs(geometry.center_relative_pose(
        diff, joint_validity_mask=valid, center_is_mean=True)), axis=-1)
    metrics['mean_error' + suffix] = geometry.reduce_mean_masked(dist, valid) * 1000

    threshold = np.float32(0.1)
    metrics['auc' + suffix] = geometry.reduce_mean_masked(
        geometry.auc(dist, 0, threshold), valid) * 100
    metrics['pck' + suffix] = geometry.reduce_mean_masked(
        geometry.pck(dist, threshold), valid) * 100

    aligned = geometry.rigid_align(
        preds['coords3d_abs'], inps['coords3d_true'], joint_validity_mask=valid,
        scale_align=True)
    metrics['mean_error_procrustes' + suffix] = geometry.reduce_mean_masked(
        tf.norm(aligned - inps['coords3d_true'], axis=-1), valid) * 1000

    coords2d_pred = geometry.project_pose(
        preds['coords3d_abs'], inps['intrinsics'], min_depth=cfg.min_depth)
    coords2d_true = geometry.project_pose(
        inps['coords3d_true'], inps['intrinsics'], min_depth=cfg.min_depth)
    metrics['mean_error_px' + suffix] = geometry.reduce_mean_masked(
        tf.norm((coords2d_true - coords2d_pred) * (256 / cfg.proc_side), axis=-1), valid)
    return metrics


def compute_metrics_with_2d_gt(inps, preds, cfg, suffix=''):
    coords2d_pred = geometry.project_pose(
        preds['coords3d_abs'], inps['intrinsics'], min_depth=cfg.min_depth)
    return easydict.EasyDict({'mean_error_px' + suffix: geometry.reduce_mean_masked(
        tf.norm((inps['coords2d_true'] - coords2d_pred) * (256 / cfg.proc_side), axis=-1),
        inps['point_validity'])})


def compute_metrics(inps, preds, cfg, training=True):
    """Metrics of a four-category batch; at test time only the param ones (no suffix)."""
    metrics = easydict.EasyDict(compute_metrics_with_3d_gt(inps['param'], preds['param'], cfg))
    if not training:
        return metrics
    metrics.update(compute_metrics_with_3d_gt(inps['kp3d'], preds['kp3d'], cfg, '_kp'))
    metrics.update(compute_metrics_with_2d_gt(inps['dense'], preds['dense'], cfg, '_dense'))
    metrics.update(compute_metrics_with_2d_gt(inps['kp2d'], preds['kp2d'], cfg, '_2d'))
    return metrics
