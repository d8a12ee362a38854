"""`nlf-tf-train`: trains an NLF model from absl flags (try `--flagfile=flags/demo.flags`)."""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402

from nlf_tf import config, flags as nlf_flags  # noqa: E402

FLAGS = flags.FLAGS
nlf_flags.define_flags(FLAGS)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected positional arguments: {argv[1:]}')
    from nlf_tf import training  # Imported late: flags must parse (and --help work) fast.
    cfg = config.config_from_flags(FLAGS)
    # TensorFlow logs its internal chatter (checkpoint sharding, SavedModel assets) through
    # absl at INFO; the run's own messages are printed by the training loop.
    logging.set_verbosity(logging.WARNING)
    try:
        training.run_training(cfg)
    except training.ConfigError as e:
        print(f'nlf-tf-train: error: {e}', file=sys.stderr)
        return 2
    return 0


def run():
    app.run(main)


if __name__ == '__main__':
    run()
