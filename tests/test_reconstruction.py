"""Tests of nlf_tf.reconstruction (spec §3, §9 cases 11-19) against hand-built configurations and
an independent float64 NumPy re-derivation of the spec formulas (§3.2-§3.4)."""

import numpy as np
import pytest
import tensorflow as tf

from nlf_tf import reconstruction

K_DEFAULT = np.array([[500, 0, 128], [0, 500, 128], [0, 0, 1]], np.float64)
T_TRUE = np.array([0.2, -0.1, 4.0])


def f32(x):
    return tf.constant(np.asarray(x, np.float32))


# ---------------------------------------------------------------------------------------
# Float64 NumPy reference, written from the spec formulas
# ---------------------------------------------------------------------------------------

def np_unproject(uv, intrinsics):
    homogeneous = np.concatenate([uv, np.ones_like(uv[..., :1])], axis=-1)
    return np.einsum('bij,bnj->bni', np.linalg.inv(intrinsics), homogeneous)[..., :2]


def np_project_pose(points, intrinsics, min_depth=0.001):
    scaled = points / np.maximum(points[..., 2:], min_depth)
    return np.einsum('bnk,bjk->bnj', scaled, intrinsics[:, :2, :])


def np_is_within_fov(uv, border_factor, proc_side=256, stride=32, centered_stride=True):
    offset = 0 if centered_stride else -stride / 2
    lower = stride * border_factor + offset
    upper = proc_side - stride * border_factor + offset
    return np.all((uv >= lower) & (uv <= upper), axis=-1)


def np_masked_mean(x, m):
    """Mean of the valid rows of x [N, d]; 0 if none."""
    return x[m].mean(axis=0) if m.any() else np.zeros(x.shape[-1])


def np_mean_stdev(x, m):
    """§2.1: per-coordinate mean and RMS distance of the valid points (sqrt(... + 1e-10))."""
    mean = np_masked_mean(x, m)
    n_valid = m.sum()
    ssd = np.sum(np.where(m[:, None], (x - mean) ** 2, 0))
    return mean, np.sqrt((ssd / n_valid if n_valid else 0.0) + 1e-10)


def np_solve_weak(normalized, rel, mask):
    """§3.3 weak-perspective translation, example by example."""
    result = []
    for n, q, m in zip(normalized, rel, mask):
        _, stdev3d = np_mean_stdev(q[:, :2], m)
        mean2d, stdev2d = np_mean_stdev(n, m)
        z = max(stdev3d, 1e-5) / max(stdev2d, 1e-5)
        result.append(np.array([mean2d[0] * z, mean2d[1] * z, z]) - np_masked_mean(q, m))
    return np.stack(result)


def np_solve_full(normalized, rel, mask, l2_regul=1e-4):
    """§3.4 full-perspective ridge solve in RMS-normalised space, example by example.

    Row weights are mask + 1e-4 (1.0001 for valid points) as in the original; the original's
    lstsq(fast=True) solves the normal equations (AᵀA + λI)u = Aᵀb.
    """
    result = []
    for n, q, m in zip(normalized, rel, mask):
        count = m.sum()
        b = n * q[:, 2:] - q[:, :2]

        def rms(v):
            ms = np.sum(np.where(m[:, None], v ** 2, 0)) / count if count else 0.0
            return np.sqrt(ms + 1e-10)

        scale_n, scale_b = rms(n), rms(b)
        rows, rhs, weights = [], [], []
        for i in range(len(n)):
            rows += [[1, 0, -n[i, 0] / scale_n], [0, 1, -n[i, 1] / scale_n]]
            rhs += [b[i, 0] / scale_b, b[i, 1] / scale_b]
            weights += [float(m[i]) + 1e-4] * 2
        weights = np.array(weights)[:, None]
        a_w = np.array(rows) * weights
        b_w = np.array(rhs)[:, None] * weights
        u = np.linalg.solve(a_w.T @ a_w + l2_regul * np.eye(3), a_w.T @ b_w)[:, 0]
        result.append(np.array([u[0] * scale_b, u[1] * scale_b, u[2] * scale_b / scale_n]))
    return np.stack(result)


