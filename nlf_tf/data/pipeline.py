"""The training input pipeline: prepared TFRecord shards -> the trainer's dense micro-batches.

Everything after reading the files is TensorFlow ops (no py_function / from_generator).

Streams. A *stream* is one (category, dataset) source: its files in a seeded order per epoch
(NumPy permutations precomputed for EPOCH_ORDERS epochs, then cycled), records interleaved from
`FILE_CYCLE` files at a time, then shuffled within consecutive blocks of `shuffle_block` records
by a stateless permutation of (seed, stream, block). Record k of the stream (counted from the
very start) gets the stateless RNG key (seed, category, dataset, k), so its augmentation does not
depend on threading, on where a run started, or on other streams. (NLF shuffles each whole epoch;
the block shuffle is the streaming equivalent.)

Mixing. Within a category, the datasets are merged slot by slot: slot t of the category goes to
dataset d with probability weight_d / sum(weights), by a stateless draw from (seed, category, t);
step i takes the slots [i b, (i + 1) b) for sub-batch size b. So every sub-batch has exactly b
examples and the composition is a pure function of the seed.

Bad records (undecodable JPEG, image size differing from the stored one, non-finite camera or
box, empty box, missing or malformed features, joint count not matching the spec) raise inside
the per-example map and are dropped with `ignore_errors`; the step then fills its b slots by
repeating its good examples (an all-invalid, black placeholder if none was good). The number
dropped per step and category is counted, see `make_training_dataset`.

Resuming. `start_step = k` skips k b records of each category's merged record stream with
`Dataset.skip` BEFORE decoding, so a resumed run sees exactly the elements k, k + 1, ... of an
uninterrupted run (bad records included, because the step -> records assignment does not depend
on which records are bad). Cost: the skipped records are still read from disk (TFRecord has no
index) and pass through the block shuffle, but are not parsed, decoded or augmented: roughly the
time to read k * b records (e.g. 10^5 steps x 32 records of ~40 kB: ~130 GB of reading per
category, minutes on a local SSD).

Distribution. With a `tf.distribute.InputContext` (distribute_datasets_from_function) input
pipeline i of n reads every n-th file of each source (or every n-th record of a source with
fewer than n files: then every pipeline reads all of that source's records) with its own keys.

Example layout (P = num_points slots, the trainer's format, see the micro-batch docs):
- kp3d: the valid joints (joint order, after the flip's mirror permutation) with point_ids =
  global joint-table rows and coords3d_true in crop-camera metres, then invalid filler points;
  root_index = slot of the first valid joint whose name starts with 'pelv' (-1 if none).
- kp2d: the valid joints with coords2d_true in crop pixels, then fillers.
- dense: the valid joints, then the DensePose points (point_id -1, canonical position from the
  record's `dense_canonical`, x negated when flipped), then fillers. Rows longer than P are cut.
Filler points are uniform in `filler_box` (canonical metres) with point_id -1 and invalid.
Coordinates are 0 where invalid; canonical_points are 0 at joint slots (the trainer takes those
from its table).
- param (body-model ground truth, spec §7.2; the trainer computes coords3d_true from the
  parameters, see `make_param_example` for the keys): P points sampled in the canonical space of
  the record's body-model family (`nlf_tf.data.param_sampling`: surface, interior, joints),
  point_ids all -1, the parameters re-expressed in the crop camera. Param examples are never
  flipped; partial-visibility crops only for datasets whose spec has "single_person": true
  (default False for param). A record whose body_model is unknown or has no canonical assets,
  whose pose length does not match the family, or whose parameters are not finite is bad
  (dropped and counted like the others).
"""

import os

import numpy as np
import tensorflow as tf
from absl import logging

from nlf_tf import data_sources
from nlf_tf.body_models import kinds
from nlf_tf.data import augmentation
from nlf_tf.data import backgrounds
from nlf_tf.data import occluders
from nlf_tf.data import param_sampling
from nlf_tf.data import tfrecord

CATEGORIES = ('param', 'kp3d', 'dense', 'kp2d')
# Canonical bounding box (metres, the shared canonical frame) of the random filler points.
FILLER_BOX = ((-0.8, -1.0, -0.25), (0.8, 1.0, 0.25))
# Epochs whose file orders are precomputed (then cycled) and files read concurrently per stream.
EPOCH_ORDERS = 64
FILE_CYCLE = 4
# 2D keypoints (and DensePose points) below this fraction of the stored height are invalid (NLF).
MAX_Y_FRACTION = 0.95
_SEED_TAG = 0x4E4C46  # 'NLF': separates the data keys from other users of the seed

_logged_notes = set()


def _log_once(note):
    if note not in _logged_notes:
        _logged_notes.add(note)
        logging.info(note)


# ----------------------------------------------------------------------------------------
# Per-dataset joint tables (Python, at construction)
# ----------------------------------------------------------------------------------------

