"""Inspection of prepared training data (the library part of `nlf-tf-inspect`).

Two things are shown for one or more `nlf-tf-prepare` output folders:
- counts from their `manifest.json` files: kept examples per (dataset, split, category), skipped
  examples per reason and the first skipped examples with the file and field at fault;
- a grid of augmented training crops produced by the REAL training pipeline
  (`nlf_tf.data_sources.build_data`, i.e. `make_training_dataset` with the run's config, so every
  augmentation setting applies) with the ground-truth points of each crop drawn: joints (point_id
  >= 0) in green and other points (DensePose points) in red. 3D targets (crop-camera metres) are
  projected with the crop intrinsics.
"""

import dataclasses
import json
import math
import os

import numpy as np

from nlf_tf.data import pipeline

MANIFEST_FILE = 'manifest.json'
JOINT_COLOUR = (0.0, 1.0, 0.0)   # green, as the GT points of the training image summaries
OTHER_COLOUR = (1.0, 0.0, 0.0)   # red
SUMMARY_TAG = 'inspect/augmented_crops'
_BATCH_SIZE_SETTINGS = dict(param='batch_size_parametric', kp3d='batch_size',
                            dense='batch_size_densepose', kp2d='batch_size_2d')


class InspectError(ValueError):
    """A folder or setting cannot be inspected; the message names the folder, file or field."""


# ----------------------------------------------------------------------------------------
# Manifest counts
# ----------------------------------------------------------------------------------------

def load_manifest(folder):
    """The manifest dict of one prepared folder, checked, with 'folder' added."""
    path = os.path.join(folder, MANIFEST_FILE)
    if not os.path.isfile(path):
        hint = (' (an unfinished nlf-tf-prepare run: rerun it to complete)'
                if os.path.isfile(os.path.join(folder, 'progress.json')) else '')
        raise InspectError(f'{folder}: no {MANIFEST_FILE}; not an nlf-tf-prepare output '
                           f'folder{hint}')
    try:
        with open(path, encoding='utf-8') as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise InspectError(f'{path}: cannot be read as JSON ({e})') from None
    if not isinstance(manifest, dict):
        raise InspectError(f'{path}: must hold a JSON object')
    for field, kind in (('dataset', str), ('split', str), ('shards', list),
                        ('num_examples', int)):
        if not isinstance(manifest.get(field), kind):
            raise InspectError(f'{path}: field "{field}" is missing or not a {kind.__name__}')
    if manifest.get('category') is not None and not isinstance(manifest['category'], str):
        raise InspectError(f'{path}: field "category" must be a string')
    skipped = manifest.setdefault('skipped', {})
    if not isinstance(skipped, dict) or not all(isinstance(v, int) for v in skipped.values()):
        raise InspectError(f'{path}: field "skipped" must map reasons to counts')
    listed = manifest.setdefault('skipped_examples', [])
    if not isinstance(listed, list) or not all(isinstance(s, dict) for s in listed):
        raise InspectError(f'{path}: field "skipped_examples" must be a list of objects')
    for i, shard in enumerate(manifest['shards']):
        if (not isinstance(shard, dict) or not isinstance(shard.get('file'), str)
                or not isinstance(shard.get('num_examples'), int)):
            raise InspectError(f'{path}: field "shards[{i}]" must have "file" and '
                               f'"num_examples"')
    return dict(manifest, folder=os.fspath(folder))


@dataclasses.dataclass
class GroupCounts:
    """Counts of all folders with the same (dataset, split, category)."""
    dataset: str
    split: str
    category: str
    folders: int = 0
    shards: int = 0
    examples: int = 0
    skipped: int = 0