def np_reconstruct(uv, rel, intrinsics, mix=None, weak=False, validity=None, bf1=0.75, bf2=None,
                   mix_based_on_3d=True, min_depth=0.001, l2_regul=1e-4):
    """§3.2 in float64. Returns (output, translation)."""
    uv, rel, intrinsics = (np.asarray(a, np.float64) for a in (uv, rel, intrinsics))
    normalized = np_unproject(uv, intrinsics)
    bf2 = bf1 if bf2 is None else bf2
    solve_mask = np_is_within_fov(uv, bf1)
    if validity is not None:
        solve_mask &= validity
    if weak:
        t = np_solve_weak(normalized, rel, solve_mask)
    else:
        t = np_solve_full(normalized, rel, solve_mask, l2_regul)
    abs_3d = rel + t[:, None]
    abs_2d = np.concatenate([normalized, np.ones_like(normalized[..., :1])], -1) * (
        rel[..., 2:] + t[:, None, 2:])
    if mix is not None:
        abs_2d = mix * abs_3d + (1 - mix) * abs_2d
    decision = np_project_pose(abs_3d if mix_based_on_3d else abs_2d, intrinsics, min_depth)
    use_2d = np_is_within_fov(decision, bf2) & (abs_3d[..., 2] > 0.001)
    return np.where(use_2d[..., None], abs_2d, abs_3d), t


def make_scene(rng, n_points=50, sigma=0.3, translation=T_TRUE, planar=False):
    """Relative points q [1,N,3] (σ-normal), noise-free pixel projections of q + t."""
    rel = rng.normal(scale=sigma, size=(1, n_points, 3))
    if planar:
        rel[..., 2] = 0
    intrinsics = K_DEFAULT[np.newaxis]
    uv = np_project_pose(rel + translation, intrinsics)
    return uv, rel, intrinsics


def case12_data():
    rng = np.random.default_rng(12)
    return make_scene(rng, n_points=50, sigma=0.3)


def solve_weak_tf(uv, rel, intrinsics, mask):
    normalized = np_unproject(uv, intrinsics)
    return reconstruction.solve_translation_weak_perspective(
        f32(normalized), f32(rel), tf.constant(mask)).numpy()


def solve_full_tf(uv, rel, intrinsics, mask, l2_regul=1e-4):
    normalized = np_unproject(uv, intrinsics)
    return reconstruction.solve_translation_full_perspective(
        f32(normalized), f32(rel), tf.constant(mask), l2_regul=l2_regul).numpy()


def reconstruct(uv, rel, intrinsics, **kwargs):
    if 'point_validity_mask' in kwargs and kwargs['point_validity_mask'] is not None:
        kwargs['point_validity_mask'] = tf.constant(kwargs['point_validity_mask'])
    return reconstruction.reconstruct_absolute(f32(uv), f32(rel), f32(intrinsics), **kwargs).numpy()


# ---------------------------------------------------------------------------------------
# Solvers (cases 11-14, §3.5)
# ---------------------------------------------------------------------------------------

def test_reference_solvers_sanity():
    # The NumPy reference itself: exact on noise-free data up to the ridge bias.
    uv, rel, intrinsics = make_scene(np.random.default_rng(0), planar=True)
    mask = np.ones((1, 50), bool)
    np.testing.assert_allclose(np_solve_weak(np_unproject(uv, intrinsics), rel, mask)[0], T_TRUE,
                               atol=1e-12)
    uv, rel, intrinsics = case12_data()
    np.testing.assert_allclose(np_solve_full(np_unproject(uv, intrinsics), rel, mask)[0], T_TRUE,
                               atol=5e-5)


def test_case11_weak_exact_on_planar():
    uv, rel, intrinsics = make_scene(np.random.default_rng(11), planar=True)
    mask = np.ones((1, 50), bool)
    np.testing.assert_allclose(solve_weak_tf(uv, rel, intrinsics, mask)[0], T_TRUE, atol=1e-6)
    # Through reconstruct_absolute with a border that accepts all points and mix = 1: q + t.
    output = reconstruct(uv, rel, intrinsics, weak_perspective=True, border_factor1=-20,
                         mix_3d_inside_fov=1.0)
    np.testing.assert_allclose(output - rel, np.broadcast_to(T_TRUE, rel.shape), atol=2e-6)


def test_case12_full_perspective_accuracy():
    uv, rel, intrinsics = case12_data()
    mask = np.ones((1, 50), bool)
    result = solve_full_tf(uv, rel, intrinsics, mask)[0]
    np.testing.assert_allclose(result, T_TRUE, atol=5e-5)
    expected = np_solve_full(np_unproject(uv, intrinsics), rel, mask)[0]
    np.testing.assert_allclose(result, expected, atol=1e-5)

    # 10 points invalid with garbage 2D: still within 1e-4.
    rng = np.random.default_rng(120)
    uv_garbage = uv.copy()
    uv_garbage[0, :10] = rng.uniform(0, 256, size=(10, 2))
    mask[0, :10] = False
    result = solve_full_tf(uv_garbage, rel, intrinsics, mask)[0]
    np.testing.assert_allclose(result, T_TRUE, atol=1e-4)
    expected = np_solve_full(np_unproject(uv_garbage, intrinsics), rel, mask)[0]
    np.testing.assert_allclose(result, expected, atol=1e-5)


