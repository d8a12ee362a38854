"""Normalisation layers of the backbone and link layer (NLF §6.1, §7.5).

* `BatchRenormalization`: batch renormalisation whose clipping limits (rmax, rmin, dmax) are
  not constants but three variables shared by every renorm layer of a model, held by one
  `RenormClipping` object. The trainer ramps them once per step (`RenormClipping.update`) from
  (1, 1, 0), which makes the layer exactly plain batch normalisation, to (3, 1/3, 5).
* `GhostBatchNormalization`: batch normalisation over virtual batches of given sizes (NLF's
  `--ghost-bn`, e.g. '64,32,20,32': one virtual batch per training sub-batch).
* `make_normalizer`: the factory for 'batchrenorm' | 'batchnorm' | 'ghostbn' | 'groupnorm'.
* `convert_batchnorms`: a copy of a functional model with every Keras BatchNormalization
  replaced by another normaliser, weights copied.

Ownership of the clipping variables: a model creates ONE `RenormClipping`, keeps it as an
attribute (so checkpoints and `model.weights` contain rmax/rmin/dmax exactly once) and passes
it to each renorm layer. The layers hold it as an untracked reference: their own weights are
exactly those of a Keras BatchNormalization (gamma, beta, moving_mean, moving_variance, in this
order), so weights can be copied between the two. `get_config` leaves the clipping out; after
deserialisation the owner re-links it with `link_renorm_clipping(model, clipping)`.

Variance convention (spec §10 open question 6, settled here): TF's fused batch norm in
training mode returns the Bessel-corrected batch variance (checked with
`tf.compat.v1.nn.fused_batch_norm` in TF 2.21), and fleras' renorm uses that returned value
both inside r and for the moving-variance update. We do the same by default
(`bessel_correction=True`); the normalisation itself always divides by the biased batch
variance, as the fused kernel does. `bessel_correction=False` gives Keras 3
BatchNormalization's convention (biased everywhere). For the 8×8×B maps of NLF the two differ
by a factor n/(n − 1) with n ≥ 64·B, i.e. negligibly.
"""

import keras
import tensorflow as tf

from nlf_tf import geometry

KINDS = ('batchrenorm', 'batchnorm', 'ghostbn', 'groupnorm')
GHOST_MOVING_UPDATES = ('average', 'sequential')


# ----------------------------------------------------------------------------------------
# Shared clipping limits and their ramp (§7.5)
# ----------------------------------------------------------------------------------------

def _check_ramp_args(start, length, renorm_limit_scale):
    if not float(length) > 0:
        raise ValueError(f'renorm ramp length must be > 0, got {length!r}')
    if not float(renorm_limit_scale) >= 0:
        raise ValueError(f'renorm_limit_scale must be >= 0, got {renorm_limit_scale!r}')
    return float(start), float(length), float(renorm_limit_scale)


def renorm_clipping_values(adjusted_step, start=7500, length=10000, renorm_limit_scale=1.0):
    """The clipping limits at optimizer step `adjusted_step` (Python number or tensor) as
    float32 scalars (rmax, rmin, dmax): with ρ = ramp(step; start, length),
    rmax = 1 + 2ρ·scale, rmin = 1/rmax, dmax = 5ρ·scale. Defaults: (1, 1, 0) up to step 7500,
    (2, 0.5, 2.5) at 12 500, (3, 1/3, 5) from 17 500 on."""
    start, length, scale = _check_ramp_args(start, length, renorm_limit_scale)
    rho = geometry.ramp(adjusted_step, start, length)
    rmax = 1.0 + 2.0 * scale * rho
    return rmax, 1.0 / rmax, 5.0 * scale * rho


