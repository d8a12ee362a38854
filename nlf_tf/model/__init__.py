"""The NLF model: backbone, localizer field, heatmap head, canonical joint table."""

from nlf_tf.model.backbone import (
    BACKBONE_NAMES, ImagePreprocessing, adjust_batchnorm_momenta, adjusted_norm_momentum,
    build_backbone, canonical_backbone_name)
from nlf_tf.model.canonical import CanonicalJoints, is_hand_joint, split_joints
from nlf_tf.model.field import FirstLayerRegularizer, LocalizerField
from nlf_tf.model.head import (
    LocalizerHead, decode_logits, dynamic_logits, heatmap_to_image, heatmap_to_metric,
    shared_logits)
from nlf_tf.model.nlf_model import MODEL_SETTINGS, NLFModel, model_settings