class DatasetTable:
    """Joint metadata of one dataset: global rows, mirror permutation, root flags.

    rows int32 [J]: global joint-table row of each joint of the dataset (file order), from the
      spec's table names (`table_joint_names` if the spec lists them, else joint name + suffix);
    mirror int32 [J]: index of each joint's mirror partner (itself for centre joints), from the
      spec's `mirror_pairs` (`nlf_tf.joint_table.spec_mirror_indices`);
    is_root bool [J]: the joint's name starts with 'pelv';
    single_person: partial-visibility crops allowed (spec "single_person", default True; False
      for param datasets, whose loader in NLF applies it only to a list of single-person sets);
    drop_negative: 2D joints with a negative coordinate are invalid (spec "loader_drop_negative",
      default: True for kp2d, False otherwise, as in NLF's loaders).
    """

    def __init__(self, name, spec, joint_table_names, category='kp2d'):
        from nlf_tf import joint_table

        self.name = name
        spec = dict(spec)
        spec.setdefault('name', name)
        # Background replacement probability 0.2 instead of --background_aug_prob (spec §9.1).
        self.realistic_background = bool(spec.get('realistic_background', False))
        if category == 'param':
            # Body-model datasets supervise sampled canonical points, not table joints.
            self.rows = np.zeros(0, np.int32)
            self.mirror = np.zeros(0, np.int32)
            self.is_root = np.zeros(0, bool)
            self.single_person = bool(spec.get('single_person', False))
            self.drop_negative = False
            body_model = spec.get('body_model')
            self.body_model_family = (body_model.get('type') if isinstance(body_model, dict)
                                      else None)
            return
        self.body_model_family = None
        names = spec.get('joint_names')
        if not isinstance(names, list) or not names:
            raise ValueError(f'data spec {name!r}: field "joint_names" must be a non-empty list')
        if 'table_joint_names' in spec:
            table_names = list(spec['table_joint_names'])
            if len(table_names) != len(names):
                raise ValueError(f'data spec {name!r}: field "table_joint_names" must have as '
                                 f'many entries as "joint_names" ({len(names)})')
        else:
            table_names = joint_table.table_joint_names(spec)
            if not table_names:
                raise ValueError(f'data spec {name!r} has "in_joint_table": false; its joints '
                                 f'cannot be supervised through point_ids')
        row_of = {n: i for i, n in enumerate(joint_table_names)}
        missing = [n for n in table_names if n not in row_of]
        if missing:
            raise ValueError(f'data spec {name!r}: joints {missing} are not in the global joint '
                             f'table (joint_table_names)')
        self.rows = np.array([row_of[n] for n in table_names], np.int32)
        self.mirror = joint_table.spec_mirror_indices(spec)
        self.is_root = np.array([n.startswith('pelv') for n in names], bool)
        self.single_person = bool(spec.get('single_person', True))
        drop = spec.get('loader_drop_negative')
        self.drop_negative = (category == 'kp2d') if drop is None else bool(drop)

    @property
    def num_joints(self):
        return len(self.rows)


def _stack_tables(tables):
    """Per-category constants [D, J_max] (padded) for in-graph lookup by dataset index."""
    j_max = max(max(t.num_joints for t in tables), 1)
    rows = np.full((len(tables), j_max), -1, np.int32)
    mirror = np.tile(np.arange(j_max, dtype=np.int32), (len(tables), 1))
    is_root = np.zeros((len(tables), j_max), bool)
    for d, t in enumerate(tables):
        rows[d, :t.num_joints] = t.rows
        mirror[d, :t.num_joints] = t.mirror
        is_root[d, :t.num_joints] = t.is_root
    return dict(rows=tf.constant(rows), mirror=tf.constant(mirror), is_root=tf.constant(is_root),
                num_joints=tf.constant([t.num_joints for t in tables], tf.int32),
                single_person=tf.constant([t.single_person for t in tables]),
                drop_negative=tf.constant([t.drop_negative for t in tables]),
                realistic_background=tf.constant([t.realistic_background for t in tables]))


# ----------------------------------------------------------------------------------------
# One example (in graph)
# ----------------------------------------------------------------------------------------

def decode_record(features):
    """Decodes the image and checks one parsed record; raises (in graph) if it is bad.

    `features` as returned by `nlf_tf.data.tfrecord.parse_example`. Returns the same dict with
    'image' (uint8 [H, W, 3]) added; all checks are attached as control dependencies.
    """
    image = tf.io.decode_jpeg(features['image_jpeg'], channels=3)
    size = tf.stack([features['image_height'], features['image_width']])
    checks = [
        tf.debugging.assert_equal(tf.shape(image)[:2], size,
                                  message='image_jpeg size differs from image_height/width'),
        tf.debugging.assert_positive(size, message='image_height/image_width must be > 0'),
        tf.debugging.assert_positive(features['box'][2:], message='box w/h must be > 0'),
    ]
    for name in ('intrinsics', 'rotation', 'optical_center', 'world_up', 'box'):
        checks.append(tf.debugging.assert_all_finite(features[name], f'{name} is not finite'))
    with tf.control_dependencies(checks):
        out = {k: tf.identity(v) for k, v in features.items()}
        out['image'] = tf.identity(image)
    return out