@keras.saving.register_keras_serializable(package='nlf_tf')
class RenormClipping(keras.layers.Layer):
    """Holds the (rmax, rmin, dmax) variables shared by all `BatchRenormalization` layers of a
    model: non-trainable float32 scalars, initially (1, 1, 0). Not meant to be called; the
    owning model stores it as an attribute so that its variables are tracked once.

    `update(adjusted_step)` sets them from the ramp (`start`, `length`, `renorm_limit_scale`);
    it is graph-safe and meant to be called at the start of every train step.
    """

    def __init__(self, start=7500, length=10000, renorm_limit_scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.start, self.length, self.renorm_limit_scale = _check_ramp_args(
            start, length, renorm_limit_scale)
        # Every replica computes the same values, so the first replica's write is the value.
        def scalar(name, value):
            return self.add_weight(
                shape=(), name=name, dtype='float32', trainable=False, autocast=False,
                initializer=keras.initializers.Constant(value),
                aggregation='only_first_replica')
        self.rmax = scalar('rmax', 1.0)
        self.rmin = scalar('rmin', 1.0)
        self.dmax = scalar('dmax', 0.0)
        self.built = True

    def values(self):
        """Current (rmax, rmin, dmax) as float32 tensors."""
        return (tf.convert_to_tensor(self.rmax), tf.convert_to_tensor(self.rmin),
                tf.convert_to_tensor(self.dmax))

    def set_limits(self, rmax, rmin, dmax):
        """Assigns explicit limits (requires rmin <= rmax and dmax >= 0 when given as Python
        numbers). Returns the new values."""
        if all(isinstance(v, (int, float)) for v in (rmax, rmin, dmax)):
            if not rmin <= rmax:
                raise ValueError(f'renorm clipping needs rmin <= rmax, got rmin={rmin}, '
                                 f'rmax={rmax}')
            if not dmax >= 0:
                raise ValueError(f'renorm clipping needs dmax >= 0, got dmax={dmax}')
        self.rmax.assign(tf.cast(rmax, tf.float32))
        self.rmin.assign(tf.cast(rmin, tf.float32))
        self.dmax.assign(tf.cast(dmax, tf.float32))
        return self.values()

    def update(self, adjusted_step):
        """Sets the limits for optimizer step `adjusted_step` (= micro-step // grad_accum_steps;
        Python number or tensor, also inside tf.function). Returns the new values."""
        rmax, rmin, dmax = renorm_clipping_values(
            adjusted_step, self.start, self.length, self.renorm_limit_scale)
        self.rmax.assign(rmax)
        self.rmin.assign(rmin)
        self.dmax.assign(dmax)
        return rmax, rmin, dmax

    def call(self, inputs=None):
        raise TypeError('RenormClipping is a variable holder and is not called; use values()')

    def get_config(self):
        return {**super().get_config(), 'start': self.start, 'length': self.length,
                'renorm_limit_scale': self.renorm_limit_scale}


# ----------------------------------------------------------------------------------------
# Layers normalising with batch statistics
# ----------------------------------------------------------------------------------------

class _BatchStatisticsNormalization(keras.layers.Layer):
    """Common part of the batch-statistics normalisers: the same weights, initializers and
    inference path as keras.layers.BatchNormalization. Statistics and the normalisation are
    computed in float32 (float64 inputs stay float64); the output has the compute dtype."""

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer='zeros', gamma_initializer='ones',
                 moving_mean_initializer='zeros', moving_variance_initializer='ones',
                 beta_regularizer=None, gamma_regularizer=None, beta_constraint=None,
                 gamma_constraint=None, bessel_correction=True, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f'{type(self).__name__}: axis must be an int, got {axis!r}')
        momentum = float(momentum)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f'{type(self).__name__}: momentum must be in [0, 1], got {momentum}')
        epsilon = float(epsilon)
        if not epsilon > 0:
            raise ValueError(f'{type(self).__name__}: epsilon must be > 0, got {epsilon}')
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = keras.initializers.get(moving_variance_initializer)
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        self.beta_constraint = keras.constraints.get(beta_constraint)
        self.gamma_constraint = keras.constraints.get(gamma_constraint)
        self.bessel_correction = bool(bessel_correction)
        self.gamma = None
        self.beta = None
        self._reduction_axes = None
        self._channel_axis = None

    def build(self, input_shape):
        rank = len(input_shape)
        axis = self.axis if self.axis >= 0 else self.axis + rank
        if not 0 <= axis < rank:
            raise ValueError(f'{type(self).__name__} {self.name!r}: axis {self.axis} is out of '
                             f'range for input shape {tuple(input_shape)}')
        if axis == 0:
            raise ValueError(f'{type(self).__name__} {self.name!r}: axis must not be the batch '
                             'axis 0')
        n_channels = input_shape[axis]
        if n_channels is None:
            raise ValueError(f'{type(self).__name__} {self.name!r}: the channel axis {self.axis} '
                             f'of input shape {tuple(input_shape)} must be known')
        self._channel_axis = axis
        self._reduction_axes = [i for i in range(rank) if i != axis]
        shape = (n_channels,)
        # Same creation order and names as keras.layers.BatchNormalization, so that
        # get_weights()/set_weights() are interchangeable between the two.
        if self.scale:
            self.gamma = self.add_weight(
                shape=shape, name='gamma', initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer, constraint=self.gamma_constraint,
                trainable=True, autocast=False)
        if self.center:
            self.beta = self.add_weight(
                shape=shape, name='beta', initializer=self.beta_initializer,
                regularizer=self.beta_regularizer, constraint=self.beta_constraint,
                trainable=True, autocast=False)
        self.moving_mean = self.add_weight(
            shape=shape, name='moving_mean', initializer=self.moving_mean_initializer,
            trainable=False, autocast=False)
        self.moving_variance = self.add_weight(
            shape=shape, name='moving_variance', initializer=self.moving_variance_initializer,
            trainable=False, autocast=False)
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={axis: n_channels})

    def compute_output_shape(self, input_shape):
        return input_shape

    # -- helpers ---------------------------------------------------------------------------

    def _stats_input(self, inputs, mask):
        if mask is not None:
            raise ValueError(f'{type(self).__name__} {self.name!r} does not support masks')
        inputs = tf.convert_to_tensor(inputs)
        dtype = tf.float64 if inputs.dtype == tf.float64 else tf.float32
        return tf.cast(inputs, dtype)

    def _read(self, variable, dtype):
        return tf.cast(tf.convert_to_tensor(variable), dtype)

    def _gamma_beta(self, dtype):
        n = self.moving_mean.shape[0]
        gamma = self._read(self.gamma, dtype) if self.scale else tf.ones([n], dtype)
        beta = self._read(self.beta, dtype) if self.center else tf.zeros([n], dtype)
        return gamma, beta

    def _moments(self, x):
        """Biased batch mean and variance per channel (gradient flows through both)."""
        return tf.nn.moments(x, self._reduction_axes)

    def _statistics_variance(self, variance, x):
        """The variance used for the renorm factor and the moving average: Bessel-corrected
        (as TF's fused batch norm returns it) or biased, per `bessel_correction`."""
        if not self.bessel_correction:
            return variance
        n_total = tf.cast(tf.size(x), variance.dtype)
        n_per_channel = n_total / tf.cast(tf.shape(x)[self._channel_axis], variance.dtype)
        return variance * n_per_channel / tf.maximum(n_per_channel - 1.0, 1.0)

    def _normalize(self, x, mean, variance, scale, offset):
        if self._channel_axis != x.shape.rank - 1:
            shape = [1] * x.shape.rank
            shape[self._channel_axis] = -1
            mean, variance, scale, offset = [
                tf.reshape(t, shape) for t in (mean, variance, scale, offset)]
        return tf.nn.batch_normalization(x, mean, variance, offset, scale, self.epsilon)

    def _update_moving(self, mean, variance):
        m = self.momentum
        dtype = self.moving_mean.dtype
        moving_mean = self._read(self.moving_mean, dtype)
        moving_variance = self._read(self.moving_variance, dtype)
        self.moving_mean.assign(moving_mean * m + tf.cast(mean, dtype) * (1.0 - m))
        self.moving_variance.assign(moving_variance * m + tf.cast(variance, dtype) * (1.0 - m))

    def _inference(self, x):
        gamma, beta = self._gamma_beta(x.dtype)
        return self._normalize(
            x, self._read(self.moving_mean, x.dtype), self._read(self.moving_variance, x.dtype),
            gamma, beta)

    def get_config(self):
        ser = keras.saving.serialize_keras_object
        return {
            **super().get_config(),
            'axis': self.axis, 'momentum': self.momentum, 'epsilon': self.epsilon,
            'center': self.center, 'scale': self.scale,
            'beta_initializer': ser(self.beta_initializer),
            'gamma_initializer': ser(self.gamma_initializer),
            'moving_mean_initializer': ser(self.moving_mean_initializer),
            'moving_variance_initializer': ser(self.moving_variance_initializer),
            'beta_regularizer': ser(self.beta_regularizer),
            'gamma_regularizer': ser(self.gamma_regularizer),
            'beta_constraint': ser(self.beta_constraint),
            'gamma_constraint': ser(self.gamma_constraint),
            'bessel_correction': self.bessel_correction,
        }


