"""The NLF model (NLF `nlf_model.py`): backbone + localizer heatmap head + canonical joint
table, with the inference path to absolute camera-space 3D.

The trainer uses the parts directly (`backbone`, `heatmap_head`, `canonical_locs()`, `field`);
`call` is the inference path.
"""

import types

import easydict
import keras
import numpy as np
import tensorflow as tf

from nlf_tf import config as config_lib
from nlf_tf import reconstruction
from nlf_tf.model import backbone as backbone_lib
from nlf_tf.model import canonical as canonical_lib
from nlf_tf.model import head as head_lib
from nlf_tf.model import normalization

# The settings the model depends on (names of nlf_tf.config); get_config stores exactly these.
MODEL_SETTINGS = (
    'proc_side', 'backbone', 'depth', 'backbone_link_dim', 'field_type', 'field_posenc_dim',
    'field_hidden_layers', 'field_hidden_size', 'lbo_eigval_regul', 'uncert_bias',
    'uncert_bias2', 'box_size_m', 'stride_train', 'stride_test', 'centered_stride',
    'constrain_kernel_norm', 'constraint_rate', 'trainable_canonical_joints',
    'fullpersp_l2_regul', 'weak_perspective', 'mix_3d_inside_fov', 'nll_loss',
    'fix_uncert_factor', 'min_depth', 'grad_accum_steps', 'field_gps_dir', 'finetune_gps',
    'batch_renorm', 'renorm_limit_scale', 'ghost_bn', 'group_norm',
)


def normalizer_kind(cfg):
    """The normaliser of backbone and link layer chosen by the settings (NLF's precedence:
    group norm, then ghost BN, then batch renormalisation, else plain batch norm)."""
    if cfg.group_norm:
        return 'groupnorm'
    if cfg.ghost_bn:
        return 'ghostbn'
    return 'batchrenorm' if cfg.batch_renorm else 'batchnorm'

# Points whose (unscaled) uncertainty is at least this are left out of the translation solve
# at inference when the NLL loss is on.
UNCERTAINTY_GATE = 0.3


def model_settings(cfg):
    """The MODEL_SETTINGS subset of `cfg` (a dict or EasyDict) as a plain dict; missing settings
    take the nlf_tf.config defaults."""
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise TypeError(f'cfg must be a dict or EasyDict, got {type(cfg).__name__}')
    defaults = config_lib.default_config()
    return {name: cfg[name] if name in cfg else defaults[name] for name in MODEL_SETTINGS}


