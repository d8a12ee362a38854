"""Z-buffered triangle rasterisation for the synthetic dataset writers (AGORA, BEHAVE).

Pixel centres are at integer coordinates; a pixel belongs to a triangle if its barycentric
coordinates are all >= 0 (to 1e-9); depth is interpolated linearly in the image.
"""

import numpy as np


def rasterize(points2d, depth, faces, shape, min_depth=0.0, max_fragments_per_chunk=2_000_000):
    """Fragments of the filled triangles: (pixel index y * W + x, depth, face index).

    A pixel (centre at integer coordinates) belongs to a triangle if its barycentric
    coordinates are all >= 0 (to 1e-9); depth is interpolated linearly in the image (fine for
    small triangles). Triangles with a vertex at depth <= min_depth (behind the camera) are
    dropped. Triangles are processed in chunks of at most `max_fragments_per_chunk` candidate
    pixels, so memory stays bounded for large images.
    """
    height, width = shape
    tri = np.asarray(points2d, np.float64)[faces]  # [F, 3, 2]
    tri_depth = np.asarray(depth, np.float64)[faces]
    ok = np.all(tri_depth > min_depth, axis=1) & np.all(np.isfinite(tri), axis=(1, 2))
    x0 = np.ceil(tri[..., 0].min(1)).clip(0, width)
    x1 = np.floor(tri[..., 0].max(1)).clip(-1, width - 1)
    y0 = np.ceil(tri[..., 1].min(1)).clip(0, height)
    y1 = np.floor(tri[..., 1].max(1)).clip(-1, height - 1)
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    ok &= (x1 >= x0) & (y1 >= y0) & (np.abs(area) > 1e-12)
    ids = np.flatnonzero(ok)
    bw = (x1 - x0 + 1).astype(np.int64)
    bh = (y1 - y0 + 1).astype(np.int64)
    ids = ids[np.argsort(bw[ids] * bh[ids], kind='stable')]
    pix, dep, fid = [], [], []
    start = 0
    while start < len(ids):
        # Grow the chunk while its padded grid stays small.
        end = start + 1
        gw, gh = bw[ids[start]], bh[ids[start]]
        while end < len(ids):
            gw2, gh2 = max(gw, bw[ids[end]]), max(gh, bh[ids[end]])
            if (end + 1 - start) * gw2 * gh2 > max_fragments_per_chunk:
                break
            gw, gh, end = gw2, gh2, end + 1
        chunk = ids[start:end]
        start = end
        xs = x0[chunk, None, None] + np.arange(gw)[None, None, :]
        ys = y0[chunk, None, None] + np.arange(gh)[None, :, None]
        ca, cb, cc = a[chunk, None, None], b[chunk, None, None], c[chunk, None, None]
        inv = 1.0 / area[chunk, None, None]
        # Barycentric coordinates of (xs, ys) in (a, b, c).
        l1 = ((xs - ca[..., 0]) * (cc[..., 1] - ca[..., 1])
              - (ys - ca[..., 1]) * (cc[..., 0] - ca[..., 0])) * inv
        l2 = ((cb[..., 0] - ca[..., 0]) * (ys - ca[..., 1])
              - (cb[..., 1] - ca[..., 1]) * (xs - ca[..., 0])) * inv
        l0 = 1.0 - l1 - l2
        eps = -1e-9
        inside = ((l0 >= eps) & (l1 >= eps) & (l2 >= eps)
                  & (xs <= x1[chunk, None, None]) & (ys <= y1[chunk, None, None]))
        z = (l0 * tri_depth[chunk, 0, None, None] + l1 * tri_depth[chunk, 1, None, None]
             + l2 * tri_depth[chunk, 2, None, None])
        k, iy, ix = np.nonzero(inside)
        pix.append((ys[k, iy, 0] * width + xs[k, 0, ix]).astype(np.int64))
        dep.append(z[k, iy, ix])
        fid.append(chunk[k])
    if not pix:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
    return np.concatenate(pix), np.concatenate(dep), np.concatenate(fid)


def visible_faces(points2d, depth, faces, shape, min_depth=0.0):
    """int64 [H, W]: the face nearest to the camera at each pixel (-1 = none); among faces at
    the same depth the one with the larger index."""
    height, width = shape
    pix, dep, fid = rasterize(points2d, depth, faces, shape, min_depth=min_depth)
    order = np.lexsort((-fid, dep, pix))  # per pixel: nearest first, then larger face id
    pix, fid = pix[order], fid[order]
    first = np.ones(len(pix), bool)
    first[1:] = pix[1:] != pix[:-1]
    face_id = np.full(height * width, -1, np.int64)
    face_id[pix[first]] = fid[first]
    return face_id.reshape(height, width)


def face_shading(cam_points, faces):
    """float64 [F]: a simple headlight shade per face, 0.35 + 0.65 |cos| of the angle between
    the face normal and the viewing ray to the face centre (camera-frame vertices [V, 3])."""
    tri = np.asarray(cam_points, np.float64)[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    view = tri.mean(axis=1)
    view /= np.linalg.norm(view, axis=1, keepdims=True)
    return 0.35 + 0.65 * np.abs(np.sum(normals * view, axis=1))
