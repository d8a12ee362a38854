"""The training loop of a run: builds data, model, optimizer and trainer from a config,
resumes from the latest checkpoint, trains with Keras `fit`, writes TensorBoard logs,
checkpoints and the exported inference model.

This is the "job" part (tensorflow/models' habit): the task itself (model, losses, data) lives
in its own modules and knows nothing of this loop.
"""

import os

import keras
import tensorflow as tf

from nlf_tf import callbacks as callbacks_lib
from nlf_tf import data_service as data_service_lib
from nlf_tf import data_sources
from nlf_tf import distribute as distribute_lib
from nlf_tf import export as export_lib
from nlf_tf import optimizer as optimizer_lib
from nlf_tf import pca_training
from nlf_tf import trainer as trainer_lib


class ConfigError(ValueError):
    """A setting is missing or inconsistent; the message names the flag."""


def micro_batch_sizes(cfg):
    """Per-micro-step sub-batch sizes (see `nlf_tf.data_sources.micro_batch_sizes`)."""
    try:
        return data_sources.micro_batch_sizes(cfg)
    except data_sources.DataConfigError as e:
        raise ConfigError(str(e)) from e


def validate_config(cfg):
    if cfg.training_steps is None or cfg.training_steps <= 0:
        raise ConfigError('--training_steps must be given (a positive number of optimizer steps)')
    if not cfg.logdir:
        raise ConfigError('--logdir must be given')
    if cfg.grad_accum_steps < 1:
        raise ConfigError('--grad_accum_steps must be >= 1')
    if cfg.dtype not in ('float32', 'float16', 'bfloat16'):
        raise ConfigError(f'--dtype must be float32, float16 or bfloat16, got {cfg.dtype!r}')
    if cfg.stop_step is not None and cfg.stop_step > cfg.training_steps:
        raise ConfigError('--stop_step cannot exceed --training_steps')
    micro_batch_sizes(cfg)
    _validate_steps_per_execution(cfg)
    if cfg.get('tf_data_service'):
        try:
            data_service_lib.validate_config(cfg)
        except data_service_lib.ServiceConfigError as e:
            raise ConfigError(str(e)) from e


def _validate_steps_per_execution(cfg):
    # The callbacks run once per compiled call, after the last of its micro-steps: the
    # micro-step counters at which they write must be multiples of steps_per_execution.
    k = int(cfg.steps_per_execution)
    if k < 1:
        raise ConfigError(f'--steps_per_execution must be >= 1, got {k}')
    n = cfg.grad_accum_steps
    for flag, period in (('log_period', cfg.log_period),
                         ('image_summary_period', cfg.image_summary_period),
                         ('log_period (progress period max(log_period, 50))',
                          max(cfg.log_period, 50) if cfg.verbose == 1 else 0)):
        if period and (n * period) % k:
            raise ConfigError(
                f'--steps_per_execution={k} must divide --grad_accum_steps × --{flag} = '
                f'{n} × {period}')


def set_dtype_policy(dtype):
    policy = {'float32': 'float32', 'float16': 'mixed_float16',
              'bfloat16': 'mixed_bfloat16'}[dtype]
    keras.config.set_dtype_policy(policy)


def build_data(cfg, start_step, end_step, input_context=None):
    """The `nlf_tf.data_sources.TrainingData` (joint table, dataset, skip counter) of the
    micro-steps start_step..end_step-1 (of one input pipeline with `input_context`)."""
    try:
        return data_sources.build_data(cfg, start_step, end_step, input_context=input_context)
    except data_sources.DataConfigError as e:
        raise ConfigError(str(e)) from e


def build_body_models(body_model_dir, kinds):
    """{kind: BodyModel} for the trainer's param ground truth (see `nlf_tf.parametric`)."""
    if not kinds:
        return {}
    from nlf_tf.body_models import kinds as kinds_lib
    from nlf_tf.body_models import tf_model
    try:
        return {kind: tf_model.BodyModel.from_dir(
            body_model_dir, kinds_lib.family_of(kind), kind.rsplit('_', 1)[1])
            for kind in kinds}
    except ValueError as e:  # ModelFileError names the file and the field
        raise ConfigError(f'--body_model_dir: {e}') from e


