"""Optimizer of the NLF trainer (spec §7.3): Adam with decoupled weight decay, optional EMA and
loss scaling, built on Keras 3 optimizers.

How the training step must use the returned optimizer
-----------------------------------------------------
* Multiply the loss by the loss scale before differentiating::

      with tf.GradientTape() as tape:
          loss = ...
          scaled_loss = optimizer.scale_loss(loss)
      grads = tape.gradient(scaled_loss, variables)
      optimizer.apply(grads, variables)

  `scale_loss` is the identity when no loss scaling is configured, so the step can always call
  it. `apply` divides the gradients by the same scale before the update (a fixed scale never
  skips a step, even with non-finite gradients, like the original's fixed-scale optimizer; the
  dynamic `LossScaleOptimizer` skips steps with non-finite gradients and halves its scale).
* Call `apply` once per optimizer update (after gradient accumulation, if any). The learning
  rate schedule is evaluated at `optimizer.iterations`, which therefore equals the adjusted step
  s = micro-step // grad_accum_steps. (Exception: under a dynamic loss scale a skipped update
  does not advance `iterations`, as with the original's dynamic loss-scale optimizer.)
* Per `apply`, Keras 3 performs, in this order: decoupled weight decay
  `θ ← θ − θ·wd·η_s` on every non-excluded variable, the Adam update with step t = s + 1,
  the variable constraints, the EMA update (if enabled), then `iterations += 1`.
* Pass `auto_scale_loss=False` to `Model.compile`: otherwise, under the `mixed_float16`
  policy, Keras wraps the optimizer in a dynamic `LossScaleOptimizer` (initial scale 2**15),
  which also switches off the fixed scale configured here.
* With EMA, the averages replace the model's weights only when
  `optimizer.finalize_variable_values(trainable_variables)` is called (Keras' `fit` does this
  at the end of training; a custom loop must do it itself).
"""

import math

import keras

from nlf_tf import schedule as schedule_lib

_DTYPES = ('float16', 'bfloat16', 'float32')
_CANONICAL_JOINT_NAMES = ('canonical_lefts', 'canonical_centers')


def weight_decay_coefficient(weight_decay, training_steps, base_learning_rate):
    """The coefficient wd passed to Keras: weight_decay / sqrt(training_steps) / base_lr.

    Keras multiplies it by the current learning rate, so at the peak LR a decayed variable
    shrinks by weight_decay / sqrt(training_steps) per update (0.044728 for the defaults with
    T = 100 000).
    """
    if training_steps is None or not training_steps > 0:
        raise ValueError(f'training_steps must be > 0, got {training_steps!r}.')
    if not base_learning_rate > 0:
        raise ValueError(f'base_learning_rate must be > 0, got {base_learning_rate!r}.')
    if weight_decay is None or weight_decay < 0:
        raise ValueError(f'weight_decay must be >= 0, got {weight_decay!r}.')
    return weight_decay / math.sqrt(training_steps) / base_learning_rate


def weight_decay_exclusions(model, decay_field):
    """Variables of `model` that must not be weight-decayed (spec §7.3).

    These are the trainable variables whose path or name contains 'canonical_lefts' or
    'canonical_centers' and, unless `decay_field`, all trainable variables of `model.field`
    (if the model has such an attribute). Returned in a stable order without duplicates.
    """
    excluded = []
    seen = set()

    def add(variable):
        if id(variable) not in seen:
            seen.add(id(variable))
            excluded.append(variable)

    for variable in model.trainable_variables:
        names = (str(getattr(variable, 'path', '') or ''), str(variable.name))
        if any(key in name for key in _CANONICAL_JOINT_NAMES for name in names):
            add(variable)

    field = getattr(model, 'field', None)
    if not decay_field and field is not None:
        for variable in field.trainable_variables:
            add(variable)
    return excluded


def _setting(cfg, name):
    try:
        return cfg[name]
    except KeyError:
        raise KeyError(f'The config has no setting {name!r} needed by build_optimizer.') from None


def build_optimizer(cfg, weight_decay_exclusions, learning_rate=None):
    """Builds the NLF optimizer from a config (see `nlf_tf.config`).

    Args:
        cfg: config with base_learning_rate, training_steps, field_lr_factor,
            lr_cooldown_fraction, weight_decay, ema_momentum, dtype, loss_scale and
            dynamic_loss_scale.
        weight_decay_exclusions: variables exempt from weight decay (e.g. the result of
            `weight_decay_exclusions(model, cfg.decay_field)`). Matched by variable identity,
            not by name (Keras 3 name matching would see only the short variable name).
        learning_rate: optional override of the learning rate (a float or a
            LearningRateSchedule); default `NLFLearningRateSchedule` from cfg. The weight-decay
            coefficient is always computed from cfg.base_learning_rate.

    Returns:
        A Keras 3 Adam (β₁ 0.9, β₂ 0.999, ε 1e-8, no AMSGrad) with decoupled weight decay,
        EMA if cfg.ema_momentum < 1, and loss scaling under float16: a fixed scale via the
        Adam's `loss_scale_factor` (cfg.loss_scale; 0 = none) or, with cfg.dynamic_loss_scale,
        a `keras.optimizers.LossScaleOptimizer` wrapping it (initial scale cfg.loss_scale, or
        2**15 if 0). The training step must call `optimizer.scale_loss(loss)` before computing
        gradients and `optimizer.apply(grads, variables)`, which unscales them (module doc).
    """
    base_lr = _setting(cfg, 'base_learning_rate')
    training_steps = _setting(cfg, 'training_steps')
    if training_steps is None:
        raise ValueError('training_steps must be set to build the optimizer (it has no default).')

    if learning_rate is None:
        learning_rate = schedule_lib.NLFLearningRateSchedule(
            base_learning_rate=base_lr,
            training_steps=training_steps,
            field_lr_factor=_setting(cfg, 'field_lr_factor'),
            lr_cooldown_fraction=_setting(cfg, 'lr_cooldown_fraction'))

    wd = weight_decay_coefficient(_setting(cfg, 'weight_decay'), training_steps, base_lr)

    ema_momentum = _setting(cfg, 'ema_momentum')
    if ema_momentum is None or not 0 <= ema_momentum <= 1:
        raise ValueError(f'ema_momentum must be in [0, 1], got {ema_momentum!r}.')
    use_ema = ema_momentum < 1

    dtype = _setting(cfg, 'dtype')
    if dtype not in _DTYPES:
        raise ValueError(f'dtype must be one of {_DTYPES}, got {dtype!r}.')
    loss_scale = _setting(cfg, 'loss_scale')
    if loss_scale is None or loss_scale < 0:
        raise ValueError(f'loss_scale must be >= 0, got {loss_scale!r}.')
    dynamic = bool(_setting(cfg, 'dynamic_loss_scale'))
    # Loss scaling only matters for float16 (bfloat16 has float32's exponent range).
    use_static_scale = dtype == 'float16' and not dynamic and loss_scale > 0
    static_scale = float(loss_scale) if use_static_scale else None

    optimizer = keras.optimizers.Adam(
        learning_rate=learning_rate,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        amsgrad=False,
        weight_decay=wd if wd > 0 else None,
        use_ema=use_ema,
        ema_momentum=ema_momentum if use_ema else 0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=static_scale)
    # Must happen before the optimizer is built (i.e. before the first apply).
    optimizer.exclude_from_weight_decay(var_list=list(weight_decay_exclusions))

    if dtype == 'float16' and dynamic:
        optimizer = keras.optimizers.LossScaleOptimizer(
            optimizer, initial_scale=float(loss_scale) if loss_scale else 2.0 ** 15)
    return optimizer
