"""Distribution strategies, mixed precision and compiled-step behaviour of training.

The strategy tests run in subprocesses (tests/distribute_scripts/): logical CPU devices and
multi-worker collectives must be configured before TensorFlow initialises, which the pytest
process has already done.
"""

import json
import os
import signal
import subprocess
import sys
import time

import easydict
import numpy as np
import pytest
import tensorflow as tf

from nlf_tf import distribute, training
from test_training import tiny_cfg

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'distribute_scripts')
# Hard bounds (seconds) of the multi-worker runs: about 4x what they take on an idle 2-core
# machine. The surviving worker gets SURVIVOR_GRACE s to exit by itself after the other one
# is killed (it stops after ~10 s of missed heartbeats).
RUN_TIMEOUT = 240
SURVIVOR_GRACE = 30


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    env.pop('TF_CONFIG', None)
    env.update(extra)
    return env


def _result(output):
    lines = [line for line in output.splitlines() if line.startswith('RESULT ')]
    assert lines, output[-3000:]
    return json.loads(lines[-1][len('RESULT '):])


def _run_script(name, *args, timeout=240):
    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, name), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return _result(proc.stdout)


def _free_ports(count):
    from distribute_scripts import _common
    try:
        return _common.free_ports(count)
    except OSError as e:
        pytest.skip(f'no free TCP ports on 127.0.0.1 for a local cluster: {e}')


class _Worker:
    """One worker process of a local cluster. Its output goes to files, not pipes: a pipe that
    nobody reads while the test polls or waits on another worker could fill up and block it."""

    def __init__(self, args, env, out_prefix):
        self.out_path, self.err_path = f'{out_prefix}.out', f'{out_prefix}.err'
        with open(self.out_path, 'w') as out, open(self.err_path, 'w') as err:
            self.proc = subprocess.Popen(args, stdout=out, stderr=err, text=True, env=env)

    def stdout(self):
        with open(self.out_path) as f:
            return f.read()

    def tail(self):
        with open(self.err_path) as f:
            err = f.read()
        return f'--- {self.out_path}:\n{self.stdout()[-2000:]}\n--- stderr:\n{err[-4000:]}'

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL
            self.proc.wait(timeout=30)


def _local_cluster(count=2):
    return {'worker': [f'127.0.0.1:{p}' for p in _free_ports(count)]}


def _start_workers(workdir, cluster, args_of, script='multi_worker.py'):
    """Starts one process per worker of `cluster` (a MultiWorkerMirroredStrategy cluster on
    127.0.0.1); args_of(index) gives the script arguments of worker `index`. The temporary
    folders of non-chief workers go into `workdir` (a killed worker cannot delete its own)."""
    workers = []
    for index in range(len(cluster['worker'])):
        tf_config = json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': index}})
        workers.append(_Worker(
            [sys.executable, os.path.join(SCRIPTS, script), *map(str, args_of(index))],
            _env(TF_CONFIG=tf_config, TMPDIR=str(workdir)),
            os.path.join(workdir, f'worker{index}_{int(time.time() * 1000)}')))
    return workers


def _finish(workers, timeout):
    """Waits (at most `timeout` s in all) for every worker to exit with status 0; returns their
    RESULT dicts. Kills whatever is left on any failure."""
    deadline = time.monotonic() + timeout
    try:
        for w in workers:
            try:
                w.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f'worker still running after {timeout} s\n' + w.tail())
            assert w.proc.returncode == 0, w.tail()
        return [_result(w.stdout()) for w in workers]
    finally:
        for w in workers:
            w.kill()


# The multi-worker runs: 3 optimizer steps of 2 micro-steps, a checkpoint every 2 micro-steps.
MW_STEPS = 3


@pytest.fixture(scope='module')
def two_worker_run(tmp_path_factory):
    """An uninterrupted 2-worker run (shared by the tests that compare with it)."""
    workdir = tmp_path_factory.mktemp('two_workers')
    logdir = workdir / 'run'
    workers = _start_workers(
        workdir, _local_cluster(),
        lambda i: [logdir, MW_STEPS, f'--weights_out={workdir / f"weights{i}.npz"}'])
    results = _finish(workers, timeout=RUN_TIMEOUT)
    return easydict.EasyDict(logdir=logdir, results=results, weights=[
        _load_weights(workdir / f'weights{i}.npz') for i in range(2)])