def summarize(manifests):
    """Aggregated counts of loaded manifests.

    Returns dict(groups=[GroupCounts] sorted by (category order, dataset, split),
    skipped={(dataset, split): {reason: count}}, per_category={category: examples},
    total_examples, total_skipped).
    """
    groups = {}
    skipped = {}
    for m in manifests:
        category = m.get('category') or '?'
        key = (m['dataset'], m['split'], category)
        group = groups.setdefault(key, GroupCounts(*key))
        group.folders += 1
        group.shards += len(m['shards'])
        group.examples += int(m['num_examples'])
        group.skipped += sum(m['skipped'].values())
        reasons = skipped.setdefault((m['dataset'], m['split']), {})
        for reason, count in m['skipped'].items():
            reasons[reason] = reasons.get(reason, 0) + int(count)
    order = {c: i for i, c in enumerate(pipeline.CATEGORIES)}
    ordered = sorted(groups.values(),
                     key=lambda g: (order.get(g.category, len(order)), g.dataset, g.split))
    per_category = {}
    for g in ordered:
        per_category[g.category] = per_category.get(g.category, 0) + g.examples
    return dict(groups=ordered, skipped=skipped, per_category=per_category,
                total_examples=sum(g.examples for g in ordered),
                total_skipped=sum(g.skipped for g in ordered))


def _table(header, rows):
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    line = lambda row: '  '.join(  # noqa: E731
        str(x).rjust(w) if isinstance(x, int) else str(x).ljust(w) for x, w in zip(row, widths))
    return [line(header).rstrip()] + [line(r).rstrip() for r in rows]


def summary_lines(manifests, max_skipped_examples=5):
    """Printable lines: kept examples per (dataset, split, category), per category, skipped per
    reason and the first `max_skipped_examples` skipped examples of each folder."""
    summary = summarize(manifests)
    lines = [f'{len(manifests)} prepared folder(s), {summary["total_examples"]} examples, '
             f'{summary["total_skipped"]} skipped.', '']
    lines += _table(('dataset', 'split', 'category', 'folders', 'shards', 'examples', 'skipped'),
                    [(g.dataset, g.split, g.category, g.folders, g.shards, g.examples, g.skipped)
                     for g in summary['groups']])
    lines += ['', 'Examples per category: ' + ', '.join(
        f'{c} {n}' for c, n in summary['per_category'].items())]
    reason_rows = [(dataset, split, reason, count)
                   for (dataset, split), reasons in sorted(summary['skipped'].items())
                   for reason, count in sorted(reasons.items(), key=lambda x: (-x[1], x[0]))]
    if reason_rows:
        lines += ['', 'Skipped per reason:']
        lines += ['  ' + x for x in _table(('dataset', 'split', 'reason', 'count'), reason_rows)]
    listed = [(m, s) for m in manifests for s in m['skipped_examples'][:max_skipped_examples]]
    if listed and max_skipped_examples > 0:
        lines += ['', 'First skipped examples:']
        for m, s in listed:
            lines.append(f'  {m["dataset"]}/{m["split"]} {s.get("example_id", "?")}: '
                         f'{s.get("reason", "?")} (file {s.get("file") or "?"}, '
                         f'field {s.get("field") or "?"})')
    return lines


# ----------------------------------------------------------------------------------------
# Augmented crops
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Crop:
    """One augmented training crop and its valid GT points in crop pixels."""
    category: str
    image: np.ndarray       # float32 [S, S, 3] in [0, 1]
    points2d: np.ndarray    # float32 [P, 2]; NaN where not drawable
    is_joint: np.ndarray    # bool [P]
    valid: np.ndarray       # bool [P]


