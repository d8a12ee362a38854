"""Decoding video frames (for MADS) with imageio + imageio-ffmpeg, or OpenCV as a fallback
(and, if neither is installed, the built-in pure-Python reader for Motion-JPEG AVI files).

Neither library is a hard dependency: `pip install nlf-tf[video]` installs imageio and
imageio-ffmpeg. Readers take an optional `video_reader` callable with the signature of
`read_frames` (path -> iterable of uint8 [H, W, 3] RGB frames) so tests can inject synthetic video.
"""

import importlib.util
import os

import numpy as np

from nlf_tf.data.example import DatasetError

INSTALL_HINT = 'install a video decoder with `pip install nlf-tf[video]` (imageio + imageio-ffmpeg)'


def available_backend():
    """'imageio' or 'opencv' (the first one that is installed), or None."""
    if _has_module('imageio') and _has_module('imageio_ffmpeg'):
        return 'imageio'
    if _has_module('cv2'):
        return 'opencv'
    return None


def read_frames(path, backend=None):
    """Yields the frames of the video file `path` in order as uint8 [H, W, 3] RGB arrays.

    Raises DatasetError (naming the file) if the file is missing, no decoder is installed or the
    video cannot be opened.
    """
    if not os.path.isfile(path):
        raise DatasetError(path, 'video', 'video file not found')
    backend = backend or available_backend()
    if backend is None:
        # Last resort: the pure-Python Motion-JPEG reader (nlf_tf.data.avi) for MJPEG AVI files.
        from nlf_tf.data import avi
        if avi.is_mjpeg_avi(path):
            return avi.read_frames(path)
        raise DatasetError(path, 'video', f'no video decoder available; {INSTALL_HINT}')
    if backend == 'imageio':
        return _frames_imageio(path)
    if backend == 'opencv':
        return _frames_opencv(path)
    raise ValueError(f"unknown video backend {backend!r}; use 'imageio' or 'opencv'")


def as_rgb_frame(frame, path='<video>', index=None):
    """Checks/normalises one decoded frame to uint8 [H, W, 3] (grey expanded, alpha dropped)."""
    frame = np.asarray(frame)
    where = f'frame {index}' if index is not None else 'frame'
    if frame.ndim == 2:
        frame = np.repeat(frame[..., np.newaxis], 3, axis=-1)
    if frame.ndim != 3 or frame.shape[2] not in (1, 3, 4) or 0 in frame.shape[:2]:
        raise DatasetError(path, where, f'expected an [H, W, 3] image, got shape {frame.shape}')
    if frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    elif frame.shape[2] == 4:
        frame = frame[..., :3]
    if frame.dtype != np.uint8:
        raise DatasetError(path, where, f'expected uint8 pixels, got {frame.dtype}')
    return np.ascontiguousarray(frame)


def _has_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _frames_imageio(path):
    import imageio.v2 as imageio
    try:
        reader = imageio.get_reader(path, 'ffmpeg')
    except Exception as e:  # imageio raises various types for undecodable files
        raise DatasetError(path, 'video', f'cannot open video with imageio-ffmpeg: {e}') from e
    with reader:
        for i, frame in enumerate(reader):
            yield as_rgb_frame(frame, path, i)


def _frames_opencv(path):
    import cv2
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise DatasetError(path, 'video', 'cannot open video with OpenCV')
    try:
        i = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            # OpenCV decodes to BGR
            yield as_rgb_frame(np.ascontiguousarray(frame[..., ::-1]), path, i)
            i += 1
    finally:
        capture.release()
