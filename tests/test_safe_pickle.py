import collections
import os
import pickle

import numpy as np
import pytest

from nlf_tf import safe_pickle
from nlf_tf.data import detections
from nlf_tf.data.example import DatasetError

# `os.system('echo pwned')` as a protocol-0 pickle: loading it with a plain unpickler runs it.
_OS_SYSTEM = b"cos\nsystem\n(S'echo pwned'\ntR."


def _payload():
    return {'pose': np.arange(6, dtype=np.float32).reshape(2, 3),
            'ids': [np.int64(7), np.array([1, 2], np.int32)],
            'meta': collections.OrderedDict(name='x', scale=1.5, flag=True),
            'pair': (np.float64(2.5), None), 'span': slice(1, 4), 'tags': {'a', 'b'}}


def _check_payload(obj):
    assert obj['pose'].dtype == np.float32
    np.testing.assert_array_equal(obj['pose'], [[0, 1, 2], [3, 4, 5]])
    assert obj['ids'][0] == 7 and obj['ids'][0].dtype == np.int64
    np.testing.assert_array_equal(obj['ids'][1], [1, 2])
    assert obj['ids'][1].dtype == np.int32
    assert isinstance(obj['meta'], collections.OrderedDict)
    assert list(obj['meta'].items()) == [('name', 'x'), ('scale', 1.5), ('flag', True)]
    assert obj['pair'] == (2.5, None) and obj['span'] == slice(1, 4)
    assert obj['tags'] == {'a', 'b'}


@pytest.mark.parametrize('protocol', [0, 2, pickle.HIGHEST_PROTOCOL])
def test_arrays_in_plain_containers_load_from_bytes_and_path(tmp_path, protocol):
    data = pickle.dumps(_payload(), protocol=protocol)
    _check_payload(safe_pickle.load(data))
    path = tmp_path / 'a.pkl'
    path.write_bytes(data)
    _check_payload(safe_pickle.load(path))  # PathLike
    _check_payload(safe_pickle.load(str(path)))


def test_python2_style_globals_are_mapped():
    # Python 2 pickles name `numpy.core.*` (numpy >= 2: `numpy._core`), `__builtin__`,
    # `copy_reg` and `long`; all must resolve to the modern objects.
    data = pickle.dumps(np.array([1.0, -2.0]), protocol=2)
    assert b'numpy._core.multiarray' in data or b'numpy.core.multiarray' in data
    old = data.replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
    np.testing.assert_array_equal(safe_pickle.load(old), [1.0, -2.0])
    long_value = b"c__builtin__\nlong\n(I12\ntR."
    assert safe_pickle.load(long_value) == 12
    assert type(safe_pickle.load(long_value)) is int


@pytest.mark.parametrize('data', [
    _OS_SYSTEM,
    b"c__builtin__\neval\n(S'1+1'\ntR.",
    b"cnumpy\nload\n(S'x.npy'\ntR.",
    b"cposix\nsystem\n(S'echo pwned'\ntR.",
])
def test_forbidden_globals_are_refused(data):
    with pytest.raises(pickle.UnpicklingError, match='refusing to load the global'):
        safe_pickle.load(data)


def test_forbidden_global_error_wrapping_and_custom_refusal(tmp_path):
    # With `error`, the default refusal is wrapped like any unpickling failure...
    with pytest.raises(ValueError, match='cannot unpickle: UnpicklingError: refusing to load the '
                                         'global os.system') as info:
        safe_pickle.load(_OS_SYSTEM, error=ValueError)
    assert type(info.value) is ValueError

    # ...while a custom refusal is raised unchanged, naming the file and field.
    path = str(tmp_path / 'evil.pkl')
    with open(path, 'wb') as f:
        f.write(_OS_SYSTEM)
    with pytest.raises(DatasetError) as info:
        safe_pickle.load(path, refuse=lambda m, n: DatasetError(path, 'file', f'no {m}.{n}'),
                         error=lambda message: DatasetError(path, 'other', message))
    assert (info.value.file, info.value.field) == (path, 'file')
    assert 'no os.system' in str(info.value)


def test_corrupt_and_missing_files():
    truncated = pickle.dumps({'a': np.zeros(3)}, protocol=2)[:-5]
    with pytest.raises(Exception) as raw:
        safe_pickle.load(truncated)
    with pytest.raises(ValueError, match=f'cannot unpickle: {type(raw.value).__name__}'):
        safe_pickle.load(truncated, error=ValueError)
    with pytest.raises(FileNotFoundError):  # opening errors are not wrapped
        safe_pickle.load(os.path.join('no', 'such', 'file.pkl'), error=ValueError)


class _Token:
    def __init__(self, value=None):
        self.value = value


def test_extra_globals_hook():
    data = pickle.dumps([_Token(3)], protocol=2)
    with pytest.raises(pickle.UnpicklingError, match='_Token'):
        safe_pickle.load(data)

    def extra(module, name):
        return _Token if name == '_Token' else None

    (token,) = safe_pickle.load(data, extra_globals=extra)
    assert isinstance(token, _Token) and token.value == 3

    class StandIn:
        def __setstate__(self, state):
            self.state = state

    class Unpickler(safe_pickle.SafeUnpickler):
        def extra_global(self, module, name):
            return StandIn if name == '_Token' else None

    (token,) = safe_pickle.load(data, unpickler=Unpickler)
    assert type(token) is StandIn and token.state == {'value': 3}


def test_detection_boxes_shared_parser():
    boxes = detections.detection_boxes([[1, 2, 3, 4, 0.9], np.array([[5, 6, 7, 8]])], 'img')
    assert boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes, [[1, 2, 3, 4], [5, 6, 7, 8]])
    assert detections.detection_boxes(np.zeros((0, 5)), 'img').shape == (0, 4)
    for bad in ([[1, 2, 3]], [[1, 2, 3, np.nan]], [['a', 2, 3, 4]], 5):
        with pytest.raises(DatasetError) as info:
            detections.detection_boxes(bad, 'img')
        assert (info.value.file, info.value.field) == ('<detections>', 'img')


def test_load_detections_json_and_pickle(tmp_path):
    table = {'a.png': [[1, 2, 3, 4]]}
    assert detections.load_detections(table, 'unused') is table
    assert detections.load_detections(None, 'unused') is None
    json_path = tmp_path / 'd.json'
    json_path.write_text('[1]')
    with pytest.raises(DatasetError, match='must map things'):
        detections.load_detections(json_path, 'must map things')
    pkl_path = tmp_path / 'd.pkl'
    pkl_path.write_bytes(pickle.dumps({'a.png': np.ones((1, 5))}))
    loaded = detections.load_detections(pkl_path, 'x', pickle_not_object='must map to arrays')
    np.testing.assert_array_equal(loaded['a.png'], np.ones((1, 5)))
    pkl_path.write_bytes(pickle.dumps([np.ones(4)]))
    with pytest.raises(DatasetError, match='must map to arrays, got list'):
        detections.load_detections(pkl_path, 'x', pickle_not_object='must map to arrays')
    pkl_path.write_bytes(_OS_SYSTEM)
    with pytest.raises(DatasetError, match='cannot unpickle.*refusing') as info:
        detections.load_detections(pkl_path, 'x', pickle_not_object='must map to arrays')
    assert (info.value.file, info.value.field) == (str(pkl_path), 'file')
