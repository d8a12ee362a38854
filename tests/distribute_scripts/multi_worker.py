"""One worker of a MultiWorkerMirroredStrategy run of the tiny demo (TF_CONFIG from the
environment): `python multi_worker.py LOGDIR TRAINING_STEPS`. Reports the trained weights."""

import sys

import _common

from nlf_tf import training
from test_training import tiny_cfg

_common.fast_graphs()


def main():
    logdir, steps = sys.argv[1], int(sys.argv[2])
    # 4 examples per category and optimizer step: 1 per worker and micro-step.
    cfg = tiny_cfg(logdir, distribution='multi_worker', training_steps=steps, grad_accum_steps=2,
                   checkpoint_period=2, image_summary_period=0,
                   batch_size_parametric=4, batch_size=4, batch_size_densepose=4, batch_size_2d=4)
    trainer = training.run_training(cfg)
    _common.report(counter=int(trainer.train_counter.numpy()),
                   iterations=int(trainer.optimizer.iterations.numpy()),
                   **_common.weights_digest(trainer.model.trainable_variables))


if __name__ == '__main__':
    main()
