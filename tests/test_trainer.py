"""Trainer logic on a tiny, exactly mirror-equivariant stand-in model (no backbone network):
step counters, the perspective switch, mirroring, gating, visibility and gradient accumulation.
"""

import easydict
import keras
import numpy as np
import pytest
import tensorflow as tf

from nlf_tf import config, reconstruction
from nlf_tf.trainer import NLFTrainer

S = 64
K = np.array([[60, 0, (S - 1) / 2], [0, 60, (S - 1) / 2], [0, 0, 1]], np.float32)


class _Backbone(keras.layers.Layer):
    def call(self, image, training=False):
        # Right-half minus left-half brightness: flips sign exactly under a horizontal flip.
        half = image.shape[2] // 2
        return tf.reduce_mean(image[:, :, half:] - image[:, :, :half], axis=[1, 2, 3])


class _Head(keras.layers.Layer):
    """head2d/head3d are affine in the canonical points and the image asymmetry, built so that
    mirroring input and un-mirroring output is an exact identity."""

    def build(self, *args):
        self.scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(1.0),
                                     name='scale')
        self.log_u = self.add_weight(shape=(), initializer=keras.initializers.Constant(-1.5),
                                     name='log_u')

    def call(self, features, canonical_points, training=False):
        asym = features[:, tf.newaxis, tf.newaxis]
        cx = canonical_points[..., :1]
        cy = canonical_points[..., 1:2]
        u = (S - 1) / 2 + 20 * cx * self.scale + 5 * asym
        v = (S - 1) / 2 + 20 * cy * self.scale
        head2d = tf.concat([u, v], axis=-1)
        head3d = canonical_points * self.scale + tf.concat(
            [0.1 * asym, tf.zeros_like(asym), 0.05 * asym * asym], axis=-1)
        uncert = tf.nn.softplus(self.log_u) + 0.001 + 0 * canonical_points[..., 0]
        return head2d, head3d, uncert


class _Model(keras.Model):
    def __init__(self, joints):
        super().__init__()
        self.backbone = _Backbone()
        self.heatmap_head = _Head()
        self.joints = tf.constant(joints, tf.float32)

    def canonical_locs(self):
        return self.joints


JOINTS = np.array([[0, 0, 0], [0.2, 0.1, 0], [-0.2, 0.1, 0], [0, -0.5, 0]], np.float32)


def make_batch(rng, sizes=(2, 2, 1, 1), p=6):
    batch = {}
    for cat, b in zip(('param', 'kp3d', 'dense', 'kp2d'), sizes):
        image = rng.uniform(size=(b, S, S, 3)).astype(np.float32)
        ids = np.full((b, p), -1, np.int32)
        ids[:, :4] = np.arange(4)
        canon = rng.normal(scale=0.3, size=(b, p, 3)).astype(np.float32)
        valid = np.ones((b, p), bool)
        valid[:, 5] = False
        part = dict(image=image, intrinsics=np.repeat(K[None], b, 0), point_ids=ids,
                    canonical_points=canon, point_validity=valid)
        true3d = (np.concatenate([JOINTS[None].repeat(b, 0), canon[:, 4:]], 1)
                  + [0, 0, 3]).astype(np.float32)
        true3d[:, 5] = 0
        if cat in ('param', 'kp3d'):
            part['coords3d_true'] = true3d
            part['root_index'] = np.zeros(b, np.int32)
        else:
            proj = true3d @ K.T
            part['coords2d_true'] = (proj[..., :2] / np.where(
                proj[..., 2:] == 0, 1, proj[..., 2:])).astype(np.float32)
        batch[cat] = {k: tf.constant(v) for k, v in part.items()}
    return batch


def make_trainer(**overrides):
    kw = dict(proc_side=S, training_steps=10000, grad_accum_steps=1)
    kw.update(overrides)
    cfg = config.default_config(**kw)
    return NLFTrainer(_Model(JOINTS), cfg), cfg


@pytest.mark.parametrize('accum, counter, weak', [
    (1, 499, True), (1, 500, False), (2, 999, True), (2, 1000, False)])
def test_perspective_switch_case20(accum, counter, weak):
    trainer, cfg = make_trainer(grad_accum_steps=accum)
    trainer.train_counter.assign(counter)
    rng = np.random.default_rng(0)
    head2d = tf.constant(rng.uniform(40, 200, (2, 20, 2)), tf.float32)
    head3d = tf.constant(rng.normal(scale=0.3, size=(2, 20, 3)), tf.float32)
    k = tf.constant(np.repeat(np.array([[500, 0, 128], [0, 500, 128], [0, 0, 1]],
                                       np.float32)[None], 2, 0))
    trainer.cfg.proc_side = 256
    out = trainer.reconstruct_absolute(head2d, head3d, k, 0.3)
    expected = reconstruction.reconstruct_absolute(
        head2d, head3d, k, mix_3d_inside_fov=0.3, weak_perspective=weak, border_factor1=1,
        border_factor2=0.55, mix_based_on_3d=False)
    other = reconstruction.reconstruct_absolute(
        head2d, head3d, k, mix_3d_inside_fov=0.3, weak_perspective=not weak, border_factor1=1,
        border_factor2=0.55, mix_based_on_3d=False)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-6)
    assert np.abs(out.numpy() - other.numpy()).max() > 1e-4
    assert int(trainer.adjusted_train_counter()) == counter // accum


