"""Tests of the Keras PCA loss (nlf_tf.pca_loss), spec pca_loss.md sections 5 and 10.

lightning-pose (torch) is not installed here, so parity (spec case 23) is checked against
an independent, deliberately plain NumPy float64 reimplementation of the fit and loss
written from the spec (``Ref*`` below), on random configurations.
"""

import json
import math
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from nlf_tf import pca_fit
from nlf_tf.pca_loss import PCALoss, safe_norm

SV, MV = "pca_singleview", "pca_multiview"


# ======================================================================================
# Independent NumPy reference (loops, float64), written from the spec
# ======================================================================================


def ref_centre(points, method):
    """points: list of (C,) arrays -> centre (C,), NaN-propagating."""
    dim = len(points[0])
    centre = []
    for c in range(dim):
        vals = [float(p[c]) for p in points]
        if any(math.isnan(v) for v in vals):
            centre.append(math.nan)
        elif method == "mean":
            centre.append(sum(vals) / len(vals))
        else:
            s = sorted(vals)
            n = len(s)
            centre.append(s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2]))
    return centre


def ref_format(flat, cfg):
    """flat: (N, C*K) -> list of rows (formatted vectors), float64."""
    c_dim = cfg["coords_dim"]
    k = flat.shape[1] // c_dim
    rows = []
    for frame in np.asarray(flat, np.float64):
        pts = [frame[c_dim * i: c_dim * (i + 1)] for i in range(k)]
        if cfg["loss_name"] == SV:
            cols = cfg["columns"] if cfg["columns"] is not None else range(k)
            sel = [pts[i if i >= 0 else k + i] for i in cols]
            centre = ref_centre(sel, cfg["centering"]) if cfg["centering"] else [0.0] * c_dim
            rows.append([p[c] - centre[c] for p in sel for c in range(c_dim)])
        else:
            matches = cfg["matches"]
            for m in range(len(matches[0])):
                rows.append([pts[matches[v][m]][c] for v in range(len(matches)) for c in range(2)])
    return np.array(rows, dtype=np.float64)


