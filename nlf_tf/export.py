"""Export of the inference model as a TensorFlow SavedModel.

The exported `predict` signature takes float32 images [B, S, S, 3] in [0, 1], intrinsics
[B, 3, 3] of the crops and canonical query points [B, P, 3] (metres, canonical space), and
returns `coords2d` (pixels), `coords3d` (camera frame, metres, full-perspective or
weak-perspective reconstruction as configured) and `uncertainty`.
"""

import os
import shutil
import time

import keras
import tensorflow as tf


def export_inference_model(model, cfg, path):
    """Writes the SavedModel to a temporary folder and renames it to `path` when complete.

    An existing export at `path` is kept as `<path>.previous-<timestamp>` rather than deleted.
    """
    path = os.path.normpath(path)
    parent = os.path.dirname(path) or '.'
    os.makedirs(parent, exist_ok=True)
    tmp_path = f'{path}.tmp-{os.getpid()}'
    if os.path.exists(tmp_path):
        shutil.rmtree(tmp_path)

    archive = keras.export.ExportArchive()
    archive.track(model)
    side = cfg.proc_side

    def predict(image, intrinsics, canonical_points):
        out = model(dict(image=image, intrinsics=intrinsics, canonical_points=canonical_points),
                    training=False)
        return {k: tf.cast(v, tf.float32) for k, v in out.items()}

    archive.add_endpoint(
        name='predict', fn=predict,
        input_signature=[
            tf.TensorSpec([None, side, side, 3], tf.float32, name='image'),
            tf.TensorSpec([None, 3, 3], tf.float32, name='intrinsics'),
            tf.TensorSpec([None, None, 3], tf.float32, name='canonical_points')])
    archive.write_out(tmp_path, verbose=False)
    if os.path.exists(path):
        os.replace(path, f'{path}.previous-{time.strftime("%Y%m%d-%H%M%S")}')
    os.replace(tmp_path, path)
    return path