def test_case13_weak_biased_on_nonplanar_data():
    uv, rel, intrinsics = case12_data()
    mask = np.ones((1, 50), bool)
    result = solve_weak_tf(uv, rel, intrinsics, mask)[0]
    expected = np_solve_weak(np_unproject(uv, intrinsics), rel, mask)[0]
    np.testing.assert_allclose(result, expected, atol=1e-5)
    # Biased (not exact) but in the ballpark of the spec's (0.197, −0.0998, 4.0055).
    error = np.abs(expected - T_TRUE)
    assert error.max() > 1e-3
    assert error[:2].max() < 0.02 and error[2] < 0.1


def test_case14_no_valid_point():
    uv, rel, intrinsics = case12_data()
    mask = np.zeros((1, 50), bool)
    np.testing.assert_allclose(solve_weak_tf(uv, rel, intrinsics, mask)[0], [0, 0, 1], atol=1e-6)
    result = solve_full_tf(uv, rel, intrinsics, mask)[0]
    assert np.all(np.isfinite(result))
    expected = np_solve_full(np_unproject(uv, intrinsics), rel, mask)[0]
    # §3.5: the ridge shrinks t_x, t_y to ≈ 0, t_z is a data-dependent finite fit.
    assert np.abs(expected[:2]).max() < 0.01
    np.testing.assert_allclose(result, expected, rtol=1e-3, atol=1e-4)


def test_one_valid_point_weak_gives_unit_depth():
    # Both spreads are clamped to 1e-5 -> z = 1 and t = (n_x, n_y, 1) − q_valid.
    uv, rel, intrinsics = case12_data()
    mask = np.zeros((1, 50), bool)
    mask[0, 7] = True
    normalized = np_unproject(uv, intrinsics)
    expected = np.array([normalized[0, 7, 0], normalized[0, 7, 1], 1.0]) - rel[0, 7]
    np.testing.assert_allclose(solve_weak_tf(uv, rel, intrinsics, mask)[0], expected, atol=1e-6)
    # Full perspective: finite, matches the reference. The system is under-determined (only
    # the ridge fixes it), so float32 round-off alone moves the result by ~1e-3 here.
    result = solve_full_tf(uv, rel, intrinsics, mask)[0]
    expected = np_solve_full(normalized, rel, mask)[0]
    np.testing.assert_allclose(result, expected, rtol=5e-3, atol=1e-4)


