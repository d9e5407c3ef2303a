"""Synthetic vessels with exact signed distance functions, and a CT-like volume of an aneurysm.

A vessel is a union of "round cones" (convex hulls of two balls) along a centreline with a radius per
node. The round cone's SDF is exact, so the union's zero level set is exact and its SDF (the minimum
over round cones) is exact outside and a valid, 1-Lipschitz bound inside. Coordinates are millimetres
in RAS (x right, y anterior, z superior, z up along the aorta). Grids are indexed [k, j, i] (z, y, x),
voxel [0, 0, 0] lies at `origin` (x, y, z) and `spacing` is (sx, sy, sz).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import nrrd
import numpy as np
import vtk
from scipy import ndimage
from scipy.spatial.distance import cdist
from skimage import measure

from .errors import InputError
from .files import atomic_output
from .mesh import polydata_from_arrays

_CHUNK = 32768  # points per block of work in `Phantom.sdf`
_BLOCK = 8  # voxels per side of the blocks that `Phantom.sdf_grid` skips or evaluates together
_MAX_VOXELS = 60_000_000


@dataclass(eq=False)
class Tube:
    """A centreline of K nodes (K, 3) in mm with a radius per node (K,); one node makes a ball."""

    nodes: np.ndarray
    radii: np.ndarray

    def __post_init__(self):
        self.nodes = np.atleast_2d(np.asarray(self.nodes, dtype=np.float64))
        self.radii = np.atleast_1d(np.asarray(self.radii, dtype=np.float64))
        if self.nodes.ndim != 2 or self.nodes.shape[1] != 3 or len(self.nodes) == 0:
            raise InputError(f"tube nodes must have shape (K, 3) with K >= 1, got {self.nodes.shape}")
        if self.radii.shape != (len(self.nodes),):
            raise InputError(f"tube radii must have shape ({len(self.nodes)},), got {self.radii.shape}")
        if not (np.all(np.isfinite(self.nodes)) and np.all(np.isfinite(self.radii)) and np.all(self.radii > 0)):
            raise InputError("tube nodes must be finite and radii finite and > 0")


def _round_cone_sdf(points: np.ndarray, a: np.ndarray, b: np.ndarray, r1: float, r2: float) -> np.ndarray:
    """Exact SDF of the convex hull of ball(a, r1) and ball(b, r2) (Inigo Quilez's sdRoundCone)."""
    ba = b - a
    l2 = float(ba @ ba)
    rr = r1 - r2
    a2 = l2 - rr * rr
    if a2 <= 1e-9 * max(l2, 1.0):  # one ball holds the other: the hull is that ball
        centre, radius = (a, r1) if r1 >= r2 else (b, r2)
        return np.linalg.norm(points - centre, axis=1) - radius
    pa = points - a
    y = pa @ ba
    z = y - l2
    x2 = np.maximum(l2 * (l2 * np.einsum("ij,ij->i", pa, pa) - y * y), 0.0)  # |pa*l2 - ba*y|^2
    k = np.sign(rr) * rr * rr * x2
    distance = (np.sqrt(x2 * a2 / l2) + y * rr) / l2 - r1
    near_a = np.sign(y) * a2 * y * y * l2 < k
    distance[near_a] = np.linalg.norm(pa[near_a], axis=1) - r1
    near_b = np.sign(z) * a2 * z * z * l2 > k
    distance[near_b] = np.linalg.norm(points[near_b] - b, axis=1) - r2
    return distance


def _as_points(points) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"points must have shape (N, 3), got {points.shape}")
    return points


def checked_bounds(bounds) -> np.ndarray:
    """Bounds as a float array [xmin, xmax, ymin, ymax, zmin, zmax]; InputError unless finite and ordered."""
    bounds = np.asarray(bounds, dtype=np.float64)
    if bounds.shape != (6,) or not np.all(np.isfinite(bounds)) or np.any(bounds[1::2] < bounds[0::2]):
        raise InputError(f"bounds must be finite [xmin, xmax, ymin, ymax, zmin, zmax], got {bounds.tolist()}")
    return bounds


def checked_grid(shape, origin, spacing):
    """(shape (nz, ny, nx) ints, origin (x, y, z), spacing (sx, sy, sz)) arrays; InputError if malformed."""
    shape = np.asarray(shape, dtype=int)
    origin = np.asarray(origin, dtype=np.float64)
    spacing = np.asarray(spacing, dtype=np.float64)
    if shape.shape != (3,) or np.any(shape < 1) or origin.shape != (3,) or spacing.shape != (3,) \
            or not np.all(np.isfinite(origin)) or not np.all(spacing > 0):
        raise InputError("grid needs shape (nz, ny, nx) >= 1, origin (x, y, z) and spacing (sx, sy, sz) > 0")
    return shape, origin, spacing


