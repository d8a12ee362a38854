"""Tests of the Pascal VOC occluder bank and the in-graph pasting, on a tiny VOC-layout folder
(JPEGs, indexed-colour PNG object segmentations, XML annotations) written here."""

import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf

from nlf_tf.data import augmentation
from nlf_tf.data import occluders

# OpenCV's 8x8 MORPH_ELLIPSE element, derived by hand from its rule (row dy = i - 4 spans the
# columns 4 +- round(4 sqrt(1 - dy^2 / 16)), clipped to [0, 8)).
ELLIPSE_8 = np.array([
    [0, 0, 0, 0, 1, 0, 0, 0],
    [0, 1, 1, 1, 1, 1, 1, 1],
    [0, 1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 1, 1, 1],
    [0, 1, 1, 1, 1, 1, 1, 1],
    [0, 1, 1, 1, 1, 1, 1, 1]], bool)


def voc_palette():
    """The usual VOC colour map: the bits of the index spread over the high bits of R, G, B."""
    palette = np.zeros((256, 3), np.uint8)
    for index in range(256):
        c, rgb = index, [0, 0, 0]
        for j in range(8):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << (7 - j)
            c >>= 3
        palette[index] = rgb
    return palette


def write_indexed_png(path, labels, palette):
    """8-bit palette PNG (colour type 3) written by hand."""
    labels = np.asarray(labels, np.uint8)
    h, w = labels.shape

    def chunk(kind, body):
        return (struct.pack('>I', len(body)) + kind + body
                + struct.pack('>I', zlib.crc32(kind + body) & 0xFFFFFFFF))

    raw = b''.join(b'\x00' + row.tobytes() for row in labels)
    data = (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 3, 0, 0, 0))
            + chunk(b'PLTE', palette.tobytes()) + chunk(b'IDAT', zlib.compress(raw))
            + chunk(b'IEND', b''))
    path.write_bytes(data)


def write_xml(path, filename, segmented, objects):
    parts = [f'<annotation><folder>VOC2012</folder><filename>{filename}</filename>',
             f'<segmented>{int(segmented)}</segmented>']
    for name, difficult, truncated, (x0, y0, x1, y1) in objects:
        parts.append(f'<object><name>{name}</name><pose>Unspecified</pose>'
                     f'<truncated>{int(truncated)}</truncated><difficult>{int(difficult)}'
                     f'</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>'
                     f'<ymax>{y1}</ymax></bndbox></object>')
    parts.append('</annotation>')
    path.write_text(''.join(parts))


def write_jpeg(path, image):
    path.write_bytes(tf.io.encode_jpeg(image, quality=100, chroma_downsampling=False).numpy())


