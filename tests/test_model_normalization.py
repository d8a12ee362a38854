"""Tests of nlf_tf.model.normalization (spec §6.1, §7.5, §9 case 46).

References are independent NumPy (float64) re-implementations of the formulas, or Keras'
own BatchNormalization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nlf_tf.model import backbone
from nlf_tf.model import normalization as nrm

EPS = 1e-3


# ----------------------------------------------------------------------------------------
# NumPy references
# ----------------------------------------------------------------------------------------

def np_renorm(x, gamma, beta, moving_mean, moving_var, rmax, rmin, dmax, momentum,
              eps=EPS, bessel=True):
    """Batch renorm over all axes but the last. Returns (y, new_mean, new_var, r, d, r_raw,
    d_raw) in float64."""
    x = np.asarray(x, np.float64)
    axes = tuple(range(x.ndim - 1))
    n = x.size / x.shape[-1]
    mu = x.mean(axes)
    var = x.var(axes)
    var_s = var * n / (n - 1) if bessel else var
    r_raw = np.sqrt((var_s + eps) / (moving_var + eps))
    d_raw = (mu - moving_mean) / np.sqrt(moving_var + eps)
    r = np.clip(r_raw, rmin, rmax)
    d = np.clip(d_raw, -dmax, dmax)
    x_hat = (x - mu) / np.sqrt(var + eps)
    y = gamma * (x_hat * r + d) + beta
    new_mean = momentum * moving_mean + (1 - momentum) * mu
    new_var = momentum * moving_var + (1 - momentum) * var_s
    return y, new_mean, new_var, r, d, r_raw, d_raw


def np_batchnorm(x, gamma, beta, eps=EPS):
    x = np.asarray(x, np.float64)
    axes = tuple(range(x.ndim - 1))
    return gamma * (x - x.mean(axes)) / np.sqrt(x.var(axes) + eps) + beta


def random_bn_weights(n_channels, seed):
    rng = np.random.RandomState(seed)
    return [rng.uniform(0.5, 1.5, n_channels).astype(np.float32),   # gamma
            rng.normal(0, 0.3, n_channels).astype(np.float32),      # beta
            rng.normal(0, 0.5, n_channels).astype(np.float32),      # moving mean
            rng.uniform(0.5, 2.0, n_channels).astype(np.float32)]   # moving variance


def make_input(shape, seed, scale=1.0, shift=0.0):
    rng = np.random.RandomState(seed)
    return (rng.normal(size=shape) * scale + shift).astype(np.float32)


def renorm_layer(n_channels, clipping, seed=0, **kwargs):
    layer = nrm.BatchRenormalization(renorm_clipping=clipping, **kwargs)
    layer.build((None, 3, 3, n_channels))
    layer.set_weights(random_bn_weights(n_channels, seed))
    return layer


# ----------------------------------------------------------------------------------------
# Case 46: (1, 1, 0) is plain batch norm
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('bessel', [True, False])
def test_unit_limits_equal_keras_batchnorm(bessel):
    clipping = nrm.RenormClipping()
    np.testing.assert_array_equal([v.numpy() for v in clipping.values()], [1.0, 1.0, 0.0])
    layer = renorm_layer(5, clipping, momentum=0.9, bessel_correction=bessel)
    bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=EPS)
    bn.build((None, 3, 3, 5))
    bn.set_weights(layer.get_weights())
    mean0, var0 = bn.moving_mean.numpy(), bn.moving_variance.numpy()

    x = make_input((4, 3, 3, 5), seed=1, scale=2.0, shift=1.5)  # far from the moving stats
    y = layer(x, training=True)
    y_bn = bn(x, training=True)
    # r = 1 and d = 0 exactly, so the arithmetic is Keras BN's.
    np.testing.assert_array_equal(y.numpy(), y_bn.numpy())
    np.testing.assert_array_equal(layer.moving_mean.numpy(), bn.moving_mean.numpy())
    n = 4 * 3 * 3
    if bessel:
        # Keras BN uses the biased batch variance; ours the Bessel-corrected one.
        expected = 0.9 * var0 + (bn.moving_variance.numpy() - 0.9 * var0) * n / (n - 1)
        np.testing.assert_allclose(layer.moving_variance.numpy(), expected, rtol=1e-6)
        assert not np.allclose(layer.moving_variance.numpy(), bn.moving_variance.numpy(),
                               rtol=1e-4, atol=0)
    else:
        np.testing.assert_array_equal(layer.moving_variance.numpy(), bn.moving_variance.numpy())
    # The batch statistics really differed from the moving ones (so r, d would be != 1, 0).
    _, _, _, _, _, r_raw, d_raw = np_renorm(x, *layer.get_weights()[:2], mean0, var0,
                                            np.inf, 0, np.inf, 0.9)
    assert np.all(np.abs(r_raw - 1) > 0.05) and np.all(np.abs(d_raw) > 0.1)

    # A few more steps: stays equal (moving statistics keep evolving identically).
    for seed in (2, 3):
        x = make_input((4, 3, 3, 5), seed=seed, scale=0.5, shift=-1.0)
        np.testing.assert_array_equal(layer(x, training=True).numpy(),
                                      bn(x, training=True).numpy())
    np.testing.assert_array_equal(layer.moving_mean.numpy(), bn.moving_mean.numpy())


def test_matches_numpy_reference_with_unit_limits():
    clipping = nrm.RenormClipping()
    layer = renorm_layer(3, clipping, seed=4, momentum=0.99)
    weights = layer.get_weights()
    x = make_input((6, 2, 2, 3), seed=5, scale=3.0, shift=2.0)
    y = layer(x, training=True)
    y_ref, mean_ref, var_ref, *_ = np_renorm(x, *weights, 1.0, 1.0, 0.0, 0.99)
    np.testing.assert_allclose(y.numpy(), y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(), mean_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), var_ref, rtol=1e-6)


# ----------------------------------------------------------------------------------------
# Clipping
# ----------------------------------------------------------------------------------------

def clipping_input():
    """Channels: 0 much wider than the moving std (r > rmax), 1 much narrower (r < rmin),
    2 mean far above (d > dmax), 3 far below (d < −dmax), 4 within all limits."""
    rng = np.random.RandomState(7)
    x = rng.normal(size=(8, 2, 2, 5))
    x = (x - x.mean((0, 1, 2))) / x.std((0, 1, 2))  # exact zero mean, unit std per channel
    x = x * np.array([4.0, 0.2, 1.0, 1.0, 1.1]) + np.array([0.0, 0.0, 3.0, -3.0, 0.2])
    return x.astype(np.float32)


def test_clipping_engages_at_limits():
    clipping = nrm.RenormClipping()
    clipping.set_limits(1.5, 1 / 1.5, 0.5)
    layer = nrm.BatchRenormalization(renorm_clipping=clipping, momentum=0.9)
    layer.build((None, 2, 2, 5))
    gamma = np.array([1.0, 2.0, 0.5, 1.0, 1.5], np.float32)
    beta = np.array([0.0, 0.1, -0.2, 0.3, 0.0], np.float32)
    moving_mean = np.zeros(5, np.float32)
    moving_var = np.ones(5, np.float32)
    layer.set_weights([gamma, beta, moving_mean, moving_var])
    x = clipping_input()
    y = layer(x, training=True)
    y_ref, mean_ref, var_ref, r, d, r_raw, d_raw = np_renorm(
        x, gamma, beta, moving_mean, moving_var, 1.5, 1 / 1.5, 0.5, 0.9)
    # Every clipping branch is exercised.
    assert r_raw[0] > 1.5 and r[0] == 1.5
    assert r_raw[1] < 1 / 1.5 and r[1] == 1 / 1.5
    assert d_raw[2] > 0.5 and d[2] == 0.5
    assert d_raw[3] < -0.5 and d[3] == -0.5
    assert 1 / 1.5 < r_raw[4] < 1.5 and -0.5 < d_raw[4] < 0.5
    np.testing.assert_allclose(y.numpy(), y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(), mean_ref, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), var_ref, rtol=1e-6)
    # Unclipped renorm would give a different output (the test is discriminative).
    y_unclipped = np_renorm(x, gamma, beta, moving_mean, moving_var, np.inf, 0, np.inf, 0.9)[0]
    assert np.abs(y_unclipped - y_ref)[..., :4].min() > 1e-3


def test_non_last_axis_matches_last_axis():
    clipping = nrm.RenormClipping()
    clipping.set_limits(1.5, 1 / 1.5, 0.5)
    x = clipping_input()
    weights = random_bn_weights(5, seed=8)
    last = renorm_layer(5, clipping, seed=8)
    first = nrm.BatchRenormalization(axis=1, renorm_clipping=clipping)
    first.build((None, 5, 2, 2))
    first.set_weights(weights)
    y_last = last(x, training=True).numpy()
    y_first = first(np.transpose(x, (0, 3, 1, 2)), training=True).numpy()
    np.testing.assert_allclose(np.transpose(y_first, (0, 2, 3, 1)), y_last, atol=1e-5)
    np.testing.assert_allclose(first.moving_variance.numpy(), last.moving_variance.numpy(),
                               rtol=1e-6)


# ----------------------------------------------------------------------------------------
# Ramp (§7.5)
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('step, expected', [
    (0, (1.0, 1.0, 0.0)),
    (7499, (1.0, 1.0, 0.0)),
    (7500, (1.0, 1.0, 0.0)),
    (10000, (1.5, 2 / 3, 1.25)),
    (12500, (2.0, 0.5, 2.5)),
    (17500, (3.0, 1 / 3, 5.0)),
    (1_000_000, (3.0, 1 / 3, 5.0)),
])
def test_ramp_values(step, expected):
    for s in (step, tf.constant(step, tf.int64), tf.constant(step, tf.int32)):
        values = [float(v) for v in nrm.renorm_clipping_values(s)]
        np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_ramp_custom_arguments_and_errors():
    # renorm_limit_scale 0.5 at full ramp: rmax = 1 + 2·0.5 = 2, dmax = 2.5.
    np.testing.assert_allclose(
        [float(v) for v in nrm.renorm_clipping_values(20000, renorm_limit_scale=0.5)],
        [2.0, 0.5, 2.5], rtol=1e-6)
    # start 100, length 200, step 150 → ρ = 0.25.
    np.testing.assert_allclose(
        [float(v) for v in nrm.renorm_clipping_values(150, start=100, length=200)],
        [1.5, 2 / 3, 1.25], rtol=1e-6)
    with pytest.raises(ValueError, match='length'):
        nrm.renorm_clipping_values(5, length=0)
    with pytest.raises(ValueError, match='renorm_limit_scale'):
        nrm.RenormClipping(renorm_limit_scale=-1)
    with pytest.raises(ValueError, match='rmin <= rmax'):
        nrm.RenormClipping().set_limits(1.0, 2.0, 0.0)


def test_update_inside_tf_function_drives_layers():
    clipping = nrm.RenormClipping()
    layer = renorm_layer(5, clipping, seed=9, momentum=0.9)
    weights = layer.get_weights()
    micro_step = tf.Variable(0, dtype=tf.int64)
    grad_accum_steps = 2

    @tf.function
    def train_step(x):
        clipping.update(micro_step // grad_accum_steps)
        return layer(x, training=True)

    x = clipping_input()
    micro_step.assign(25000)  # adjusted step 12 500 → (2, 0.5, 2.5)
    y = train_step(x)
    np.testing.assert_allclose([v.numpy() for v in clipping.values()], [2.0, 0.5, 2.5],
                               rtol=1e-6)
    y_ref = np_renorm(x, *weights, 2.0, 0.5, 2.5, 0.9)[0]
    np.testing.assert_allclose(y.numpy(), y_ref, rtol=1e-5, atol=1e-5)

    micro_step.assign(10)  # adjusted step 5 → plain BN again, same traced function
    train_step(x)
    np.testing.assert_array_equal([v.numpy() for v in clipping.values()], [1.0, 1.0, 0.0])
    assert train_step.experimental_get_tracing_count() == 1


# ----------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------

def test_gradients_flow_through_batch_stats_but_not_r_d():
    clipping = nrm.RenormClipping()
    clipping.set_limits(10.0, 0.1, 10.0)  # wide: r and d are not clipped
    layer = renorm_layer(3, clipping, seed=10)
    gamma, beta, moving_mean, moving_var = [w.astype(np.float64) for w in layer.get_weights()]
    x = make_input((5, 2, 2, 3), seed=11, scale=1.7, shift=0.8)
    w = make_input((5, 2, 2, 3), seed=12)
    x_t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_t)
        loss = tf.reduce_sum(w * layer(x_t, training=True))
    dx, dgamma, dbeta = tape.gradient(loss, [x_t, layer.gamma, layer.beta])

    _, _, _, r, d, r_raw, d_raw = np_renorm(x, gamma, beta, moving_mean, moving_var,
                                            10.0, 0.1, 10.0, 0.99)
    np.testing.assert_allclose(r, r_raw)
    np.testing.assert_allclose(d, d_raw)
    xd, wd = x.astype(np.float64), w.astype(np.float64)
    axes = (0, 1, 2)
    mu, sigma = xd.mean(axes), np.sqrt(xd.var(axes) + EPS)
    x_hat = (xd - mu) / sigma
    # Batch-norm backward with r, d held constant: g = ∂L/∂x̂ = w·γ·r.
    g = wd * gamma * r
    dx_ref = (g - g.mean(axes) - x_hat * (g * x_hat).mean(axes)) / sigma
    np.testing.assert_allclose(dx.numpy(), dx_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dgamma.numpy(), (wd * (x_hat * r + d)).sum(axes), rtol=1e-5)
    np.testing.assert_allclose(dbeta.numpy(), wd.sum(axes), rtol=1e-5)

    # Discriminative: if r, d passed gradients, y would be the affine γ(x − μ)/σ_mov + β.
    dx_through_rd = wd * gamma / np.sqrt(moving_var + EPS)
    assert np.abs(dx.numpy() - dx_through_rd).max() > 0.05
    # ... and if batch statistics were frozen, dx would be w·γ·r/σ.
    assert np.abs(dx.numpy() - g / sigma).max() > 0.05


# ----------------------------------------------------------------------------------------
# Inference, trainable=False, mixed precision
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('training', [False, None])
def test_inference_uses_moving_statistics(training):
    layer = renorm_layer(5, clipping=None, seed=13)  # no clipping needed for inference
    gamma, beta, moving_mean, moving_var = layer.get_weights()
    x = make_input((3, 3, 3, 5), seed=14, scale=3, shift=2)
    y = layer(x, training=training)
    y_ref = gamma * (x.astype(np.float64) - moving_mean) / np.sqrt(moving_var + EPS) + beta
    np.testing.assert_allclose(y.numpy(), y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), moving_mean)
    np.testing.assert_array_equal(layer.moving_variance.numpy(), moving_var)


def test_training_without_clipping_raises_and_frozen_layer_is_inference():
    layer = renorm_layer(5, clipping=None, seed=15)
    x = make_input((3, 3, 3, 5), seed=16)
    with pytest.raises(ValueError, match='renorm_clipping'):
        layer(x, training=True)
    layer.trainable = False  # like Keras BN: frozen layers use (and keep) moving statistics
    y = layer(x, training=True)
    np.testing.assert_allclose(y.numpy(), layer(x, training=False).numpy())
    with pytest.raises(ValueError, match='RenormClipping'):
        layer.link_renorm_clipping({'rmax': 3.0})


def test_mixed_float16_statistics_in_float32():
    keras.config.set_dtype_policy('mixed_float16')
    clipping = nrm.RenormClipping()
    clipping.set_limits(3.0, 1 / 3, 5.0)
    assert clipping.rmax.dtype == 'float32'
    layer = nrm.BatchRenormalization(renorm_clipping=clipping, momentum=0.9)
    ghost = nrm.GhostBatchNormalization('2,2')
    # Values around 1000: their squares overflow float16 (max 65504).
    x = tf.constant(make_input((4, 3, 3, 4), seed=17, scale=300.0, shift=1000.0), tf.float16)
    y = layer(x, training=True)
    assert y.dtype == tf.float16
    assert all(v.dtype == 'float32' for v in layer.weights)
    assert np.all(np.isfinite(y.numpy()))
    y_ref = np_renorm(tf.cast(x, tf.float32).numpy(), 1.0, 0.0, 0.0, 1.0, 3.0, 1 / 3, 5.0,
                      0.9)
    np.testing.assert_allclose(y.numpy().astype(np.float64), y_ref[0], rtol=2e-3, atol=2e-2)
    np.testing.assert_allclose(layer.moving_mean.numpy(), y_ref[1], rtol=1e-4)
    np.testing.assert_allclose(layer.moving_variance.numpy(), y_ref[2], rtol=1e-4)
    y_inf = layer(x, training=False)
    assert y_inf.dtype == tf.float16 and np.all(np.isfinite(y_inf.numpy()))
    y_ghost = ghost(x, training=True)
    assert y_ghost.dtype == tf.float16 and np.all(np.isfinite(y_ghost.numpy()))
    assert np.all(np.isfinite(ghost.moving_variance.numpy()))


# ----------------------------------------------------------------------------------------
# Ownership of the shared clipping, config round trip, re-linking
# ----------------------------------------------------------------------------------------

class _Owner(keras.Model):
    """A model owning one RenormClipping shared by two renorm layers."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.renorm_clipping = nrm.RenormClipping(name='renorm_clipping')
        self.dense = keras.layers.Dense(4)
        self.norm1 = nrm.BatchRenormalization(renorm_clipping=self.renorm_clipping)
        self.norm2 = nrm.BatchRenormalization(renorm_clipping=self.renorm_clipping)

    def call(self, x, training=None):
        return self.norm2(self.norm1(self.dense(x), training=training), training=training)