def test_full_solver_random_batch_matches_reference():
    rng = np.random.default_rng(3)
    batch, n_points = 4, 40
    rel = rng.normal(scale=0.3, size=(batch, n_points, 3))
    translation = np.stack([rng.uniform(-0.5, 0.5, batch), rng.uniform(-0.5, 0.5, batch),
                            rng.uniform(3, 7, batch)], axis=1)
    intrinsics = np.stack([K_DEFAULT, [[600, 0, 120], [0, 580, 135], [0, 0, 1]]] * 2)
    uv = np_project_pose(rel + translation[:, None], intrinsics)
    uv = uv + rng.normal(scale=2, size=uv.shape)
    mask = rng.uniform(size=(batch, n_points)) < 0.7
    uv = np.where(mask[..., None], uv, rng.uniform(-100, 400, size=uv.shape))
    normalized = np_unproject(uv, intrinsics)
    for l2_regul in (1e-4, 1e-1):
        expected = np_solve_full(normalized, rel, mask, l2_regul)
        result = reconstruction.solve_translation_full_perspective(
            f32(normalized), f32(rel), tf.constant(mask), l2_regul=l2_regul).numpy()
        assert result.shape == (batch, 3)
        np.testing.assert_allclose(result, expected, atol=1e-5, rtol=1e-5)
    expected = np_solve_weak(normalized, rel, mask)
    result = reconstruction.solve_translation_weak_perspective(
        f32(normalized), f32(rel), tf.constant(mask)).numpy()
    np.testing.assert_allclose(result, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('n_valid', [0, 1, 2, 3, 37])
def test_full_solver_float64_exact_formula(n_valid):
    # In float64 the round-off is negligible, so the port must match the spec formula to ~1e-10.
    # This pins the details that float32 cannot resolve: the RMS normalisation with its 1e-10,
    # the row weights mask + 1e-4 (1.0001 for valid points; plain 1 would differ by ~3e-7 for
    # 2 valid points) and the ridge λI added in the normalised space.
    rng = np.random.default_rng(100 + n_valid)
    rel = rng.normal(scale=0.3, size=(2, 40, 3))
    translation = np.array([[0.2, -0.1, 4.0], [-0.4, 0.3, 6.0]])
    normalized = (rel[..., :2] + translation[:, None, :2]) / (rel[..., 2:] + translation[:, None, 2:])
    normalized = normalized + rng.normal(scale=0.004, size=normalized.shape)
    mask = np.zeros((2, 40), bool)
    mask[:, :n_valid] = True
    normalized = np.where(mask[..., None], normalized, rng.uniform(-1, 1, size=normalized.shape))
    expected = np_solve_full(normalized, rel, mask)
    result = reconstruction.solve_translation_full_perspective(
        tf.constant(normalized), tf.constant(rel), tf.constant(mask)).numpy()
    np.testing.assert_allclose(result, expected, rtol=1e-9, atol=1e-11)
    expected = np_solve_weak(normalized, rel, mask)
    result = reconstruction.solve_translation_weak_perspective(
        tf.constant(normalized), tf.constant(rel), tf.constant(mask)).numpy()
    np.testing.assert_allclose(result, expected, rtol=1e-9, atol=1e-11)


def test_ridge_strength_matters():
    # A large ridge must pull the normalised solution towards 0 (checks λ is really used).
    uv, rel, intrinsics = case12_data()
    mask = np.ones((1, 50), bool)
    result = solve_full_tf(uv, rel, intrinsics, mask, l2_regul=10.0)[0]
    expected = np_solve_full(np_unproject(uv, intrinsics), rel, mask, 10.0)[0]
    assert np.abs(expected - T_TRUE).max() > 0.01
    np.testing.assert_allclose(result, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# reconstruct_absolute end to end (cases 15-19)
# ---------------------------------------------------------------------------------------

def noisy_scene(seed, n_points=30):
    """Non-planar scene with 2D noise, points near and beyond the borders, and two examples
    with different intrinsics."""
    rng = np.random.default_rng(seed)
    rel = rng.normal(scale=0.35, size=(2, n_points, 3))
    translation = np.array([[0.2, -0.1, 4.0], [-0.3, 0.2, 3.0]])
    intrinsics = np.stack([K_DEFAULT, [[450, 0, 130], [0, 470, 126], [0, 0, 1]]])
    uv = np_project_pose(rel + translation[:, None], intrinsics)
    uv = uv + rng.normal(scale=6, size=uv.shape)
    validity = rng.uniform(size=(2, n_points)) < 0.85
    return uv, rel, intrinsics, validity


@pytest.mark.parametrize('weak', [False, True])
@pytest.mark.parametrize('mix', [None, 0.0, 0.5, 1.0])
@pytest.mark.parametrize('mix_based_on_3d', [True, False])
def test_reconstruct_matches_reference(weak, mix, mix_based_on_3d):
    uv, rel, intrinsics, validity = noisy_scene(5)
    kwargs = dict(border_factor1=1, border_factor2=0.55, mix_based_on_3d=mix_based_on_3d)
    expected, _ = np_reconstruct(uv, rel, intrinsics, mix=mix, weak=weak, validity=validity,
                                 bf1=1, bf2=0.55, mix_based_on_3d=mix_based_on_3d)
    result = reconstruct(uv, rel, intrinsics, mix_3d_inside_fov=mix, weak_perspective=weak,
                         point_validity_mask=validity, **kwargs)
    assert result.shape == rel.shape
    np.testing.assert_allclose(result, expected, atol=1e-4, rtol=1e-5)


def test_reference_scene_exercises_both_branches():
    uv, rel, intrinsics, validity = noisy_scene(5)
    _, t = np_reconstruct(uv, rel, intrinsics, validity=validity, bf1=1, bf2=0.55)
    proj = np_project_pose(rel + t[:, None], intrinsics)
    inside = np_is_within_fov(proj, 0.55)
    assert inside.any() and not inside.all()
    assert not np_is_within_fov(uv, 1).all()


@pytest.mark.parametrize('weak', [False, True])
def test_case15_mix_one_gives_translated_3d(weak):
    uv, rel, intrinsics, validity = noisy_scene(15)
    result = reconstruct(uv, rel, intrinsics, mix_3d_inside_fov=1.0, weak_perspective=weak,
                         point_validity_mask=validity)
    _, t = np_reconstruct(uv, rel, intrinsics, weak=weak, validity=validity)
    np.testing.assert_allclose(result - rel, np.broadcast_to(t[:, None], rel.shape), atol=1e-5)
    # Every point is shifted by the same vector.
    shift = result - rel
    np.testing.assert_allclose(shift, np.broadcast_to(shift[:, :1], shift.shape), atol=1e-6)


@pytest.mark.parametrize('mix', [None, 0.0])
def test_case16_mix_zero_reprojects_onto_2d(mix):
    uv, rel, intrinsics, validity = noisy_scene(16)
    result = reconstruct(uv, rel, intrinsics, mix_3d_inside_fov=mix, point_validity_mask=validity,
                         border_factor1=1, border_factor2=0.55)
    _, t = np_reconstruct(uv, rel, intrinsics, validity=validity, bf1=1, bf2=0.55)
    abs_3d = rel + t[:, None]
    inside = np_is_within_fov(np_project_pose(abs_3d, intrinsics), 0.55) & (abs_3d[..., 2] > 0.001)
    assert inside.sum() >= 10 and (~inside).sum() >= 1
    reprojected = np_project_pose(result.astype(np.float64), intrinsics)
    np.testing.assert_allclose(reprojected[inside], uv[inside], atol=2e-3)
    np.testing.assert_allclose(result[..., 2][inside], abs_3d[..., 2][inside], atol=1e-5)
    # Outside FOV2: the translated 3D estimate.
    np.testing.assert_allclose(result[~inside], abs_3d[~inside], atol=1e-5)


def test_mix_per_example_tensor():
    uv, rel, intrinsics, validity = noisy_scene(21)
    mix = np.array([0.25, 0.8]).reshape(2, 1, 1)
    result = reconstruction.reconstruct_absolute(
        f32(uv), f32(rel), f32(intrinsics), mix_3d_inside_fov=f32(mix),
        point_validity_mask=tf.constant(validity), border_factor1=1, border_factor2=0.55,
        mix_based_on_3d=False).numpy()
    expected, _ = np_reconstruct(uv, rel, intrinsics, mix=mix, validity=validity, bf1=1,
                                 bf2=0.55, mix_based_on_3d=False)
    np.testing.assert_allclose(result, expected, atol=1e-4, rtol=1e-5)


def planar_scene_with_special_points(special_rel, special_uv):
    """20 planar in-FOV points that determine t = T_TRUE exactly (weak) / to ~1e-5 (full),
    followed by special points that are excluded from the solve via the validity mask."""
    rng = np.random.default_rng(99)
    rel = rng.normal(scale=0.25, size=(1, 20, 3))
    rel[..., 2] = 0
    uv = np_project_pose(rel + T_TRUE, K_DEFAULT[np.newaxis])
    assert np_is_within_fov(uv, 1).all()
    rel = np.concatenate([rel, np.asarray(special_rel, np.float64)[np.newaxis]], axis=1)
    uv = np.concatenate([uv, np.asarray(special_uv, np.float64)[np.newaxis]], axis=1)
    validity = np.arange(rel.shape[1])[np.newaxis] < 20
    return uv, rel, K_DEFAULT[np.newaxis], validity


@pytest.mark.parametrize('weak', [True, False])
@pytest.mark.parametrize('mix_based_on_3d', [True, False])
@pytest.mark.parametrize('mix', [None, 0.5])
def test_case17_nonpositive_depth_gets_3d_estimate(weak, mix_based_on_3d, mix):
    # Translated 3D points with depth ≤ 0.001 whose (clamped) decision projections nevertheless
    # land inside [17.6, 238.4], so that only the depth condition can reject them, and whose
    # 2D-based estimate differs from the 3D one (2D prediction ≠ projection of the 3D point):
    #   A (5e-5, −5e-5, 0.0005), 2D (200, 60): 3D proj (89, 39), 2D-based proj (100, 30);
    #   B (3e-4, 3e-4, −2e-4), 2D (−300, −300): 3D proj (124.4, 124.4), 2D-based (60, 60);
    #   C (2e-5, 0, 0.0008), 2D (30, 200): 3D proj (112.4, 102.4), 2D-based (24, 160).
    # D, E: depth −0.5 and 0 with the 2D prediction near the centre.
    special_abs = np.array([[5e-5, -5e-5, 0.0005], [3e-4, 3e-4, -2e-4], [2e-5, 0, 0.0008],
                            [0, 0, -0.5], [0.01, 0, 0]])
    special_uv = [[200, 60], [-300, -300], [30, 200], [128, 128], [130, 128]]
    uv, rel, intrinsics, validity = planar_scene_with_special_points(
        special_abs - T_TRUE, special_uv)
    common = dict(weak_perspective=weak, point_validity_mask=validity, border_factor1=1,
                  border_factor2=0.55, mix_based_on_3d=mix_based_on_3d)
    # The translation the implementation found (t does not depend on mix); with mix = 1 every
    # output is q + t.
    t = (reconstruct(uv, rel, intrinsics, mix_3d_inside_fov=1.0, **common) - rel.astype(
        np.float32))[0, 0]
    np.testing.assert_allclose(t, T_TRUE, atol=1e-4)
    abs_3d = rel.astype(np.float32) + t
    normalized = np_unproject(uv, intrinsics)
    abs_2d = np.concatenate([normalized, np.ones_like(normalized[..., :1])], -1) * abs_3d[..., 2:]
    if mix is not None:
        abs_2d = mix * abs_3d + (1 - mix) * abs_2d
    # Meaningful only if the FOV part of the decision accepts A, B, C and the two candidate
    # outputs differ clearly.
    decision = np_project_pose(abs_3d if mix_based_on_3d else abs_2d, intrinsics)
    assert np_is_within_fov(decision[:, 20:23], 0.55).all()
    assert np.all(np.abs(abs_2d - abs_3d)[0, 20:23].max(axis=-1) > 5e-6)

    result = reconstruct(uv, rel, intrinsics, mix_3d_inside_fov=mix, **common)
    np.testing.assert_allclose(result[0, 20:], abs_3d[0, 20:], atol=1e-7)
    # The regular points still use the (blended) 2D back-projection.
    np.testing.assert_allclose(result[0, :20], abs_2d[0, :20], atol=1e-5)


@pytest.mark.parametrize('weak', [True, False])
def test_case18_mix_based_on_3d_decision(weak):
    depth = T_TRUE[2]
    # Point A: translated 3D projects to u = 250 (outside [17.6, 238.4]); 2D prediction at the
    # centre; with mix 0.5 the blended point (same depth) projects to u = 189 (inside).
    x_a = (250 - 128) * depth / 500
    # Point B: translated 3D projects to u = 200 (inside); 2D prediction at u = 300; blended
    # projects to u = 250 (outside).
    x_b = (200 - 128) * depth / 500
    special_abs = np.array([[x_a, 0, depth], [x_b, 0, depth]])
    special_rel = special_abs - T_TRUE
    special_uv = [[128, 128], [300, 128]]
    uv, rel, intrinsics, validity = planar_scene_with_special_points(special_rel, special_uv)
    blended_a = 0.5 * special_abs[0] + 0.5 * np.array([0, 0, depth])
    blended_b = 0.5 * special_abs[1] + 0.5 * np.array([(300 - 128) / 500 * depth, 0, depth])
    assert np_project_pose(blended_a[None, None], intrinsics)[0, 0, 0] == pytest.approx(189)
    assert np_project_pose(blended_b[None, None], intrinsics)[0, 0, 0] == pytest.approx(250)

    kwargs = dict(mix_3d_inside_fov=0.5, weak_perspective=weak, point_validity_mask=validity,
                  border_factor1=1, border_factor2=0.55)
    result = reconstruct(uv, rel, intrinsics, mix_based_on_3d=False, **kwargs)
    np.testing.assert_allclose(result[0, 20], blended_a, atol=1e-4)
    np.testing.assert_allclose(result[0, 21], special_abs[1], atol=1e-4)
    result = reconstruct(uv, rel, intrinsics, mix_based_on_3d=True, **kwargs)
    np.testing.assert_allclose(result[0, 20], special_abs[0], atol=1e-4)
    np.testing.assert_allclose(result[0, 21], blended_b, atol=1e-4)


def test_border_factor2_defaults_to_border_factor1():
    # A point whose translated projection is at u = 230: inside for border 0.55 (≤ 238.4) but
    # outside for border 1 (> 224). With border_factor2=None the border 1 applies.
    depth = T_TRUE[2]
    special_abs = np.array([[(230 - 128) * depth / 500, 0, depth]])
    uv, rel, intrinsics, validity = planar_scene_with_special_points(
        special_abs - T_TRUE, [[128, 128]])
    common = dict(weak_perspective=True, point_validity_mask=validity, border_factor1=1)
    result = reconstruct(uv, rel, intrinsics, **common)
    np.testing.assert_allclose(result[0, 20], special_abs[0], atol=1e-4)  # 3D estimate
    result = reconstruct(uv, rel, intrinsics, border_factor2=0.55, **common)
    np.testing.assert_allclose(result[0, 20], [0, 0, depth], atol=1e-4)  # 2D back-projection


def test_min_depth_affects_decision_projection():
    # Translated point (0.012, 0, 0.05), 2D prediction at the centre. min_depth 0.001: plain
    # projection u = 500·0.012/0.05 + 128 = 248 (outside [17.6, 238.4]) -> 3D estimate.
    # min_depth 0.1: (0.12, 0, 0.5) -> u = 60 + 64 = 124, v = 64 (inside) -> back-projection of
    # the centre ray at depth 0.05.
    special_abs = np.array([[0.012, 0.0, 0.05]])
    uv, rel, intrinsics, validity = planar_scene_with_special_points(
        special_abs - T_TRUE, [[128, 128]])
    common = dict(weak_perspective=True, point_validity_mask=validity, border_factor1=1,
                  border_factor2=0.55)
    result = reconstruct(uv, rel, intrinsics, **common)
    np.testing.assert_allclose(result[0, 20], special_abs[0], atol=1e-4)
    result = reconstruct(uv, rel, intrinsics, min_depth=0.1, **common)
    np.testing.assert_allclose(result[0, 20], [0, 0, 0.05], atol=1e-4)


def test_case19_solve_mask_independence():
    rng = np.random.default_rng(19)
    uv, rel, intrinsics = make_scene(rng, n_points=30, sigma=0.25)
    # Points 0-3 predicted outside [32, 224]; points 4-7 valid in FOV but marked invalid.
    uv[0, 0] = [10, 128]
    uv[0, 1] = [128, 230]
    uv[0, 2] = [-50, 400]
    uv[0, 3] = [224.5, 100]
    validity = np.ones((1, 30), bool)
    validity[0, 4:8] = False
    solve_points = np_is_within_fov(uv, 1)[0] & validity[0]
    assert solve_points.sum() >= 20 and not solve_points[:8].any()

    uv2, rel2 = uv.copy(), rel.copy()
    rel2[0, :8] += 1.0
    uv2[0, :4] = np.where(rng.uniform(size=(4, 1)) < 0.5,
                          rng.uniform(-300, 31, size=(4, 2)), rng.uniform(225, 600, size=(4, 2)))
    uv2[0, 4:8] = rng.uniform(0, 256, size=(4, 2))
    assert not np_is_within_fov(uv2[:, :4], 1).any()

    common = dict(point_validity_mask=validity, border_factor1=1, border_factor2=0.55,
                  mix_3d_inside_fov=1.0)
    # Weak: exactly no influence on t (hence on the outputs of the untouched points).
    first = reconstruct(uv, rel, intrinsics, weak_perspective=True, **common)
    second = reconstruct(uv2, rel2, intrinsics, weak_perspective=True, **common)
    np.testing.assert_array_equal(first[0, 8:], second[0, 8:])
    # Full: the excluded points keep weight 1e-4, so a tiny influence (< 1e-5 m).
    first = reconstruct(uv, rel, intrinsics, **common)
    second = reconstruct(uv2, rel2, intrinsics, **common)
    t_first = (first - rel)[0, 10]
    t_second = (second - rel2)[0, 10]
    assert np.abs(t_first - t_second).max() < 1e-5
    # And it agrees with the reference using the same solve mask.
    _, t_expected = np_reconstruct(uv2, rel2, intrinsics, validity=validity, bf1=1)
    np.testing.assert_allclose(t_second, t_expected[0], atol=1e-5)


def test_validity_none_equals_all_true():
    uv, rel, intrinsics, _ = noisy_scene(7)
    for weak in (False, True):
        a = reconstruct(uv, rel, intrinsics, weak_perspective=weak, mix_3d_inside_fov=0.3)
        b = reconstruct(uv, rel, intrinsics, weak_perspective=weak, mix_3d_inside_fov=0.3,
                        point_validity_mask=np.ones(rel.shape[:2], bool))
        np.testing.assert_array_equal(a, b)
        expected, _ = np_reconstruct(uv, rel, intrinsics, mix=0.3, weak=weak)
        np.testing.assert_allclose(a, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize('weak', [False, True])
def test_no_valid_point_end_to_end(weak):
    uv, rel, intrinsics, _ = noisy_scene(8)
    validity = np.zeros(rel.shape[:2], bool)
    result = reconstruct(uv, rel, intrinsics, weak_perspective=weak, point_validity_mask=validity,
                         mix_3d_inside_fov=1.0)
    assert np.all(np.isfinite(result))
    if weak:
        np.testing.assert_allclose(result - rel, np.broadcast_to([0, 0, 1], rel.shape), atol=1e-6)
    else:
        _, t = np_reconstruct(uv, rel, intrinsics, weak=False, validity=validity)
        np.testing.assert_allclose((result - rel)[:, 0], t, rtol=1e-3, atol=1e-4)


def test_uncentered_stride_and_proc_side_are_used():
    # proc_side 512 with K centred at 256: a point at u = 300 is inside [32, 480] but would be
    # outside for proc_side 256 ([32, 224]).
    rng = np.random.default_rng(30)
    rel = rng.normal(scale=0.3, size=(1, 25, 3))
    intrinsics = np.array([[[1000, 0, 256], [0, 1000, 256], [0, 0, 1]]], np.float64)
    uv = np_project_pose(rel + T_TRUE, intrinsics) + rng.normal(scale=3, size=(1, 25, 2))
    for kwargs in [dict(proc_side=512), dict(proc_side=512, centered_stride=False)]:
        result = reconstruct(uv, rel, intrinsics, border_factor1=1, border_factor2=0.55,
                             mix_3d_inside_fov=0.2, **kwargs)
        # Reference with the corresponding bounds.
        ps, centred = kwargs['proc_side'], kwargs.get('centered_stride', True)
        offset = 0 if centred else -16
        mask = np.all((uv >= 32 + offset) & (uv <= ps - 32 + offset), -1)
        normalized = np_unproject(uv, intrinsics)
        t = np_solve_full(normalized, rel, mask)
        abs_3d = rel + t[:, None]
        abs_2d = 0.2 * abs_3d + 0.8 * np.concatenate([normalized, np.ones((1, 25, 1))], -1) * (
            rel[..., 2:] + t[:, None, 2:])
        proj = np_project_pose(abs_3d, intrinsics)
        use_2d = np.all((proj >= 17.6 + offset) & (proj <= ps - 17.6 + offset), -1) & (
            abs_3d[..., 2] > 0.001)
        expected = np.where(use_2d[..., None], abs_2d, abs_3d)
        np.testing.assert_allclose(result, expected, atol=1e-4, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Gradients, graph mode, XLA
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('weak', [False, True])
@pytest.mark.parametrize('no_valid', [False, True])
def test_gradients_finite(weak, no_valid):
    uv, rel, intrinsics, validity = noisy_scene(40)
    if no_valid:
        validity = np.zeros_like(validity)
    uv_var = tf.Variable(uv.astype(np.float32))
    rel_var = tf.Variable(rel.astype(np.float32))
    with tf.GradientTape() as tape:
        out = reconstruction.reconstruct_absolute(
            uv_var, rel_var, f32(intrinsics), mix_3d_inside_fov=0.5, weak_perspective=weak,
            point_validity_mask=tf.constant(validity), border_factor1=1, border_factor2=0.55,
            mix_based_on_3d=False)
        loss = tf.reduce_sum(tf.square(out - f32(rel + [0.1, 0.0, 4.0])))
    grad_uv, grad_rel = tape.gradient(loss, [uv_var, rel_var])
    assert grad_uv is not None and grad_rel is not None
    assert np.all(np.isfinite(grad_uv.numpy())) and np.all(np.isfinite(grad_rel.numpy()))
    assert np.abs(grad_rel.numpy()).max() > 0


@pytest.mark.parametrize('weak', [False, True])
def test_gradient_matches_finite_differences_float64(weak):
    # The solve is differentiable (t depends on both inputs); check against central differences
    # in float64 on a small configuration, with points inside both FOVs.
    rng = np.random.default_rng(41)
    rel = rng.normal(scale=0.2, size=(1, 6, 3))
    uv = np_project_pose(rel + T_TRUE, K_DEFAULT[None]) + rng.normal(scale=2, size=(1, 6, 2))
    intrinsics = tf.constant(K_DEFAULT[None])
    weights = tf.constant(rng.normal(size=(1, 6, 3)))

    def objective(uv_in, rel_in):
        out = reconstruction.reconstruct_absolute(
            uv_in, rel_in, intrinsics, mix_3d_inside_fov=tf.constant(0.3, tf.float64),
            weak_perspective=weak, border_factor1=-20, border_factor2=-20)
        return tf.reduce_sum(out * weights)

    theoretical, numerical = tf.test.compute_gradient(
        objective, [tf.constant(uv), tf.constant(rel)], delta=1e-6)
    for th, nu in zip(theoretical, numerical):
        np.testing.assert_allclose(th, nu, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('jit_compile', [False, True])
def test_reconstruct_in_tf_function(jit_compile):
    uv, rel, intrinsics, validity = noisy_scene(50)

    def run(uv_in, rel_in, k, valid, mix):
        return [reconstruction.reconstruct_absolute(
            uv_in, rel_in, k, mix_3d_inside_fov=mix, weak_perspective=weak,
            point_validity_mask=valid, border_factor1=1, border_factor2=0.55,
            mix_based_on_3d=based_on_3d)
            for weak in (False, True) for based_on_3d in (False, True)]

    args = (f32(uv), f32(rel), f32(intrinsics), tf.constant(validity),
            f32(np.array([0.3, 0.7]).reshape(2, 1, 1)))
    compiled = tf.function(run, jit_compile=jit_compile)
    eager = run(*args)
    graph = compiled(*args)
    for e, g in zip(eager, graph):
        np.testing.assert_allclose(g.numpy(), e.numpy(), atol=1e-5, rtol=1e-5)
    # No valid point under XLA as well (same signature, no retrace).
    no_valid = (args[0], args[1], args[2], tf.zeros_like(args[3]), args[4])
    for e, g in zip(run(*no_valid), compiled(*no_valid)):
        assert np.all(np.isfinite(g.numpy()))
        np.testing.assert_allclose(g.numpy(), e.numpy(), atol=1e-4, rtol=1e-4)
