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
from nlf_tf import export as export_lib
from nlf_tf import optimizer as optimizer_lib
from nlf_tf import pca_training
from nlf_tf import trainer as trainer_lib


class ConfigError(ValueError):
    """A setting is missing or inconsistent; the message names the flag."""


def micro_batch_sizes(cfg):
    """Per-micro-step sub-batch sizes: each configured size is global per optimizer step and
    is divided by grad_accum_steps."""
    n = cfg.grad_accum_steps
    sizes = dict(param=cfg.batch_size_parametric, kp3d=cfg.batch_size,
                 dense=cfg.batch_size_densepose, kp2d=cfg.batch_size_2d)
    for name, flag in (('param', 'batch_size_parametric'), ('kp3d', 'batch_size'),
                       ('dense', 'batch_size_densepose'), ('kp2d', 'batch_size_2d')):
        if sizes[name] < 0 or sizes[name] % n != 0:
            raise ConfigError(
                f'--{flag}={sizes[name]} must be a non-negative multiple of '
                f'--grad_accum_steps={n}')
        sizes[name] //= n
    return sizes


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


def set_dtype_policy(dtype):
    policy = {'float32': 'float32', 'float16': 'mixed_float16',
              'bfloat16': 'mixed_bfloat16'}[dtype]
    keras.config.set_dtype_policy(policy)


def build_data(cfg, start_step, end_step):
    """The joint table and the training dataset of the micro-batches start_step..end_step-1
    (the same elements, whatever the start, as in an uninterrupted run)."""
    if cfg.data == 'demo':
        from nlf_tf import demo_data
        joint_names, canonical_init = demo_data.demo_joint_table()
        dataset = demo_data.make_demo_dataset(
            proc_side=cfg.proc_side, num_points=cfg.num_points,
            batch_sizes=micro_batch_sizes(cfg), seed=cfg.seed, start_step=start_step,
            pool_size=cfg.demo_pool_size, num_steps=end_step)
        return joint_names, canonical_init, dataset
    raise ConfigError(f'--data={cfg.data!r} is not a known data source (available: demo)')


def build_trainer(cfg, joint_names, canonical_init, pca_term=None):
    from nlf_tf.model import NLFModel
    model = NLFModel(cfg, joint_names=joint_names, canonical_init=canonical_init)
    trainer = trainer_lib.NLFTrainer(model, cfg, pca_term=pca_term)
    return model, trainer


def _compile(trainer, model, cfg):
    optimizer = optimizer_lib.build_optimizer(
        cfg, optimizer_lib.weight_decay_exclusions(model, cfg.decay_field))
    # auto_scale_loss=False: keep the fixed loss scale of the original under mixed_float16
    # (Keras would otherwise wrap the optimizer in a dynamic LossScaleOptimizer).
    trainer.compile(optimizer=optimizer, jit_compile=bool(cfg.jit_compile), auto_scale_loss=False)
    return optimizer


def run_training(cfg, extra_callbacks=()):
    """Trains (or resumes) the run described by `cfg`. Returns the trainer."""
    validate_config(cfg)
    set_dtype_policy(cfg.dtype)
    keras.utils.set_random_seed(cfg.seed)
    checkpoint_dir = cfg.checkpoint_dir or cfg.logdir
    os.makedirs(cfg.logdir, exist_ok=True)
    os.makedirs(checkpoint_dir, exist_ok=True)

    n = cfg.grad_accum_steps
    stop_step = cfg.stop_step or cfg.training_steps
    joint_names, canonical_init, first_data = build_data(cfg, start_step=0, end_step=1)
    pca_term = None
    if cfg.pca_loss:
        # Fitted on the first batches of the training stream (deterministic from the seed);
        # a resumed run restores the checkpointed parameters over it.
        _, _, fit_data = build_data(cfg, start_step=0, end_step=cfg.pca_fit_batches)
        try:
            pca_term = pca_training.build_pca_term(cfg, joint_names, fit_data)
        except (ValueError, TypeError, FileNotFoundError) as e:
            raise ConfigError(f'PCA loss (--pca_*): {e}') from e
    model, trainer = build_trainer(cfg, joint_names, canonical_init, pca_term)
    if cfg.load_backbone_from:
        from nlf_tf.model import backbone as backbone_lib
        report = backbone_lib.load_backbone_weights(model.backbone, cfg.load_backbone_from)
        _print_flush(report.summary())
    optimizer = _compile(trainer, model, cfg)
    example_batch = next(iter(first_data))
    trainer.build_for_training(example_batch)

    extra = {'pca_loss': pca_term.layer} if pca_term is not None else {}
    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=optimizer, train_counter=trainer.train_counter,
        grad_accumulators=list(trainer._accumulators or []), **extra)
    manager = tf.train.CheckpointManager(
        checkpoint, checkpoint_dir, max_to_keep=cfg.max_checkpoints, checkpoint_name='ckpt')
    restore_path = cfg.load_path or manager.latest_checkpoint
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
        _, _, dataset = build_data(cfg, start_step=start, end_step=stop_step * n)
        cbs = [
            callbacks_lib.TensorBoardLogger(
                trainer, cfg.logdir, log_period=cfg.log_period,
                image_period=cfg.image_summary_period, summary_batch=example_batch,
                comment=cfg.comment),
            callbacks_lib.CheckpointSaver(trainer, manager, cfg.checkpoint_period),
            *extra_callbacks]
        if cfg.verbose == 1:
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
                checkpoint_dir, f'ckpt_nonfinite_during_training-{counter}'))
            raise FloatingPointError(
                f'A non-finite loss stopped training at micro-step {counter}; the state was '
                f'saved to {path}. Original error: {e.message}') from e
    else:
        _print_flush(f'Nothing to train: the checkpoint is at step {start // n} of {stop_step}.')

    if cfg.ema_momentum < 1:
        # Write the averaged weights into the model before it is exported.
        optimizer.finalize_variable_values(model.trainable_variables)
    export_path = cfg.export_file or os.path.join(checkpoint_dir, 'model')
    export_lib.export_inference_model(model, cfg, export_path)
    _print_flush(f'Exported the inference model to {export_path}')
    return trainer


def _print_flush(text):
    print(text, flush=True)
