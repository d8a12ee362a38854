import os

import numpy as np
import pytest
import scipy.io

from nlf_tf.data import mads, video
from nlf_tf.data.example import DatasetError, Example, Skip

NAN = np.nan
FH, FW = 6, 8  # tiny synthetic frames; projections need not fall inside them
SLOTS_15 = [0, 1, 2, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15, 16, 18]  # spec section 4.3
KK0 = [[1000.0, 0, 320], [0, 1000.0, 240], [0, 0, 1]]


def base_pose_mm():
    # joint j at (40 j - 360, 20 j - 200, 4000) mm: with camera 0 (identity pose, f = 1000,
    # c = (320, 240)) it projects to pixel (230 + 10 j, 190 + 5 j)
    j = np.arange(19, dtype=np.float64)
    return np.stack([40 * j - 360, 20 * j - 200, np.full(19, 4000.0)], axis=1)


def write_calib(folder, i_cam, KK=KK0, kc=(0, 0, 0, 0, 0), om_ext=(0, 0, 0), T_ext=(0, 0, 0),
                drop=None):
    fields = dict(KK=np.array(KK, float), kc=np.array(kc, float).reshape(-1, 1),
                  om_ext=np.array(om_ext, float).reshape(-1, 1),
                  T_ext=np.array(T_ext, float).reshape(-1, 1), fc=np.array([[1000.0], [1000.0]]))
    if drop:
        del fields[drop]
    scipy.io.savemat(os.path.join(folder, f'Calib_Cam{i_cam}.mat'), fields)


def write_gt(path, frames):
    cells = np.empty((1, len(frames)), dtype=object)
    for i, frame in enumerate(frames):
        cells[0, i] = np.asarray(frame, dtype=np.float64)
    scipy.io.savemat(path, {'GTpose2': cells})


def gt_frames():
    base = base_pose_mm()
    f2 = base.copy()
    f2[3, 0] += 99             # 99 mm: dropped by the sampler
    f3_19 = base.copy()
    f3_19[3, 1] += 100         # 100 mm: kept
    f3 = f3_19[SLOTS_15]  # ... given as a 15-joint frame
    f4 = f3_19                 # toes/hands valid again -> kept although nothing moved
    return [np.full((19, 3), NAN), base, f2, f3, f4, base]  # frame 5 is past the video end


class FakeVideos:
    """Injected video reader: frame i of camera c is filled with 10 i + c."""

    def __init__(self, num_frames=5):
        self.num_frames = num_frames
        self.opened = []

    def __call__(self, path):
        self.opened.append(os.path.basename(path))
        cam = int(path[-5])
        return (np.full((FH, FW, 3), 10 * i + cam, np.uint8) for i in range(self.num_frames))


def make_mads(root, cams=(0,), frames=None):
    folder = os.path.join(root, 'multi_view_data', 'Jazz')
    os.makedirs(folder, exist_ok=True)
    for c in cams:
        open(os.path.join(folder, f'Jazz_S1_C{c}.avi'), 'wb').close()
        write_calib(folder, c)
    write_gt(os.path.join(folder, 'Jazz_S1_GT.mat'), gt_frames() if frames is None else frames)
    return folder


def run(root, **kwargs):
    kwargs.setdefault('video_reader', FakeVideos())
    records = list(mads.iter_examples(str(root), **kwargs))
    return ([r for r in records if isinstance(r, Example)],
            [r for r in records if isinstance(r, Skip)])


