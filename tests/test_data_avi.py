"""The pure-Python Motion-JPEG AVI writer/reader and the video.read_frames fallback."""

import struct

import numpy as np
import pytest
import tensorflow as tf

from nlf_tf.data import avi, video
from nlf_tf.data.example import DatasetError

H, W = 24, 40


def _frames(n=4):
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        frame = np.full((H, W, 3), 30 * i + 20, np.uint8)
        frame[4:12, 5 + 5 * i:15 + 5 * i] = rng.integers(0, 255, 3, dtype=np.uint8)
        frames.append(frame)
    return frames


def _write(tmp_path, frames, name='v.avi', **kwargs):
    path = str(tmp_path / name)
    assert avi.write_mjpeg_avi(path, frames, **kwargs) == len(frames)
    return path


def test_written_file_is_a_valid_riff_avi(tmp_path):
    frames = _frames(3)
    path = _write(tmp_path, frames, fps=15)
    data = open(path, 'rb').read()
    assert data[:4] == b'RIFF' and data[8:12] == b'AVI '
    assert struct.unpack('<I', data[4:8])[0] == len(data) - 8
    # avih: frame period, frame count, stream count, size
    avih = data.index(b'avih') + 8
    period, _, _, flags, total, _, streams, _, width, height = struct.unpack(
        '<10I', data[avih:avih + 40])
    assert (period, total, streams, width, height) == (66667, 3, 1, W, H)
    assert flags & 0x10  # has an index
    strh = data.index(b'strh') + 8
    assert data[strh:strh + 8] == b'vidsMJPG'
    scale, rate = struct.unpack('<II', data[strh + 20:strh + 28])
    assert rate / scale == 15
    strf = data.index(b'strf') + 8
    assert struct.unpack('<Iii', data[strf:strf + 12]) == (40, W, H)
    assert data[strf + 16:strf + 20] == b'MJPG'
    # idx1 entries point (relative to the 'movi' fourcc) at '00dc' chunks holding JPEGs
    movi = data.index(b'movi')
    idx1 = data.index(b'idx1')
    count = struct.unpack('<I', data[idx1 + 4:idx1 + 8])[0] // 16
    assert count == 3
    for e in range(count):
        ckid, kflags, offset, size = struct.unpack(
            '<4sIII', data[idx1 + 8 + 16 * e:idx1 + 24 + 16 * e])
        assert ckid == b'00dc' and kflags == 0x10
        assert data[movi + offset:movi + offset + 4] == b'00dc'
        assert struct.unpack('<I', data[movi + offset + 4:movi + offset + 8])[0] == size
        jpeg = data[movi + offset + 8:movi + offset + 8 + size]
        assert jpeg[:2] == b'\xff\xd8' and jpeg[-2:] == b'\xff\xd9'


def test_reader_returns_the_encoded_frames(tmp_path):
    frames = _frames(5)
    path = _write(tmp_path, frames, quality=80)
    assert avi.is_mjpeg_avi(path)
    got = list(avi.read_frames(path))
    assert len(got) == 5
    for frame, g in zip(frames, got):
        # exactly what TF's JPEG codec round trip gives
        expected = tf.io.decode_jpeg(tf.io.encode_jpeg(frame, quality=80)).numpy()
        np.testing.assert_array_equal(g, expected)
        assert g.dtype == np.uint8 and g.shape == (H, W, 3)


def test_imageio_reads_the_file_too(tmp_path):
    imageio = pytest.importorskip('imageio.v2')
    pytest.importorskip('imageio_ffmpeg')
    frames = _frames(4)
    path = _write(tmp_path, frames, fps=25)
    reader = imageio.get_reader(path, 'ffmpeg')
    with reader:
        assert reader.get_meta_data()['fps'] == 25
        got = [frame for frame in reader]  # (list(reader) asks for an infinite length)
    assert len(got) == 4
    for frame, g in zip(frames, got):
        assert g.shape == (H, W, 3)
        assert np.mean(np.abs(g.astype(float) - frame)) < 4


def test_video_fallback_uses_the_mjpeg_reader(tmp_path, monkeypatch):
    frames = _frames(2)
    path = _write(tmp_path, frames)
    monkeypatch.setattr(video, 'available_backend', lambda: None)
    got = list(video.read_frames(path))
    assert len(got) == 2
    np.testing.assert_array_equal(got[1], list(avi.read_frames(path))[1])

    # Another codec: the built-in reader refuses it and video keeps its own error.
    data = open(path, 'rb').read()
    other = tmp_path / 'xvid.avi'
    other.write_bytes(data.replace(b'MJPG', b'XVID'))
    assert not avi.is_mjpeg_avi(str(other))
    with pytest.raises(DatasetError, match='no video decoder available'):
        video.read_frames(str(other))
    with pytest.raises(avi.NotMJPEGError, match='not Motion JPEG'):
        list(avi.read_frames(str(other)))

    junk = tmp_path / 'junk.avi'
    junk.write_bytes(b'not a video at all')
    assert not avi.is_mjpeg_avi(str(junk))
    with pytest.raises(DatasetError, match='no video decoder available'):
        video.read_frames(str(junk))


def test_drop_frames_and_bad_input(tmp_path):
    frames = _frames(2)
    path = _write(tmp_path, frames)
    data = bytearray(open(path, 'rb').read())
    # Turn the second frame chunk into a zero-length drop frame (its bytes become a JUNK chunk).
    movi = data.index(b'movi')
    first_size = struct.unpack('<I', data[movi + 8:movi + 12])[0]
    second = movi + 4 + 8 + first_size + first_size % 2
    size = struct.unpack('<I', data[second + 4:second + 8])[0]
    data[second + 4:second + 8] = struct.pack('<I', 0)
    data[second + 8:second + 12] = b'JUNK'
    data[second + 12:second + 16] = struct.pack('<I', size - 8 + size % 2)
    path2 = tmp_path / 'drop.avi'
    path2.write_bytes(bytes(data))
    got = list(avi.read_frames(str(path2)))
    assert len(got) == 2
    np.testing.assert_array_equal(got[0], got[1])  # the dropped frame repeats the previous one

    with pytest.raises(ValueError, match=r'frames\[1\]'):
        avi.write_mjpeg_avi(str(tmp_path / 'x.avi'), [frames[0], frames[0][:10]])
    with pytest.raises(ValueError, match='at least one frame'):
        avi.write_mjpeg_avi(str(tmp_path / 'x.avi'), [])
    with pytest.raises(DatasetError, match='not found'):
        list(avi.read_frames(str(tmp_path / 'missing.avi')))
