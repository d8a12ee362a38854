"""One worker of a MultiWorkerMirroredStrategy run of the tiny demo (TF_CONFIG from the
environment):

    python multi_worker.py LOGDIR TRAINING_STEPS [--weights_out=FILE.npz]
                           [--pause_after=MICRO_STEP --marker=FILE] [--prepared=DIR]

Reports the trained weights (digest; all of them into FILE.npz with --weights_out).

--pause_after (the worker-failure test): after that micro-step (after its checkpoint) this
worker creates the file --marker and waits there to be killed; it exits with status 3 if
nobody kills it within PAUSE_LIMIT seconds. The other workers go on into the next step's
collectives and wait there for it.

--prepared: train on that prepared COCO folder (prepared_fixture) instead of the demo data and
also report the bad records this worker's input pipeline skipped."""

import argparse
import os
import time

import _common

import keras
import numpy as np

from nlf_tf import training
from test_training import tiny_cfg

_common.fast_graphs()
PAUSE_LIMIT = 300


class PauseAfter(keras.callbacks.Callback):
    """Extra callbacks run after the run's own ones: the checkpoint of the pause step has been
    written by this worker when the marker appears."""

    def __init__(self, step, marker):
        super().__init__()
        self.step, self.marker = step, marker

    def on_train_batch_end(self, batch, logs=None):
        counter = int(self.model.train_counter.numpy())
        if counter >= self.step:
            with open(self.marker + '.tmp', 'w') as f:
                f.write(str(counter))
            os.replace(self.marker + '.tmp', self.marker)
            print(f'PAUSED after micro-step {counter}', flush=True)
            time.sleep(PAUSE_LIMIT)
            os._exit(3)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('logdir')
    parser.add_argument('steps', type=int)
    parser.add_argument('--weights_out')
    parser.add_argument('--pause_after', type=int)
    parser.add_argument('--marker')
    parser.add_argument('--prepared')
    args = parser.parse_args()
    # 4 examples per category and optimizer step: 1 per worker and micro-step.
    sizes = dict(batch_size_parametric=4, batch_size=4, batch_size_densepose=4, batch_size_2d=4)
    if args.prepared:
        import prepared_fixture
        sizes = dict(batch_size_parametric=0, batch_size=0, batch_size_densepose=0,
                     batch_size_2d=4, data='prepared', prepared_dirs=args.prepared,
                     proc_side=32, num_points=8, **prepared_fixture.NO_AUGMENTATION)
    cfg = tiny_cfg(args.logdir, distribution='multi_worker', training_steps=args.steps,
                   grad_accum_steps=2, checkpoint_period=2, image_summary_period=0, **sizes)
    extra = [PauseAfter(args.pause_after, args.marker)] if args.pause_after is not None else []
    trainer = training.run_training(cfg, extra_callbacks=extra)
    more = {}
    if args.prepared:
        more['skipped'] = [int(x) for x in trainer.skipped_records.numpy()]
    weights = trainer.model.trainable_variables
    if args.weights_out:
        np.savez(args.weights_out, *[np.asarray(v.numpy()) for v in weights])
    _common.report(counter=int(trainer.train_counter.numpy()),
                   iterations=int(trainer.optimizer.iterations.numpy()),
                   **_common.weights_digest(weights), **more)


if __name__ == '__main__':
    main()
