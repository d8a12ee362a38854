"""Input processing on other hosts with the tf.data service (`--tf_data_service`).

A dispatcher (`start_dispatcher`) hands out work; workers (`start_worker`) run the dataset's
graph and stream its elements to the trainer over gRPC. Everything before
`apply_data_service` in a pipeline runs on the workers; the trainer only receives finished
micro-batches. The dataset graph is serialised and sent to the workers, so they need the same
code version, and the files it names (prepared TFRecords, occluder/background folders) must
exist under the same paths on every worker host.

What the training loop gets (`training_dataset`), measured against the same run without the
service:

- demo data: 'distributed_epoch' mode (`ShardingPolicy.DYNAMIC`). The dispatcher splits the
  step-index source (`Dataset.range(start, end)`) among the workers, and every batch is a pure
  function of its step index, so each step's batch is bit-identical. With ONE worker they also
  arrive in step order (the same training as without the service, resumable exactly). With
  several workers the trainer receives the same multiset of batches in an order that depends on
  worker timing; a run interrupted and resumed may then repeat or skip the few steps that were
  in flight at the checkpoint. Dynamic sharding is at-most-once: if a worker dies mid-job the
  steps it held are lost, the stream ends early and `check_steps_trained` stops the run with an
  error (run the same command again to resume from the last checkpoint).
- prepared data: 'parallel_epochs' mode (`ShardingPolicy.OFF`). The pipeline's record streams
  cannot be split by step without changing which records make up each batch, so one worker runs
  the whole pipeline and the batches are identical and in step order. Each element carries its
  step index through the service and the trainer checks it: a second worker (which would
  deliver every batch once more) stops the run with an error instead of training on repeated
  batches. Bad-record counts travel inside the elements and are added to the run's skip
  counter on the trainer (a variable captured by the worker's graph would not be updated).

Jobs are anonymous (one per dataset iteration, owned by the trainer process): a named job
that has been read to its end answers every later reader with end-of-input at once, which
would break resumed runs, and several `multi_worker` trainers must each receive the whole
stream (the strategy's DATA auto-sharding then keeps each trainer's share of every global
batch, as without the service).
"""

import re
import socket

import tensorflow as tf

PROCESSING_MODES = {
    'distributed_epoch': tf.data.experimental.service.ShardingPolicy.DYNAMIC,
    'parallel_epochs': tf.data.experimental.service.ShardingPolicy.OFF,
}
DEFAULT_PORT = 5050
_ADDRESS = re.compile(r'^(?:(?P<protocol>[a-z][a-z0-9+.-]*)://)?'
                      r'(?P<host>[^\s:/]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$')


class ServiceConfigError(ValueError):
    """A tf.data service setting is wrong; the message names the flag."""


def parse_address(address, flag='--tf_data_service'):
    """(protocol, 'host:port') of a dispatcher address 'grpc://host:port' or 'host:port'."""
    if not isinstance(address, str) or not address.strip():
        raise ServiceConfigError(f'{flag} must be a dispatcher address such as '
                                 f'grpc://host:{DEFAULT_PORT}, got {address!r}')
    match = _ADDRESS.match(address.strip())
    if not match or not 0 < int(match['port']) < 65536:
        raise ServiceConfigError(f'{flag} must look like grpc://host:port or host:port, '
                                 f'got {address!r}')
    protocol = match['protocol'] or 'grpc'
    if protocol != 'grpc':
        raise ServiceConfigError(f'{flag}: only the grpc protocol is supported, got {address!r}')
    return protocol, f'{match["host"]}:{int(match["port"])}'


def apply_data_service(dataset, address, job_name=None, processing_mode='distributed_epoch'):
    """`dataset` produced by the tf.data service at `address` (see the module docstring for
    what each mode guarantees). job_name=None: an anonymous job owned by this iteration."""
    if processing_mode not in PROCESSING_MODES:
        raise ServiceConfigError(f'processing_mode must be one of {sorted(PROCESSING_MODES)}, '
                                 f'got {processing_mode!r}')
    if job_name is not None and (not isinstance(job_name, str) or not job_name):
        raise ServiceConfigError(f'job_name must be a non-empty string or None, got {job_name!r}')
    protocol, host_port = parse_address(address)
    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=PROCESSING_MODES[processing_mode], service=(protocol, host_port),
        job_name=job_name, target_workers='ANY'))


def processing_mode_for(data):
    """The processing mode used for the `--data` source (see the module docstring)."""
    return 'distributed_epoch' if data == 'demo' else 'parallel_epochs'


def validate_config(cfg):
    """Raises ServiceConfigError naming the flag if `--tf_data_service` cannot serve `cfg`."""
    parse_address(cfg.tf_data_service)
    if cfg.data not in ('demo', 'prepared'):
        raise ServiceConfigError(
            f'--tf_data_service supports --data=demo and --data=prepared, not '
            f'--data={cfg.data} (its pipeline updates trainer-side state the workers cannot '
            f'reach)')


