"""Canonical-space assets of a body-model family, generated from the user's model files.

The parametric loader (NLF `parametric.py`) needs, per family, the canonical mesh, the face
sampling probabilities and a large pool of points INSIDE the canonical body, each with sparse
interpolation weights over the columns [vertices; joints] of the posed body model. NLF ships
these as precomputed, non-public files; here `nlf-tf-canonical` (`ensure_assets`) regenerates
them from the official model files in `--body_model_dir` and stores one file per family:

    <canonical_dir>/canonical_<family>.npz   (default: <body_model_dir>/canonical_assets/)

Contents (read back with `load_assets`, which validates every field):

- `vertices` float32 [V, 3], `joints` float32 [J, 3]: the reference model (neutral if present,
  else female, else male) at zero shape in the REST pose (zero pose, flat hands), in the
  canonical frame of `nlf_tf.canonical_space` (metres, x left, y down, z forward, pelvis at the
  origin, exactly left/right symmetric; `canonical_space.canonical_smpl`).
- `faces` int32 [F, 3]; `face_probs` float32 [F]: canonical face area / total area.
- `interior_points` float32 [N, 3]: i.i.d. uniform samples of the canonical body's interior, in
  random order (the loader takes a contiguous block at a random offset).
- `interior_columns` int32 [N, K], `interior_weights` float32 [N, K]: ELLPACK rows of the sparse
  [N, V + J] interpolation matrix (K = the largest number of nonzeros in a row, at most 8; a row
  is padded at its end with column 0 / weight 0; stored columns are ascending and their
  weights nonzero). `weights @ [vertices; joints]` reproduces `interior_points` in the canonical
  pose, rows sum to 1 (so the interpolation moves rigidly with a rigid motion), and applied to a
  posed body the points follow the surrounding surface and bones.
- `kinds` str [G]: the kinds (e.g. 'smplx_f', 'smplx_m', 'smplx_n') whose model files exist;
  per kind, in the kind's OWN model axes (not canonical): `rest_pelvis` float32 [G, 3] =
  J_regressor[0] . v_template, `rest_pelvis_shapedirs` [G, 3, 128] = J_regressor[0] . shapedirs
  (zero-padded / truncated to kinds.SHAPE_SIZE), `rest_pelvis_exprdirs` [G, 3, 10],
  `rest_pelvis_kiddir` [G, 3] (zeros without a kid template). These give the rest-pose pelvis
  (the point the global rotation acts about) for moving fits into the camera frame (spec
  datasets.md §7.2).
- `fingerprints` (JSON {kind: sha256 of the model file, '<family>_kid_template': sha256}),
  `format_version`, `family`, `method`, `seed`, `num_vertices`, `num_joints`.

Interior method (`build_interior`; NLF used natural-neighbour (Sibson) coordinates, whose exact
construction is not public):

1. Inside test: the generalised winding number w(q) = sum over faces of the signed solid angle
   of the face seen from q, / 4 pi; a point is inside if w >= 0.5 (with the faces oriented so
   that the enclosed signed volume is positive: the canonical frame mirrors the model's axes,
   which turns the official outward faces inward). Unlike ray parity this is right for closed
   parts that overlap each other (w = 2 there) and degrades gracefully at small holes. It is
   evaluated hierarchically (Barnes-Hut, after Barill et al. 2018, "Fast winding numbers"):
   faces are grouped in a balanced k-d tree (16 faces per leaf); a group whose bounding sphere
   is far from q (distance > 1.5 x its radius) contributes the second-order expansion of its
   faces' area-weighted dipoles about its centre, near leaves are summed exactly (Van
   Oosterom-Strackee triangle solid angle). Approximate values within 0.25 of the threshold
   are recomputed exactly over all faces (the approximation error is below 0.1 on the tested
   meshes), so the decision is that of the exact winding-number test.
2. Sampling: the bounding box is voxelised (about 10^6 cells); voxels touched by a face's
   bounding box are 'surface' voxels, the other voxels form connected surface-free regions.
   Regions reaching the grid border are outside; every other region gets the inside test of
   its first voxel centre (the winding number of a closed surface is constant off the
   surface). Candidates are drawn uniformly from the surface voxels and the inside regions (a
   superset of the interior) and kept if inside (surface voxels: step 1 per candidate; inside
   regions: always), so the kept points are i.i.d. uniform over the interior.
3. Weights: nodes = canonical vertices, joints and points along every bone (an exact lerp of
   the parent and child joints, `bone_nodes`: one per ~2 cm, 10 to 20 per bone); a Delaunay
   tetrahedralisation of the nodes (scipy / Qhull) locates each point (vectorised: the
   tetrahedra with the 16, then 128 nearest centroids are tried, the rare rest against all);
   its barycentric coordinates are the weights, a bone node's weight is split onto its two
   joints by its lerp factor, and repeated columns are merged: at most 4 nodes x 2 columns = 8
   nonzeros. The weights are affine (sum to 1, positive) and reproduce the point exactly,
   hence move rigidly with a rigid motion of [vertices; joints], and a posed point follows the
   surface and bones around it (piecewise linearly, unlike NLF's smooth Sibson coordinates).
   Points whose tetrahedron is degenerate (flat; no finite barycentrics) are redrawn.

Size and time, measured for 200,000 interior points (the default) on 2 CPU cores shared with
other jobs (load average ~4), NumPy/SciPy, with two SMPL-X-sized closed meshes and 55 joints
(peak memory ~0.6 GB):

    mesh                                                    vertices  faces   time   file
    synthetic SMPL-X body (nlf_tf/body_models/synthetic.py,   10,304  20,480  13 s   10.9 MB
      neutral, canonical) midpoint-subdivided twice
    55 overlapping closed tubes (16 x 12 + 2 vertices each)   10,476  20,736  25 s   10.9 MB

(72k tetrahedra each; K = 5 nonzeros per row at most, 4.4 on average; the file is dominated
by the interior arrays, ~52 bytes per point; loading takes a fraction of a second.) The real
SMPL-X mesh has a similar size and a larger volume per surface area, so expect roughly the
first figure; SMPL (6,890 vertices) is faster. Time grows linearly with --num_interior.
"""

import json
import os
import tempfile
import time

