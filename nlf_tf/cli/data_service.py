"""`nlf-tf-data-service`: runs a tf.data service dispatcher and/or worker and blocks.

Examples (host A runs the dispatcher, hosts B and C the workers, the trainer points at A):
  hostA$ nlf-tf-data-service --dispatcher --port=5050
  hostB$ nlf-tf-data-service --worker --port=5051 --dispatcher_address=hostA:5050
  hostC$ nlf-tf-data-service --worker --port=5051 --dispatcher_address=hostA:5050
  nlf-tf-train --flagfile=... --tf_data_service=grpc://hostA:5050

Workers run the trainer's input pipeline: they need the same nlf-tf version and the data files
under the same paths. Stop a server with Ctrl-C.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_boolean('dispatcher', False, 'Run a dispatcher (one per training job).')
flags.DEFINE_boolean('worker', False, 'Run a worker (any number, on any hosts).')
flags.DEFINE_integer('port', None,
                     'Port to listen on: the dispatcher\'s with --dispatcher (default 5050), else '
                     'the worker\'s (default 5051).', lower_bound=0, upper_bound=65535)
flags.DEFINE_integer('worker_port', None,
                     'Port of the worker when --dispatcher and --worker run in one process '
                     '(default: --port + 1).', lower_bound=0, upper_bound=65535)
flags.DEFINE_string('dispatcher_address', None,
                    'host:port (or grpc://host:port) of the dispatcher; required with --worker '
                    'alone.')
flags.DEFINE_string('host', None,
                    'Name under which the other hosts reach this one (default: its fully '
                    'qualified domain name). Workers register with the dispatcher under '
                    'host:port and trainers connect to that address.')
flags.DEFINE_string('work_dir', None,
                    'Dispatcher journal folder: a restarted dispatcher recovers its jobs from it.')


def _error(message):
    print(f'nlf-tf-data-service: error: {message}', file=sys.stderr)
    return 2


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected positional arguments: {argv[1:]}')
    if not (FLAGS.dispatcher or FLAGS.worker):
        raise app.UsageError('give --dispatcher, --worker or both')
    from nlf_tf import data_service  # Imported late: flags must parse (and --help work) fast.
    host = FLAGS.host or data_service.this_host()
    servers = []
    try:
        if FLAGS.dispatcher:
            if FLAGS.dispatcher_address:
                return _error('--dispatcher_address is for a --worker alone; with --dispatcher '
                              'the worker joins this process\'s dispatcher')
            port = data_service.DEFAULT_PORT if FLAGS.port is None else FLAGS.port
            dispatcher = data_service.start_dispatcher(port, FLAGS.work_dir)
            port = data_service.bound_port(dispatcher)
            servers.append(dispatcher)
            print(f'tf.data service dispatcher listening on port {port}.\n'
                  f'  Workers:  nlf-tf-data-service --worker --dispatcher_address={host}:{port}\n'
                  f'  Trainers: nlf-tf-train ... --tf_data_service=grpc://{host}:{port}',
                  flush=True)
            dispatcher_address = f'localhost:{port}'
        else:
            if not FLAGS.dispatcher_address:
                return _error('--worker needs --dispatcher_address=host:port of the dispatcher')
            dispatcher_address = FLAGS.dispatcher_address
        if FLAGS.worker:
            if FLAGS.dispatcher:
                worker_port = FLAGS.worker_port
                if worker_port is None:
                    worker_port = 0 if FLAGS.port == 0 else port + 1
            else:
                worker_port = 5051 if FLAGS.port is None else FLAGS.port
            worker = data_service.start_worker(dispatcher_address, worker_port, host)
            servers.append(worker)
            worker_port = data_service.bound_port(worker)
            print(f'tf.data service worker listening on port {worker_port}, registered with the '
                  f'dispatcher at {dispatcher_address} as {host}:{worker_port} (trainers must be '
                  f'able to reach that address).', flush=True)
    except data_service.ServiceConfigError as e:
        return _error(str(e))
    except Exception as e:  # noqa: BLE001  (e.g. the port is taken)
        return _error(f'could not start the server: {e}')
    servers[0].join()  # Blocks until the process is stopped.
    return 0


def run():
    app.run(main)


if __name__ == '__main__':
    run()