def inspection_config(cfg, prepared_dirs, categories=None):
    """A copy of the training config for inspecting `prepared_dirs`: data='prepared', and the
    sub-batch size of every category without data (or not in `categories`) set to 0, so that
    a folder set that is not a full training mix can be looked at. Other settings unchanged."""
    from nlf_tf import data_sources

    cfg = type(cfg)(dict(cfg))
    cfg.data = 'prepared'
    cfg.prepared_dirs = ','.join(os.fspath(d) for d in prepared_dirs)
    manifests = [load_manifest(d) for d in prepared_dirs]
    present = {m.get('category') for m in manifests if m['num_examples'] > 0}
    if categories is not None:
        unknown = set(categories) - set(pipeline.CATEGORIES)
        if unknown:
            raise InspectError(f'categories: unknown {sorted(unknown)}; choose from '
                               f'{pipeline.CATEGORIES}')
    n = int(cfg.grad_accum_steps)
    for category, setting in _BATCH_SIZE_SETTINGS.items():
        if category not in present or (categories is not None and category not in categories):
            cfg[setting] = 0
    sizes = data_sources.micro_batch_sizes(cfg)
    if not any(sizes.values()):
        wanted = sorted(present) if categories is None else sorted(present & set(categories))
        raise InspectError(
            f'no training crops to draw: the folders hold categories {sorted(present)}, '
            f'selected {wanted}, with sub-batch sizes ' + ', '.join(
                f'--{_BATCH_SIZE_SETTINGS[c]}={cfg[_BATCH_SIZE_SETTINGS[c]]}'
                for c in pipeline.CATEGORIES if c in present) + f' (per {n} micro-steps)')
    return cfg


def _points_2d(example, category):
    if category in ('param', 'kp3d'):
        coords = np.asarray(example['coords3d_true'], np.float64)
        k = np.asarray(example['intrinsics'], np.float64)
        with np.errstate(divide='ignore', invalid='ignore'):
            projected = coords @ k.T
            points = projected[:, :2] / projected[:, 2:]
        points[~(coords[:, 2] > 0)] = np.nan
    else:
        points = np.asarray(example['coords2d_true'], np.float64)
    return points.astype(np.float32)


def collect_crops(batches, num_crops):
    """The first `num_crops` crops of an iterable of training micro-batches (the trainer's
    format), interleaving the categories example by example within each step."""
    crops = []
    for batch in batches:
        parts = {c: {k: np.asarray(v) for k, v in batch[c].items()}
                 for c in pipeline.CATEGORIES if c in batch}
        size = max((len(p['image']) for p in parts.values()), default=0)
        for i in range(size):
            for category, part in parts.items():
                if i >= len(part['image']):
                    continue
                valid = part['point_validity'][i].astype(bool)
                is_joint = part['point_ids'][i] >= 0
                if 'body_model' in part:  # body-model joints are the rows from root_index on
                    is_joint = np.arange(len(is_joint)) >= part['root_index'][i]
                crops.append(Crop(category, part['image'][i].astype(np.float32),
                                  _points_2d({k: v[i] for k, v in part.items()}, category),
                                  is_joint, valid))
                if len(crops) >= num_crops:
                    return crops
    return crops


def training_crops(cfg, prepared_dirs, num_crops, categories=None, start_step=0,
                   max_steps=None):
    """`num_crops` augmented crops from the training pipeline of `prepared_dirs`.

    cfg is the training config (its seed, proc_side, num_points, batch sizes and augmentation
    settings are used as in training; categories without data are switched off, see
    inspection_config). Crops come from steps start_step, start_step + 1, ...
    Returns (crops, skipped_records int64 [4] (bad records dropped per category)).
    """
    from nlf_tf import data_sources

    if num_crops < 1:
        raise InspectError(f'num_crops must be >= 1, got {num_crops}')
    cfg = inspection_config(cfg, prepared_dirs, categories)
    per_step = sum(data_sources.micro_batch_sizes(cfg).values())
    steps = max_steps if max_steps is not None else math.ceil(num_crops / per_step)
    try:
        data = data_sources.build_data(cfg, int(start_step), int(start_step) + steps)
    except data_sources.DataConfigError as e:
        raise InspectError(str(e)) from e
    crops = collect_crops(_with_param_ground_truth(data), num_crops)
    skipped = (np.zeros([4], np.int64) if data.skip_counter is None
               else np.asarray(data.skip_counter.numpy()))
    return crops, skipped


