"""Tests of nlf_tf.geometry against hand-computed values (spec §2, §9 cases 1-10, 35, 45) and
against small float64 NumPy re-derivations of the spec formulas (never the code under test)."""

import numpy as np
import pytest
import tensorflow as tf

from nlf_tf import geometry

K_DEFAULT = np.array([[500, 0, 128], [0, 500, 128], [0, 0, 1]], np.float64)


def f32(x):
    return tf.constant(np.asarray(x, np.float32))


def np_project_pose(points, intrinsics, min_depth):
    """Spec §2.2: divide the whole point by max(z, min_depth), then apply the first two rows
    of K."""
    points = np.asarray(points, np.float64)
    scaled = points / np.maximum(points[..., 2:], min_depth)
    return np.einsum('...nk,...jk->...nj', scaled, np.asarray(intrinsics, np.float64)[..., :2, :])


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def np_rigid_align(pred, true, mask, scale_align, reflection_align=False):
    """Spec §2.5 in float64, example by example. Also returns (scale, sigma, r) for checks."""
    outputs, infos = [], []
    for y, x, m in zip(np.asarray(pred, np.float64), np.asarray(true, np.float64), mask):
        mean_x = x[m].mean(axis=0)
        mean_y = y[m].mean(axis=0)
        xc = np.where(m[:, None], x - mean_x, 0)
        yc = np.where(m[:, None], y - mean_y, 0)
        norm_x = np.linalg.norm(xc)
        norm_y = np.linalg.norm(yc)
        a = (yc / norm_y).T @ (xc / norm_x)
        u, sigma, vt = np.linalg.svd(a)
        t = u @ vt
        r = norm_x / norm_y
        scale = r * sigma.sum() if scale_align else 1.0
        if not reflection_align and np.linalg.det(t) < 0:
            t = t - 2 * np.outer(u[:, 2], vt[2, :])
            if scale_align:
                scale = scale - 2 * r * sigma[2]
        outputs.append((y - mean_y) @ t * scale + mean_x)
        infos.append((scale, sigma, r, t))
    return np.stack(outputs), infos


# ---------------------------------------------------------------------------------------
# Masked reductions (§2.1, cases 6-8)
# ---------------------------------------------------------------------------------------

def test_reduce_mean_masked_case6_axis_none():
    x = f32([1, 2, 3, 100])
    assert geometry.reduce_mean_masked(x, tf.constant([True, True, True, False])).numpy() == 2.0


def test_reduce_mean_masked_all_false_gives_zero_not_nan():
    x = f32([1, 2, 3, 100])
    result = geometry.reduce_mean_masked(x, tf.constant([False] * 4)).numpy()
    assert result == 0.0 and not np.isnan(result)


def test_reduce_mean_masked_axis_none_nan_to_zero():
    # A NaN among the selected entries makes the mean NaN, which becomes 0.
    x = f32([1, np.nan, 3])
    assert geometry.reduce_mean_masked(x, tf.constant([True, True, False])).numpy() == 0.0
    # A NaN among the unselected entries is dropped entirely (boolean-mask semantics).
    assert geometry.reduce_mean_masked(x, tf.constant([True, False, True])).numpy() == 2.0
    # Without a mask: plain mean, NaN -> 0.
    assert geometry.reduce_mean_masked(x).numpy() == 0.0
    assert geometry.reduce_mean_masked(f32([1, 2, 6])).numpy() == 3.0


def test_reduce_mean_masked_axis_none_prefix_mask_selects_subtensors():
    # mask [B, N] on x [B, N, 2]: the mean is over all 2·N_valid numbers.
    x = f32([[[1, 2], [3, 4], [50, 60]]])
    m = tf.constant([[True, True, False]])
    assert geometry.reduce_mean_masked(x, m).numpy() == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert geometry.reduce_sum_masked(x, m).numpy() == pytest.approx(10.0)


def test_reduce_mean_masked_axis_none_keepdims_counts_points_only():
    # With keepdims the original takes the axis path: the count is over the expanded mask
    # [B, N, 1], so it is the number of valid points, not of valid numbers.
    x = f32([[[1, 2], [3, 4], [50, 60]]])
    m = tf.constant([[True, True, False]])
    result = geometry.reduce_mean_masked(x, m, axis=None, keepdims=True).numpy()
    assert result.shape == (1, 1, 1)
    np.testing.assert_allclose(result, [[[10 / 2]]], rtol=1e-7)