def test_clipping_variables_owned_once_and_shared():
    model = _Owner()
    x = make_input((6, 3), seed=18)
    model(x, training=True)
    assert model.norm1.renorm_clipping is model.norm2.renorm_clipping
    for norm in (model.norm1, model.norm2):
        assert [v.name for v in norm.weights] == ['gamma', 'beta', 'moving_mean',
                                                   'moving_variance']
    names = [v.name for v in model.non_trainable_weights]
    assert sorted(n for n in names if n in ('rmax', 'rmin', 'dmax')) == ['dmax', 'rmax', 'rmin']
    assert len(model.non_trainable_weights) == 3 + 2 * 2
    ckpt_vars = {v.path for v in model.weights}
    assert len(ckpt_vars) == len(model.weights)


def test_get_config_round_trip_and_relink():
    clipping = nrm.RenormClipping(start=100, length=50, renorm_limit_scale=0.5)
    clipping.set_limits(2.0, 0.5, 1.0)
    layer = nrm.BatchRenormalization(
        momentum=0.95, epsilon=1e-4, renorm_clipping=clipping, center=False,
        gamma_regularizer='l2', bessel_correction=False, name='brn')
    config = layer.get_config()
    assert 'renorm_clipping' not in config
    restored = nrm.BatchRenormalization.from_config(config)
    assert restored.get_config() == config
    assert restored.renorm_clipping is None
    clipping_config = clipping.get_config()
    assert (clipping_config['start'], clipping_config['length'],
            clipping_config['renorm_limit_scale']) == (100.0, 50.0, 0.5)
    assert nrm.RenormClipping.from_config(clipping_config).get_config() == clipping_config

    ghost = nrm.GhostBatchNormalization('3, 2', moving_stats_update='sequential', momentum=0.8)
    ghost_config = ghost.get_config()
    assert ghost_config['ghost_splits'] == [3, 2]
    assert nrm.GhostBatchNormalization.from_config(ghost_config).get_config() == ghost_config

    # A functional model: serialise, deserialise, re-link, same training output.
    inputs = keras.Input((3, 3, 4))
    outputs = nrm.BatchRenormalization(renorm_clipping=clipping, name='brn')(
        keras.layers.Conv2D(4, 1, name='conv')(inputs))
    model = keras.Model(inputs, outputs)
    model.get_layer('brn').set_weights(random_bn_weights(4, seed=19))
    serialized = keras.saving.serialize_keras_object(model)
    clone = keras.saving.deserialize_keras_object(serialized)
    clone.set_weights(model.get_weights())
    x = make_input((2, 3, 3, 4), seed=20, scale=2.0)
    with pytest.raises(ValueError, match='link_renorm_clipping'):
        clone(x, training=True)
    assert nrm.link_renorm_clipping(clone, clipping) == 1
    np.testing.assert_allclose(clone(x, training=True).numpy(),
                               model(x, training=True).numpy(), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------
# Ghost batch normalisation
# ----------------------------------------------------------------------------------------

def np_ghost(x, sizes, gamma, beta, moving_mean, moving_var, momentum, mode):
    parts = np.split(x.astype(np.float64), np.cumsum(sizes)[:-1], axis=0)
    y = np.concatenate([np_batchnorm(p, gamma, beta) for p in parts], axis=0)
    means, variances = [], []
    for p in parts:
        n = p.size / p.shape[-1]
        means.append(p.mean((0, 1, 2)))
        variances.append(p.var((0, 1, 2)) * n / (n - 1))
    mean, var = moving_mean.astype(np.float64), moving_var.astype(np.float64)
    if mode == 'sequential':
        for m_i, v_i in zip(means, variances):
            mean = momentum * mean + (1 - momentum) * m_i
            var = momentum * var + (1 - momentum) * v_i
    else:
        weights = np.array(sizes) / sum(sizes)
        mean = momentum * mean + (1 - momentum) * np.tensordot(weights, means, 1)
        var = momentum * var + (1 - momentum) * np.tensordot(weights, variances, 1)
    return y, mean, var


@pytest.mark.parametrize('mode', ['average', 'sequential'])
def test_ghost_bn_equals_per_split_bn(mode):
    sizes = (4, 2, 3)
    x = make_input((9, 2, 2, 3), seed=21, scale=2.0, shift=1.0)
    x[4:6] += 5.0  # the second virtual batch has a very different mean
    weights = random_bn_weights(3, seed=22)
    ghost = nrm.GhostBatchNormalization('4,2,3', momentum=0.9, moving_stats_update=mode)
    ghost.build(x.shape)
    ghost.set_weights(weights)
    y = ghost(x, training=True)

    # Against Keras BN applied to each split separately.
    bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=EPS)
    bn.build(x.shape)
    bn.set_weights(weights)
    y_bn = tf.concat([bn(p, training=True) for p in tf.split(x, sizes)], axis=0)
    np.testing.assert_allclose(y.numpy(), y_bn.numpy(), rtol=1e-6, atol=1e-6)
    # Against NumPy, including the moving statistics of the chosen update mode.
    y_ref, mean_ref, var_ref = np_ghost(x, sizes, *weights, 0.9, mode)
    np.testing.assert_allclose(y.numpy(), y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ghost.moving_mean.numpy(), mean_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ghost.moving_variance.numpy(), var_ref, rtol=1e-6)
    # Not the same as whole-batch BN.
    assert np.abs(y_ref - np_batchnorm(x, weights[0], weights[1])).max() > 0.1


