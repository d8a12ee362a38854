"""NumPy pinhole camera with OpenCV lens distortion, used when reading and preparing datasets.

Conventions (shared with the rest of nlf_tf):
  * camera axes: x right, y down, z forward;
  * world -> camera: ``p_cam = R (p_world - c)`` with ``R`` = `rot_world_to_cam` and ``c`` =
    `optical_center`, the camera position in WORLD METRES;
  * ``K`` is 3x3 with bottom row (0, 0, 1); pixel centres sit at integer coordinates, so the
    centre of an HxW image is ((W-1)/2, (H-1)/2);
  * distortion follows OpenCV's order (k1, k2, p1, p2, k3[, k4, k5, k6]); the 8-coefficient form
    is the rational model with radial factor
    (1 + k1 r^2 + k2 r^4 + k3 r^6) / (1 + k4 r^2 + k5 r^4 + k6 r^6);
  * `world_up` is the world direction that counts as "up"; only `turn_towards` and `reset_roll`
    use it.

Cameras are immutable in use: every transforming method returns a NEW camera. Parameters are
kept in float64 (so chains of operations do not accumulate float32 error); point-valued results
(projections, back-projections, resampled images) are returned as float32 arrays (images keep
their input dtype). Angles are in radians.
"""

import numpy as np

_DISTORTION_LENGTHS = (5, 8)


# ----------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------

def rodrigues(rotvec):
    """Rotation matrix (float64 [3, 3]) of an axis-angle vector (Rodrigues' formula).

    The axis is the direction of `rotvec`, the angle (radians, right-handed) its norm. This is the
    same convention as OpenCV's ``cv2.Rodrigues`` and the Bouguet calibration toolbox.
    """
    rotvec = np.asarray(rotvec, np.float64).reshape(-1)
    if rotvec.shape != (3,):
        raise ValueError(f'rotvec: expected 3 values, got shape {np.shape(rotvec)}')
    angle = np.linalg.norm(rotvec)
    if angle < 1e-12:
        # First-order expansion I + [r]_x is exact to machine precision here.
        return np.eye(3) + _cross_matrix(rotvec)
    axis = rotvec / angle
    kx = _cross_matrix(axis)
    return np.eye(3) + np.sin(angle) * kx + (1.0 - np.cos(angle)) * (kx @ kx)