def build_trainer(cfg, joint_names, canonical_init, pca_term=None, body_models=None):
    from nlf_tf.model import NLFModel
    model = NLFModel(cfg, joint_names=joint_names, canonical_init=canonical_init)
    trainer = trainer_lib.NLFTrainer(model, cfg, pca_term=pca_term, body_models=body_models)
    return model, trainer


def _compile(trainer, model, cfg):
    optimizer = optimizer_lib.build_optimizer(
        cfg, optimizer_lib.weight_decay_exclusions(model, cfg.decay_field))
    # auto_scale_loss=False: keep the fixed loss scale of the original under mixed_float16
    # (Keras would otherwise wrap the optimizer in a dynamic LossScaleOptimizer).
    trainer.compile(optimizer=optimizer, jit_compile=bool(cfg.jit_compile), auto_scale_loss=False,
                    steps_per_execution=int(cfg.steps_per_execution))
    return optimizer


def run_training(cfg, extra_callbacks=()):
    """Trains (or resumes) the run described by `cfg`. Returns the trainer."""
    validate_config(cfg)
    # --- distribution (nlf_tf.distribute): the strategy exists before any model variable;
    # non-chief workers write into a private temporary folder (dirs), deleted at the end.
    try:
        strategy = distribute_lib.create_strategy(cfg)
        distribute_lib.check_batch_sizes(cfg, strategy.num_replicas_in_sync)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    set_dtype_policy(cfg.dtype)
    keras.utils.set_random_seed(cfg.seed)
    checkpoint_dir = cfg.checkpoint_dir or cfg.logdir
    dirs = distribute_lib.WorkerDirs(strategy, cfg.logdir, checkpoint_dir)
    try:
        # Everything that creates variables (model, PCA term, optimizer, accumulators,
        # checkpoint) is built under the strategy's scope; `fit` then uses that strategy.
        with strategy.scope():
            return _run_training(cfg, extra_callbacks, dirs, checkpoint_dir)
    finally:
        dirs.cleanup()
    # --- end distribution