def _with_param_ground_truth(data):
    """The batches of `data` with the GT points of body-model param sub-batches computed as the
    trainer does (`nlf_tf.parametric`), so that they can be drawn."""
    if not data.body_model_kinds:
        return data.dataset
    from nlf_tf import parametric, training
    try:
        body_models = training.build_body_models(data.body_model_dir, data.body_model_kinds)
    except training.ConfigError as e:
        raise InspectError(str(e)) from e

    def add_ground_truth(batch):
        param = dict(batch['param'])
        param['coords3d_true'], has_model = parametric.parametric_ground_truth(param, body_models)
        param['point_validity'] = param['point_validity'] & has_model[:, None]
        return dict(batch, param=param)

    return (add_ground_truth(batch) for batch in data.dataset)


def draw_crop(crop, radius=1):
    """The crop image with its valid points drawn: other points red first, joints green on top
    (nlf_tf.callbacks.draw_points draws GT green and predictions red)."""
    from nlf_tf.callbacks import draw_points

    missing = np.full_like(crop.points2d, np.nan)
    image = draw_points(crop.image, missing, crop.points2d, crop.valid & ~crop.is_joint, radius)
    return draw_points(image, crop.points2d, missing, crop.valid & crop.is_joint, radius)


def grid_shape(num_images, columns=None):
    """(rows, columns) of the grid; columns default ceil(sqrt(n))."""
    columns = int(columns) if columns else max(1, math.ceil(math.sqrt(num_images)))
    return max(1, math.ceil(num_images / columns)), columns


def make_grid(images, columns=None, gap=2, gap_value=1.0):
    """Tiles equally sized [H, W, 3] images row by row with `gap` pixels of `gap_value` between
    cells: [rows * H + (rows - 1) * gap, columns * W + (columns - 1) * gap, 3] float32."""
    if not len(images):
        raise InspectError('no images to put in a grid')
    h, w = images[0].shape[:2]
    rows, columns = grid_shape(len(images), columns)
    grid = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3),
                   gap_value, np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = image
    return grid


def cell_origin(index, side, columns, gap=2):
    """(x, y) of the top-left pixel of grid cell `index` (square cells of `side`)."""
    r, c = divmod(index, columns)
    return c * (side + gap), r * (side + gap)


def to_uint8(image):
    return np.round(np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def write_png(image, path):
    """Writes a float [0, 1] (or uint8) [H, W, 3] image as PNG, via `<path>.tmp` and a rename so
    that a reader never sees a partial file."""
    import tensorflow as tf

    if image.dtype != np.uint8:
        image = to_uint8(image)
    data = tf.io.encode_png(image).numpy()
    folder = os.path.dirname(path)
    if folder:
        tf.io.gfile.makedirs(folder)
    tmp = path + '.tmp'
    with tf.io.gfile.GFile(tmp, 'wb') as f:
        f.write(data)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


def write_pngs(crops_drawn, grid, out_png, categories):
    """PNG output. `out_png` ending in '.png' is the grid's file name; otherwise it is a folder
    receiving grid.png and crop_<i>_<category>.png per crop. Returns the written paths."""
    if out_png.lower().endswith('.png'):
        return [write_png(grid, out_png)]
    paths = [write_png(grid, os.path.join(out_png, 'grid.png'))]
    for i, (image, category) in enumerate(zip(crops_drawn, categories)):
        paths.append(write_png(image, os.path.join(out_png, f'crop_{i:03d}_{category}.png')))
    return paths


def write_summary(grid, logdir, step=0, tag=SUMMARY_TAG):
    """The grid as a TensorBoard image summary under `logdir`."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        tf.summary.image(tag, to_uint8(grid)[np.newaxis], step=step, max_outputs=1)
    writer.flush()
    writer.close()
