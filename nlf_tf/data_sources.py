"""Where a run's training data comes from: the built-in demo, or folders written by
`nlf-tf-prepare` (one dataset split each), mixed per category by dataset weights.

`build_data(cfg, start_step, end_step)` returns the global canonical joint table and the
micro-batch dataset of the steps start_step..end_step-1, plus, for prepared data, the in-graph
counter of bad records that were skipped (logged to TensorBoard by the training loop).
"""

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from nlf_tf import joint_table


class DataConfigError(ValueError):
    """A data setting is wrong; the message names the flag and the file."""


@dataclasses.dataclass
class TrainingData:
    joint_names: list
    canonical_init: np.ndarray
    dataset: tf.data.Dataset
    skip_counter: tf.Variable = None  # int64 [4]: bad records skipped per category
    # Parametric data with body-model parameters: the kinds (e.g. 'smplx_n') whose body models
    # the trainer must forward, and the folder of their files.
    body_model_kinds: tuple = ()
    body_model_dir: str = None


# (category, flag) of the four sub-batch sizes, in batch order.
BATCH_SIZE_FLAGS = (('param', 'batch_size_parametric'), ('kp3d', 'batch_size'),
                    ('dense', 'batch_size_densepose'), ('kp2d', 'batch_size_2d'))


def micro_batch_sizes(cfg):
    """Per-micro-step sub-batch sizes: each configured size is global per optimizer step and
    is divided by grad_accum_steps."""
    n = cfg.grad_accum_steps
    sizes = {}
    for name, flag in BATCH_SIZE_FLAGS:
        size = cfg[flag]
        if size < 0 or size % n != 0:
            raise DataConfigError(
                f'--{flag}={size} must be a non-negative multiple of --grad_accum_steps={n}')
        sizes[name] = size // n
    return sizes


def parse_weights(text):
    """'mads:2,coco:4' → {'mads': 2.0, 'coco': 4.0}."""
    weights = {}
    for item in (text or '').split(','):
        if not item.strip():
            continue
        name, sep, value = item.partition(':')
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ''
        if not sep or weights.get(name.strip(), -1) < 0:
            raise DataConfigError(
                f'--dataset_weights must look like "mads:2,coco:4", got {item!r}')
    return weights


def prepared_sources(dirs, weights_text=None):
    """(dataset, category, files, weight) of every `nlf-tf-prepare` output folder."""
    from nlf_tf import specs
    overrides = parse_weights(weights_text)
    sources = []
    for folder in dirs:
        manifest_path = os.path.join(folder, 'manifest.json')
        if not os.path.isfile(manifest_path):
            raise DataConfigError(
                f'--prepared_dirs: {folder} has no manifest.json; run nlf-tf-prepare on it '
                f'(an interrupted run is completed by running it again)')
        try:
            with open(manifest_path, encoding='utf-8') as f:
                manifest = json.load(f)
            dataset, category = manifest['dataset'], manifest['category']
            files = [os.path.join(folder, s['file']) for s in manifest['shards']]
        except (ValueError, KeyError, TypeError) as e:
            raise DataConfigError(f'{manifest_path}: not a valid nlf-tf-prepare manifest ({e})')
        missing = [p for p in files if not os.path.isfile(p)]
        if missing:
            raise DataConfigError(f'{manifest_path}: shard files are missing: {missing[:3]}')
        if not files or not manifest.get('num_examples'):
            raise DataConfigError(f'{manifest_path}: the folder holds no examples')
        weight = overrides.get(dataset, specs.load_spec(dataset).get('weight', 1.0))
        sources.append((dataset, category, files, float(weight)))
    unknown = set(overrides) - {s[0] for s in sources}
    if unknown:
        raise DataConfigError(f'--dataset_weights names datasets without data: {sorted(unknown)}')
    return sources


def parametric_setup(cfg, sources, body_model_dir=None, canonical_dir=None, num_interior=None,
                     log=print):
    """({family: canonical assets}, body-model kinds) needed by the param sources.

    The canonical-space assets of each body-model family the param datasets use (data spec
    field `body_model.type`) are generated on first use and cached (see
    `nlf_tf.body_models.canonical_assets`); the kinds are those whose model files exist.
    Returns ({}, ()) when there is no param source or the param sub-batch is empty.
    """
    from nlf_tf import specs
    datasets = sorted({s[0] for s in sources if s[1] == 'param'})
    if not datasets or micro_batch_sizes(cfg)['param'] == 0:
        return {}, ()
    body_model_dir = body_model_dir or cfg.get('body_model_dir')
    if not body_model_dir:
        raise DataConfigError(
            f'parametric data ({", ".join(datasets)}) needs --body_model_dir, the folder of the '
            f'SMPL/SMPL+H/SMPL-X files (see the README, "Body-model files")')
    families = []
    for name in datasets:
        body_model = specs.load_spec(name).get('body_model')
        family = body_model.get('type') if isinstance(body_model, dict) else None
        if not family:
            raise DataConfigError(f'data spec {name!r} has no "body_model": {{"type": ...}}')
        if family not in families:
            families.append(family)
    from nlf_tf.body_models import canonical_assets
    try:
        paths = canonical_assets.ensure_assets(
            body_model_dir, canonical_dir or cfg.get('canonical_dir'), families,
            num_interior=num_interior, log=log)
        assets = {f: canonical_assets.load_assets(paths[f], f) for f in families}
    except (ValueError, OSError) as e:
        raise DataConfigError(f'--body_model_dir={body_model_dir}: {e}') from e
    kinds = tuple(str(k) for f in families for k in assets[f]['kinds'])
    return assets, kinds