def _compact(values, valid):
    return tf.boolean_mask(values, valid)


def _first_or_minus_one(flags):
    index = tf.argmax(tf.cast(flags, tf.int32), output_type=tf.int32)
    return tf.where(tf.reduce_any(flags), index, -1)


def _crop_image(record, category, table, geometry, side, settings, appearance_key,
                occluder_bank, background_bank):
    """The augmented crop: (image [S, S, 3], K_c, R_c, stored -> crop homography)."""
    k_s, r_s = record['intrinsics'], record['rotation']
    k_c, r_c = augmentation.crop_camera(
        k_s, r_s, record['world_up'], record['box'], record['has_camera'] > 0, side, geometry)
    h = augmentation.homography(k_s, r_s, k_c, r_c)
    image = tf.cast(record['image'], tf.float32) / 255.0
    image = augmentation.warp_image(image, h, side, settings.border_value)
    if appearance_key is not None:
        # --- begin: background replacement (nlf_tf.data.backgrounds), param/kp3d only ---
        if background_bank is not None and category in ('param', 'kp3d'):
            prob = backgrounds.background_probability(
                table.get('realistic_background', False), settings.background_aug_prob)
            image = backgrounds.replace_background(
                image, record['mask_rle_counts'],
                tf.stack([record['mask_height'], record['mask_width']]),
                tf.stack([record['image_height'], record['image_width']]), h, background_bank,
                augmentation.fold_key(appearance_key, 5), prob)
        # --- end: background replacement ---
        image = augmentation.appearance_augment(image, appearance_key, settings, occluder_bank)
    return image, k_c, r_c, h


def make_example(record, category, table, geometry, proc_side, num_points, settings,
                 appearance_key=None, filler_key=None, filler_box=FILLER_BOX,
                 occluder_bank=None, background_bank=None):
    """One example in the trainer's dense format from a decoded record (see decode_record).

    table: dict rows / mirror / is_root (1-D tensors, length >= the record's num_joints) and
    optionally drop_negative (scalar bool; default: category == 'kp2d') of the record's dataset;
    geometry: draws from augmentation.sample_geometry / identity_geometry;
    appearance_key None disables appearance augmentation; filler_key None gives zero fillers.
    occluder_bank / background_bank: tensors of an occluders.OccluderBank /
    backgrounds.BackgroundBank (None: no object occluders / no background replacement);
    table['realistic_background'] (scalar bool, default False) selects the background
    probability.
    """
    side, p = int(proc_side), int(num_points)
    num_joints = record['num_joints']
    image, k_c, r_c, h = _crop_image(record, category, table, geometry, side, settings,
                                     appearance_key, occluder_bank, background_bank)

    identity = tf.range(num_joints)
    perm = tf.where(geometry['flip'], table['mirror'][:num_joints], identity)
    rows = table['rows'][:num_joints]
    is_root = table['is_root'][:num_joints]
    stored_height = tf.cast(record['image_height'], tf.float32)

    out = dict(image=image, intrinsics=k_c)
    extra_ids = extra_canonical = extra_coords = None
    if category in ('param', 'kp3d'):
        joints = record['joints3d']
        with tf.control_dependencies([tf.debugging.assert_equal(
                tf.shape(joints)[0], num_joints, message='joints3d length != num_joints')]):
            joints = tf.gather(joints, perm)
        valid = tf.reduce_all(tf.math.is_finite(joints), axis=1)
        coords = tf.linalg.matmul(
            _compact(joints, valid) - record['optical_center'], r_c, transpose_b=True)
        dim = 3
    else:
        joints = record['joints2d']
        with tf.control_dependencies([tf.debugging.assert_equal(
                tf.shape(joints)[0], num_joints, message='joints2d length != num_joints')]):
            joints = tf.identity(joints)
        valid = tf.reduce_all(tf.math.is_finite(joints), axis=1) & (
            joints[:, 1] <= MAX_Y_FRACTION * stored_height)
        drop_negative = table.get('drop_negative', category == 'kp2d')
        valid &= tf.logical_or(tf.logical_not(drop_negative), tf.reduce_all(joints >= 0, axis=1))
        # Validity is decided in the stored frame, then joints move to their mirrored slots.
        joints, valid = tf.gather(joints, perm), tf.gather(valid, perm)
        coords = augmentation.apply_homography(h, _compact(joints, valid))
        dim = 2
        if category == 'dense':
            points = record['dense_imcoords']
            canonical = record['dense_canonical']
            with tf.control_dependencies([tf.debugging.assert_equal(
                    tf.shape(points)[0], tf.shape(canonical)[0],
                    message='dense_imcoords and dense_canonical lengths differ')]):
                points = tf.identity(points)
            bad = tf.logical_not(tf.reduce_all(tf.math.is_finite(points), axis=1) & (
                points[:, 1] <= MAX_Y_FRACTION * stored_height))
            warped = augmentation.apply_homography(h, tf.where(bad[:, None], 0.0, points))
            # NLF quirk kept: points below 0.95 H are NaN before warping, then NaN -> 0, so they
            # remain in the target list (valid) with target (0, 0).
            extra_coords = tf.where(bad[:, None], 0.0, warped)
            extra_canonical = canonical * tf.where(geometry['flip'], [-1.0, 1.0, 1.0],
                                                   [1.0, 1.0, 1.0])
            extra_ids = -tf.ones([tf.shape(points)[0]], tf.int32)

    n_joints = tf.reduce_sum(tf.cast(valid, tf.int32))
    ids = [_compact(rows, valid)]
    canonical_parts = [tf.zeros([n_joints, 3])]
    coord_parts = [coords]
    if extra_ids is not None:
        ids.append(extra_ids)
        canonical_parts.append(extra_canonical)
        coord_parts.append(extra_coords)
    if filler_key is None:
        filler = tf.zeros([p, 3])
    else:
        low, high = (tf.constant(b, tf.float32) for b in filler_box)
        filler = low + (high - low) * tf.random.stateless_uniform(
            [p, 3], seed=filler_key, alg='philox')
    num_valid = tf.minimum(tf.add_n([tf.shape(x)[0] for x in ids]), p)
    out['point_ids'] = tf.concat(ids + [-tf.ones([p], tf.int32)], 0)[:p]
    out['canonical_points'] = tf.concat(canonical_parts + [filler], 0)[:p]
    out['point_validity'] = tf.range(p) < num_valid
    coords_all = tf.concat(coord_parts + [tf.zeros([p, dim])], 0)[:p]
    coords_all = tf.where(out['point_validity'][:, None], coords_all, 0.0)
    if dim == 3:
        out['coords3d_true'] = coords_all
        root = _first_or_minus_one(_compact(is_root, valid))
        out['root_index'] = tf.where(root < num_valid, root, -1)
    else:
        out['coords2d_true'] = coords_all
    return _set_shapes(out, side, p)