def test_reduce_mean_masked_case7_count_subtlety():
    # Points (1,1), (3,3) valid, (7, 9) invalid: Σ_valid(x0²+x1²)/N_valid = (2 + 18)/2 = 10,
    # so the RMS scale of the full-perspective solver is sqrt(10) (divide by 2 points, not 4).
    x = f32([[[1, 1], [3, 3], [7, 9]]])
    m = tf.constant([[True, True, False]])
    result = geometry.reduce_mean_masked(tf.square(x), m, axis=(1, 2), keepdims=True)
    assert result.shape == (1, 1, 1)
    assert result.numpy()[0, 0, 0] == pytest.approx(10.0)
    assert np.sqrt(result.numpy()[0, 0, 0] + 1e-10) == pytest.approx(np.sqrt(10), rel=1e-6)
    # Without keepdims: shape [B].
    result = geometry.reduce_mean_masked(tf.square(x), m, axis=(1, 2))
    assert result.shape == (1,)
    assert result.numpy()[0] == pytest.approx(10.0)


def test_reduce_mean_masked_axis1_keepdims_and_empty_example():
    x = f32([[[1, 2], [3, 6], [100, 100]], [[5, 5], [6, 6], [7, 7]]])
    m = tf.constant([[True, True, False], [False, False, False]])
    result = geometry.reduce_mean_masked(x, m, axis=1, keepdims=True).numpy()
    assert result.shape == (2, 1, 2)
    np.testing.assert_allclose(result, [[[2, 4]], [[0, 0]]], rtol=1e-7)
    result = geometry.reduce_mean_masked(x, m, axis=1).numpy()
    assert result.shape == (2, 2)
    np.testing.assert_allclose(result, [[2, 4], [0, 0]], rtol=1e-7)


def test_reduce_mean_masked_axis_path_multiplies_mask():
    # The axis path multiplies by the mask (as the original), so a NaN at an *invalid* entry
    # propagates into that example's mean.
    x = f32([[[1.0], [np.nan]], [[2.0], [4.0]]])
    m = tf.constant([[True, False], [True, True]])
    result = geometry.reduce_mean_masked(x, m, axis=1).numpy()
    assert np.isnan(result[0, 0])
    assert result[1, 0] == pytest.approx(3.0)


def test_reduce_sum_masked():
    x = f32([[[1, 2], [3, 4], [50, 60]], [[1, 1], [2, 2], [3, 3]]])
    m = tf.constant([[True, True, False], [False, True, True]])
    # axis None: boolean-mask semantics, a NaN at an unselected entry is dropped.
    x_nan = f32([1, np.nan, 3])
    assert geometry.reduce_sum_masked(x_nan, tf.constant([True, False, True])).numpy() == 4.0
    assert geometry.reduce_sum_masked(x, m).numpy() == pytest.approx(1 + 2 + 3 + 4 + 2 + 2 + 3 + 3)
    np.testing.assert_allclose(
        geometry.reduce_sum_masked(x, m, axis=1).numpy(), [[4, 6], [5, 5]], rtol=1e-7)
    result = geometry.reduce_sum_masked(x, m, axis=[1, 2], keepdims=True).numpy()
    assert result.shape == (2, 1, 1)
    np.testing.assert_allclose(result[:, 0, 0], [10, 10], rtol=1e-7)


def test_mean_stdev_masked_case8():
    x = f32([[[0, 0], [2, 0], [100, 100]]])
    m = tf.constant([[True, True, False]])
    mean, stdev = geometry.mean_stdev_masked(x, m, items_axis=1, dimensions_axis=2)
    assert mean.shape == (1, 1, 2) and stdev.shape == (1, 1, 1)
    np.testing.assert_allclose(mean.numpy(), [[[1, 0]]], atol=1e-7)
    # sqrt(((−1)² + 1²)/2 + 1e-10) = 1.0
    assert stdev.numpy()[0, 0, 0] == pytest.approx(1.0, rel=1e-6)


