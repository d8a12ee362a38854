import numpy as np
import pytest
import tensorflow as tf

from nlf_tf import config, losses

K = np.array([[500, 0, 128], [0, 500, 128], [0, 0, 1]], np.float32)


def cfg(**kw):
    return config.default_config(**kw)


def sub3d(true, pred, uncert, valid=None, root_index=-1):
    true = np.asarray(true, np.float32)
    b, p = true.shape[:2]
    inps = dict(coords3d_true=tf.constant(true),
                point_validity=tf.constant(np.ones((b, p), bool) if valid is None else valid),
                root_index=tf.constant(np.broadcast_to(root_index, (b,)).astype(np.int32)),
                intrinsics=tf.constant(np.repeat(K[None], b, 0)))
    preds = dict(coords3d_abs=tf.constant(np.asarray(pred, np.float32)),
                 uncert=tf.constant(np.broadcast_to(np.float32(uncert), (b, p)).copy()))
    return inps, preds


def test_my_norm_values_case26():
    x = tf.constant([[0.03, 0.04, 0.0]])
    u = tf.constant([0.1])
    np.testing.assert_allclose(losses.my_norm(x, u).numpy(), [-0.369952], atol=1e-6)
    np.testing.assert_allclose(
        losses.my_norm(x, u, fix_uncert_factor=True).numpy(), [-0.104072], atol=1e-6)
    np.testing.assert_allclose(losses.my_norm(x, u * 4).numpy(), [-0.605957], atol=1e-6)


@pytest.mark.parametrize('fix', [False, True])
def test_my_norm_uncertainty_gradient_vanishes_at_optimum(fix):
    x = tf.constant([[0.03, 0.04, 0.0]])
    norm = 0.05
    u_star = norm if fix else norm / 3
    for u_value, sign in ((u_star, 0), (u_star * 1.5, 1), (u_star / 1.5, -1)):
        u = tf.Variable([u_value])
        with tf.GradientTape() as tape:
            loss = losses.my_norm(x, u, fix_uncert_factor=fix)
        grad = tape.gradient(loss, u).numpy()[0]
        if sign == 0:
            assert abs(grad) < 1e-5
        else:
            assert np.sign(grad) == sign


def test_my_norm_beta_nll_case27():
    x = tf.constant([[0.3, 0.4]])
    u = tf.Variable([0.2])
    plain = (0.5 / (np.sqrt(2) * 0.2) + np.sqrt(2) * np.log(0.2))
    np.testing.assert_allclose(losses.my_norm(x, u, beta_nll=0).numpy(), [plain], rtol=1e-6)
    np.testing.assert_allclose(losses.my_norm(x, u, beta_nll=1).numpy(), [plain * 0.2], rtol=1e-6)
    with tf.GradientTape() as tape:
        loss = losses.my_norm(x, u, beta_nll=1)
    grad = tape.gradient(loss, u).numpy()[0]
    # Only the inner term is differentiated, scaled by the stopped factor u.
    inner_grad = -0.5 / (np.sqrt(2) * 0.2 ** 2) + np.sqrt(2) / 0.2
    np.testing.assert_allclose(grad, 0.2 * inner_grad, rtol=1e-5)


def test_my_norm_without_nll_and_without_uncertainty():
    x = tf.constant([[3.0, 4.0]])
    np.testing.assert_allclose(
        losses.my_norm(x, tf.constant([7.0]), nll_loss=False).numpy(), [5 / np.sqrt(2)], rtol=1e-6)
    np.testing.assert_allclose(
        losses.my_norm(x, None).numpy(), [np.sqrt(12.5 + 0.02 ** 2) - 0.02], rtol=1e-6)
    np.testing.assert_allclose(
        losses.my_norm(x, tf.constant([7.0]), nll_loss=False, charb_eps=0.02).numpy(),
        [np.sqrt(12.5 + 0.02 ** 2) - 0.02], rtol=1e-6)


