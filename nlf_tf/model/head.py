"""The localizer heatmap head (NLF §6.3, `LocalizerHead`): a link layer on the backbone
features and per-point dynamic 1×1 convolutions whose weights come from the localizer field,
decoded by soft-argmax into 2D image positions, translation-free metric 3D positions and
uncertainties.

Shapes: B images, P points, H×W feature cells, c = link channels, C = depth + 2 output channels
(0: uncertainty map, 1: metric-xy heatmap, 2…: depth slices of the 2.5D heatmap).
"""

import math

import keras
import tensorflow as tf

from nlf_tf import geometry
from nlf_tf.model import field as field_lib
from nlf_tf.model import normalization

NORMALIZERS = normalization.KINDS


# ----------------------------------------------------------------------------------------
# Coordinate conversions
# ----------------------------------------------------------------------------------------

def heatmap_to_image(coords01, proc_side, stride, centered_stride):
    """[0, 1] heatmap coordinates -> pixels of the proc_side crop.

    0 maps to the first feature cell and 1 to the last one, whose receptive centre is the last
    pixel index rounded down to a multiple of the stride (224 for 256/32); with a centred stride
    all cells sit half a stride further, so 0 → 16 and 1 → 240 for 256/32.
    """
    coords01 = tf.convert_to_tensor(coords01, dtype_hint=tf.float32)
    last_pixel = int(proc_side) - 1
    last_receptive_center = last_pixel - last_pixel % int(stride)
    result = coords01 * tf.cast(last_receptive_center, coords01.dtype)
    if centered_stride:
        result = result + tf.cast(int(stride) // 2, coords01.dtype)
    return result


def heatmap_to_metric(coords01, proc_side, stride, centered_stride, box_size_m):
    """[..., 3] heatmap coordinates (x, y, z in [0, 1]) -> metres: x and y through the pixel
    positions scaled by box_size_m/proc_side, z times box_size_m."""
    coords01 = tf.convert_to_tensor(coords01, dtype_hint=tf.float32)
    scale = tf.cast(box_size_m / proc_side, coords01.dtype)
    xy = heatmap_to_image(coords01[..., :2], proc_side, stride, centered_stride) * scale
    z = coords01[..., 2:] * tf.cast(box_size_m, coords01.dtype)
    return tf.concat([xy, z], axis=-1)


# ----------------------------------------------------------------------------------------
# Dynamic weights
# ----------------------------------------------------------------------------------------

def split_dynamic_weights(weights, link_dim, n_out_channels, dtype=None):
    """Field output [..., (c+1)·C] -> (kernel [..., c, C], bias [..., C]).

    The flat layout has the input-channel index outer and the output channel inner
    (flat index i·C + j); row c is the bias.
    """
    weights = tf.convert_to_tensor(weights)
    if dtype is not None:
        weights = tf.cast(weights, dtype)
    expected = (link_dim + 1) * n_out_channels
    if weights.shape[-1] is not None and weights.shape[-1] != expected:
        raise ValueError(
            f'dynamic weights have {weights.shape[-1]} entries per point; expected '
            f'(link_dim + 1)·(depth + 2) = {expected}')
    new_shape = tf.concat([tf.shape(weights)[:-1], [link_dim + 1, n_out_channels]], axis=0)
    reshaped = tf.reshape(weights, new_shape)
    return reshaped[..., :link_dim, :], reshaped[..., link_dim, :]


def dynamic_logits(features, weights, n_out_channels):
    """Per-image dynamic 1×1 conv: features [B,H,W,c], weights [B,P,(c+1)·C] -> float32
    logits [B,P,H,W,C] (computed in the features' dtype, then cast)."""
    features = tf.convert_to_tensor(features)
    link_dim = features.shape[-1]
    kernel, bias = split_dynamic_weights(weights, link_dim, n_out_channels, features.dtype)
    logits = (tf.einsum('bhwk,bpkj->bphwj', features, kernel)
              + bias[:, :, tf.newaxis, tf.newaxis, :])
    return tf.cast(logits, tf.float32)


def shared_logits(features, weights, n_out_channels):
    """The same as `dynamic_logits` when all images share the points: weights [P,(c+1)·C]
    become one ordinary 1×1 convolution with P·C output channels. Returns float32
    [B,P,H,W,C]."""
    features = tf.convert_to_tensor(features)
    link_dim = features.shape[-1]
    kernel, bias = split_dynamic_weights(weights, link_dim, n_out_channels, features.dtype)
    n_points = tf.shape(kernel)[0]
    kernel = tf.reshape(tf.transpose(kernel, [1, 0, 2]), [link_dim, -1])  # [c, P·C]
    logits = tf.einsum('bhwk,kn->bhwn', features, kernel) + tf.reshape(bias, [-1])
    shape = tf.shape(logits)
    logits = tf.reshape(logits, tf.stack([shape[0], shape[1], shape[2], n_points, n_out_channels]))
    return tf.cast(tf.transpose(logits, [0, 3, 1, 2, 4]), tf.float32)


def decode_logits(logits, uncert_bias=0.0, uncert_bias2=0.001):
    """float32 logits [B,P,H,W,C] -> (uv01 [B,P,2], xyz01 [B,P,3], uncertainty [B,P]).

    uv01 and z come from the 2.5D heatmap (softmax jointly over h, w, depth), xy of the metric
    output from the separate channel-1 heatmap; x is always decoded from the width axis. The
    uncertainty is the channel-0 map averaged under the (gradient-stopped) 2D marginal of the
    2.5D heatmap, through softplus.
    """
    logits = tf.cast(logits, tf.float32)
    uncertainty_map = logits[..., 0]
    xy01 = geometry.soft_argmax(logits[..., 1], axis=[3, 2])
    heatmap25d = geometry.softmax(logits[..., 2:], axis=[3, 2, 4])
    uvz01 = geometry.decode_heatmap(heatmap25d, axis=[3, 2, 4])
    heatmap2d = tf.reduce_sum(heatmap25d, axis=4)
    uncertainty = tf.reduce_sum(uncertainty_map * tf.stop_gradient(heatmap2d), axis=[3, 2])
    uncertainty = tf.nn.softplus(uncertainty + uncert_bias) + uncert_bias2
    return uvz01[..., :2], tf.concat([xy01, uvz01[..., 2:]], axis=-1), uncertainty


def link_kernel_constraint(constrain_kernel_norm, constraint_rate=1.0, axis=(0, 1, 2)):
    """Per-output-filter L2-norm bound of conv kernels (None if the bound is None or inf)."""
    if constrain_kernel_norm is None or math.isinf(constrain_kernel_norm):
        return None
    return keras.constraints.MinMaxNorm(
        min_value=0.0, max_value=float(constrain_kernel_norm), rate=float(constraint_rate),
        axis=list(axis))


def build_normalizer(normalizer, momentum=0.9, epsilon=1e-3, name=None, ghost_splits=None):
    """The link layer's normaliser, one of `normalization.KINDS`: batch renormalisation (its
    clipping limits are linked by the model that owns them), plain batch norm, ghost batch norm
    (`ghost_splits`) or GroupNorm(32) (the channel count must be divisible by 32)."""
    if normalizer not in NORMALIZERS:
        raise ValueError(f'normalizer must be one of {NORMALIZERS}, got {normalizer!r}')
    if normalizer == 'batchrenorm':
        return normalization.BatchRenormalization(momentum=momentum, epsilon=epsilon, name=name)
    return normalization.make_normalizer(
        normalizer, momentum=momentum, epsilon=epsilon, ghost_splits=ghost_splits, name=name)


# ----------------------------------------------------------------------------------------
# The head
# ----------------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package='nlf_tf')
class LocalizerHead(keras.layers.Layer):
    """Link layer (1×1 conv, no bias → normaliser → SiLU) + localizer field + decoding.

    `call(features [B,H,W,C_backbone], canonical_points [B,P,3] float32, training)` returns
    `(head2d [B,P,2] pixels, head3d [B,P,3] metres (translation-free), uncertainty [B,P])`, all
    float32. The stride used for decoding is `stride_train` when training else `stride_test`.
    The field is `self.field`; its settings are the `field_*` arguments (see LocalizerField).
    `norm_momentum` is used as given (apply `backbone.adjusted_norm_momentum` beforehand for
    multi-replica or gradient-accumulation training).
    """

    def __init__(self, proc_side=256, stride_train=32, stride_test=32, centered_stride=True,
                 box_size_m=2.2, depth=8, backbone_link_dim=512, uncert_bias=0.0,
                 uncert_bias2=0.001, constrain_kernel_norm=20.0, constraint_rate=1.0,
                 field_posenc_dim=1024, field_hidden_layers=1, field_hidden_size=384,
                 lbo_eigval_regul=1e-4,
                 canonical_center=field_lib.DEFAULT_CANONICAL_CENTER,
                 canonical_extent=field_lib.DEFAULT_CANONICAL_EXTENT, field_type='vanilla',
                 field_finetune_gps=True, field_gps_dir=None, field_gps_from_checkpoint=False,
                 normalizer='batchnorm', norm_momentum=0.9, norm_epsilon=1e-3,
                 ghost_splits=None, **kwargs):
        # Canonical points must reach the field as float32; the sublayers cast for themselves.
        kwargs.setdefault('autocast', False)
        super().__init__(**kwargs)
        for arg_name, value in [('proc_side', proc_side), ('stride_train', stride_train),
                                ('stride_test', stride_test), ('depth', depth),
                                ('backbone_link_dim', backbone_link_dim)]:
            if int(value) <= 0:
                raise ValueError(f'LocalizerHead {arg_name} must be positive, got {value}')
        if normalizer not in NORMALIZERS:
            raise ValueError(f'normalizer must be one of {NORMALIZERS}, got {normalizer!r}')
        self.proc_side = int(proc_side)
        self.stride_train = int(stride_train)
        self.stride_test = int(stride_test)
        self.centered_stride = bool(centered_stride)
        self.box_size_m = float(box_size_m)
        self.depth = int(depth)
        self.backbone_link_dim = int(backbone_link_dim)
        self.uncert_bias = float(uncert_bias)
        self.uncert_bias2 = float(uncert_bias2)
        self.constrain_kernel_norm = (
            None if constrain_kernel_norm is None else float(constrain_kernel_norm))
        self.constraint_rate = float(constraint_rate)
        self.normalizer = normalizer
        self.norm_momentum = float(norm_momentum)
        self.norm_epsilon = float(norm_epsilon)
        self.n_out_channels = self.depth + 2

        self.link_conv = keras.layers.Conv2D(
            self.backbone_link_dim, kernel_size=1, use_bias=False,
            # N(0, 2/fan_out), fan_out = 1·1·link_dim, as NLF's EfficientNet conv initializer.
            kernel_initializer=keras.initializers.VarianceScaling(
                2.0, mode='fan_out', distribution='untruncated_normal'),
            kernel_constraint=link_kernel_constraint(
                self.constrain_kernel_norm, self.constraint_rate),
            name='link_conv')
        self.ghost_splits = (None if ghost_splits is None
                             else list(normalization.parse_ghost_splits(ghost_splits)))
        self.link_norm = build_normalizer(
            normalizer, self.norm_momentum, self.norm_epsilon, name='link_norm',
            ghost_splits=self.ghost_splits)
        self.link_activation = keras.layers.Activation('silu', name='link_activation')
        self.field = field_lib.LocalizerField(
            posenc_dim=field_posenc_dim, hidden_layers=field_hidden_layers,
            hidden_size=field_hidden_size, link_dim=self.backbone_link_dim, depth=self.depth,
            eigval_regul=lbo_eigval_regul, canonical_center=canonical_center,
            canonical_extent=canonical_extent, field_type=field_type,
            finetune_gps=field_finetune_gps, gps_dir=field_gps_dir,
            gps_from_checkpoint=field_gps_from_checkpoint, name='field')

    def build(self, features_shape, canonical_points_shape=None):
        features_shape = tuple(features_shape)
        self.link_conv.build(features_shape)
        self.link_norm.build(features_shape[:-1] + (self.backbone_link_dim,))
        self.field.build((None, 3))

    def stride(self, training):
        return self.stride_train if training else self.stride_test

    def link(self, features, training=None):
        """Backbone features -> link features [B,H,W,c] (compute dtype)."""
        x = self.link_conv(features)
        x = self.link_norm(x, training=training)
        return self.link_activation(x)

    def call(self, features, canonical_points, training=None):
        _check_rank(features, 4, 'features')
        _check_rank(canonical_points, 3, 'canonical_points')
        weights = self.field(canonical_points)
        return self.call_with_weights(features, weights, training=training)

    def call_with_weights(self, features, weights, training=None):
        """The head with precomputed field outputs `weights` [B,P,(c+1)·C]."""
        logits = dynamic_logits(self.link(features, training=training), weights,
                                self.n_out_channels)
        return self._decode(logits, training)

    def call_same_canonicals(self, features, canonical_points, training=None):
        """Fast path when every image uses the same points [P,3]: the field runs once and the
        dynamic convolutions become one shared 1×1 convolution. Same outputs as `call` with the
        points tiled over the batch."""
        _check_rank(canonical_points, 2, 'canonical_points')
        weights = self.field(canonical_points)
        logits = shared_logits(self.link(features, training=training), weights,
                               self.n_out_channels)
        return self._decode(logits, training)

    def _decode(self, logits, training):
        uv01, xyz01, uncertainty = decode_logits(logits, self.uncert_bias, self.uncert_bias2)
        stride = self.stride(training)
        head2d = heatmap_to_image(uv01, self.proc_side, stride, self.centered_stride)
        head3d = heatmap_to_metric(
            xyz01, self.proc_side, stride, self.centered_stride, self.box_size_m)
        return head2d, head3d, uncertainty

    def compute_output_shape(self, features_shape, canonical_points_shape):
        batch, n_points = canonical_points_shape[0], canonical_points_shape[1]
        return (batch, n_points, 2), (batch, n_points, 3), (batch, n_points)

    def get_config(self):
        f = self.field
        return {
            **super().get_config(),
            'proc_side': self.proc_side,
            'stride_train': self.stride_train,
            'stride_test': self.stride_test,
            'centered_stride': self.centered_stride,
            'box_size_m': self.box_size_m,
            'depth': self.depth,
            'backbone_link_dim': self.backbone_link_dim,
            'uncert_bias': self.uncert_bias,
            'uncert_bias2': self.uncert_bias2,
            'constrain_kernel_norm': self.constrain_kernel_norm,
            'constraint_rate': self.constraint_rate,
            'field_posenc_dim': f.posenc_dim,
            'field_hidden_layers': f.hidden_layers,
            'field_hidden_size': f.hidden_size,
            'lbo_eigval_regul': f.eigval_regul,
            'canonical_center': list(f.canonical_center),
            'canonical_extent': list(f.canonical_extent),
            'field_type': f.field_type,
            'field_finetune_gps': f.finetune_gps,
            # A reloaded GPS field takes its encoder, box and scales from the saved weights.
            'field_gps_from_checkpoint': f.field_type == 'gps',
            'normalizer': self.normalizer,
            'norm_momentum': self.norm_momentum,
            'norm_epsilon': self.norm_epsilon,
            'ghost_splits': self.ghost_splits,
        }


def _check_rank(x, rank, arg_name):
    shape = getattr(x, 'shape', None)
    if shape is None or getattr(shape, 'rank', 0) is None:
        return
    if len(shape) != rank:
        raise ValueError(f'{arg_name} must have rank {rank}, got shape {tuple(shape)}')