class ParamTables:
    """The canonical assets of the param category, ready for in-graph use.

    assets: {family: ParamAssets}; order: the families in a fixed order (kinds.FAMILIES), the
    branch order of the per-record family switch; table: `param_sampling.kind_table`.
    """

    def __init__(self, param_assets):
        if not isinstance(param_assets, dict) or not param_assets:
            raise ValueError('param_assets must be a non-empty dict {family: canonical assets} '
                             '(nlf_tf.body_models.canonical_assets.load_assets)')
        unknown = set(param_assets) - set(kinds.FAMILIES)
        if unknown:
            raise ValueError(f'param_assets: unknown families {sorted(unknown)}; known: '
                             f'{", ".join(kinds.FAMILIES)}')
        self.order = [f for f in kinds.FAMILIES if f in param_assets]
        self.assets = {f: param_sampling.as_param_assets(param_assets[f], f) for f in self.order}
        self.table = param_sampling.kind_table([self.assets[f] for f in self.order])

    def check_num_points(self, num_points):
        for assets in self.assets.values():
            assets.check_num_points(num_points)


def _padded(values, size, name):
    """values [n] zero-padded to [size]; raises (in graph) if n > size."""
    with tf.control_dependencies([tf.debugging.assert_less_equal(
            tf.size(values), size, message=f'{name} has too many values')]):
        values = tf.identity(values)
    return tf.ensure_shape(tf.pad(values, [[0, size - tf.size(values)]]), [size])


