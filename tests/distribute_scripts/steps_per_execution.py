"""One device, grad_accum_steps=2, steps_per_execution=2 through `run_training`: the step is
traced once, the TensorBoard scalars land on every optimizer step, training ends at the
right counter."""

import sys

import _common

from nlf_tf import training
from test_training import read_events, tiny_cfg

_common.fast_graphs()


def main():
    cfg = tiny_cfg(sys.argv[1], training_steps=4, grad_accum_steps=2, steps_per_execution=2,
                   image_summary_period=0, checkpoint_period=4)
    trainer = training.run_training(cfg)
    tags = read_events(cfg.logdir)
    _common.report(counter=int(trainer.train_counter.numpy()),
                   iterations=int(trainer.optimizer.iterations.numpy()),
                   traces=trainer.train_step_traces, loss_steps=sorted(tags['loss']))


if __name__ == '__main__':
    main()