def test_absolute_loss_mask_case24_and_depth_scaling_case25():
    c = cfg(nll_loss=False)
    # One point at exactly 0.3 m (excluded), one just beyond (included).
    true = [[[0, 0, 0.3], [0, 0, 0.3001]]]
    pred = [[[0, 0, 5.3], [0, 0, 0.3001 + 0.6]]]
    inps, preds = sub3d(true, pred, 1.0)
    parts, _ = losses.compute_loss_with_3d_gt(inps, preds, c, adjusted_step=0)
    np.testing.assert_allclose(parts.loss3d_abs.numpy(), 0.6 / np.sqrt(3), rtol=1e-4)

    for z, expected in ((10.0, 0.5), (4.0, 1.0)):
        inps, preds = sub3d([[[0, 0, z]]], [[[0, 0, z + 1]]], 1.0)
        parts, _ = losses.compute_loss_with_3d_gt(inps, preds, c, adjusted_step=0)
        np.testing.assert_allclose(parts.loss3d_abs.numpy(), expected / np.sqrt(3), rtol=1e-5)
    # x/y errors are not scaled, even far away.
    inps, preds = sub3d([[[0, 0, 10.0]]], [[[1, 0, 10.0]]], 1.0)
    parts, _ = losses.compute_loss_with_3d_gt(inps, preds, c, adjusted_step=0)
    np.testing.assert_allclose(parts.loss3d_abs.numpy(), 1 / np.sqrt(3), rtol=1e-5)


def test_absolute_loss_uses_four_times_the_uncertainty():
    c = cfg()
    inps, preds = sub3d([[[0, 0, 4.0]]], [[[0.03, 0.04, 4.0]]], 0.1)
    parts, _ = losses.compute_loss_with_3d_gt(inps, preds, c, adjusted_step=0)
    np.testing.assert_allclose(parts.loss3d_abs.numpy(), -0.605957, atol=1e-6)


def test_stop_grad_before_step_case28():
    x = tf.Variable(2.0)
    for step, expect_grad in ((4999, 0.0), (5000, 1.0)):
        with tf.GradientTape() as tape:
            y = losses.stop_grad_before_step(x * 1.0, 5000, tf.constant(step))
        np.testing.assert_allclose(y.numpy(), 2.0)
        grad = tape.gradient(y, x)
        assert (0.0 if grad is None else grad.numpy()) == expect_grad
    nan = tf.constant(np.nan)
    assert losses.stop_grad_before_step(nan, 5000, tf.constant(10)).numpy() == 0
    assert np.isnan(losses.stop_grad_before_step(nan, 5000, tf.constant(5000)).numpy())
    # Works in a graph with a tensor step.
    fn = tf.function(lambda s: losses.stop_grad_before_step(tf.constant(np.inf), 5, s))
    assert fn(tf.constant(1)).numpy() == 0


def test_total_includes_abs_loss_value_but_no_gradient_before_start():
    c = cfg()
    true = np.array([[[0.1, 0.2, 4.0], [0.3, -0.2, 4.2], [-0.2, 0.1, 3.9]]], np.float32)
    pred_var = tf.Variable(true + 0.05)
    for step in (4999, 5000):
        with tf.GradientTape(persistent=True) as tape:
            inps, _ = sub3d(true, true, 0.1)
            preds = dict(coords3d_abs=pred_var, uncert=tf.fill([1, 3], 0.1))
            parts, total = losses.compute_loss_with_3d_gt(inps, preds, c, tf.constant(step))
            rest = parts.loss3d + parts.loss2d
        np.testing.assert_allclose(
            total.numpy(), (rest + 0.1 * parts.loss3d_abs).numpy(), rtol=1e-6)
        g_total = tape.gradient(total, pred_var).numpy()
        g_rest = tape.gradient(rest, pred_var).numpy()
        if step == 4999:
            np.testing.assert_allclose(g_total, g_rest, atol=1e-7)
        else:
            assert np.abs(g_total - g_rest).max() > 1e-4