def make_param_example(record, table, param_tables, geometry, proc_side, num_points, settings,
                       appearance_key=None, sample_key=None, occluder_bank=None,
                       background_bank=None):
    """One parametric example from a decoded record (see decode_record and the module docs).

    table: as for make_example (only realistic_background is used); param_tables: ParamTables;
    geometry: as for make_example, its flip is ignored (NLF's parametric loader never flips);
    sample_key: stateless key of the point sampling (None: a fixed key).
    Keys (P = num_points, K = param_sampling.K_MAX = 8):
      image float32 [S, S, 3], intrinsics float32 [3, 3] (crop camera),
      point_ids int32 [P] (all -1), canonical_points float32 [P, 3] ([surface; interior;
      joints]), point_validity bool [P] (all True; only the J joint rows if not
      is_shape_valid), root_index int32 [] (P - J, the pelvis row),
      body_model int32 [] (index in kinds.KINDS), pose float32 [165] (axis-angle, global
      orientation in the crop camera, zero-padded), shape float32 [128], expression float32
      [10] (zero-padded), trans float32 [3] (crop-camera frame, metres), kid_factor float32
      [], scale float32 [], interp_columns int32 [P, K], interp_weights float32 [P, K] (rows
      over [vertices; joints] of the family's body model, padded with column 0 / weight 0).
    Ground truth = scale * (interp rows @ [vertices; joints] of the body model with these
    parameters), in crop-camera metres. Raises (in graph) for an unknown body_model, a kind
    without assets, a pose of the wrong length or non-finite / out-of-range parameters.
    """
    side, p = int(proc_side), int(num_points)
    constants = param_tables.table
    kind = param_sampling.kind_index_of(constants, record['body_model'])
    safe_kind = tf.maximum(kind, 0)
    pose, shape, expression = record['pose'], record['shape'], record['expression']
    trans, kid, scale = record['trans'], record['kid_factor'], record['scale']
    checks = [
        tf.debugging.assert_non_negative(kind, message='body_model is not a known kind'),
        tf.debugging.assert_equal(tf.gather(constants['available'], safe_kind), True,
                                  message='no canonical assets for this body_model'),
        tf.debugging.assert_equal(tf.size(pose), tf.gather(constants['pose_size'], safe_kind),
                                  message='pose length != 3 x the body model\'s joints'),
        tf.debugging.assert_positive(scale, message='scale must be > 0'),
    ]
    for name, value in (('pose', pose), ('shape', shape), ('expression', expression),
                        ('trans', trans), ('kid_factor', kid), ('scale', scale)):
        checks.append(tf.debugging.assert_all_finite(value, f'{name} is not finite'))
    with tf.control_dependencies(checks):
        kind = tf.identity(kind)
    pose = _padded(pose, kinds.POSE_SIZE, 'pose')
    shape = _padded(shape, kinds.SHAPE_SIZE, 'shape')
    expression = _padded(expression, kinds.EXPRESSION_SIZE, 'expression')

    geometry = dict(geometry, flip=tf.constant(False))
    # The crop camera keeps the stored optical centre; r_c is its world->camera rotation.
    image, k_c, r_c, _ = _crop_image(record, 'param', table, geometry, side, settings,
                                     appearance_key, occluder_bank, background_bank)
    pelvis = param_sampling.rest_pelvis(constants, kind, shape, expression, kid)
    pose, trans = param_sampling.camera_frame_params(
        pose, trans, r_c, record['optical_center'], scale, pelvis)

    if sample_key is None:
        sample_key = tf.constant([0, 0], tf.int64)
    branches = [lambda a=param_tables.assets[f]: param_sampling.sample_points(a, sample_key, p)
                for f in param_tables.order]
    if len(branches) == 1:
        points, columns, weights, root = branches[0]()
    else:
        points, columns, weights, root = tf.switch_case(
            tf.gather(constants['family_slot'], kind), branches)
    is_joint = tf.range(p) >= root
    validity = tf.logical_or(record['is_shape_valid'] > 0, is_joint)
    out = dict(image=image, intrinsics=k_c, point_ids=-tf.ones([p], tf.int32),
               canonical_points=points, point_validity=validity, root_index=root,
               body_model=kind, pose=pose, shape=shape, expression=expression, trans=trans,
               kid_factor=kid, scale=scale, interp_columns=columns, interp_weights=weights)
    return _set_shapes(out, side, p)


def _set_shapes(example, side, p):
    k = param_sampling.K_MAX
    shapes = dict(image=[side, side, 3], intrinsics=[3, 3], point_ids=[p],
                  canonical_points=[p, 3], point_validity=[p], coords3d_true=[p, 3],
                  root_index=[], coords2d_true=[p, 2], body_model=[],
                  pose=[kinds.POSE_SIZE], shape=[kinds.SHAPE_SIZE],
                  expression=[kinds.EXPRESSION_SIZE], trans=[3], kid_factor=[], scale=[],
                  interp_columns=[p, k], interp_weights=[p, k])
    for key, value in example.items():
        value.set_shape(shapes[key])
    return example


def placeholder_examples(category, count, proc_side, num_points):
    """`count` all-invalid black examples (used only when every record of a step was bad, and
    with count 0 for empty sub-batches) in the trainer's format. Param placeholders have
    body_model -1 (no kind), zero parameters, scale 1, zero interpolation rows and
    root_index -1."""
    side, p = int(proc_side), int(num_points)
    centre = (side - 1) / 2.0
    k = tf.constant([[side, 0, centre], [0, side, centre], [0, 0, 1]], tf.float32)
    out = dict(image=tf.zeros([count, side, side, 3]), intrinsics=tf.tile(k[None], [count, 1, 1]),
               point_ids=-tf.ones([count, p], tf.int32), canonical_points=tf.zeros([count, p, 3]),
               point_validity=tf.zeros([count, p], tf.bool))
    if category == 'param':
        k = param_sampling.K_MAX
        out.update(root_index=-tf.ones([count], tf.int32),
                   body_model=tf.fill([count], tf.constant(kinds.NO_KIND, tf.int32)),
                   pose=tf.zeros([count, kinds.POSE_SIZE]),
                   shape=tf.zeros([count, kinds.SHAPE_SIZE]),
                   expression=tf.zeros([count, kinds.EXPRESSION_SIZE]),
                   trans=tf.zeros([count, 3]), kid_factor=tf.zeros([count]),
                   scale=tf.ones([count]), interp_columns=tf.zeros([count, p, k], tf.int32),
                   interp_weights=tf.zeros([count, p, k]))
    elif category == 'kp3d':
        out['coords3d_true'] = tf.zeros([count, p, 3])
        out['root_index'] = -tf.ones([count], tf.int32)
    else:
        out['coords2d_true'] = tf.zeros([count, p, 2])
    return out


