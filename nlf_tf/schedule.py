"""Learning-rate schedules of the NLF trainer (spec §7.4).

Both schedules are evaluated at the *adjusted* step s = the optimizer's iteration count, i.e.
the number of completed optimizer updates (not micro-steps). They are pure TensorFlow and
graph-safe: `step` may be a Python int, an int/float tensor or a Keras variable (as passed by
Keras 3 optimizers, which call `schedule(optimizer.iterations)`), and the result is a float32
scalar.

The arithmetic follows the original float32 computation (step cast to float32; phase lengths
computed in Python and rounded to float32 when they meet the step; the exponential phases
computed as `initial * rate ** (x / length)` like Keras' ExponentialDecay), so values agree
with the original to float32 rounding.
"""

import numbers

import keras
import tensorflow as tf


def _check_common_args(base_learning_rate, training_steps, lr_cooldown_fraction):
    if (isinstance(training_steps, bool) or not isinstance(training_steps, numbers.Integral)
            or training_steps < 1):
        raise ValueError(
            f'training_steps must be a positive integer, got {training_steps!r}.')
    if not base_learning_rate > 0:
        raise ValueError(f'base_learning_rate must be > 0, got {base_learning_rate!r}.')
    if not 0 < lr_cooldown_fraction < 1:
        # A zero-length cooldown phase would divide by zero at s = training_steps.
        raise ValueError(
            f'lr_cooldown_fraction must be in (0, 1), got {lr_cooldown_fraction!r}.')


def _exp_decay(initial, rate, x, length):
    """initial * rate ** (x / length), all float32 (Keras ExponentialDecay, no staircase).

    `length` is a Python number. A zero length can only occur for a phase that is empty (its
    branch is never selected); 1 is used then so that the unselected branch stays finite.
    """
    length = length if length != 0 else 1.0
    return initial * tf.pow(tf.constant(rate, tf.float32), x / tf.constant(length, tf.float32))


def _step_as_float(step):
    return tf.cast(tf.convert_to_tensor(step), tf.float32)


class NLFLearningRateSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Main NLF schedule (spec §7.4 a).

    With b = base_learning_rate, f = field_lr_factor, T = training_steps,
    P1 = (1 - lr_cooldown_fraction)·T - 1000 and P2 = T - 1000 - P1:

    * s < 1000:              b·f·s/1000   (linear warm-up from 0)
    * 1000 <= s < 1000 + P1: b·f·(1/3)^(s/P1)  -- the exponent uses the raw step s, not
      s - 1000 (quirk of the original; the LR at s = 1000 is already slightly below b·f)
    * s >= 1000 + P1:        (b/30)·0.3^((s - 1000 - P1)/P2)  -- f is NOT applied here.

    For T small enough that P1 <= 0, every step below T lies in the warm-up, as in the original.
    """

    WARMUP_STEPS = 1000

    def __init__(self, base_learning_rate, training_steps, field_lr_factor=1.0,
                 lr_cooldown_fraction=0.08):
        _check_common_args(base_learning_rate, training_steps, lr_cooldown_fraction)
        self.base_learning_rate = float(base_learning_rate)
        self.training_steps = int(training_steps)
        self.field_lr_factor = float(field_lr_factor)
        self.lr_cooldown_fraction = float(lr_cooldown_fraction)
        # Python floats (float64), rounded to float32 only where they meet the step, as in the
        # original where they were Python numbers combined with a float32 step tensor.
        self.phase1_steps = (
            (1 - self.lr_cooldown_fraction) * self.training_steps - self.WARMUP_STEPS)
        self.phase2_steps = self.training_steps - self.WARMUP_STEPS - self.phase1_steps

    def __call__(self, step):
        with tf.name_scope('nlf_learning_rate'):
            s = _step_as_float(step)
            b = tf.constant(self.base_learning_rate, tf.float32)
            peak = b * tf.constant(self.field_lr_factor, tf.float32)
            n_warmup = float(self.WARMUP_STEPS)

            warmup = peak * s / tf.constant(n_warmup, tf.float32)
            phase1 = _exp_decay(peak, 1 / 3, s, self.phase1_steps)
            phase2 = _exp_decay(
                b * tf.constant(1 / 30, tf.float32), 0.3,
                s - tf.constant(n_warmup, tf.float32) - tf.constant(self.phase1_steps, tf.float32),
                self.phase2_steps)

            in_warmup = s < tf.constant(n_warmup, tf.float32)
            in_phase1 = s < tf.constant(n_warmup + self.phase1_steps, tf.float32)
            return tf.where(in_warmup, warmup, tf.where(in_phase1, phase1, phase2))

    def get_config(self):
        return dict(
            base_learning_rate=self.base_learning_rate,
            training_steps=self.training_steps,
            field_lr_factor=self.field_lr_factor,
            lr_cooldown_fraction=self.lr_cooldown_fraction)


class BackboneLearningRateSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Backbone schedule of the dual-learning-rate mode (spec §7.4 b).

    With b = base_learning_rate, g = backbone_lr_factor, T = training_steps,
    P1' = (1 - lr_cooldown_fraction)·T - 5000 and P2' = T - 5000 - P1':

    * s < 3000:                0   (backbone frozen)
    * 3000 <= s < 5000:        b·g·(s - 3000)/2000
    * 5000 <= s < 5000 + P1':  b·g·(1/3)^((s - 5000)/P1')
    * s >= 5000 + P1':         (b/30)·0.3^((s - 5000 - P1')/P2')  -- g not applied.
    """

    FROZEN_STEPS = 3000
    WARMUP_STEPS = 2000

    def __init__(self, base_learning_rate, training_steps, backbone_lr_factor=0.15,
                 lr_cooldown_fraction=0.08):
        _check_common_args(base_learning_rate, training_steps, lr_cooldown_fraction)
        self.base_learning_rate = float(base_learning_rate)
        self.training_steps = int(training_steps)
        self.backbone_lr_factor = float(backbone_lr_factor)
        self.lr_cooldown_fraction = float(lr_cooldown_fraction)
        delay = self.FROZEN_STEPS + self.WARMUP_STEPS
        self.phase1_steps = (1 - self.lr_cooldown_fraction) * self.training_steps - delay
        self.phase2_steps = self.training_steps - delay - self.phase1_steps

    def __call__(self, step):
        with tf.name_scope('nlf_backbone_learning_rate'):
            s = _step_as_float(step)
            b = tf.constant(self.base_learning_rate, tf.float32)
            peak = b * tf.constant(self.backbone_lr_factor, tf.float32)
            n_frozen = float(self.FROZEN_STEPS)
            n_warmup = float(self.WARMUP_STEPS)

            warmup = peak * (s - tf.constant(n_frozen, tf.float32)) / tf.constant(
                n_warmup, tf.float32)
            since_warmup = s - tf.constant(n_warmup, tf.float32) - tf.constant(
                n_frozen, tf.float32)
            phase1 = _exp_decay(peak, 1 / 3, since_warmup, self.phase1_steps)
            phase2 = _exp_decay(
                b * tf.constant(1 / 30, tf.float32), 0.3,
                since_warmup - tf.constant(self.phase1_steps, tf.float32), self.phase2_steps)

            result = tf.where(
                s < tf.constant(n_frozen + n_warmup + self.phase1_steps, tf.float32),
                phase1, phase2)
            result = tf.where(s < tf.constant(n_frozen + n_warmup, tf.float32), warmup, result)
            return tf.where(s < tf.constant(n_frozen, tf.float32), tf.zeros_like(result), result)

    def get_config(self):
        return dict(
            base_learning_rate=self.base_learning_rate,
            training_steps=self.training_steps,
            backbone_lr_factor=self.backbone_lr_factor,
            lr_cooldown_fraction=self.lr_cooldown_fraction)
