"""`Volume`: a 3-D image on a grid placed in DICOM patient coordinates.

Conventions used throughout `dlas`:

* The array is indexed ``array[k, j, i]`` = (z, y, x): ``k`` is the slice, ``j`` the image row,
  ``i`` the image column. For an axial CT, ``i`` runs along the DICOM row direction (patient
  left, +x in LPS) and ``j`` along the column direction (patient posterior, +y).
* ``spacing`` is given in the array's axis order, (z, y, x), in millimetres.
* ``origin`` is the centre of voxel ``[0, 0, 0]`` in DICOM patient coordinates (LPS, mm), given as
  the point (x, y, z).
* ``direction`` is a 3x3 matrix whose *rows* are the unit vectors, in LPS, along which the array
  axes 0, 1 and 2 (z, y, x) increase. The centre of voxel ``(k, j, i)`` lies at::

      origin + (k * sz) * direction[0] + (j * sy) * direction[1] + (i * sx) * direction[2]

SimpleITK orders spacing, size and direction columns as (x, y, z) and NIfTI stores RAS; the
converters below translate both ways so that no geometry is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from dlas.errors import NiftiError

if TYPE_CHECKING:
    import SimpleITK as sitk

__all__ = ["AXIAL_DIRECTION", "BODY_DEFINITION", "Volume", "body_mask"]

#: The direction matrix of an axial series sorted from inferior to superior.
AXIAL_DIRECTION: npt.NDArray[np.float64] = np.array(
    [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
)


def _as_vector(values: Sequence[float] | npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    vec = np.asarray(values, dtype=np.float64).reshape(-1)
    if vec.shape != (3,) or not np.all(np.isfinite(vec)):
        raise ValueError(f"{name} must be 3 finite numbers, got {values!r}")
    return vec


@dataclass(eq=False)
class Volume:
    """A 3-D array in (z, y, x) order with its geometry in DICOM patient coordinates.

    Parameters
    ----------
    array
        Voxel values, shape (nz, ny, nx). CT volumes hold Hounsfield units; masks hold ``bool``.
    spacing
        Voxel size along (z, y, x) in mm; all positive.
    origin
        Centre of voxel ``[0, 0, 0]`` as an LPS point (x, y, z) in mm.
    direction
        3x3 matrix whose rows are the LPS unit vectors of array axes (z, y, x). Defaults to an
        axial grid (slices along +z, rows along +y, columns along +x).
    """

    array: npt.NDArray[Any]
    spacing: npt.NDArray[np.float64]
    origin: npt.NDArray[np.float64]
    direction: npt.NDArray[np.float64] = field(default_factory=lambda: AXIAL_DIRECTION.copy())

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise ValueError(f"a Volume holds a 3-D array, got shape {self.array.shape}")
        self.spacing = _as_vector(self.spacing, "spacing")
        if np.any(self.spacing <= 0):
            raise ValueError(f"spacing must be positive, got {self.spacing.tolist()}")
        self.origin = _as_vector(self.origin, "origin")
        direction = np.asarray(self.direction, dtype=np.float64)
        if direction.shape != (3, 3) or not np.allclose(
            direction @ direction.T, np.eye(3), atol=1e-4
        ):
            raise ValueError(f"direction must be an orthonormal 3x3 matrix, got {direction}")
        self.direction = direction

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (nz, ny, nx)."""
        nz, ny, nx = self.array.shape
        return (int(nz), int(ny), int(nx))

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm³."""
        return float(np.prod(self.spacing))

    @property
    def affine(self) -> npt.NDArray[np.float64]:
        """4x4 matrix mapping homogeneous indices (k, j, i, 1) to LPS points (x, y, z, 1)."""
        out = np.eye(4)
        out[:3, :3] = (self.direction * self.spacing[:, None]).T
        out[:3, 3] = self.origin
        return out

    def index_to_physical(self, index: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """LPS points (mm) of continuous (k, j, i) indices; accepts shape (3,) or (n, 3)."""
        idx = np.asarray(index, dtype=np.float64)
        return self.origin + (idx * self.spacing) @ self.direction

    def physical_to_index(self, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Continuous (k, j, i) indices of LPS points (mm); accepts shape (3,) or (n, 3)."""
        pts = np.asarray(points, dtype=np.float64)
        return ((pts - self.origin) @ self.direction.T) / self.spacing

    def same_grid(self, other: Volume, *, atol_mm: float = 1e-3) -> bool:
        """Whether ``other`` has the same shape and voxel positions (within ``atol_mm``)."""
        if self.shape != other.shape:
            return False
        corners = np.array(
            [[0, 0, 0], [s - 1 for s in self.shape]], dtype=np.float64
        )  # opposite corners pin down spacing, origin and direction together
        a = self.index_to_physical(corners)
        b = other.index_to_physical(corners)
        return bool(
            np.allclose(a, b, atol=atol_mm)
            and np.allclose(self.spacing, other.spacing, atol=atol_mm)
            and np.allclose(self.direction, other.direction, atol=1e-4)
        )

    def grid_description(self) -> str:
        """A short human-readable description of the grid, for error messages."""
        sz, sy, sx = self.spacing
        return (
            f"{self.shape[2]}x{self.shape[1]}x{self.shape[0]} voxels of "
            f"{sx:.3g}x{sy:.3g}x{sz:.3g} mm at origin "
            f"({self.origin[0]:.2f}, {self.origin[1]:.2f}, {self.origin[2]:.2f})"
        )

    def with_array(self, array: npt.ArrayLike) -> Volume:
        """A new Volume on the same grid holding ``array`` (same shape required)."""
        arr = np.asarray(array)
        if arr.shape != self.array.shape:
            raise ValueError(f"array shape {arr.shape} differs from the grid {self.array.shape}")
        return Volume(arr, self.spacing.copy(), self.origin.copy(), self.direction.copy())

    def geometry(self) -> dict[str, Any]:
        """The grid as JSON-ready data: shape and spacing (z, y, x), origin (LPS x, y, z)."""
        return {
            "shape_zyx": list(self.shape),
            "spacing_zyx_mm": [round(float(v), 6) for v in self.spacing],
            "origin_lps_mm": [round(float(v), 6) for v in self.origin],
            "direction_rows_zyx": [[round(float(v), 8) for v in row] for row in self.direction],
        }

    # ------------------------------------------------------------------ SimpleITK
    def to_sitk(self) -> sitk.Image:
        """Convert to a SimpleITK image (geometry in LPS, as ITK uses)."""
        import SimpleITK as sitk

        array = self.array.astype(np.uint8) if self.array.dtype == bool else self.array
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetSpacing(tuple(float(v) for v in self.spacing[::-1]))
        image.SetOrigin(tuple(float(v) for v in self.origin))
        # ITK's direction columns belong to index axes (x, y, z): our rows reversed, transposed.
        image.SetDirection(tuple(float(v) for v in self.direction[::-1].T.reshape(-1)))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Volume:
        """Build a Volume from a 3-D SimpleITK image."""
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise NiftiError(
                "image is not 3-D",
                expected="a 3-D image",
                found=f"{image.GetDimension()}-D image of size {image.GetSize()}",
                fix="export one 3-D volume per file",
            )
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise NiftiError(
                "image has vector voxels",
                expected="one value per voxel",
                found=f"{image.GetNumberOfComponentsPerPixel()} components",
                fix="export a scalar image",
            )
        array = sitk.GetArrayFromImage(image)
        direction_cols = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
        return cls(
            array,
            spacing=np.array(image.GetSpacing(), dtype=np.float64)[::-1],
            origin=np.array(image.GetOrigin(), dtype=np.float64),
            direction=direction_cols.T[::-1].copy(),
        )


#: How :func:`body_mask` finds the body (recorded in metric definitions and QA outputs).
BODY_DEFINITION = (
    "body = CT voxels above -500 HU, largest 6-connected component, holes filled in every "
    "axial slice"
)


def body_mask(ct: Volume, threshold_hu: float = -500.0) -> npt.NDArray[np.bool_]:
    """The body of a CT in HU (arrays (z, y, x), axial slices along z): the largest 6-connected
    component above ``threshold_hu``, holes filled in every axial slice. Empty when no voxel is
    above. One definition for the evaluation's ``body`` specificity domain and prediction QA."""
    from scipy import ndimage

    labels, count = ndimage.label(np.asarray(ct.array) > threshold_hu)
    if count == 0:
        return np.zeros(ct.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body: npt.NDArray[np.bool_] = labels == int(sizes.argmax())
    for k in np.flatnonzero(body.any(axis=(1, 2))):
        body[k] = ndimage.binary_fill_holes(body[k])
    return body