@keras.saving.register_keras_serializable(package='nlf_tf')
class BatchRenormalization(_BatchStatisticsNormalization):
    """Batch renormalisation (Ioffe 2017) with externally owned, shared clipping limits.

    Training (`training=True` and the layer trainable), per channel, with batch statistics
    μ_B, σ²_B and moving statistics μ, σ²:
        y = γ·(x̂·r + d) + β,   x̂ = (x − μ_B)/sqrt(σ²_B + ε)   (gradient flows through μ_B, σ²_B)
        r = clip(sqrt((σ̃²_B + ε)/(σ² + ε)), rmin, rmax),  d = clip((μ_B − μ)/sqrt(σ² + ε), ±dmax)
    with r and d gradient-stopped, then μ ← m·μ + (1 − m)·μ_B and σ² ← m·σ² + (1 − m)·σ̃²_B.
    σ̃²_B is the Bessel-corrected batch variance unless `bessel_correction=False` (see the
    module docstring). Inference: y = γ·(x − μ)/sqrt(σ² + ε) + β, nothing is updated.

    `renorm_clipping`: the model's shared `RenormClipping` (needed for training only). It is
    not part of the layer's weights or config; re-link with `link_renorm_clipping`.
    """

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, renorm_clipping=None, **kwargs):
        super().__init__(axis=axis, momentum=momentum, epsilon=epsilon, **kwargs)
        self.link_renorm_clipping(renorm_clipping)

    @property
    def renorm_clipping(self):
        return self._renorm_clipping

    def link_renorm_clipping(self, renorm_clipping):
        """Points the layer at a (shared) RenormClipping, or None. The reference is kept out
        of Keras/TF tracking so the variables belong to the owner only. Link before the
        training function is traced."""
        if renorm_clipping is not None and not isinstance(renorm_clipping, RenormClipping):
            raise ValueError(
                f'BatchRenormalization {self.name!r}: renorm_clipping must be a RenormClipping '
                f'or None, got {type(renorm_clipping).__name__}')
        object.__setattr__(self, '_renorm_clipping', renorm_clipping)

    def call(self, inputs, training=None, mask=None):
        x = self._stats_input(inputs, mask)
        if not (training and self.trainable):
            return tf.cast(self._inference(x), self.compute_dtype)
        if self._renorm_clipping is None:
            raise ValueError(
                f'BatchRenormalization {self.name!r} has no renorm_clipping for training; pass '
                'the model\'s RenormClipping to the constructor or call '
                'normalization.link_renorm_clipping(model, clipping)')
        rmax, rmin, dmax = [tf.cast(v, x.dtype) for v in self._renorm_clipping.values()]
        mean, variance = self._moments(x)
        stat_variance = self._statistics_variance(variance, x)
        moving_mean = self._read(self.moving_mean, x.dtype)
        moving_variance_eps = self._read(self.moving_variance, x.dtype) + self.epsilon
        r = tf.sqrt((stat_variance + self.epsilon) / moving_variance_eps)
        d = (mean - moving_mean) * tf.math.rsqrt(moving_variance_eps)
        r = tf.stop_gradient(tf.clip_by_value(r, rmin, rmax))
        d = tf.stop_gradient(tf.clip_by_value(d, -dmax, dmax))
        gamma, beta = self._gamma_beta(x.dtype)
        # γ·(x̂·r + d) + β = x̂·(γr) + (γd + β); at r = 1, d = 0 this is bitwise Keras BN.
        outputs = self._normalize(x, mean, variance, gamma * r, gamma * d + beta)
        self._update_moving(mean, stat_variance)
        return tf.cast(outputs, self.compute_dtype)


