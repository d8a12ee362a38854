"""Tests of the NLF learning-rate schedules (spec §7.4, §9 case 40)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nlf_tf.schedule import BackboneLearningRateSchedule, NLFLearningRateSchedule

B = 2.121e-4
T = 100_000
STEPS = [0, 500, 1000, 50_000, 91_999, 92_000, 100_000]
# Values printed in the spec (§7.4), to their stated precision.
SPEC_VALUES = {500: 1.0605e-4, 1000: 2.0955e-4, 50_000: 1.1598e-4, 91_999: 6.985e-5,
               92_000: 7.07e-6, 100_000: 2.121e-6}


def reference_main(s, b=B, t=T, f=1.0, cooldown=0.08):
    """Straightforward float64 reimplementation of §7.4 a)."""
    p1 = (1 - cooldown) * t - 1000
    p2 = t - 1000 - p1
    if s < 1000:
        return b * f * s / 1000
    if s < 1000 + p1:
        return b * f * (1 / 3) ** (s / p1)
    return b / 30 * 0.3 ** ((s - 1000 - p1) / p2)


def reference_backbone(s, b=B, t=T, g=0.15, cooldown=0.08):
    p1 = (1 - cooldown) * t - 5000
    p2 = t - 5000 - p1
    if s < 3000:
        return 0.0
    if s < 5000:
        return b * g * (s - 3000) / 2000
    if s < 5000 + p1:
        return b * g * (1 / 3) ** ((s - 5000) / p1)
    return b / 30 * 0.3 ** ((s - 5000 - p1) / p2)


def test_main_schedule_matches_spec_and_reference():
    sched = NLFLearningRateSchedule(B, T)
    for s in STEPS:
        value = sched(s)
        assert value.dtype == tf.float32
        np.testing.assert_allclose(float(value), reference_main(s), rtol=2e-6, err_msg=str(s))
        if s in SPEC_VALUES:
            np.testing.assert_allclose(float(value), SPEC_VALUES[s], rtol=5e-4, err_msg=str(s))
    assert float(sched(0)) == 0.0


def test_main_schedule_quirks():
    sched = NLFLearningRateSchedule(B, T, field_lr_factor=2.0)
    # Raw-step exponent: at s = 1000 the LR is already b·f·(1/3)^(1000/91000), not b·f.
    np.testing.assert_allclose(
        float(sched(1000)), 2 * B * (1 / 3) ** (1000 / 91_000), rtol=2e-6)
    assert float(sched(1000)) < 2 * B
    # f multiplies warm-up and phase 1 but not the final drop.
    np.testing.assert_allclose(float(sched(500)), 2 * B * 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(sched(92_000)), B / 30, rtol=1e-6)
    np.testing.assert_allclose(float(sched(96_000)), B / 30 * 0.3 ** 0.5, rtol=2e-6)
    for s in (999, 1000, 91_999, 92_000, 99_999):
        np.testing.assert_allclose(
            float(sched(s)), reference_main(s, f=2.0), rtol=2e-6, err_msg=str(s))


def test_other_cooldown_fraction():
    sched = NLFLearningRateSchedule(1e-3, 20_000, lr_cooldown_fraction=0.25)
    for s in (0, 700, 1000, 9000, 13_999, 14_000, 17_000, 20_000):
        np.testing.assert_allclose(
            float(sched(s)), reference_main(s, b=1e-3, t=20_000, cooldown=0.25), rtol=2e-6,
            err_msg=str(s))


def test_graph_mode_with_tensor_step():
    sched = NLFLearningRateSchedule(B, T)

    @tf.function
    def lr_at(step):
        return sched(step)

    for dtype in (tf.int64, tf.int32):
        values = [float(lr_at(tf.constant(s, dtype))) for s in STEPS]
        np.testing.assert_allclose(values, [reference_main(s) for s in STEPS], rtol=2e-6)

    # The optimizer passes its iteration counter, an int64 Keras variable.
    counter = keras.Variable(91_999, dtype='int64', trainable=False)
    np.testing.assert_allclose(float(lr_at(counter.value)), reference_main(91_999), rtol=2e-6)
    np.testing.assert_allclose(float(sched(counter)), reference_main(91_999), rtol=2e-6)


def test_xla_compiled():
    sched = NLFLearningRateSchedule(B, T)
    lr_at = tf.function(sched.__call__, jit_compile=True)
    np.testing.assert_allclose(
        float(lr_at(tf.constant(50_000, tf.int64))), reference_main(50_000), rtol=2e-6)


def test_main_get_config_round_trip():
    sched = NLFLearningRateSchedule(3e-4, 12_345, field_lr_factor=0.5, lr_cooldown_fraction=0.1)
    config = sched.get_config()
    assert config == dict(base_learning_rate=3e-4, training_steps=12_345, field_lr_factor=0.5,
                          lr_cooldown_fraction=0.1)
    clone = NLFLearningRateSchedule.from_config(config)
    for s in (0, 400, 5000, 10_110, 11_000):
        assert float(clone(s)) == float(sched(s))
    # Also through Keras serialization.
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(sched),
        custom_objects={'NLFLearningRateSchedule': NLFLearningRateSchedule})
    assert isinstance(restored, NLFLearningRateSchedule)
    assert restored.get_config() == config


def test_backbone_schedule():
    sched = BackboneLearningRateSchedule(B, T)
    for s in (0, 2999, 3000, 4000, 5000, 50_000, 91_999, 92_000, 96_000, 100_000):
        value = sched(tf.constant(s, tf.int64))
        assert value.dtype == tf.float32
        np.testing.assert_allclose(float(value), reference_backbone(s), rtol=2e-6, atol=1e-12,
                                   err_msg=str(s))
    assert float(sched(2999)) == 0.0
    np.testing.assert_allclose(float(sched(4000)), B * 0.15 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(sched(5000)), B * 0.15, rtol=1e-6)
    np.testing.assert_allclose(float(sched(92_000)), B / 30, rtol=1e-6)

    config = sched.get_config()
    assert config == dict(base_learning_rate=B, training_steps=T, backbone_lr_factor=0.15,
                          lr_cooldown_fraction=0.08)
    clone = BackboneLearningRateSchedule.from_config(config)
    assert float(clone(60_000)) == float(sched(60_000))


def test_short_run_is_all_warmup():
    # With T below the warm-up length every training step is in the warm-up, as in the original.
    sched = NLFLearningRateSchedule(B, 20)
    for s in range(20):
        np.testing.assert_allclose(float(sched(s)), B * s / 1000, rtol=1e-6)
        assert np.isfinite(float(sched(s)))


@pytest.mark.parametrize('kwargs, field', [
    (dict(base_learning_rate=B, training_steps=0), 'training_steps'),
    (dict(base_learning_rate=B, training_steps=None), 'training_steps'),
    (dict(base_learning_rate=B, training_steps=1.5), 'training_steps'),
    (dict(base_learning_rate=0.0, training_steps=T), 'base_learning_rate'),
    (dict(base_learning_rate=B, training_steps=T, lr_cooldown_fraction=0.0),
     'lr_cooldown_fraction'),
    (dict(base_learning_rate=B, training_steps=T, lr_cooldown_fraction=1.0),
     'lr_cooldown_fraction'),
])
def test_bad_arguments(kwargs, field):
    for cls in (NLFLearningRateSchedule, BackboneLearningRateSchedule):
        with pytest.raises(ValueError, match=field):
            cls(**kwargs)