def test_sampling_slots_frames_and_boxes(tmp_path):
    make_mads(tmp_path, cams=(0, 1))
    reader = FakeVideos()
    examples, skips = run(tmp_path, video_reader=reader)
    assert reader.opened == ['Jazz_S1_C0.avi', 'Jazz_S1_C1.avi']
    ids = [e.example_id for e in examples]
    assert ids == [f'multi_view_data/Jazz/Jazz_S1_C{c}.avi/{i:06d}'
                   for c in (0, 1) for i in (1, 3, 4)]
    assert [(s.example_id[-6:], s.reason) for s in skips[:3]] == [
        ('000000', 'no valid joints'), ('000002', 'pose too similar to the last kept frame'),
        ('000005', 'frame beyond video length')]
    assert len(skips) == 6

    frames = gt_frames()
    by_frame = {int(e.example_id[-6:]): e for e in examples[:3]}
    for i, ex in by_frame.items():
        ex.validate()
        assert ex.dataset == 'mads' and ex.category == 'kp3d'
        assert ex.image_path is None and ex.joints2d is None
        np.testing.assert_array_equal(ex.image, np.full((FH, FW, 3), 10 * i, np.uint8))
    # metres, 19 slots; the 15-joint frame fills slots 0-4, 6-8, 10-12, 14-16, 18
    np.testing.assert_allclose(by_frame[1].joints3d, frames[1] / 1000, rtol=1e-6)
    j3 = by_frame[3].joints3d
    missing = [5, 9, 13, 17]  # ltoe, rtoe, lhan, rhan
    assert np.isnan(j3[missing]).all()
    present = [i for i in range(19) if i not in missing]
    np.testing.assert_allclose(j3[present], frames[3] / 1000, rtol=1e-6)
    np.testing.assert_allclose(j3[present], frames[4][present] / 1000, rtol=1e-6)
    spec = mads.specs.load_spec('mads')
    names = spec['joint_names']
    assert [names[i] for i in missing] == ['ltoe', 'rtoe', 'lhan', 'rhan']
    assert [names[i] for i in SLOTS_15] == spec['joint_names_15']

    # camera 0: identity pose, no distortion -> joint j at pixel (230 + 10 j, 190 + 5 j)
    ex = by_frame[1]
    j = np.arange(19)
    np.testing.assert_allclose(ex.camera.world_to_image(ex.joints3d),
                               np.stack([230 + 10 * j, 190 + 5 * j], 1), atol=1e-3)
    # GT box: bbox x 230..410, y 190..280 enlarged 1.2x about its centre (320, 235)
    np.testing.assert_allclose(ex.box, [212, 181, 216, 108], atol=1e-3)
    # frame 3: joint 3 moved +100 mm in y -> +25 px; toes/hands (5, 9, 13, 17) missing, so the
    # bbox is x 230..410 (joints 0 and 18), y 190..280 still; joint 3 at y 230 does not extend it
    np.testing.assert_allclose(by_frame[3].box, [212, 181, 216, 108], atol=1e-3)
    # camera 1 examples carry the camera-1 frames
    assert examples[3].image[0, 0, 0] == 11


def test_bouguet_projection_by_hand(tmp_path):
    # camera: R = Rodrigues((0, 0, pi/2)) = [[0, -1, 0], [1, 0, 0], [0, 0, 1]],
    # T = (100, -200, 3000) mm, f = 1000, c = (320, 240), k1 = 0.1.
    # world (600, 500, 1000) mm -> camera (-500 + 100, 600 - 200, 1000 + 3000) = (-400, 400, 4000)
    # normalised (-0.1, 0.1), r^2 = 0.02, radial 1 + 0.1 * 0.02 = 1.002
    # -> pixel (320 - 100.2, 240 + 100.2) = (219.8, 340.2); without distortion (220, 340)
    folder = str(tmp_path)
    write_calib(folder, 0, kc=(0.1, 0, 0, 0, 0), om_ext=(0, 0, np.pi / 2), T_ext=(100, -200, 3000))
    camera = mads.load_camera(os.path.join(folder, 'Calib_Cam0.mat'))
    point = np.array([[0.6, 0.5, 1.0]])
    np.testing.assert_allclose(camera.world_to_image(point), [[219.8, 340.2]], atol=1e-3)
    np.testing.assert_allclose(camera.world_to_camera(point), [[-0.4, 0.4, 4.0]], atol=1e-6)
    # optical centre -R^T T in metres: R^T (100, -200, 3000) = (-200, -100, 3000)
    np.testing.assert_allclose(camera.optical_center, [0.2, 0.1, -3.0], atol=1e-9)
    np.testing.assert_allclose(camera.world_up, [0, 1, 0])
    # tangential p1 = 0.01 on top: xd += 2 p1 x y = -0.0002, yd += p1 (r^2 + 2 y^2) = 0.0004
    write_calib(folder, 1, kc=(0.1, 0, 0.01, 0, 0), om_ext=(0, 0, np.pi / 2),
                T_ext=(100, -200, 3000))
    camera = mads.load_camera(os.path.join(folder, 'Calib_Cam1.mat'))
    np.testing.assert_allclose(camera.world_to_image(point), [[219.6, 340.6]], atol=1e-3)


def test_detections_pick_highest_iou(tmp_path):
    make_mads(tmp_path)
    prefix = 'multi_view_data/Jazz/Jazz_S1_C0.avi/'
    detections = {prefix + '000001': [[0, 0, 50, 50, 0.9], [215, 185, 200, 100, 0.3],
                                      [212, 181, 100, 108, 0.8]],
                  prefix + '000003': []}
    examples, _ = run(tmp_path, detections=detections)
    boxes = {e.example_id[-6:]: e.box for e in examples}
    np.testing.assert_array_equal(boxes['000001'], [215, 185, 200, 100])
    np.testing.assert_allclose(boxes['000003'], [212, 181, 216, 108], atol=1e-3)  # GT box
    path = tmp_path / 'det.json'
    path.write_text('{"' + prefix + '000001": [[1, 2, 3, 4]]}')
    examples, _ = run(tmp_path, detections=str(path))
    np.testing.assert_array_equal(examples[0].box, [1, 2, 3, 4])


