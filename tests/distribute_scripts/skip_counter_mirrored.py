"""Prepared TFRecords (with bad records) under a MirroredStrategy over 2 logical CPU devices:
`python skip_counter_mirrored.py WORKDIR`.

1. The bad-record counter is created by `training.build_data` under the strategy's scope, as
   `run_training` does; the dataset is consumed through `experimental_distribute_dataset` as
   Keras `fit` consumes it. Reports the counter (every component) and the per-replica crops,
   and the counts of the same steps built outside any strategy.
2. `distribute_datasets_from_function` with one input pipeline per replica: each pipeline gets
   its own `tf.distribute.InputContext`, so the replicas read different files.
"""

import os
import sys

import _common
import prepared_fixture as pf

import numpy as np
import tensorflow as tf

from nlf_tf import distribute, training
from nlf_tf.data import pipeline
from test_training import tiny_cfg

distribute.set_logical_cpu_devices(2)
STEPS = 6


def per_replica(strategy, value):
    return [np.asarray(v) for v in strategy.experimental_local_results(value)]


def main():
    workdir = sys.argv[1]
    folder = os.path.join(workdir, 'coco')
    files = pf.write_prepared_coco(folder, bad_records=[(1, 1), (3, 2)])
    cfg = tiny_cfg(os.path.join(workdir, 'log'), data='prepared', prepared_dirs=folder,
                   batch_size_parametric=0, batch_size=0, batch_size_densepose=0,
                   batch_size_2d=4, proc_side=32, num_points=8, **pf.NO_AUGMENTATION)
    strategy = distribute.create_strategy(tiny_cfg('unused', distribution='mirrored'))

    # 1. The counter under the scope.
    with strategy.scope():
        data = training.build_data(cfg, 0, STEPS)
    counter = data.skip_counter
    crops = []
    for batch in strategy.experimental_distribute_dataset(data.dataset):
        crops.append([pf.file_of_crops(im).tolist()
                      for im in per_replica(strategy, batch['kp2d']['image'])])
    components = getattr(counter, 'values', (counter,))
    counter_values = [np.asarray(c.numpy()).tolist() for c in components]

    plain = training.build_data(cfg, 0, STEPS)  # no strategy
    plain_crops = [pf.file_of_crops(b['kp2d']['image']).tolist() for b in plain.dataset]
    names = plain.joint_names
    with_counts = pipeline.make_training_dataset(
        cfg, [('coco', 'kp2d', files, 1.0)], names, end_step=STEPS, include_skip_counts=True)
    counted = int(sum(int(b['num_skipped'][3]) for b in with_counts))

    # 2. One input pipeline per replica.
    micro = tiny_cfg('unused', **{k: cfg[k] for k in cfg if k != 'logdir'})
    micro.batch_size_2d = 2  # per pipeline: the global 4 over 2 replicas
    contexts = []

    def dataset_fn(context):
        contexts.append((context.num_input_pipelines, context.input_pipeline_id,
                         context.num_replicas_in_sync))
        return pipeline.make_training_dataset(
            micro, [('coco', 'kp2d', files, 1.0)], names, end_step=STEPS, input_context=context)

    options = tf.distribute.InputOptions(
        experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA,
        experimental_place_dataset_on_device=False, experimental_fetch_to_device=True)
    by_pipeline = [set(), set()]
    for batch in strategy.distribute_datasets_from_function(dataset_fn, options):
        for r, im in enumerate(per_replica(strategy, batch['kp2d']['image'])):
            assert im.shape[0] == 2, im.shape
            by_pipeline[r].update(pf.file_of_crops(im).tolist())

    _common.report(
        counter_type=type(counter).__name__, num_components=len(components),
        counter_values=counter_values, plain_counter=np.asarray(plain.skip_counter).tolist(),
        counted=counted, crops=crops, plain_crops=plain_crops, contexts=sorted(contexts),
        files_by_pipeline=[sorted(s) for s in by_pipeline])


if __name__ == '__main__':
    main()
