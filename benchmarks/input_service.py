"""(e) Input through the tf.data service: examples/s of the demo training pipeline read locally
vs through a tf.data service dispatcher + one worker started in this process on localhost
(what `--tf_data_service` does, minus the network between hosts).

The demo pipeline (`nlf_tf.data_sources.build_data`, --data=demo) with the default sub-batch
sizes (64 + 32 + 20 + 32 = 148 examples per step), 128 px crops, 256 points, a pool of 256
examples per category. Both readers first deliver a warm-up of steps, then are timed over the
same number of steps; prints examples/s, MB/s of batch data and the ratio service / local.

  python benchmarks/input_service.py [--steps=N] [--proc_side=S]
"""

import _common  # noqa: F401 (sets up sys.path and the TF log level)

import argparse
import time

import tensorflow as tf

from nlf_tf import config, data_service, data_sources


def throughput(dataset, warmup, steps):
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    nbytes = 0
    for _ in range(steps):
        batch = next(iterator)
        nbytes += sum(int(tf.size(x)) * x.dtype.size for x in tf.nest.flatten(batch))
    return time.perf_counter() - start, nbytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--steps', type=int, default=60)
    parser.add_argument('--proc_side', type=int, default=128)
    args = parser.parse_args()
    cfg = config.default_config(data='demo', proc_side=args.proc_side, num_points=256,
                                demo_pool_size=256)
    examples = sum(data_sources.micro_batch_sizes(cfg).values())
    warmup, steps = 10, args.steps
    end = warmup + steps

    dispatcher = data_service.start_dispatcher(port=0)
    address = f'grpc://localhost:{data_service.bound_port(dispatcher)}'
    worker = data_service.start_worker(address, port=0, host='localhost')
    service_cfg = config.default_config(**{**cfg, 'tf_data_service': address})

    results = {}
    for name in ('local', 'service'):
        data = data_sources.build_data(cfg, 0, end)
        dataset = data.dataset
        if name == 'service':
            dataset = data_service.training_dataset(service_cfg, data, 0, end)
        seconds, nbytes = throughput(dataset, warmup, steps)
        results[name] = steps * examples / seconds
        print(f'{name:8s} {results[name]:8.1f} examples/s  {nbytes / seconds / 2**20:7.1f} MB/s  '
              f'({steps} steps of {examples} examples, {args.proc_side} px)', flush=True)
    print(f'service / local = {results["service"] / results["local"]:.2f}')
    worker.stop()
    dispatcher.stop()


if __name__ == '__main__':
    main()
