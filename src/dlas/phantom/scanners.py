"""CT scanner profiles: resolution, noise texture, calibration and DICOM equipment tags.

Two profiles follow the seed study's Table 1: scanner **A**, a Siemens Sensation Open
(120 kVp, 65 cm field of view, 512x512 → 1.27 mm pixels, 5 mm slices, a sharper kernel with
higher, finer-grained noise) and scanner **B**, a Philips Big Bore (60 cm → 1.17 mm pixels,
smoother images with lower, coarser noise and a small calibration offset). The vendor's
institution scanned its patients on two scanners of its own (**V1**, **V2**).

Image formation, per axial slice, in the Fourier domain (one FFT pair per volume):

* resolution: the noise-free image is multiplied by a Gaussian modulation transfer function
  whose width is the kernel's point-spread function (mm);
* noise: complex white noise shaped by the square root of a filtered-back-projection noise power
  spectrum, NPS(f) ∝ f · exp(-(f / f₀)²) — zero at f = 0 (no DC noise), rising like the ramp
  filter, rolled off by the kernel — which gives the familiar blotchy CT texture instead of
  independent pixels. The peak frequency sets the grain (finer on A, coarser on B); the
  amplitude is scaled to the profile's standard deviation (HU) for a patient 350 mm wide and
  grows with the patient's width, as photon starvation does;
* calibration: a constant HU offset;
* outside the reconstruction circle the scanner writes padding (−1024 HU).

The whole chain is defined in millimetres and cycles per millimetre, so the noise grain keeps its
physical size at any pixel size (at the coarse ``demo`` pixels the finest grain is simply not
resolved).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["SCANNERS", "ScannerProfile", "acquire"]

F32 = npt.NDArray[np.float32]

#: Lowest and highest value a 12-bit CT with rescale intercept −1024 stores.
HU_MIN, HU_MAX = -1024.0, 3071.0


@dataclass(frozen=True)
class ScannerProfile:
    """One CT scanner with its reconstruction protocol.

    Attributes
    ----------
    key
        Short name used in configurations and the manifest (``A``, ``B``, ``V1``, ``V2``).
    manufacturer, model, station, kernel, kvp
        DICOM Manufacturer, ManufacturerModelName, StationName, ConvolutionKernel and KVP.
    fov_mm
        Reconstruction diameter (mm); the pixel size is ``fov_mm / matrix``.
    psf_mm
        Standard deviation of the Gaussian in-plane point-spread function (mm).
    noise_hu
        Noise standard deviation (HU) in soft tissue of a patient 350 mm wide.
    grain_per_mm
        Spatial frequency (cycles/mm) at which the noise power peaks.
    hu_offset
        Calibration offset added to every value (HU).
    """

    key: str
    manufacturer: str
    model: str
    station: str
    kernel: str
    kvp: float
    fov_mm: float
    psf_mm: float
    noise_hu: float
    grain_per_mm: float
    hu_offset: float

    def to_data(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


SCANNERS: dict[str, ScannerProfile] = {
    "A": ScannerProfile(
        key="A",
        manufacturer="SIEMENS",
        model="Sensation Open",
        station="CTSIM1",
        kernel="B41s",
        kvp=120.0,
        fov_mm=650.0,
        psf_mm=0.55,
        noise_hu=22.0,
        grain_per_mm=0.30,
        hu_offset=0.0,
    ),
    "B": ScannerProfile(
        key="B",
        manufacturer="Philips",
        model="Brilliance Big Bore",
        station="CTSIM2",
        kernel="B",
        kvp=120.0,
        fov_mm=600.0,
        psf_mm=1.0,
        noise_hu=11.0,
        grain_per_mm=0.15,
        hu_offset=5.0,
    ),
    "V1": ScannerProfile(
        key="V1",
        manufacturer="GE MEDICAL SYSTEMS",
        model="Optima CT580",
        station="RTCT01",
        kernel="STANDARD",
        kvp=120.0,
        fov_mm=500.0,
        psf_mm=0.8,
        noise_hu=16.0,
        grain_per_mm=0.22,
        hu_offset=-3.0,
    ),
    "V2": ScannerProfile(
        key="V2",
        manufacturer="TOSHIBA",
        model="Aquilion LB",
        station="RTSIM",
        kernel="FC13",
        kvp=120.0,
        fov_mm=550.0,
        psf_mm=0.7,
        noise_hu=18.0,
        grain_per_mm=0.25,
        hu_offset=2.0,
    ),
}


def acquire(
    hu: npt.NDArray[np.float32],
    spacing_yx: tuple[float, float],
    profile: ScannerProfile,
    rng: np.random.Generator,
    *,
    body_width_mm: float,
    fov_radius_px: tuple[float, float] | None = None,
) -> F32:
    """Image a noise-free HU volume on ``profile``: blur, noise, offset, padding.

    Parameters
    ----------
    hu
        Noise-free HU, (z, y, x), on the reconstruction grid; not modified.
    spacing_yx
        In-plane pixel size (y, x) in mm.
    profile
        The scanner.
    rng
        The scanner-noise stream of this patient.
    body_width_mm
        Lateral width of the patient (noise grows with it).
    fov_radius_px
        Radius of the reconstruction circle in pixels along (y, x), centred on the image; outside
        it the image holds padding. None: no padding.

    Returns
    -------
    numpy.ndarray
        float32 HU rounded to integers and clipped to the range a 12-bit CT stores.
    """
    from scipy import fft

    nz, ny, nx = hu.shape
    sy, sx = spacing_yx
    fy = np.fft.fftfreq(ny, d=sy).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(nx, d=sx).astype(np.float32)[None, :]
    f2 = fy**2 + fx**2
    mtf = np.exp(np.float32(-2.0 * np.pi**2 * profile.psf_mm**2) * f2).astype(np.float32)
    f0 = profile.grain_per_mm * np.sqrt(2.0)  # f·exp(-(f/f0)²) peaks at f0/√2
    amplitude = np.sqrt(np.sqrt(f2) * np.exp(-f2 / np.float32(f0**2))).astype(np.float32)
    # Per-pixel variance of the inverse transform (orthonormal FFTs) is the mean of |H|² over the
    # full frequency plane; the half-plane of a real FFT counts its inner columns twice.
    weights = np.full(fx.shape[1], 2.0)
    weights[0] = 1.0
    if nx % 2 == 0:
        weights[-1] = 1.0
    variance = float((amplitude.astype(np.float64) ** 2 * weights).sum() / (ny * nx))
    sigma = profile.noise_hu * (max(body_width_mm, 200.0) / 350.0) ** 1.5
    scale = np.float32(sigma / np.sqrt(variance)) if variance > 0 else np.float32(0.0)

    spectrum = fft.rfft2(hu, axes=(1, 2), norm="ortho", workers=1)
    spectrum *= mtf
    noise = rng.standard_normal((nz, ny, nx // 2 + 1, 2), dtype=np.float32)
    shaped = (noise[..., 0] + 1j * noise[..., 1]).astype(np.complex64)
    shaped *= amplitude * (scale / np.float32(np.sqrt(2.0)))
    spectrum += shaped
    out = fft.irfft2(spectrum, s=(ny, nx), axes=(1, 2), norm="ortho", workers=1)
    out = np.asarray(out, dtype=np.float32)
    out += np.float32(profile.hu_offset)
    if fov_radius_px is not None:
        ry, rx = fov_radius_px
        yy = (np.arange(ny, dtype=np.float32) - (ny - 1) / 2) / np.float32(ry)
        xx = (np.arange(nx, dtype=np.float32) - (nx - 1) / 2) / np.float32(rx)
        outside = (yy[:, None] ** 2 + xx[None, :] ** 2) > 1.0
        out[:, outside] = HU_MIN
    np.rint(out, out=out)
    np.clip(out, HU_MIN, HU_MAX, out=out)
    return out
