import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from nlf_tf.model import head as head_lib

LINK = 8
DEPTH = 4
C = DEPTH + 2
HEAD_KWARGS = dict(proc_side=64, depth=DEPTH, backbone_link_dim=LINK, field_posenc_dim=16,
                   field_hidden_size=16, box_size_m=2.2)


def _make_head(feature_channels=12, **kwargs):
    head = head_lib.LocalizerHead(**dict(HEAD_KWARGS, **kwargs))
    head.build((None, 2, 2, feature_channels))
    return head


def _randomize_field(head, seed=0, scale=1.0):
    """Random kernels with std scale/sqrt(fan_in) and random biases (the initial ones are 0)."""
    rng = np.random.RandomState(seed)
    head.field.set_weights([
        rng.normal(0, scale / math.sqrt(w.shape[0]) if w.ndim == 2 else 0.1, w.shape).astype(
            np.float32)
        for w in head.field.get_weights()])


def _softmax_np(x, axes):
    e = np.exp(x - x.max(axis=axes, keepdims=True))
    return e / e.sum(axis=axes, keepdims=True)


def _numpy_decode(logits, uncert_bias, uncert_bias2):
    """Independent NumPy decoding of [B,P,H,W,C] logits (float64)."""
    _, _, h, w, d = logits[..., 2:].shape
    lin_h, lin_w, lin_d = (np.linspace(0, 1, n) for n in (h, w, d))
    hm_xy = _softmax_np(logits[..., 1], (2, 3))
    x01 = np.einsum('bphw,w->bp', hm_xy, lin_w)
    y01 = np.einsum('bphw,h->bp', hm_xy, lin_h)
    v = _softmax_np(logits[..., 2:], (2, 3, 4))
    u01 = np.einsum('bphwd,w->bp', v, lin_w)
    v01 = np.einsum('bphwd,h->bp', v, lin_h)
    z01 = np.einsum('bphwd,d->bp', v, lin_d)
    marginal = v.sum(axis=4)
    raw = np.sum(logits[..., 0] * marginal, axis=(2, 3)) + uncert_bias
    uncert = np.log1p(np.exp(raw)) + uncert_bias2
    return np.stack([u01, v01], -1), np.stack([x01, y01, z01], -1), uncert


# --- §9 case 34 -------------------------------------------------------------------------

def test_heatmap_to_image_and_metric_case34():
    conv = head_lib.heatmap_to_image
    assert float(conv(tf.constant(0.0), 256, 32, True)) == 16
    assert float(conv(tf.constant(1.0), 256, 32, True)) == 240
    assert float(conv(tf.constant(1.0), 256, 32, False)) == 224
    assert float(conv(tf.constant(1.0), 384, 32, True)) == 368
    metric = head_lib.heatmap_to_metric(tf.constant([0.0, 0.0, 1.0]), 256, 32, True, 2.2)
    np.testing.assert_allclose(metric.numpy(), [0.1375, 0.1375, 2.2], rtol=1e-6)
    # 64 px crops with a centred stride 32: range [16, 48].
    assert float(conv(tf.constant(0.0), 64, 32, True)) == 16
    assert float(conv(tf.constant(1.0), 64, 32, True)) == 48


# --- §9 case 35 -------------------------------------------------------------------------

def test_soft_argmax_axis_order_case35():
    logits = np.zeros([1, 1, 8, 8, C], np.float32)
    logits[0, 0, 2, 5, 1] = 1e4  # metric-xy heatmap: row h=2, column w=5
    logits[0, 0, 2, 5, 2 + 3] = 1e4  # 2.5D heatmap: same cell, depth slice 3
    uv01, xyz01, _ = head_lib.decode_logits(tf.constant(logits))
    np.testing.assert_allclose(xyz01.numpy()[0, 0], [5 / 7, 2 / 7, 3 / (DEPTH - 1)], atol=1e-6)
    np.testing.assert_allclose(uv01.numpy()[0, 0], [5 / 7, 2 / 7], atol=1e-6)


# --- §9 case 36 -------------------------------------------------------------------------

@pytest.mark.parametrize('c', [0.0, 1.5, -2.0])
def test_constant_uncertainty_map_case36(c):
    rng = np.random.RandomState(0)
    logits = rng.normal(0, 2, [2, 3, 4, 4, C]).astype(np.float32)
    logits[..., 0] = c
    _, _, uncert = head_lib.decode_logits(tf.constant(logits), 0.0, 0.001)
    np.testing.assert_allclose(uncert.numpy(), math.log1p(math.exp(c)) + 0.001, rtol=1e-6)
    if c == 0.0:
        np.testing.assert_allclose(uncert.numpy(), 0.694147, atol=1e-6)