def test_root_vs_mean_relative_case29():
    c = cfg()
    rng = np.random.default_rng(0)
    true = rng.normal(size=(1, 5, 3)).astype(np.float32) + [0, 0, 4]
    pred = true + rng.normal(scale=0.05, size=true.shape).astype(np.float32)
    inps, preds = sub3d(true, pred, 0.1, root_index=-1)
    base, _ = losses.compute_loss_with_3d_gt(inps, preds, c, 0)
    inps2, preds2 = sub3d(true, pred + np.float32([0.3, -0.2, 0.5]), 0.1, root_index=-1)
    shifted, _ = losses.compute_loss_with_3d_gt(inps2, preds2, c, 0)
    np.testing.assert_allclose(base.loss3d.numpy(), shifted.loss3d.numpy(), rtol=1e-5)

    # With a root, the root point's own relative error is 0: only sqrt(d)·ln(u)·u remains.
    valid = np.zeros((1, 5), bool)
    valid[0, 2] = True
    inps, preds = sub3d(true, pred, 0.1, valid=valid, root_index=2)
    parts, _ = losses.compute_loss_with_3d_gt(inps, preds, c, 0)
    np.testing.assert_allclose(parts.loss3d.numpy(), np.sqrt(3) * np.log(0.1) * 0.1, rtol=1e-5)


def test_relative_loss_is_one_mean_over_all_valid_points_case30():
    c = cfg(nll_loss=False)
    rng = np.random.default_rng(1)
    true = rng.normal(size=(2, 4, 3)).astype(np.float32) + [0, 0, 4]
    pred = true + rng.normal(scale=0.1, size=true.shape).astype(np.float32)
    valid = np.array([[True, False, False, False], [True, True, True, False]])
    root = np.array([-1, 1], np.int32)
    inps, preds = sub3d(true, pred, 1.0, valid=valid, root_index=root)
    parts, _ = losses.compute_loss_with_3d_gt(inps, preds, c, 0)
    diff = (true - pred).astype(np.float64)
    per_point = []
    for b in range(2):
        if root[b] == -1:
            rel = diff[b] - diff[b][valid[b]].mean(0)
        else:
            rel = diff[b] - diff[b, root[b]]
        per_point += list(np.linalg.norm(rel[valid[b]], axis=-1) / np.sqrt(3))
    np.testing.assert_allclose(parts.loss3d.numpy(), np.mean(per_point), rtol=1e-5)
    # The spec's example: per-point losses {4} and {0, 0, 0} average to 1, not 2.
    from nlf_tf import geometry
    x = tf.constant([[4.0, 0, 0], [0, 0, 0]])
    m = tf.constant([[True, False, False], [True, True, True]])
    assert geometry.reduce_mean_masked(x, m).numpy() == 1.0


def test_2d_loss_scale_case31():
    c = cfg(nll_loss=False)
    inps = dict(coords2d_true=tf.constant([[[384.0, 128.0]]]),
                point_validity=tf.constant([[True]]), intrinsics=tf.constant(K[None]))
    preds = dict(coords3d_abs=tf.constant([[[0.0, 0.0, 4.0]]]), uncert=tf.constant([[1.0]]))
    loss = losses.compute_loss_with_2d_gt(inps, preds, c)
    np.testing.assert_allclose(loss.numpy(), 2.2 / np.sqrt(2), rtol=1e-6)
    # Scales with box_size_m / proc_side, not with a hard-coded 2.2 / 256.
    loss = losses.compute_loss_with_2d_gt(inps, preds, cfg(nll_loss=False, box_size_m=4.4))
    np.testing.assert_allclose(loss.numpy(), 4.4 / np.sqrt(2), rtol=1e-6)


def test_2d_gt_loss_does_not_check_predicted_depth_case32():
    c = cfg(nll_loss=False)
    behind = [[[0.0, 0.0, -1e-7]]]  # projects near the principal point / 1000 → inside ±FOV
    inps2d = dict(coords2d_true=tf.constant([[[10.0, 0.0]]]),
                  point_validity=tf.constant([[True]]), intrinsics=tf.constant(K[None]))
    preds = dict(coords3d_abs=tf.constant(behind), uncert=tf.constant([[1.0]]))
    assert losses.compute_loss_with_2d_gt(inps2d, preds, c).numpy() > 0
    inps3d, preds3d = sub3d([[[0.0, 0.0, 4.0]]], behind, 1.0)
    parts, _ = losses.compute_loss_with_3d_gt(inps3d, preds3d, c, 0)
    assert parts.loss2d.numpy() == 0