import numpy as np
import scipy.ndimage
import scipy.spatial

from nlf_tf.body_models import kinds
from nlf_tf.body_models.smpl_file import ModelFileError

FORMAT_VERSION = 1
METHOD = 'delaunay-barycentric-winding-v1'
DEFAULT_NUM_INTERIOR = 200_000
MAX_NONZEROS = 8
ASSETS_SUBDIR = 'canonical_assets'
REFERENCE_GENDERS = ('n', 'f', 'm')  # the canonical mesh comes from the first one present

# Bone nodes: about this spacing (metres), clipped to [MIN, MAX] nodes per bone.
BONE_NODE_SPACING = 0.02
MIN_BONE_NODES = 10
MAX_BONE_NODES = 20

_WINDING_THRESHOLD = 0.5
_EXACT_MARGIN = 0.25  # approximate w this close to the threshold is recomputed exactly
_FAR_FACTOR = 1.5  # a face group is 'far' beyond this many times its bounding radius
_LEAF_SIZE = 16
_GRID_CELLS = 1_000_000
_BARY_TOLERANCE = 1e-9
_NEGLIGIBLE_WEIGHT = 1e-9


class CanonicalAssetError(ModelFileError):
    """A canonical-asset file is missing or malformed; names the file and the field."""


def asset_path(canonical_dir, family):
    """`<canonical_dir>/canonical_<family>.npz`."""
    _check_family(family)
    return os.path.join(os.fspath(canonical_dir), f'canonical_{family}.npz')


def default_canonical_dir(body_model_dir):
    return os.path.join(os.fspath(body_model_dir), ASSETS_SUBDIR)


def _check_family(family):
    if family not in kinds.FAMILIES:
        raise ValueError(f'unknown body-model family {family!r}; known: '
                         f'{", ".join(kinds.FAMILIES)}')


# --------------------------------------------------------------------------------------------
# Mesh measures


def face_areas(vertices, faces):
    """Area of each triangle (float64 [F])."""
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)]
    return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)


def face_probabilities(vertices, faces):
    """Face area / total area (float64 [F]); ValueError if the mesh has no area."""
    areas = face_areas(vertices, faces)
    total = areas.sum()
    if not total > 0:
        raise ValueError('the mesh has zero total area')
    return areas / total


def signed_volume(vertices, faces):
    """Volume enclosed by a closed mesh; positive for outward-oriented triangles."""
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)]
    return float(np.einsum('ij,ij->', tri[:, 0], np.cross(tri[:, 1], tri[:, 2])) / 6)


# --------------------------------------------------------------------------------------------
# Winding numbers


def _triangle_solid_angles(a, b, c):
    """Signed solid angle of triangles (a, b, c) (vertices relative to the query point) [...].

    Van Oosterom & Strackee (1983); positive when the triangle is counter-clockwise seen from
    the query point's far side, i.e. for an outward-oriented closed mesh and an inside point.
    """
    ax, ay, az = a[..., 0], a[..., 1], a[..., 2]
    bx, by, bz = b[..., 0], b[..., 1], b[..., 2]
    cx, cy, cz = c[..., 0], c[..., 1], c[..., 2]
    la = np.sqrt(ax * ax + ay * ay + az * az)
    lb = np.sqrt(bx * bx + by * by + bz * bz)
    lc = np.sqrt(cx * cx + cy * cy + cz * cz)
    det = ax * (by * cz - bz * cy) + ay * (bz * cx - bx * cz) + az * (bx * cy - by * cx)
    denom = (la * lb * lc + (ax * bx + ay * by + az * bz) * lc
             + (bx * cx + by * cy + bz * cz) * la + (cx * ax + cy * ay + cz * az) * lb)
    return 2.0 * np.arctan2(det, denom)


