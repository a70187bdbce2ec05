"""Float64 numpy derivations used as oracles by the geometry tests (independent of the package)."""
import numpy as np


def axis_angle_quat(axis, angle):
  axis = np.asarray(axis, np.float64)
  axis = axis / np.linalg.norm(axis)
  return np.concatenate([[np.cos(angle / 2)], np.sin(angle / 2) * axis])


def rodrigues(axis, angle):
  """Rotation matrix of `angle` radians about `axis` (right-handed)."""
  axis = np.asarray(axis, np.float64)
  axis = axis / np.linalg.norm(axis)
  k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
  return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def quat_rotmat(q):
  """Rotation of a (non-unit) quaternion via its axis-angle form."""
  q = np.asarray(q, np.float64) / np.linalg.norm(q)
  angle = 2 * np.arctan2(np.linalg.norm(q[1:]), q[0])
  if np.linalg.norm(q[1:]) == 0:
    return np.eye(3)
  return rodrigues(q[1:], angle)


def c2w(cam):
  m = np.eye(4)
  m[:3, :3] = quat_rotmat(cam[:4])
  m[:3, 3] = cam[4:7]
  return m


def slerp(q0, q1, f):
  """Textbook slerp of unit quaternions along the shorter arc."""
  q0 = np.asarray(q0, np.float64) / np.linalg.norm(q0)
  q1 = np.asarray(q1, np.float64) / np.linalg.norm(q1)
  if q0 @ q1 < 0:
    q1 = -q1
  theta = np.arccos(np.clip(q0 @ q1, -1, 1))
  if theta < 1e-12:
    return q0
  return (np.sin((1 - f) * theta) * q0 + np.sin(f * theta) * q1) / np.sin(theta)


def rays(cam, height, width, uv_offset=None):
  """Pinhole rays: origin t, direction R·((u − c_x)/f_x, −(v − c_y)/f_y, −1), normalised."""
  cam = np.asarray(cam, np.float64)
  fx, fy, cx, cy = cam[7] * width, cam[8] * height, cam[9] * width, cam[10] * height
  rotation = quat_rotmat(cam[:4])
  origins = np.zeros((height, width, 3))
  dirs = np.zeros((height, width, 3))
  for row in range(height):
    for col in range(width):
      du, dv = (0.0, 0.0) if uv_offset is None else uv_offset[row, col]
      u, v = col + 0.5 + du * cx, row + 0.5 + dv * cy
      d = rotation @ np.array([(u - cx) / fx, -(v - cy) / fy, -1.0])
      dirs[row, col] = d / np.linalg.norm(d)
      origins[row, col] = cam[4:7]
  return origins, dirs


def random_cameras(rng, n):
  """n cameras with random non-unit quaternions, positions and plausible normalised intrinsics."""
  quat = rng.normal(size=(n, 4)) * rng.uniform(0.3, 3.0, size=(n, 1))
  position = rng.normal(size=(n, 3)) * 2
  intrinsics = np.stack([rng.uniform(0.4, 1.2, n), rng.uniform(0.6, 1.5, n),
                         rng.uniform(0.4, 0.6, n), rng.uniform(0.4, 0.6, n)], axis=-1)
  return np.concatenate([quat, position, intrinsics], axis=-1)