def test_mean_stdev_masked_rms_distance_and_floor():
    # Example 0: (0,0), (3,4): mean (1.5, 2); each squared distance is 6.25 -> stdev 2.5
    # (sum over coordinates, divide by the 2 points only).
    # Example 1: nothing valid -> mean 0, stdev sqrt(1e-10) = 1e-5.
    x = f32([[[0, 0], [3, 4], [9, 9]], [[1, 2], [3, 4], [5, 6]]])
    m = tf.constant([[True, True, False], [False, False, False]])
    mean, stdev = geometry.mean_stdev_masked(x, m)
    np.testing.assert_allclose(mean.numpy(), [[[1.5, 2]], [[0, 0]]], atol=1e-7)
    np.testing.assert_allclose(stdev.numpy()[:, 0, 0], [2.5, 1e-5], rtol=1e-5)
    # fixed_ref replaces the mean: distances from (0,0) are 0 and 5 -> sqrt(25/2)
    mean, stdev = geometry.mean_stdev_masked(x, m, fixed_ref=f32(np.zeros((2, 1, 2))))
    np.testing.assert_allclose(stdev.numpy()[0, 0, 0], np.sqrt(12.5), rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Projection (§2.2, cases 1-3)
# ---------------------------------------------------------------------------------------

def test_project_pose_case1():
    for min_depth in (0.001, 0.1):
        result = geometry.project_pose(f32([[1, 2, 4]]), f32(K_DEFAULT), min_depth=min_depth)
        np.testing.assert_allclose(result.numpy(), [[253, 378]], rtol=1e-7)
    np.testing.assert_allclose(
        geometry.project_pose(f32([[1, 2, 4]]), f32(K_DEFAULT)).numpy(), [[253, 378]], rtol=1e-7)


def test_project_pose_case2_depth_clamp():
    point = f32([[0.01, 0, 0.05]])
    # Default (initial upload): clamp at 0.001 does not apply, ordinary projection.
    np.testing.assert_allclose(
        geometry.project_pose(point, f32(K_DEFAULT)).numpy(), [[228, 128]], rtol=1e-6)
    np.testing.assert_allclose(
        geometry.project_pose(point, f32(K_DEFAULT), min_depth=0.001).numpy(), [[228, 128]],
        rtol=1e-6)
    # Later revision: divide by 0.1 -> (0.1, 0, 0.5) -> u = 50 + 0.5·128, v = 0.5·128.
    np.testing.assert_allclose(
        geometry.project_pose(point, f32(K_DEFAULT), min_depth=0.1).numpy(), [[114, 64]],
        rtol=1e-6)


def test_project_pose_zero_and_negative_depth():
    points = f32([[0.01, 0.02, 0.0], [0.01, 0.02, -0.0005], [0.01, 0.02, 0.0005],
                  [0.3, -0.2, -2.0]])
    # z = 0: (x/md, y/md, 0) -> no principal-point term.
    # z = -0.0005 with md 0.001: z/s = -0.5 -> principal point subtracted at half weight.
    expected_md001 = [[5000, 10000], [5000 - 64, 10000 - 64], [5000 + 64, 10000 + 64],
                      [150000 - 256000, -100000 - 256000]]
    np.testing.assert_allclose(
        geometry.project_pose(points, f32(K_DEFAULT)).numpy(), expected_md001, rtol=1e-6)
    expected_md01 = [[50, 100], [50 - 0.64, 100 - 0.64], [50 + 0.64, 100 + 0.64],
                     [1500 - 2560, -1000 - 2560]]
    np.testing.assert_allclose(
        geometry.project_pose(points, f32(K_DEFAULT), min_depth=0.1).numpy(), expected_md01,
        rtol=1e-6)


def test_project_pose_batched_general_intrinsics():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(3, 5, 3))
    points[..., 2] = rng.uniform(-0.5, 5, size=(3, 5))
    intrinsics = np.stack([
        [[500, 3, 120], [0, 480, 130], [0, 0, 1]],
        [[300, 0, 100], [0, 300, 90], [0, 0, 1]],
        [[800, -5, 128], [0, 810, 128], [0, 0, 1]]]).astype(np.float64)
    for min_depth in (0.001, 0.1):
        expected = np_project_pose(points, intrinsics, min_depth)
        result = geometry.project_pose(f32(points), f32(intrinsics), min_depth=min_depth)
        assert result.shape == (3, 5, 2)
        np.testing.assert_allclose(result.numpy(), expected, rtol=2e-5, atol=1e-3)


def test_unproject_and_back_project_round_trip_case3():
    rng = np.random.default_rng(1)
    points = rng.normal(scale=0.5, size=(2, 6, 3))
    points[..., 2] = rng.uniform(2, 6, size=(2, 6))
    intrinsics = np.stack([
        [[510, 2, 125], [0, 490, 131], [0, 0, 1]],
        K_DEFAULT]).astype(np.float64)
    uv = np_project_pose(points, intrinsics, 0.001)
    normalized = geometry.unproject(f32(uv), f32(intrinsics))
    assert normalized.shape == (2, 6, 2)
    expected_normalized = np.einsum(
        'bij,bnj->bni', np.linalg.inv(intrinsics), np.concatenate([uv, np.ones_like(uv[..., :1])], -1))[..., :2]
    np.testing.assert_allclose(normalized.numpy(), expected_normalized, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        normalized.numpy(), points[..., :2] / points[..., 2:], rtol=1e-5, atol=1e-7)

    z_offset = np.array([3.0, 4.0])
    delta_z = points[..., 2] - z_offset[:, None]
    restored = geometry.back_project(normalized, f32(delta_z), f32(z_offset))
    assert restored.shape == (2, 6, 3)
    np.testing.assert_allclose(restored.numpy(), points, atol=2e-6)


