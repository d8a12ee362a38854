"""`nlf-tf-inspect`: counts and augmented training crops of nlf-tf-prepare output folders.

Example:
  nlf-tf-inspect --prepared_dirs=/data/prepared/coco_train,/data/prepared/mads_train \
      --num_crops=16 --out_png=inspect_crops --logdir=runs/inspect

Prints the kept examples per dataset/split/category and the skipped examples per reason (from
the manifests), then draws `--num_crops` crops through the training pipeline with the same
settings as `nlf-tf-train` (every training flag is accepted, e.g. --flagfile of the run,
--nogeom_aug, --rot_aug=0, --seed) with their GT points (joints green, other points red), and
writes the grid to a TensorBoard image summary under --logdir and/or PNG files under --out_png.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402

from nlf_tf import config, flags as nlf_flags  # noqa: E402


def define_flags(flag_values):
    """The training flags (nlf_tf.config.FLAG_TABLE) plus the inspection flags. The training
    flags come first so that a name clash with them fails loudly here."""
    nlf_flags.define_flags(flag_values)
    if 'num_crops' in flag_values:
        return flag_values
    flags.DEFINE_integer('num_crops', 16, 'Number of augmented crops to draw (0: counts only).',
                         lower_bound=0, flag_values=flag_values)
    flags.DEFINE_string('out_png', None,
                        'Folder for grid.png and one PNG per crop, or a file name ending in '
                        '.png for the grid alone.', flag_values=flag_values)
    flags.DEFINE_integer('grid_columns', None, 'Columns of the grid (default ~sqrt(num_crops)).',
                         lower_bound=1, flag_values=flag_values)
    flags.DEFINE_list('inspect_categories', None,
                      'Only draw crops of these categories (default: all with data).',
                      flag_values=flag_values)
    flags.DEFINE_integer('inspect_start_step', 0, 'Training step whose crops come first.',
                         lower_bound=0, flag_values=flag_values)
    flags.DEFINE_integer('max_skipped_examples', 5,
                         'Skipped examples listed per folder.', lower_bound=0,
                         flag_values=flag_values)
    return flag_values


FLAGS = define_flags(flags.FLAGS)


def inspect_main(flag_values, print_fn=print, error_fn=None):
    """Runs the inspection from parsed flags; returns the exit code. Report lines go to
    print_fn, errors and notes to error_fn (default: standard error)."""
    from nlf_tf.data import inspect as lib

    if error_fn is None:
        error_fn = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731

    dirs = [d.strip() for d in (flag_values.prepared_dirs or '').split(',') if d.strip()]
    if not dirs:
        error_fn('nlf-tf-inspect: error: --prepared_dirs is required (comma-separated output '
                 'folders of nlf-tf-prepare)')
        return 2
    try:
        manifests = [lib.load_manifest(d) for d in dirs]
    except lib.InspectError as e:
        error_fn(f'nlf-tf-inspect: error: --prepared_dirs: {e}')
        return 2
    for line in lib.summary_lines(manifests, flag_values.max_skipped_examples):
        print_fn(line)

    if flag_values.num_crops == 0:
        return 0
    if not flag_values.out_png and not flag_values.logdir:
        error_fn('nlf-tf-inspect: note: neither --out_png nor --logdir given; no crops drawn')
        return 0
    cfg = config.config_from_flags(flag_values)
    try:
        crops, skipped = lib.training_crops(
            cfg, dirs, flag_values.num_crops, categories=flag_values.inspect_categories,
            start_step=flag_values.inspect_start_step)
    except lib.InspectError as e:
        error_fn(f'nlf-tf-inspect: error: {e}')
        return 2
    drawn = [lib.draw_crop(c) for c in crops]
    grid = lib.make_grid(drawn, flag_values.grid_columns)
    counts = {}
    for c in crops:
        counts[c.category] = counts.get(c.category, 0) + 1
    print_fn('')
    print_fn(f'Drew {len(crops)} augmented crops (' + ', '.join(
        f'{k} {v}' for k, v in counts.items()) + '); joints green, other points red.')
    if skipped.any():
        print_fn('Bad records dropped by the pipeline meanwhile (param, kp3d, dense, kp2d): '
                 + ', '.join(str(int(x)) for x in skipped))
    if flag_values.out_png:
        paths = lib.write_pngs(drawn, grid, flag_values.out_png, [c.category for c in crops])
        print_fn(f'Wrote {paths[0]}' + (f' and {len(paths) - 1} crop PNGs' if len(paths) > 1
                                         else ''))
    if flag_values.logdir:
        lib.write_summary(grid, flag_values.logdir, step=flag_values.inspect_start_step)
        print_fn(f'Wrote the image summary {lib.SUMMARY_TAG!r} to {flag_values.logdir}')
    return 0


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected positional arguments: {argv[1:]}')
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    return inspect_main(FLAGS, print_fn=lambda line: print(line, flush=True))


def run():
    app.run(main)


if __name__ == '__main__':
    run()
