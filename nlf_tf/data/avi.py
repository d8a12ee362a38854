"""A minimal pure-Python Motion-JPEG AVI writer and reader (no video library needed).

The writer produces a plain AVI 1.0 file with one video stream:

    RIFF 'AVI '
      LIST 'hdrl'
        'avih'  main header (56 bytes)
        LIST 'strl'
          'strh'  stream header: 'vids', handler 'MJPG' (56 bytes)
          'strf'  BITMAPINFOHEADER, compression 'MJPG' (40 bytes)
      LIST 'movi'
        '00dc'  one JPEG per frame (tf.io.encode_jpeg), padded to an even size
      'idx1'  one 16-byte entry per frame (offsets relative to the 'movi' fourcc)

which ffmpeg (imageio) and OpenCV also read. The reader parses RIFF chunks (including 'rec '
lists and OpenDML 'AVIX' continuation RIFFs), checks that the video stream is Motion JPEG and
decodes each '##dc' / '##db' chunk of the first video stream with tf.io.decode_jpeg. A
zero-length frame chunk (a "drop frame") repeats the previous frame, as players do.
"""

import os
import struct

import numpy as np

from nlf_tf.data.example import DatasetError

MJPEG_FOURCCS = (b'MJPG', b'mjpg', b'AVRn', b'avrn', b'JPEG', b'jpeg', b'dmb1')
_AVIF_HASINDEX = 0x10
_AVIIF_KEYFRAME = 0x10


class NotMJPEGError(DatasetError):
    """The file is a readable AVI whose video stream is not Motion JPEG (or not an AVI)."""


# --------------------------------------------------------------------------------------------
# Writing

def _chunk(fourcc, payload):
    data = fourcc + struct.pack('<I', len(payload)) + payload
    return data + b'\0' if len(payload) % 2 else data


def _list(kind, payload):
    return _chunk(b'LIST', kind + payload)


def encode_frames_jpeg(frames, quality=90):
    """JPEG bytes of each uint8 [H, W, 3] frame (all frames must share one size)."""
    import tensorflow as tf

    encoded, shape = [], None
    for i, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f'frames[{i}]: expected uint8 [H, W, 3], got {frame.dtype} '
                             f'{frame.shape}')
        if shape is not None and frame.shape != shape:
            raise ValueError(f'frames[{i}]: size {frame.shape} differs from the first frame '
                             f'{shape}')
        shape = frame.shape
        encoded.append(tf.io.encode_jpeg(frame, quality=quality).numpy())
    if not encoded:
        raise ValueError('frames: an AVI needs at least one frame')
    return encoded, shape


def write_mjpeg_avi(path, frames, fps=25, quality=90):
    """Writes uint8 [H, W, 3] RGB `frames` (an iterable) as a Motion-JPEG AVI file.

    The file is written to `path + '.tmp'` and renamed, so a partial file never has the final
    name. Returns the number of frames.
    """
    if not fps > 0:
        raise ValueError(f'fps must be positive, got {fps!r}')
    jpegs, (height, width, _) = encode_frames_jpeg(frames, quality)
    n = len(jpegs)
    biggest = max(len(j) for j in jpegs)
    rate_num, rate_den = _rational(fps)

    avih = struct.pack(
        '<10I16x', int(round(1e6 / fps)), int(biggest * fps), 0, _AVIF_HASINDEX, n, 0, 1,
        biggest, width, height)
    strh = struct.pack(
        '<4s4sIHHIIIIIIiI4h', b'vids', b'MJPG', 0, 0, 0, 0, rate_den, rate_num, 0, n, biggest,
        -1, 0, 0, 0, width, height)
    strf = struct.pack('<IiiHH4sIiiII', 40, width, height, 1, 24, b'MJPG', width * height * 3,
                       0, 0, 0, 0)
    hdrl = _list(b'hdrl', _chunk(b'avih', avih) + _list(b'strl', _chunk(b'strh', strh) +
                                                        _chunk(b'strf', strf)))
    movi_chunks, index = [], []
    offset = 4  # idx1 offsets count from the 'movi' fourcc
    for jpeg in jpegs:
        chunk = _chunk(b'00dc', jpeg)
        index.append(struct.pack('<4sIII', b'00dc', _AVIIF_KEYFRAME, offset, len(jpeg)))
        movi_chunks.append(chunk)
        offset += len(chunk)
    body = (b'AVI ' + hdrl + _list(b'movi', b''.join(movi_chunks)) +
            _chunk(b'idx1', b''.join(index)))
    path = os.fspath(path)
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(b'RIFF' + struct.pack('<I', len(body)) + body)
    os.replace(tmp, path)
    return n


def _rational(fps):
    """(numerator, denominator) of the frame rate, e.g. 25 -> (25, 1), 29.97 -> (2997, 100)."""
    for den in (1, 1001, 100, 1000):
        num = fps * den
        if abs(num - round(num)) < 1e-6:
            return int(round(num)), den
    return int(round(fps * 1000)), 1000


# --------------------------------------------------------------------------------------------
# Reading

