"""The PCA keypoint loss inside NLF training: fitting `PCALoss` on a dataset skeleton's
training labels and adding its weighted term to the trainer's loss.

The term applies to the sub-batch whose examples carry that skeleton's joints (`kp3d` for 3D,
`kp2d` for 2D by default). Predictions are taken in the labels' frame: crop pixels
(`project_pose` of the absolute prediction) for 2D, root-relative metres for 3D. An example
contributes only when all of the skeleton's joints are annotated in it (the model is queried
only at annotated joints); the rectified per-keypoint errors of those examples are averaged,
as lightning-pose averages over all entries.
"""

import numpy as np
import tensorflow as tf

from nlf_tf import geometry, joint_table, specs
from nlf_tf.pca_loss import PCALoss

DEFAULT_CATEGORY = {'2d': 'kp2d', '3d': 'kp3d'}


def skeleton_joint_ids(spec_name, joint_table_names):
    """Rows of the global joint table for the joints of data spec `spec_name`, in the spec's
    order, and the index of its root joint among them."""
    spec = specs.load_spec(spec_name)
    where = f'data spec {specs.spec_path(spec_name)}'
    raw_names = spec.get('joint_names')
    if not raw_names:
        raise ValueError(f'{where} has no "joint_names"')
    names = joint_table.table_joint_names(spec)  # with the dataset's suffix, e.g. pelv_mads
    table = {n: i for i, n in enumerate(joint_table_names)}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(
            f'{where}: joint_names {unknown} are not in the global joint table of this run')
    root = spec.get('root_joint')
    # Without a root (e.g. COCO) 3D labels are made relative to the first joint.
    root_index = raw_names.index(root) if root in raw_names else 0
    return np.array([table[n] for n in names], np.int32), root_index


def gather_skeleton(values, point_ids, validity, joint_ids):
    """Values [b, P, C] at the slots holding each skeleton joint → ([b, K, C], present [b, K])."""
    joint_ids = tf.constant(joint_ids, tf.int32)
    match = tf.logical_and(
        tf.equal(tf.cast(point_ids, tf.int32)[:, :, tf.newaxis], joint_ids),
        tf.cast(validity, tf.bool)[:, :, tf.newaxis])  # [b, P, K]
    present = tf.reduce_any(match, axis=1)
    slot = tf.argmax(tf.cast(match, tf.int32), axis=1, output_type=tf.int32)
    return tf.gather(values, slot, axis=1, batch_dims=1), present


def _coords_of(part, coords, min_depth):
    """Ground truth of a (raw, dense-format) sub-batch in the frame of the PCA labels."""
    if coords == '3d':
        return part['coords3d_true']
    if 'coords2d_true' in part:
        return part['coords2d_true']
    return geometry.project_pose(part['coords3d_true'], part['intrinsics'], min_depth)


def collect_labels(dataset, category, joint_ids, root, coords, num_batches, min_depth=0.001):
    """Training labels (N, K, C) with NaN for unannotated joints, from `num_batches` elements
    of a micro-batch dataset; 3D labels are made relative to the root joint."""
    frames = []
    for batch in dataset.take(num_batches):
        part = batch[category]
        values, present = gather_skeleton(
            _coords_of(part, coords, min_depth), part['point_ids'], part['point_validity'],
            joint_ids)
        values = values.numpy().astype(np.float64)
        present = present.numpy()
        values[~present] = np.nan
        if coords == '3d':
            values = values - values[:, root:root + 1]  # NaN where the root is missing
        frames.append(values)
    if not frames:
        raise ValueError(f'no training batches to fit the PCA loss on (category {category!r})')
    return np.concatenate(frames, axis=0).astype(np.float32)