def parse_ghost_splits(ghost_splits):
    """'64,32,20,32' or a sequence of ints -> tuple of positive split sizes."""
    if isinstance(ghost_splits, str):
        parts = [p.strip() for p in ghost_splits.split(',') if p.strip()]
        try:
            sizes = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(
                f'ghost_splits must be comma-separated integers, got {ghost_splits!r}') from None
    elif isinstance(ghost_splits, (list, tuple)):
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in ghost_splits):
            raise ValueError(f'ghost_splits must contain integers, got {ghost_splits!r}')
        sizes = tuple(ghost_splits)
    else:
        raise ValueError(
            'ghost_splits must be a comma-separated string or a sequence of split sizes, got '
            f'{ghost_splits!r}')
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f'ghost_splits must be one or more positive sizes, got {ghost_splits!r}')
    return sizes


@keras.saving.register_keras_serializable(package='nlf_tf')
class GhostBatchNormalization(_BatchStatisticsNormalization):
    """Batch normalisation over virtual ("ghost") batches (NLF `--ghost-bn`).

    Training: the batch is split along axis 0 into consecutive parts of sizes `ghost_splits`
    (they must sum to the batch size), each part is normalised with its own batch statistics
    and γ, β, and the results are concatenated. Moving statistics
    (`moving_stats_update`):
    * 'average' (default): one update per call with the size-weighted average of the parts'
      means and variances (each example counts equally; the mean equals the full-batch mean,
      the variance is the pooled within-part variance, which is what the layer normalised
      with).
    * 'sequential': one momentum update per part, in order, as fleras' GhostBatchNormalization
      does by calling Keras BN once per part (effective decay momentum^n_parts per call).
    Variances are Bessel-corrected per part for the moving average unless
    `bessel_correction=False`. Inference: moving statistics, no split.
    """

    def __init__(self, ghost_splits, axis=-1, momentum=0.99, epsilon=1e-3,
                 moving_stats_update='average', **kwargs):
        super().__init__(axis=axis, momentum=momentum, epsilon=epsilon, **kwargs)
        self.ghost_splits = parse_ghost_splits(ghost_splits)
        if moving_stats_update not in GHOST_MOVING_UPDATES:
            raise ValueError(f'moving_stats_update must be one of {GHOST_MOVING_UPDATES}, got '
                             f'{moving_stats_update!r}')
        self.moving_stats_update = moving_stats_update

    def call(self, inputs, training=None, mask=None):
        x = self._stats_input(inputs, mask)
        if not (training and self.trainable):
            return tf.cast(self._inference(x), self.compute_dtype)
        total = sum(self.ghost_splits)
        if x.shape[0] is not None:
            if x.shape[0] != total:
                raise ValueError(
                    f'GhostBatchNormalization {self.name!r}: ghost_splits {self.ghost_splits} '
                    f'sum to {total}, but the batch has {x.shape[0]} examples')
        else:
            tf.debugging.assert_equal(
                tf.shape(x)[0], total,
                message=f'GhostBatchNormalization {self.name}: batch size differs from the sum '
                        f'of ghost_splits {self.ghost_splits}')
        gamma, beta = self._gamma_beta(x.dtype)
        outputs, means, variances = [], [], []
        for part in tf.split(x, self.ghost_splits, axis=0):
            mean, variance = self._moments(part)
            outputs.append(self._normalize(part, mean, variance, gamma, beta))
            stat_variance = self._statistics_variance(variance, part)
            if self.moving_stats_update == 'sequential':
                self._update_moving(mean, stat_variance)
            means.append(mean)
            variances.append(stat_variance)
        if self.moving_stats_update == 'average':
            weights = [size / total for size in self.ghost_splits]
            self._update_moving(sum(w * m for w, m in zip(weights, means)),
                                sum(w * v for w, v in zip(weights, variances)))
        return tf.cast(tf.concat(outputs, axis=0), self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), 'ghost_splits': list(self.ghost_splits),
                'moving_stats_update': self.moving_stats_update}


