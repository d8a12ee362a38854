"""--tf_data_service: training input produced by tf.data service workers (in-process dispatcher
and workers on localhost)."""

import numpy as np
import pytest
import tensorflow as tf

from nlf_tf import callbacks, data_service, data_sources, training
from test_training import tiny_cfg


def _cluster(num_workers):
    dispatcher = data_service.start_dispatcher(port=0)
    address = f'grpc://localhost:{data_service.bound_port(dispatcher)}'
    workers = [data_service.start_worker(address, port=0, host='localhost')
               for _ in range(num_workers)]
    return address, [dispatcher, *workers]


@pytest.fixture(scope='module')
def one_worker():
    address, servers = _cluster(1)
    yield address
    for server in reversed(servers):
        server.stop()


@pytest.fixture(scope='module')
def two_workers():
    address, servers = _cluster(2)
    yield address
    for server in reversed(servers):
        server.stop()


def _as_numpy(dataset):
    return [tf.nest.map_structure(np.asarray, element) for element in dataset]


def _assert_batches_equal(got, expected):
    assert tf.nest.flatten(got) != [] and set(got) == set(expected)
    tf.nest.assert_same_structure(got, expected)
    for a, b in zip(tf.nest.flatten(got), tf.nest.flatten(expected)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def _fingerprint(batch):
    return b''.join(np.ascontiguousarray(x).tobytes() for x in tf.nest.flatten(batch))


def test_addresses_and_errors(tmp_path):
    assert data_service.parse_address('grpc://hostA:5050') == ('grpc', 'hostA:5050')
    assert data_service.parse_address(' hostA.example.org:5050') == (
        'grpc', 'hostA.example.org:5050')
    assert data_service.parse_address('grpc://[::1]:80') == ('grpc', '[::1]:80')
    for bad in ('', 'hostA', 'hostA:', 'http://hostA:5050', 'hostA:70000', 'grpc://:5050'):
        with pytest.raises(data_service.ServiceConfigError, match='--tf_data_service'):
            data_service.parse_address(bad)
    with pytest.raises(data_service.ServiceConfigError, match='--dispatcher_address'):
        data_service.start_worker('nohostport', port=0)
    with pytest.raises(training.ConfigError, match='--tf_data_service'):
        training.validate_config(tiny_cfg(tmp_path, tf_data_service='hostA'))
    with pytest.raises(training.ConfigError, match='--data=synthetic'):
        training.validate_config(tiny_cfg(tmp_path, data='synthetic', tf_data_service='hostA:1'))
    with pytest.raises(data_service.ServiceConfigError, match='processing_mode'):
        data_service.apply_data_service(tf.data.Dataset.range(3), 'hostA:5050',
                                        processing_mode='exactly_once')
    assert data_service.processing_mode_for('demo') == 'distributed_epoch'
    assert data_service.processing_mode_for('prepared') == 'parallel_epochs'
    with pytest.raises(RuntimeError, match='resume'):
        data_service.check_steps_trained(5, 6)
    data_service.check_steps_trained(6, 6)


def test_demo_one_worker_gives_the_same_batches_in_step_order(tmp_path, one_worker):
    cfg = tiny_cfg(tmp_path, tf_data_service=one_worker)
    local = _as_numpy(data_sources.build_data(cfg, 2, 9).dataset)
    served = _as_numpy(data_service.training_dataset(
        cfg, data_sources.build_data(cfg, 2, 9), 2, 9))
    assert len(served) == len(local) == 7
    for got, expected in zip(served, local):
        _assert_batches_equal(got, expected)
    # Consecutive steps really differ (the comparison above is not trivially true).
    assert _fingerprint(local[0]) != _fingerprint(local[1])


def test_demo_two_workers_give_the_same_multiset_of_batches(tmp_path, two_workers):
    cfg = tiny_cfg(tmp_path, tf_data_service=two_workers)
    local = _as_numpy(data_sources.build_data(cfg, 0, 12).dataset)
    served = _as_numpy(data_service.training_dataset(
        cfg, data_sources.build_data(cfg, 0, 12), 0, 12))
    # Each step exactly once (no step lost or repeated), each batch bit-identical to its step's.
    assert len(served) == 12
    by_print = {_fingerprint(b): b for b in local}
    assert len(by_print) == 12
    assert sorted(_fingerprint(b) for b in served) == sorted(by_print)
    for got in served:
        _assert_batches_equal(got, by_print[_fingerprint(got)])


def test_prepared_one_worker_exact_order_and_skip_counts(tmp_path, one_worker):
    from nlf_tf.data import prepare, readers
    from test_data_end_to_end import _coco_folder
    root, out = tmp_path / 'coco', tmp_path / 'prepared_coco'
    _coco_folder(root)
    prepare.prepare_dataset(
        lambda: readers.get_reader('coco')(str(root), split='train', year=2014),
        str(out), 'coco', 'train', num_shards=2, log=lambda *a, **k: None)
    cfg = tiny_cfg(tmp_path / 'run', data='prepared', prepared_dirs=str(out),
                   batch_size_parametric=0, batch_size=0, batch_size_densepose=0,
                   batch_size_2d=2, num_points=24, tf_data_service=one_worker)
    local_data = data_sources.build_data(cfg, 3, 8)
    local = _as_numpy(local_data.dataset)
    # Only the joint table and the skip counter of the TrainingData are used by the service path.
    service_data = data_sources.TrainingData(
        local_data.joint_names, local_data.canonical_init, None,
        tf.Variable(tf.zeros([4], tf.int64)))
    served = _as_numpy(data_service.training_dataset(cfg, service_data, 3, 8))
    assert len(served) == len(local) == 5
    for got, expected in zip(served, local):
        _assert_batches_equal(got, expected)  # also: no 'num_skipped' key is left
    assert _fingerprint(local[0]) != _fingerprint(local[1])
    np.testing.assert_array_equal(service_data.skip_counter.numpy(),
                                  local_data.skip_counter.numpy())


def _counted_steps(start, end):
    """Stand-in for the prepared pipeline: element i = step start + i, with skip counts."""
    return tf.data.Dataset.range(start, end).map(lambda step: {
        'value': step * 10, 'num_skipped': tf.stack([step, 0, 1, 2 * step])})


def test_step_order_check_and_skip_counts(one_worker, two_workers):
    counter = tf.Variable(tf.zeros([4], tf.int64))
    served = list(data_service.serve_in_step_order(
        _counted_steps(4, 9), one_worker, 4, 9, counter))
    assert [int(e['value']) for e in served] == [40, 50, 60, 70, 80]
    assert all(set(e) == {'value'} for e in served)
    # Sum over steps 4..8 of (step, 0, 1, 2 step).
    np.testing.assert_array_equal(counter.numpy(), [30, 0, 5, 60])
    # Two workers each deliver the whole stream: at the latest the 6th element repeats a step.
    with pytest.raises(tf.errors.InvalidArgumentError, match='exactly one tf.data service worker'):
        for _ in data_service.serve_in_step_order(_counted_steps(4, 9), two_workers, 4, 9):
            pass


@pytest.fixture
def no_grappler():
    # Grappler's rewrites of the training step dominate the first step of the tiny model
    # (see benchmarks/README.md); they do not change what is tested here.
    before = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({'disable_meta_optimizer': True})
    yield
    tf.config.optimizer.set_experimental_options(
        {'disable_meta_optimizer': before.get('disable_meta_optimizer', False)})


def _leaf_sums(batch):
    return [tf.reduce_sum(tf.cast(x, tf.float64)) for x in tf.nest.flatten(batch)]


def test_training_through_the_service(tmp_path, one_worker, no_grappler, monkeypatch):
    cfg = tiny_cfg(tmp_path, training_steps=3, image_summary_period=0, checkpoint_period=10,
                   tf_data_service=one_worker)
    local = [np.stack(_leaf_sums(b)) for b in data_sources.build_data(cfg, 0, 3).dataset]
    # Record the per-tensor sums of every batch the trainer receives from the service (a
    # trainer-side map after the service), by position in the stream.
    seen = tf.Variable(tf.fill([3, len(local[0])], tf.constant(np.nan, tf.float64)))
    serve = data_service.training_dataset

    def recording_training_dataset(*args):
        def record(index, batch):
            update = seen.scatter_nd_update([[index]], [tf.stack(_leaf_sums(batch))])
            with tf.control_dependencies([update]):
                return tf.nest.map_structure(tf.identity, batch)
        return serve(*args).enumerate().map(record)

    monkeypatch.setattr(training.data_service_lib, 'training_dataset',
                        recording_training_dataset)
    recorder = callbacks.StepRecorder()
    trainer = training.run_training(cfg, extra_callbacks=[recorder])
    assert int(trainer.train_counter.numpy()) == 3
    assert recorder.steps == [0, 1, 2]
    assert all(np.isfinite(logs['loss']) and logs['loss'] > 0 for logs in recorder.logs)
    # The trainer got the local pipeline's batches, in step order (steps differ in their sums).
    np.testing.assert_allclose(seen.numpy(), np.stack(local), rtol=1e-9)
    assert not np.allclose(local[0], local[1])