# ----------------------------------------------------------------------------------------
# Streams
# ----------------------------------------------------------------------------------------

def _base_key(seed, shard=(1, 0)):
    key = tf.constant([int(seed), _SEED_TAG], tf.int64)
    # A single pipeline keeps the plain key; input pipeline i of n gets its own.
    return key if shard[0] == 1 else augmentation.fold_key(key, shard[0], shard[1])


def record_stream(files, seed, category_index, dataset_index, shuffle_block, shard=(1, 0)):
    """Infinite (record, dataset_index, k) stream of one source (see the module docstring).

    shard = (number of input pipelines, this pipeline's index): with several pipelines each
    takes every n-th file if there are at least n files, else every n-th record.
    """
    num_shards, shard_index = shard
    files = list(files)
    by_file = num_shards > 1 and len(files) >= num_shards
    if by_file:
        files = files[shard_index::num_shards]
    rng = np.random.default_rng(
        [int(seed), _SEED_TAG, category_index, dataset_index, num_shards, shard_index])
    orders = np.concatenate([rng.permutation(len(files)) for _ in range(EPOCH_ORDERS)])
    file_names = tf.data.Dataset.from_tensor_slices(np.asarray(files)[orders]).repeat()
    records = file_names.interleave(
        tf.data.TFRecordDataset, cycle_length=min(FILE_CYCLE, len(files)), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if num_shards > 1 and not by_file:
        records = records.shard(num_shards, shard_index)
    key = augmentation.fold_key(_base_key(seed, shard), category_index, dataset_index, -1)

    def permute(block_index, block):
        scores = tf.random.stateless_uniform(
            tf.shape(block), seed=augmentation.fold_key(key, block_index), alg='philox')
        return tf.gather(block, tf.argsort(scores, stable=True))

    records = records.batch(shuffle_block).enumerate().map(permute).unbatch()
    return records.enumerate().map(
        lambda k, record: (record, tf.constant(dataset_index, tf.int32), k))


def _mixed_records(streams, weights, seed, category_index, shard):
    if len(streams) == 1:
        return streams[0]
    logits = tf.math.log(tf.constant([weights], tf.float32))
    key = augmentation.fold_key(_base_key(seed, shard), category_index, -2)
    block = 1024

    def choices(block_index):
        return tf.random.stateless_categorical(
            logits, block, seed=augmentation.fold_key(key, block_index), dtype=tf.int64)[0]

    choice = tf.data.Dataset.counter().map(choices).unbatch()
    return tf.data.Dataset.choose_from_datasets(streams, choice)


def _category_steps(category, category_index, records, tables, batch_size, cfg, settings,
                    filler_box, start_step, parallel_steps, shard, banks=(None, None),
                    param_tables=None):
    side, p = int(cfg.proc_side), int(cfg.num_points)
    constants = _stack_tables(tables)
    base = _base_key(cfg.seed, shard)
    parse = tfrecord.parse_example

    def process(serialized, dataset_index, k):
        record = decode_record(parse(serialized))
        key = augmentation.fold_key(base, category_index, dataset_index, k)
        table = {name: constants[name][dataset_index]
                 for name in ('rows', 'mirror', 'is_root', 'drop_negative',
                              'realistic_background')}
        allow_partial = tf.logical_and(record['has_camera'] > 0,
                                       constants['single_person'][dataset_index])
        if category == 'param':
            geometry = augmentation.sample_geometry(
                augmentation.fold_key(key, 0), settings, allow_partial)
            return make_param_example(
                record, table, param_tables, geometry, side, p, settings,
                appearance_key=augmentation.fold_key(key, 1),
                sample_key=augmentation.fold_key(key, 3), occluder_bank=banks[0],
                background_bank=banks[1])
        with tf.control_dependencies([tf.debugging.assert_equal(
                record['num_joints'], constants['num_joints'][dataset_index],
                message='num_joints differs from the dataset spec')]):
            record['num_joints'] = tf.identity(record['num_joints'])
        geometry = augmentation.sample_geometry(
            augmentation.fold_key(key, 0), settings, allow_partial)
        return make_example(record, category, table, geometry, side, p, settings,
                            appearance_key=augmentation.fold_key(key, 1),
                            filler_key=augmentation.fold_key(key, 2), filler_box=filler_box,
                            occluder_bank=banks[0], background_bank=banks[1])

    fallback = tf.data.Dataset.from_tensors(placeholder_examples(category, 0, side, p))

    def fill(batch):
        got = tf.shape(batch['image'])[0]
        index = tf.range(batch_size) % tf.maximum(got, 1)
        out = tf.cond(got > 0, lambda: {k: tf.gather(v, index) for k, v in batch.items()},
                      lambda: placeholder_examples(category, batch_size, side, p))
        out = {k: tf.ensure_shape(v, [batch_size] + v.shape[1:].as_list())
               for k, v in out.items()}
        return out, batch_size - got

    def step_dataset(serialized, dataset_index, k):
        examples = tf.data.Dataset.from_tensor_slices((serialized, dataset_index, k))
        examples = examples.map(process, num_parallel_calls=tf.data.AUTOTUNE,
                                deterministic=True).ignore_errors()
        return examples.batch(batch_size).concatenate(fallback).take(1).map(fill)

    steps = records.skip(int(start_step) * batch_size).batch(batch_size, drop_remainder=True)
    return steps.interleave(step_dataset, cycle_length=parallel_steps, block_length=1,
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _empty_steps(category, proc_side, num_points):
    empty = placeholder_examples(category, 0, proc_side, num_points)
    return tf.data.Dataset.from_tensors((empty, tf.constant(0, tf.int32))).repeat()


def _check_first_record(files, name, category, source_index):
    """Reads one record of the source and checks its `dataset` and `category` fields, so that a
    mislabelled source fails at construction instead of being skipped record by record."""
    for path in files:
        for serialized in tf.data.TFRecordDataset(path).take(1):
            try:
                parsed = tfrecord.parse_example(serialized)
            except tf.errors.InvalidArgumentError:
                return  # a bad record: the pipeline skips and counts it
            for field, want in (('dataset', name), ('category', category)):
                got = parsed[field].numpy().decode('utf-8', 'replace')
                if got != want:
                    raise ValueError(
                        f'sources[{source_index}] ({name!r}, {category!r}): file {path} holds '
                        f'records with field "{field}" = {got!r}, expected {want!r}')
            return


# ----------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------

def make_training_dataset(cfg, sources, joint_table_names, start_step=0, end_step=None,
                          dataset_specs=None, skip_counter=None, include_skip_counts=False,
                          shuffle_block=256, filler_box=FILLER_BOX, parallel_steps=4,
                          input_context=None, param_assets=None):
    """tf.data.Dataset of training micro-batches, element i = step start_step + i.

    cfg: config (EasyDict) with seed, proc_side, num_points, the batch sizes and
      grad_accum_steps (sub-batch sizes from `nlf_tf.data_sources.micro_batch_sizes`) and the
      augmentation settings (augmentation.DEFAULTS for any that are missing).
    sources: list of (dataset_name, category, list_of_tfrecord_files, weight); dataset_name is a
      data spec name (its joint names, suffix / table_joint_names, mirror_pairs).
    joint_table_names: the global joint table (names, row order = point_ids).
    start_step / end_step: the first step and the exclusive end (None: infinite).
    dataset_specs: optional {dataset_name: spec dict} overriding `nlf_tf.specs.load_spec`.
    skip_counter: optional int64 tf.Variable of shape [4]; the bad records dropped per category
      (order param, kp3d, dense, kp2d) are added to it as batches are produced (the pipeline runs
      ahead of training by its prefetch depth). include_skip_counts=True also adds the per-step
      counts to each element as 'num_skipped' int32 [4] (pop it before the trainer).
    shuffle_block: records per shuffle block of a stream; parallel_steps: steps prepared
      concurrently per category.
    input_context: a tf.distribute.InputContext (from distribute_datasets_from_function): input
      pipeline i of n then reads every n-th file of each source (every n-th record if a source
      has fewer than n files) with its own random keys; the sub-batch sizes stay those of cfg
      (per pipeline). Without it the dataset is one pipeline whose auto-shard policy is DATA.
      (FILE auto-sharding cannot work here: the pipeline also has non-file sources such as the
      slot counters and the placeholder datasets, which tf.data refuses to shard by file.)
    param_assets: {family: canonical asset dict (nlf_tf.body_models.canonical_assets.
      load_assets) or param_sampling.ParamAssets}, needed when the param sub-batch is not empty;
      every family named by a param dataset's spec ("body_model": {"type": ...}) must be there.
    Elements: {'param', 'kp3d', 'dense', 'kp2d'} dicts in the trainer's dense format (param:
      see `make_param_example`).
    """
    from nlf_tf import specs as specs_lib

    sizes = data_sources.micro_batch_sizes(cfg)
    settings = augmentation.settings_from_config(cfg)
    shard = ((1, 0) if input_context is None else
             (int(input_context.num_input_pipelines), int(input_context.input_pipeline_id)))
    side, p = int(cfg.proc_side), int(cfg.num_points)
    if side < 8:
        raise ValueError(f'--proc_side must be >= 8, got {side}')
    if p < 1:
        raise ValueError(f'--num_points must be >= 1, got {p}')
    if int(start_step) < 0 or (end_step is not None and int(end_step) < int(start_step)):
        raise ValueError(f'need 0 <= start_step <= end_step, got {start_step}, {end_step}')
    # --- begin: occluder / background banks (nlf_tf.data.occluders, nlf_tf.data.backgrounds) ---
    occluder_bank = background_bank = None
    if settings.occlude_aug_prob > 0:
        if settings.occluder_dir:
            bank = occluders.build_occluder_bank(
                os.fspath(settings.occluder_dir),
                int(cfg.get('max_occluders') or occluders.DEFAULT_MAX_OCCLUDERS), int(cfg.seed))
            occluder_bank = bank.tensors
            _log_once(f'Object occluders: {bank.count} Pascal VOC cut-outs from '
                      f'{settings.occluder_dir} ({bank.nbytes / 2**20:.1f} MB).')
        else:
            _log_once('--occluder_dir is not set: the "objects" half of the occlusion draws '
                      'does nothing.')
    if sizes['param'] + sizes['kp3d'] > 0:
        if settings.background_dir:
            bank = backgrounds.build_background_bank(
                os.fspath(settings.background_dir), side,
                int(cfg.get('max_backgrounds') or backgrounds.DEFAULT_MAX_BACKGROUNDS),
                int(cfg.seed))
            background_bank = bank.tensors
            _log_once(f'Background replacement: {bank.count} images from '
                      f'{settings.background_dir} ({bank.nbytes / 2**20:.1f} MB of JPEG).')
        else:
            _log_once('--background_dir is not set: background replacement is skipped.')
    # --- end: occluder / background banks ---

    by_category = {c: [] for c in CATEGORIES}
    for i, source in enumerate(sources):
        try:
            name, category, files, weight = source
        except (TypeError, ValueError):
            raise ValueError(f'sources[{i}] must be (dataset_name, category, files, weight), '
                             f'got {source!r}') from None
        if category not in CATEGORIES:
            raise ValueError(f'sources[{i}] ({name!r}): category must be one of {CATEGORIES}, '
                             f'got {category!r}')
        if not weight > 0:
            raise ValueError(f'sources[{i}] ({name!r}): weight must be > 0, got {weight!r}')
        files = [os.fspath(f) for f in ([files] if isinstance(files, (str, os.PathLike))
                                        else files)]
        if not files:
            raise ValueError(f'sources[{i}] ({name!r}): no TFRecord files given')
        missing = [f for f in files if not tf.io.gfile.exists(f)]
        if missing:
            raise ValueError(f'sources[{i}] ({name!r}): TFRecord files not found: {missing[:5]}')
        if all(tf.io.gfile.stat(f).length == 0 for f in files):
            raise ValueError(f'sources[{i}] ({name!r}): all TFRecord files are empty')
        spec = (dataset_specs or {}).get(name) or specs_lib.load_spec(name)
        _check_first_record(files, name, category, i)
        by_category[category].append(
            (DatasetTable(name, spec, joint_table_names, category), files, float(weight)))

    param_tables = None
    if sizes['param'] > 0 and by_category['param']:
        if not param_assets:
            raise ValueError(
                'param sources need canonical assets: pass param_assets (see nlf-tf-canonical '
                'and --body_model_dir) or set --batch_size_parametric=0')
        param_tables = ParamTables(param_assets)
        param_tables.check_num_points(p)
        for table, _, _ in by_category['param']:
            family = table.body_model_family
            if family is not None and family not in param_tables.assets:
                raise ValueError(
                    f'param dataset {table.name!r} uses {family} body models but param_assets '
                    f'has only {", ".join(param_tables.order)}; generate the {family} canonical '
                    f'assets (nlf-tf-canonical --families={family})')

    per_category = []
    for ci, category in enumerate(CATEGORIES):
        entries, size = by_category[category], sizes[category]
        if size == 0:
            per_category.append(_empty_steps(category, side, p))
            continue
        if not entries:
            raise ValueError(
                f'category {category!r} has sub-batch size {size} but no data source; give it '
                f'TFRecords or set --{dict(data_sources.BATCH_SIZE_FLAGS)[category]}=0')
        streams = [record_stream(files, cfg.seed, ci, di, shuffle_block, shard)
                   for di, (_, files, _) in enumerate(entries)]
        records = _mixed_records(streams, [w for _, _, w in entries], cfg.seed, ci, shard)
        per_category.append(_category_steps(
            category, ci, records, [t for t, _, _ in entries], size, cfg, settings, filler_box,
            start_step, parallel_steps, shard, banks=(occluder_bank, background_bank),
            param_tables=param_tables))

    def combine(*parts):
        batch = {c: part[0] for c, part in zip(CATEGORIES, parts)}
        skipped = tf.stack([part[1] for part in parts])
        if skip_counter is not None:
            with tf.control_dependencies([skip_counter.assign_add(tf.cast(skipped, tf.int64))]):
                skipped = tf.identity(skipped)
                batch = {c: {k: tf.identity(v) for k, v in batch[c].items()} for c in CATEGORIES}
        if include_skip_counts:
            batch['num_skipped'] = skipped
        return batch

    dataset = tf.data.Dataset.zip(tuple(per_category)).map(combine)
    if end_step is not None:
        dataset = dataset.take(int(end_step) - int(start_step))
    options = tf.data.Options()
    options.deterministic = True
    # Sharded by hand (input_context) or one pipeline whose steps a strategy may split (DATA).
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if shard[0] > 1 else
        tf.data.experimental.AutoShardPolicy.DATA)
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