class PCATerm:
    """The weighted PCA loss of one sub-batch category.

    Args:
      layer: a fitted `PCALoss`.
      category: 'param', 'kp3d', 'dense' or 'kp2d'.
      joint_ids: rows of the global joint table, in the PCA's keypoint order.
      root: index of the root joint among them (3D).
      coords: '2d' or '3d'.
      min_depth: project_pose clamp.
    """

    def __init__(self, layer, category, joint_ids, root, coords, min_depth=0.001):
        if coords not in ('2d', '3d'):
            raise ValueError(f'pca_coords must be "2d" or "3d", got {coords!r}')
        self.layer = layer
        self.category = category
        self.joint_ids = np.asarray(joint_ids, np.int32)
        self.root = int(root)
        self.coords = coords
        self.min_depth = min_depth

    @property
    def loss_name(self):
        return self.layer.loss_name

    def predictions(self, inps, preds):
        """Predicted skeletons [b, K, C] in the labels' frame and which rows are complete."""
        part = inps[self.category]
        coords3d = preds[self.category]['coords3d_abs']
        if self.coords == '2d':
            values = geometry.project_pose(coords3d, part['intrinsics'], self.min_depth)
        else:
            values = coords3d
        skeleton, present = gather_skeleton(
            values, part['point_ids'], part['point_validity'], self.joint_ids)
        if self.coords == '3d':
            skeleton = skeleton - skeleton[:, self.root:self.root + 1]
        return skeleton, tf.reduce_all(present, axis=1)

    def __call__(self, inps, preds, stage='train'):
        """Dict of the unweighted loss, its weight and the weighted loss (log names as
        lightning-pose's: `{stage}_{loss_name}_loss`, `{loss_name}_weight`,
        `{stage}_{loss_name}_loss_weighted`)."""
        skeleton, complete = self.predictions(inps, preds)
        # Incomplete rows hold arbitrary slots; replace them before the layer sees them so
        # they cannot inject NaN/Inf, and mask them out of the mean.
        skeleton = tf.where(complete[:, tf.newaxis, tf.newaxis], skeleton,
                            tf.zeros_like(skeleton))
        errors = self.layer.per_keypoint_error(skeleton)  # [b, K]
        excess = errors - tf.convert_to_tensor(self.layer.epsilon.value)
        rectified = tf.where(excess <= 0.0, tf.zeros_like(excess), excess)
        weights = tf.cast(complete, tf.float32)[:, tf.newaxis] * tf.ones_like(rectified)
        loss = tf.math.divide_no_nan(tf.reduce_sum(rectified * weights), tf.reduce_sum(weights))
        weight = self.layer.weight
        name = self.loss_name
        return {f'{stage}_{name}_loss': loss, f'{name}_weight': weight,
                f'{stage}_{name}_loss_weighted': weight * loss}


def build_pca_term(cfg, joint_table_names, dataset):
    """Fits the PCA loss named by the `pca_*` settings on `dataset` (micro-batches of the
    training stream) and returns the `PCATerm`, or None when `cfg.pca_loss` is off."""
    if not cfg.pca_loss:
        return None
    coords = cfg.pca_coords
    if coords not in ('2d', '3d'):
        raise ValueError(f'--pca_coords must be 2d or 3d, got {coords!r}')
    category = cfg.pca_category or DEFAULT_CATEGORY[coords]
    joint_ids, root = skeleton_joint_ids(cfg.pca_dataset, joint_table_names)
    labels = collect_labels(dataset, category, joint_ids, root, coords, cfg.pca_fit_batches,
                            cfg.min_depth)
    layer = PCALoss(
        cfg.pca_loss_name, components_to_keep=parse_components(cfg.pca_components_to_keep),
        empirical_epsilon_percentile=cfg.pca_epsilon_percentile, epsilon=cfg.pca_epsilon,
        empirical_epsilon_multiplier=cfg.pca_epsilon_multiplier,
        columns_for_singleview_pca=parse_int_list(cfg.pca_columns, 'pca_columns'),
        mirrored_column_matches=parse_int_list(cfg.pca_mirrored_column_matches,
                                               'pca_mirrored_column_matches', nested=True),
        data_module=labels, log_weight=cfg.pca_log_weight,
        centering_method=cfg.pca_centering_method or None, nan_policy=cfg.pca_nan_policy,
        coords_dim=3 if coords == '3d' else 2, name='pca_loss')
    return PCATerm(layer, category, joint_ids, root, coords, cfg.min_depth)


def parse_components(text):
    """'5' → 5 (a count), '0.99' → 0.99 (a variance fraction), as lightning-pose's types."""
    text = str(text).strip()
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise ValueError(
                f'--pca_components_to_keep must be an int or a float, got {text!r}') from None


def parse_int_list(text, flag, nested=False):
    """'0,2,5' → [0, 2, 5]; nested: '0,1;2,3' → [[0, 1], [2, 3]]; empty/None → None."""
    if text is None or not str(text).strip():
        return None
    try:
        if nested and ';' in text:
            return [[int(v) for v in group.split(',')] for group in text.split(';')]
        return [int(v) for v in str(text).split(',')]
    except ValueError:
        raise ValueError(f'--{flag} must be comma-separated integers, got {text!r}') from None