def test_empty_cells_and_short_video(tmp_path):
    base = base_pose_mm()
    make_mads(tmp_path, frames=[np.zeros((0, 0)), base, base + 500])
    examples, skips = run(tmp_path, video_reader=FakeVideos(num_frames=2))
    assert [e.example_id[-6:] for e in examples] == ['000001']
    assert [s.reason for s in skips] == ['no valid joints', 'frame beyond video length']
    assert skips[1].file.endswith('Jazz_S1_C0.avi')


def test_bad_calibration(tmp_path):
    folder = make_mads(tmp_path)
    calib = os.path.join(folder, 'Calib_Cam0.mat')
    write_calib(folder, 0, kc=(0.1, 0, 0, 0))
    with pytest.raises(DatasetError, match='expected 5') as e:
        run(tmp_path)
    assert (e.value.file, e.value.field) == (calib, 'kc')
    write_calib(folder, 0, drop='T_ext')
    with pytest.raises(DatasetError) as e:
        run(tmp_path)
    assert (e.value.file, e.value.field) == (calib, 'T_ext')
    write_calib(folder, 0, KK=np.eye(2))
    with pytest.raises(DatasetError) as e:
        run(tmp_path)
    assert e.value.field == 'KK'
    write_calib(folder, 0, om_ext=(0, 0))
    with pytest.raises(DatasetError) as e:
        run(tmp_path)
    assert e.value.field == 'om_ext'
    with open(calib, 'wb') as f:
        f.write(b'not a mat file')
    with pytest.raises(DatasetError, match='cannot read') as e:
        run(tmp_path)
    os.remove(calib)
    with pytest.raises(DatasetError, match='not found') as e:
        run(tmp_path)
    assert e.value.file == calib


def test_bad_ground_truth_and_layout(tmp_path):
    with pytest.raises(DatasetError) as e:
        run(tmp_path)
    assert e.value.field == 'multi_view_data'
    folder = make_mads(tmp_path, frames=[base_pose_mm(), np.zeros((17, 3))])
    with pytest.raises(DatasetError, match=r'\(17, 3\)') as e:
        run(tmp_path)
    assert e.value.field == 'GTpose2[1]'
    scipy.io.savemat(os.path.join(folder, 'Jazz_S1_GT.mat'), {'other': np.zeros(3)})
    with pytest.raises(DatasetError) as e:
        run(tmp_path)
    assert e.value.field == 'GTpose2'
    with pytest.raises(ValueError, match='train'):
        run(tmp_path, split='test')


def test_video_module(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match='not found'):
        video.read_frames(str(tmp_path / 'missing.avi'))
    path = tmp_path / 'x.avi'
    path.write_bytes(b'')
    monkeypatch.setattr(video, 'available_backend', lambda: None)
    with pytest.raises(DatasetError, match=r'pip install nlf-tf\[video\]') as e:
        video.read_frames(str(path))
    assert e.value.file == str(path)
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(video.as_rgb_frame(grey), np.stack([grey] * 3, -1))
    rgba = np.zeros((3, 4, 4), np.uint8)
    assert video.as_rgb_frame(rgba).shape == (3, 4, 3)
    with pytest.raises(DatasetError, match='uint8'):
        video.as_rgb_frame(np.zeros((3, 4, 3), np.float32))


def test_real_decoder_if_installed(tmp_path):
    backend = video.available_backend()
    if backend is None:
        pytest.skip('no video decoder installed (pip install nlf-tf[video])')
    path = str(tmp_path / 'clip.avi')
    frames = [np.full((32, 48, 3), 40 * i, np.uint8) for i in range(4)]
    if backend == 'imageio':
        import imageio.v2 as imageio
        with imageio.get_writer(path, format='ffmpeg', fps=5, codec='mjpeg', quality=10,
                                macro_block_size=1) as writer:
            for frame in frames:
                writer.append_data(frame)
    else:
        import cv2
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'MJPG'), 5, (48, 32))
        for frame in frames:
            writer.write(frame)
        writer.release()
    decoded = list(video.read_frames(path))
    assert len(decoded) == 4
    for got, want in zip(decoded, frames):
        assert got.shape == (32, 48, 3) and got.dtype == np.uint8
        assert abs(float(got.mean()) - float(want.mean())) < 4