def ref_percentile(values, pct):
    vals = sorted(v for v in values if not math.isnan(v))
    if not vals:
        return math.nan
    pos = pct / 100.0 * (len(vals) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (pos - lo) * (vals[hi] - vals[lo])


def ref_errors(x, mu, w, c_dim):
    proj = w.T @ w
    out = np.zeros((x.shape[0], x.shape[1] // c_dim))
    for r in range(x.shape[0]):
        d = x[r] - mu
        res = d - proj @ d
        for j in range(out.shape[1]):
            out[r, j] = math.sqrt(sum(res[c_dim * j + c] ** 2 for c in range(c_dim)))
    return out


class RefPCA:
    def __init__(self, labels_flat, cfg):
        self.cfg = cfg
        x = ref_format(labels_flat, cfg)
        r, d = x.shape
        assert r >= d
        obs = ~np.isnan(x)
        self.mu = np.array([x[obs[:, j], j].mean() if obs[:, j].any() else np.nan for j in range(d)])
        cov = np.zeros((d, d))
        for i in range(d):
            for j in range(d):
                both = obs[:, i] & obs[:, j]
                s = sum((x[q, i] - self.mu[i]) * (x[q, j] - self.mu[j]) for q in np.where(both)[0])
                cov[i, j] = s / (both.sum() - 1)
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(-evals, kind="stable")
        evals = np.maximum(evals[order], 0.0)
        comps = evecs[:, order].T
        for row in comps:
            pivot = int(np.argmax(np.abs(row)))
            if row[pivot] < 0:
                row *= -1
        ratio = evals / evals.sum()
        ctk = cfg["components_to_keep"]
        if cfg["loss_name"] == MV:
            k = min(3, d)
        elif isinstance(ctk, int):
            k = ctk if ctk >= 0 else d + ctk
        elif ctk == 1.0:
            k = d
        else:
            cum = 0.0
            for i, v in enumerate(ratio):
                cum += v
                if cum >= ctk:
                    k = i + 1
                    break
        self.k, self.w, self.ratio = k, comps[:k], ratio
        errs = ref_errors(x, self.mu, self.w, cfg["coords_dim"])
        self.eps_emp = ref_percentile(errs.ravel().tolist(), cfg["percentile"])
        self.eps = cfg["epsilon"] if cfg["epsilon"] is not None else self.eps_emp * cfg["multiplier"]

    def errors(self, preds_flat):
        return ref_errors(ref_format(preds_flat, self.cfg), self.mu, self.w, self.cfg["coords_dim"])

    def loss(self, preds_flat, nan_as_zero=False):
        rect = [0.0 if e <= self.eps else e - self.eps for e in self.errors(preds_flat).ravel()]
        total = sum(0.0 if (nan_as_zero and math.isnan(v)) else v for v in rect)
        return total / len(rect)

    def grad_fd(self, preds_flat, h=1e-4):
        p = np.asarray(preds_flat, np.float64)
        g = np.zeros_like(p)
        for idx in np.ndindex(*p.shape):
            if math.isnan(p[idx]):
                continue
            up, dn = p.copy(), p.copy()
            up[idx] += h
            dn[idx] -= h
            g[idx] = (self.loss(up, True) - self.loss(dn, True)) / (2 * h)
        return g


def make_layer(labels, cfg, **extra):
    kwargs = dict(
        components_to_keep=cfg["components_to_keep"],
        empirical_epsilon_percentile=cfg["percentile"],
        epsilon=cfg["epsilon"],
        empirical_epsilon_multiplier=cfg["multiplier"],
        data_module=labels,
        nan_policy=cfg.get("nan_policy", "propagate"),
        coords_dim=cfg["coords_dim"],
    )
    if cfg["loss_name"] == SV:
        kwargs.update(columns_for_singleview_pca=cfg["columns"], centering_method=cfg["centering"])
    else:
        kwargs.update(mirrored_column_matches=cfg.get("matches_arg", cfg["matches"]),
                      num_views=cfg.get("num_views"))
    kwargs.update(extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return PCALoss(cfg["loss_name"], **kwargs)


def sv_cfg(**kw):
    cfg = dict(loss_name=SV, coords_dim=2, columns=None, centering=None, components_to_keep=3,
               percentile=99.0, epsilon=None, multiplier=1.0)
    cfg.update(kw)
    return cfg


# ======================================================================================
# Data generators
# ======================================================================================


def sv_data(rng, n, k, c_dim=2):
    """Poses with a well-separated spectrum (distinct eigenvalues)."""
    d = k * c_dim
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    scales = 25.0 * 0.7 ** np.arange(d)
    base = 120.0 + 30.0 * rng.normal(size=d)
    return lambda m: (base + (rng.normal(size=(m, d)) * scales) @ q.T).astype(np.float32)


def mv_data(rng, n_views, k_per_view):
    """Affine cameras looking at 3D parts, plus view-specific extra keypoints and noise."""
    cams = [(rng.normal(size=(2, 3)) * 3.0, 100.0 + 20.0 * rng.normal(size=2)) for _ in range(n_views)]

    def gen(m):
        pts3d = rng.normal(size=(m, k_per_view, 3)) * 10.0
        views = [pts3d @ a.T + b for a, b in cams]
        out = np.concatenate(views, axis=1) + 0.3 * rng.normal(size=(m, n_views * k_per_view, 2))
        return out.reshape(m, -1).astype(np.float32)

    return gen


def random_case(seed):
    rng = np.random.default_rng(seed)
    cfg = dict(percentile=float(rng.choice([50.0, 90.0, 99.0])),
               epsilon=None if rng.random() < 0.75 else 0.5,
               multiplier=float(rng.choice([1.0, 0.5, 2.0])))
    if rng.random() < 0.65:
        c_dim = 3 if rng.random() < 0.25 else 2
        k = int(rng.integers(3, 6))
        gen = sv_data(rng, 0, k, c_dim)
        cols = None
        dup = 0
        if rng.random() < 0.5:
            cols = [int(i) for i in rng.permutation(k)[: int(rng.integers(2, k + 1))]]
            if rng.random() < 0.3:
                cols[0] = cols[0] - k  # a negative index
            if rng.random() < 0.3:
                cols.append(cols[-1])  # a duplicate
                dup = 1
        centering = [None, "mean", "median"][int(rng.integers(3))]
        d = c_dim * len(cols if cols is not None else range(k))
        zeros = c_dim * dup + (c_dim if centering == "mean" else 0)  # structural zero eigenvalues
        options = [1, 2, 3, d, 0.5, 0.8, 0.95, 1.0]
        if zeros == 0:
            options.append(-1)
        ctk = options[int(rng.integers(len(options)))]
        if isinstance(ctk, int) and 0 < ctk < d:
            ctk = min(ctk, d - zeros)
        cfg.update(loss_name=SV, coords_dim=c_dim, columns=cols, centering=centering,
                   components_to_keep=ctk)
    else:
        n_views, kpv = int(rng.integers(2, 4)), int(rng.integers(2, 5))
        gen = mv_data(rng, n_views, kpv)
        parts = sorted(int(i) for i in rng.permutation(kpv)[: int(rng.integers(2, kpv + 1))])
        matches = [[v * kpv + p for p in parts] for v in range(n_views)]
        cfg.update(loss_name=MV, coords_dim=2, matches=matches,
                   components_to_keep=float(rng.choice([3, 0.95, 7.5])))
        if rng.random() < 0.5:
            cfg.update(matches_arg=parts, num_views=n_views)  # flat per-view layout
    labels = gen(48)
    width = labels.shape[1] // cfg["coords_dim"]
    if rng.random() < 0.4:  # missing labels, a few frames
        for f in rng.choice(48, size=4, replace=False):
            kp = int(rng.integers(width))
            labels[f, cfg["coords_dim"] * kp: cfg["coords_dim"] * (kp + 1)] = np.nan
    preds = gen(5) + rng.normal(size=(5, labels.shape[1])).astype(np.float32) * 4.0
    if rng.random() < 0.3:
        kp = int(rng.integers(width))
        preds[2, cfg["coords_dim"] * kp: cfg["coords_dim"] * (kp + 1)] = np.nan
    return cfg, labels, preds


def tf_loss_and_grad(layer, preds):
    p = tf.constant(preds)
    with tf.GradientTape() as tape:
        tape.watch(p)
        loss, logs = layer(p, stage="train")
    return loss.numpy(), tape.gradient(loss, p).numpy(), logs


# ======================================================================================
# Case 23 substitute: random configurations against the reference
# ======================================================================================


@pytest.mark.parametrize("seed", range(20))
def test_matches_reference_on_random_configurations(seed):
    cfg, labels, preds = random_case(seed)
    ref = RefPCA(labels, cfg)
    layer = make_layer(labels, cfg)
    fit = layer.fit_result

    assert fit.num_components == ref.k
    np.testing.assert_allclose(fit.mean, ref.mu, rtol=0, atol=1e-3, equal_nan=True)
    w = fit.kept_eigenvectors.astype(np.float64)
    np.testing.assert_allclose(w.T @ w, ref.w.T @ ref.w, rtol=0, atol=1e-4)
    np.testing.assert_allclose(fit.explained_variance_ratio, ref.ratio, rtol=0, atol=1e-6)
    assert float(fit.empirical_epsilon) == pytest.approx(ref.eps_emp, abs=1e-3)
    assert float(layer.epsilon.numpy()) == pytest.approx(ref.eps, abs=1e-3)

    errs = layer.per_keypoint_error(tf.constant(preds)).numpy()
    ref_errs = ref.errors(preds)
    np.testing.assert_array_equal(np.isnan(errs), np.isnan(ref_errs))
    np.testing.assert_allclose(errs, ref_errs, rtol=0, atol=1e-3, equal_nan=True)

    loss, grad, _ = tf_loss_and_grad(layer, preds)
    ref_loss = ref.loss(preds)
    if math.isnan(ref_loss):
        assert np.isnan(loss)
    else:
        assert loss == pytest.approx(ref_loss, abs=1e-4)

    # NaN gradient exactly where the prediction row is NaN (entries that enter that row).
    nan_rows = np.isnan(ref_errs).any(axis=1)
    expected_nan = np.zeros(preds.shape, bool)
    c_dim = cfg["coords_dim"]
    k = preds.shape[1] // c_dim
    if cfg["loss_name"] == SV:
        cols = [i % k for i in (cfg["columns"] if cfg["columns"] is not None else range(k))]
        for b in np.where(nan_rows)[0]:
            for i in cols:
                expected_nan[b, c_dim * i: c_dim * (i + 1)] = True
    else:
        m_count = len(cfg["matches"][0])
        for row in np.where(nan_rows)[0]:
            b, m = divmod(row, m_count)
            for lst in cfg["matches"]:
                expected_nan[b, 2 * lst[m]: 2 * lst[m] + 2] = True
    np.testing.assert_array_equal(np.isnan(grad), expected_nan)
    if ref.k < ref.w.shape[1]:  # with k = D the residuals are float32 rounding noise
        fd = ref.grad_fd(preds)
        np.testing.assert_allclose(grad[~expected_nan], fd[~expected_nan], rtol=0, atol=2e-5)


def _check_against_reference(cfg, labels, preds):
    ref = RefPCA(labels, cfg)
    layer = make_layer(labels, cfg)
    assert layer.fit_result.num_components == ref.k
    w = layer.kept_eigenvectors.numpy().astype(np.float64)
    np.testing.assert_allclose(w.T @ w, ref.w.T @ ref.w, rtol=0, atol=1e-4)
    assert float(layer.epsilon.numpy()) == pytest.approx(ref.eps, abs=1e-3)
    np.testing.assert_allclose(layer.per_keypoint_error(preds).numpy(), ref.errors(preds), atol=1e-3)
    loss, grad, _ = tf_loss_and_grad(layer, preds)
    assert loss == pytest.approx(ref.loss(preds), abs=1e-4)
    np.testing.assert_allclose(grad, ref.grad_fd(preds), rtol=0, atol=2e-5)
    return ref, layer


@pytest.mark.parametrize(
    "cfg",
    [
        sv_cfg(columns=[-1, 0, 2, 2], centering="mean", components_to_keep=3, percentile=90.0),
        sv_cfg(components_to_keep=-1, percentile=60.0, multiplier=0.5),
        sv_cfg(columns=[4, 1, 3], components_to_keep=0.99, percentile=30.0),
        sv_cfg(centering="median", components_to_keep=0.0, percentile=75.0),
        sv_cfg(centering="mean", components_to_keep=0, epsilon=3.0),
    ],
)
def test_matches_reference_on_fixed_configurations(cfg):
    rng = np.random.default_rng(123)
    gen = sv_data(rng, 0, 5)
    labels = gen(40)
    labels[[3, 17], 2:4] = np.nan
    preds = gen(4) + rng.normal(size=(4, 10)).astype(np.float32) * 4.0
    ref, _ = _check_against_reference(cfg, labels, preds)
    assert 0 < ref.loss(preds)


# ======================================================================================
# Spec section 10 cases on the layer
# ======================================================================================


@pytest.fixture(scope="module")
def sv_gen():
    return sv_data(np.random.default_rng(42), 0, 4)


def test_layer_formatting_by_hand():
    labels = sv_data(np.random.default_rng(0), 0, 3)(20)
    frames = np.array([[10, 4, 12, 8, 20, 0], [0, 0, 3, 3, 3, -3]], np.float32)
    mean_layer = make_layer(labels, sv_cfg(centering="mean", components_to_keep=2))
    out = mean_layer.format_predictions(frames).numpy().reshape(2, 3, 2)
    np.testing.assert_array_equal(out[0], [(-4, 0), (-2, 4), (6, -4)])
    np.testing.assert_array_equal(out[1], [(-2, 0), (1, 3), (1, -3)])
    med_layer = make_layer(labels, sv_cfg(centering="median", components_to_keep=2))
    out = med_layer.format_predictions(frames[:1].reshape(1, 3, 2)).numpy().reshape(3, 2)
    np.testing.assert_array_equal(out, [(-2, 0), (0, 4), (8, -4)])
    # Even count: x = 1, 2, 10, 4 and y = 5, 7, 1, 0 give the centre (3, 3).
    labels4 = sv_data(np.random.default_rng(1), 0, 4)(20)
    even = make_layer(labels4, sv_cfg(centering="median", components_to_keep=2))
    frame = np.array([[1, 5, 2, 7, 10, 1, 4, 0]], np.float32)
    np.testing.assert_array_equal(even.format_predictions(frame).numpy(), frame - 3.0)
    # NaN keypoint: that frame all NaN, the other unchanged.
    two = np.concatenate([frame, frame + 1.0])
    two[0, 2] = np.nan  # one coordinate: only x of that frame's centre is NaN
    out = even.format_predictions(two).numpy()
    assert np.isnan(out[0, 0::2]).all() and np.isfinite(out[0, 1::2]).all()
    two[0, 3] = np.nan  # a missing keypoint (x and y): the whole frame is NaN
    out = even.format_predictions(two).numpy()
    assert np.isnan(out[0]).all()
    np.testing.assert_array_equal(out[1], frame[0] - 3.0)  # (frame + 1) - (3 + 1)


def test_layer_multiview_rows():
    gen = mv_data(np.random.default_rng(3), 2, 2)
    layer = make_layer(gen(10), dict(loss_name=MV, coords_dim=2, matches=[[0, 1], [2, 3]],
                                     components_to_keep=3, percentile=99.0, epsilon=None,
                                     multiplier=1.0))
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    out = layer.format_predictions(x).numpy()
    np.testing.assert_array_equal(out, [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]])
    assert layer.per_keypoint_error(x).shape == (4, 2)


def test_zero_loss_and_zero_gradient_in_subspace(sv_gen):
    layer = make_layer(sv_gen(40), sv_cfg(components_to_keep=3, epsilon=0.0))
    mu = layer.mean.numpy()
    w = layer.kept_eigenvectors.numpy()
    preds = np.stack([mu, mu + 5.0 * w[0] - 3.0 * w[2], mu + 2.0 * w[1]]).astype(np.float32)
    loss, grad, _ = tf_loss_and_grad(layer, preds)
    assert abs(loss) < 1e-4 and np.isfinite(grad).all()
    np.testing.assert_array_equal(grad[0], 0.0)  # mu itself: residual exactly 0
    # The norm itself: exactly-zero residual gives gradient 0, not NaN (tf.norm gives NaN).
    x = tf.constant(np.stack([mu, mu]))
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(layer.compute_loss(x))
    g = tape.gradient(total, x).numpy()
    assert total.numpy() == 0.0
    np.testing.assert_array_equal(g, 0.0)
    z = tf.zeros((2, 3))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z)
        a = tf.reduce_sum(safe_norm(z))
        b = tf.reduce_sum(tf.norm(z, axis=-1))
    np.testing.assert_array_equal(tape.gradient(a, z).numpy(), 0.0)
    assert np.isnan(tape.gradient(b, z).numpy()).all()
    v = tf.constant([[3.0, 4.0]])
    with tf.GradientTape() as tape:
        tape.watch(v)
        n = safe_norm(v)
    np.testing.assert_allclose(tape.gradient(n, v).numpy(), [[0.6, 0.8]], rtol=1e-6)


def test_one_displaced_keypoint(sv_gen):
    layer = make_layer(sv_gen(40), sv_cfg(components_to_keep=2, epsilon=0.25))
    mu = layer.mean.numpy()
    preds = np.stack([mu, mu]).astype(np.float32)
    preds[1, 2:4] += np.array([6.0, -8.0], np.float32)  # keypoint 1 by 10 px
    errs = layer.per_keypoint_error(preds).numpy()
    assert (errs[1] > 0.1).sum() >= 2  # the projection couples keypoints
    assert errs[0].max() < 1e-4
    w = layer.kept_eigenvectors.numpy().astype(np.float64)
    res = (np.eye(8) - w.T @ w) @ (preds[1] - mu).astype(np.float64)
    np.testing.assert_allclose(errs[1], np.linalg.norm(res.reshape(4, 2), axis=1), atol=1e-4)
    loss, _, _ = tf_loss_and_grad(layer, preds)
    assert loss == pytest.approx(np.maximum(errs - 0.25, 0).sum() / 8, rel=1e-6)


def test_nan_predictions_parity(sv_gen):
    layer = make_layer(sv_gen(40), sv_cfg(components_to_keep=2))
    preds = sv_gen(3)
    preds[1, 5] = np.nan
    errs = layer.per_keypoint_error(preds).numpy()
    assert np.isnan(errs[1]).all() and np.isfinite(errs[[0, 2]]).all()
    loss, grad, _ = tf_loss_and_grad(layer, preds)
    assert np.isnan(loss)
    assert np.isnan(grad[1]).all() and np.isfinite(grad[[0, 2]]).all()


def test_weight_and_log_names(sv_gen):
    labels = sv_gen(30)
    expected = {0.0: 0.5, 11.0: 8.3508e-6, -2.0: 3.6945, 5.0: 3.369e-3, 10.7: 1.127e-5}
    for lw, wt in expected.items():
        layer = make_layer(labels, sv_cfg(), log_weight=lw)
        assert layer.weight.dtype == tf.float32
        assert float(layer.weight) == pytest.approx(wt, rel=5e-4)
        assert layer.weight.numpy() == np.float32(1) / (np.float32(2) * np.exp(np.float32(lw)))
    preds = sv_gen(4)
    loss, logs = layer(preds, stage="train")
    assert [d["name"] for d in logs] == ["train_pca_singleview_loss", "pca_singleview_weight"]
    assert logs[0]["prog_bar"] is True and "prog_bar" not in logs[1]
    assert float(logs[0]["value"]) == float(loss)
    assert float(logs[1]["value"]) == float(layer.weight)
    assert layer(preds)[1][0]["name"] == "None_pca_singleview_loss"
    # Extra keyword arguments from a loss factory are ignored.
    same = layer(preds, stage="val", heatmaps_pred=tf.zeros((4, 2)), confidences=None)
    assert float(same[0]) == float(loss) and same[1][0]["name"] == "val_pca_singleview_loss"
    # The loss is unweighted: changing log_weight does not change it.
    other = make_layer(labels, sv_cfg(), log_weight=0.0)
    assert float(other(preds)[0]) == float(loss)
    assert layer.remove_nans(x=1) is None
    assert PCALoss.LOSS_NAME_SINGLEVIEW == SV and PCALoss.LOSS_NAME_MULTIVIEW == MV


@pytest.mark.parametrize("centering", ["mean", "median"])
def test_centring_gradients_against_reference(centering, sv_gen):
    labels = sv_gen(40)
    cfg = sv_cfg(centering=centering, components_to_keep=2, epsilon=0.0)
    ref = RefPCA(labels, cfg)
    layer = make_layer(labels, cfg)
    preds = sv_gen(3) + np.random.default_rng(5).normal(size=(3, 8)).astype(np.float32) * 3
    loss, grad, _ = tf_loss_and_grad(layer, preds)
    assert loss == pytest.approx(ref.loss(preds), abs=1e-4)
    np.testing.assert_allclose(grad, ref.grad_fd(preds), rtol=0, atol=2e-5)
    # Translation: with centring the loss does not move.
    moved = preds + np.array([37.0, -12.0] * 4, np.float32)
    assert float(layer(moved)[0]) == pytest.approx(float(loss), abs=1e-4)


def test_translation_changes_loss_without_centring(sv_gen):
    layer = make_layer(sv_gen(40), sv_cfg(components_to_keep=2, epsilon=0.0))
    preds = sv_gen(3)
    moved = preds + np.array([37.0, -12.0] * 4, np.float32)
    assert abs(float(layer(moved)[0]) - float(layer(preds)[0])) > 1.0


def test_epsilon_matches_layer_errors_on_training_data(sv_gen):
    labels = sv_gen(50)
    layer = make_layer(labels, sv_cfg(components_to_keep=3, percentile=80.0, centering="median"))
    errs = layer.per_keypoint_error(labels).numpy()
    assert float(layer.empirical_epsilon.numpy()) == pytest.approx(np.percentile(errs, 80.0), abs=1e-5)
    # The stored arrays equal the KeypointPCA fit.
    np.testing.assert_array_equal(layer.mean.numpy(), layer.pca.parameters["mean"])


def test_components_zero_distance_from_mean_pose(sv_gen):
    labels = sv_gen(30)
    layer = make_layer(labels, sv_cfg(components_to_keep=0))
    assert layer.kept_eigenvectors.shape == (0, 8)
    preds = sv_gen(2)
    d = (preds - layer.mean.numpy()).reshape(2, 4, 2)
    np.testing.assert_allclose(layer.per_keypoint_error(preds).numpy(), np.linalg.norm(d, axis=-1), rtol=1e-6)


def test_single_frame_and_input_shapes(sv_gen):
    layer = make_layer(sv_gen(30), sv_cfg(columns=[0, 2, 3]))
    p = sv_gen(1)
    a = float(layer(p)[0])
    b = float(layer(p.reshape(1, 4, 2))[0])
    assert a == b and np.isfinite(a)
    with pytest.raises(ValueError, match=r"\(B, 8\) or \(B, 4, 2\)"):
        layer(np.zeros((1, 6), np.float32))
    with pytest.raises(AssertionError, match="formatted"):
        layer.compute_loss(tf.constant(p))  # unformatted (B, 2K) with a column subset


# ---------------------------------------------------------------- constructor errors


def test_layer_constructor_errors(sv_gen):
    labels = sv_gen(30)
    with pytest.raises(ValueError, match="Invalid loss_name: pca"):
        PCALoss("pca")  # checked before data_module
    with pytest.raises(ValueError, match="must provide mirrored_column_matches"):
        PCALoss(MV, data_module=labels)
    with pytest.raises(AssertionError, match="data_module"):
        PCALoss(SV)
    with pytest.raises(AssertionError, match="same number"):
        PCALoss(MV, mirrored_column_matches=[[0, 1], [2]], data_module=labels)
    with pytest.raises(ValueError, match="mirrored view"):
        PCALoss(MV, mirrored_column_matches=[0, 1], data_module=labels)
    with pytest.raises(ValueError, match="coords_dim=2"):
        PCALoss(MV, mirrored_column_matches=[[0], [1]], data_module=labels, coords_dim=3)
    with pytest.raises(ValueError, match="exceeds"):
        PCALoss(SV, components_to_keep=9, data_module=labels)
    with pytest.raises(TypeError, match="components_to_keep"):
        PCALoss(SV, components_to_keep=None, data_module=labels)
    with pytest.raises(TypeError, match="epsilon"):
        PCALoss(SV, epsilon=[0.5], data_module=labels)
    with pytest.raises(IndexError):
        PCALoss(SV, columns_for_singleview_pca=[0, 7], data_module=labels)
    layer = PCALoss(SV, data_module=labels, device="cuda:0", foo=1, heatmaps=None, name="pca_sv")
    assert layer.name == "pca_sv" and layer.device == "cuda:0"
    with pytest.raises(ValueError, match="not both"):
        PCALoss(SV, data_module=labels, fitted_params=layer.fit_result.to_dict())
    with pytest.raises(ValueError, match="centering_method"):
        PCALoss(SV, centering_method="mean", fitted_params=layer.fit_result.to_dict())


def test_multiview_warning_from_layer():
    gen = mv_data(np.random.default_rng(4), 2, 3)
    with pytest.warns(UserWarning, match="3 components"):
        layer = PCALoss(MV, mirrored_column_matches=[[0, 1, 2], [3, 4, 5]], data_module=gen(10))
    assert layer.fit_result.num_components == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PCALoss(MV, components_to_keep=3, mirrored_column_matches=[0, 1, 2], num_views=2,
                data_module=gen(10))


def test_nan_policy_in_layer(sv_gen):
    labels = sv_gen(30)
    labels[:, 2:4] = np.nan
    with pytest.raises(ValueError, match="keypoint 1"):
        PCALoss(SV, components_to_keep=2, data_module=labels)
    with pytest.warns(RuntimeWarning):
        layer = PCALoss(SV, components_to_keep=2, data_module=labels, nan_policy="propagate")
    assert np.isnan(float(layer(sv_gen(2))[0]))
    with pytest.raises(ValueError, match="nan_policy"):
        PCALoss(SV, data_module=sv_gen(30), nan_policy="ignore")


def test_dataset_source_with_key(sv_gen):
    labels = sv_gen(30)
    ds = tf.data.Dataset.from_tensor_slices({"kp": labels.reshape(30, 4, 2), "w": np.ones(30)}).batch(7)
    a = PCALoss(SV, components_to_keep=2, data_module=ds, data_key="kp")
    b = PCALoss(SV, components_to_keep=2, data_module=labels)
    np.testing.assert_array_equal(a.mean.numpy(), b.mean.numpy())
    assert float(a.epsilon.numpy()) == float(b.epsilon.numpy())


# ---------------------------------------------------------------- serialisation (case 19)


@keras.saving.register_keras_serializable(package="nlf_tf_tests")
class _ModelWithPCA(keras.Model):
    def __init__(self, pca_loss, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(units, kernel_initializer="identity", bias_initializer="zeros")
        self.pca_loss = pca_loss

    def call(self, x):
        return self.pca_loss(self.dense(x), stage="train")[0]

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "pca_loss": keras.saving.serialize_keras_object(self.pca_loss)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["pca_loss"] = keras.saving.deserialize_keras_object(config["pca_loss"])
        return cls(**config)


def _forbid_refit(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("refit during deserialisation")

    monkeypatch.setattr(pca_fit.KeypointPCA, "fit", boom)


def test_get_config_round_trip_without_refit(sv_gen, monkeypatch):
    labels = sv_gen(40)
    layer = PCALoss(SV, components_to_keep=0.9, columns_for_singleview_pca=(3, 0, 1),
                    centering_method="median", log_weight=10.7, data_module=labels, name="sv")
    preds = sv_gen(3)
    config = json.loads(json.dumps(layer.get_config()))
    assert "data_module" not in config and config["fitted_params"]["columns"] == [3, 0, 1]
    _forbid_refit(monkeypatch)
    clone = PCALoss.from_config(config)
    assert clone.pca is None and clone.name == "sv"
    for a, b in zip(layer.weights, clone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(layer.per_keypoint_error(preds), clone.per_keypoint_error(preds))
    assert float(clone(preds)[0]) == float(layer(preds)[0])
    assert float(clone.weight) == float(layer.weight)
    assert clone.get_config() == config
    again = PCALoss.from_fitted(layer.fit_result, log_weight=10.7)
    assert float(again(preds)[0]) == float(layer(preds)[0])


def test_keras_file_round_trip_without_refit(tmp_path, monkeypatch):
    gen = mv_data(np.random.default_rng(8), 3, 3)
    labels = gen(20)
    with pytest.warns(UserWarning):
        layer = PCALoss(MV, mirrored_column_matches=[0, 2], num_views=3, data_module=labels,
                        log_weight=5.0, epsilon=0.1)
    model = _ModelWithPCA(layer, units=18)
    preds = gen(4) + np.random.default_rng(0).normal(size=(4, 18)).astype(np.float32)
    before = float(model(preds))
    assert before > 0
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    _forbid_refit(monkeypatch)
    loaded = keras.models.load_model(path)
    assert float(loaded(preds)) == before
    assert loaded.pca_loss.fit_result.matches == [[0, 2], [3, 5], [6, 8]]
    for a, b in zip(layer.weights, loaded.pca_loss.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert all(not w.trainable for w in loaded.pca_loss.weights)
    assert loaded.pca_loss.trainable_weights == []


# ---------------------------------------------------------------- graph, XLA, float16


@pytest.mark.parametrize("kind", ["median", "multiview"])
def test_eager_function_and_xla_agree(kind):
    rng = np.random.default_rng(11)
    if kind == "median":
        gen = sv_data(rng, 0, 5)
        layer = make_layer(gen(40), sv_cfg(centering="median", columns=[4, 0, 2, 1], epsilon=0.0,
                                           components_to_keep=2))
    else:
        gen = mv_data(rng, 2, 3)
        layer = make_layer(gen(20), dict(loss_name=MV, coords_dim=2, matches=[[0, 1, 2], [3, 4, 5]],
                                         components_to_keep=3, percentile=50.0, epsilon=None,
                                         multiplier=1.0))
    preds = tf.constant(gen(6) + rng.normal(size=(6, gen(1).shape[1])).astype(np.float32) * 3)

    def step(p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            loss, logs = layer(p, stage="train")
        return loss, tape.gradient(loss, p), logs[1]["value"]

    eager = step(preds)
    graph = tf.function(step)(preds)
    xla = tf.function(step, jit_compile=True)(preds)
    assert float(eager[0]) > 0
    for other in (graph, xla):
        np.testing.assert_allclose(other[0].numpy(), eager[0].numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(other[1].numpy(), eager[1].numpy(), rtol=0, atol=1e-6)
        assert float(other[2]) == float(eager[2])


def test_mixed_float16_policy(sv_gen):
    labels = sv_gen(40)
    preds16 = sv_gen(4).astype(np.float16)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = make_layer(labels, sv_cfg(centering="mean", epsilon=0.0))
        assert layer.compute_dtype == "float32"
        assert all(w.dtype == "float32" for w in layer.weights)
        loss16, logs = layer(tf.constant(preds16), stage="train")
        loss32 = layer(tf.constant(preds16.astype(np.float32)))[0]
        f32_in_mixed = layer(tf.constant(sv_gen(1).astype(np.float32)))[0]
    finally:
        keras.config.set_dtype_policy(previous)
    assert loss16.dtype == tf.float32 and logs[0]["value"].dtype == tf.float32
    assert float(loss16) == pytest.approx(float(loss32), abs=1e-6)
    assert f32_in_mixed.dtype == tf.float32
    # Direct calls to compute_loss also cast (no Keras autocast there).
    x16 = tf.constant(layer.format_predictions(preds16).numpy().astype(np.float16))
    assert layer.compute_loss(x16).dtype == tf.float32


# ---------------------------------------------------------------- 3D (extension)


def test_singleview_3d():
    rng = np.random.default_rng(21)
    gen = sv_data(rng, 0, 4, c_dim=3)
    labels = gen(40)
    cfg = sv_cfg(coords_dim=3, centering="mean", components_to_keep=4, epsilon=0.0)
    ref = RefPCA(labels, cfg)
    layer = make_layer(labels.reshape(40, 4, 3), cfg)
    preds = gen(3) + rng.normal(size=(3, 12)).astype(np.float32)
    errs = layer.per_keypoint_error(preds.reshape(3, 4, 3)).numpy()
    assert errs.shape == (3, 4)
    np.testing.assert_allclose(errs, ref.errors(preds), atol=1e-3)
    loss, grad, _ = tf_loss_and_grad(layer, preds)
    assert loss == pytest.approx(ref.loss(preds), abs=1e-4)
    np.testing.assert_allclose(grad, ref.grad_fd(preds), atol=2e-5)
    with pytest.raises(ValueError, match=r"\(B, 12\) or \(B, 4, 3\)"):
        layer(preds.reshape(3, 6, 2))