def test_mirroring_is_undone_exactly_case38():
    trainer, _ = make_trainer()
    batch = make_batch(np.random.default_rng(1))
    inps = trainer.prepare_inputs(batch)
    outs = []
    for seed in range(4):  # different keys → different flip masks
        key = tf.constant([seed, 7], tf.int64)
        preds = trainer.forward_train(inps, training=False, key=key)
        outs.append((preds.head2d.numpy(), preds.head3d.numpy(), preds.coords3d_abs.numpy()))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            np.testing.assert_allclose(a, b, atol=1e-4)


def test_flip_masks_vary_with_the_step_and_are_reproducible():
    trainer, _ = make_trainer()
    keys = []
    for c in (0, 1, 0):
        trainer.train_counter.assign(c)
        keys.append(trainer._step_key().numpy())
    assert not np.array_equal(keys[0], keys[1])
    np.testing.assert_array_equal(keys[0], keys[2])


def test_mix_factor_train_vs_test_case21(monkeypatch):
    trainer, cfg = make_trainer()
    seen = []
    original = trainer.reconstruct_absolute

    def spy(head2d, head3d, intrinsics, mix, validity=None):
        seen.append(mix)
        return original(head2d, head3d, intrinsics, mix, validity)

    monkeypatch.setattr(trainer, 'reconstruct_absolute', spy)
    inps = trainer.prepare_inputs(make_batch(np.random.default_rng(2)))
    trainer.forward_train(inps, training=True)
    trainer.forward_train(inps, training=False)
    mix_train = seen[0].numpy()
    assert mix_train.shape == (6, 1, 1)
    assert np.all((mix_train >= 0) & (mix_train < 1)) and np.unique(mix_train).size > 1
    assert seen[1] == 0.5


def test_uncertainty_gating_case22(monkeypatch):
    for nll, counter, expect_gated in ((True, 999, False), (True, 1000, True),
                                       (False, 5000, False)):
        trainer, _ = make_trainer(nll_loss=nll)
        trainer.train_counter.assign(counter)
        captured = {}
        original = trainer.reconstruct_absolute

        def spy(head2d, head3d, intrinsics, mix, validity=None):
            captured['validity'] = validity
            return original(head2d, head3d, intrinsics, mix, validity)

        monkeypatch.setattr(trainer, 'reconstruct_absolute', spy)
        # log_u = -1.5 → u = softplus(-1.5) + 0.001 ≈ 0.2024 < 0.3; make it larger:
        trainer.model.heatmap_head.build()
        trainer.model.heatmap_head.log_u.assign(0.0)  # u ≈ 0.694 ≥ 0.3
        inps = trainer.prepare_inputs(make_batch(np.random.default_rng(3)))
        trainer.forward_train(inps, training=True)
        validity = captured['validity'].numpy()
        if expect_gated:
            assert not validity.any()
        else:
            np.testing.assert_array_equal(validity, inps.is_within_fov_true.numpy())


def test_gt_visibility_case23():
    trainer, cfg = make_trainer(proc_side=256)
    batch = make_batch(np.random.default_rng(4))
    k256 = np.array([[500, 0, 128], [0, 500, 128], [0, 0, 1]], np.float32)
    for cat in batch:
        b = batch[cat]['image'].shape[0]
        batch[cat]['intrinsics'] = tf.constant(np.repeat(k256[None], b, 0))
    true = batch['param']['coords3d_true'].numpy()
    true[0, 0] = [0, 0, 0.001]  # on the camera plane: not in front
    true[0, 1] = [0, 0, 3.0]  # at the principal point: visible
    batch['param']['coords3d_true'] = tf.constant(true)
    c2d = batch['kp2d']['coords2d_true'].numpy()
    c2d[0, 0] = [240, 240]
    c2d[0, 1] = [240.01, 100]
    batch['kp2d']['coords2d_true'] = tf.constant(c2d)
    inps = trainer.prepare_inputs(batch)
    vis = inps.is_within_fov_true.numpy()
    assert not vis[0, 0] and vis[0, 1]
    kp2d_row = 2 + 2 + 1  # param, kp3d, dense come first
    assert vis[kp2d_row, 0] and not vis[kp2d_row, 1]
    assert not vis[:, 5].any()  # invalid (padded) slots never count