def _run_training(cfg, extra_callbacks, dirs, checkpoint_dir):

    n = cfg.grad_accum_steps
    stop_step = cfg.stop_step or cfg.training_steps
    first_data = build_data(cfg, start_step=0, end_step=1)
    joint_names, canonical_init = first_data.joint_names, first_data.canonical_init
    pca_term = None
    if cfg.pca_loss:
        # Fitted on the first batches of the training stream (deterministic from the seed);
        # a resumed run restores the checkpointed parameters over it.
        fit_data = build_data(cfg, start_step=0, end_step=cfg.pca_fit_batches).dataset
        try:
            pca_term = pca_training.build_pca_term(cfg, joint_names, fit_data)
        except (ValueError, TypeError, FileNotFoundError) as e:
            raise ConfigError(f'PCA loss (--pca_*): {e}') from e
    body_models = build_body_models(first_data.body_model_dir, first_data.body_model_kinds)
    model, trainer = build_trainer(cfg, joint_names, canonical_init, pca_term, body_models)
    if cfg.load_backbone_from:
        from nlf_tf.model import backbone as backbone_lib
        report = backbone_lib.load_backbone_weights(model.backbone, cfg.load_backbone_from)
        _print_flush(report.summary())
    optimizer = _compile(trainer, model, cfg)
    example_batch = next(iter(first_data.dataset))
    trainer.build_for_training(example_batch)

    extra = {'pca_loss': pca_term.layer} if pca_term is not None else {}
    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=optimizer, train_counter=trainer.train_counter,
        grad_accumulators=list(trainer._accumulators or []), **extra)
    # Every worker saves (a collective operation); only the chief's folder is the run's. All
    # of them resume from the chief's latest checkpoint (also after a worker restart).
    manager = tf.train.CheckpointManager(
        checkpoint, dirs.checkpoint_dir, max_to_keep=cfg.max_checkpoints, checkpoint_name='ckpt')
    restore_path = cfg.load_path or tf.train.latest_checkpoint(checkpoint_dir)
    if restore_path:
        _print_flush(f'Resuming from {restore_path}')
        checkpoint.restore(restore_path).assert_existing_objects_matched()
    elif cfg.init_path:
        _print_flush(f'Initialising weights from {cfg.init_path}')
        tf.train.Checkpoint(model=model).restore(cfg.init_path).expect_partial()
    if cfg.completed_steps is not None:
        trainer.train_counter.assign(cfg.completed_steps * n)

    start = int(trainer.train_counter.numpy())
    remaining = stop_step * n - start
    if remaining > 0:
        strategy = tf.distribute.get_strategy()
        if distribute_lib.reads_files_per_worker(cfg, strategy):
            # Each worker's input pipeline reads its own files and makes per-replica batches.
            built = []

            def dataset_fn(input_context):
                built.append(build_data(cfg, start, stop_step * n, input_context=input_context))
                return built[-1].dataset

            dataset = strategy.distribute_datasets_from_function(dataset_fn)
            train_data = built[0]
        else:
            train_data = build_data(cfg, start_step=start, end_step=stop_step * n)
            dataset = train_data.dataset
        if cfg.get('tf_data_service'):
            # Input processing on tf.data service workers (see nlf_tf.data_service for the
            # order guarantees of each data source).
            try:
                dataset = data_service_lib.training_dataset(
                    cfg, train_data, start, stop_step * n)
            except (data_service_lib.ServiceConfigError, data_sources.DataConfigError) as e:
                raise ConfigError(str(e)) from e
        if not isinstance(dataset, tf.distribute.DistributedDataset):
            # One stream for all workers (the demo data, or the tf.data service): every worker
            # builds it and keeps its own share of each global batch.
            dataset = distribute_lib.with_shard_policy(dataset, 'data')
        cbs = [
            callbacks_lib.TensorBoardLogger(
                trainer, dirs.logdir, log_period=cfg.log_period,
                image_period=cfg.image_summary_period, summary_batch=example_batch,
                comment=cfg.comment, skip_counter=train_data.skip_counter),
            callbacks_lib.CheckpointSaver(trainer, manager, cfg.checkpoint_period),
            *extra_callbacks]
        if cfg.verbose == 1 and dirs.chief:
            cbs.append(callbacks_lib.ProgressPrinter(
                trainer, stop_step, period=max(cfg.log_period, 50), print_fn=_print_flush))
        _print_flush(f'Training micro-steps {start}..{stop_step * n} '
                     f'({remaining // n} optimizer steps of {cfg.training_steps})')
        try:
            # verbose 2 shows Keras' own progress bar (with every logged value).
            trainer.fit(dataset, epochs=1, steps_per_epoch=remaining, callbacks=cbs, shuffle=False,
                        verbose=1 if cfg.verbose == 2 else 0)
        except tf.errors.InvalidArgumentError as e:
            if 'Nonfinite' not in str(e):
                raise
            counter = int(trainer.train_counter.numpy())
            path = checkpoint.write(os.path.join(
                dirs.checkpoint_dir, f'ckpt_nonfinite_during_training-{counter}'))
            raise FloatingPointError(
                f'A non-finite loss stopped training at micro-step {counter}; the state was '
                f'saved to {path}. Original error: {e.message}') from e
        if cfg.get('tf_data_service'):
            data_service_lib.check_steps_trained(trainer.train_counter.numpy(), stop_step * n)
        # Bad records this process's input pipeline skipped (int64 [4] or None), for callers.
        object.__setattr__(trainer, 'skipped_records', train_data.skip_counter)
    else:
        _print_flush(f'Nothing to train: the checkpoint is at step {start // n} of {stop_step}.')

    if cfg.ema_momentum < 1:
        # Write the averaged weights into the model before it is exported.
        optimizer.finalize_variable_values(model.trainable_variables)
    if dirs.chief:
        export_path = cfg.export_file or os.path.join(checkpoint_dir, 'model')
        export_lib.export_inference_model(model, cfg, export_path)
        _print_flush(f'Exported the inference model to {export_path}')
    return trainer


def _print_flush(text):
    print(text, flush=True)
