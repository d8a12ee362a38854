"""`nlf-tf-canonical`: creates the canonical-space assets of the body models (parametric data).

Example:
  nlf-tf-canonical --body_model_dir=/data/body_models

writes `<body_model_dir>/canonical_assets/canonical_<family>.npz` for every family with model
files (smpl, smplh, smplx): the canonical mesh, face sampling probabilities, interior points with
their interpolation weights and the rest-pelvis terms (see nlf_tf/body_models/canonical_assets.py).
Files whose model files are unchanged (sha256) are kept; rerunning is cheap.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # noqa: E402


def define_flags(flag_values):
    """Defines this tool's flags on `flag_values` (once) and returns it."""
    if 'body_model_dir' in flag_values:
        return flag_values
    flags.DEFINE_string('body_model_dir', None,
                        'Folder of the official body-model files (smpl/, smplh/, smplx/).',
                        flag_values=flag_values)
    flags.DEFINE_string('canonical_dir', None,
                        'Output folder (default: <body_model_dir>/canonical_assets).',
                        flag_values=flag_values)
    flags.DEFINE_list('families', None,
                      'Families to handle, e.g. smpl,smplx (default: every family with at least '
                      'one model file).', flag_values=flag_values)
    flags.DEFINE_integer('num_interior', None,
                         'Interior points per family (default 200000 for new files; if given, '
                         'existing files with another count are regenerated).',
                         lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer('seed', None,
                         'Random seed of the interior points (default 0 for new files; if '
                         'given, existing files made with another seed are regenerated).',
                         lower_bound=0, flag_values=flag_values)
    return flag_values


# A FlagValues of its own: its flag names (body_model_dir, seed, ...) are also flags of the
# other entry points, which may be imported into the same process (e.g. by tests).
FLAGS = define_flags(flags.FlagValues())


def canonical_main(flag_values, print_fn=print, error_fn=None):
    """Runs the tool from parsed flags; returns the exit code. Progress lines go to print_fn,
    errors to error_fn (default: standard error)."""
    from nlf_tf.body_models import canonical_assets, kinds
    from nlf_tf.body_models.smpl_file import ModelFileError

    if error_fn is None:
        error_fn = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731

    def error(message):
        error_fn(f'nlf-tf-canonical: error: {message}')
        return 2

    if not flag_values.body_model_dir:
        return error('--body_model_dir is required')
    if not os.path.isdir(flag_values.body_model_dir):
        return error(f'--body_model_dir: folder {flag_values.body_model_dir!r} does not exist')
    families = None
    if flag_values.families:
        families = [f.strip() for f in flag_values.families if f.strip()]
        unknown = [f for f in families if f not in kinds.FAMILIES]
        if unknown:
            return error(f'--families: unknown {", ".join(unknown)}; known: '
                         f'{", ".join(kinds.FAMILIES)}')
    try:
        paths = canonical_assets.ensure_assets(
            flag_values.body_model_dir, canonical_dir=flag_values.canonical_dir,
            families=families, num_interior=flag_values.num_interior, seed=flag_values.seed,
            log=print_fn)
    except (ModelFileError, ValueError, OSError) as e:
        return error(str(e))
    except KeyboardInterrupt:
        error_fn('nlf-tf-canonical: interrupted; rerun the same command (finished families '
                 'are kept).')
        return 130
    print_fn(f'nlf-tf-canonical: {len(paths)} families ready: {", ".join(sorted(paths))}')
    return 0


def main(argv):
    """Parses `argv` (program name first) into FLAGS and runs; returns the exit code."""
    if any(arg in ('-h', '--help', '--helpfull', '-?') for arg in argv[1:]):
        print(__doc__)
        print(FLAGS.get_help())
        return 0
    try:
        rest = FLAGS(list(argv))
    except flags.Error as e:
        print(f'nlf-tf-canonical: error: {e}\nPass --help for usage.', file=sys.stderr)
        return 2
    if len(rest) > 1:
        print(f'nlf-tf-canonical: error: unexpected positional arguments: {rest[1:]}',
              file=sys.stderr)
        return 2
    return canonical_main(FLAGS, print_fn=lambda line: print(line, flush=True))


def run():
    sys.exit(main(sys.argv))


if __name__ == '__main__':
    run()