def test_back_project_formula_and_project():
    n = f32([[[0.1, -0.2], [0.0, 0.5]]])
    result = geometry.back_project(n, f32([[0.5, -1.0]]), f32([3.0])).numpy()
    np.testing.assert_allclose(result, [[[0.35, -0.7, 3.5], [0.0, 1.0, 2.0]]], rtol=1e-6)
    np.testing.assert_allclose(
        geometry.project(f32([[1.0, -2.0, 4.0]])).numpy(), [[0.25, -0.5]], rtol=1e-7)


def test_to_homogeneous_and_nan_to_num():
    np.testing.assert_array_equal(
        geometry.to_homogeneous(f32([[1, 2], [3, 4]])).numpy(), [[1, 2, 1], [3, 4, 1]])
    np.testing.assert_array_equal(
        geometry.nan_to_num(f32([1, np.nan, 3])).numpy(), [1, 0, 3])


# ---------------------------------------------------------------------------------------
# Field of view (§2.3, case 4)
# ---------------------------------------------------------------------------------------

def fov(coords, **kwargs):
    return geometry.is_within_fov(f32(coords), **kwargs).numpy().tolist()


def test_is_within_fov_case4_border_half():
    coords = [[16, 16], [15.999, 100], [240, 240], [240.001, 100], [100, 240.001],
              [100, 15.999], [128, 128], [16, 240]]
    assert fov(coords, border_factor=0.5) == [True, False, True, False, False, False, True, True]


@pytest.mark.parametrize('border_factor, lower, upper', [
    (0.5, 16, 240), (0.55, 17.6, 238.4), (0.6, 19.2, 236.8), (1, 32, 224), (0.75, 24, 232),
    (-20, -640, 896)])
def test_is_within_fov_table(border_factor, lower, upper):
    eps = 1e-3
    coords = [[lower, lower], [upper, upper], [lower - eps, 128], [128, lower - eps],
              [upper + eps, 128], [128, upper + eps], [lower, upper]]
    assert fov(coords, border_factor=border_factor) == [True, True, False, False, False, False, True]


def test_is_within_fov_default_border_and_proc_side_384():
    # default border 0.75 -> [24, 232]
    assert fov([[24, 232], [23.99, 128], [232.01, 128]]) == [True, False, False]
    # proc_side 384, border −20·384/256 = −30 -> [−960, 1344]
    coords = [[-960, 1344], [-960.1, 0], [0, 1344.1], [1344, -960]]
    assert fov(coords, border_factor=-30, proc_side=384) == [True, False, False, True]


def test_is_within_fov_uncentered_stride():
    # offset −16: border 0.5 accepts [0, 224]; border 1 accepts [16, 208].
    coords = [[0, 0], [-0.001, 50], [224, 224], [224.001, 50], [240, 100]]
    assert fov(coords, border_factor=0.5, centered_stride=False) == [True, False, True, False, False]
    coords = [[16, 208], [15.99, 100], [208.01, 100]]
    assert fov(coords, border_factor=1, centered_stride=False) == [True, False, False]


def test_is_within_fov_batched_shape():
    coords = np.full((2, 3, 2), 128.0, np.float32)
    coords[1, 2, 0] = 300
    result = geometry.is_within_fov(f32(coords), 1).numpy()
    assert result.shape == (2, 3) and result.dtype == bool
    assert result.tolist() == [[True, True, True], [True, True, False]]


# ---------------------------------------------------------------------------------------
# Centring and Procrustes (§2.4, §2.5, case 9)
# ---------------------------------------------------------------------------------------

def test_center_relative_pose_variants():
    x = np.array([[[1, 2, 3], [3, 4, 5], [100, 100, 100]],
                  [[0, 0, 0], [2, 2, 2], [4, 10, 6]]], np.float64)
    m = np.array([[True, True, False], [False, False, False]])
    # masked mean (2,3,4) for example 0; example 1 has no valid point -> centre 0
    result = geometry.center_relative_pose(f32(x), tf.constant(m), center_is_mean=True).numpy()
    np.testing.assert_allclose(result[0], x[0] - [2, 3, 4], rtol=1e-6)
    np.testing.assert_allclose(result[1], x[1], rtol=1e-6)
    # no mask: plain mean of all points
    result = geometry.center_relative_pose(f32(x), center_is_mean=True).numpy()
    np.testing.assert_allclose(result, x - x.mean(axis=1, keepdims=True), rtol=1e-6, atol=1e-6)
    # centre joints subset {1, 2}, masked: example 0 uses only joint 1, example 1 none valid
    m2 = np.array([[True, True, False], [True, False, True]])
    result = geometry.center_relative_pose(
        f32(x), tf.constant(m2), center_is_mean=True, center_joints=[1, 2]).numpy()
    np.testing.assert_allclose(result[0], x[0] - x[0, 1], rtol=1e-6)
    np.testing.assert_allclose(result[1], x[1] - x[1, 2], rtol=1e-6)
    # not mean: last point
    result = geometry.center_relative_pose(f32(x), tf.constant(m), center_is_mean=False).numpy()
    np.testing.assert_allclose(result, x - x[:, -1:], rtol=1e-6)
    result = geometry.center_relative_pose(f32(x)).numpy()
    np.testing.assert_allclose(result, x - x[:, -1:], rtol=1e-6)


