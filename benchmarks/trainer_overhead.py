"""(a) Trainer overhead: one full training step (input preparation, mirroring, head,
reconstruction, losses, metrics, optimizer update) vs a bare backbone forward+backward on the
same images, both as compiled tf.functions on one device. Prints the ratio."""

import _common

import tensorflow as tf

from nlf_tf import demo_data, training
from test_training import tiny_cfg


def main(repeats=15):
    sizes = dict(batch_size_parametric=8, batch_size=8, batch_size_densepose=8, batch_size_2d=8)
    cfg = tiny_cfg('unused', training_steps=100000, num_points=256, **sizes)
    joint_names, canonical_init = demo_data.demo_joint_table()
    data = training.build_data(cfg, 0, 1).dataset
    batch = next(iter(data))
    model, trainer = training.build_trainer(cfg, joint_names, canonical_init)
    training._compile(trainer, model, cfg)
    trainer.build_for_training(batch)

    full_step = tf.function(trainer.train_step)
    images = tf.concat([batch[c]['image'] for c in ('param', 'kp3d', 'dense', 'kp2d')], 0)
    backbone = model.backbone

    @tf.function
    def bare_step(image):
        with tf.GradientTape() as tape:
            features = backbone(tf.cast(image, backbone.compute_dtype), training=True)
            loss = tf.reduce_mean(tf.cast(features, tf.float32) ** 2)
        grads = tape.gradient(loss, backbone.trainable_variables)
        return loss, grads

    t_full = _common.timed(lambda: full_step(batch)['loss'].numpy(), repeats)
    t_bare = _common.timed(lambda: bare_step(images)[0].numpy(), repeats)
    print(f'batch {images.shape[0]} x {cfg.proc_side}px, {cfg.num_points} points, '
          f'backbone {cfg.backbone}')
    print(f'full train step      {t_full * 1e3:8.1f} ms')
    print(f'bare backbone fwd+bwd {t_bare * 1e3:8.1f} ms')
    print(f'RATIO full/bare = {t_full / t_bare:.2f}')


if __name__ == '__main__':
    main()
