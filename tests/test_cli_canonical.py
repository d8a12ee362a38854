"""Tests of the nlf-tf-canonical command line (nlf_tf/cli/canonical.py)."""

import os

import numpy as np
import pytest
from absl import flags

from nlf_tf.body_models import canonical_assets, kinds, synthetic
from nlf_tf.cli import canonical as cli


def run_cli(*args):
    flag_values = cli.define_flags(flags.FlagValues())
    flag_values(['nlf-tf-canonical', *args])
    lines, errors = [], []
    code = cli.canonical_main(flag_values, print_fn=lines.append, error_fn=errors.append)
    return code, lines, errors


@pytest.fixture(scope='module')
def body_model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('body_models')
    synthetic.write_synthetic_body_models(root)
    return str(root)


def test_cli_writes_assets_then_keeps_them(body_model_dir):
    code, lines, errors = run_cli(f'--body_model_dir={body_model_dir}', '--num_interior=400',
                                  '--seed=3')
    assert code == 0, errors
    out = os.path.join(body_model_dir, 'canonical_assets')
    assert sorted(os.listdir(out)) == [f'canonical_{f}.npz' for f in kinds.FAMILIES]
    for family in kinds.FAMILIES:
        assert any(f'canonical_{family}.npz: missing; generating' in line for line in lines)
        assert any(f'canonical_{family}.npz: wrote' in line for line in lines)
        assets = canonical_assets.load_assets(out, family)
        assert assets['interior_points'].shape == (400, 3) and assets['seed'] == 3
        assert assets['kinds'] == tuple(f'{family}_{g}' for g in kinds.FAMILY_GENDERS[family])
        np.testing.assert_allclose(assets['interior_weights'].sum(1, dtype=np.float64), 1,
                                   atol=1e-6)
    assert lines[-1] == 'nlf-tf-canonical: 3 families ready: smpl, smplh, smplx'
    mtimes = {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in os.listdir(out)}

    code, lines, errors = run_cli(f'--body_model_dir={body_model_dir}')
    assert code == 0, errors
    assert [line for line in lines if 'up to date' in line] == [
        f'{os.path.join(out, f"canonical_{f}.npz")}: up to date (kept)' for f in kinds.FAMILIES]
    assert not any('generating' in line for line in lines)
    assert {name: os.stat(os.path.join(out, name)).st_mtime_ns
            for name in os.listdir(out)} == mtimes


def test_cli_families_and_canonical_dir(body_model_dir, tmp_path):
    code, lines, errors = run_cli(f'--body_model_dir={body_model_dir}', '--families=smplh',
                                  f'--canonical_dir={tmp_path}', '--num_interior=300')
    assert code == 0, errors
    assert os.listdir(tmp_path) == ['canonical_smplh.npz']
    assert canonical_assets.load_assets(tmp_path, 'smplh')['num_joints'] == 52


def test_cli_errors_exit_2(body_model_dir, tmp_path):
    code, _, errors = run_cli()
    assert code == 2 and '--body_model_dir is required' in errors[0]
    code, _, errors = run_cli(f'--body_model_dir={tmp_path / "missing"}')
    assert code == 2 and 'does not exist' in errors[0]
    code, _, errors = run_cli(f'--body_model_dir={body_model_dir}', '--families=smpl,mano')
    assert code == 2 and '--families: unknown mano' in errors[0]
    code, _, errors = run_cli(f'--body_model_dir={tmp_path}')
    assert code == 2 and 'no body-model files' in errors[0]
    code, _, errors = run_cli(f'--body_model_dir={tmp_path}', '--families=smplx')
    assert code == 2 and 'SMPLX_NEUTRAL.npz' in errors[0] and '<file>' in errors[0]
    with pytest.raises(flags.IllegalFlagValueError):
        run_cli(f'--body_model_dir={body_model_dir}', '--num_interior=0')


def test_main_parses_its_own_flags_next_to_the_other_entry_points(body_model_dir, tmp_path,
                                                                 capsys):
    # nlf-tf-prepare defines --body_model_dir too; the tool keeps its flags apart, so both can
    # live in one process.
    from nlf_tf.cli import prepare  # noqa: F401
    out = str(tmp_path / 'assets')
    assert cli.main(['nlf-tf-canonical', f'--body_model_dir={body_model_dir}',
                     f'--canonical_dir={out}', '--families=smplh', '--num_interior=300']) == 0
    assert os.listdir(out) == ['canonical_smplh.npz']
    assert cli.main(['nlf-tf-canonical', '--num_interior=-1']) == 2
    assert 'num_interior' in capsys.readouterr().err
    assert cli.main(['nlf-tf-canonical', '--help']) == 0