def test_canonical_lookup_by_point_ids():
    trainer, _ = make_trainer()
    batch = make_batch(np.random.default_rng(5))
    inps = trainer.prepare_inputs(batch)
    canon = inps.canonical_points_tensor.numpy()
    np.testing.assert_allclose(canon[:, :4], np.broadcast_to(JOINTS, (6, 4, 3)))
    own = np.concatenate([batch[c]['canonical_points'].numpy() for c in batch])
    np.testing.assert_allclose(canon[:, 4:], own[:, 4:])


def _adam_step(theta, g, lr, b1=0.9, b2=0.999, eps=1e-8):
    m = (1 - b1) * g
    v = (1 - b2) * g * g
    return theta - lr * np.sqrt(1 - b2) / (1 - b1) * m / (np.sqrt(v) + eps)


def test_gradient_accumulation_case42():
    trainer, cfg = make_trainer(grad_accum_steps=2, weight_decay=0.0)
    opt = keras.optimizers.Adam(learning_rate=0.01, epsilon=1e-8)
    trainer.compile(optimizer=opt, auto_scale_loss=False)
    rng = np.random.default_rng(6)
    batches = [make_batch(rng), make_batch(rng)]
    trainer.build_for_training(batches[0])
    variables = trainer.model.trainable_variables
    start = [v.numpy().copy() for v in variables]

    grads = []
    for i, batch in enumerate(batches):
        trainer.train_counter.assign(i)
        key = trainer._step_key()
        with tf.GradientTape() as tape:
            inps = trainer.prepare_inputs(batch)
            preds = trainer.forward_train(inps, training=True, key=key)
            loss = trainer.compute_losses(inps, preds).loss
        grads.append([g.numpy() for g in tape.gradient(loss, variables)])
    trainer.train_counter.assign(0)

    trainer.train_step(batches[0])
    for v, s in zip(variables, start):
        np.testing.assert_array_equal(v.numpy(), s)  # no change after micro-step 0
    assert int(opt.iterations.numpy()) == 0
    trainer.train_step(batches[1])
    assert int(opt.iterations.numpy()) == 1
    for v, s, g0, g1 in zip(variables, start, *grads):
        np.testing.assert_allclose(v.numpy(), _adam_step(s, (g0 + g1) / 2, 0.01), rtol=1e-5)
    assert int(trainer.train_counter.numpy()) == 2


def test_train_step_logs_and_counter():
    trainer, _ = make_trainer()
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3), auto_scale_loss=False)
    batch = make_batch(np.random.default_rng(7))
    trainer.build_for_training(batch)
    logs = trainer.train_step(batch)
    assert int(trainer.train_counter.numpy()) == 1
    for name in ('loss', 'loss_parambatch', 'loss_abs_kp', 'mean_error', 'mean_error_kp',
                 'mean_error_px_dense', 'mean_error_px_2d', 'learning_rate', 'loss_scale'):
        assert np.isfinite(np.asarray(logs[name])), name


def test_nonfinite_loss_raises():
    trainer, _ = make_trainer()
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3), auto_scale_loss=False)
    batch = make_batch(np.random.default_rng(8))
    trainer.build_for_training(batch)
    # NaN components are zeroed by the masked mean (as in the original); an overflow to
    # infinity is not, and must stop training.
    true = batch['kp3d']['coords3d_true'].numpy()
    true[0, 1] = [3e38, 0, 3]
    batch['kp3d']['coords3d_true'] = tf.constant(true)
    with pytest.raises(tf.errors.InvalidArgumentError, match='Nonfinite'):
        trainer.train_step(batch)


def test_cfg_stays_a_plain_easydict():
    trainer, _ = make_trainer()
    assert isinstance(trainer.cfg, easydict.EasyDict)
    assert trainer.cfg.proc_side == S


def test_train_step_ramps_the_renorm_clipping_case46():
    from nlf_tf.model import normalization
    trainer, _ = make_trainer(grad_accum_steps=2)
    trainer.model.renorm_clipping = normalization.RenormClipping()
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3), auto_scale_loss=False)
    batch = make_batch(np.random.default_rng(9))
    trainer.build_for_training(batch)
    for counter, expected in ((2 * 7499, (1, 1, 0)), (2 * 12500, (2, 0.5, 2.5)),
                              (2 * 17500 + 1, (3, 1 / 3, 5))):
        trainer.train_counter.assign(counter)
        trainer.train_step(batch)
        np.testing.assert_allclose(
            [v.numpy() for v in trainer.model.renorm_clipping.values()], expected, rtol=1e-6)