def exact_winding_numbers(vertices, faces, points, chunk_pairs=4_000_000):
    """Generalised winding number of each point (float64 [N]), summing over all faces."""
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)]
    points = np.asarray(points, np.float64).reshape(-1, 3)
    out = np.zeros(len(points))
    step = max(1, chunk_pairs // max(1, len(tri)))
    for start in range(0, len(points), step):
        q = points[start:start + step, np.newaxis, :]
        angles = _triangle_solid_angles(tri[:, 0] - q, tri[:, 1] - q, tri[:, 2] - q)
        out[start:start + step] = angles.sum(axis=1) / (4 * np.pi)
    return out


class WindingNumberTree:
    """Hierarchical (Barnes-Hut) generalised winding numbers of one triangle mesh.

    `winding_numbers(points)` approximates w(q) with dipoles for far face groups and exact solid
    angles for near ones; `is_inside(points)` thresholds at 0.5 and recomputes the approximate
    values within 0.25 of the threshold exactly, so its answer is that of the exact test.
    """

    def __init__(self, vertices, faces, leaf_size=_LEAF_SIZE, far_factor=_FAR_FACTOR):
        self.vertices = np.asarray(vertices, np.float64)
        self.faces = np.asarray(faces, np.int64)
        if self.faces.ndim != 2 or self.faces.shape[1] != 3 or len(self.faces) == 0:
            raise ValueError(f'faces must be a non-empty [F, 3] array, got {self.faces.shape}')
        self.far_factor = float(far_factor)
        tri = self.vertices[self.faces]  # [F, 3, 3]
        centroids = tri.mean(axis=1)
        area_vectors = 0.5 * np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        areas = np.linalg.norm(area_vectors, axis=-1)
        face_radius = np.linalg.norm(tri - centroids[:, np.newaxis], axis=-1).max(axis=1)

        # Balanced k-d tree over face centroids; every node is a contiguous range of `order`.
        order = np.arange(len(tri))
        starts, ends, left, right = [0], [len(tri)], [-1], [-1]
        stack = [0]
        while stack:
            node = stack.pop()
            s, e = starts[node], ends[node]
            if e - s <= leaf_size:
                continue
            c = centroids[order[s:e]]
            axis = int(np.argmax(c.max(axis=0) - c.min(axis=0)))
            half = (e - s) // 2
            part = np.argpartition(c[:, axis], half)
            order[s:e] = order[s:e][part]
            for child_range, link in (((s, s + half), left), ((s + half, e), right)):
                link[node] = len(starts)
                starts.append(child_range[0])
                ends.append(child_range[1])
                left.append(-1)
                right.append(-1)
                stack.append(len(starts) - 1)
        self.left = np.array(left, np.int64)
        self.right = np.array(right, np.int64)
        starts = np.array(starts, np.int64)
        ends = np.array(ends, np.int64)

        # Node aggregates from prefix sums over the tree order.
        o_area = areas[order]
        o_vec = area_vectors[order]
        o_cen = centroids[order]
        cum_area = np.concatenate([[0.0], np.cumsum(o_area)])
        cum_vec = np.concatenate([np.zeros([1, 3]), np.cumsum(o_vec, axis=0)])
        cum_wc = np.concatenate([np.zeros([1, 3]), np.cumsum(o_cen * o_area[:, None], axis=0)])
        cum_c = np.concatenate([np.zeros([1, 3]), np.cumsum(o_cen, axis=0)])
        node_area = cum_area[ends] - cum_area[starts]
        node_count = (ends - starts)[:, None]
        weighted = (cum_wc[ends] - cum_wc[starts]) / np.maximum(node_area, 1e-300)[:, None]
        plain = (cum_c[ends] - cum_c[starts]) / node_count
        self.centers = np.where(node_area[:, None] > 0, weighted, plain)
        self.dipoles = cum_vec[ends] - cum_vec[starts]
        # Second-order moment M = sum_f (c_f - p) A_f^T = sum_f c_f A_f^T - p (sum_f A_f)^T.
        cum_ca = np.concatenate([np.zeros([1, 3, 3]), np.cumsum(
            o_cen[:, :, None] * o_vec[:, None, :], axis=0)])
        self.moments = (cum_ca[ends] - cum_ca[starts]
                        - self.centers[:, :, None] * self.dipoles[:, None, :])
        o_rad = face_radius[order]
        self.radii = np.array([
            np.max(np.linalg.norm(o_cen[s:e] - self.centers[k], axis=-1) + o_rad[s:e])
            for k, (s, e) in enumerate(zip(starts, ends))])

        # Leaves as padded face lists; the pad face (index F) is degenerate (solid angle 0).
        is_leaf = self.left < 0
        self.leaf_slot = np.full(len(starts), -1, np.int64)
        self.leaf_slot[is_leaf] = np.arange(is_leaf.sum())
        leaf_faces = np.full([is_leaf.sum(), leaf_size], len(tri), np.int64)
        for slot, (s, e) in enumerate(zip(starts[is_leaf], ends[is_leaf])):
            leaf_faces[slot, :e - s] = order[s:e]
        self.leaf_faces = leaf_faces
        self.triangles = np.concatenate([tri, np.zeros([1, 3, 3])], axis=0)

    def winding_numbers(self, points, chunk=8192):
        """Approximate generalised winding numbers (float64 [N])."""
        points = np.asarray(points, np.float64).reshape(-1, 3)
        out = np.zeros(len(points))
        for start in range(0, len(points), chunk):
            out[start:start + chunk] = self._winding_chunk(points[start:start + chunk])
        return out

    def _winding_chunk(self, q):
        n = len(q)
        total = np.zeros(n)
        pair_q = np.arange(n)
        pair_node = np.zeros(n, np.int64)
        leaf_q, leaf_node = [], []
        while len(pair_q):
            delta = self.centers[pair_node] - q[pair_q]
            dist = np.sqrt(np.einsum('ij,ij->i', delta, delta))
            far = dist > self.far_factor * self.radii[pair_node]
            if far.any():
                # Taylor expansion of sum_f A_f . r_f / |r_f|^3 about the group centre (r = p - q):
                # A . r / d^3 + sum_ij J_ij M_ij with J = I / d^3 - 3 r r^T / d^5.
                node, r, d = pair_node[far], delta[far], dist[far]
                moment = self.moments[node]
                contrib = (np.einsum('ij,ij->i', self.dipoles[node], r)
                           + np.trace(moment, axis1=1, axis2=2)
                           - 3 * np.einsum('ni,nij,nj->n', r, moment, r) / d ** 2) / d ** 3
                total += np.bincount(pair_q[far], contrib, minlength=n)
            near_q, near_node = pair_q[~far], pair_node[~far]
            leaf = self.left[near_node] < 0
            leaf_q.append(near_q[leaf])
            leaf_node.append(near_node[leaf])
            inner_q, inner_node = near_q[~leaf], near_node[~leaf]
            pair_q = np.concatenate([inner_q, inner_q])
            pair_node = np.concatenate([self.left[inner_node], self.right[inner_node]])
        total /= 4 * np.pi
        leaf_q = np.concatenate(leaf_q)
        leaf_node = np.concatenate(leaf_node)
        step = 4096
        for s in range(0, len(leaf_q), step):
            lq = leaf_q[s:s + step]
            tri = self.triangles[self.leaf_faces[self.leaf_slot[leaf_node[s:s + step]]]]
            rel = tri - q[lq][:, None, None, :]  # [m, leaf, 3, 3]
            angles = _triangle_solid_angles(rel[..., 0, :], rel[..., 1, :], rel[..., 2, :])
            total += np.bincount(lq, angles.sum(axis=1), minlength=n) / (4 * np.pi)
        return total

    def is_inside(self, points):
        """bool [N]: exact generalised winding number >= 0.5 (see the class docstring)."""
        points = np.asarray(points, np.float64).reshape(-1, 3)
        w = self.winding_numbers(points)
        unsure = np.flatnonzero(np.abs(w - _WINDING_THRESHOLD) < _EXACT_MARGIN)
        if len(unsure):
            w[unsure] = exact_winding_numbers(self.vertices, self.faces, points[unsure])
        return w >= _WINDING_THRESHOLD


# --------------------------------------------------------------------------------------------
# Uniform interior sampling


class _VoxelProposal:
    """Uniform candidates over the voxels that may contain interior points (module doc, 2).

    `sample` returns candidates and whether each still needs the inside test: a candidate in a
    surface-free voxel region gets the region's answer (the winding number of a closed surface
    is constant off the surface; one point per region is tested), one in a voxel touched by a
    face's bounding box is tested itself.
    """

    def __init__(self, vertices, faces, tree, num_cells=_GRID_CELLS):
        vertices = np.asarray(vertices, np.float64)
        lo, hi = vertices.min(axis=0), vertices.max(axis=0)
        extent = np.maximum(hi - lo, 1e-6)
        side = (np.prod(extent) / num_cells) ** (1 / 3)
        # At least one empty voxel layer beyond the mesh on every side: the border is outside.
        self.origin = lo - 1.5 * side
        self.side = side
        shape = np.ceil((hi - self.origin) / side).astype(np.int64) + 2
        surface = np.zeros(shape, bool)
        tri = vertices[np.asarray(faces)]
        f_lo = np.floor((tri.min(axis=1) - self.origin) / side).astype(np.int64)
        f_hi = np.floor((tri.max(axis=1) - self.origin) / side).astype(np.int64)
        # Mark every voxel of every face's bounding box (conservative), in batches of faces.
        ext = f_hi - f_lo + 1
        count = np.prod(ext, axis=1)
        for begin in range(0, len(tri), 20000):
            sl = slice(begin, begin + 20000)
            face = np.repeat(np.arange(len(tri))[sl], count[sl])
            local = np.arange(len(face)) - np.repeat(np.cumsum(count[sl]) - count[sl], count[sl])
            e = ext[face]
            ix = local % e[:, 0]
            iy = (local // e[:, 0]) % e[:, 1]
            iz = local // (e[:, 0] * e[:, 1])
            surface[f_lo[face, 0] + ix, f_lo[face, 1] + iy, f_lo[face, 2] + iz] = True
        # Surface-free voxels form connected regions (6-connectivity); regions reaching the
        # border are outside, each other region is classified by the test of its first voxel.
        labels, num_regions = scipy.ndimage.label(~surface)
        border = np.unique(np.concatenate([
            labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel(), labels[:, :, [0, -1]].ravel()]))
        region_inside = np.zeros(num_regions + 1, bool)
        flat = labels.ravel()
        _, first = np.unique(flat, return_index=True)  # first voxel of label 0..num_regions
        reps = np.stack(np.unravel_index(first, shape), axis=1)
        region_inside[:] = tree.is_inside(self.origin + (reps + 0.5) * side)
        region_inside[0] = False
        region_inside[border] = False
        keep_inside = region_inside[labels]
        self.cells = np.concatenate([np.argwhere(surface), np.argwhere(keep_inside)])
        if not len(self.cells):
            raise ValueError('the mesh has no interior voxels')
        self.needs_test = np.concatenate([np.ones(surface.sum(), bool),
                                          np.zeros(keep_inside.sum(), bool)])

    def sample(self, rng, n):
        """(points float64 [n, 3], needs_test bool [n])."""
        pick = rng.integers(0, len(self.cells), n)
        points = self.origin + (self.cells[pick] + rng.random([n, 3])) * self.side
        return points, self.needs_test[pick]


# --------------------------------------------------------------------------------------------
# Interpolation weights


def _barycentric_transforms(tets):
    """Qhull-style affine maps [T, 4, 3]: b[:3] = M (x - r) with M = [T, :3], r = [T, 3].

    Degenerate (flat) tetrahedra get NaN, so no point ever matches them. (Computed here
    because scipy's `Delaunay.transform` takes seconds for ~10^5 tetrahedra.)
    """
    ref = tets[:, 3]
    edges = np.transpose(tets[:, :3] - ref[:, None], (0, 2, 1))  # columns = edge vectors
    det = np.linalg.det(edges)
    scale = np.linalg.norm(tets[:, :3] - ref[:, None], axis=-1).max(axis=1)
    flat = ~(np.abs(det) > 1e-12 * scale ** 3)
    edges[flat] = np.eye(3)
    inverse = np.linalg.inv(edges)
    inverse[flat] = np.nan
    return np.concatenate([inverse, ref[:, None]], axis=1)


def bone_nodes(joints, parents, spacing=BONE_NODE_SPACING, min_nodes=MIN_BONE_NODES,
               max_nodes=MAX_BONE_NODES):
    """Points strictly inside every bone (parent -> child), each an exact lerp of its joints.

    Returns (positions float64 [B, 3], parent joint int64 [B], child joint int64 [B],
    t float64 [B]) with position = (1 - t) joints[parent] + t joints[child].
    """
    joints = np.asarray(joints, np.float64)
    parents = np.asarray(parents, np.int64)
    pos, par, chi, ts = [], [], [], []
    for child, parent in enumerate(parents):
        if parent < 0:
            continue
        length = np.linalg.norm(joints[child] - joints[parent])
        if length == 0:
            continue
        count = int(np.clip(np.ceil(length / spacing), min_nodes, max_nodes))
        t = np.arange(1, count + 1) / (count + 1)
        pos.append((1 - t)[:, None] * joints[parent] + t[:, None] * joints[child])
        par.append(np.full(count, parent))
        chi.append(np.full(count, child))
        ts.append(t)
    if not pos:
        return np.zeros([0, 3]), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return (np.concatenate(pos), np.concatenate(par).astype(np.int64),
            np.concatenate(chi).astype(np.int64), np.concatenate(ts))


class InteriorInterpolator:
    """Sparse affine weights over [vertices; joints] from a Delaunay tetrahedralisation of the
    vertices, joints and bone nodes (see the module docstring, step 3)."""

    def __init__(self, vertices, joints, parents):
        vertices = np.asarray(vertices, np.float64)
        joints = np.asarray(joints, np.float64)
        self.num_vertices, self.num_joints = len(vertices), len(joints)
        positions, b_parent, b_child, b_t = bone_nodes(joints, parents)
        nodes = np.concatenate([vertices, joints, positions])
        n_direct = self.num_vertices + self.num_joints
        # Each node as (two columns, two factors); direct nodes use only their own column.
        self.node_columns = np.concatenate([
            np.stack([np.arange(n_direct)] * 2, axis=1),
            np.stack([n_direct - self.num_joints + b_parent,
                      n_direct - self.num_joints + b_child], axis=1)]).astype(np.int64)
        self.node_factors = np.concatenate([
            np.stack([np.ones(n_direct), np.zeros(n_direct)], axis=1),
            np.stack([1 - b_t, b_t], axis=1)])
        self.delaunay = scipy.spatial.Delaunay(nodes)
        self._transforms = _barycentric_transforms(nodes[self.delaunay.simplices])
        self._centroids = nodes[self.delaunay.simplices].mean(axis=1)
        self._centroid_tree = scipy.spatial.cKDTree(self._centroids)

    @property
    def num_columns(self):
        return self.num_vertices + self.num_joints

    def barycentric(self, points):
        """(simplex node ids int64 [N, 4], barycentrics float64 [N, 4], valid bool [N])."""
        points = np.asarray(points, np.float64).reshape(-1, 3)
        n = len(points)
        simplex = np.full(n, -1, np.int64)
        # Vectorised point location: try the tetrahedra with the nearest centroids (16, then
        # 128); the very few points left (inside long slivers) are checked against all
        # tetrahedra. (scipy's `find_simplex` is not used: its walk takes up to ~0.1 s per
        # point on the many co-planar / co-spherical nodes of a body mesh, and its first use
        # computes Qhull's transforms, seconds for ~10^5 tetrahedra.)
        missing = np.arange(n)
        for k in (16, 128):
            if not len(missing):
                break
            k = min(k, len(self._centroids))
            _, cand = self._centroid_tree.query(points[missing], k=k)
            cand = cand.reshape(len(missing), k)
            bary = self._bary_of(cand, points[missing, None, :])
            inside = np.all(bary >= -_BARY_TOLERANCE, axis=-1)
            first = np.argmax(inside, axis=1)
            hit = inside[np.arange(len(missing)), first]
            simplex[missing[hit]] = cand[hit, first[hit]]
            missing = missing[~hit]
        for i in missing:  # rare: check every tetrahedron
            bary = self._bary_of(np.arange(len(self._transforms)), points[i])
            inside = np.flatnonzero(np.all(bary >= -_BARY_TOLERANCE, axis=-1))
            if len(inside):
                simplex[i] = inside[0]
        found = simplex >= 0
        s = np.where(found, simplex, 0)
        bary = self._bary_of(s, points)
        with np.errstate(invalid='ignore'):
            valid = (found & np.all(np.isfinite(bary), axis=1)
                     & np.all(bary >= -_BARY_TOLERANCE, axis=1)
                     & np.all(bary <= 1 + _BARY_TOLERANCE, axis=1))
        return self.delaunay.simplices[s], np.where(valid[:, None], bary, 0.0), valid

    def _bary_of(self, simplex, points):
        transform = self._transforms[simplex]
        b3 = np.einsum('...ij,...j->...i', transform[..., :3, :], points - transform[..., 3, :])
        with np.errstate(invalid='ignore'):
            return np.concatenate([b3, 1 - b3.sum(axis=-1, keepdims=True)], axis=-1)

    def weights(self, points):
        """ELLPACK rows (columns int64 [N, K], weights float64 [N, K], valid bool [N]).

        Columns index [vertices; joints]; K <= 8; rows sorted by column, padded with (0, 0);
        invalid rows (point outside the tetrahedralisation or in a degenerate tetrahedron)
        are all padding.
        """
        simplices, bary, valid = self.barycentric(points)
        n = len(bary)
        cols = self.node_columns[simplices].reshape(n, 8)
        vals = (bary[:, :, None] * self.node_factors[simplices]).reshape(n, 8)
        # Drop negligible entries (they move a point by < 1e-8 m), incl. the tiny negative
        # barycentrics of points on a tetrahedron's face, so stored weights are positive.
        vals = np.where(np.abs(vals) < _NEGLIGIBLE_WEIGHT, 0.0, vals)
        # Merge repeated columns of a row (e.g. two nodes on the same bone) and drop zeros.
        width = self.num_columns
        keys = np.arange(n)[:, None] * width + cols
        keys = np.where(vals != 0, keys, -1).ravel()
        unique, inverse = np.unique(keys, return_inverse=True)
        sums = np.bincount(inverse, vals.ravel(), minlength=len(unique))
        keep = (unique >= 0) & (sums != 0)
        unique, sums = unique[keep], sums[keep]
        rows, columns = unique // width, unique % width
        counts = np.bincount(rows, minlength=n)
        k = max(1, int(counts.max()) if n else 1)
        position = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        out_cols = np.zeros([n, k], np.int64)
        out_vals = np.zeros([n, k])
        out_cols[rows, position] = columns
        out_vals[rows, position] = sums
        return out_cols, out_vals, valid


def build_interior(vertices, faces, joints, parents, num_points, seed=0, log=None):
    """Uniform interior points with their interpolation weights (module docstring, 1-3).

    Args:
        vertices: [V, 3] canonical vertices (float32 values are used exactly as stored).
        faces: [F, 3] triangles of the closed, outward-oriented mesh.
        joints: [J, 3] canonical joints; parents: [J] parent index per joint (-1: root).
        num_points: number of interior points N (>= 1).
        seed: random seed (the result is a deterministic function of the inputs and seed).
        log: optional callable for progress lines.
    Returns:
        (points float32 [N, 3], columns int32 [N, K], weights float32 [N, K]) with K <= 8.
    """
    num_points = int(num_points)
    if num_points < 1:
        raise ValueError(f'num_points must be >= 1, got {num_points}')
    vertices = np.asarray(np.asarray(vertices, np.float32), np.float64)
    joints = np.asarray(np.asarray(joints, np.float32), np.float64)
    faces = np.asarray(faces, np.int64)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    if signed_volume(vertices, faces) < 0:
        # Inward-facing triangles (e.g. SMPL's outward faces after the canonical frame's mirror
        # y -> -y): the winding number inside is -1, so test with the reversed orientation.
        faces = faces[:, ::-1]
    tree = WindingNumberTree(vertices, faces)
    proposal = _VoxelProposal(vertices, faces, tree)
    interpolator = InteriorInterpolator(vertices, joints, parents)
    if log:
        log(f'  inside test, proposal grid and tetrahedralisation ready '
            f'({len(interpolator.delaunay.simplices)} tetrahedra, '
            f'{time.perf_counter() - t0:.1f} s)')

    points, cols, vals = [], [], []
    have = 0
    tried = accepted = 0
    while have < num_points:
        if tried >= 200_000 and accepted == 0:
            raise ValueError('no interior points found; the mesh must be closed (bound a '
                             'volume)')
        rate = (accepted + 1) / (tried + 2)  # smoothed acceptance so far
        batch = int(min(max((num_points - have) / rate * 1.1, 256), 200_000))
        cand, needs_test = proposal.sample(rng, batch)
        inside = ~needs_test
        inside[needs_test] = tree.is_inside(cand[needs_test])
        cand = cand[inside]
        c, v, ok = interpolator.weights(cand)
        tried += batch
        accepted += int(ok.sum())
        cand, c, v = cand[ok], c[ok], v[ok]
        # The stored point is the weighted combination itself (equal to the sample up to
        # rounding), so the weights reproduce it exactly.
        nodes = np.concatenate([vertices, joints])
        points.append(np.einsum('nk,nkd->nd', v, nodes[c]))
        cols.append(c)
        vals.append(v)
        have += len(cand)
        if log and have < num_points:
            log(f'  {have}/{num_points} interior points')
    k = max(x.shape[1] for x in cols)
    cols = np.concatenate([np.pad(x, [(0, 0), (0, k - x.shape[1])]) for x in cols])[:num_points]
    vals = np.concatenate([np.pad(x, [(0, 0), (0, k - x.shape[1])]) for x in vals])[:num_points]
    points = np.concatenate(points)[:num_points]
    k = int(max(1, np.count_nonzero(vals, axis=1).max()))
    if log:
        log(f'  {num_points} interior points, acceptance {accepted / tried:.2f}, '
            f'{time.perf_counter() - t0:.1f} s')
    return (points.astype(np.float32), cols[:, :k].astype(np.int32),
            vals[:, :k].astype(np.float32))


# --------------------------------------------------------------------------------------------
# Assets of a family


def model_kinds(body_model_dir, family):
    """[(kind, model file path)] of the family's model files present, in kinds.KINDS order."""
    from nlf_tf.body_models import files

    _check_family(family)
    found = []
    for g in kinds.FAMILY_GENDERS[family]:
        try:
            found.append((f'{family}_{g}', files.find_model_file(body_model_dir, family, g)))
        except ModelFileError:
            pass
    return found


def available_families(body_model_dir):
    """The families with at least one model file in `body_model_dir`."""
    return tuple(f for f in kinds.FAMILIES if model_kinds(body_model_dir, f))


def kid_key(family):
    return f'{family}_kid_template'


def current_fingerprints(body_model_dir, family):
    """{kind: sha256, '<family>_kid_template': sha256} of the files the assets depend on.

    Raises the ModelFileError of the missing reference file if the family has no model file.
    """
    from nlf_tf.body_models import files

    found = model_kinds(body_model_dir, family)
    if not found:
        files.find_model_file(body_model_dir, family, kinds.FAMILY_GENDERS[family][-1])
    prints = {kind: files.model_fingerprint(path) for kind, path in found}
    kid = files.find_kid_template(body_model_dir, family)
    if kid is not None:
        prints[kid_key(family)] = files.model_fingerprint(kid)
    return prints


def _pad_last(array, size):
    array = np.asarray(array, np.float64)
    if array.shape[-1] >= size:
        return array[..., :size]
    return np.concatenate([array, np.zeros(array.shape[:-1] + (size - array.shape[-1],))], -1)


def rest_pelvis_terms(model):
    """(pelvis [3], shapedirs [3, 128], exprdirs [3, 10], kiddir [3]) of a loaded model dict:
    J_regressor[0] applied to the template and to each blend shape, in the model's own axes."""
    regressor = np.asarray(model['J_regressor'], np.float64)[0]
    pelvis = regressor @ np.asarray(model['v_template'], np.float64)
    shape = np.einsum('v,vcs->cs', regressor, np.asarray(model['shapedirs'], np.float64))
    expr = np.einsum('v,vcs->cs', regressor, np.asarray(model['exprdirs'], np.float64))
    kid = (np.zeros(3) if model.get('kid_shapedir') is None
           else regressor @ np.asarray(model['kid_shapedir'], np.float64))
    return (pelvis, _pad_last(shape, kinds.SHAPE_SIZE), _pad_last(expr, kinds.EXPRESSION_SIZE),
            kid)


def generate_assets(body_model_dir, family, num_interior=DEFAULT_NUM_INTERIOR, seed=0,
                    log=print):
    """Computes the assets of `family` from the model files in `body_model_dir` (module doc).

    Returns the dict that `write_assets` stores (same fields and dtypes as `load_assets`
    returns). Raises ModelFileError for missing / malformed model files.
    """
    from nlf_tf import canonical_space
    from nlf_tf.body_models import files

    _check_family(family)
    log = log or (lambda *_: None)
    t0 = time.perf_counter()
    fingerprints = current_fingerprints(body_model_dir, family)
    found = model_kinds(body_model_dir, family)
    # Models are re-read from disk: a file may have changed since this process cached it.
    files.clear_cache()
    models = {kind: files.load_body_model(body_model_dir, family, kind.rsplit('_', 1)[1])
              for kind, _ in found}
    reference = next(f'{family}_{g}' for g in REFERENCE_GENDERS if f'{family}_{g}' in models)
    model = models[reference]
    num_joints = kinds.NUM_JOINTS[family]
    log(f'{family}: canonical mesh from {model["path"]} ({model["num_vertices"]} vertices, '
        f'{len(model["faces"])} faces, {num_joints} joints)')

    vertices, joints = canonical_space.canonical_smpl(
        model, pose=np.zeros([num_joints, 3]), joint_names=kinds.JOINT_NAMES[family])
    faces = np.asarray(model['faces'], np.int32)
    points, columns, weights = build_interior(
        vertices, faces, joints, model['parents'], num_interior, seed=seed, log=log)

    terms = [rest_pelvis_terms(models[kind]) for kind, _ in found]
    assets = dict(
        format_version=FORMAT_VERSION, family=family, method=METHOD, seed=int(seed),
        vertices=vertices.astype(np.float32), joints=joints.astype(np.float32), faces=faces,
        face_probs=face_probabilities(vertices, faces).astype(np.float32),
        interior_points=points, interior_columns=columns, interior_weights=weights,
        kinds=tuple(kind for kind, _ in found),
        rest_pelvis=np.array([t[0] for t in terms], np.float32).reshape(-1, 3),
        rest_pelvis_shapedirs=np.array([t[1] for t in terms], np.float32).reshape(
            -1, 3, kinds.SHAPE_SIZE),
        rest_pelvis_exprdirs=np.array([t[2] for t in terms], np.float32).reshape(
            -1, 3, kinds.EXPRESSION_SIZE),
        rest_pelvis_kiddir=np.array([t[3] for t in terms], np.float32).reshape(-1, 3),
        fingerprints=fingerprints, num_vertices=int(len(vertices)), num_joints=num_joints)
    log(f'{family}: assets computed in {time.perf_counter() - t0:.1f} s')
    return _validate(assets, '<generated assets>', family)


def write_assets(out_dir, family, assets):
    """Writes `assets` (as from `generate_assets`) to `<out_dir>/canonical_<family>.npz`
    atomically (a temporary file in the same folder, then a rename). Returns the path."""
    path = asset_path(out_dir, family)
    assets = _validate(dict(assets), '<assets to write>', family)
    arrays = {}
    for key in _FIELDS:
        value = assets[key]
        if key == 'fingerprints':
            value = json.dumps(value, sort_keys=True)
        if key == 'kinds':
            value = np.array(value, dtype=str).reshape(-1)
        arrays[key] = np.asarray(value)
    os.makedirs(os.fspath(out_dir), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.canonical_{family}.', suffix='.tmp',
                               dir=os.fspath(out_dir))
    try:
        with os.fdopen(fd, 'wb') as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def load_assets(path_or_dir, family):
    """Reads and validates canonical assets; `path_or_dir` is the .npz file or its folder.

    Returns a dict: arrays as described in the module docstring (float32 / int32), `family`,
    `method` (str), `kinds` (tuple of str), `fingerprints` (dict), `format_version`, `seed`,
    `num_vertices`, `num_joints` (int). Raises CanonicalAssetError naming the file and field.
    """
    _check_family(family)
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        path = asset_path(path, family)
    if not os.path.isfile(path):
        raise CanonicalAssetError(path, '<file>', f'canonical assets of {family} not found; '
                                  f'create them with nlf-tf-canonical --body_model_dir=...')
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # zip / format errors come in many types
        raise CanonicalAssetError(path, '<file>', f'cannot read as .npz: {e}') from None
    raw = {}
    with archive:
        for key in _FIELDS:
            if key not in archive.files:
                raise CanonicalAssetError(path, key, 'missing; regenerate the file with '
                                                     'nlf-tf-canonical')
            try:
                raw[key] = archive[key]
            except ValueError as e:
                raise CanonicalAssetError(path, key, f'unreadable: {e}') from None
    for key in ('format_version', 'family', 'method', 'seed', 'fingerprints', 'num_vertices',
                'num_joints'):
        if raw[key].ndim != 0:
            raise CanonicalAssetError(path, key, f'must be a scalar, got shape '
                                                 f'{list(raw[key].shape)}')
        raw[key] = raw[key].item()
    if raw['format_version'] != FORMAT_VERSION:
        raise CanonicalAssetError(path, 'format_version', f'is {raw["format_version"]}, this '
                                  f'version reads {FORMAT_VERSION}; regenerate the file with '
                                  f'nlf-tf-canonical')
    try:
        raw['fingerprints'] = json.loads(raw['fingerprints'])
    except (TypeError, ValueError) as e:
        raise CanonicalAssetError(path, 'fingerprints', f'not valid JSON: {e}') from None
    if raw['kinds'].ndim != 1 or raw['kinds'].dtype.kind != 'U':
        raise CanonicalAssetError(path, 'kinds', 'must be a 1-D string array')
    raw['kinds'] = tuple(str(k) for k in raw['kinds'])
    return _validate(raw, path, family)


# Field: (dtype kind, shape with names for the sizes), in file order.
_ARRAY_FIELDS = {
    'vertices': ('f', ('V', 3)),
    'joints': ('f', ('J', 3)),
    'faces': ('i', ('F', 3)),
    'face_probs': ('f', ('F',)),
    'interior_points': ('f', ('N', 3)),
    'interior_columns': ('i', ('N', 'K')),
    'interior_weights': ('f', ('N', 'K')),
    'rest_pelvis': ('f', ('G', 3)),
    'rest_pelvis_shapedirs': ('f', ('G', 3, kinds.SHAPE_SIZE)),
    'rest_pelvis_exprdirs': ('f', ('G', 3, kinds.EXPRESSION_SIZE)),
    'rest_pelvis_kiddir': ('f', ('G', 3)),
}
_FIELDS = ('format_version', 'family', 'method', 'seed', 'num_vertices', 'num_joints', 'kinds',
           'fingerprints', *_ARRAY_FIELDS)


def _validate(assets, path, family):
    """Checks fields, dtypes, shapes and index ranges; returns the normalised dict."""
    def fail(field, message):
        raise CanonicalAssetError(path, field, message)

    for key in _FIELDS:
        if key not in assets:
            fail(key, 'missing')
    out = dict(assets)
    if out['family'] != family:
        fail('family', f'holds {out["family"]!r} assets, expected {family!r}')
    for key in ('format_version', 'seed', 'num_vertices', 'num_joints'):
        if not isinstance(out[key], (int, np.integer)) or isinstance(out[key], bool):
            fail(key, f'must be an integer, got {out[key]!r}')
        out[key] = int(out[key])
    if not isinstance(out['method'], str):
        fail('method', 'must be a string')
    fingerprints = out['fingerprints']
    if not isinstance(fingerprints, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in fingerprints.items()):
        fail('fingerprints', 'must map file keys to sha256 strings')
    kinds_here = tuple(out['kinds'])
    if not kinds_here:
        fail('kinds', 'is empty')
    for kind in kinds_here:
        if kind not in kinds.KINDS or kinds.family_of(kind) != family:
            fail('kinds', f'{kind!r} is not a kind of {family}')
    out['kinds'] = kinds_here

    sizes = {'J': kinds.NUM_JOINTS[family], 'G': len(kinds_here)}
    for key, (dtype_kind, dims) in _ARRAY_FIELDS.items():
        value = np.asarray(out[key])
        if value.dtype.kind not in ('iu' if dtype_kind == 'i' else 'f'):
            fail(key, f'must be {"integer" if dtype_kind == "i" else "floating point"}, '
                      f'got dtype {value.dtype}')
        expected = []
        ok = value.ndim == len(dims)
        for axis, dim in enumerate(dims):
            if isinstance(dim, str):
                if ok and dim not in sizes:
                    sizes[dim] = value.shape[axis]
                expected.append(sizes.get(dim, dim))
            else:
                expected.append(dim)
        if not ok or any(isinstance(e, int) and value.shape[a] != e
                         for a, e in enumerate(expected)):
            fail(key, f'must have shape [{", ".join(str(e) for e in expected)}], got '
                      f'{list(value.shape)}')
        out[key] = value.astype(np.int32 if dtype_kind == 'i' else np.float32, copy=False)
        if dtype_kind == 'f' and not np.all(np.isfinite(out[key])):
            fail(key, 'contains non-finite values')

    num_columns = sizes['V'] + sizes['J']
    if out['num_vertices'] != sizes['V']:
        fail('num_vertices', f'is {out["num_vertices"]} but vertices has {sizes["V"]} rows')
    if out['num_joints'] != sizes['J']:
        fail('num_joints', f'is {out["num_joints"]}, a {family} model has {sizes["J"]} joints')
    if sizes['N'] < 1:
        fail('interior_points', 'is empty')
    if not 1 <= sizes['K'] <= MAX_NONZEROS:
        fail('interior_columns', f'must have 1 to {MAX_NONZEROS} columns, got {sizes["K"]}')
    faces = out['faces']
    if faces.size and (faces.min() < 0 or faces.max() >= sizes['V']):
        fail('faces', f'vertex ids must be in [0, {sizes["V"]})')
    columns = out['interior_columns']
    if columns.min() < 0 or columns.max() >= num_columns:
        fail('interior_columns', f'column ids must be in [0, {num_columns}) (vertices then '
                                 f'joints)')
    probs = out['face_probs']
    if probs.min() < 0 or abs(float(probs.sum(dtype=np.float64)) - 1) > 1e-4:
        fail('face_probs', 'must be non-negative and sum to 1')
    return out


# --------------------------------------------------------------------------------------------
# Keeping the files up to date


def stale_reason(path, family, fingerprints, num_interior=None, seed=None):
    """Why the asset file at `path` must be (re)generated, or None if it is up to date.

    Up to date = readable and valid, the model files (and kid template) have the recorded
    sha256 fingerprints, and `num_interior` / `seed` match when given (None: any).
    """
    if not os.path.exists(path):
        return 'missing'
    try:
        assets = load_assets(path, family)
    except CanonicalAssetError as e:
        return f'unusable ({e})'
    if assets['fingerprints'] != fingerprints:
        old, new = assets['fingerprints'], fingerprints
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return f'model files changed ({", ".join(changed)})'
    if num_interior is not None and len(assets['interior_points']) != int(num_interior):
        return (f'has {len(assets["interior_points"])} interior points, '
                f'{int(num_interior)} requested')
    if seed is not None and assets['seed'] != int(seed):
        return f'made with seed {assets["seed"]}, seed {int(seed)} requested'
    return None


def _previous_settings(path, family):
    """(interior point count, seed) of a readable existing file, else the defaults."""
    try:
        assets = load_assets(path, family)
    except CanonicalAssetError:
        return DEFAULT_NUM_INTERIOR, 0
    return len(assets['interior_points']), assets['seed']


def ensure_assets(body_model_dir, canonical_dir=None, families=None, num_interior=None,
                  seed=None, log=print):
    """Generates the asset files that are missing or stale; returns {family: path}.

    Args:
        body_model_dir: the folder of the official model files (see `nlf_tf.body_models.files`).
        canonical_dir: where the files go (default `<body_model_dir>/canonical_assets`).
        families: families to handle (default: every family with at least one model file).
        num_interior: interior points of (re)generated files (default: the count of the file
            being replaced, else DEFAULT_NUM_INTERIOR); if given, an existing file with another
            count is regenerated.
        seed: random seed of (re)generated files (default: the seed of the file being
            replaced, else 0); if given, an existing file made with another seed is
            regenerated.
        log: callable receiving progress lines (None: silent).
    A stale file is replaced atomically by the new one; no other file is touched.
    """
    log = log or (lambda *_: None)
    body_model_dir = os.fspath(body_model_dir)
    if not os.path.isdir(body_model_dir):
        raise ModelFileError(body_model_dir, '<folder>', 'body-model folder does not exist')
    canonical_dir = (default_canonical_dir(body_model_dir) if canonical_dir is None
                     else os.fspath(canonical_dir))
    if families is None:
        families = available_families(body_model_dir)
        if not families:
            raise ModelFileError(
                body_model_dir, '<folder>', "no body-model files found; --body_model_dir "
                "expects e.g. smplx/SMPLX_NEUTRAL.npz (see README 'Body-model files')")
    else:
        families = tuple(families)
        for family in families:
            _check_family(family)
    if num_interior is not None and int(num_interior) < 1:
        raise ValueError(f'num_interior must be >= 1, got {num_interior}')

    paths = {}
    for family in families:
        path = asset_path(canonical_dir, family)
        fingerprints = current_fingerprints(body_model_dir, family)
        reason = stale_reason(path, family, fingerprints, num_interior, seed)
        if reason is None:
            log(f'{path}: up to date (kept)')
        else:
            log(f'{path}: {reason}; generating')
            t0 = time.perf_counter()
            count, seed_now = _previous_settings(path, family)
            count = count if num_interior is None else int(num_interior)
            seed_now = seed_now if seed is None else int(seed)
            assets = generate_assets(body_model_dir, family, count, seed=seed_now, log=log)
            write_assets(canonical_dir, family, assets)
            size = os.path.getsize(path) / 1e6
            log(f'{path}: wrote {", ".join(assets["kinds"])}, {assets["num_vertices"]} '
                f'vertices, {len(assets["interior_points"])} interior points '
                f'({size:.1f} MB, {time.perf_counter() - t0:.1f} s)')
        paths[family] = path
    return paths