def test_ghost_bn_inference_and_errors():
    weights = random_bn_weights(3, seed=23)
    ghost = nrm.GhostBatchNormalization([2, 2])
    ghost.build((None, 2, 2, 3))
    ghost.set_weights(weights)
    x = make_input((5, 2, 2, 3), seed=24)
    gamma, beta, mean, var = weights
    y = ghost(x, training=False)  # no split at inference, any batch size
    np.testing.assert_allclose(
        y.numpy(), gamma * (x - mean) / np.sqrt(var + EPS) + beta, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='ghost_splits'):
        ghost(x, training=True)  # 5 != 2 + 2
    for bad in ('64,a', '', [3, 0], 4, [2.5]):
        with pytest.raises(ValueError, match='ghost_splits'):
            nrm.GhostBatchNormalization(bad)
    with pytest.raises(ValueError, match='moving_stats_update'):
        nrm.GhostBatchNormalization('2,2', moving_stats_update='mean')
    assert nrm.parse_ghost_splits(' 64, 32,20 ,32 ') == (64, 32, 20, 32)


# ----------------------------------------------------------------------------------------
# Factory and momentum
# ----------------------------------------------------------------------------------------

def test_make_normalizer_kinds_and_errors():
    clipping = nrm.RenormClipping()
    layer = nrm.make_normalizer('batchrenorm', 0.9, 1e-3, renorm_clipping=clipping, name='a')
    assert isinstance(layer, nrm.BatchRenormalization)
    assert (layer.momentum, layer.epsilon, layer.name) == (0.9, 1e-3, 'a')
    assert layer.renorm_clipping is clipping
    layer = nrm.make_normalizer('batchnorm', 0.8, 1e-4)
    assert type(layer) is keras.layers.BatchNormalization
    assert (layer.momentum, layer.epsilon) == (0.8, 1e-4)
    layer = nrm.make_normalizer('ghostbn', 0.9, 1e-3, ghost_splits='64,32,20,32')
    assert isinstance(layer, nrm.GhostBatchNormalization)
    assert layer.ghost_splits == (64, 32, 20, 32)
    layer = nrm.make_normalizer('groupnorm', 0.9, 1e-3)
    assert isinstance(layer, keras.layers.GroupNormalization) and layer.groups == 32

    with pytest.raises(ValueError, match='kind'):
        nrm.make_normalizer('layernorm', 0.9, 1e-3)
    with pytest.raises(ValueError, match='renorm_clipping'):
        nrm.make_normalizer('batchrenorm', 0.9, 1e-3)
    with pytest.raises(ValueError, match='ghost_splits'):
        nrm.make_normalizer('ghostbn', 0.9, 1e-3)
    with pytest.raises(ValueError, match='renorm_clipping'):
        nrm.make_normalizer('batchnorm', 0.9, 1e-3, renorm_clipping=clipping)
    with pytest.raises(ValueError, match='momentum'):
        nrm.make_normalizer('batchrenorm', 1.5, 1e-3, renorm_clipping=clipping)
    with pytest.raises(ValueError, match='epsilon'):
        nrm.make_normalizer('ghostbn', 0.9, 0.0, ghost_splits='2')


