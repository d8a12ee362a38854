"""End-to-end runs of the training loop on tiny demo data: TensorBoard content, checkpoints,
exact resumption, export."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from nlf_tf import callbacks, config, training


def tiny_cfg(logdir, **kw):
    base = dict(
        data='demo', logdir=str(logdir), training_steps=6, checkpoint_period=3, log_period=1,
        image_summary_period=3, proc_side=64, backbone='mobilenetv3small', dtype='float32',
        batch_size_parametric=2, batch_size=2, batch_size_densepose=2, batch_size_2d=2,
        num_points=32, demo_pool_size=16, backbone_link_dim=8, field_posenc_dim=16,
        field_hidden_size=16, base_learning_rate=1e-3, verbose=0, seed=3)
    base.update(kw)
    return config.default_config(**base)


@pytest.fixture(scope='module')
def deterministic_ops():
    tf.config.experimental.enable_op_determinism()
    yield


def read_events(logdir):
    tags = {}
    for path in glob.glob(os.path.join(logdir, 'events.out.tfevents.*')):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


def test_run_writes_tensorboard_checkpoints_and_export(tmp_path, deterministic_ops):
    cfg = tiny_cfg(tmp_path / 'run')
    trainer = training.run_training(cfg)
    assert int(trainer.train_counter.numpy()) == 6
    tags = read_events(cfg.logdir)
    for tag in ('loss', 'loss_parambatch', 'loss_abs_param', 'loss_rel_kp', 'loss_px_kp',
                'loss_densebatch', 'loss_2dbatch', 'mean_error', 'mean_error_abs',
                'mean_error_procrustes', 'auc', 'pck', 'mean_error_px', 'mean_error_kp',
                'mean_error_px_dense', 'mean_error_px_2d', 'learning_rate', 'loss_scale',
                'steps_per_sec', 'train_crops'):
        assert tag in tags, tag
    assert sorted(tags['loss']) == [1, 2, 3, 4, 5, 6]
    assert tags['train_crops'] == [3, 6]
    assert os.path.exists(os.path.join(cfg.logdir, 'ckpt-6.index'))
    assert os.path.exists(os.path.join(cfg.logdir, 'ckpt-3.index'))

    exported = tf.saved_model.load(os.path.join(cfg.logdir, 'model'))
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(2, 64, 64, 3)).astype(np.float32)
    k = np.repeat(np.array([[60, 0, 32], [0, 60, 32], [0, 0, 1]], np.float32)[None], 2, 0)
    points = rng.normal(scale=0.3, size=(2, 5, 3)).astype(np.float32)
    out = exported.predict(image, k, points)
    direct = trainer.model(dict(image=image, intrinsics=k, canonical_points=points),
                           training=False)
    for name in ('coords2d', 'coords3d', 'uncertainty'):
        np.testing.assert_allclose(out[name].numpy(), np.asarray(direct[name]), atol=1e-4)

    # Running again with the same logdir resumes at step 6: nothing to train, export kept.
    training.run_training(cfg)
    assert glob.glob(os.path.join(cfg.logdir, 'model.previous-*'))


def test_resumed_run_continues_exactly(tmp_path, deterministic_ops):
    full_dir, split_dir = tmp_path / 'full', tmp_path / 'split'
    cfg_full = tiny_cfg(full_dir, image_summary_period=0)
    recorder = {}

    def run(cfg):
        holder = {}
        rec = callbacks.StepRecorder()
        training.run_training(cfg, extra_callbacks=[rec])
        holder.update(zip(rec.steps, rec.logs))
        return holder

    recorder['full'] = run(cfg_full)
    first = run(tiny_cfg(split_dir, image_summary_period=0, stop_step=3))
    second = run(tiny_cfg(split_dir, image_summary_period=0))
    assert sorted(first) == [0, 1, 2] and sorted(second) == [3, 4, 5]
    for step in range(6):
        got = (first if step < 3 else second)[step]
        for name in ('loss', 'mean_error', 'loss_rel_param', 'learning_rate'):
            np.testing.assert_allclose(got[name], recorder['full'][step][name], rtol=1e-5,
                                       err_msg=f'{name} at step {step}')


def test_grad_accumulation_mixed_float16_run_and_bad_batch_config(tmp_path):
    cfg = tiny_cfg(tmp_path / 'acc', grad_accum_steps=2, training_steps=2, image_summary_period=0,
                   dtype='float16')
    recorder = callbacks.StepRecorder()
    trainer = training.run_training(cfg, extra_callbacks=[recorder])
    assert int(trainer.train_counter.numpy()) == 4
    assert int(trainer.optimizer.iterations.numpy()) == 2
    # Mixed precision: float16 features, float32 losses, the original's fixed loss scale.
    assert trainer.model.backbone.compute_dtype == 'float16'
    for logs in recorder.logs:
        assert np.isfinite(logs['loss']) and logs['loss_scale'] == 128.0
    with pytest.raises(training.ConfigError, match='batch_size_parametric'):
        training.validate_config(tiny_cfg(tmp_path, grad_accum_steps=2, batch_size_parametric=3))
    with pytest.raises(training.ConfigError, match='training_steps'):
        training.validate_config(tiny_cfg(tmp_path, training_steps=None))
    with pytest.raises(training.ConfigError, match='data'):
        training.run_training(tiny_cfg(tmp_path / 'x', data='nope'))