def test_rigid_align_case9_similarity_recovered():
    rng = np.random.default_rng(2)
    true = rng.normal(scale=0.4, size=(2, 10, 3))
    rotations = [random_rotation(rng) for _ in range(2)]
    shift = rng.normal(size=(2, 1, 3))
    pred = np.stack([1.7 * true[i] @ rotations[i] for i in range(2)]) + shift
    result = geometry.rigid_align(f32(pred), f32(true), scale_align=True).numpy()
    np.testing.assert_allclose(result, true, atol=1e-5)
    # Without scale, a pure rigid motion is recovered.
    pred_rigid = np.stack([true[i] @ rotations[i] for i in range(2)]) + shift
    result = geometry.rigid_align(f32(pred_rigid), f32(true)).numpy()
    np.testing.assert_allclose(result, true, atol=1e-5)
    # Without scale on the scaled prediction: matches the float64 spec re-derivation.
    expected, _ = np_rigid_align(pred, true, np.ones((2, 10), bool), scale_align=False)
    result = geometry.rigid_align(f32(pred), f32(true), scale_align=False).numpy()
    np.testing.assert_allclose(result, expected, atol=2e-5)


def test_rigid_align_random_matches_reference():
    rng = np.random.default_rng(3)
    true = rng.normal(scale=0.4, size=(3, 12, 3))
    pred = true + rng.normal(scale=0.15, size=true.shape)
    mask = rng.uniform(size=(3, 12)) < 0.7
    mask[:, :4] = True
    for scale_align in (False, True):
        expected, _ = np_rigid_align(pred, true, mask, scale_align)
        result = geometry.rigid_align(
            f32(pred), f32(true), tf.constant(mask), scale_align=scale_align).numpy()
        np.testing.assert_allclose(result, expected, atol=2e-5)


def test_rigid_align_mirror_no_reflection():
    rng = np.random.default_rng(4)
    true = rng.normal(scale=0.4, size=(1, 15, 3)) * [1.0, 0.6, 0.3]
    pred = true * [-1, 1, 1]
    mask = np.ones((1, 15), bool)
    expected, infos = np_rigid_align(pred, true, mask, scale_align=True)
    scale, sigma, r, t = infos[0]
    # Reference sanity: the reflection was removed, r = 1, Σσ = 1 -> scale = 1 − 2σ₃ < 1.
    assert np.linalg.det(t) > 0 and r == pytest.approx(1.0)
    assert scale == pytest.approx(r * (sigma.sum() - 2 * sigma[2]))
    assert scale < 1

    result = geometry.rigid_align(f32(pred), f32(true), scale_align=True).numpy()
    np.testing.assert_allclose(result, expected, atol=2e-5)
    assert np.abs(result - true).max() > 1e-2  # a reflection cannot be undone by a rotation

    # Recover the applied linear map M = T·scale from the output and check it is a scaled
    # proper rotation with scale r·(Σσ − 2σ₃).
    centred_pred = pred[0] - pred[0].mean(axis=0)
    centred_out = result[0] - true[0].mean(axis=0)
    linear_map = np.linalg.lstsq(centred_pred, centred_out, rcond=None)[0]
    recovered_scale = np.cbrt(np.linalg.det(linear_map))
    assert recovered_scale > 0
    assert recovered_scale == pytest.approx(scale, rel=1e-4)
    np.testing.assert_allclose(
        linear_map.T @ linear_map / recovered_scale ** 2, np.eye(3), atol=1e-4)

    # Without scale alignment the scale stays 1 but the rotation is still proper.
    expected, _ = np_rigid_align(pred, true, mask, scale_align=False)
    result = geometry.rigid_align(f32(pred), f32(true)).numpy()
    np.testing.assert_allclose(result, expected, atol=2e-5)

    # With reflections allowed, the mirror image is undone exactly.
    result = geometry.rigid_align(
        f32(pred), f32(true), scale_align=True, reflection_align=True).numpy()
    np.testing.assert_allclose(result, true, atol=1e-5)