def test_2d_loss_of_3d_gt_in_pixels():
    c = cfg(nll_loss=False)
    # A 0.1 m x error at 5 m is 10 px at f=500.
    inps, preds = sub3d([[[0.0, 0.0, 5.0]]], [[[0.1, 0.0, 5.0]]], 1.0)
    parts, _ = losses.compute_loss_with_3d_gt(inps, preds, c, 0)
    np.testing.assert_allclose(parts.loss2d.numpy(), 10 * 2.2 / 256 / np.sqrt(2), rtol=1e-5)


def test_all_invalid_gives_zero_not_nan():
    c = cfg()
    inps, preds = sub3d([[[0.0, 0.0, 5.0]]], [[[0.1, 0.0, 5.0]]], 0.1,
                        valid=np.zeros((1, 1), bool))
    parts, total = losses.compute_loss_with_3d_gt(inps, preds, c, 0)
    assert total.numpy() == 0 and parts.loss3d.numpy() == 0


def _batch(rng, b=2, p=6):
    def part3d():
        true = rng.normal(size=(b, p, 3)).astype(np.float32) * 0.3 + [0, 0, 4]
        inps, preds = sub3d(true, true + rng.normal(scale=0.05, size=true.shape), 0.2)
        return inps, preds

    def part2d():
        inps = dict(coords2d_true=tf.constant(rng.uniform(0, 256, (b, p, 2)).astype(np.float32)),
                    point_validity=tf.constant(np.ones((b, p), bool)),
                    intrinsics=tf.constant(np.repeat(K[None], b, 0)))
        preds = dict(coords3d_abs=tf.constant(
            (rng.normal(size=(b, p, 3)) * 0.3 + [0, 0, 4]).astype(np.float32)),
            uncert=tf.fill([b, p], 0.2))
        return inps, preds

    parts = dict(param=part3d(), kp3d=part3d(), dense=part2d(), kp2d=part2d())
    return {k: v[0] for k, v in parts.items()}, {k: v[1] for k, v in parts.items()}


def test_aggregation_case33():
    c = cfg()
    inps, preds = _batch(np.random.default_rng(3))
    out = losses.compute_losses(inps, preds, c, adjusted_step=0)
    expected = (1.0 * out.loss_parambatch + 0.75 * out.loss_kpbatch
                + 0.05 * out.loss_densebatch + 0.1 * out.loss_2dbatch)
    np.testing.assert_allclose(out.loss.numpy(), expected.numpy(), rtol=1e-6)
    assert set(out) == {
        'loss_parambatch', 'loss_abs_param', 'loss_rel_param', 'loss_px_param', 'loss_kpbatch',
        'loss_abs_kp', 'loss_rel_kp', 'loss_px_kp', 'loss_densebatch', 'loss_2dbatch', 'loss'}
    # Sub-batch totals of 1 each would give 1 + 0.75 + 0.05 + 0.1.
    assert abs(sum([1.0, 0.75, 0.05, 0.1]) - 1.9) < 1e-12
    out2 = losses.compute_losses(inps, preds, cfg(loss_factor_kp=0.0), adjusted_step=0)
    np.testing.assert_allclose(
        out2.loss.numpy(), (expected - 0.75 * out.loss_kpbatch).numpy(), rtol=1e-5)


def test_losses_have_finite_gradients_even_for_exact_predictions():
    c = cfg()
    rng = np.random.default_rng(4)
    inps, preds = _batch(rng)
    inps['kp3d']['coords3d_true'] = preds['kp3d']['coords3d_abs']  # zero residuals
    variables = {k: tf.Variable(v['coords3d_abs']) for k, v in preds.items()}
    with tf.GradientTape() as tape:
        p = {k: dict(coords3d_abs=variables[k], uncert=preds[k]['uncert']) for k in preds}
        loss = losses.compute_losses(inps, p, c, adjusted_step=6000).loss
    for g in tape.gradient(loss, list(variables.values())):
        assert np.all(np.isfinite(g.numpy()))