@pytest.fixture(scope='module')
def voc(tmp_path_factory):
    """Image a: cat (kept), person, truncated dog, tiny bird, difficult car; image b: bottle disc
    (kept); image c: not segmented (its eligible object is ignored, it has no PNG)."""
    root = tmp_path_factory.mktemp('VOC2012')
    for sub in ('Annotations', 'JPEGImages', 'SegmentationObject', 'SegmentationClass'):
        (root / sub).mkdir()
    rng = np.random.default_rng(0)
    palette = voc_palette()
    info = {}

    image_a = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    labels_a = np.zeros((80, 100), np.uint8)
    labels_a[22:48, 12:48] = 1            # cat: 26 x 36 = 936 px, box 2 px larger each side
    labels_a[0:30, 60:90] = 2             # person, 900 px
    labels_a[50:80, 60:90] = 3            # truncated dog, 900 px
    labels_a[60:70, 5:15] = 4             # bird, 100 px < 500
    labels_a[30:50, 55:59] = 255          # void boundary pixels
    labels_a[50:75, 20:50] = 5            # difficult car
    objects_a = [('cat', 0, 0, (11, 21, 50, 50)), ('person', 0, 0, (61, 1, 90, 30)),
                 ('dog', 0, 1, (61, 51, 90, 80)), ('bird', 0, 0, (6, 61, 15, 70)),
                 ('car', 1, 0, (21, 51, 50, 75))]
    write_jpeg(root / 'JPEGImages' / '2008_000001.jpg', image_a)
    write_indexed_png(root / 'SegmentationObject' / '2008_000001.png', labels_a, palette)
    write_xml(root / 'Annotations' / '2008_000001.xml', '2008_000001.jpg', True, objects_a)
    info['a'] = (tf.io.decode_jpeg((root / 'JPEGImages' / '2008_000001.jpg').read_bytes()).numpy(),
                 labels_a == 1, (20, 50, 10, 50))  # rows, cols of the box (0-based, exclusive)

    image_b = rng.integers(0, 256, (60, 64, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:60, :64]
    labels_b = np.where((yy - 30) ** 2 + (xx - 30) ** 2 <= 15 ** 2, 1, 0).astype(np.uint8)
    write_jpeg(root / 'JPEGImages' / '2008_000002.jpg', image_b)
    write_indexed_png(root / 'SegmentationObject' / '2008_000002.png', labels_b, palette)
    write_xml(root / 'Annotations' / '2008_000002.xml', '2008_000002.jpg', True,
              [('bottle', 0, 0, (16, 16, 45, 45))])
    info['b'] = (tf.io.decode_jpeg((root / 'JPEGImages' / '2008_000002.jpg').read_bytes()).numpy(),
                 labels_b == 1, (15, 45, 15, 45))

    write_jpeg(root / 'JPEGImages' / '2008_000003.jpg', image_b)
    write_xml(root / 'Annotations' / '2008_000003.xml', '2008_000003.jpg', False,
              [('sofa', 0, 0, (1, 1, 60, 50))])
    return root, info


def numpy_cutout(image, mask, box):
    """Independent reference: erosion (outside = foreground), alpha 255/192/0, 2x2 mean."""
    r0, r1, c0, c1 = box
    image, mask = image[r0:r1, c0:c1].astype(np.float64), mask[r0:r1, c0:c1]
    h, w = mask.shape
    padded = np.pad(mask, [(4, 3), (4, 3)], constant_values=True)
    eroded = np.ones_like(mask)
    for i in range(8):
        for j in range(8):
            if ELLIPSE_8[i, j]:
                eroded &= padded[i:i + h, j:j + w]
    alpha = np.where(eroded, 255, np.where(mask, 192, 0))
    rgba = np.concatenate([image, alpha[..., None]], -1)
    h2, w2 = h // 2, w // 2
    assert h % 2 == 0 and w % 2 == 0  # the fixtures use even box sizes
    return rgba.reshape(h2, 2, w2, 2, 4).mean(axis=(1, 3))


def test_structuring_element_matches_opencv_rule():
    np.testing.assert_array_equal(occluders.EROSION_ELEMENT.astype(bool), ELLIPSE_8)


def test_png_palette_and_label_mask(voc):
    root, _ = voc
    png = (root / 'SegmentationObject' / '2008_000001.png').read_bytes()
    np.testing.assert_array_equal(occluders.png_palette(png), voc_palette())
    mask = occluders.label_mask(png, 3).numpy()
    assert mask.sum() == 900 and mask[50:80, 60:90].all()
    assert occluders.label_mask(png, 255).numpy().sum() == 80


def test_extraction_filters_and_cutouts(voc):
    root, info = voc
    cutouts = occluders.extract_occluders(str(root), max_occluders=100, seed=0)
    # Only the cat and the bottle pass (person / truncated / tiny / difficult / unsegmented out).
    assert len(cutouts) == 2
    by_shape = {c.shape: c for c in cutouts}
    assert set(by_shape) == {(15, 20, 4), (15, 15, 4)}
    for key, shape in (('a', (15, 20, 4)), ('b', (15, 15, 4))):
        image, mask, box = info[key]
        want = numpy_cutout(image, mask, box)
        got = by_shape[shape].astype(np.float64)
        np.testing.assert_array_equal(got, np.round(want))
    # The rim got the reduced alpha, the interior full alpha, the outside none.
    cat = by_shape[(15, 20, 4)][..., 3]
    assert cat[7, 10] == 255 and cat[0, 0] == 0 and np.any(cat == 192)
    # The limit bounds the bank; the choice is a pure function of the seed.
    assert len(occluders.extract_occluders(str(root), max_occluders=1, seed=3)) == 1
    one = occluders.extract_occluders(str(root), max_occluders=1, seed=3)[0]
    np.testing.assert_array_equal(one, occluders.extract_occluders(str(root), 1, seed=3)[0])


def test_bank_packing_and_errors(voc, tmp_path):
    root, _ = voc
    bank = occluders.build_occluder_bank(str(root), 100, 0)
    assert bank.count == 2 and bank.pixels.shape == (15 * 20 + 15 * 15, 4)
    assert bank.pixels.dtype == np.uint8 and bank.nbytes >= bank.pixels.nbytes
    for i in range(bank.count):
        h, w = bank.sizes[i]
        assert bank.occluder(i).shape == (h, w, 4)
    with pytest.raises(ValueError, match='SegmentationObject'):
        occluders.extract_occluders(str(tmp_path))
    (tmp_path / 'Annotations').mkdir()
    (tmp_path / 'JPEGImages').mkdir()
    (tmp_path / 'SegmentationObject').mkdir()
    with pytest.raises(ValueError, match='no segmented non-person'):
        occluders.build_occluder_bank(str(tmp_path), 10, 0)
    (tmp_path / 'Annotations' / 'x.xml').write_text('<annotation><segmented>1')
    with pytest.raises(ValueError, match='malformed XML'):
        occluders.extract_occluders(str(tmp_path))


def toy_bank():
    rng = np.random.default_rng(1)
    cutouts = []
    for h, w in ((10, 12), (7, 5), (16, 9)):
        rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        rgba[..., 3] = np.where(rng.random((h, w)) < 0.3, 0, rgba[..., 3])
        rgba[0, :, 3] = 0
        rgba[1, :, 3] = 255
        cutouts.append(rgba)
    return occluders.pack(cutouts)


def numpy_paste(image, rgba, centre):
    """Reference paste: top-left = round(centre) - size // 2, clipped, alpha blend."""
    out = image.copy()
    footprint = np.zeros(image.shape[:2], bool)
    side_h, side_w = image.shape[:2]
    h, w = rgba.shape[:2]
    cx, cy = np.round(centre).astype(int)
    y0, x0 = cy - h // 2, cx - w // 2
    for y in range(h):
        for x in range(w):
            yy, xx = y0 + y, x0 + x
            if 0 <= yy < side_h and 0 <= xx < side_w:
                a = rgba[y, x, 3] / 255.0
                out[yy, xx] = a * rgba[y, x, :3] / 255.0 + (1 - a) * out[yy, xx]
                footprint[yy, xx] |= a > 0
    return out, footprint


@pytest.mark.parametrize('side,scale_factor', [(32, 1.0), (64, 8.0)])
def test_paste_matches_numpy_and_only_changes_alpha_region(side, scale_factor):
    bank = toy_bank()
    image = np.random.default_rng(2).random((side, side, 3)).astype(np.float32)
    changed_any = False
    for seed in range(4):
        key = tf.constant([seed, 9], tf.int64)
        out = occluders.paste_occluders(image, bank.tensors, key, scale_factor).numpy()
        assert out.shape == image.shape and out.dtype == np.float32
        assert np.all((out >= 0) & (out <= 1))
        draws = occluders.sample_draws(key, bank.count, side, scale_factor)
        count = int(draws['count'])
        assert 1 <= count <= occluders.MAX_PER_IMAGE
        scales = draws['scale'].numpy()[:count]
        assert np.all((scales >= 0.2 * side / 256 * scale_factor)
                      & (scales <= side / 256 * scale_factor))
        want, footprint = image.astype(np.float64), np.zeros((side, side), bool)
        for i in range(count):
            rgba = occluders.scaled_occluder(bank.tensors, draws['index'][i],
                                             draws['scale'][i]).numpy()
            h, w = bank.sizes[int(draws['index'][i])]
            assert rgba.shape[:2] == (max(1, round(h * scales[i])), max(1, round(w * scales[i])))
            want, fp = numpy_paste(want, rgba, draws['centre'][i].numpy())
            footprint |= fp
        np.testing.assert_allclose(out, want, atol=2e-6)
        np.testing.assert_array_equal(out[~footprint], image[~footprint])
        changed_any |= bool(np.any(out != image))
        again = occluders.paste_occluders(image, bank.tensors, key, scale_factor).numpy()
        np.testing.assert_array_equal(out, again)
    assert changed_any


def test_scaled_occluder_area_halving_and_upscaling():
    bank = toy_bank()
    half = occluders.scaled_occluder(bank.tensors, 0, tf.constant(0.5)).numpy()
    full = bank.occluder(0).astype(np.float64)
    np.testing.assert_allclose(half, full.reshape(5, 2, 6, 2, 4).mean(axis=(1, 3)), atol=1e-4)
    double = occluders.scaled_occluder(bank.tensors, 1, tf.constant(2.0)).numpy()
    assert double.shape == (14, 10, 4)
    # Bilinear with half-pixel centres: output pixel (1, 1) sits at input (0.25, 0.25) -> clamp
    # region, so pixel (2, 2) (input 0.75, 0.75) is the 4-neighbour blend with weights .25/.75.
    src = bank.occluder(1).astype(np.float64)
    want = (0.25 * 0.25 * src[0, 0] + 0.25 * 0.75 * src[0, 1] + 0.75 * 0.25 * src[1, 0]
            + 0.75 * 0.75 * src[1, 1])
    np.testing.assert_allclose(double[2, 2], want, rtol=1e-5)


def test_appearance_augment_uses_occluders_only_when_given():
    bank = toy_bank()
    settings = augmentation.settings_from_config(
        dict(color_aug=False, jpeg_aug_prob=0.0, occlude_aug_prob=1.0))
    image = tf.constant(np.random.default_rng(3).random((24, 24, 3)), tf.float32)
    objects = erased = 0
    for seed in range(12):
        key = tf.constant([seed, 1], tf.int64)
        u = tf.random.stateless_uniform([2], seed=augmentation.fold_key(key, 0), alg='philox')
        plain = augmentation.appearance_augment(image, key, settings).numpy()
        with_bank = augmentation.appearance_augment(image, key, settings, bank.tensors).numpy()
        if u[0] < 0.5:  # the objects half: unchanged without a bank, pasted with one
            objects += 1
            np.testing.assert_array_equal(plain, image.numpy())
            want = occluders.paste_occluders(image, bank.tensors,
                                             augmentation.fold_key(key, 4)).numpy()
            np.testing.assert_allclose(with_bank, want, atol=1e-6)
        else:  # the erase half is not affected by the bank
            erased += 1
            np.testing.assert_array_equal(plain, with_bank)
    assert objects > 0 and erased > 0


def test_paste_inside_dataset_map():
    bank = toy_bank()
    images = tf.random.stateless_uniform([3, 16, 16, 3], seed=[1, 2])
    keys = tf.constant([[0, 1], [0, 2], [0, 3]], tf.int64)
    ds = tf.data.Dataset.from_tensor_slices((images, keys)).map(
        lambda im, k: occluders.paste_occluders(im, bank.tensors, k))
    for got, im, k in zip(ds, images, keys):
        np.testing.assert_allclose(got, occluders.paste_occluders(im, bank.tensors, k),
                                   atol=1e-6)


# ----------------------------------------------------------------------------------------
# The pipeline with --occluder_dir and --background_dir
# ----------------------------------------------------------------------------------------

def _kp3d_record(mask):
    from nlf_tf.data import rle

    height, width = mask.shape
    image = np.where(mask[..., None] > 0, 200, 100).astype(np.uint8).repeat(3, axis=2)
    k = np.array([[60, 0, (width - 1) / 2], [0, 60, (height - 1) / 2], [0, 0, 1]], np.float32)
    joints = np.array([[0.0, 0.0, 3.0], [0.2, -0.3, 3.1], [-0.2, 0.3, 2.9]], np.float32)

    def floats(x):
        x = np.asarray(x, np.float32).reshape(-1)
        return tf.train.Feature(float_list=tf.train.FloatList(value=x.tolist()))

    def ints(x):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(x)))

    def text(x):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[x]))

    jpeg = tf.io.encode_jpeg(image, quality=100, chroma_downsampling=False).numpy()
    feature = dict(
        dataset=text(b'toy3d'), category=text(b'kp3d'), example_id=text(b'x'),
        image_jpeg=text(jpeg), image_height=ints([height]), image_width=ints([width]),
        intrinsics=floats(k), rotation=floats(np.eye(3)), optical_center=floats(np.zeros(3)),
        world_up=floats([0, -1, 0]), has_camera=ints([1]), box=floats([12, 8, 16, 24]),
        joints2d=floats([]), joints3d=floats(joints), num_joints=ints([3]),
        dense_imcoords=floats([]), dense_faces=ints([]), dense_barycoords=floats([]),
        dense_canonical=floats([]),
        mask_rle_counts=text(rle.encode(mask)['counts'].encode()),
        mask_height=ints([height]), mask_width=ints([width]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_pipeline_with_occluder_and_background_folders(voc, tmp_path):
    from nlf_tf import config
    from nlf_tf.data import pipeline

    voc_root, _ = voc
    holidays = tmp_path / 'holidays'
    (holidays / 'jpg_small').mkdir(parents=True)
    yy, xx = np.mgrid[:30, :40]
    write_jpeg(holidays / 'jpg_small' / '1.jpg', np.stack(
        [xx * 6, yy * 8, np.full_like(xx, 30)], -1).astype(np.uint8))
    mask = np.zeros((40, 40), np.uint8)
    mask[6:34, 12:28] = 1
    shard = tmp_path / 'kp3d.tfrecord'
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for _ in range(4):
            writer.write(_kp3d_record(mask))
    specs = {'toy3d': dict(joint_names=['pelv', 'lwri', 'rwri'], suffix='_toy',
                           mirror_pairs=[['lwri', 'rwri']], realistic_background=False)}
    table = ['pelv_toy', 'lwri_toy', 'rwri_toy']
    side = 32

    def batches(**overrides):
        cfg = config.default_config()
        cfg.update(dict(batch_size_parametric=0, batch_size=2, batch_size_densepose=0,
                        batch_size_2d=0, proc_side=side, num_points=8, seed=1, color_aug=False,
                        jpeg_aug_prob=0.0, geom_aug=False, hflip_aug=False,
                        occlude_aug_prob=0.0, background_aug_prob=1.0))
        cfg.update(overrides)
        dataset = pipeline.make_training_dataset(
            cfg, [('toy3d', 'kp3d', [str(shard)], 1.0)], table, dataset_specs=specs,
            end_step=2)
        return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in dataset]

    plain = batches()
    with_bg = batches(background_dir=str(holidays), occluder_dir=str(voc_root),
                      max_occluders=5, occlude_aug_prob=1.0)
    assert len(with_bg) == 2
    for got, ref in zip(with_bg, plain):
        kp3d, ref3d = got['kp3d'], ref['kp3d']
        assert kp3d['image'].shape == (2, side, side, 3) and kp3d['image'].dtype == np.float32
        assert np.all((kp3d['image'] >= 0) & (kp3d['image'] <= 1))
        # The ground truth and the camera are not affected by appearance augmentation.
        for key in ('intrinsics', 'point_ids', 'point_validity', 'coords3d_true', 'root_index'):
            np.testing.assert_array_equal(kp3d[key], ref3d[key])
    # Background replacement removes the stored grey-100 background, which fills much of the
    # crop without it (the person is grey 200; occluders have VOC noise colours).
    grey = lambda im, v: np.all(np.abs(im - v / 255) < 0.03, axis=-1)  # noqa: E731
    for got, ref in zip(with_bg, plain):
        for im, im_ref in zip(got['kp3d']['image'], ref['kp3d']['image']):
            assert grey(im_ref, 100).mean() > 0.2 and grey(im_ref, 200).mean() > 0.2
            assert grey(im, 100).mean() < 0.02
            assert not np.array_equal(im, im_ref)