def training_dataset(cfg, training_data, start_step, end_step):
    """The micro-batches of steps start_step..end_step-1 of `training_data` (a
    `nlf_tf.data_sources.TrainingData` built by `build_data` for those steps), produced by
    the tf.data service at `cfg.tf_data_service`."""
    validate_config(cfg)
    address = cfg.tf_data_service
    if cfg.data == 'demo':
        return apply_data_service(training_data.dataset, address,
                                  processing_mode=processing_mode_for(cfg.data))
    # Rebuilt with per-element skip counts (the TrainingData's own dataset adds them to a
    # variable, which a worker cannot update on the trainer).
    from nlf_tf import data_sources
    from nlf_tf.data import pipeline
    dirs = [d.strip() for d in (cfg.prepared_dirs or '').split(',') if d.strip()]
    sources = data_sources.prepared_sources(dirs, cfg.dataset_weights)
    dataset = pipeline.make_training_dataset(
        cfg, sources, training_data.joint_names, start_step=start_step, end_step=end_step,
        include_skip_counts=True)
    return serve_in_step_order(dataset, address, start_step, end_step,
                               training_data.skip_counter)


def serve_in_step_order(dataset, address, start_step, end_step, skip_counter=None):
    """`dataset` (element i = step start_step + i; dicts with an int 'num_skipped' entry,
    removed here and added to `skip_counter` if given) produced whole by ONE tf.data service
    worker ('parallel_epochs'). Each element travels with its step index and the trainer side
    raises InvalidArgumentError at the first element that is not the next step (what a second
    worker would cause)."""
    steps = tf.data.Dataset.range(start_step, end_step)
    dataset = tf.data.Dataset.zip(steps, dataset)
    dataset = apply_data_service(dataset, address, processing_mode='parallel_epochs')
    return dataset.enumerate(start_step).map(_StepCheck(skip_counter))


class _StepCheck:
    """Trainer-side map: checks that element i carries step i and moves the bad-record counts
    into the run's skip counter."""

    def __init__(self, skip_counter):
        self.skip_counter = skip_counter

    def __call__(self, expected_step, tagged):
        step, batch = tagged
        batch = dict(batch)
        skipped = batch.pop('num_skipped')
        check = tf.debugging.assert_equal(
            step, expected_step,
            message='tf.data service: a batch arrived out of step order (the service delivered '
                    'the step after the colon where the step before it was due). With '
                    '--data=prepared exactly one tf.data service worker may be registered with '
                    'the dispatcher: every extra worker delivers the whole stream once more.')
        deps = [check]
        if self.skip_counter is not None:
            deps.append(self.skip_counter.assign_add(tf.cast(skipped, tf.int64)))
        with tf.control_dependencies(deps):
            return tf.nest.map_structure(tf.identity, batch)


def check_steps_trained(trained_micro_steps, expected_micro_steps):
    """Raises RuntimeError if the service's stream ended before the run's last micro-step (a
    worker was lost in distributed_epoch mode, which is at-most-once)."""
    if int(trained_micro_steps) < int(expected_micro_steps):
        raise RuntimeError(
            f'The tf.data service delivered data for micro-steps up to {int(trained_micro_steps)} '
            f'only, {int(expected_micro_steps)} were due: a tf.data service worker was probably '
            f'lost mid-job (the demo data is dynamically sharded, at most once). Run the same '
            f'command again to resume from the latest checkpoint.')


def this_host():
    """The name other hosts should use to reach this one."""
    return socket.getfqdn() or socket.gethostname()


def start_dispatcher(port=DEFAULT_PORT, work_dir=None):
    """Starts a tf.data service dispatcher on `port` (0: a free port). With `work_dir`, its
    state is journaled there and a restarted dispatcher resumes the running jobs."""
    config = tf.data.experimental.service.DispatcherConfig(
        port=int(port), work_dir=work_dir, fault_tolerant_mode=bool(work_dir))
    return tf.data.experimental.service.DispatchServer(config)


def bound_port(server):
    """The port a DispatchServer or WorkerServer listens on (resolves port 0)."""
    # `_address` ('localhost:<bound port>') is the servers' only accessor of the bound port.
    return int(server._address.rsplit(':', 1)[1])


def start_worker(dispatcher_address, port=0, host=None):
    """Starts a tf.data service worker that registers with `dispatcher_address` as
    'host:port'. `host` must be the name under which trainers reach this machine (default:
    its fully qualified name; 'localhost' only for a single machine)."""
    _, host_port = parse_address(dispatcher_address, flag='--dispatcher_address')
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=host_port, worker_address=f'{host or this_host()}:%port%',
        port=int(port))
    return tf.data.experimental.service.WorkerServer(config)
