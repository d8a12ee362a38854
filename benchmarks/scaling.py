"""(c) Scaling: optimizer steps/s and examples/s of the tiny demo model on one device vs a
MirroredStrategy over 2 logical CPU devices (same global batch), in one process. On a 2-core
CPU both configurations share the same two cores, so this measures the strategy's overhead
and the parallelism it can extract, not extra hardware. `--workers` adds 1 vs 2
MultiWorkerMirroredStrategy workers on localhost (separate processes)."""

import _common

import json
import os
import socket
import subprocess
import sys
import time

from nlf_tf import distribute

SIZES = dict(batch_size_parametric=8, batch_size=8, batch_size_densepose=8, batch_size_2d=8)
STEPS = 20


def measure(strategy_name, steps=STEPS):
    import tensorflow as tf
    from nlf_tf import training
    from test_training import tiny_cfg
    cfg = tiny_cfg('unused', training_steps=100000, num_points=256, **SIZES)
    strategy = (tf.distribute.get_strategy() if strategy_name == 'none' else
                distribute.create_strategy(tiny_cfg('unused', distribution=strategy_name)))
    built = training.build_data(cfg, 0, steps + 3)
    joint_names, canonical_init, data = built.joint_names, built.canonical_init, built.dataset
    with strategy.scope():
        model, trainer = training.build_trainer(cfg, joint_names, canonical_init)
        training._compile(trainer, model, cfg)
        trainer.build_for_training(next(iter(data)))
    trainer.fit(data.take(3), epochs=1, steps_per_epoch=3, verbose=0)  # trace + warm up
    data = training.build_data(cfg, 3, steps + 3).dataset
    start = time.perf_counter()
    trainer.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    seconds = time.perf_counter() - start
    examples = sum(SIZES.values())
    return dict(replicas=strategy.num_replicas_in_sync, steps_per_s=steps / seconds,
                examples_per_s=steps * examples / seconds)


def _free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def measure_workers(count):
    ports = [_free_port() for _ in range(count)]
    cluster = {'worker': [f'127.0.0.1:{p}' for p in ports]}
    procs = []
    for i in range(count):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {'cluster': cluster, 'task': {'type': 'worker', 'index': i}}))
        procs.append(subprocess.Popen([sys.executable, __file__, '--worker'], env=env,
                                      stdout=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    return json.loads([l for l in outs[0].splitlines() if l.startswith('{')][-1])


def main():
    if '--worker' in sys.argv:
        print(json.dumps(measure('multi_worker' if 'TF_CONFIG' in os.environ else 'none')))
        return
    distribute.set_logical_cpu_devices(2)
    one = measure('none')
    two = measure('mirrored')
    print(f'global batch {sum(SIZES.values())} (4 x 8), tiny demo model, {STEPS} steps')
    for name, r in (('1 device', one), ('2 logical devices', two)):
        print(f'{name:18s} {r["steps_per_s"]:6.2f} steps/s {r["examples_per_s"]:7.1f} examples/s')
    print(f'RATIO 2 devices / 1 device (steps/s) = {two["steps_per_s"] / one["steps_per_s"]:.2f}')
    if '--workers' in sys.argv:
        w1, w2 = measure_workers(1), measure_workers(2)
        for name, r in (('1 worker', w1), ('2 workers', w2)):
            print(f'{name:18s} {r["steps_per_s"]:6.2f} steps/s '
                  f'{r["examples_per_s"]:7.1f} examples/s')
        print(f'RATIO 2 workers / 1 worker (steps/s) = '
              f'{w2["steps_per_s"] / w1["steps_per_s"]:.2f}')


if __name__ == '__main__':
    main()
