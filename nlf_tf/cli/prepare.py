"""`nlf-tf-prepare`: converts a downloaded dataset into sharded TFRecord files for training.

Example:
  nlf-tf-prepare --dataset=coco --root=/data/coco --split=train --out=/data/prepared/coco_train

Rerunning the same command after an interruption resumes the job.
"""

import functools
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402

DATASETS = ('coco', 'coco_wholebody', 'densepose_coco', 'mads', 'agora', 'behave')
PARAMETRIC = ('agora', 'behave')

FLAGS = flags.FLAGS
flags.DEFINE_enum('dataset', None, DATASETS, 'Dataset to prepare.')
flags.DEFINE_string('root', None, 'Folder of the downloaded dataset.')
flags.DEFINE_string('split', 'train', 'Split to prepare (e.g. train, val).')
flags.DEFINE_string('out', None, 'Output folder (one dataset split per folder).')
flags.DEFINE_integer('num_shards', 16, 'Number of TFRecord files to write.', lower_bound=1)
flags.DEFINE_boolean('prepare_crop', True,
                     'Store efficient person crops (undistorted, scaled so that the box is about '
                     '384 px). --noprepare_crop stores the original images (only possible for '
                     'cameras without lens distortion).')
flags.DEFINE_string('smpl_model', None,
                    'Path to the SMPL model file (needed for densepose_coco: canonical positions '
                    'of the DensePose points).')
if 'body_model_dir' not in FLAGS:  # the training flags (same meaning) may be defined already
    flags.DEFINE_string('body_model_dir', None,
                        'Folder of the body-model files (smpl/, smplh/, smplx/; see the '
                        'README); needed for agora and behave.')
flags.DEFINE_string('detections', None,
                    'Optional person detections of agora / behave (see the README); a detection '
                    'matching a ground-truth box replaces it, as PosePile did.')
flags.DEFINE_integer('limit', None, 'Stop after this many kept examples (for trying out).',
                     lower_bound=1)
flags.DEFINE_integer('progress_every', 1000, 'Print progress every this many examples.',
                     lower_bound=0)
flags.DEFINE_integer('num_workers', 1, 'Threads cropping and encoding in parallel.',
                     lower_bound=1)


def _error(message):
    print(f'nlf-tf-prepare: error: {message}', file=sys.stderr)
    return 2


def get_reader(name):
    """The reader of dataset `name`: a callable iter_examples(root_dir, split, **options)."""
    from nlf_tf.data import readers
    return readers.READERS[name]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected positional arguments: {argv[1:]}')
    for name in ('dataset', 'root', 'out'):
        if FLAGS[name].value is None:
            raise app.UsageError(f'--{name} is required')
    if not os.path.isdir(FLAGS.root):
        return _error(f'--root: folder {FLAGS.root!r} does not exist')
    options = {}
    if FLAGS.dataset == 'densepose_coco':
        if FLAGS.smpl_model is None:
            return _error('--smpl_model: densepose_coco needs the path of the SMPL model file')
        if not os.path.isfile(FLAGS.smpl_model):
            return _error(f'--smpl_model: file {FLAGS.smpl_model!r} does not exist')
        options['smpl_model'] = FLAGS.smpl_model
    elif FLAGS.smpl_model is not None:
        print(f'nlf-tf-prepare: note: --smpl_model is not used by {FLAGS.dataset}',
              file=sys.stderr)

    if FLAGS.dataset in PARAMETRIC:
        if FLAGS.body_model_dir is None:
            return _error(f'--body_model_dir: {FLAGS.dataset} needs the folder of the body-model '
                          f'files (see the README, "Body-model files")')
        if not os.path.isdir(FLAGS.body_model_dir):
            return _error(f'--body_model_dir: folder {FLAGS.body_model_dir!r} does not exist')
        options['body_model_dir'] = FLAGS.body_model_dir
        if FLAGS.detections is not None:
            if not os.path.isfile(FLAGS.detections):
                return _error(f'--detections: file {FLAGS.detections!r} does not exist')
            options['detections'] = FLAGS.detections
    else:
        for name in ('body_model_dir', 'detections'):
            if FLAGS[name].value is not None:
                print(f'nlf-tf-prepare: note: --{name} is not used by {FLAGS.dataset}',
                      file=sys.stderr)

    from nlf_tf.data import prepare  # late: --help stays fast
    from nlf_tf.data.example import DatasetError

    reader = get_reader(FLAGS.dataset)
    examples = functools.partial(reader, FLAGS.root, FLAGS.split, **options)
    try:
        prepare.prepare_dataset(
            examples, FLAGS.out, FLAGS.dataset, FLAGS.split, num_shards=FLAGS.num_shards,
            crop=FLAGS.prepare_crop, progress_every=FLAGS.progress_every,
            log=functools.partial(print, flush=True), limit=FLAGS.limit,
            num_workers=FLAGS.num_workers)
    except (DatasetError, prepare.PrepareError, ValueError) as e:  # bad input or folder
        return _error(str(e))
    except KeyboardInterrupt:
        print('nlf-tf-prepare: interrupted; rerun the same command to resume.', file=sys.stderr)
        return 130
    return 0


def run():
    app.run(main)


if __name__ == '__main__':
    run()