def _cross_matrix(v):
    """Skew-symmetric matrix [v]_x with [v]_x @ w == cross(v, w)."""
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def _rot_x(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _transform(points, matrix, offset=None):
    """points [..., n] -> points @ matrix.T (+ offset), [..., m].

    Written per output component because NumPy's matmul is slow for long arrays of tiny
    vectors (this is the hot path of `reproject_image`).
    """
    columns = [points[..., j] for j in range(matrix.shape[1])]
    outputs = []
    for i in range(matrix.shape[0]):
        row = columns[0] * matrix[i, 0]
        for j in range(1, matrix.shape[1]):
            row = row + columns[j] * matrix[i, j]
        if offset is not None:
            row = row + offset[i]
        outputs.append(row)
    return np.stack(outputs, axis=-1)


def _unit(v):
    return v / np.linalg.norm(v)


def _as_points(points, dim, name):
    """float64 array [..., dim]; raises ValueError naming `name` otherwise."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim < 1 or arr.shape[-1] != dim:
        raise ValueError(f'{name}: expected an array of shape [..., {dim}], got shape {arr.shape}')
    return arr


def _single_point(point, dim, name):
    """float64 array [dim] from a single point given as [dim] or [1, dim]."""
    arr = np.asarray(point, dtype=np.float64)
    if arr.size != dim or arr.shape[-1:] != (dim,):
        raise ValueError(f'{name}: expected a single point of {dim} values, got shape {arr.shape}')
    if not np.all(np.isfinite(arr)):
        raise ValueError(f'{name}: contains non-finite values')
    return arr.reshape(dim)


def _as_matrix(value, shape, name):
    arr = np.asarray(value, dtype=np.float64)
    if len(shape) == 2 and arr.shape == (shape[0] * shape[1],):
        arr = arr.reshape(shape)  # row-major flat form, as stored in the TFRecords
    if arr.shape != shape:
        raise ValueError(f'{name}: expected shape {shape}, got {arr.shape}')
    if not np.all(np.isfinite(arr)):
        raise ValueError(f'{name}: contains non-finite values')
    return arr


def _as_imshape(imshape, name='imshape'):
    try:
        h, w = int(imshape[0]), int(imshape[1])
    except (TypeError, IndexError, ValueError):
        raise ValueError(f'{name}: expected (height, width), got {imshape!r}') from None
    if h <= 0 or w <= 0:
        raise ValueError(f'{name}: height and width must be positive, got {(h, w)}')
    return h, w


# ----------------------------------------------------------------------------------------
# Lens distortion (OpenCV model) on normalized image coordinates
# ----------------------------------------------------------------------------------------

def _padded(coeffs):
    return np.pad(coeffs, (0, 8 - len(coeffs)))


def distort_points(normalized, coeffs):
    """Applies OpenCV distortion to normalized (z = 1 plane) coordinates [N, 2], float64."""
    k1, k2, p1, p2, k3, k4, k5, k6 = _padded(coeffs)
    x, y = normalized[..., 0], normalized[..., 1]
    r2 = x * x + y * y
    radial = (((k3 * r2 + k2) * r2 + k1) * r2 + 1.0) / (((k6 * r2 + k5) * r2 + k4) * r2 + 1.0)
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return np.stack([xd, yd], axis=-1)


def _distortion_jacobian(normalized, coeffs):
    """Jacobian d(distorted)/d(normalized) as 4 arrays (dxd/dx, dxd/dy, dyd/dx, dyd/dy)."""
    k1, k2, p1, p2, k3, k4, k5, k6 = _padded(coeffs)
    x, y = normalized[..., 0], normalized[..., 1]
    r2 = x * x + y * y
    num = ((k3 * r2 + k2) * r2 + k1) * r2 + 1.0
    den = ((k6 * r2 + k5) * r2 + k4) * r2 + 1.0
    dnum = (3.0 * k3 * r2 + 2.0 * k2) * r2 + k1
    dden = (3.0 * k6 * r2 + 2.0 * k5) * r2 + k4
    radial = num / den
    dradial = (dnum * den - num * dden) / (den * den)  # derivative w.r.t. r^2
    dxx = radial + 2.0 * x * x * dradial + 2.0 * p1 * y + 6.0 * p2 * x
    dxy = 2.0 * x * y * dradial + 2.0 * p1 * x + 2.0 * p2 * y
    dyx = dxy
    dyy = radial + 2.0 * y * y * dradial + 6.0 * p1 * y + 2.0 * p2 * x
    return dxx, dxy, dyx, dyy


def undistort_points(distorted, coeffs, tol=1e-12, max_fixed_point_iters=100, newton_iters=8):
    """Inverts `distort_points` for [N, 2] float64 normalized coordinates.

    Fixed-point iteration x <- (x_d - tangential(x)) / radial(x) (the scheme OpenCV uses, but run
    to convergence instead of OpenCV's default 5 steps), followed by a few Newton steps that
    polish points the contraction left unconverged (strong distortion near the image corners).
    `tol` is in normalized units; 1e-12 is far below 1e-6 px for any realistic focal length.
    Points without a preimage (outside the region where the model is invertible) become NaN.
    """
    k1, k2, p1, p2, k3, k4, k5, k6 = _padded(coeffs)
    xd, yd = distorted[..., 0], distorted[..., 1]
    x, y = xd.copy(), yd.copy()
    for _ in range(max_fixed_point_iters):
        r2 = x * x + y * y
        radial = (((k3 * r2 + k2) * r2 + k1) * r2 + 1.0) / (((k6 * r2 + k5) * r2 + k4) * r2 + 1.0)
        dx = 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
        dy = p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
        with np.errstate(divide='ignore', invalid='ignore'):
            x_new = (xd - dx) / radial
            y_new = (yd - dy) / radial
        change = np.maximum(np.abs(x_new - x), np.abs(y_new - y))
        x, y = x_new, y_new
        if not np.any(change > tol):
            break

    result = np.stack([x, y], axis=-1)
    for _ in range(newton_iters):
        residual = distort_points(result, coeffs) - distorted
        if not np.any(np.abs(residual) > tol):
            break
        a, b, c, d = _distortion_jacobian(result, coeffs)
        det = a * d - b * c
        with np.errstate(divide='ignore', invalid='ignore'):
            step_x = (d * residual[..., 0] - b * residual[..., 1]) / det
            step_y = (-c * residual[..., 0] + a * residual[..., 1]) / det
        step = np.stack([step_x, step_y], axis=-1)
        # Only update where the step is usable, never turn a finite estimate into NaN.
        usable = np.all(np.isfinite(step), axis=-1, keepdims=True)
        result = np.where(usable, result - step, result)

    # Distorted points beyond the lens model's fold (where r_d(r) stops increasing) have no
    # preimage; report them as NaN instead of a diverged iterate.
    with np.errstate(invalid='ignore', over='ignore'):
        residual = np.max(np.abs(distort_points(result, coeffs) - distorted), axis=-1)
        failed = ~(residual <= max(1e3 * tol, 1e-9))
    return np.where(failed[..., np.newaxis], np.nan, result)


# ----------------------------------------------------------------------------------------
# Camera
# ----------------------------------------------------------------------------------------

class Camera:
    """Pinhole camera: intrinsics K, world->camera rotation R, optical centre c, distortion.

    Args:
        intrinsic_matrix: 3x3 K, bottom row (0, 0, 1) (a row-major flat [9] is accepted too).
        rot_world_to_cam: 3x3 orthogonal R (a horizontally flipped camera has det -1); or flat
            [9], row-major.
        optical_center: camera position in world metres, shape [3].
        distortion: None/empty, or 5 or 8 OpenCV coefficients (k1, k2, p1, p2, k3[, k4, k5, k6]).
            All-zero coefficients are stored as None.
        world_up: world direction considered "up" (shape [3], non-zero).
    """

    def __init__(self, intrinsic_matrix, rot_world_to_cam=None, optical_center=None,
                 distortion=None, world_up=(0, -1, 0)):
        self.intrinsic_matrix = _as_matrix(intrinsic_matrix, (3, 3), 'intrinsic_matrix')
        if not np.allclose(self.intrinsic_matrix[2], [0, 0, 1], atol=1e-6):
            raise ValueError(f'intrinsic_matrix: bottom row must be (0, 0, 1), '
                             f'got {self.intrinsic_matrix[2]}')
        if abs(np.linalg.det(self.intrinsic_matrix)) < 1e-12:
            raise ValueError('intrinsic_matrix: singular (zero focal length?)')

        self.rot_world_to_cam = (
            np.eye(3) if rot_world_to_cam is None
            else _as_matrix(rot_world_to_cam, (3, 3), 'rot_world_to_cam'))
        if not np.allclose(self.rot_world_to_cam @ self.rot_world_to_cam.T, np.eye(3),
                           atol=1e-4):
            raise ValueError('rot_world_to_cam: not an orthogonal matrix')

        self.optical_center = (
            np.zeros(3) if optical_center is None
            else _as_matrix(np.reshape(optical_center, -1), (3,), 'optical_center'))

        if distortion is None:
            self.distortion = None
        else:
            dist = np.asarray(distortion, np.float64).reshape(-1)
            if dist.size == 0 or np.all(dist == 0):
                self.distortion = None
            elif dist.size not in _DISTORTION_LENGTHS:
                raise ValueError(f'distortion: expected 5 or 8 coefficients '
                                 f'(k1,k2,p1,p2,k3[,k4,k5,k6]), got {dist.size}')
            elif not np.all(np.isfinite(dist)):
                raise ValueError('distortion: contains non-finite values')
            else:
                self.distortion = dist

        self.world_up = _as_matrix(np.reshape(world_up, -1), (3,), 'world_up')
        if np.linalg.norm(self.world_up) == 0:
            raise ValueError('world_up: must be a non-zero vector')

    # -- construction ------------------------------------------------------------------------

    def copy(self):
        return Camera(self.intrinsic_matrix.copy(), self.rot_world_to_cam.copy(),
                      self.optical_center.copy(),
                      None if self.distortion is None else self.distortion.copy(),
                      self.world_up.copy())

    def _replace(self, **changes):
        cam = self.copy()
        for key, value in changes.items():
            setattr(cam, key, value)
        return cam

    @classmethod
    def from_fov(cls, fov_degrees, imshape, world_up=(0, -1, 0)):
        """Camera with field of view `fov_degrees` along the longer side of `imshape` (H, W):
        f = max(H, W) / (2 tan(fov/2)), principal point at the image centre, identity pose."""
        h, w = _as_imshape(imshape)
        if not 0 < fov_degrees < 180:
            raise ValueError(f'fov_degrees: must be in (0, 180), got {fov_degrees}')
        f = max(h, w) / (2.0 * np.tan(np.deg2rad(fov_degrees) / 2.0))
        intrinsics = np.array([[f, 0.0, (w - 1) / 2], [0.0, f, (h - 1) / 2], [0.0, 0.0, 1.0]])
        return cls(intrinsics, world_up=world_up)

    @classmethod
    def from_bouguet(cls, KK, kc, om_ext, T_ext, units='mm', world_up=(0, 1, 0)):
        """Camera from Bouguet calibration-toolbox parameters (e.g. MADS ``Calib_Cam*.mat``).

        The toolbox maps world points by ``p_cam = Rodrigues(om_ext) p_world + T_ext``, hence the
        optical centre is ``-R^T T_ext``; it is converted from `units` ('mm' or 'm') to metres.
        `kc` (k1, k2, p1, p2, k3) has OpenCV's order. The default `world_up` (0, 1, 0) is the
        MADS convention (+y is up in its world frame).
        """
        scale = {'mm': 1e-3, 'm': 1.0}.get(units)
        if scale is None:
            raise ValueError(f"units: expected 'mm' or 'm', got {units!r}")
        intrinsics = _as_matrix(KK, (3, 3), 'KK')
        rot = rodrigues(_as_matrix(np.reshape(om_ext, -1), (3,), 'om_ext'))
        trans = _as_matrix(np.reshape(T_ext, -1), (3,), 'T_ext')
        center = -rot.T @ trans * scale
        return cls(intrinsics, rot, center, distortion=kc, world_up=world_up)

    # -- coordinate transforms -----------------------------------------------------------------

    def _world_to_camera(self, points):
        return _transform(points - self.optical_center, self.rot_world_to_cam)

    def _camera_to_image(self, points):
        with np.errstate(divide='ignore', invalid='ignore'):
            normalized = points[..., :2] / points[..., 2:]
        if self.distortion is not None:
            normalized = distort_points(normalized, self.distortion)
        k = self.intrinsic_matrix
        return _transform(normalized, k[:2, :2], k[:2, 2])

    def _image_to_normalized(self, points):
        k = self.intrinsic_matrix
        # Inverse of the affine [fx s cx; 0 fy cy] part (handles skew).
        normalized = _transform(points - k[:2, 2], np.linalg.inv(k[:2, :2]))
        if self.distortion is not None:
            normalized = undistort_points(normalized, self.distortion)
        return normalized

    def _image_to_camera(self, points, depth=1.0):
        normalized = self._image_to_normalized(points)
        homog = np.concatenate([normalized, np.ones_like(normalized[..., :1])], axis=-1)
        return homog * np.asarray(depth, np.float64)[..., np.newaxis]

    def world_to_camera(self, points):
        """World points [..., 3] (metres) -> camera coordinates [..., 3], float32."""
        return self._world_to_camera(_as_points(points, 3, 'points')).astype(np.float32)

    def camera_to_world(self, points):
        """Camera coordinates [..., 3] -> world points [..., 3], float32."""
        points = _as_points(points, 3, 'points')
        return _transform(points, self.rot_world_to_cam.T, self.optical_center).astype(np.float32)

    def camera_to_image(self, points_cam):
        """Camera coordinates [..., 3] -> pixel coordinates [..., 2] (with distortion)."""
        return self._camera_to_image(_as_points(points_cam, 3, 'points_cam')).astype(np.float32)

    def world_to_image(self, points):
        """World points [..., 3] -> pixel coordinates [..., 2] (with distortion)."""
        points = _as_points(points, 3, 'points')
        return self._camera_to_image(self._world_to_camera(points)).astype(np.float32)

    def image_to_camera(self, points2d, depth=1):
        """Pixels [..., 2] -> camera points [..., 3] at camera-space z = `depth` (scalar or
        broadcastable to [...]). Distortion is inverted iteratively (accuracy << 1e-6 px)."""
        points2d = _as_points(points2d, 2, 'points2d')
        return self._image_to_camera(points2d, depth).astype(np.float32)

    def image_to_world(self, points2d, depth=1):
        """Pixels [..., 2] -> world points [..., 3] at camera-space z = `depth`."""
        points2d = _as_points(points2d, 2, 'points2d')
        cam = self._image_to_camera(points2d, depth)
        return _transform(cam, self.rot_world_to_cam.T, self.optical_center).astype(np.float32)

    def reproject_points(self, points2d, new_camera):
        """Maps pixels [..., 2] of an image taken by this camera to the pixels of the same rays in
        `new_camera`, which must share the optical centre. Returns float32 [..., 2]."""
        points2d = _as_points(points2d, 2, 'points2d')
        return self._reproject_points(points2d, new_camera).astype(np.float32)

    def _reproject_points(self, points2d, new_camera):
        self._check_same_center(new_camera, 'reproject_points')
        relative_rotation = new_camera.rot_world_to_cam @ self.rot_world_to_cam.T
        rays_new = _transform(self._image_to_camera(points2d), relative_rotation)
        return new_camera._camera_to_image(rays_new)

    # -- camera transformations (all return new cameras) ---------------------------------------

    def turn_towards(self, target_image_point=None, target_world_point=None):
        """Re-aims the optical axis through `target_image_point` (pixel, back-projected with this
        camera, distortion included) or through `target_world_point` (metres).

        The result is upright with respect to `world_up` and has zero roll and no horizontal flip:
        new x = forward x up (normalized), new y = forward x new x (so y points "down", i.e.
        against world_up), new z = forward. If forward is (anti)parallel to world_up the
        horizon is undefined; then the current camera x axis (made orthogonal to forward) is kept
        as the new x axis, or, failing that, any axis perpendicular to forward.
        """
        if (target_image_point is None) == (target_world_point is None):
            raise ValueError('turn_towards: give exactly one of target_image_point and '
                             'target_world_point')
        if target_image_point is not None:
            point = _single_point(target_image_point, 2, 'target_image_point')
            forward = self._image_to_camera(point) @ self.rot_world_to_cam
        else:
            point = _single_point(target_world_point, 3, 'target_world_point')
            forward = point - self.optical_center
        if not np.all(np.isfinite(forward)) or np.linalg.norm(forward) == 0:
            raise ValueError('turn_towards: target does not define a viewing direction')
        forward = _unit(forward)
        return self._replace(rot_world_to_cam=_upright_rotation(
            forward, self.world_up, fallback_right=self.rot_world_to_cam[0]))

    def reset_roll(self):
        """Keeps the optical axis but rolls the camera upright w.r.t. `world_up` (also removes a
        horizontal flip)."""
        return self.turn_towards(target_world_point=self.optical_center +
                                 self.rot_world_to_cam[2])

    def undistort(self):
        """Same camera without lens distortion (same K); images must be resampled to match."""
        return self._replace(distortion=None)

    def square_pixels(self):
        """Makes fx = fy = (fx + fy) / 2 by scaling the image rows/columns about the pixel origin
        (as cameralib does: K <- diag(f/fx, f/fy, 1) K, so the principal point scales too)."""
        k = self.intrinsic_matrix
        fmean = 0.5 * (k[0, 0] + k[1, 1])
        scale = np.diag([fmean / k[0, 0], fmean / k[1, 1], 1.0])
        return self._replace(intrinsic_matrix=scale @ k)

    def zoom(self, factor):
        """Multiplies the focal lengths (K[:2, :2]) by `factor` (scalar or (fx, fy) pair); the
        principal point stays, so the image scales about the principal point."""
        factor = np.broadcast_to(np.asarray(factor, np.float64).reshape(-1), (2,))
        k = self.intrinsic_matrix.copy()
        k[:2, :2] *= factor[:, np.newaxis]
        return self._replace(intrinsic_matrix=k)

    def scale_output(self, factor):
        """Multiplies the first two rows of K by `factor` (scalar or (x, y) pair): the image is
        scaled about the pixel origin (0, 0)."""
        factor = np.broadcast_to(np.asarray(factor, np.float64).reshape(-1), (2,))
        k = self.intrinsic_matrix.copy()
        k[:2] *= factor[:, np.newaxis]
        return self._replace(intrinsic_matrix=k)

    def shift_image(self, offset):
        """Adds `offset` (dx, dy) to the principal point: image content moves by +offset."""
        offset = _single_point(offset, 2, 'offset')
        k = self.intrinsic_matrix.copy()
        k[:2, 2] += offset
        return self._replace(intrinsic_matrix=k)

    def center_principal_point(self, imshape):
        """Principal point := ((W-1)/2, (H-1)/2) for `imshape` = (H, W)."""
        h, w = _as_imshape(imshape)
        k = self.intrinsic_matrix.copy()
        k[:2, 2] = [(w - 1) / 2, (h - 1) / 2]
        return self._replace(intrinsic_matrix=k)

    def shift_to_center(self, desired_center_image_point, imshape):
        """Shifts the principal point so that the content now at `desired_center_image_point`
        appears at the centre ((W-1)/2, (H-1)/2) of an `imshape` = (H, W) image."""
        h, w = _as_imshape(imshape)
        point = _single_point(desired_center_image_point, 2, 'desired_center_image_point')
        return self.shift_image(np.array([(w - 1) / 2, (h - 1) / 2]) - point)

    def rotate(self, yaw=0.0, pitch=0.0, roll=0.0):
        """Rotates the camera by intrinsic y-x'-z'' Euler angles (radians) relative to its own
        frame, as cameralib (camera rotation C = Ry(yaw) Rx(pitch) Rz(roll), R <- C^T R).

        Sign conventions (camera axes x right, y down, z forward): positive yaw turns the view to
        the right, positive pitch tilts it up, positive roll turns the camera's x axis towards its
        y axis, which makes the IMAGE CONTENT rotate COUNTER-CLOCKWISE as displayed (y down): a
        point on the right of the principal point moves up.
        """
        camera_rotation = _rot_y(yaw) @ _rot_x(pitch) @ _rot_z(roll)
        return self._replace(rot_world_to_cam=camera_rotation.T @ self.rot_world_to_cam)

    def horizontal_flip(self):
        """Mirror camera: negates the first row of R, so image x coordinates flip about the
        principal point (det R becomes -1)."""
        rot = self.rot_world_to_cam.copy()
        rot[0] *= -1
        return self._replace(rot_world_to_cam=rot)

    # -- getters -------------------------------------------------------------------------------

    @property
    def extrinsic_matrix(self):
        """4x4 world->camera matrix [R | -R c; 0 0 0 1], translation in metres (float64)."""
        ext = np.eye(4)
        ext[:3, :3] = self.rot_world_to_cam
        ext[:3, 3] = -self.rot_world_to_cam @ self.optical_center
        return ext

    def has_distortion(self):
        return self.distortion is not None

    def allclose(self, other, atol=1e-6):
        dist_a = np.zeros(8) if self.distortion is None else _padded(self.distortion)
        dist_b = np.zeros(8) if other.distortion is None else _padded(other.distortion)
        return (np.allclose(self.intrinsic_matrix, other.intrinsic_matrix, atol=atol) and
                np.allclose(self.rot_world_to_cam, other.rot_world_to_cam, atol=atol) and
                np.allclose(self.optical_center, other.optical_center, atol=atol) and
                np.allclose(dist_a, dist_b, atol=atol))

    def __repr__(self):
        return (f'Camera(intrinsic_matrix={self.intrinsic_matrix.tolist()}, '
                f'rot_world_to_cam={self.rot_world_to_cam.tolist()}, '
                f'optical_center={self.optical_center.tolist()}, '
                f'distortion={None if self.distortion is None else self.distortion.tolist()}, '
                f'world_up={self.world_up.tolist()})')

    # -- image-to-image mappings ---------------------------------------------------------------

    def _check_same_center(self, other, what, atol=1e-5):
        if not isinstance(other, Camera):
            raise ValueError(f'{what}: expected a Camera, got {type(other).__name__}')
        if not np.allclose(self.optical_center, other.optical_center, rtol=0, atol=atol):
            raise ValueError(
                f'{what}: the cameras must share the optical centre (a pure rotation/zoom can be '
                f'expressed as an image warp, a translation cannot); got optical_center '
                f'{self.optical_center.tolist()} vs {other.optical_center.tolist()}')

    def homography_to(self, other):
        """3x3 float64 H mapping homogeneous pixels of this camera to pixels of `other`:
        H = K_o R_o R_s^T K_s^-1. Both cameras must be distortion-free and share the optical
        centre."""
        self._check_same_center(other, 'homography_to')
        if self.distortion is not None or other.distortion is not None:
            raise ValueError('homography_to: both cameras must be distortion-free (call '
                             'undistort() and resample the image first)')
        return (other.intrinsic_matrix @ other.rot_world_to_cam @ self.rot_world_to_cam.T @
                np.linalg.inv(self.intrinsic_matrix))

    def reproject_image(self, image, new_camera, out_shape, interpolation='linear',
                        border_value=0, antialias_factor=1):
        """Resamples `image` (taken by this camera) into the view of `new_camera`.

        For every output pixel the ray of `new_camera` is mapped into this camera (distortion of
        both cameras included) and the input is sampled there: 'linear' = bilinear, 'nearest'.
        Samples whose neighbours lie outside the input (or behind this camera) use
        `border_value` (scalar or per channel), blended like OpenCV's BORDER_CONSTANT. With
        `antialias_factor` a > 1 the output is rendered at a times the size and box-filtered
        down.

        Args:
            image: [H, W] or [H, W, C] array (any real dtype; integer outputs are rounded and
                clipped to the dtype's range).
            new_camera: target Camera with the same optical centre.
            out_shape: (height, width) of the output.
        Returns:
            Array [out_h, out_w(, C)] of the input dtype.
        """
        image = np.asarray(image)
        if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f'image: expected shape [H, W] or [H, W, C], got {image.shape}')
        if interpolation not in ('linear', 'nearest'):
            raise ValueError(f"interpolation: expected 'linear' or 'nearest', "
                             f"got {interpolation!r}")
        out_h, out_w = _as_imshape(out_shape, 'out_shape')
        if int(antialias_factor) != antialias_factor or antialias_factor < 1:
            raise ValueError(f'antialias_factor: expected a positive integer, '
                             f'got {antialias_factor}')
        a = int(antialias_factor)
        self._check_same_center(new_camera, 'reproject_image')

        if a > 1:
            # Pixel (i, j) of the a-times larger image covers original pixel (i + 0.5)/a - 0.5.
            new_camera = new_camera.scale_output(a).shift_image(((a - 1) / 2, (a - 1) / 2))
        render_h, render_w = out_h * a, out_w * a

        ys, xs = np.mgrid[:render_h, :render_w]
        new_pixels = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float64)
        rays_new = new_camera._image_to_camera(new_pixels)
        rays_old = _transform(rays_new, self.rot_world_to_cam @ new_camera.rot_world_to_cam.T)
        in_front = rays_old[:, 2] > 0
        old_pixels = self._camera_to_image(rays_old)
        old_pixels[~in_front] = -1e9  # forces the border value

        src = image.astype(np.float64)
        if src.ndim == 2:
            src = src[..., np.newaxis]
        border = np.asarray(border_value, np.float64)
        if border.ndim > 1 or border.size not in (1, src.shape[-1]):
            raise ValueError(f'border_value: expected a scalar or one value per channel '
                             f'({src.shape[-1]}), got shape {border.shape}')
        sampled = _sample(src, old_pixels, interpolation, border.reshape(-1))
        sampled = sampled.reshape(render_h, render_w, src.shape[-1])
        if a > 1:
            sampled = sampled.reshape(out_h, a, out_w, a, -1).mean(axis=(1, 3))
        if image.ndim == 2:
            sampled = sampled[..., 0]
        if np.issubdtype(image.dtype, np.integer):
            info = np.iinfo(image.dtype)
            sampled = np.clip(np.round(sampled), info.min, info.max)
        return sampled.astype(image.dtype)


def _upright_rotation(forward, world_up, fallback_right):
    """World->camera rotation with z = forward, x = unit(forward x up), y = z x x."""
    right = np.cross(forward, world_up)
    if np.linalg.norm(right) < 1e-9 * np.linalg.norm(world_up):
        # Looking straight up/down: keep the previous horizontal direction if possible.
        right = fallback_right - np.dot(fallback_right, forward) * forward
        if np.linalg.norm(right) < 1e-9:
            helper = np.eye(3)[np.argmin(np.abs(forward))]
            right = np.cross(forward, helper)
    right = _unit(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward])


def _sample(src, points, interpolation, border_value):
    """Samples src [H, W, C] at float pixel positions points [N, 2] (x, y) -> [N, C]."""
    h, w, c = src.shape
    flat = src.reshape(-1, c)
    x, y = points[:, 0], points[:, 1]
    finite = np.isfinite(x) & np.isfinite(y)
    x = np.where(finite, x, -1e9)
    y = np.where(finite, y, -1e9)

    if interpolation == 'nearest':
        xi = np.floor(x + 0.5)
        yi = np.floor(y + 0.5)
        valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        idx = (np.clip(yi, 0, h - 1) * w + np.clip(xi, 0, w - 1)).astype(np.int64)
        return np.where(valid[:, np.newaxis], flat[idx], border_value)

    # Clamp far-away coordinates first so the int conversion cannot overflow.
    x = np.clip(x, -2.0, w + 1.0)
    y = np.clip(y, -2.0, h + 1.0)
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = (x - x0)[:, np.newaxis]
    fy = (y - y0)[:, np.newaxis]
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    result = np.zeros((len(x), c))
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xx = x0 + dx
            yy = y0 + dy
            valid = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
            idx = np.clip(yy, 0, h - 1) * w + np.clip(xx, 0, w - 1)
            values = np.where(valid[:, np.newaxis], flat[idx], border_value)
            result += wx * wy * values
    return result


def look_at_box(camera, box, output_side):
    """Camera of a square `output_side` crop centred on `box` (NLF's `look_at_box`, spec §7.1).

    1. Turn `camera` towards the box centre (upright, zero roll), drop distortion, make pixels
       square.
    2. Reproject the midpoints of the box's two SHORT sides (top/bottom for a tall box with
       w < h, else left/right) from `camera` into that camera; their distance d is the long side
       of the box as seen by the turned camera.
    3. Zoom by output_side / d (so the long side spans output_side pixels) and put the principal
       point at ((S-1)/2, (S-1)/2). As the optical axis passes through the box centre, the box
       centre lands exactly at the crop centre.

    Args:
        camera: Camera of the source image.
        box: x, y, w, h in source pixels (w, h > 0).
        output_side: S, the side of the square output in pixels.
    Returns:
        The crop Camera (distortion-free); resample with camera.reproject_image(...).
    """
    box = np.asarray(box, np.float64).reshape(-1)
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        raise ValueError(f'box: expected 4 finite values (x, y, w, h), got {np.asarray(box)}')
    if box[2] <= 0 or box[3] <= 0:
        raise ValueError(f'box: width and height must be positive, got {box[2:].tolist()}')
    if not output_side > 0:
        raise ValueError(f'output_side: must be positive, got {output_side}')

    center = box[:2] + box[2:] / 2
    if box[2] < box[3]:
        half = np.array([0.0, box[3] / 2])
    else:
        half = np.array([box[2] / 2, 0.0])
    side_midpoints = np.stack([center - half, center + half])

    cam = camera.turn_towards(target_image_point=center).undistort().square_pixels()
    new_midpoints = camera._reproject_points(side_midpoints, cam)
    seen_side = np.linalg.norm(new_midpoints[0] - new_midpoints[1])
    return cam.zoom(output_side / seen_side).center_principal_point((output_side, output_side))