def test_decode_matches_numpy_and_stops_gradient_of_marginal():
    rng = np.random.RandomState(1)
    logits = rng.normal(0, 2, [2, 3, 3, 5, C]).astype(np.float32)  # H != W catches axis swaps
    uv01, xyz01, uncert = head_lib.decode_logits(tf.constant(logits), 0.2, 0.01)
    want_uv, want_xyz, want_u = _numpy_decode(logits.astype(np.float64), 0.2, 0.01)
    np.testing.assert_allclose(uv01.numpy(), want_uv, atol=1e-6)
    np.testing.assert_allclose(xyz01.numpy(), want_xyz, atol=1e-6)
    np.testing.assert_allclose(uncert.numpy(), want_u, rtol=1e-5)

    # The uncertainty has no gradient path to the heatmap logits (stop-gradient on Σ_d V).
    logits_var = tf.Variable(logits)
    with tf.GradientTape() as tape:
        _, _, u = head_lib.decode_logits(logits_var)
        total = tf.reduce_sum(u)
    grad = tape.gradient(total, logits_var).numpy()
    assert np.all(grad[..., 1:] == 0)
    assert np.any(grad[..., 0] != 0)


# --- §9 case 37 -------------------------------------------------------------------------

def test_dynamic_weight_layout_case37():
    rng = np.random.RandomState(2)
    features = rng.normal(size=[2, 3, 4, LINK]).astype(np.float32)
    n_points = 3
    weights = np.zeros([2, n_points, (LINK + 1) * C], np.float32)
    k, j = 5, 3
    weights[:, 0, k * C + j] = 1.0  # point 0: channel j = feature channel k
    weights[:, 1, LINK * C + 2] = 2.5  # point 1: bias of channel 2
    weights[:, 2, :] = rng.normal(size=(LINK + 1) * C)
    logits = head_lib.dynamic_logits(tf.constant(features), tf.constant(weights), C).numpy()
    assert logits.shape == (2, n_points, 3, 4, C)
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits[:, 0, ..., j], features[..., k])
    np.testing.assert_array_equal(np.delete(logits[:, 0], j, axis=-1), 0)
    np.testing.assert_array_equal(logits[:, 1, ..., 2], 2.5)
    np.testing.assert_array_equal(np.delete(logits[:, 1], 2, axis=-1), 0)
    # General point against an explicit NumPy evaluation of the layout.
    w = weights[0, 2].reshape(LINK + 1, C)
    want = features[0] @ w[:LINK] + w[LINK]
    np.testing.assert_allclose(logits[0, 2], want, rtol=1e-5, atol=1e-5)


def test_wrong_weight_size_is_rejected():
    with pytest.raises(ValueError, match='link_dim'):
        head_lib.dynamic_logits(tf.zeros([1, 2, 2, LINK]), tf.zeros([1, 3, LINK * C]), C)


def test_shared_logits_equal_dynamic_logits():
    rng = np.random.RandomState(3)
    features = rng.normal(size=[2, 3, 4, LINK]).astype(np.float32)
    weights = rng.normal(size=[5, (LINK + 1) * C]).astype(np.float32)
    shared = head_lib.shared_logits(tf.constant(features), tf.constant(weights), C)
    general = head_lib.dynamic_logits(
        tf.constant(features), tf.tile(tf.constant(weights)[tf.newaxis], [2, 1, 1]), C)
    np.testing.assert_allclose(shared.numpy(), general.numpy(), rtol=1e-5, atol=1e-5)


# --- The layer --------------------------------------------------------------------------

def test_link_layer_settings():
    head = _make_head(feature_channels=12)
    conv = head.link_conv
    assert conv.kernel.shape == (1, 1, 12, LINK)
    assert not conv.use_bias
    constraint = conv.kernel_constraint
    assert isinstance(constraint, keras.constraints.MinMaxNorm)
    assert constraint.max_value == 20.0 and constraint.min_value == 0.0
    assert list(constraint.axis) == [0, 1, 2] and constraint.rate == 1.0
    init = conv.kernel_initializer.get_config()
    assert init['scale'] == 2.0 and init['mode'] == 'fan_out'
    assert init['distribution'] == 'untruncated_normal'
    assert isinstance(head.link_norm, keras.layers.BatchNormalization)
    assert head.link_norm.momentum == pytest.approx(0.9)
    assert head.link_norm.epsilon == pytest.approx(1e-3)
    assert _make_head(constrain_kernel_norm=float('inf')).link_conv.kernel_constraint is None

    # The constraint bounds every output filter's norm (over kh, kw, c_in).
    big = np.full((1, 1, 12, LINK), 10.0, np.float32)
    big[..., 0] = 0.1
    clipped = constraint(tf.constant(big)).numpy()
    norms = np.sqrt((clipped ** 2).sum(axis=(0, 1, 2)))
    np.testing.assert_allclose(norms[1:], 20.0, rtol=1e-5)
    np.testing.assert_allclose(clipped[..., 0], 0.1, rtol=1e-5)


