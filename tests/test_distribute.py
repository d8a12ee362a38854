"""Distribution strategies, mixed precision and compiled-step behaviour of training.

The strategy tests run in subprocesses (tests/distribute_scripts/): logical CPU devices and
multi-worker collectives must be configured before TensorFlow initialises, which the pytest
process has already done.
"""

import json
import os
import socket
import subprocess
import sys

import easydict
import numpy as np
import pytest
import tensorflow as tf

from nlf_tf import distribute, training
from test_training import tiny_cfg

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'distribute_scripts')


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    env.pop('TF_CONFIG', None)
    env.update(extra)
    return env


def _result(output):
    lines = [line for line in output.splitlines() if line.startswith('RESULT ')]
    assert lines, output[-3000:]
    return json.loads(lines[-1][len('RESULT '):])


def _run_script(name, *args, timeout=120):
    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, name), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return _result(proc.stdout)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(('127.0.0.1', 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_mirrored_two_devices_equal_one_device_with_accumulation():
    # 2 replicas × 2 accumulation steps vs 1 device × 4 accumulation steps on the same
    # examples: the mean of per-shard losses and the update are the same.
    r = _run_script('mirrored_equivalence.py')
    assert r['iterations_dist'] == 1 and r['iterations_ref'] == 1 and r['counter_dist'] == 2
    np.testing.assert_allclose(r['loss_dist'], r['loss_ref'], rtol=1e-5)
    assert r['max_update'] > 1e-4  # the step did move the weights...
    assert r['max_weight_diff'] < 1e-5 * max(1.0, r['max_update'] * 100)  # ...identically
    assert r['replicas_agree']
    # Traced once (once per replica under the strategy), not per step.
    assert r['traces_ref'] == 1 and r['traces_dist'] == 2


def test_two_workers_on_localhost_agree(tmp_path):
    ports = _free_ports(2)
    cluster = {'worker': [f'127.0.0.1:{p}' for p in ports]}
    logdir = tmp_path / 'mw'
    procs = []
    for index in range(2):
        tf_config = json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': index}})
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(SCRIPTS, 'multi_worker.py'), str(logdir), '3'],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_env(TF_CONFIG=tf_config)))
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=150)
            assert p.returncode == 0, out[-2000:] + err[-4000:]
            outputs.append(_result(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    chief, other = outputs
    assert chief['counter'] == other['counter'] == 6 and chief['iterations'] == 3
    assert chief['abs_sum'] == other['abs_sum'] and chief['weighted'] == other['weighted']
    # Only the chief wrote into the run's folder.
    events = [f for f in os.listdir(logdir) if f.startswith('events.out.tfevents')]
    assert len(events) == 1
    assert os.path.exists(logdir / 'ckpt-6.index') and os.path.isdir(logdir / 'model')


def test_steps_per_execution_traces_once_and_logs_every_step(tmp_path):
    r = _run_script('steps_per_execution.py', tmp_path / 'spe')
    assert r['counter'] == 8 and r['iterations'] == 4
    assert r['traces'] == 1
    assert r['loss_steps'] == [1, 2, 3, 4]


def test_distribution_config_errors(tmp_path, monkeypatch):
    with pytest.raises(training.ConfigError, match='--distribution'):
        training.run_training(tiny_cfg(tmp_path / 'a', distribution='ring'))
    monkeypatch.delenv('TF_CONFIG', raising=False)
    with pytest.raises(training.ConfigError, match='TF_CONFIG'):
        training.run_training(tiny_cfg(tmp_path / 'b', distribution='multi_worker'))
    with pytest.raises(training.ConfigError, match='steps_per_execution'):
        training.validate_config(tiny_cfg(tmp_path, steps_per_execution=4, log_period=1))
    with pytest.raises(ValueError, match='--batch_size_densepose=6 .*2 × 2 = 4'):
        distribute.check_batch_sizes(
            tiny_cfg(tmp_path, grad_accum_steps=2, batch_size_parametric=4, batch_size=8,
                     batch_size_densepose=6, batch_size_2d=4), 2)
    distribute.check_batch_sizes(tiny_cfg(tmp_path, batch_size_densepose=0), 2)  # 0 is fine
    assert distribute.distribution_name(easydict.EasyDict(multi_gpu=True)) == 'mirrored'
    strategy = distribute.create_strategy(tiny_cfg(tmp_path))
    assert strategy.num_replicas_in_sync == 1 and distribute.is_chief(strategy)


def _tiny_trainer(cfg, seed_batch):
    from nlf_tf import demo_data
    joint_names, canonical_init = demo_data.demo_joint_table()
    training.set_dtype_policy(cfg.dtype)
    model, trainer = training.build_trainer(cfg, joint_names, canonical_init)
    training._compile(trainer, model, cfg)
    trainer.build_for_training(seed_batch)
    return model, trainer


def test_float16_step_is_finite_and_close_to_float32(tmp_path):
    cfg32 = tiny_cfg(tmp_path, dtype='float32')
    data = training.build_data(cfg32, 0, 1).dataset
    batch = next(iter(data))
    model32, trainer32 = _tiny_trainer(cfg32, batch)
    model16, trainer16 = _tiny_trainer(tiny_cfg(tmp_path, dtype='float16'), batch)
    model16.set_weights(model32.get_weights())
    assert model16.backbone.compute_dtype == 'float16'

    # Geometry, reconstruction and losses stay float32 under the mixed policy.
    inps = trainer16.prepare_inputs(batch)
    preds = trainer16.forward_train(inps, training=True)
    for name in ('head2d', 'head3d', 'uncert', 'coords3d_abs'):
        assert preds[name].dtype == tf.float32, name
    for name, value in trainer16.compute_losses(inps, preds).items():
        assert value.dtype == tf.float32, name

    # One eager step each on the same weights and batch.
    logs32 = {k: float(np.asarray(v)) for k, v in trainer32.train_step(batch).items()}
    logs16 = {k: float(np.asarray(v)) for k, v in trainer16.train_step(batch).items()}
    for v in model16.trainable_variables:
        assert np.all(np.isfinite(v.numpy())), v.path
    # Tolerance: float16 rounds to 2^-11 ≈ 5e-4 relative. Only the backbone/head features are
    # float16; everything after them is float32, and at initialisation the losses depend on
    # the features weakly (measured: <= 6e-6 relative). rtol = 1e-3, two float16 roundings,
    # keeps a wide margin over that, while float16 geometry (pixel coordinates ~60 rounded to
    # 0.03 px, depths, the 3x3 solves) or a loss left multiplied by the loss scale (128) would
    # move the values by far more.
    for name in ('loss', 'loss_parambatch', 'loss_densebatch', 'loss_2dbatch', 'mean_error'):
        assert np.isfinite(logs16[name]), name
        np.testing.assert_allclose(logs16[name], logs32[name], rtol=1e-3, atol=1e-5,
                                   err_msg=name)