@keras.saving.register_keras_serializable(package='nlf_tf')
class NLFModel(keras.Model):
    """NLF model.

    Args:
        cfg: settings (see MODEL_SETTINGS; others are ignored).
        joint_names: names of the global canonical joint table (J entries).
        canonical_init: [J, 3] initial canonical positions (metres).

    Batch-norm momenta (backbone and link layer) are adjusted for `grad_accum_steps` and the
    number of replicas of the distribution strategy active at construction (NLF §6.1).
    """

    def __init__(self, cfg, joint_names, canonical_init, gps_from_checkpoint=False, **kwargs):
        # Intrinsics and canonical points must stay float32; the sublayers cast for themselves.
        kwargs.setdefault('autocast', False)
        super().__init__(**kwargs)
        # A read-only mapping: Keras would wrap a plain dict attribute into a TrackedDict.
        self._settings = types.MappingProxyType(model_settings(cfg))
        c = self.cfg
        if int(c.grad_accum_steps) < 1:
            raise ValueError(f'grad_accum_steps must be >= 1, got {c.grad_accum_steps}')
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync

        kind = normalizer_kind(c)
        ghost_splits = c.ghost_bn or None
        # One shared set of renorm clipping limits, ramped by the trainer (NLF §7.5).
        self.renorm_clipping = (
            normalization.RenormClipping(renorm_limit_scale=c.renorm_limit_scale,
                                         name='renorm_clipping')
            if kind == 'batchrenorm' else None)
        backbone = backbone_lib.build_backbone(
            c.backbone, c.proc_side, centered_stride=bool(c.centered_stride))
        backbone_lib.adjust_batchnorm_momenta(backbone, c.grad_accum_steps, num_replicas)
        if kind != 'batchnorm':
            backbone = normalization.convert_batchnorms(
                backbone, kind, renorm_clipping=self.renorm_clipping, ghost_splits=ghost_splits)
        self.backbone = backbone
        self.heatmap_head = head_lib.LocalizerHead(
            proc_side=c.proc_side, stride_train=c.stride_train, stride_test=c.stride_test,
            centered_stride=c.centered_stride, box_size_m=c.box_size_m, depth=c.depth,
            backbone_link_dim=c.backbone_link_dim, uncert_bias=c.uncert_bias,
            uncert_bias2=c.uncert_bias2, constrain_kernel_norm=c.constrain_kernel_norm,
            constraint_rate=c.constraint_rate, field_posenc_dim=c.field_posenc_dim,
            field_hidden_layers=c.field_hidden_layers, field_hidden_size=c.field_hidden_size,
            lbo_eigval_regul=c.lbo_eigval_regul, field_type=c.field_type,
            field_finetune_gps=bool(c.finetune_gps), field_gps_dir=c.field_gps_dir,
            field_gps_from_checkpoint=bool(gps_from_checkpoint),
            norm_momentum=backbone_lib.adjusted_norm_momentum(
                0.9, c.grad_accum_steps, num_replicas),
            normalizer=kind, ghost_splits=ghost_splits,
            name='heatmap_head')
        feature_side = c.proc_side // backbone_lib.OUTPUT_STRIDE
        backbone_channels = self.backbone.output.shape[-1]
        self.heatmap_head.build((None, feature_side, feature_side, backbone_channels))
        self.canonical_joints = canonical_lib.CanonicalJoints(
            joint_names, canonical_init, trainable=bool(c.trainable_canonical_joints),
            name='canonical_joints')
        if self.renorm_clipping is not None:
            normalization.link_renorm_clipping(self, self.renorm_clipping)
        # All parts are built above; mark the model built so that weight saving and optimizer
        # construction work before the first call.
        self.built = True

    @property
    def cfg(self):
        """The model settings (MODEL_SETTINGS) as a fresh EasyDict."""
        return easydict.EasyDict(dict(self._settings))

    @property
    def field(self):
        """The localizer field (its variables are excluded from weight decay by default)."""
        return self.heatmap_head.field

    @property
    def joint_names(self):
        return self.canonical_joints.joint_names

    def canonical_locs(self):
        """float32 [J, 3], differentiable w.r.t. the canonical delta variables."""
        return self.canonical_joints.canonical_locs()

    def call(self, inputs, training=None):
        """Inference: dict(image [B,S,S,3] in [0,1], intrinsics [B,3,3], canonical_points
        [B,P,3]) -> dict(coords2d [B,P,2] px, coords3d_rel [B,P,3] m, uncertainty [B,P],
        coords3d [B,P,3] m camera frame)."""
        for key in ('image', 'intrinsics', 'canonical_points'):
            if key not in inputs:
                raise KeyError(f'NLFModel inputs lack {key!r}')
        c = self.cfg
        intrinsics = tf.cast(inputs['intrinsics'], tf.float32)
        canonical_points = tf.cast(inputs['canonical_points'], tf.float32)
        features = self.backbone(inputs['image'], training=training)
        head2d, head3d, uncertainty = self.heatmap_head(
            features, canonical_points, training=training)
        coords3d = reconstruction.reconstruct_absolute(
            head2d, head3d, intrinsics, mix_3d_inside_fov=c.mix_3d_inside_fov,
            weak_perspective=c.weak_perspective,
            point_validity_mask=uncertainty < UNCERTAINTY_GATE if c.nll_loss else None,
            border_factor1=1, border_factor2=0.6, mix_based_on_3d=True,
            proc_side=c.proc_side, stride=self.heatmap_head.stride(training),
            centered_stride=c.centered_stride, fullpersp_l2_regul=c.fullpersp_l2_regul,
            min_depth=c.min_depth)
        uncert_factor = 1.0 if c.fix_uncert_factor else 3.0
        return dict(coords2d=head2d, coords3d_rel=head3d, uncertainty=uncertainty * uncert_factor,
                    coords3d=coords3d)

    def get_config(self):
        settings = dict(self._settings)
        gps = settings['field_type'] == 'gps'
        if gps:
            settings['field_gps_dir'] = None  # the GPS assets travel as weights
        return {
            'name': self.name,
            'cfg': settings,
            'gps_from_checkpoint': gps,
            'joint_names': list(self.canonical_joints.joint_names),
            'canonical_init': self.canonical_joints.initial_positions.tolist(),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config['canonical_init'] = np.asarray(config['canonical_init'], np.float32)
        return cls(**config)