# ----------------------------------------------------------------------------------------
# Factory, momentum, conversion, re-linking
# ----------------------------------------------------------------------------------------

def adjusted_momentum(momentum, num_replicas=1, grad_accum_steps=1):
    """(1 − (1 − m)/num_replicas)^(1/grad_accum_steps) (§6.1); same as
    `backbone.adjusted_norm_momentum`, which it calls."""
    # Imported here: backbone may import this module, and a top-level import would be circular.
    from nlf_tf.model import backbone
    return backbone.adjusted_norm_momentum(
        momentum, grad_accum_steps=grad_accum_steps, num_replicas=num_replicas)


def make_normalizer(kind, momentum=0.99, epsilon=1e-3, renorm_clipping=None, ghost_splits=None,
                    name=None, **layer_kwargs):
    """A normalisation layer of `kind` ∈ KINDS:
    'batchrenorm' → BatchRenormalization (needs the model's `renorm_clipping`),
    'batchnorm' → keras BatchNormalization, 'ghostbn' → GhostBatchNormalization (needs
    `ghost_splits`), 'groupnorm' → keras GroupNormalization with 32 groups (momentum unused).
    `layer_kwargs` (axis, center, scale, initializers, regularizers, constraints, dtype,
    trainable, …) go to the layer constructor."""
    if kind not in KINDS:
        raise ValueError(f'normalizer kind must be one of {KINDS}, got {kind!r}')
    if kind != 'batchrenorm' and renorm_clipping is not None:
        raise ValueError(f'renorm_clipping is only used by kind "batchrenorm", not {kind!r}')
    if kind != 'ghostbn' and ghost_splits is not None:
        raise ValueError(f'ghost_splits is only used by kind "ghostbn", not {kind!r}')
    if kind == 'batchrenorm':
        if renorm_clipping is None:
            raise ValueError(
                'renorm_clipping is required for kind "batchrenorm": the model creates one '
                'RenormClipping and passes it to all of its renorm layers')
        return BatchRenormalization(momentum=momentum, epsilon=epsilon,
                                    renorm_clipping=renorm_clipping, name=name, **layer_kwargs)
    if kind == 'batchnorm':
        return keras.layers.BatchNormalization(
            momentum=momentum, epsilon=epsilon, name=name, **layer_kwargs)
    if kind == 'ghostbn':
        if ghost_splits is None:
            raise ValueError('ghost_splits is required for kind "ghostbn" (e.g. "64,32,20,32")')
        return GhostBatchNormalization(ghost_splits, momentum=momentum, epsilon=epsilon,
                                       name=name, **layer_kwargs)
    return keras.layers.GroupNormalization(groups=32, epsilon=epsilon, name=name, **layer_kwargs)


