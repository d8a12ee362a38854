"""Distribution of a training run over several devices or machines (`--distribution`).

- `none`: the default strategy (one device).
- `mirrored`: `tf.distribute.MirroredStrategy` on this machine: all GPUs, or, without GPUs,
  every logical CPU device (one unless `set_logical_cpu_devices` was called).
- `multi_worker`: `tf.distribute.MultiWorkerMirroredStrategy`, configured by the `TF_CONFIG`
  environment variable (cluster spec and this process's task), one process per machine.

Batch semantics: every configured sub-batch size is GLOBAL per optimizer step. The dataset
yields global micro-batches (size / grad_accum_steps per category) and Keras distributes them
with `strategy.experimental_distribute_dataset`, which splits each of the four sub-batches
separately along axis 0, so replica r receives the r-th contiguous chunk of every category.
Each size must therefore be divisible by replicas × grad_accum_steps (`check_batch_sizes`).

Loss semantics (as in the original): each replica computes its own losses (masked means over
its own share of each sub-batch), divides the total by the number of replicas, and the
gradients are summed across replicas. The update is thus the MEAN over replicas (and
accumulation micro-steps) of per-shard gradients; it equals single-device training on the
global batch when the masked counts are the same in every shard, and always equals
single-device training with replicas × grad_accum_steps accumulation steps on the same shards.

Only the chief writes checkpoints, TensorBoard logs and the export; other workers write what
they must (checkpoint saving is a collective operation) into a private temporary folder that
is deleted at the end (`WorkerDirs`). A restarted worker resumes from the chief's latest
checkpoint through the run's `tf.train.CheckpointManager` folder.
"""

import json
import os
import shutil
import tempfile

import tensorflow as tf

from nlf_tf import data_sources

DISTRIBUTIONS = ('none', 'mirrored', 'multi_worker')



def distribution_name(cfg):
    """The validated `--distribution` value (`--multi_gpu` is a deprecated alias of
    `mirrored`)."""
    name = cfg.get('distribution') or 'none'
    if name not in DISTRIBUTIONS:
        raise ValueError(f'--distribution must be one of {", ".join(DISTRIBUTIONS)}, '
                         f'got {name!r}')
    if cfg.get('multi_gpu'):
        if name == 'multi_worker':
            raise ValueError('--multi_gpu (= --distribution=mirrored) contradicts '
                             '--distribution=multi_worker')
        name = 'mirrored'
    return name


def set_logical_cpu_devices(count):
    """Splits the physical CPU into `count` logical devices (tests and benchmarks of the
    mirrored strategy on a machine without GPUs). Must run before TensorFlow initialises its
    devices, i.e. before any op runs in the process."""
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(int(count))])


def mirrored_devices():
    """Devices of a one-machine mirrored strategy: every GPU, else every logical CPU."""
    gpus = tf.config.list_logical_devices('GPU')
    return [d.name for d in (gpus or tf.config.list_logical_devices('CPU'))]


def create_strategy(cfg):
    """The strategy of `cfg.distribution`. Create it before anything else touches TensorFlow
    devices, and build model, optimizer, trainer and checkpoint under `strategy.scope()`."""
    name = distribution_name(cfg)
    if name == 'none':
        return tf.distribute.get_strategy()
    if name == 'mirrored':
        return tf.distribute.MirroredStrategy(devices=mirrored_devices())
    tf_config = os.environ.get('TF_CONFIG')
    if not tf_config:
        raise ValueError('--distribution=multi_worker needs the TF_CONFIG environment variable '
                         '(cluster spec and this task), see tf.distribute.MultiWorkerMirroredStrategy')
    try:
        parsed = json.loads(tf_config)
        parsed['cluster'], parsed['task']['type'], parsed['task']['index']
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f'TF_CONFIG must be JSON with "cluster" and "task": {{"type", "index"}} '
                         f'(--distribution=multi_worker): {e}') from e
    return tf.distribute.MultiWorkerMirroredStrategy()


def task_of(strategy):
    """(task_type, task_id) of this process; (None, None) without a cluster."""
    resolver = getattr(strategy, 'cluster_resolver', None)
    if resolver is None:
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy):
    """Whether this process writes the run's files: the 'chief' task, or worker 0 of a cluster
    without a chief, or any process that is not part of a cluster."""
    task_type, task_id = task_of(strategy)
    if task_type is None:
        return True
    if task_type == 'chief':
        return True
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == 'worker' and task_id == 0 and 'chief' not in cluster


def check_batch_sizes(cfg, num_replicas):
    """Raises ValueError naming the flag if a sub-batch size is not divisible by
    num_replicas × grad_accum_steps."""
    divisor = int(num_replicas) * int(cfg.grad_accum_steps)
    for category, flag in data_sources.BATCH_SIZE_FLAGS:
        size = cfg[flag]
        if size % divisor != 0:
            raise ValueError(
                f'--{flag}={size} (the {category} sub-batch, global per optimizer step) must be '
                f'divisible by replicas × --grad_accum_steps = {num_replicas} × '
                f'{cfg.grad_accum_steps} = {divisor}')


def reads_files_per_worker(cfg, strategy):
    """Whether each worker's input pipeline reads its own TFRecord files: prepared or synthetic
    data under a MultiWorkerMirroredStrategy with several workers, without the tf.data service
    (see `nlf_tf.data_sources.per_pipeline_view`)."""
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode()
            and cfg.data in ('prepared', 'synthetic') and not cfg.get('tf_data_service'))


def with_shard_policy(dataset, policy):
    """Sets how a multi-worker strategy shards `dataset` over workers: 'file' (each worker
    reads its own files: TFRecord sources), 'data' (each worker builds the whole stream and
    keeps its share: in-memory sources such as the demo data), 'auto' (file, else data) or
    'off'."""
    policies = {'auto': tf.data.experimental.AutoShardPolicy.AUTO,
                'file': tf.data.experimental.AutoShardPolicy.FILE,
                'data': tf.data.experimental.AutoShardPolicy.DATA,
                'off': tf.data.experimental.AutoShardPolicy.OFF}
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policies[policy]
    return dataset.with_options(options)


class WorkerDirs:
    """The folders this process writes to: the run's own for the chief, a private temporary
    folder (deleted by `cleanup`) for every other worker."""

    def __init__(self, strategy, logdir, checkpoint_dir):
        self.chief = is_chief(strategy)
        self._tmp = None
        if self.chief:
            self.logdir, self.checkpoint_dir = logdir, checkpoint_dir
        else:
            task_type, task_id = task_of(strategy)
            self._tmp = tempfile.mkdtemp(prefix=f'nlf_{task_type}{task_id}_')
            self.logdir = os.path.join(self._tmp, 'logs')
            self.checkpoint_dir = os.path.join(self._tmp, 'checkpoints')
        os.makedirs(self.logdir, exist_ok=True)
        os.makedirs(self.checkpoint_dir, exist_ok=True)

    def cleanup(self):
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