def test_kernel_init_scale():
    head = head_lib.LocalizerHead(**dict(HEAD_KWARGS, backbone_link_dim=256))
    head.build((None, 2, 2, 64))
    std = head.link_conv.kernel.numpy().std()
    assert std == pytest.approx(math.sqrt(2 / 256), rel=0.05)


def test_groupnorm_option():
    head = _make_head(backbone_link_dim=32, normalizer='groupnorm')
    assert isinstance(head.link_norm, keras.layers.GroupNormalization)
    out = head(tf.random.normal([2, 2, 2, 12]), tf.random.normal([2, 3, 3]), training=True)
    assert np.all(np.isfinite(out[0].numpy()))
    with pytest.raises(ValueError, match='normalizer'):
        _make_head(normalizer='renorm')


def test_head_equals_numpy_pipeline():
    head = _make_head()
    _randomize_field(head)
    rng = np.random.RandomState(4)
    features = rng.normal(size=[2, 2, 2, 12]).astype(np.float32)
    points = rng.normal(0, 0.4, [2, 5, 3]).astype(np.float32)
    head2d, head3d, uncert = head(features, points, training=False)
    assert head2d.dtype == head3d.dtype == uncert.dtype == tf.float32

    linked = head.link(features, training=False).numpy().astype(np.float64)
    weights = head.field(points).numpy().astype(np.float64).reshape(2, 5, LINK + 1, C)
    logits = (np.einsum('bhwk,bpkj->bphwj', linked, weights[:, :, :LINK])
              + weights[:, :, LINK][:, :, None, None])
    uv01, xyz01, want_u = _numpy_decode(logits, 0.0, 0.001)
    # proc_side 64, stride 32, centred: pixel = 32·c01 + 16
    np.testing.assert_allclose(head2d.numpy(), 32 * uv01 + 16, rtol=1e-5, atol=1e-4)
    want3d = np.concatenate([(32 * xyz01[..., :2] + 16) * 2.2 / 64, xyz01[..., 2:] * 2.2], -1)
    np.testing.assert_allclose(head3d.numpy(), want3d, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(uncert.numpy(), want_u, rtol=1e-5)


def test_output_ranges():
    head = _make_head(uncert_bias2=0.05)
    _randomize_field(head, scale=2.0)
    rng = np.random.RandomState(5)
    features = rng.normal(0, 2, size=[4, 2, 2, 12]).astype(np.float32)
    points = rng.normal(0, 1, [4, 16, 3]).astype(np.float32)
    head2d, head3d, uncert = [t.numpy() for t in head(features, points, training=False)]
    assert head2d.min() >= 16 and head2d.max() <= 48
    assert head2d.std() > 1  # not degenerate
    assert head3d[..., :2].min() >= 16 * 2.2 / 64 - 1e-6
    assert head3d[..., :2].max() <= 48 * 2.2 / 64 + 1e-6
    assert head3d[..., 2].min() >= 0 and head3d[..., 2].max() <= 2.2 + 1e-6
    assert uncert.min() > 0.05
    # With an extreme logit the heatmap saturates at the range ends but never leaves it.
    logits = np.zeros([1, 1, 2, 2, C], np.float32)
    logits[0, 0, 1, 1, 2:] = 1e4
    logits[0, 0, 0, 0, 1] = 1e4
    uv01, xyz01, _ = head_lib.decode_logits(tf.constant(logits))
    np.testing.assert_allclose(
        head_lib.heatmap_to_image(uv01, 64, 32, True).numpy()[0, 0], [48, 48])
    np.testing.assert_allclose(
        head_lib.heatmap_to_image(xyz01[..., :2], 64, 32, True).numpy()[0, 0], [16, 16])


def test_stride_depends_on_training():
    head = _make_head(stride_train=32, stride_test=16)
    assert head.stride(True) == 32
    assert head.stride(False) == 16
    assert head.stride(None) == 16


def test_same_canonicals_path_equals_general_path():
    head = _make_head()
    _randomize_field(head, seed=6)
    rng = np.random.RandomState(6)
    features = rng.normal(size=[3, 2, 2, 12]).astype(np.float32)
    points = rng.normal(0, 0.4, [7, 3]).astype(np.float32)
    general = head(features, np.tile(points[np.newaxis], [3, 1, 1]), training=False)
    shared = head.call_same_canonicals(features, points, training=False)
    for g, s in zip(general, shared):
        assert g.shape == s.shape
        np.testing.assert_allclose(s.numpy(), g.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='canonical_points'):
        head.call_same_canonicals(features, points[np.newaxis])


# --- §9 case 38: mirroring --------------------------------------------------------------

def test_mirror_consistency_case38():
    """Flipping the feature map horizontally mirrors all outputs exactly, for any dynamic
    weights, because the link layer is pointwise per cell. In pixels the mirror of a cell
    position is u -> (first + last cell centre) − u = 16 + 48 − u here; in metres x ->
    (16 + 48)·box/S − x (an offset that the translation solve absorbs)."""
    head = _make_head()
    _randomize_field(head, seed=7)
    rng = np.random.RandomState(7)
    features = rng.normal(size=[2, 2, 2, 12]).astype(np.float32)
    points = rng.normal(0, 0.4, [2, 6, 3]).astype(np.float32)
    weights = head.field(points)
    flipped_features = features[:, :, ::-1]
    ref2d, ref3d, ref_u = [t.numpy() for t in head.call_with_weights(features, weights)]
    fl2d, fl3d, fl_u = [t.numpy() for t in head.call_with_weights(flipped_features, weights)]
    mirror_px = 16 + 48
    np.testing.assert_allclose(mirror_px - fl2d[..., 0], ref2d[..., 0], atol=1e-4)
    np.testing.assert_allclose(fl2d[..., 1], ref2d[..., 1], atol=1e-4)
    np.testing.assert_allclose(mirror_px * 2.2 / 64 - fl3d[..., 0], ref3d[..., 0], atol=1e-5)
    np.testing.assert_allclose(fl3d[..., 1:], ref3d[..., 1:], atol=1e-5)
    np.testing.assert_allclose(fl_u, ref_u, rtol=1e-5)

    # Full path with mirrored canonical points: exact for points on the symmetry plane (x = 0),
    # whose mirrored query is the same point.
    mid_points = points * np.array([0, 1, 1], np.float32)
    mirrored_points = mid_points * np.array([-1, 1, 1], np.float32)
    ref = [t.numpy() for t in head(features, mid_points, training=False)]
    fl = [t.numpy() for t in head(flipped_features, mirrored_points, training=False)]
    np.testing.assert_allclose(mirror_px - fl[0][..., 0], ref[0][..., 0], atol=1e-4)
    np.testing.assert_allclose(fl[1][..., 2], ref[1][..., 2], atol=1e-5)
    # ...while off-plane points generally differ (the symmetry is learned, not built in).
    ref_off = head(features, points, training=False)[0].numpy()
    fl_off = head(flipped_features, points * np.array([-1, 1, 1], np.float32),
                  training=False)[0].numpy()
    assert np.abs(mirror_px - fl_off[..., 0] - ref_off[..., 0]).max() > 1e-3


def test_get_config_round_trip():
    head = _make_head(stride_test=16, uncert_bias=0.3, uncert_bias2=0.01,
                      constrain_kernel_norm=5.0, field_hidden_layers=2)
    _randomize_field(head, seed=8)
    # Non-trivial BN statistics.
    head.link_norm.moving_mean.assign(np.linspace(-1, 1, LINK).astype(np.float32))
    config = head.get_config()
    clone = head_lib.LocalizerHead.from_config(config)
    clone.build((None, 2, 2, 12))
    clone.set_weights(head.get_weights())
    assert clone.get_config() == config
    rng = np.random.RandomState(8)
    features = rng.normal(size=[2, 2, 2, 12]).astype(np.float32)
    points = rng.normal(0, 0.4, [2, 4, 3]).astype(np.float32)
    for a, b in zip(head(features, points, training=False),
                    clone(features, points, training=False)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_mixed_float16_forward(mixed_policy):
    head = _make_head()
    features = tf.cast(tf.random.stateless_normal([2, 2, 2, 12], seed=[1, 1]), tf.float16)
    points = tf.random.stateless_normal([2, 5, 3], seed=[2, 2])
    assert head.link(features).dtype == tf.float16
    assert head.field(points).dtype == tf.float16
    for training in (True, False):
        outputs = head(features, points, training=training)
        for out in outputs:
            assert out.dtype == tf.float32
            assert np.all(np.isfinite(out.numpy()))
    shared = head.call_same_canonicals(features, points[0], training=False)
    assert all(s.dtype == tf.float32 for s in shared)
    assert all(v.dtype == 'float32' for v in head.weights)
