"""(c) Scaling: optimizer steps/s and examples/s of the tiny demo model, same global batch,
measured side by side in one run:

- 1 device (no strategy) vs `MirroredStrategy` over 2 logical CPU devices, in this process;
- 1 vs 2 `MultiWorkerMirroredStrategy` workers on 127.0.0.1 (one process per worker, TF_CONFIG
  as in a real cluster; the 1-worker cluster runs the same strategy code on one process).

    python benchmarks/scaling.py [--steps=20] [--rounds=3] [--skip_workers]

On a machine whose devices or workers share the same cores (a CPU-only machine) this measures
the strategies' overhead and the parallelism they can extract, not extra hardware.
"""

import _common

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from nlf_tf import distribute

SIZES = dict(batch_size_parametric=8, batch_size=8, batch_size_densepose=8, batch_size_2d=8)
WARMUP_STEPS = 3
WORKER_TIMEOUT = 900  # seconds


def measure(strategy_name, steps, rounds):
    """Steps/s of `fit` on the tiny demo model under the named strategy: after a warm-up fit
    that traces the step, `rounds` timed fits of `steps` steps each; the fastest round counts
    (the least disturbed by other processes on the machine)."""
    import tensorflow as tf
    from nlf_tf import training
    from test_training import tiny_cfg
    cfg = tiny_cfg('unused', training_steps=100000, num_points=256, **SIZES)
    strategy = (tf.distribute.get_strategy() if strategy_name == 'none' else
                distribute.create_strategy(tiny_cfg('unused', distribution=strategy_name)))

    def dataset(start, stop):
        # The demo data is built in memory by every worker: each keeps its share of a batch.
        return distribute.with_shard_policy(training.build_data(cfg, start, stop).dataset,
                                            'data')

    built = training.build_data(cfg, 0, 1)
    with strategy.scope():
        model, trainer = training.build_trainer(cfg, built.joint_names, built.canonical_init)
        training._compile(trainer, model, cfg)
        trainer.build_for_training(next(iter(built.dataset)))
    trainer.fit(dataset(0, WARMUP_STEPS), epochs=1, steps_per_epoch=WARMUP_STEPS, verbose=0)
    times = []
    for r in range(rounds):
        first = WARMUP_STEPS + r * steps
        data = dataset(first, first + steps)
        start = time.perf_counter()
        trainer.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
        times.append(time.perf_counter() - start)
    counter = int(trainer.train_counter.numpy())
    assert counter == WARMUP_STEPS + rounds * steps, counter
    seconds = min(times)
    examples = sum(SIZES.values())
    return dict(replicas=strategy.num_replicas_in_sync, steps=steps, seconds=seconds,
                rounds=[round(steps / t, 3) for t in times],
                steps_per_s=steps / seconds, examples_per_s=steps * examples / seconds)


def measure_workers(count, steps, rounds):
    """Runs a `count`-worker cluster on 127.0.0.1 (this script with --worker, one process per
    worker) and returns the chief's measurement."""
    from distribute_scripts._common import free_ports
    cluster = {'worker': [f'127.0.0.1:{p}' for p in free_ports(count)]}
    procs, outputs = [], []
    with tempfile.TemporaryDirectory(prefix='nlf_scaling_') as tmp:
        try:
            for i in range(count):
                env = dict(os.environ, TF_CONFIG=json.dumps(
                    {'cluster': cluster, 'task': {'type': 'worker', 'index': i}}))
                # Output into files: an unread pipe could fill up and block a worker.
                out = open(os.path.join(tmp, f'{i}.out'), 'w+')
                err = open(os.path.join(tmp, f'{i}.err'), 'w+')
                outputs.append((out, err))
                procs.append(subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), '--worker', f'--steps={steps}',
                     f'--rounds={rounds}'],
                    env=env, stdout=out, stderr=err, text=True, cwd=_common.ROOT))
            deadline = time.monotonic() + WORKER_TIMEOUT
            results = []
            for p, (out, err) in zip(procs, outputs):
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
                out.seek(0)
                lines = [line for line in out.read().splitlines() if line.startswith('RESULT ')]
                if p.returncode != 0 or not lines:
                    err.seek(0)
                    raise RuntimeError(f'worker exited with status {p.returncode}:\n'
                                       f'{err.read()[-3000:]}')
                results.append(json.loads(lines[-1][len('RESULT '):]))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for out, err in outputs:
                out.close()
                err.close()
    assert all(r['replicas'] == count for r in results), results
    return results[0]


def _line(name, r):
    rounds = ' '.join(f'{x:.2f}' for x in r['rounds'])
    return (f'{name:20s} {r["steps_per_s"]:6.2f} steps/s {r["examples_per_s"]:7.1f} examples/s '
            f'(best round: {r["steps"]} steps in {r["seconds"]:.1f} s; rounds: {rounds} '
            f'steps/s)')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--steps', type=int, default=20, help='optimizer steps per timed round')
    parser.add_argument('--rounds', type=int, default=3, help='timed rounds (the best counts)')
    parser.add_argument('--skip_workers', action='store_true',
                        help='only 1 device vs 2 logical devices')
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one process of measure_workers' cluster
        result = measure('multi_worker', args.steps, args.rounds)
        print('RESULT ' + json.dumps(result), flush=True)
        return
    distribute.set_logical_cpu_devices(2)
    one = measure('none', args.steps, args.rounds)
    two = measure('mirrored', args.steps, args.rounds)
    print(f'global batch {sum(SIZES.values())} (4 x 8), tiny demo model '
          f'(mobilenetv3small, 64 px, 256 points), {os.cpu_count()} CPU cores')
    print(_line('1 device', one))
    print(_line('2 logical devices', two))
    print(f'RATIO 2 devices / 1 device (steps/s) = {two["steps_per_s"] / one["steps_per_s"]:.2f}')
    if not args.skip_workers:
        w1 = measure_workers(1, args.steps, args.rounds)
        w2 = measure_workers(2, args.steps, args.rounds)
        print(_line('1 worker', w1))
        print(_line('2 workers', w2))
        print(f'RATIO 2 workers / 1 worker (steps/s) = '
              f'{w2["steps_per_s"] / w1["steps_per_s"]:.2f}')
        print(f'RATIO 1 worker / 1 device (steps/s) = '
              f'{w1["steps_per_s"] / one["steps_per_s"]:.2f}')


if __name__ == '__main__':
    main()
