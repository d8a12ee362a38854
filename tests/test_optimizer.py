"""Tests of the NLF optimizer stack (spec §7.3, §7.8, §9 case 41)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from nlf_tf.config import default_config
from nlf_tf.optimizer import build_optimizer, weight_decay_coefficient, weight_decay_exclusions
from nlf_tf.schedule import NLFLearningRateSchedule

T = 100_000


def make_var(value, name='kernel'):
    return keras.Variable(np.asarray(value, np.float32), name=name)


def inner(optimizer):
    return getattr(optimizer, 'inner_optimizer', optimizer)


def test_coefficient():
    wd = weight_decay_coefficient(3e-3, T, 2.121e-4)
    np.testing.assert_allclose(wd, 0.044728, rtol=2e-5)
    assert wd == 3e-3 / math.sqrt(T) / 2.121e-4
    # At the peak LR the per-step shrink is weight_decay / sqrt(T).
    np.testing.assert_allclose(wd * 2.121e-4, 3e-3 / math.sqrt(T), rtol=1e-12)
    with pytest.raises(ValueError, match='training_steps'):
        weight_decay_coefficient(3e-3, 0, 2.121e-4)


def test_default_adam_settings():
    cfg = default_config(training_steps=T)
    opt = build_optimizer(cfg, [])
    assert isinstance(opt, keras.optimizers.Adam)
    assert (opt.beta_1, opt.beta_2, opt.epsilon, opt.amsgrad) == (0.9, 0.999, 1e-8, False)
    np.testing.assert_allclose(opt.weight_decay, 0.044728, rtol=2e-5)
    assert isinstance(opt._learning_rate, NLFLearningRateSchedule)
    assert opt._learning_rate.get_config() == dict(
        base_learning_rate=2.121e-4, training_steps=T, field_lr_factor=1.0,
        lr_cooldown_fraction=0.08)
    assert not opt.use_ema


def test_weight_decay_with_zero_gradients_constant_lr():
    cfg = default_config(training_steps=T, dtype='float32')
    eta = 0.01
    decayed = make_var([1.0, -2.0, 3.0])
    excluded = make_var([[4.0, 5.0]])
    # Same short name as the decayed variable: exclusion must go by identity, not by name.
    decayed_same_name = make_var([7.0], name='kernel')
    opt = build_optimizer(cfg, [excluded], learning_rate=eta)
    variables = [decayed, excluded, decayed_same_name]
    zeros = [tf.zeros_like(v.value) for v in variables]
    wd = 0.04472804
    for n in range(1, 4):
        opt.apply(zeros, variables)
        factor = (1 - wd * eta) ** n
        np.testing.assert_allclose(decayed.numpy(), np.array([1.0, -2.0, 3.0]) * factor,
                                   rtol=1e-6)
        np.testing.assert_allclose(decayed_same_name.numpy(), [7.0 * factor], rtol=1e-6)
        np.testing.assert_array_equal(excluded.numpy(), [[4.0, 5.0]])


def test_weight_decay_uses_schedule_at_iterations():
    # The schedule is evaluated at optimizer.iterations (= adjusted step).
    cfg = default_config(training_steps=T, dtype='float32')
    var = make_var([2.0, -1.0])
    opt = build_optimizer(cfg, [])
    opt.build([var])
    opt.iterations.assign(50_000)
    opt.apply([tf.zeros((2,))], [var])
    lr = 2.121e-4 * (1 / 3) ** (50_000 / 91_000)
    wd = 3e-3 / math.sqrt(T) / 2.121e-4
    np.testing.assert_allclose(var.numpy(), np.array([2.0, -1.0]) * (1 - wd * lr), rtol=1e-7)
    assert int(opt.iterations) == 50_001
    np.testing.assert_allclose(float(opt.learning_rate),
                               2.121e-4 * (1 / 3) ** (50_001 / 91_000), rtol=2e-6)


def adam_first_step(theta, g, eta, wd, beta1=0.9, beta2=0.999, eps=1e-8):
    """One decoupled-weight-decay Adam step from m = v = 0, in float64."""
    theta = theta * (1 - wd * eta)  # decay first, with the same LR
    m = (1 - beta1) * g
    v = (1 - beta2) * g * g
    return theta - eta * math.sqrt(1 - beta2) / (1 - beta1) * m / (np.sqrt(v) + eps)


def test_first_adam_step_matches_hand_formula():
    # Large wd·η so that decay-before-update is distinguishable from decay-after-update, and a
    # tiny gradient so that ε = 1e-8 (and its place outside the bias correction) matters.
    cfg = default_config(training_steps=1, base_learning_rate=1.0, weight_decay=1.0,
                         dtype='float32')
    eta = 0.5
    theta0 = np.array([2.0, -3.0, 0.5, 1.0], np.float64)
    g = np.array([1.0, -0.25, 1e-6, 0.0], np.float64)
    var = make_var(theta0)
    frozen = make_var(theta0, name='frozen')
    opt = build_optimizer(cfg, [frozen], learning_rate=eta)
    assert opt.weight_decay == 1.0
    opt.apply([tf.constant(g, tf.float32)] * 2, [var, frozen])
    expected = adam_first_step(theta0, g, eta, wd=1.0)
    # Keras computes 1 - β₂ etc. in float32 (relative error ~1e-5 on the step); the effects
    # tested here (ε, decay order) are > 0.1.
    np.testing.assert_allclose(var.numpy(), expected, atol=2e-5)
    np.testing.assert_allclose(frozen.numpy(), adam_first_step(theta0, g, eta, wd=0.0),
                               atol=2e-5)
    # ε = 1e-8 matters for the tiny gradient (ε = 1e-7, Keras' default, would be far off).
    assert abs(adam_first_step(theta0, g, eta, 1.0, eps=1e-7)[2] - expected[2]) > 0.1
    # Sanity of the discriminating power: decay after the update would differ clearly.
    after = (theta0 - (theta0 - adam_first_step(theta0, g, eta, 0.0))) * (1 - eta)
    assert np.max(np.abs(after - expected)) > 0.1


def test_second_adam_step_bias_correction():
    cfg = default_config(training_steps=1, base_learning_rate=1.0, weight_decay=0.0,
                         dtype='float32')
    eta = 0.1
    var = make_var([1.0])
    opt = build_optimizer(cfg, [], learning_rate=eta)
    g1, g2 = 0.3, -0.7
    opt.apply([tf.constant([g1])], [var])
    opt.apply([tf.constant([g2])], [var])
    m = v = 0.0
    theta = 1.0
    for t, g in ((1, g1), (2, g2)):
        m += (g - m) * 0.1
        v += (g * g - v) * 0.001
        theta -= eta * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (math.sqrt(v) + 1e-8)
    np.testing.assert_allclose(var.numpy(), [theta], rtol=1e-6)


def grads_of(loss_fn, variables, optimizer):
    with tf.GradientTape() as tape:
        loss = optimizer.scale_loss(loss_fn())
    return tape.gradient(loss, variables)


def test_static_loss_scale():
    cfg = default_config(training_steps=T)  # float16, fixed scale 128 by default
    assert cfg.dtype == 'float16' and cfg.loss_scale == 128 and not cfg.dynamic_loss_scale
    init = np.array([0.5, -1.5, 2.0], np.float32)
    target = np.array([1.0, 1.0, -1.0], np.float32)
    var_scaled, var_plain = make_var(init), make_var(init)

    scaled = build_optimizer(cfg, [], learning_rate=0.01)
    plain = build_optimizer(default_config(training_steps=T, dtype='float32'), [],
                            learning_rate=0.01)
    assert isinstance(scaled, keras.optimizers.Adam)
    assert scaled.loss_scale_factor == 128.0
    assert plain.loss_scale_factor is None
    assert float(scaled.scale_loss(tf.constant(3.0))) == 384.0
    assert float(plain.scale_loss(tf.constant(3.0))) == 3.0

    def loss_of(var):
        return lambda: tf.reduce_sum(tf.square(var - target))

    g_scaled = grads_of(loss_of(var_scaled), [var_scaled], scaled)
    g_plain = grads_of(loss_of(var_plain), [var_plain], plain)
    np.testing.assert_allclose(g_scaled[0].numpy(), 128 * g_plain[0].numpy(), rtol=1e-6)

    # Adam is nearly invariant to the gradient scale, so equal updates alone do not prove the
    # unscaling; the first moment (0.1·g after one step) does.
    scaled.apply(g_scaled, [var_scaled])
    plain.apply(g_plain, [var_plain])
    np.testing.assert_allclose(var_scaled.numpy(), var_plain.numpy(), rtol=1e-6)
    assert not np.allclose(var_plain.numpy(), init)

    # The scaled optimizer's moment equals 0.1·g of the unscaled gradient: divided by 128.
    m_scaled = scaled._momentums[0].numpy()
    np.testing.assert_allclose(m_scaled, 0.1 * g_plain[0].numpy(), rtol=1e-6)

    # loss_scale 0 means no scaling.
    none = build_optimizer(default_config(training_steps=T, loss_scale=0.0), [])
    assert none.loss_scale_factor is None


def test_no_scaling_for_float32_and_bfloat16():
    for dtype in ('float32', 'bfloat16'):
        for dynamic in (False, True):
            opt = build_optimizer(
                default_config(training_steps=T, dtype=dtype, dynamic_loss_scale=dynamic), [])
            assert isinstance(opt, keras.optimizers.Adam)
            assert opt.loss_scale_factor is None
            assert float(opt.scale_loss(tf.constant(2.5))) == 2.5


def test_dynamic_loss_scale_wrapper():
    cfg = default_config(training_steps=T, dynamic_loss_scale=True, ema_momentum=0.9)
    excluded = make_var([3.0])
    var = make_var([1.0, 2.0])
    opt = build_optimizer(cfg, [excluded], learning_rate=0.01)
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
    assert opt.initial_scale == 128.0
    adam = opt.inner_optimizer
    assert isinstance(adam, keras.optimizers.Adam)
    assert adam.loss_scale_factor is None  # scaling is done by the wrapper only
    np.testing.assert_allclose(adam.weight_decay, 0.044728, rtol=2e-5)
    assert adam.use_ema and adam.ema_momentum == 0.9

    assert float(opt.scale_loss(tf.constant(1.5))) == 192.0
    # Zero gradients: only decay acts; the wrapper passes the exclusions through.
    opt.apply([tf.zeros((2,)), tf.zeros((1,))], [var, excluded])
    np.testing.assert_allclose(var.numpy(), np.array([1.0, 2.0]) * (1 - 0.04472804 * 0.01),
                               rtol=1e-6)
    np.testing.assert_array_equal(excluded.numpy(), [3.0])
    assert int(opt.iterations) == 1
    # A non-finite gradient skips the step and halves the scale.
    before = var.numpy().copy()
    opt.apply([tf.constant([np.inf, 0.0]), tf.zeros((1,))], [var, excluded])
    np.testing.assert_array_equal(var.numpy(), before)
    assert float(opt.dynamic_scale) == 64.0
    assert int(opt.iterations) == 1

    default_scale = build_optimizer(
        default_config(training_steps=T, dynamic_loss_scale=True, loss_scale=0.0), [])
    assert default_scale.initial_scale == 2.0 ** 15


def test_ema():
    cfg = default_config(training_steps=1, base_learning_rate=1.0, weight_decay=0.0,
                         dtype='float32', ema_momentum=0.9)
    var = make_var([1.0, -1.0])
    opt = build_optimizer(cfg, [], learning_rate=0.1)
    assert opt.use_ema and opt.ema_momentum == 0.9 and opt.ema_overwrite_frequency is None
    opt.apply([tf.constant([1.0, 1.0])], [var])
    averages = opt._model_variables_moving_average
    assert len(averages) == 1
    v1 = var.numpy().copy()
    np.testing.assert_allclose(averages[0].numpy(), v1)  # first step: average = value
    opt.apply([tf.constant([1.0, -1.0])], [var])
    v2 = var.numpy().copy()
    np.testing.assert_allclose(averages[0].numpy(), 0.9 * v1 + 0.1 * v2, rtol=1e-6)
    # No periodic overwrite; the averages are written on finalize.
    opt.finalize_variable_values([var])
    np.testing.assert_allclose(var.numpy(), 0.9 * v1 + 0.1 * v2, rtol=1e-6)

    no_ema = build_optimizer(default_config(training_steps=T), [])
    assert not no_ema.use_ema


class _Field(keras.layers.Layer):
    def build(self, input_shape):
        self.w1 = self.add_weight(shape=(3, 4), name='kernel')
        self.b1 = self.add_weight(shape=(4,), name='bias', initializer='zeros')


class _Model(keras.Model):
    def __init__(self, with_field=True):
        super().__init__()
        self.backbone = keras.layers.Dense(2, name='backbone_dense')
        self.backbone.build((None, 3))
        if with_field:
            self.field = _Field(name='field')
            self.field.build(None)
        self.canonical_lefts = self.add_weight(shape=(5, 3), name='canonical_lefts',
                                               initializer='zeros')
        self.canonical_centers = self.add_weight(shape=(2, 1), name='canonical_centers',
                                                 initializer='zeros')
        self.frozen = self.add_weight(shape=(1,), name='canonical_lefts_frozen',
                                      trainable=False)


def test_weight_decay_exclusions_helper():
    model = _Model()
    ids = lambda vs: {id(v) for v in vs}  # noqa: E731
    excluded = weight_decay_exclusions(model, decay_field=False)
    expected = [model.canonical_lefts, model.canonical_centers, model.field.w1, model.field.b1]
    assert ids(excluded) == ids(expected)
    assert len(excluded) == 4  # no duplicates, no non-trainable variables

    excluded = weight_decay_exclusions(model, decay_field=True)
    assert ids(excluded) == ids([model.canonical_lefts, model.canonical_centers])

    model_no_field = _Model(with_field=False)
    assert ids(weight_decay_exclusions(model_no_field, decay_field=False)) == ids(
        [model_no_field.canonical_lefts, model_no_field.canonical_centers])

    # End to end: field and canonical joints keep their values under zero gradients.
    cfg = default_config(training_steps=T, dtype='float32')
    opt = build_optimizer(cfg, weight_decay_exclusions(model, decay_field=False),
                          learning_rate=0.01)
    variables = model.trainable_variables
    for v in variables:
        v.assign(tf.ones_like(v.value))
    opt.apply([tf.zeros_like(v.value) for v in variables], variables)
    excluded_ids = ids(weight_decay_exclusions(model, decay_field=False))
    for v in variables:
        want = 1.0 if id(v) in excluded_ids else 1 - 0.04472804 * 0.01
        np.testing.assert_allclose(v.numpy(), np.full(v.shape, want), rtol=1e-6, err_msg=v.path)


@pytest.mark.parametrize('overrides, field', [
    (dict(training_steps=None), 'training_steps'),
    (dict(training_steps=T, dtype='float64'), 'dtype'),
    (dict(training_steps=T, ema_momentum=1.5), 'ema_momentum'),
    (dict(training_steps=T, loss_scale=-1.0), 'loss_scale'),
    (dict(training_steps=T, weight_decay=-1.0), 'weight_decay'),
])
def test_bad_config(overrides, field):
    with pytest.raises(ValueError, match=field):
        build_optimizer(default_config(**overrides), [])


def test_missing_setting_is_named():
    cfg = dict(default_config(training_steps=T))
    del cfg['ema_momentum']
    with pytest.raises(KeyError, match='ema_momentum'):
        build_optimizer(cfg, [])
