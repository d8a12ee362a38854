"""MirroredStrategy over 2 logical CPUs with 2 accumulation steps vs one device with 4
accumulation steps on the same examples: same losses and same updated weights."""

import _common

import numpy as np
import tensorflow as tf

from nlf_tf import callbacks, distribute, schedule, training
from test_training import tiny_cfg

distribute.set_logical_cpu_devices(2)
_common.fast_graphs()

import keras  # noqa: E402


def build(cfg, strategy, example):
    with strategy.scope():
        table = training.build_data(cfg, 0, 1)
        model, trainer = training.build_trainer(cfg, table.joint_names, table.canonical_init)
        training._compile(trainer, model, cfg)
        trainer.build_for_training(example)
    return model, trainer


def rows(batch, start, stop):
    return tf.nest.map_structure(lambda t: t[start:stop], batch)


def main():
    sizes = dict(batch_size_parametric=4, batch_size=4, batch_size_densepose=4, batch_size_2d=4)
    cfg_dist = tiny_cfg('unused', grad_accum_steps=2, training_steps=100000, **sizes)
    cfg_ref = tiny_cfg('unused', grad_accum_steps=4, training_steps=100000, **sizes)
    keras.utils.set_random_seed(cfg_dist.seed)
    data = training.build_data(cfg_dist, 0, 2).dataset
    global_micro = list(data)  # 2 global micro-batches of 2 examples per category
    strategy = distribute.create_strategy(tiny_cfg('unused', distribution='mirrored'))
    assert strategy.num_replicas_in_sync == 2
    model_d, trainer_d = build(cfg_dist, strategy, global_micro[0])
    model_r, trainer_r = build(cfg_ref, tf.distribute.get_strategy(), rows(global_micro[0], 0, 1))
    model_r.set_weights(model_d.get_weights())
    # Start at the peak learning rate (the warm-up starts from 0).
    for trainer in (trainer_d, trainer_r):
        trainer.optimizer.iterations.assign(schedule.NLFLearningRateSchedule.WARMUP_STEPS)
    initial = [v.numpy() for v in model_r.trainable_variables]

    # Replica r of micro-step m gets row r of every category: one device sees them in the
    # order (m, r), which is the order of its random-number indices m·2 + r.
    shards = [rows(g, r, r + 1) for g in global_micro for r in range(2)]
    def as_dataset(batches):
        ds = tf.data.Dataset.from_tensors(batches[0])
        for b in batches[1:]:
            ds = ds.concatenate(tf.data.Dataset.from_tensors(b))
        return ds

    rec_d, rec_r = callbacks.StepRecorder(), callbacks.StepRecorder()
    trainer_d.fit(as_dataset(global_micro), epochs=1, steps_per_epoch=2, verbose=0,
                  shuffle=False, callbacks=[rec_d])
    trainer_r.fit(as_dataset(shards), epochs=1, steps_per_epoch=4, verbose=0, shuffle=False,
                  callbacks=[rec_r])
    # Logged losses: per micro-step, the mean over replicas (Keras) vs one shard each.
    loss_d = np.mean([logs['loss'] for logs in rec_d.logs])
    loss_r = np.mean([logs['loss'] for logs in rec_r.logs])
    after_d = [np.asarray(v.numpy()) for v in model_d.trainable_variables]
    after_r = [np.asarray(v.numpy()) for v in model_r.trainable_variables]
    replica_values = [
        [np.asarray(x) for x in strategy.experimental_local_results(v.value)]
        for v in model_d.trainable_variables]
    _common.report(
        loss_dist=float(loss_d), loss_ref=float(loss_r),
        max_weight_diff=float(max(np.abs(a - b).max() for a, b in zip(after_d, after_r))),
        max_update=float(max(np.abs(a - b).max() for a, b in zip(after_r, initial))),
        replicas_agree=bool(all(np.array_equal(vals[0], vals[1]) for vals in replica_values)),
        counter_dist=int(trainer_d.train_counter.numpy()),
        iterations_dist=int(trainer_d.optimizer.iterations.numpy())
        - schedule.NLFLearningRateSchedule.WARMUP_STEPS,
        iterations_ref=int(trainer_r.optimizer.iterations.numpy())
        - schedule.NLFLearningRateSchedule.WARMUP_STEPS,
        traces_dist=trainer_d.train_step_traces, traces_ref=trainer_r.train_step_traces)


if __name__ == '__main__':
    main()