def test_adjusted_momentum():
    assert nrm.adjusted_momentum(0.99, num_replicas=2, grad_accum_steps=1) == pytest.approx(0.995)
    assert nrm.adjusted_momentum(0.9, 1, 4) == pytest.approx(0.9 ** 0.25)
    assert nrm.adjusted_momentum(0.9, 2, 3) == pytest.approx(0.95 ** (1 / 3))
    assert nrm.adjusted_momentum(0.9, 3, 2) == backbone.adjusted_norm_momentum(
        0.9, grad_accum_steps=2, num_replicas=3)
    with pytest.raises(ValueError):
        nrm.adjusted_momentum(0.9, 0, 1)


# ----------------------------------------------------------------------------------------
# Conversion of BatchNormalization models
# ----------------------------------------------------------------------------------------

def randomize_batchnorms(model, seed):
    rng = np.random.RandomState(seed)
    for layer in nrm.iter_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights(random_bn_weights(layer.gamma.shape[0], rng.randint(1 << 30)))


@pytest.mark.parametrize('constructor', [keras.applications.EfficientNetV2B0,
                                         keras.applications.MobileNetV3Small])
def test_convert_keras_applications(constructor):
    model = constructor(include_top=False, weights=None, input_shape=(64, 64, 3))
    randomize_batchnorms(model, seed=25)
    n_bn = sum(isinstance(l, keras.layers.BatchNormalization) for l in model.layers)
    assert n_bn > 30
    clipping = nrm.RenormClipping()
    converted = nrm.convert_batchnorms(model, 'batchrenorm', renorm_clipping=clipping)

    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in converted.layers)
    renorms = [l for l in converted.layers if isinstance(l, nrm.BatchRenormalization)]
    assert len(renorms) == n_bn
    assert all(l.renorm_clipping is clipping for l in renorms)
    original_bn = model.get_layer(renorms[5].name)
    assert isinstance(original_bn, keras.layers.BatchNormalization)  # original untouched
    assert (renorms[5].momentum, renorms[5].epsilon) == (original_bn.momentum,
                                                         original_bn.epsilon)
    for w_new, w_old in zip(renorms[5].get_weights(), original_bn.get_weights()):
        np.testing.assert_array_equal(w_new, w_old)

    x = np.random.RandomState(26).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    y_bn = model(x, training=False).numpy()
    y_renorm = converted(x, training=False).numpy()
    assert np.abs(y_bn).max() > 0.1
    np.testing.assert_allclose(y_renorm, y_bn, rtol=1e-5, atol=1e-5)
    if constructor is keras.applications.MobileNetV3Small:
        # No dropout in this topless network: at limits (1, 1, 0) training mode matches too.
        np.testing.assert_allclose(converted(x, training=True).numpy(),
                                   model(x, training=True).numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(renorms[5].moving_mean.numpy(),
                                   original_bn.moving_mean.numpy(), rtol=1e-5, atol=1e-6)


def _nested_bn_model():
    inner = keras.Sequential([
        keras.Input((4, 4, 32)),
        keras.layers.Conv2D(32, 1, name='inner_conv'),
        keras.layers.BatchNormalization(momentum=0.8, epsilon=1e-4, name='inner_bn')],
        name='inner')
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(32, 3, padding='same', name='conv')(inputs)
    x = keras.layers.BatchNormalization(name='bn', gamma_regularizer='l2')(x)
    x = inner(x)
    return keras.Model(inputs, keras.layers.Activation('silu')(x))


@pytest.mark.parametrize('kind', ['ghostbn', 'groupnorm', 'batchnorm'])
def test_convert_nested_model_other_kinds(kind):
    model = _nested_bn_model()
    randomize_batchnorms(model, seed=27)
    converted = nrm.convert_batchnorms(
        model, kind, ghost_splits='2,2' if kind == 'ghostbn' else None)
    expected_type = {'ghostbn': nrm.GhostBatchNormalization,
                     'groupnorm': keras.layers.GroupNormalization,
                     'batchnorm': keras.layers.BatchNormalization}[kind]
    new_inner_bn = converted.get_layer('inner').get_layer('inner_bn')
    new_bn = converted.get_layer('bn')
    for layer in (new_bn, new_inner_bn):
        assert type(layer) is expected_type
    assert new_inner_bn.epsilon == 1e-4
    assert new_bn.gamma_regularizer is not None
    old_inner_bn = model.get_layer('inner').get_layer('inner_bn')
    np.testing.assert_array_equal(new_inner_bn.gamma.numpy(), old_inner_bn.gamma.numpy())
    np.testing.assert_array_equal(new_inner_bn.beta.numpy(), old_inner_bn.beta.numpy())
    np.testing.assert_array_equal(converted.get_layer('conv').kernel.numpy(),
                                  model.get_layer('conv').kernel.numpy())
    x = make_input((4, 4, 4, 3), seed=28)
    if kind == 'groupnorm':
        assert new_inner_bn.groups == 32
        converted(x)  # runs; different statistics by design
    else:
        assert new_inner_bn.momentum == 0.8
        np.testing.assert_allclose(converted(x, training=False).numpy(),
                                   model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
        y_train = converted(x, training=True).numpy()
        assert np.all(np.isfinite(y_train))


def test_convert_errors():
    model = _nested_bn_model()
    with pytest.raises(ValueError, match='renorm_clipping'):
        nrm.convert_batchnorms(model, 'batchrenorm')
    with pytest.raises(ValueError, match='kind'):
        nrm.convert_batchnorms(model, 'instancenorm')
    with pytest.raises(ValueError, match='keras model'):
        nrm.convert_batchnorms(keras.layers.Dense(3), 'batchnorm')