def test_rigid_align_ignores_invalid_points_but_moves_them():
    rng = np.random.default_rng(5)
    true = rng.normal(scale=0.4, size=(1, 10, 3))
    rotation = random_rotation(rng)
    pred = 0.8 * true @ rotation + [0.1, 0.2, -0.3]
    mask = np.ones((1, 10), bool)
    mask[0, 7:] = False
    garbage_pred = pred.copy()
    garbage_true = true.copy()
    garbage_pred[0, 7:] = rng.normal(scale=50, size=(3, 3))
    garbage_true[0, 7:] = rng.normal(scale=50, size=(3, 3))
    result = geometry.rigid_align(
        f32(garbage_pred), f32(garbage_true), tf.constant(mask), scale_align=True).numpy()
    # Valid points align exactly; invalid points get the same transform applied.
    np.testing.assert_allclose(result[0, :7], true[0, :7], atol=1e-5)
    expected_invalid = (garbage_pred[0, 7:] - [0.1, 0.2, -0.3]) @ rotation.T / 0.8
    np.testing.assert_allclose(result[0, 7:], expected_invalid, rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------------------------------
# Norms, AUC, PCK (§2.6, §2.7, cases 5 and 10)
# ---------------------------------------------------------------------------------------

def test_charbonnier_case5_values():
    x = f32([3, 4])
    assert geometry.charbonnier(x, epsilon=0).numpy() == pytest.approx(5 / np.sqrt(2), rel=1e-6)
    assert geometry.charbonnier(x, epsilon=0).numpy() == pytest.approx(3.535534, abs=1e-6)
    expected = np.sqrt((9 + 16) / 2 + 0.02 ** 2) - 0.02
    assert expected == pytest.approx(3.515590, abs=1e-6)
    assert geometry.charbonnier(x, epsilon=0.02).numpy() == pytest.approx(expected, rel=1e-6)
    # default epsilon 1e-3
    assert geometry.charbonnier(x).numpy() == pytest.approx(
        np.sqrt(12.5 + 1e-6) - 1e-3, rel=1e-6)


def test_charbonnier_batched_and_keepdims():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4, 5, 3))
    np.testing.assert_allclose(
        geometry.charbonnier(f32(x), epsilon=0).numpy(),
        np.linalg.norm(x, axis=-1) / np.sqrt(3), rtol=1e-6)
    result = geometry.charbonnier(f32(x), epsilon=0, keepdims=True).numpy()
    assert result.shape == (4, 5, 1)
    np.testing.assert_allclose(
        geometry.charbonnier(f32(x), epsilon=0.1).numpy(),
        np.sqrt(np.mean(x ** 2, axis=-1) + 0.01) - 0.1, rtol=1e-5)
    np.testing.assert_allclose(
        geometry.charbonnier(f32(x), epsilon=0.1, axis=1).numpy(),
        np.sqrt(np.mean(x ** 2, axis=1) + 0.01) - 0.1, rtol=1e-5)
    np.testing.assert_allclose(
        geometry.euclidean_norm(f32(x)).numpy(), np.linalg.norm(x, axis=-1), rtol=1e-6)
    assert geometry.euclidean_norm(f32(x), keepdims=True).shape == (4, 5, 1)


def test_charbonnier_gradient_zero_at_origin_and_normalised_elsewhere():
    x = tf.Variable(np.array([[0, 0, 0], [3, 4, 0], [1, -2, 2]], np.float32))
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(geometry.charbonnier(x, epsilon=0))
    grad = tape.gradient(y, x).numpy()
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[0], [0, 0, 0])
    np.testing.assert_allclose(grad[1], np.array([3, 4, 0]) / 5 / np.sqrt(3), rtol=1e-6)
    np.testing.assert_allclose(grad[2], np.array([1, -2, 2]) / 3 / np.sqrt(3), rtol=1e-6)

    with tf.GradientTape() as tape:
        y = tf.reduce_sum(geometry.euclidean_norm(x))
    grad = tape.gradient(y, x).numpy()
    np.testing.assert_array_equal(grad[0], [0, 0, 0])
    np.testing.assert_allclose(grad[1], [0.6, 0.8, 0], rtol=1e-6)


def test_charbonnier_eps_gradient():
    x = tf.Variable(np.array([[3, 4]], np.float32))
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(geometry.charbonnier(x, epsilon=0.02))
    # d/dx sqrt(mean(x²) + ε²) = x / (d · sqrt(mean(x²) + ε²))
    expected = np.array([3, 4]) / (2 * np.sqrt(12.5 + 0.0004))
    np.testing.assert_allclose(tape.gradient(y, x).numpy()[0], expected, rtol=1e-6)


def test_auc_pck_case10():
    d = f32([0, 0.05, 0.1, 0.2, -0.01])
    np.testing.assert_allclose(geometry.auc(d, 0, 0.1).numpy(), [1, 0.5, 0, 0, 1], atol=1e-6)
    np.testing.assert_array_equal(geometry.pck(d[:4], 0.1).numpy(), [1, 1, 1, 0])
    # Mean over points as the metrics use it.
    assert np.mean(geometry.pck(d[:4], 0.1).numpy()) == pytest.approx(0.75)
    # Other threshold range: auc(d; t1, t2) = max(0, 1 − max(0, d − t1)/(t2 − t1))
    np.testing.assert_allclose(
        geometry.auc(f32([0.01, 0.03, 0.06]), 0.02, 0.05).numpy(), [1, 2 / 3, 0], atol=1e-6)