_GROUPNORM_KEYS = ('axis', 'center', 'scale', 'beta_initializer', 'gamma_initializer',
                   'beta_regularizer', 'gamma_regularizer', 'beta_constraint',
                   'gamma_constraint')
_BATCHNORM_KEYS = _GROUPNORM_KEYS + ('moving_mean_initializer', 'moving_variance_initializer')


def convert_batchnorms(model, kind, renorm_clipping=None, ghost_splits=None):
    """A new functional (or Sequential) model equal to `model` except that every
    keras BatchNormalization, also inside nested functional/Sequential models, is replaced by
    `make_normalizer(kind, …)` with the same name, momentum, epsilon, axis, center/scale,
    initializers, regularizers, constraints, dtype policy and trainable flag. All weights are
    copied (for 'groupnorm' only γ and β; the moving statistics are dropped). The original
    model is left untouched. For 'batchrenorm' pass the owner's `renorm_clipping`; the
    returned model does not own it."""
    if kind not in KINDS:
        raise ValueError(f'normalizer kind must be one of {KINDS}, got {kind!r}')
    if not isinstance(model, keras.Model):
        raise ValueError('convert_batchnorms needs a functional or Sequential keras model, got '
                         f'{type(model).__name__}')
    pairs = []

    def clone_layer(layer):
        if isinstance(layer, keras.layers.BatchNormalization):
            if getattr(layer, 'renorm', False):
                raise ValueError(f'layer {layer.name!r} is a Keras renorm BatchNormalization; '
                                 'converting it is not supported')
            config = layer.get_config()
            keys = _GROUPNORM_KEYS if kind == 'groupnorm' else _BATCHNORM_KEYS
            kwargs = {k: config[k] for k in keys}
            new_layer = make_normalizer(
                kind, momentum=layer.momentum, epsilon=layer.epsilon,
                renorm_clipping=renorm_clipping if kind == 'batchrenorm' else None,
                ghost_splits=ghost_splits if kind == 'ghostbn' else None,
                name=layer.name, dtype=layer.dtype_policy, trainable=layer.trainable, **kwargs)
            replaced.add(id(new_layer))
        else:
            new_layer = layer.__class__.from_config(layer.get_config())
        pairs.append((layer, new_layer))
        return new_layer

    replaced = set()

    def call_layer(layer, *args, **kwargs):
        # Keras BN nodes record mask=None, which GroupNormalization.call does not accept.
        if id(layer) in replaced and kwargs.get('mask', 0) is None:
            del kwargs['mask']
        return layer(*args, **kwargs)

    new_model = keras.models.clone_model(
        model, clone_function=clone_layer, call_function=call_layer, recursive=True)
    for old, new in pairs:
        if isinstance(new, keras.layers.GroupNormalization) and isinstance(
                old, keras.layers.BatchNormalization):
            for attr in ('gamma', 'beta'):
                if getattr(old, attr, None) is not None:
                    getattr(new, attr).assign(getattr(old, attr))
        elif getattr(old, 'weights', None):  # plain keras ops (e.g. `x + y`) have none
            new.set_weights(old.get_weights())
    return new_model


def iter_layers(model):
    """All layers inside `model` (itself included), recursively, each once."""
    return model._flatten_layers(include_self=True, recursive=True)


def link_renorm_clipping(model, renorm_clipping):
    """Links `renorm_clipping` into every BatchRenormalization inside `model` (e.g. after
    deserialisation or conversion). Returns the number of layers linked."""
    n_linked = 0
    for layer in iter_layers(model):
        if isinstance(layer, BatchRenormalization):
            layer.link_renorm_clipping(renorm_clipping)
            n_linked += 1
    return n_linked