def _load_weights(path):
    with np.load(path) as f:
        return [f[f'arr_{i}'] for i in range(len(f.files))]


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


def test_two_workers_on_localhost_agree(two_worker_run):
    chief, other = two_worker_run.results
    assert chief['counter'] == other['counter'] == 2 * MW_STEPS
    assert chief['iterations'] == MW_STEPS
    assert chief['abs_sum'] == other['abs_sum'] and chief['weighted'] == other['weighted']
    for a, b in zip(*two_worker_run.weights):
        np.testing.assert_array_equal(a, b)
    # Only the chief wrote into the run's folder.
    logdir = two_worker_run.logdir
    events = [f for f in os.listdir(logdir) if f.startswith('events.out.tfevents')]
    assert len(events) == 1
    assert os.path.exists(logdir / f'ckpt-{2 * MW_STEPS}.index')
    assert os.path.isdir(logdir / 'model')


def _wait_for(condition, timeout, workers, what):
    """Polls `condition()` every 0.2 s; fails (with the workers' output) if a worker exits
    first or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        for w in workers:
            if w.proc.poll() is not None:
                pytest.fail(f'a worker exited (status {w.proc.returncode}) before {what}\n'
                            + w.tail())
        if time.monotonic() > deadline:
            pytest.fail(f'no {what} after {timeout} s\n' + '\n'.join(w.tail() for w in workers))
        time.sleep(0.2)


def test_killed_worker_restarts_and_the_run_resumes(tmp_path, two_worker_run):
    # TF's recipe for a worker failure under MultiWorkerMirroredStrategy: the surviving
    # workers cannot go on without it (their collectives fail or wait), so the whole cluster is
    # restarted with the same flags and every worker restores the chief's latest checkpoint.
    logdir = tmp_path / 'run'
    marker = tmp_path / 'paused'
    # Worker 1 stops after micro-step 2 (checkpoint ckpt-2 written); the chief goes on into
    # micro-step 3 and waits in its collectives for worker 1, which is then killed.
    cluster = _local_cluster()
    workers = _start_workers(tmp_path, cluster, lambda i: [logdir, MW_STEPS] + (
        ['--pause_after=2', f'--marker={marker}'] if i == 1 else []))
    try:
        _wait_for(lambda: marker.exists() and tf.train.latest_checkpoint(str(logdir)),
                  timeout=RUN_TIMEOUT, workers=workers, what='checkpoint and paused worker')
        victim, survivor = workers[1], workers[0]
        victim.kill()
        # The survivor errors out or hangs in a collective: give it a bounded time, then kill
        # it as a cluster manager would.
        try:
            survivor.proc.wait(timeout=SURVIVOR_GRACE)
            survivor_fate = f'exited with status {survivor.proc.returncode}'
        except subprocess.TimeoutExpired:
            survivor_fate = 'killed'
        print(f'The surviving worker {survivor_fate}.')
    finally:
        for w in workers:
            w.kill()
    assert victim.proc.returncode == -signal.SIGKILL
    latest = tf.train.latest_checkpoint(str(logdir))
    resumed_at = int(latest.rsplit('-', 1)[1])
    assert 0 < resumed_at < 2 * MW_STEPS and resumed_at % 2 == 0, latest
    assert 'RESULT' not in survivor.stdout() and 'RESULT' not in victim.stdout()

    # Restart the whole cluster: same TF_CONFIG, same flags.
    workers = _start_workers(tmp_path, cluster, lambda i: [
        logdir, MW_STEPS, f'--weights_out={tmp_path / f"weights{i}.npz"}'])
    results = _finish(workers, timeout=RUN_TIMEOUT)
    for w in workers:
        out = w.stdout()
        # Both workers restored the chief's checkpoint and trained only what was left.
        assert f'Resuming from {latest}' in out, w.tail()
        assert f'Training micro-steps {resumed_at}..{2 * MW_STEPS} ' in out, w.tail()
    chief, other = results
    assert chief['counter'] == other['counter'] == 2 * MW_STEPS
    assert chief['iterations'] == other['iterations'] == MW_STEPS
    resumed = [_load_weights(tmp_path / f'weights{i}.npz') for i in range(2)]
    reference = two_worker_run.weights[0]
    assert len(resumed[0]) == len(reference)
    for a, b, ref in zip(*resumed, reference):
        assert np.all(np.isfinite(a))
        np.testing.assert_array_equal(a, b)  # the workers agree
        # ...and equal the uninterrupted run's weights (same data, stateless per-step
        # randomness, restored optimizer state).
        np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-6)
    assert os.path.exists(logdir / f'ckpt-{2 * MW_STEPS}.index')


def test_input_pipelines_read_disjoint_files_of_prepared_tfrecords(tmp_path):
    # Multi-worker sharding of prepared data: input pipeline i of n (the InputContext a
    # strategy gives each worker) reads every n-th shard file. The crops' grey level tells
    # the file (prepared_fixture); bad records are only in file 3.
    from distribute_scripts import prepared_fixture as pf
    from nlf_tf import joint_table
    from nlf_tf.data import pipeline
    files = pf.write_prepared_coco(tmp_path / 'coco', bad_records=[(3, 2)])
    names, _ = joint_table.build_joint_table(['coco'])
    cfg = tiny_cfg(tmp_path, data='prepared', batch_size_parametric=0, batch_size=0,
                   batch_size_densepose=0, batch_size_2d=2, proc_side=32, num_points=8,
                   **pf.NO_AUGMENTATION)
    seen, skipped, first_images = [], [], []
    for index in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=index,
                                             num_replicas_in_sync=2)
        dataset = pipeline.make_training_dataset(
            cfg, [('coco', 'kp2d', files, 1.0)], names, end_step=6, input_context=context,
            include_skip_counts=True)
        batches = list(dataset)
        assert len(batches) == 6
        assert all(b['kp2d']['image'].shape[0] == 2 for b in batches)  # cfg's size per pipeline
        seen.append({int(i) for b in batches for i in pf.file_of_crops(b['kp2d']['image'])})
        skipped.append(sum(int(b['num_skipped'][3]) for b in batches))
        first_images.append(batches[0]['kp2d']['image'].numpy())
    assert seen == [{0, 2}, {1, 3}]
    # Pipeline 1 reads 12 records of files 1 and 3 (3 + 5 records, 2 of them bad); with this
    # seed bad ones come up, and only there.
    assert skipped[0] == 0 and skipped[1] > 0
    # Pipeline 1 takes the odd files, not a second copy of pipeline 0's stream.
    assert not np.array_equal(first_images[0], first_images[1])


def test_two_workers_train_on_their_own_files_of_prepared_data(tmp_path):
    # The training loop gives each worker's input pipeline its own shard files
    # (distribute_datasets_from_function): bad records are only in file 3, so only the worker
    # reading the odd files skips any; the two still train one model (same weights).
    from distribute_scripts import prepared_fixture as pf
    prepared = tmp_path / 'coco'
    pf.write_prepared_coco(prepared, records_per_file=4, bad_records=[(3, 3)])
    workers = _start_workers(tmp_path, _local_cluster(),
                             lambda i: [tmp_path / 'run', MW_STEPS, f'--prepared={prepared}'])
    first, second = _finish(workers, timeout=RUN_TIMEOUT)
    assert first['counter'] == second['counter'] == 2 * MW_STEPS
    assert first['abs_sum'] == second['abs_sum'] and first['weighted'] == second['weighted']
    assert first['skipped'] == [0, 0, 0, 0]
    assert second['skipped'][3] > 0 and second['skipped'][:3] == [0, 0, 0]


def test_skip_counter_under_mirrored_scope_and_per_replica_input(tmp_path):
    r = _run_script('skip_counter_mirrored.py', tmp_path)
    # The counter of bad records that build_data creates under the strategy's scope (as
    # run_training does) is a MirroredVariable; the pipeline adds to it while the dataset is
    # consumed through experimental_distribute_dataset, every copy holds the count, equal to
    # the same steps built without a strategy and to the per-step counts of the pipeline.
    assert r['counter_type'] == 'MirroredVariable' and r['num_components'] == 2
    counted = r['counted']
    assert counted > 0
    assert r['counter_values'] == [[0, 0, 0, counted]] * 2
    assert r['plain_counter'] == [0, 0, 0, counted]
    # Replica r gets the r-th half of each global batch of 4.
    assert len(r['crops']) == 6
    for per_replica, plain in zip(r['crops'], r['plain_crops']):
        assert per_replica == [plain[:2], plain[2:]]
    # distribute_datasets_from_function, one pipeline per replica: different files each.
    assert r['contexts'] == [[2, 0, 2], [2, 1, 2]]
    assert r['files_by_pipeline'] == [[0, 2], [1, 3]]


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
