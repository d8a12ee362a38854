import os
import subprocess
import sys

import pytest
from absl import flags

from nlf_tf import config, flags as nlf_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fresh_flags():
    return nlf_flags.define_flags(flags.FlagValues())


def test_every_table_entry_is_a_flag_with_help_and_default():
    fv = fresh_flags()
    fv(['prog'])
    cfg = config.config_from_flags(fv)
    assert cfg == config.default_config()
    for name, _, default, help_text in config.FLAG_TABLE:
        assert fv[name].help == help_text and help_text
        assert getattr(fv, name) == default


def test_flagfile_round_trip(tmp_path):
    path = tmp_path / 'run.flags'
    path.write_text('--proc_side=384\n--backbone=efficientnetv2-l\n--nonll_loss\n'
                    '--loss_factor_kp=0.5\n--grad_accum_steps=2\n--comment=hello world\n')
    fv = fresh_flags()
    fv(['prog', f'--flagfile={path}', '--seed=7'])
    cfg = config.config_from_flags(fv)
    assert cfg == config.default_config(
        proc_side=384, backbone='efficientnetv2-l', nll_loss=False, loss_factor_kp=0.5,
        grad_accum_steps=2, comment='hello world', seed=7)


@pytest.mark.parametrize('name', ['demo.flags', 'demo_procedural.flags', 'demo_pca.flags',
                                  'nlf_s.flags', 'nlf_l.flags'])
def test_shipped_flag_files_parse(name):
    fv = fresh_flags()
    fv(['prog', f'--flagfile={os.path.join(REPO, "flags", name)}'])
    cfg = config.config_from_flags(fv)
    if name == 'nlf_l.flags':
        assert cfg.proc_side == 384 and cfg.backbone == 'efficientnetv2-l'
    if name == 'nlf_s.flags':
        assert cfg.proc_side == 256 and cfg.backbone == 'efficientnetv2-s'


def test_unknown_setting_is_rejected():
    with pytest.raises(KeyError, match='proc_sidee'):
        config.default_config(proc_sidee=3)


def test_cli_reports_a_missing_required_flag(tmp_path):
    result = subprocess.run(
        [sys.executable, '-m', 'nlf_tf.cli.train', f'--logdir={tmp_path}'],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 2
    assert '--training_steps' in result.stderr


def test_cli_rejects_an_unknown_flag():
    result = subprocess.run(
        [sys.executable, '-m', 'nlf_tf.cli.train', '--no_such_flag=1'],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode != 0
    assert 'no_such_flag' in result.stderr


def test_nlf_s_flagfile_fails_only_for_missing_data(tmp_path):
    result = subprocess.run(
        [sys.executable, '-m', 'nlf_tf.cli.train', f'--flagfile={REPO}/flags/nlf_s.flags',
         '--training_steps=10', f'--logdir={tmp_path}'],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 2
    assert '--prepared_dirs' in result.stderr
