import numpy as np
import tensorflow as tf

from nlf_tf import config, metrics

K = np.array([[500, 0, 128], [0, 500, 128], [0, 0, 1]], np.float32)


def part(true, pred, valid=None):
    b, p = true.shape[:2]
    inps = dict(coords3d_true=tf.constant(true, tf.float32),
                point_validity=tf.constant(np.ones((b, p), bool) if valid is None else valid),
                intrinsics=tf.constant(np.repeat(K[None], b, 0)))
    return inps, dict(coords3d_abs=tf.constant(pred, tf.float32))


def test_identical_prediction_case47():
    rng = np.random.default_rng(0)
    true = (rng.normal(size=(2, 8, 3)) * 0.3 + [0, 0, 4]).astype(np.float32)
    m = metrics.compute_metrics_with_3d_gt(*part(true, true), config.default_config())
    for name in ('mean_error', 'mean_error_abs', 'mean_error_px'):
        assert m[name].numpy() == 0, name
    np.testing.assert_allclose(m.mean_error_procrustes.numpy(), 0, atol=1e-3)
    assert m.auc.numpy() == 100 and m.pck.numpy() == 100


def test_translation_only_error_case47():
    rng = np.random.default_rng(1)
    true = (rng.normal(size=(2, 8, 3)) * 0.3 + [0, 0, 4]).astype(np.float32)
    m = metrics.compute_metrics_with_3d_gt(
        *part(true, true + np.float32([0, 0, 0.1])), config.default_config())
    np.testing.assert_allclose(m.mean_error.numpy(), 0, atol=1e-3)
    np.testing.assert_allclose(m.mean_error_abs.numpy(), 100, rtol=1e-4)
    np.testing.assert_allclose(m.mean_error_procrustes.numpy(), 0, atol=1e-2)


def test_values_against_numpy_with_mask():
    rng = np.random.default_rng(2)
    true = (rng.normal(size=(2, 6, 3)) * 0.3 + [0, 0, 4]).astype(np.float32)
    pred = (true + rng.normal(scale=0.08, size=true.shape)).astype(np.float32)
    valid = rng.uniform(size=(2, 6)) > 0.3
    valid[:, :3] = True
    m = metrics.compute_metrics_with_3d_gt(*part(true, pred, valid), config.default_config(),
                                           suffix='_kp')
    d = true.astype(np.float64) - pred
    rel = [d[b] - d[b][valid[b]].mean(0) for b in range(2)]
    dist = np.concatenate([np.linalg.norm(rel[b][valid[b]], axis=-1) for b in range(2)])
    np.testing.assert_allclose(m.mean_error_kp.numpy(), dist.mean() * 1000, rtol=1e-4)
    np.testing.assert_allclose(m.pck_kp.numpy(), (dist <= 0.1).mean() * 100, rtol=1e-5)
    np.testing.assert_allclose(
        m.auc_kp.numpy(), np.maximum(0, 1 - dist / 0.1).mean() * 100, rtol=1e-4)
    absd = np.concatenate([np.linalg.norm(d[b][valid[b]], axis=-1) for b in range(2)])
    np.testing.assert_allclose(m.mean_error_abs_kp.numpy(), absd.mean() * 1000, rtol=1e-4)


def test_pixel_error_scales_with_proc_side_case48():
    # 10 px error at proc_side 512 reports 5.
    c = config.default_config(proc_side=512)
    k = np.array([[500, 0, 256], [0, 500, 256], [0, 0, 1]], np.float32)
    inps = dict(coords2d_true=tf.constant([[[266.0, 256.0]]]), point_validity=tf.constant([[True]]),
                intrinsics=tf.constant(k[None]))
    preds = dict(coords3d_abs=tf.constant([[[0.0, 0.0, 3.0]]]))
    m = metrics.compute_metrics_with_2d_gt(inps, preds, c, '_2d')
    np.testing.assert_allclose(m.mean_error_px_2d.numpy(), 5.0, rtol=1e-6)


def test_compute_metrics_names_train_and_test():
    rng = np.random.default_rng(3)
    true = (rng.normal(size=(1, 4, 3)) * 0.3 + [0, 0, 4]).astype(np.float32)
    p3 = part(true, true + 0.01)
    p2 = (dict(coords2d_true=tf.constant(rng.uniform(0, 256, (1, 4, 2)), tf.float32),
               point_validity=tf.constant(np.ones((1, 4), bool)), intrinsics=tf.constant(K[None])),
          dict(coords3d_abs=tf.constant(true)))
    inps = dict(param=p3[0], kp3d=p3[0], dense=p2[0], kp2d=p2[0])
    preds = dict(param=p3[1], kp3d=p3[1], dense=p2[1], kp2d=p2[1])
    train = metrics.compute_metrics(inps, preds, config.default_config(), training=True)
    assert {'mean_error', 'mean_error_kp', 'mean_error_px_dense', 'mean_error_px_2d',
            'auc', 'pck_kp', 'mean_error_procrustes_kp'} <= set(train)
    test = metrics.compute_metrics(inps, preds, config.default_config(), training=False)
    assert set(test) == {'mean_error', 'mean_error_abs', 'auc', 'pck', 'mean_error_procrustes',
                         'mean_error_px'}
