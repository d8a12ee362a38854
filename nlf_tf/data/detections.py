"""Optional person detections shared by the dataset readers (AGORA, BEHAVE, MADS).

Detections map an example key (an image path or an example id) to candidate boxes
[x, y, w, h, ...] in pixels (extra entries such as a score are ignored). They are given as a
dict, or the path of a JSON file holding one, or (where the reader allows it) the path of a
numpy-only pickle.
"""

import os

import numpy as np

from nlf_tf import safe_pickle
from nlf_tf.data.example import DatasetError, load_json_object


def load_detections(detections, not_object, *, pickle_not_object=None):
    """Returns the detections dict (or None).

    Args:
        detections: None, a dict (returned as is) or a file path.
        not_object: DatasetError message when the JSON top level is not an object.
        pickle_not_object: if given, a path not ending in `.json` is read as a numpy-only pickle
            (see `nlf_tf.safe_pickle`), and this is the message when it holds no dict.
            Otherwise every path is read as JSON.

    Raises DatasetError naming the file (field 'file') if it is missing or malformed.
    """
    if detections is None or isinstance(detections, dict):
        return detections
    path = os.fspath(detections)
    if pickle_not_object is None or path.endswith('.json'):
        return load_json_object(path, missing='detections file not found',
                                not_object=not_object)
    if not os.path.isfile(path):
        raise DatasetError(path, 'file', 'detections file not found')
    data = safe_pickle.load(path, error=lambda message: DatasetError(path, 'file', message))
    if not isinstance(data, dict):
        raise DatasetError(path, 'file', f'{pickle_not_object}, got {type(data).__name__}')
    return data


def detection_boxes(candidates, example_id):
    """float32 [N, 4] boxes from a sequence of candidates (each 4+ numbers, or an [N, 4+] array);
    an empty sequence gives [0, 4]. DatasetError('<detections>', example_id) if malformed."""
    try:
        rows = [np.asarray(c, np.float64).reshape(-1)[:4] for c in candidates]
        boxes = np.asarray(rows) if rows else np.zeros((0, 4))
    except (TypeError, ValueError):
        raise DatasetError('<detections>', example_id, 'boxes must be [x, y, w, h, ...]') from None
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.all(np.isfinite(boxes)):
        raise DatasetError('<detections>', example_id, 'boxes must be 4+ finite numbers')
    return boxes.astype(np.float32)