def _iter_chunks(f, start, end, path):
    """(fourcc, data offset, size, list kind or None) of the chunks in [start, end)."""
    pos = start
    while pos + 8 <= end:
        f.seek(pos)
        header = f.read(8)
        if len(header) < 8:
            return
        fourcc, size = header[:4], struct.unpack('<I', header[4:])[0]
        data = pos + 8
        if data + size > end:
            # A truncated last chunk (e.g. an interrupted recording): keep what is complete.
            size = max(0, end - data)
        kind = None
        if fourcc in (b'LIST', b'RIFF') and size >= 4:
            kind = f.read(4)
        yield fourcc, data, size, kind
        pos = data + size + (size % 2)


def _parse_headers(f, riff_start, riff_end, path):
    """(width, height, compression fourcc, stream number) of the first video stream."""
    stream = -1
    for fourcc, data, size, kind in _iter_chunks(f, riff_start, riff_end, path):
        if kind != b'hdrl':
            continue
        for fc2, data2, size2, kind2 in _iter_chunks(f, data + 4, data + size, path):
            if kind2 != b'strl':
                continue
            stream += 1
            info = {}
            for fc3, data3, size3, _ in _iter_chunks(f, data2 + 4, data2 + size2, path):
                f.seek(data3)
                info[fc3] = f.read(size3)
            strh, strf = info.get(b'strh', b''), info.get(b'strf', b'')
            if len(strh) < 8 or strh[:4] != b'vids':
                continue
            if len(strf) < 20:
                raise DatasetError(path, 'strf', 'video stream format header is truncated')
            width, height = struct.unpack('<ii', strf[4:12])
            compression = strf[16:20]
            return width, abs(height), compression, strh[4:8], stream
        break
    raise NotMJPEGError(path, 'hdrl', 'no video stream header found (not an AVI file?)')


def probe(path):
    """Header facts {'width', 'height', 'compression', 'handler', 'stream'} of an AVI file.

    Raises NotMJPEGError if the file is not a RIFF AVI file with a video stream.
    """
    path = os.fspath(path)
    with open(path, 'rb') as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b'RIFF' or head[8:12] != b'AVI ':
            raise NotMJPEGError(path, 'RIFF', "not a RIFF 'AVI ' file")
        riff_size = struct.unpack('<I', head[4:8])[0]
        end = min(8 + riff_size, os.fstat(f.fileno()).st_size)
        width, height, compression, handler, stream = _parse_headers(f, 12, end, path)
    return dict(width=width, height=height, compression=compression, handler=handler,
                stream=stream)


def is_mjpeg_avi(path):
    """True if `path` is an AVI file whose first video stream is Motion JPEG."""
    try:
        info = probe(path)
    except (OSError, DatasetError):
        return False
    return info['compression'] in MJPEG_FOURCCS or info['handler'] in MJPEG_FOURCCS


def iter_jpeg_chunks(path):
    """Yields the raw JPEG bytes of each frame of an MJPEG AVI (b'' for a drop frame)."""
    path = os.fspath(path)
    info = probe(path)
    if info['compression'] not in MJPEG_FOURCCS and info['handler'] not in MJPEG_FOURCCS:
        raise NotMJPEGError(path, 'strf', f'video compression is {info["compression"]!r}, not '
                                          f'Motion JPEG; the built-in reader only decodes MJPEG')
    ids = (b'%02ddc' % info['stream'], b'%02ddb' % info['stream'])
    with open(path, 'rb') as f:
        file_size = os.fstat(f.fileno()).st_size
        for fourcc, data, size, kind in _iter_chunks(f, 0, file_size, path):
            if fourcc != b'RIFF' or kind not in (b'AVI ', b'AVIX'):
                continue
            for fc2, data2, size2, kind2 in _iter_chunks(f, data + 4, data + size, path):
                if kind2 == b'movi':
                    yield from _movi_frames(f, data2 + 4, data2 + size2, ids, path)


def _movi_frames(f, start, end, ids, path):
    for fourcc, data, size, kind in _iter_chunks(f, start, end, path):
        if kind == b'rec ':
            yield from _movi_frames(f, data + 4, data + size, ids, path)
        elif fourcc in ids:
            f.seek(data)
            payload = f.read(size)
            if len(payload) < size:
                raise DatasetError(path, 'movi', 'frame chunk is truncated')
            yield payload


def read_frames(path):
    """Yields the frames of an MJPEG AVI file as uint8 [H, W, 3] RGB arrays.

    Raises DatasetError (naming the file) for a missing file, NotMJPEGError for other codecs,
    and DatasetError for an undecodable frame.
    """
    import tensorflow as tf

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetError(path, 'video', 'video file not found')
    previous = None
    for i, jpeg in enumerate(iter_jpeg_chunks(path)):
        if not jpeg:
            if previous is None:
                continue
            yield previous
            continue
        try:
            frame = tf.io.decode_jpeg(jpeg, channels=3).numpy()
        except (tf.errors.InvalidArgumentError, ValueError) as e:
            raise DatasetError(path, f'frame {i}', f'cannot decode the JPEG frame: {e}') from None
        previous = frame
        yield frame