def grid_over_bounds(bounds, voxel_mm: float, margin_voxels: int, max_voxels: Optional[float] = _MAX_VOXELS):
    """(shape (nz, ny, nx), origin, spacing) of an isotropic grid centred on bounds
    [xmin, xmax, ymin, ymax, zmin, zmax] with `margin_voxels` beyond them on every side; InputError
    past `max_voxels` (None: no limit)."""
    bounds = checked_bounds(bounds)
    if not voxel_mm > 0:
        raise InputError(f"voxel size must be > 0 mm, got {voxel_mm}")
    lower, upper = bounds[0::2], bounds[1::2]
    counts = np.ceil((upper - lower) / voxel_mm).astype(int) + 1 + 2 * margin_voxels
    if max_voxels is not None and np.prod(counts.astype(float)) > max_voxels:
        raise InputError(f"a {voxel_mm} mm grid over these bounds has {counts} voxels: use a larger voxel size")
    origin = 0.5 * (lower + upper) - 0.5 * (counts - 1) * voxel_mm
    return tuple(int(n) for n in counts[::-1]), origin, np.full(3, float(voxel_mm))


@dataclass(eq=False)
class Phantom:
    """The union of `tubes`; `sdf` is negative inside."""

    name: str
    tubes: List[Tube]
    _meshes: Dict[float, vtk.vtkPolyData] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.tubes or not all(isinstance(tube, Tube) for tube in self.tubes):
            raise InputError(f"phantom {self.name!r} needs a non-empty list of Tube")
        starts, ends, r_starts, r_ends = [], [], [], []
        for tube in self.tubes:
            last = max(len(tube.nodes) - 1, 1)
            starts.append(tube.nodes[:last])
            ends.append(tube.nodes[-last:])
            r_starts.append(tube.radii[:last])
            r_ends.append(tube.radii[-last:])
        self._a, self._b = np.concatenate(starts), np.concatenate(ends)
        self._r1, self._r2 = np.concatenate(r_starts), np.concatenate(r_ends)
        # a ball around each round cone (lower bounds) and the node balls inside the union (upper bounds)
        self._bound_centres = 0.5 * (self._a + self._b)
        self._bound_radii = 0.5 * np.linalg.norm(self._b - self._a, axis=1) + np.maximum(self._r1, self._r2)
        self._nodes = np.concatenate([tube.nodes for tube in self.tubes])
        self._node_radii = np.concatenate([tube.radii for tube in self.tubes])

    @property
    def bounds(self) -> np.ndarray:
        """[xmin, xmax, ymin, ymax, zmin, zmax] of the surface (exact: the node balls' box)."""
        lower = (self._nodes - self._node_radii[:, None]).min(axis=0)
        upper = (self._nodes + self._node_radii[:, None]).max(axis=0)
        return np.column_stack([lower, upper]).ravel()

    def _segment_sdf(self, points: np.ndarray, segment: int) -> np.ndarray:
        return _round_cone_sdf(points, self._a[segment], self._b[segment], self._r1[segment], self._r2[segment])

    def sdf(self, points) -> np.ndarray:
        """Signed distance (mm) at points (N, 3): exact outside, negative inside."""
        points = _as_points(points)
        out = np.empty(len(points))
        for start in range(0, len(points), _CHUNK):
            chunk = points[start:start + _CHUNK]
            lower = cdist(chunk, self._bound_centres) - self._bound_radii
            best = (cdist(chunk, self._nodes) - self._node_radii).min(axis=1)
            for segment in range(len(self._a)):
                selected = np.flatnonzero(lower[:, segment] <= best)
                if selected.size:
                    best[selected] = np.minimum(best[selected], self._segment_sdf(chunk[selected], segment))
            out[start:start + _CHUNK] = best
        return out

    def contains(self, points) -> np.ndarray:
        """True for points (N, 3) strictly inside."""
        return self.sdf(points) < 0

    def _near_surface_blocks(self, shape, origin, spacing, band: float):
        """Split the grid into blocks of _BLOCK^3 voxels (padded past its end). Returns the sdf at block
        centres, the blocks that may hold a voxel with |sdf| < band and those blocks' voxel values
        clipped to [-band, band], (dz, dy, dx) order. Other blocks lie wholly beyond the band."""
        n_blocks = -(-shape // _BLOCK)
        block_index = np.indices(n_blocks).reshape(3, -1).T[:, ::-1]  # (x, y, z) block numbers
        centres = origin + (block_index * _BLOCK + 0.5 * (_BLOCK - 1)) * spacing
        reach = 0.5 * np.linalg.norm((_BLOCK - 1) * spacing)  # block centre to its farthest voxel
        centre_sdf = self.sdf(centres)
        near = np.flatnonzero(np.abs(centre_sdf) < reach + band)  # sdf is 1-Lipschitz
        offsets = (np.indices((_BLOCK,) * 3).reshape(3, -1).T[:, ::-1] - 0.5 * (_BLOCK - 1)) * spacing
        near_values = np.full((near.size, _BLOCK ** 3), band)
        upper = np.minimum(centre_sdf[near] + reach, band)
        lower = cdist(centres[near], self._bound_centres) - self._bound_radii - reach
        blocks_per_pass = max(1, _CHUNK // _BLOCK ** 3)
        for segment in range(len(self._a)):
            selected = np.flatnonzero(lower[:, segment] <= upper)
            for start in range(0, selected.size, blocks_per_pass):
                rows = selected[start:start + blocks_per_pass]
                points = (centres[near[rows], None, :] + offsets).reshape(-1, 3)
                distance = self._segment_sdf(points, segment).reshape(rows.size, -1)
                near_values[rows] = np.minimum(near_values[rows], distance)
        return n_blocks, centre_sdf, near, np.maximum(near_values, -band)

    def sdf_grid(self, shape, origin, spacing, band_mm: Optional[float] = None) -> np.ndarray:
        """float32 `sdf` at the voxel centres of a grid (nz, ny, nx), clipped to [-band_mm, band_mm].

        The sign is right everywhere; None computes it unclipped. Blocks of voxels farther than the
        band from the surface are filled without evaluating them, so the cost follows the surface area.
        """
        shape, origin, spacing = checked_grid(shape, origin, spacing)
        band = np.inf if band_mm is None else float(band_mm)
        n_blocks, centre_sdf, near, near_values = self._near_surface_blocks(shape, origin, spacing, band)
        values = np.repeat(np.where(centre_sdf < 0, -band, band).astype(np.float32)[:, None], _BLOCK ** 3, axis=1)
        values[near] = near_values
        full = values.reshape(*n_blocks, _BLOCK, _BLOCK, _BLOCK).transpose(0, 3, 1, 4, 2, 5)
        full = full.reshape(n_blocks * _BLOCK)
        return np.ascontiguousarray(full[:shape[0], :shape[1], :shape[2]])

    def mesh(self, voxel_mm: float = 0.5) -> vtk.vtkPolyData:
        """Marching-cubes surface in world mm with outward triangles (a copy of a per-voxel-size cache)."""
        key = float(voxel_mm)
        if key not in self._meshes:
            shape, origin, spacing = grid_over_bounds(self.bounds, key, margin_voxels=2)
            field_zyx = self.sdf_grid(shape, origin, spacing, band_mm=2 * key)
            # on (x, y, z) indexing, "descent" puts the triangles' front towards growing sdf: outwards
            vertices, triangles, _, _ = measure.marching_cubes(
                np.ascontiguousarray(field_zyx.transpose(2, 1, 0)), level=0.0, spacing=tuple(spacing),
                gradient_direction="descent", allow_degenerate=False)
            self._meshes[key] = polydata_from_arrays(vertices + origin, triangles)
        copy = vtk.vtkPolyData()
        copy.DeepCopy(self._meshes[key])
        return copy

    def volume_mm3(self, voxel_mm: float = 0.25) -> float:
        """Enclosed volume estimated by counting inside voxel centres (never stores the whole grid)."""
        voxel = float(voxel_mm)
        shape, origin, spacing = grid_over_bounds(self.bounds, voxel, margin_voxels=1, max_voxels=None)
        _, centre_sdf, near, near_values = self._near_surface_blocks(np.asarray(shape), origin, spacing, voxel)
        deep_inside = centre_sdf < 0
        deep_inside[near] = False
        # padding voxels lie outside: the grid already reaches a voxel beyond the bounds
        inside = np.count_nonzero(deep_inside) * _BLOCK ** 3 + np.count_nonzero(near_values < 0)
        return float(inside) * voxel ** 3


def union_of(phantoms: Sequence[Phantom], name: str) -> Phantom:
    """The exact union of several phantoms."""
    if not phantoms:
        raise InputError("union_of needs at least one phantom")
    return Phantom(name, [tube for phantom in phantoms for tube in phantom.tubes])


def sphere(radius: float = 20.0, center=(0.0, 0.0, 0.0)) -> Phantom:
    """A ball of `radius` mm around `center`."""
    return Phantom("sphere", [Tube(np.asarray(center, dtype=np.float64)[None], [radius])])


def thin_branch() -> Phantom:
    """A 60 mm long tube of radius 3 mm bent along an arc of radius 80 mm in the x-z plane."""
    bend_radius, length = 80.0, 60.0
    angles = np.linspace(0.0, length / bend_radius, 31)
    nodes = np.column_stack([bend_radius * (1 - np.cos(angles)), np.zeros_like(angles),
                             bend_radius * np.sin(angles)])
    return Phantom("thin_branch", [Tube(nodes, np.full(len(nodes), 3.0))])


# Abdominal aorta with an aneurysm: z = 0 at the aortic end above the bifurcation, 150 mm long.
_AORTA_LENGTH = 150.0
_SAC_START, _SAC_LENGTH = 45.0, 60.0


def _sac_bump(z: np.ndarray) -> np.ndarray:
    """0 outside the sac, rising smoothly (sin^2) to 1 at its middle."""
    phase = np.clip((z - _SAC_START) / _SAC_LENGTH, 0.0, 1.0)
    return np.sin(np.pi * phase) ** 2


def _aorta_centreline(z: np.ndarray) -> np.ndarray:
    """Gently curved: a sagittal S-bend (y) and a slight lateral bow (x)."""
    return np.column_stack([3.0 * np.sin(np.pi * z / _AORTA_LENGTH),
                            7.0 * np.sin(2 * np.pi * z / _AORTA_LENGTH), z])


def _aaa_lumen_tubes() -> List[Tube]:
    """The aorta (radius 8.5 to 11 mm, sac up to ~24 mm) and two iliacs diverging 30 degrees."""
    z = np.linspace(0.0, _AORTA_LENGTH, 51)
    aorta = Tube(_aorta_centreline(z), 8.5 + 2.5 * z / _AORTA_LENGTH + 14.5 * _sac_bump(z))
    start_z, length, half_angle = 5.0, 58.0, np.radians(15.0)
    start = _aorta_centreline(np.array([start_z]))[0]
    s = np.linspace(0.0, 1.0, 21)[:, None]
    iliacs = []
    for side in (-1.0, 1.0):
        direction = np.array([side * np.sin(half_angle), 0.0, -np.cos(half_angle)])
        nodes = start + [side * 3.0, 0.0, 0.0] + length * s * direction + [0.0, -5.0, 0.0] * s ** 2
        iliacs.append(Tube(nodes, 6.0 - 0.8 * s[:, 0]))
    return [aorta] + iliacs


def aaa_lumen() -> Phantom:
    """Contrast lumen of an infrarenal abdominal aortic aneurysm with the iliac bifurcation."""
    return Phantom("aaa", _aaa_lumen_tubes())


def aaa_centrelines() -> List[np.ndarray]:
    """The AAA lumen phantom's centrelines (aorta, then the two iliacs), (K, 3) mm each."""
    return [tube.nodes.copy() for tube in _aaa_lumen_tubes()]


def _thickened(tube: Tube, thickness: np.ndarray, shift: Optional[np.ndarray] = None) -> Tube:
    """A tube holding `tube` with a gap >= thickness: nodes moved by shift, radii grown by |shift| + thickness."""
    shift = np.zeros_like(tube.nodes) if shift is None else shift
    return Tube(tube.nodes + shift, tube.radii + np.linalg.norm(shift, axis=1) + thickness)


def aaa_nested() -> Dict[str, Phantom]:
    """Lumen inside inner wall (lumen + thrombus) inside outer wall (inner wall + 1.5-2.5 mm of wall).

    In the sac the thrombus is one-sided: the inner wall's centreline moves up to 5 mm anteriorly and
    to the left, so the thrombus is ~12 mm thick there and ~2 mm on the opposite side. Each wall tube
    holds its inner tube node ball by node ball, hence round cone by round cone: the nesting is exact.
    """
    aorta, *iliacs = _aaa_lumen_tubes()
    z = aorta.nodes[:, 2]
    bump = _sac_bump(z)
    anterior_left = np.array([-0.5, 1.0, 0.0]) / np.hypot(0.5, 1.0)
    inner = [_thickened(aorta, 0.6 + 1.4 * bump, 5.0 * bump[:, None] * anterior_left)]
    inner += [_thickened(iliac, np.full(len(iliac.radii), 0.5)) for iliac in iliacs]
    outer = [_thickened(tube, 2.0 + 0.5 * np.cos(2 * np.pi * tube.nodes[:, 2] / 100.0)) for tube in inner]
    return {"lumen": Phantom("aaa_lumen", [aorta] + iliacs),
            "inner_wall": Phantom("aaa_inner_wall", inner),
            "outer_wall": Phantom("aaa_outer_wall", outer)}


def vessel_tree() -> List[Phantom]:
    """Separately defined, overlapping vessels: aorta, right and left iliacs and a right renal artery.

    Each branch starts a few mm inside its parent; the renal leaves the aorta at a T-like junction.
    """
    z = np.linspace(0.0, 120.0, 25)
    aorta = Phantom("aorta", [Tube(np.column_stack([np.zeros_like(z), 4.0 * np.sin(np.pi * z / 120.0), z]),
                                   9.0 + z / 120.0)])
    s = np.linspace(0.0, 1.0, 12)[:, None]
    iliacs = []
    for side, name in ((1.0, "right_iliac"), (-1.0, "left_iliac")):
        start = np.array([side * 3.0, 0.0, 8.0])
        end = start + 55.0 * np.array([side * np.sin(np.radians(15.0)), 0.0, -np.cos(np.radians(15.0))])
        iliacs.append(Phantom(name, [Tube(start + s * (end - start), 5.8 - 0.6 * s[:, 0])]))
    t = np.linspace(0.0, 1.0, 16)[:, None]
    renal_start = np.array([5.0, 4.0 * np.sin(np.pi * 100.0 / 120.0), 100.0])  # 5 mm inside the aorta wall
    renal_nodes = renal_start + t * [50.0, -10.0, 0.0] + t ** 2 * [0.0, 0.0, -8.0]
    renal = Phantom("right_renal", [Tube(renal_nodes, np.full(len(t), 3.0))])
    return [aorta] + iliacs + [renal]


def aaa_ct_volume(spacing_mm=(0.8, 0.8, 1.0), seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CT-like float32 HU volume [k, j, i] of `aaa_nested` in a slim abdomen; returns (array, origin, spacing).

    Air outside the body ellipse, soft tissue 40 HU with subcutaneous and retroperitoneal fat -100 HU,
    a vertebral column (cortex 900, spongiosa 250, discs 90 HU) behind the aorta, aortic wall 50 HU,
    thrombus 40 HU, contrast lumen 300 HU, a few calcified spots 900 HU in the sac's wall; then a
    0.5 mm Gaussian blur (partial volume) and Gaussian noise of 15 HU.
    """
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise InputError(f"spacing_mm must be three values > 0, got {spacing_mm}")
    rng = np.random.default_rng(seed)
    nested = aaa_nested()
    outer_bounds = nested["outer_wall"].bounds
    lower = np.array([-80.0, -85.0, outer_bounds[4] - 10.0])
    upper = np.array([80.0, 75.0, outer_bounds[5] + 10.0])
    counts = np.floor((upper - lower) / spacing).astype(int) + 1
    if np.prod(counts.astype(float)) > _MAX_VOXELS:
        raise InputError(f"spacing_mm {tuple(spacing)} gives {counts} voxels: use a coarser spacing")
    shape = tuple(int(n) for n in counts[::-1])
    origin = lower
    x = origin[0] + spacing[0] * np.arange(shape[2])
    y = origin[1] + spacing[1] * np.arange(shape[1])
    z = origin[2] + spacing[2] * np.arange(shape[0])
    xx, yy = np.meshgrid(x, y, indexing="xy")  # (ny, nx)

    def ellipse(cx, cy, ax, ay):
        return ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0

    body = ellipse(0.0, -5.0, 78.0, 76.0)
    hu = np.full(shape, 40.0, dtype=np.float32)
    hu[:, ~ellipse(0.0, -5.0, 69.0, 67.0)] = -100.0  # subcutaneous fat
    for _ in range(20):  # retroperitoneal and mesenteric fat lobules
        centre = np.array([rng.uniform(-60, 60), rng.uniform(-65, 55), rng.uniform(z[0], z[-1])])
        _paint_ball(hu, origin, spacing, centre, rng.uniform(4.0, 10.0), -100.0)
    hu[:, ~body] = -1000.0
    grid = (shape, origin, spacing)
    outer_sdf = nested["outer_wall"].sdf_grid(*grid, band_mm=4.0)
    hu[(outer_sdf >= 0) & (outer_sdf < 3.0)] = -90.0  # periaortic fat outlines the wall
    # vertebral bodies behind the aorta: cortical shell, spongiosa, discs every 35 mm
    spine_y = outer_bounds[2] - 3.0 - 16.0
    vertebra = ellipse(0.0, spine_y, 22.0, 16.0)
    spongiosa = ellipse(0.0, spine_y, 20.0, 14.0)
    disc = np.mod(z - z[0], 35.0) < 8.0
    for k in range(shape[0]):
        hu[k, vertebra] = 90.0 if disc[k] else 900.0
        if not disc[k]:
            hu[k, spongiosa] = 250.0
    band = float(spacing.max())
    hu[outer_sdf < 0] = 50.0
    hu[nested["inner_wall"].sdf_grid(*grid, band_mm=band) < 0] = 40.0
    lumen = nested["lumen"].sdf_grid(*grid, band_mm=band) < 0
    hu[lumen] = 300.0
    candidates = rng.uniform(outer_bounds[0::2], outer_bounds[1::2], size=(20000, 3))
    candidates = candidates[(candidates[:, 2] > _SAC_START) & (candidates[:, 2] < _SAC_START + _SAC_LENGTH)]
    in_wall = (nested["outer_wall"].sdf(candidates) < 0) & (nested["inner_wall"].sdf(candidates) > 0)
    for centre in candidates[in_wall][:6]:
        _paint_ball(hu, origin, spacing, centre, rng.uniform(1.0, 2.0), 900.0, keep=lumen)
    hu = ndimage.gaussian_filter(hu, sigma=tuple(0.5 / spacing[::-1]))
    hu += rng.normal(0.0, 15.0, size=shape).astype(np.float32)
    return hu, origin.copy(), spacing.copy()


def _paint_ball(volume: np.ndarray, origin: np.ndarray, spacing: np.ndarray, centre: np.ndarray,
                radius: float, value: float, keep: Optional[np.ndarray] = None):
    """Set voxels [k, j, i] within `radius` of `centre` to `value`, except where `keep` is True."""
    low = np.maximum(np.floor((centre - radius - origin) / spacing).astype(int), 0)[::-1]
    high = np.minimum(np.ceil((centre + radius - origin) / spacing).astype(int) + 1, volume.shape[::-1])[::-1]
    if np.any(high <= low):
        return
    window = tuple(slice(lo, hi) for lo, hi in zip(low, high))
    kk, jj, ii = np.meshgrid(*(np.arange(lo, hi) for lo, hi in zip(low, high)), indexing="ij")
    points = np.stack([ii, jj, kk], axis=-1) * spacing + origin
    ball = np.sum((points - centre) ** 2, axis=-1) <= radius ** 2
    if keep is not None:
        ball &= ~keep[window]
    volume[window][ball] = value


def write_nrrd(path, array: np.ndarray, origin, spacing):
    """Write a [k, j, i] array as a gzip NRRD in RAS mm (Slicer places it right), atomically."""
    path = os.fspath(path)
    array = np.asarray(array)
    origin = np.asarray(origin, dtype=np.float64)
    spacing = np.asarray(spacing, dtype=np.float64)
    if not path.endswith(".nrrd"):
        raise InputError(f"write_nrrd writes one attached-header file ending in .nrrd, got {path!r}")
    if array.ndim != 3 or origin.shape != (3,) or spacing.shape != (3,) or not np.all(spacing > 0):
        raise InputError("write_nrrd needs a 3-D [k, j, i] array, origin (3,) and spacing (3,) > 0")
    header = {"space": "right-anterior-superior", "space directions": np.diag(spacing),
              "space origin": origin, "kinds": ["domain"] * 3, "encoding": "gzip"}
    with atomic_output(path) as temporary:
        nrrd.write(temporary, array, header, compression_level=1, index_order="C")


PHANTOMS: Dict[str, Callable[[], Phantom]] = {"sphere": sphere, "aaa": aaa_lumen, "thin_branch": thin_branch}


def get_phantom(name: str) -> Phantom:
    """The registered phantom `name`, built with its default parameters."""
    if name not in PHANTOMS:
        raise InputError(f"unknown phantom {name!r}; choose one of: {', '.join(sorted(PHANTOMS))}")
    return PHANTOMS[name]()
