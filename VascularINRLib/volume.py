"""An image volume in world (RAS) millimetres: voxels [k, j, i] and the matrix from (i, j, k) to RAS.

Files come in patient LPS (NRRD's `space`, MetaImage, ITK) or RAS; scenes (Slicer, the browser) are
RAS. A `Volume` always maps voxel indices to RAS mm, so a click and the intensity under it meet in one
frame: `sample` reads the image at RAS points (trilinear; NaN outside). Read with `read_volume`
(.nrrd, .nhdr, .mha, .mhd, .nii, .nii.gz), or build from a scene's volume node (`scene.py`) or arrays (`from_grid`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
CLICK_ERROR_VOXELS = 0.5  # a click misses the wall by about half a voxel (σ), in the slice plane
CLICK_MARGIN_MM = 15.0  # the volume a fit gets: the clicks' bounding box and this much around it
MAX_VOXELS = 1024 ** 3  # a volume file claiming more than this is refused before reading its voxels
FORMATS = (".nrrd", ".nhdr", ".mha", ".mhd", ".nii", ".nii.gz")


@dataclass
class Volume:
    array: np.ndarray  # (k, j, i), any real type (crop gives float32)
    ijk_to_ras: np.ndarray  # (4, 4)

    def __post_init__(self):
        self.array = np.asarray(self.array)
        if not (np.issubdtype(self.array.dtype, np.integer) or np.issubdtype(self.array.dtype, np.floating)):
            raise InputError(f"a volume needs real-valued voxels, got {self.array.dtype}")
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if self.array.ndim != 3 or min(self.array.shape) < 1:
            raise InputError(f"a volume needs three dimensions, got shape {self.array.shape}")
        if self.ijk_to_ras.shape != (4, 4) or abs(np.linalg.det(self.ijk_to_ras[:3, :3])) < 1e-12:
            raise InputError("a volume's voxel-to-world matrix must be an invertible 4×4")
        if not np.isfinite(self.ijk_to_ras).all():
            raise InputError("a volume's voxel-to-world matrix holds NaN or inf")

    @classmethod
    def from_grid(cls, array: np.ndarray, origin: Sequence[float], spacing: Sequence[float],
                  directions=None, lps: bool = False) -> "Volume":
        """`directions`: the axes' unit vectors as columns (i, j, k); `lps`: origin and axes in LPS."""
        matrix = np.eye(4)
        axes = np.eye(3) if directions is None else np.asarray(directions, dtype=np.float64)
        matrix[:3, :3] = axes * np.asarray(spacing, dtype=np.float64)[None, :]
        matrix[:3, 3] = np.asarray(origin, dtype=np.float64)
        return cls(array, LPS_TO_RAS @ matrix if lps else matrix)

    @property
    def spacing_mm(self) -> np.ndarray:
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    def to_index(self, points_ras: np.ndarray) -> np.ndarray:
        """(n, 3) continuous (k, j, i) indices of RAS points."""
        inverse = np.linalg.inv(self.ijk_to_ras)
        ijk = np.asarray(points_ras, dtype=np.float64) @ inverse[:3, :3].T + inverse[:3, 3]
        return ijk[:, ::-1]

    def sample(self, points_ras: np.ndarray) -> np.ndarray:
        """Trilinear intensities at RAS points (any leading shape ending in 3); NaN outside the volume."""
        points = np.asarray(points_ras, dtype=np.float64)
        kji = self.to_index(points.reshape(-1, 3))
        values = ndimage.map_coordinates(self.array, kji.T, order=1, mode="constant", cval=np.nan,
                                         prefilter=False, output=np.float64)
        upper = np.array(self.array.shape) - 1
        outside = np.any((kji < -1e-6) | (kji > upper + 1e-6), axis=1)
        values[outside] = np.nan
        return values.reshape(points.shape[:-1])

    def crop(self, points_ras: np.ndarray, margin_mm: float) -> "Volume":
        """The part of the volume within `margin_mm` of the points' bounding box (a view, then a copy)."""
        points = np.asarray(points_ras, dtype=np.float64)
        low, high = points.min(axis=0) - margin_mm, points.max(axis=0) + margin_mm
        corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1])
                            for z in (low[2], high[2])])
        kji = self.to_index(corners)
        start = np.clip(np.floor(kji.min(axis=0)).astype(int), 0, np.array(self.array.shape) - 1)
        stop = np.clip(np.ceil(kji.max(axis=0)).astype(int) + 1, start + 1, np.array(self.array.shape))
        array = np.array(self.array[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]], dtype=np.float32)
        matrix = self.ijk_to_ras.copy()
        matrix[:3, 3] = self.ijk_to_ras[:3, :3] @ start[::-1].astype(np.float64) + self.ijk_to_ras[:3, 3]
        return Volume(array, matrix)


def display_window(values: np.ndarray, low_percent: float = 1.0, high_percent: float = 99.5,
                   sample: int = 1_000_000, seed: int = 0) -> Tuple[float, float]:
    """(window, level) that shows a volume's intensities from their `low_percent` to `high_percent`
    percentile (a random sample of at most `sample` voxels): the vessel and what surrounds it, whatever
    the modality's units (HU, MR)."""
    values = np.asarray(values).reshape(-1)
    if values.size > sample:
        values = values[np.random.default_rng(seed).integers(0, values.size, sample)]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 1.0, 0.0
    low, high = np.percentile(values.astype(np.float64), [low_percent, high_percent])
    return float(max(high - low, 1e-6)), float(0.5 * (low + high))