def training_data_of_sources(cfg, sources, start_step, end_step, input_context=None,
                             body_model_dir=None, num_interior=None, log=print):
    """The `TrainingData` of prepared sources (dataset, category, files, weight): the joint
    table of the kp3d / dense / kp2d datasets, the canonical assets and body-model kinds of the
    param datasets (`parametric_setup`; body_model_dir default --body_model_dir), a skip
    counter, and the pipeline of the micro-steps start_step..end_step-1."""
    from nlf_tf.data import pipeline
    names = sorted({dataset for dataset, category, _, _ in sources if category != 'param'})
    joint_names, canonical_init = joint_table.build_joint_table(names)
    body_model_dir = body_model_dir or cfg.get('body_model_dir')
    param_assets, kinds = parametric_setup(cfg, sources, body_model_dir=body_model_dir,
                                           num_interior=num_interior, log=log)
    skip_counter = tf.Variable(tf.zeros([4], tf.int64), trainable=False, name='skipped_records')
    try:
        dataset = pipeline.make_training_dataset(
            cfg, sources, joint_names, start_step=start_step, end_step=end_step,
            skip_counter=skip_counter, param_assets=param_assets or None,
            input_context=input_context)
    except ValueError as e:
        raise DataConfigError(str(e)) from e
    return TrainingData(joint_names, canonical_init, dataset, skip_counter, kinds,
                        body_model_dir)


def per_pipeline_view(cfg, start_step, end_step, input_context):
    """(cfg, start, end) of one input pipeline of `input_context` (a tf.distribute.InputContext
    of `distribute_datasets_from_function`): the sub-batch sizes become per-replica sizes
    (global / replicas), and since the pipeline feeds its L local replicas in turn, micro-step s
    of the run is its elements s L .. s L + L - 1."""
    import easydict
    replicas = int(input_context.num_replicas_in_sync)
    local = replicas // int(input_context.num_input_pipelines)
    view = easydict.EasyDict(dict(cfg))
    for _, flag in BATCH_SIZE_FLAGS:
        if view[flag] % replicas:
            raise DataConfigError(f'--{flag}={view[flag]} must be a multiple of the '
                                  f'{replicas} replicas')
        view[flag] = view[flag] // replicas
    return view, start_step * local, None if end_step is None else end_step * local


def build_data(cfg, start_step, end_step, input_context=None):
    """The `TrainingData` of the micro-steps start_step..end_step-1 (identical elements,
    whatever the start, to those of an uninterrupted run).

    input_context: a tf.distribute.InputContext for `distribute_datasets_from_function`: the
    data of that input pipeline only (prepared / synthetic data: every n-th file of each source,
    per-replica batches, see `per_pipeline_view`)."""
    if input_context is not None:
        if cfg.data not in ('prepared', 'synthetic'):
            raise DataConfigError(f'--data={cfg.data} cannot be read per input pipeline')
        cfg, start_step, end_step = per_pipeline_view(cfg, start_step, end_step, input_context)
    if cfg.data == 'demo':
        from nlf_tf import demo_data
        joint_names, canonical_init = demo_data.demo_joint_table()
        dataset = demo_data.make_demo_dataset(
            proc_side=cfg.proc_side, num_points=cfg.num_points,
            batch_sizes=micro_batch_sizes(cfg), seed=cfg.seed, start_step=start_step,
            pool_size=cfg.demo_pool_size, num_steps=end_step)
        return TrainingData(joint_names, canonical_init, dataset)
    if cfg.data == 'prepared':
        dirs = [d.strip() for d in (cfg.prepared_dirs or '').split(',') if d.strip()]
        if not dirs:
            raise DataConfigError('--data=prepared needs --prepared_dirs (comma-separated '
                                  'output folders of nlf-tf-prepare)')
        return training_data_of_sources(
            cfg, prepared_sources(dirs, cfg.dataset_weights), start_step, end_step,
            input_context=input_context)
    if cfg.data == 'synthetic':
        # Tiny native-format folders of all six datasets written and prepared under the logdir
        # (reused when present), then read like 'prepared'.
        from nlf_tf.data import synthetic
        return synthetic.build_synthetic_data(cfg, start_step, end_step,
                                              input_context=input_context)
    raise DataConfigError(
        f'--data={cfg.data!r} is not a known data source (available: demo, prepared, '
        f'synthetic)')
