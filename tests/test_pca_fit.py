"""Tests of the NumPy PCA fit (nlf_tf.pca_fit), spec pca_loss.md sections 4 and 10."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

from nlf_tf import pca_fit
from nlf_tf.pca_fit import (
    KeypointPCA,
    PCAAssertionError,
    PCAFitResult,
    choose_epsilon,
    choose_num_components,
    empirical_epsilon,
    expand_mirrored_column_matches,
    format_multiview,
    format_singleview,
    labels_from_source,
    nan_covariance,
    nan_mean,
    nan_pca,
)

SV, MV = "pca_singleview", "pca_multiview"


def _labels(n, k, c=2, seed=0, rank=3):
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(3, k * c))
    x = 100.0 + 20.0 * rng.normal(size=(n, 3)) @ basis + rng.normal(size=(n, k * c))
    x = x.astype(np.float32)
    return x.reshape(n, k, c) if rank == 3 else x


# ---------------------------------------------------------------- formatting (cases 1-4)


def test_mean_and_median_centring_by_hand():
    frames = np.array(
        [[(10, 4), (12, 8), (20, 0)], [(0, 0), (3, 3), (3, -3)]], dtype=np.float32
    )
    out = format_singleview(frames, None, "mean").reshape(2, 3, 2)
    np.testing.assert_array_equal(out[0], [(-4, 0), (-2, 4), (6, -4)])
    np.testing.assert_array_equal(out[1], [(-2, 0), (1, 3), (1, -3)])
    med = format_singleview(frames[:1], None, "median").reshape(3, 2)
    np.testing.assert_array_equal(med, [(-2, 0), (0, 4), (8, -4)])  # odd count: centre (12, 4)
    # Flat layout is interleaved (x0, y0, x1, y1, ...).
    np.testing.assert_array_equal(format_singleview(frames, None, None)[0], [10, 4, 12, 8, 20, 0])


def test_median_even_count_and_column_subset():
    frame = np.array([[(1, 5), (2, 7), (10, 1), (4, 0)]], dtype=np.float32)
    out = format_singleview(frame, None, "median").reshape(4, 2)
    np.testing.assert_array_equal(out, frame[0] - np.array([3, 3], np.float32))
    # Centre over the selected columns only, in the given order (duplicates allowed).
    sel = format_singleview(frame, [3, 0, 0], "mean").reshape(3, 2)
    centre = (frame[0, 3] + 2 * frame[0, 0]) / 3
    np.testing.assert_allclose(sel, frame[0, [3, 0, 0]] - centre, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["mean", "median"])
def test_centring_with_nan_erases_frame(method):
    frames = _labels(3, 4)
    frames[1, 2] = np.nan
    out = format_singleview(frames, None, method)
    assert np.isnan(out[1]).all()
    assert np.isfinite(out[[0, 2]]).all()
    np.testing.assert_array_equal(out[[0, 2]], format_singleview(frames[[0, 2]], None, method))


def test_multiview_rearrangement_and_flat_expansion():
    x = np.arange(16, dtype=np.float32).reshape(2, 8)  # 2 frames, 4 keypoints
    out = format_multiview(x.reshape(2, 4, 2), [[0, 1], [2, 3]])
    f0, f1 = x.reshape(2, 4, 2)
    expected = [
        [*f0[0], *f0[2]],  # (f0, p0): view0 kp0, view1 kp2
        [*f0[1], *f0[3]],  # (f0, p1)
        [*f1[0], *f1[2]],
        [*f1[1], *f1[3]],
    ]
    np.testing.assert_array_equal(out, expected)
    assert expand_mirrored_column_matches([0, 1], num_views=2, keypoints_per_view=2) == [[0, 1], [2, 3]]
    assert expand_mirrored_column_matches([0, 1], num_views=2, num_keypoints=4) == [[0, 1], [2, 3]]
    got = expand_mirrored_column_matches([1, 2], num_views=3, keypoints_per_view=5)
    assert got == [[1, 2], [6, 7], [11, 12]] and all(type(i) is int for g in got for i in g)
    with pytest.raises(ValueError, match="evenly"):
        expand_mirrored_column_matches([0], num_views=2, num_keypoints=5)
    with pytest.raises(ValueError, match="list of indices for each mirrored view"):
        expand_mirrored_column_matches([0, 1])
    with pytest.raises(PCAAssertionError, match="same number") as info:
        expand_mirrored_column_matches([[0, 1], [2]])
    assert isinstance(info.value, AssertionError) and isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="num_views=3"):
        expand_mirrored_column_matches([[0], [1]], num_views=3)


# ---------------------------------------------------------------- sample count (case 5)


def test_sample_count_check():
    k = 3  # D = 6
    with pytest.raises(ValueError, match="cannot fit PCA with 5 samples < 6 observation dimensions"):
        KeypointPCA(SV, components_to_keep=2).fit(_labels(2 * k - 1, k))
    res = KeypointPCA(SV, components_to_keep=2).fit(_labels(2 * k, k))  # R = D accepted
    assert res.num_samples == 6 and res.explained_variance[-1] < 1e-6 * res.explained_variance[0]
    # Multiview: N*M rows must be >= 2V columns. 1 frame x 2 parts < 4.
    lab = _labels(1, 4)
    with pytest.raises(ValueError, match="2 samples < 4"):
        KeypointPCA(MV, 3, mirrored_column_matches=[[0, 1], [2, 3]]).fit(lab)
    # All-NaN rows still count towards R.
    lab = _labels(6, 3)
    lab[5] = np.nan
    KeypointPCA(SV, components_to_keep=2, nan_policy="propagate").fit(lab)


# ---------------------------------------------------------------- components (cases 6, 7)


def test_component_choice_rules():
    ratios = np.array([0.5, 0.3, 0.2])
    for thr, k in [(0.0, 1), (0.5, 1), (0.6, 2), (0.8, 2), (0.9, 3), (1.0, 3)]:
        assert choose_num_components(thr, ratios, SV) == k, thr
    assert choose_num_components(3, ratios, SV) == 3
    assert choose_num_components(-2, ratios, SV) == -2  # slice [: -2] keeps D - 2
    for bad in (4, 1.5, -0.2, 3.0):
        with pytest.raises(ValueError, match="components_to_keep"):
            choose_num_components(bad, ratios, SV)
    for bad in (None, True, np.int64(3), np.float64(0.5)):
        with pytest.raises(TypeError, match="components_to_keep"):
            choose_num_components(bad, ratios, SV)
    with pytest.raises(IndexError):  # zero variance: 0/0 ratios never reach the threshold
        choose_num_components(0.9, np.full(3, np.nan), SV)


def test_type_error_comes_after_fit_and_negative_int():
    lab = _labels(20, 4)
    with pytest.raises(TypeError):
        KeypointPCA(SV, components_to_keep=None).fit(lab)
    res = KeypointPCA(SV, components_to_keep=-2).fit(lab)
    assert res.num_components == 6 and res.discarded_eigenvectors.shape == (2, 8)
    res = KeypointPCA(SV, components_to_keep=0).fit(lab)
    assert res.kept_eigenvectors.shape == (0, 8)


def test_multiview_keeps_three_and_warns():
    lab = _labels(10, 6)
    with pytest.warns(UserWarning, match="3 components are kept"):
        res = KeypointPCA(MV, 7.5, mirrored_column_matches=[[0, 1, 2], [3, 4, 5]]).fit(lab)
    assert res.num_components == 3 and res.dim == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = KeypointPCA(MV, 3, mirrored_column_matches=[[0, 1, 2], [3, 4, 5]]).fit(lab)
    assert res.num_components == 3
    # Single view: D = 2 < 3, everything kept, errors about 0.
    res = KeypointPCA(MV, 3, mirrored_column_matches=[[0, 1, 2, 3, 4, 5]]).fit(lab)
    assert res.num_components == 2 and res.empirical_epsilon < 1e-3


# ---------------------------------------------------------------- NaN PCA (cases 8, 9)


def test_nan_mean_and_pairwise_covariance_by_hand():
    x = np.array([[1.0, 2.0], [2.0, np.nan], [3.0, 1.0], [4.0, 5.0], [6.0, 4.0]])
    np.testing.assert_allclose(nan_mean(x), [16 / 5, 3.0], rtol=1e-6)
    assert nan_mean(x).dtype == np.float32
    cov, n = nan_covariance(x)
    m0, m1 = 3.2, 3.0
    c00 = sum((v - m0) ** 2 for v in [1, 2, 3, 4, 6]) / 4
    c11 = sum((v - m1) ** 2 for v in [2, 1, 5, 4]) / 3
    # pairs observed in rows 0, 2, 3, 4; column means are the per-column ones.
    c01 = sum((a - m0) * (b - m1) for a, b in [(1, 2), (3, 1), (4, 5), (6, 4)]) / 3
    np.testing.assert_allclose(cov, [[c00, c01], [c01, c11]], rtol=1e-12)
    np.testing.assert_array_equal(n, [[5, 4], [4, 4]])
    # Without NaN it is the ordinary sample covariance.
    y = np.random.default_rng(1).normal(size=(7, 3))
    np.testing.assert_allclose(nan_covariance(y)[0], np.cov(y, rowvar=False), rtol=1e-12)


def test_sign_rule_and_projector():
    lab = _labels(40, 5, seed=3)
    res = KeypointPCA(SV, components_to_keep=0.9).fit(lab)
    comps = np.concatenate([res.kept_eigenvectors, res.discarded_eigenvectors])
    for row in comps:
        assert row[np.argmax(np.abs(row))] > 0
    np.testing.assert_allclose(comps @ comps.T, np.eye(10), atol=1e-6)
    x = lab.reshape(40, 10).astype(np.float64)
    # Independent float64 route: SVD of the centred data.
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    k = res.num_components
    np.testing.assert_allclose(res.kept_eigenvectors.T @ res.kept_eigenvectors, vt[:k].T @ vt[:k], atol=1e-6)
    np.testing.assert_allclose(res.explained_variance, s**2 / 39, rtol=1e-8)
    np.testing.assert_allclose(res.explained_variance_ratio, s**2 / np.sum(s**2), rtol=1e-8)
    assert k == 1 + np.argmax(np.cumsum(s**2) / np.sum(s**2) >= 0.9)


def test_negative_eigenvalues_clipped_vectors_kept():
    # Pairwise-complete covariance can be indefinite.
    x = np.array(
        [[0, 0, np.nan], [1, 1, np.nan], [np.nan, 0, 0], [np.nan, 1, 1], [0, np.nan, 1], [1, np.nan, 0]],
        dtype=np.float32,
    )
    cov, _ = nan_covariance(x)
    assert np.linalg.eigvalsh(cov).min() < -1e-3
    out = nan_pca(x)
    assert out["explained_variance"].min() == 0.0
    np.testing.assert_allclose(out["components"] @ out["components"].T, np.eye(3), atol=1e-12)


# ---------------------------------------------------------------- epsilon (cases 10, 11)


def test_empirical_epsilon_percentile():
    e = np.arange(101, dtype=np.float32)
    assert empirical_epsilon(e, 90) == 90.0
    e_nan = e.copy()
    e_nan[1::2] = np.nan
    assert empirical_epsilon(e_nan, 90) == 90.0
    assert np.isnan(empirical_epsilon(np.full(5, np.nan, np.float32), 90))
    assert empirical_epsilon(np.array([0.0, 10.0], np.float32), 99.0) == pytest.approx(9.9, abs=1e-5)


def test_epsilon_selection():
    assert choose_epsilon(4.0, None, 2.5) == np.float32(10.0)
    assert choose_epsilon(4.0, 0.7, 2.5) == np.float32(0.7)
    with pytest.raises(TypeError, match="epsilon"):
        choose_epsilon(4.0, [1.0])
    lab = _labels(30, 4, seed=5)
    base = KeypointPCA(SV, components_to_keep=3, empirical_epsilon_percentile=80.0).fit(lab)
    scaled = KeypointPCA(SV, 3, empirical_epsilon_percentile=80.0, empirical_epsilon_multiplier=3.0).fit(lab)
    fixed = KeypointPCA(SV, 3, epsilon=2.5, empirical_epsilon_percentile=10.0,
                        empirical_epsilon_multiplier=9.0).fit(lab)
    assert scaled.empirical_epsilon == base.empirical_epsilon
    assert scaled.epsilon == pytest.approx(3 * base.empirical_epsilon, rel=1e-6)
    assert fixed.epsilon == np.float32(2.5)
    assert np.isfinite(fixed.empirical_epsilon) and fixed.empirical_epsilon < base.empirical_epsilon
    with pytest.raises(TypeError, match="epsilon"):
        KeypointPCA(SV, 3, epsilon=[1.0]).fit(lab)


# ---------------------------------------------------------------- degenerate fits (case 22)


def test_never_labelled_keypoint():
    lab = _labels(20, 4)
    lab[:, 2] = np.nan
    with pytest.raises(ValueError, match="keypoint 2 .*labelled in 0 of 20"):
        KeypointPCA(SV, 3).fit(lab)
    with pytest.warns(RuntimeWarning, match="epsilon is NaN"):
        res = KeypointPCA(SV, 3, nan_policy="propagate").fit(lab)
    assert np.isnan(res.mean[4:6]).all() and np.isfinite(res.mean[[0, 1, 2, 3, 6, 7]]).all()
    assert np.isnan(res.empirical_epsilon) and np.isnan(res.epsilon)
    # Not selected: no problem.
    res = KeypointPCA(SV, 3, columns_for_singleview_pca=[0, 1, 3]).fit(lab)
    assert np.isfinite(res.epsilon)


def test_once_labelled_keypoint():
    lab = _labels(20, 4)
    lab[1:, 1] = np.nan
    with pytest.raises(ValueError, match="keypoint 1 .*labelled in 1 of 20"):
        KeypointPCA(SV, 3).fit(lab)
    with pytest.raises(np.linalg.LinAlgError, match="did not converge"):
        KeypointPCA(SV, 3, nan_policy="propagate").fit(lab)
    # Multiview names the view and the body part.
    lab = _labels(20, 4)
    lab[:, 3] = np.nan
    with pytest.raises(ValueError, match=r"keypoint 3 \(view 1, body part 1"):
        KeypointPCA(MV, 3, mirrored_column_matches=[[0, 1], [2, 3]]).fit(lab)


def test_pairwise_single_overlap():
    lab = _labels(20, 3)
    lab[:10, 0] = np.nan  # keypoint 0 labelled in frames 10..19
    lab[11:, 1] = np.nan  # keypoint 1 labelled in frames 0..10: together only in frame 10
    with pytest.raises(ValueError, match="observed together in 1 training rows"):
        KeypointPCA(SV, 3).fit(lab)
    with pytest.raises(np.linalg.LinAlgError):
        KeypointPCA(SV, 3, nan_policy="propagate").fit(lab)


def test_every_frame_missing_something_with_centring():
    lab = _labels(30, 4)
    lab[np.arange(30), np.arange(30) % 4] = np.nan  # each keypoint often labelled, no full frame
    with pytest.raises(ValueError, match="centring drops every frame"):
        KeypointPCA(SV, 3, centering_method="mean").fit(lab)
    with pytest.warns(RuntimeWarning, match="epsilon is NaN"):
        res = KeypointPCA(SV, 3, centering_method="mean", nan_policy="propagate").fit(lab)
    assert np.isnan(res.epsilon) and np.isnan(res.mean).all()


def test_empirical_epsilon_nan_raise_vs_fixed():
    lab = _labels(30, 4)
    lab[np.arange(30), np.arange(30) % 4] = np.nan  # every row has a NaN
    with pytest.raises(ValueError, match="empirical epsilon is NaN"):
        KeypointPCA(SV, 3).fit(lab)
    res = KeypointPCA(SV, 3, epsilon=1.5).fit(lab)  # fixed epsilon: allowed
    assert res.epsilon == np.float32(1.5) and np.isnan(res.empirical_epsilon)
    assert np.isfinite(res.kept_eigenvectors).all() and np.isfinite(res.mean).all()


def test_constant_data():
    lab = np.tile(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 7.0]], np.float32), (10, 1, 1))
    for policy in ("raise", "propagate"):
        with pytest.raises(IndexError):
            KeypointPCA(SV, 0.9, nan_policy=policy).fit(lab)
    res = KeypointPCA(SV, 2).fit(lab)
    assert res.epsilon == 0.0 and np.all(res.explained_variance == 0)


# ---------------------------------------------------------------- constructor errors


def test_constructor_errors():
    with pytest.raises(ValueError, match="Invalid loss_name: pca_foo"):
        KeypointPCA("pca_foo")
    with pytest.raises(ValueError, match="must provide mirrored_column_matches"):
        KeypointPCA(MV)
    with pytest.raises(AssertionError):
        KeypointPCA(MV, mirrored_column_matches=[[0, 1], [2]])
    with pytest.raises(ValueError, match="mirrored view"):
        KeypointPCA(MV, mirrored_column_matches=[0, 1])
    with pytest.raises(ValueError, match="coords_dim=2"):
        KeypointPCA(MV, mirrored_column_matches=[[0], [1]], coords_dim=3)
    with pytest.raises(ValueError, match="nan_policy"):
        KeypointPCA(SV, nan_policy="omit")
    with pytest.raises(ValueError, match="coords_dim"):
        KeypointPCA(SV, coords_dim=4)
    lab = _labels(20, 4)
    with pytest.raises(IndexError, match="out of bounds"):
        KeypointPCA(SV, 2, columns_for_singleview_pca=[0, 4]).fit(lab)
    with pytest.raises(IndexError, match="out of bounds"):
        KeypointPCA(MV, 3, mirrored_column_matches=[[0, 1], [2, 9]]).fit(lab)
    with pytest.raises(NotImplementedError, match="centering_method"):
        KeypointPCA(SV, 2, centering_method="mode").fit(lab)
    with pytest.raises(ValueError, match="coords_dim=3"):
        KeypointPCA(SV, 2, coords_dim=3).fit(lab)
    with pytest.raises(ValueError, match="coords_dim=3"):
        KeypointPCA(SV, 2, coords_dim=3).fit(lab.reshape(20, 8))


def test_columns_numpy_rules():
    lab = _labels(30, 5)
    res = KeypointPCA(SV, 2, columns_for_singleview_pca=[-1, 0, 0]).fit(lab)
    assert res.columns == [4, 0, 0] and res.dim == 6
    x = format_singleview(lab, [4, 0, 0], None)
    np.testing.assert_allclose(res.mean, np.mean(x, 0), rtol=1e-6)


def test_flat_multiview_matches_in_fit():
    lab = _labels(12, 6)
    a = KeypointPCA(MV, 3, mirrored_column_matches=[0, 1], num_views=3, keypoints_per_view=2).fit(lab)
    assert a.matches == [[0, 1], [2, 3], [4, 5]]
    b = KeypointPCA(MV, 3, mirrored_column_matches=[0, 1], num_views=3).fit(lab)  # 6 // 3 = 2
    c = KeypointPCA(MV, 3, mirrored_column_matches=[[0, 1], [2, 3], [4, 5]]).fit(lab)
    assert b.matches == c.matches == a.matches
    np.testing.assert_array_equal(b.mean, a.mean)
    np.testing.assert_array_equal(c.kept_eigenvectors, a.kept_eigenvectors)
    assert c.num_samples == 24


# ---------------------------------------------------------------- permutation (case 18)


def test_row_permutation_invariance():
    lab = _labels(40, 5, seed=7)
    lab[3, 1] = np.nan
    res = KeypointPCA(SV, 0.95, centering_method="median").fit(lab)
    perm = np.random.default_rng(0).permutation(40)
    res_p = KeypointPCA(SV, 0.95, centering_method="median").fit(lab[perm])
    assert res.num_components == res_p.num_components
    np.testing.assert_allclose(res.mean, res_p.mean, atol=1e-5)
    proj = res.kept_eigenvectors.T @ res.kept_eigenvectors
    proj_p = res_p.kept_eigenvectors.T @ res_p.kept_eigenvectors
    np.testing.assert_allclose(proj, proj_p, atol=1e-5)
    assert res.epsilon == pytest.approx(res_p.epsilon, abs=1e-4)


# ---------------------------------------------------------------- sources and records


def test_labels_from_source_variants():
    lab = _labels(10, 3)
    np.testing.assert_array_equal(labels_from_source(lab), lab)
    np.testing.assert_array_equal(labels_from_source(tf.constant(lab.reshape(10, 6))), lab.reshape(10, 6))
    assert labels_from_source(lab.astype(np.float64)).dtype == np.float32
    np.testing.assert_array_equal(labels_from_source({"kp": lab}, "kp"), lab)
    ds = tf.data.Dataset.from_tensor_slices(lab)  # unbatched (K, C) frames
    np.testing.assert_array_equal(labels_from_source(ds), lab)
    np.testing.assert_array_equal(labels_from_source(ds.batch(4)), lab)  # batched (B, K, C)
    flat = tf.data.Dataset.from_tensor_slices(lab.reshape(10, 6))
    np.testing.assert_array_equal(labels_from_source(flat), lab.reshape(10, 6))  # (C*K,) frames
    np.testing.assert_array_equal(labels_from_source(flat.batch(3)), lab.reshape(10, 6))
    dicts = tf.data.Dataset.from_tensor_slices({"image": np.zeros((10, 2)), "keypoints": lab}).batch(4)
    np.testing.assert_array_equal(labels_from_source(dicts, key="keypoints"), lab)
    with pytest.raises(ValueError, match="key="):
        labels_from_source(dicts)
    with pytest.raises(KeyError, match="coords"):
        labels_from_source(dicts, key="coords")
    tuples = tf.data.Dataset.from_tensor_slices((np.zeros((10, 2)), lab))
    np.testing.assert_array_equal(labels_from_source(tuples, key=1), lab)
    with pytest.raises(ValueError, match="tuples"):
        labels_from_source(tuples)
    # One-keypoint layout needs batched= explicitly.
    one = tf.data.Dataset.from_tensor_slices(lab[:, :1].reshape(10, 2)).batch(5)
    assert labels_from_source(one, batched=True).shape == (10, 2)
    with pytest.raises(ValueError, match="no elements"):
        labels_from_source(ds.take(0))
    with pytest.raises(AssertionError, match="None"):
        labels_from_source(None)
    with pytest.raises(ValueError, match="shape"):
        labels_from_source(np.zeros(5))
    # The fit accepts datasets directly.
    a = KeypointPCA(SV, 2).fit(ds.batch(3))
    b = KeypointPCA(SV, 2).fit(lab)
    np.testing.assert_array_equal(a.mean, b.mean)


def test_fit_result_dict_round_trip():
    res = KeypointPCA(SV, 2, columns_for_singleview_pca=[2, 0], centering_method="mean").fit(_labels(20, 3))
    back = PCAFitResult.from_dict(res.to_dict())
    for f in ("mean", "kept_eigenvectors", "discarded_eigenvectors", "explained_variance_ratio"):
        np.testing.assert_array_equal(getattr(back, f), getattr(res, f))
    assert (back.epsilon, back.columns, back.centering_method, back.num_keypoints) == (
        res.epsilon, [2, 0], "mean", 3)
    bad = res.to_dict()
    bad["columns"] = [0]
    with pytest.raises(ValueError, match="columns"):
        PCAFitResult.from_dict(bad)
    assert set(res.parameters) == {"mean", "kept_eigenvectors", "discarded_eigenvectors", "epsilon"}


def test_3d_fit():
    lab = _labels(30, 4, c=3, seed=2)
    res = KeypointPCA(SV, 3, coords_dim=3, centering_method="mean").fit(lab)
    assert res.dim == 12 and res.num_components == 3
    data = format_singleview(lab, None, "mean")
    errs = pca_fit.reprojection_error(data, res.mean, res.kept_eigenvectors, 3)
    assert errs.shape == (30, 4)
    np.testing.assert_allclose(res.empirical_epsilon, np.percentile(errs, 99.0), rtol=1e-6)