def click_error_mm(spacing) -> Optional[float]:
    """σ of a click on a volume with this voxel `spacing` (mm): half its in-plane voxel (the mean of
    its two finest spacings); None for a spacing that is not positive and finite."""
    finest = sorted(float(value) for value in spacing)[:2]
    if len(finest) < 2 or not all(np.isfinite(finest)) or finest[0] <= 0:
        return None
    return round(CLICK_ERROR_VOXELS * 0.5 * sum(finest), 4)


def read_volume(path) -> Volume:
    """A volume file (.nrrd/.nhdr: pynrrd; .mha/.mhd: VTK's reader, with the header's axes and LPS
    frame that VTK leaves out; .nii/.nii.gz: VTK's reader and the qform, else the sform, as ITK and
    Slicer read them). Raises InputError naming the file and the problem."""
    path = Path(path)
    name = path.name.lower()
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        if name.endswith((".nrrd", ".nhdr")):
            return _read_nrrd(path)
        if name.endswith((".mha", ".mhd")):
            return _read_metaimage(path)
        if name.endswith((".nii", ".nii.gz")):
            return _read_nifti(path)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise InputError(f"{path}: not a readable volume ({type(error).__name__}: {error})") from None
    raise InputError(f"{path}: unsupported volume format (use {', '.join(FORMATS)})")


def _check_size(shape) -> None:
    if len(shape) != 3 or any(int(n) < 1 for n in shape):
        raise InputError(f"a 3-D scalar volume is needed, the header gives sizes {list(shape)}")
    if float(np.prod([float(n) for n in shape])) > MAX_VOXELS:
        raise InputError(f"{list(shape)} voxels is more than {MAX_VOXELS} (refused before reading)")


def _read_nrrd(path: Path) -> Volume:
    import nrrd

    header = nrrd.read_header(str(path))
    _check_size(header.get("sizes", []))
    data, header = nrrd.read(str(path), index_order="C")  # (k, j, i)
    space = str(header.get("space", "left-posterior-superior")).lower()
    if space not in ("left-posterior-superior", "lps", "right-anterior-superior", "ras"):
        raise InputError(f"unsupported NRRD space {space!r}")
    directions = np.asarray(header.get("space directions", np.eye(3)), dtype=np.float64)
    if directions.shape != (3, 3) or not np.isfinite(directions).all():
        raise InputError("NRRD 'space directions' must be three 3-vectors")
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    matrix = np.eye(4)
    matrix[:3, :3] = directions.T  # rows of the header are the axes' steps: columns here
    matrix[:3, 3] = origin
    if space in ("left-posterior-superior", "lps"):
        matrix = LPS_TO_RAS @ matrix
    return Volume(data, matrix)


def _metaimage_header(path: Path) -> Dict[str, str]:
    header = {}
    with open(path, "rb") as stream:
        for _ in range(64):
            line = stream.readline(4096).decode("latin-1").strip()
            if "=" not in line:
                break
            key, value = (part.strip() for part in line.split("=", 1))
            header[key] = value
            if key == "ElementDataFile":
                break
    return header


def _read_metaimage(path: Path) -> Volume:
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    header = _metaimage_header(path)
    if header.get("NDims", "3") != "3" or header.get("ElementNumberOfChannels", "1") != "1":
        raise InputError("a 3-D scalar MetaImage is needed")
    sizes = [int(v) for v in header.get("DimSize", "").split()]
    _check_size(sizes)
    reader = vtk.vtkMetaImageReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    if list(image.GetDimensions()) != sizes or image.GetPointData().GetScalars() is None:
        raise InputError("VTK could not read its voxels")
    array = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(sizes[::-1])
    spacing = [float(v) for v in header.get("ElementSpacing", "1 1 1").split()]
    origin = [float(v) for v in (header.get("Offset") or header.get("Origin") or header.get("Position")
                                 or "0 0 0").split()]
    matrix = [float(v) for v in (header.get("TransformMatrix") or header.get("Rotation")
                                 or header.get("Orientation") or "1 0 0 0 1 0 0 0 1").split()]
    if len(spacing) != 3 or len(origin) != 3 or len(matrix) != 9:
        raise InputError("ElementSpacing, Offset and TransformMatrix need 3, 3 and 9 values")
    # as ITK reads it: the matrix's i-th group of three is the direction of axis i (LPS)
    directions = np.asarray(matrix).reshape(3, 3).T
    return Volume.from_grid(array, origin, spacing, directions, lps=True)


def _read_nifti(path: Path) -> Volume:
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkNIFTIImageReader()
    if not reader.CanReadFile(str(path)):
        raise InputError("not a NIfTI file VTK can read")
    reader.SetFileName(str(path))
    reader.UpdateInformation()
    extent = reader.GetDataExtent()
    sizes = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    _check_size(sizes)
    if reader.GetNumberOfScalarComponents() != 1 or reader.GetTimeDimension() > 1:
        raise InputError("a 3-D scalar NIfTI is needed")
    reader.Update()
    image = reader.GetOutput()
    if image.GetPointData().GetScalars() is None:
        raise InputError("VTK could not read its voxels")
    array = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(sizes[::-1])
    header = reader.GetNIFTIHeader()
    form = reader.GetQFormMatrix() if header.GetQFormCode() > 0 else reader.GetSFormMatrix()
    to_ras = np.eye(4)
    if form is not None:  # VTK's image frame (its origin and spacing) to RAS
        to_ras = np.array([[form.GetElement(row, column) for column in range(4)] for row in range(4)])
    frame = np.eye(4)
    frame[:3, :3] = np.diag(image.GetSpacing())
    frame[:3, 3] = image.GetOrigin()
    return Volume(array, to_ras @ frame)