# ---------------------------------------------------------------------------------------
# Softmax, soft-argmax, heatmap decoding (§2.8, case 35)
# ---------------------------------------------------------------------------------------

def test_softmax_joint_over_axes():
    rng = np.random.default_rng(7)
    x = rng.normal(scale=3, size=(2, 4, 5, 3))
    result = geometry.softmax(f32(x), axis=[1, 2]).numpy()
    e = np.exp(x - x.max(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(result, e / e.sum(axis=(1, 2), keepdims=True), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.sum(axis=(1, 2)), 1, rtol=1e-5)
    result = geometry.softmax(f32(x), axis=-1).numpy()
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(result, e / e.sum(axis=-1, keepdims=True), rtol=1e-5, atol=1e-7)
    # Large logits do not overflow thanks to the max subtraction.
    result = geometry.softmax(f32([[1000.0, 1000.0]]), axis=-1).numpy()
    np.testing.assert_allclose(result, [[0.5, 0.5]])


def test_soft_argmax_case35_axis_order():
    logits = np.zeros((1, 8, 8), np.float32)
    logits[0, 2, 5] = 1000
    result = geometry.soft_argmax(f32(logits), axis=[2, 1]).numpy()
    assert result.shape == (1, 2)
    np.testing.assert_allclose(result, [[5 / 7, 2 / 7]], atol=1e-6)
    result = geometry.soft_argmax(f32(logits), axis=[1, 2]).numpy()
    np.testing.assert_allclose(result, [[2 / 7, 5 / 7]], atol=1e-6)


def test_decode_heatmap_matches_expectation():
    rng = np.random.default_rng(8)
    # [B, H, W, D, J] heatmap, normalised jointly over (H, W, D), decoded in order (W, H, D).
    hm = rng.uniform(size=(2, 4, 5, 3, 6))
    hm = hm / hm.sum(axis=(1, 2, 3), keepdims=True)
    result = geometry.decode_heatmap(f32(hm), axis=[2, 1, 3]).numpy()
    assert result.shape == (2, 6, 3)
    grid_h, grid_w, grid_d = np.linspace(0, 1, 4), np.linspace(0, 1, 5), np.linspace(0, 1, 3)
    expected = np.stack([
        np.einsum('bhwdj,w->bj', hm, grid_w),
        np.einsum('bhwdj,h->bj', hm, grid_h),
        np.einsum('bhwdj,d->bj', hm, grid_d)], axis=-1)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)
    # Negative axes are accepted.
    result_neg = geometry.decode_heatmap(f32(hm), axis=[-3, -4, -2]).numpy()
    np.testing.assert_allclose(result_neg, result, rtol=1e-6, atol=1e-7)
    # Single axis: plain expectation of linspace(0, 1, n).
    single = geometry.decode_heatmap(f32([[0.0, 0.25, 0.75]]), axis=-1).numpy()
    np.testing.assert_allclose(single, [[0.25 * 0.5 + 0.75]], rtol=1e-6)


def test_decode_heatmap_one_hot_case35():
    heatmap = np.zeros((1, 8, 8), np.float32)
    heatmap[0, 2, 5] = 1
    np.testing.assert_allclose(
        geometry.decode_heatmap(f32(heatmap), axis=[2, 1]).numpy(), [[5 / 7, 2 / 7]], atol=1e-7)
    np.testing.assert_allclose(
        geometry.decode_heatmap(f32(heatmap), axis=[-1, -2]).numpy(), [[5 / 7, 2 / 7]], atol=1e-7)


def test_soft_argmax_matches_reference():
    rng = np.random.default_rng(9)
    logits = rng.normal(scale=2, size=(3, 6, 7))
    result = geometry.soft_argmax(f32(logits), axis=[2, 1]).numpy()
    p = np.exp(logits - logits.max(axis=(1, 2), keepdims=True))
    p /= p.sum(axis=(1, 2), keepdims=True)
    expected = np.stack([p.sum(1) @ np.linspace(0, 1, 7), p.sum(2) @ np.linspace(0, 1, 6)], -1)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Ragged -> dense, ramp (§2.9, §2.10, case 45)
# ---------------------------------------------------------------------------------------

def test_ragged_to_dense_case45():
    rng = np.random.default_rng(10)
    values = rng.normal(size=(8, 3)).astype(np.float32)
    ragged = tf.RaggedTensor.from_row_lengths(values, [3, 5])
    dense, mask = geometry.ragged_to_dense(ragged, 1024)
    dense, mask = dense.numpy(), mask.numpy()
    assert dense.shape == (2, 1024, 3) and mask.shape == (2, 1024) and mask.dtype == bool
    assert mask[0, :3].all() and not mask[0, 3:].any()
    assert mask[1, :5].all() and not mask[1, 5:].any()
    np.testing.assert_array_equal(dense[0, :3], values[:3])
    np.testing.assert_array_equal(dense[1, :5], values[3:])
    assert np.all(dense[0, 3:] == 0) and np.all(dense[1, 5:] == 0)


def test_ragged_to_dense_truncates_and_default_value():
    ragged = tf.ragged.constant([[1, 2, 3, 4, 5, 6, 7], [8, 9]], dtype=tf.float32)
    dense, mask = geometry.ragged_to_dense(ragged, 4, default_value=-1)
    np.testing.assert_array_equal(dense.numpy(), [[1, 2, 3, 4], [8, 9, -1, -1]])
    np.testing.assert_array_equal(mask.numpy(), [[True] * 4, [True, True, False, False]])


def test_to_mask_tensor():
    ragged = tf.ragged.constant([[1, 2, 3], [4], []])
    np.testing.assert_array_equal(
        geometry.to_mask_tensor(ragged, length=5).numpy(),
        [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    # length None -> longest row
    np.testing.assert_array_equal(
        geometry.to_mask_tensor(ragged).numpy(), [[1, 1, 1], [1, 0, 0], [0, 0, 0]])


def test_ramp():
    for x, expected in [(0, 0), (9.99, 0), (10, 0), (15, 0.25), (29, 0.95), (30, 1), (1e6, 1)]:
        assert float(geometry.ramp(x, 10, 20)) == pytest.approx(expected, abs=1e-6)
    result = geometry.ramp(tf.constant([5, 12500, 17500, 20000]), 5000, 12500).numpy()
    np.testing.assert_allclose(result, [0, 0.6, 1, 1], atol=1e-6)


# ---------------------------------------------------------------------------------------
# Graph mode and XLA
# ---------------------------------------------------------------------------------------

def _graph_candidates(points, true, mask, intrinsics, logits):
    projected = geometry.project_pose(points, intrinsics)
    return dict(
        projected=projected,
        fov=tf.cast(geometry.is_within_fov(projected, 1.0), tf.float32),
        mean_none=geometry.reduce_mean_masked(points, mask),
        mean_axis=geometry.reduce_mean_masked(points, mask, axis=1),
        stdev=geometry.mean_stdev_masked(points[..., :2], mask)[1],
        centered=geometry.center_relative_pose(points, mask, center_is_mean=True),
        charb=geometry.charbonnier(points, epsilon=0),
        argmax=geometry.soft_argmax(logits, axis=[2, 1]),
        unproj=geometry.unproject(projected, intrinsics))


@pytest.mark.parametrize('jit_compile', [False, True])
def test_geometry_in_tf_function(jit_compile):
    rng = np.random.default_rng(11)
    true = rng.normal(scale=0.3, size=(2, 7, 3)) + [0, 0, 4]
    points = f32(true + rng.normal(scale=0.05, size=true.shape))
    true = f32(true)
    mask = tf.constant(rng.uniform(size=(2, 7)) < 0.8)
    intrinsics = f32(np.stack([K_DEFAULT, K_DEFAULT]))
    logits = f32(rng.normal(size=(2, 8, 8)))
    eager = _graph_candidates(points, true, mask, intrinsics, logits)
    graph_fn = tf.function(_graph_candidates, jit_compile=jit_compile)
    graph = graph_fn(points, true, mask, intrinsics, logits)
    for key in eager:
        np.testing.assert_allclose(graph[key].numpy(), eager[key].numpy(), rtol=1e-5, atol=1e-5,
                                   err_msg=key)


@pytest.mark.parametrize('jit_compile', [False, True])
def test_rigid_align_in_tf_function(jit_compile):
    # Separate from the test above so that an XLA problem here is reported on its own
    # (tf.linalg.det has no XLA kernel; a 3×3 determinant can be written out explicitly).
    rng = np.random.default_rng(12)
    true = rng.normal(scale=0.3, size=(2, 7, 3))
    pred = true * [-1, 1, 1] + rng.normal(scale=0.05, size=true.shape)
    mask = tf.constant(rng.uniform(size=(2, 7)) < 0.8)

    def align(p, t, m):
        return geometry.rigid_align(p, t, m, scale_align=True)

    eager = align(f32(pred), f32(true), mask).numpy()
    graph = tf.function(align, jit_compile=jit_compile)(f32(pred), f32(true), mask).numpy()
    np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-5)
