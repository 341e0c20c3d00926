"""Contouring styles: how two institutions turn the same anatomy into ground-truth structures.

The seed study's vendor model was trained on another institution's contours; fine-tuning
adapts it to the local institution's habits. The replica needs both habits, systematically
different where the paper saw differences and alike where it did not:

* **CTV** (mesorectum, presacral space, internal iliac and obturator node regions of mid-low
  rectal cancer, from the pelvic floor to about the sacral promontory, clipped by bone, pelvic
  side-wall muscles and the organs at risk). The vendor's CTV has much wider margins around the
  node-bearing vessels (16 vs 7 mm) and slightly wider ones around the mesorectum, reaches
  further anteriorly and a little into the side-wall muscles, stops 16 mm higher, and starts
  28 mm higher at the pelvic floor: about +15 % volume for the same anatomy, and a different
  shape — a perfect model of the vendor's style reaches a CTV DSC of only about 0.80 against the
  local contours, near the seed paper's vendor model (0.79, volume +17.9 ± 11.7 %), while a
  perfect model of the local style reaches about 0.89. (Until the second release the vendor's
  style differed by margins alone: +20 % volume, but a DSC of 0.85, which capped the gain any
  fine-tuning could show at about 0.04; the paper measured 0.09.)
* **Small bowel**: the local institution contours every loop, with its wall, up to 25 mm above
  the sacral promontory; the vendor's contours are 0.4 mm tighter, stop 13 mm lower and often
  leave out collapsed loops, so their sensitivity against the local style is about 0.9.
* **Bladder and femoral heads**: nearly identical (sub-millimetre differences).

Every contour also carries *observer variation*, drawn afresh for each patient: a smooth random
displacement of its surface (a few mm for the CTV, about one for the organs), a jitter of the
CTV's upper slice, and now and then a missed bowel loop or a piece of sigmoid contoured as small
bowel. A model that learned a style perfectly therefore still reaches only the DSC the paper
reports for real contours (CTV about 0.85–0.92, small bowel 0.80–0.88, bladder and femoral heads
0.95–0.98) — the tests measure these ceilings.

Ground-truth structures never overlap (the ``rectal`` structure set allows no overlap): where
two would, the one with the higher label priority keeps the voxel (femoral heads, then bladder,
then small bowel, then CTV).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from dlas.phantom.anatomy import Anatomy
from dlas.phantom.geometry import (
    Difference,
    Displace,
    Ellipsoid,
    Grid,
    HalfSpace,
    Intersection,
    Loft,
    Offset,
    Shape,
    SmoothField,
    Tube,
    Union,
)

__all__ = ["LOCAL", "STRUCTURES", "STYLES", "VENDOR", "ContouringStyle", "contour"]

F32 = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]

#: Canonical names of the ground-truth structures, in the order of the ``rectal`` set.
STRUCTURES = ("CTV", "Bladder", "Femur_Head_L", "Femur_Head_R", "Bowel_Small")


@dataclass(frozen=True)
class ContouringStyle:
    """The contouring habits of one institution (all distances in mm).

    Attributes
    ----------
    name
        ``"vendor"`` or ``"local"``.
    roi_names
        Canonical structure name → the ROI name this institution types.
    ctv_meso_margin
        Margin around the mesorectal fascia.
    ctv_node_margin
        Margin around the internal iliac and obturator vessels.
    ctv_anterior
        How far in front of the rectal wall the central CTV reaches.
    ctv_into_wall
        How far the CTV may reach into the pelvic side-wall muscles.
    ctv_top
        Upper border relative to the sacral promontory (positive: above).
    ctv_bottom
        Lower border relative to the anorectal junction (positive: below).
    bladder_delta, femoral_head_delta, bowel_delta
        Outward (positive) or inward offset of the organ outline.
    bowel_top
        Highest small-bowel contour relative to the promontory.
    skip_collapsed
        Probability that a collapsed small-bowel loop is left out.
    miss_loop
        Probability that any small-bowel loop is overlooked.
    extra_loop
        Probability that a piece of sigmoid is contoured as small bowel.
    noise
        Observer variation per structure: (amplitude mm, correlation length mm).
    top_jitter
        Standard deviation of the CTV's upper border (mm).
    """

    name: Literal["vendor", "local"]
    roi_names: Mapping[str, str]
    ctv_meso_margin: float
    ctv_node_margin: float
    ctv_anterior: float
    ctv_into_wall: float
    ctv_top: float
    ctv_bottom: float
    bladder_delta: float
    femoral_head_delta: float
    bowel_delta: float
    bowel_top: float
    skip_collapsed: float
    miss_loop: float
    extra_loop: float
    noise: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    top_jitter: float = 4.0


_NOISE = {
    "CTV": (2.6, 28.0),
    "Bladder": (0.9, 25.0),
    "Femur_Head_L": (0.6, 15.0),
    "Femur_Head_R": (0.6, 15.0),
    "Bowel_Small": (1.3, 15.0),
}

VENDOR = ContouringStyle(
    name="vendor",
    roi_names={
        "CTV": "CTV",
        "Bladder": "Bladder",
        "Femur_Head_L": "Femur_Head_L",
        "Femur_Head_R": "Femur_Head_R",
        "Bowel_Small": "Bowel_Small",
    },
    ctv_meso_margin=3.0,
    ctv_node_margin=16.0,
    ctv_anterior=17.0,
    ctv_into_wall=3.0,
    ctv_top=12.0,
    ctv_bottom=-20.0,
    bladder_delta=0.4,
    femoral_head_delta=-0.3,
    bowel_delta=-0.4,
    bowel_top=12.0,
    skip_collapsed=0.35,
    miss_loop=0.08,
    extra_loop=0.1,
    noise=_NOISE,
)

LOCAL = ContouringStyle(
    name="local",
    roi_names={
        "CTV": "CTV_Rectum",
        "Bladder": "BLADDER",
        "Femur_Head_L": "FemoralHead L",
        "Femur_Head_R": "FemoralHead R",
        "Bowel_Small": "SmallBowel",
    },
    ctv_meso_margin=2.0,
    ctv_node_margin=7.0,
    ctv_anterior=6.0,
    ctv_into_wall=0.0,
    ctv_top=-4.0,
    ctv_bottom=8.0,
    bladder_delta=0.0,
    femoral_head_delta=0.0,
    bowel_delta=0.0,
    bowel_top=25.0,
    skip_collapsed=0.0,
    miss_loop=0.06,
    extra_loop=0.25,
    noise=_NOISE,
)

#: Styles by name.
STYLES: dict[str, ContouringStyle] = {"vendor": VENDOR, "local": LOCAL}


class _AnteriorLimit(Shape):
    """Everything posterior to a surface ``y = y0(z) - slope * max(|x| - x0, 0)``.

    In the middle the CTV stops a set distance in front of the rectum; towards the side walls
    the limit moves forward so that the obturator node regions are included (the butterfly
    shape of a rectal CTV at mid-pelvis).
    """

    def __init__(self, z: npt.ArrayLike, y0: npt.ArrayLike, x0: float, slope: float) -> None:
        self.z = np.asarray(z, dtype=np.float64)
        self.y0 = np.asarray(y0, dtype=np.float64)
        self.x0 = float(x0)
        self.slope = float(slope)
        self.lo = np.array([-1e6, float(self.y0.min()) - 400.0, -1e6])
        self.hi = np.full(3, 1e6)

    def sdf(self, x: npt.ArrayLike, y: npt.ArrayLike, z: npt.ArrayLike) -> F32:
        zz = np.asarray(z, dtype=np.float64)
        limit = np.interp(zz.reshape(-1), self.z, self.y0).reshape(zz.shape)
        lateral = np.maximum(np.abs(np.asarray(x, dtype=np.float64)) - self.x0, 0.0)
        # A plane tilted by ``slope``: divide by its normal length to keep a distance.
        d = (limit - self.slope * lateral - np.asarray(y, dtype=np.float64)) / np.hypot(
            1.0, self.slope
        )
        return np.asarray(d, dtype=np.float32)


def _ctv_shape(anatomy: Anatomy, style: ContouringStyle, top_z: float) -> Shape:
    """The CTV of ``style`` before observer variation and organ clipping."""
    rect = anatomy.rectum
    order = np.argsort(rect.points[:, 2])
    rz = rect.points[order, 2]
    ry = rect.points[order, 1]
    rr = np.asarray(rect.radii)[order]
    sac = anatomy.sacrum
    presacral = Loft(
        sac.z,
        sac.cx,
        sac.cy - sac.ay - 5.0,
        0.8 * sac.ax + 8.0,
        np.full(len(sac.z), 10.0),
    )
    floor = anatomy.pelvic_floor_z
    lz = np.linspace(floor + 5.0, anatomy.promontory_z - 30.0, 6)
    lateral = Loft(
        lz,
        np.zeros(6),
        np.interp(lz, rz, ry) + 6.0,
        np.full(6, 90.0),
        np.interp(lz, rz, rr) + 10.0,
    )
    nodes = Offset(Union([*anatomy.internal_iliac, *anatomy.obturator]), style.ctv_node_margin)
    parts = Union([Offset(anatomy.mesorectum, style.ctv_meso_margin), presacral, lateral, nodes])
    front = _AnteriorLimit(rz, ry - rr - style.ctv_anterior, x0=22.0, slope=1.1)
    bottom = floor - style.ctv_bottom
    return Difference(
        Intersection(
            [
                parts,
                Offset(anatomy.cavity, style.ctv_into_wall),
                front,
                HalfSpace((0.0, 0.0, 1.0), top_z),
                HalfSpace((0.0, 0.0, -1.0), -bottom),
            ]
        ),
        [Offset(anatomy.bones, 1.0), Offset(anatomy.side_wall_muscles, -style.ctv_into_wall)],
    )


def contour(
    anatomy: Anatomy,
    grid: Grid,
    style: ContouringStyle,
    rng: np.random.Generator | None,
) -> dict[str, Mask]:
    """Ground-truth masks of ``anatomy`` on ``grid`` as an observer of ``style`` draws them.

    Parameters
    ----------
    anatomy
        The patient.
    grid
        The image grid (patient frame, mm; arrays (z, y, x)).
    style
        The institution's habits.
    rng
        The observer's random stream; None gives the style's *mean* contour without observer
        variation (used to measure the ceiling a perfect model could reach).

    Returns
    -------
    dict
        Canonical structure name → boolean mask (z, y, x); mutually exclusive.
    """
    observer = rng is not None
    fields: dict[str, SmoothField] = {}
    if rng is not None:
        for name in STRUCTURES:
            fields[name] = SmoothField(rng, style.noise[name][1])
        top_jitter = float(rng.normal(0.0, style.top_jitter))
        loop_draws = rng.random((len(anatomy.bowel), 2))
        extra_draw = rng.random(3)
    else:
        top_jitter = 0.0
        loop_draws = np.ones((len(anatomy.bowel), 2))
        extra_draw = np.ones(3)

    def noisy(name: str, shape: Shape) -> Shape:
        if not observer:
            return shape
        return Displace(shape, fields[name], style.noise[name][0])

    pad = 2.0 * grid.pixel_mm
    masks: dict[str, Mask] = {}
    taken = np.zeros(grid.shape, dtype=bool)

    for side in ("L", "R"):
        centre, radius = anatomy.femoral_heads[side]
        r = radius + style.femoral_head_delta
        name = f"Femur_Head_{side}"
        head = noisy(name, Ellipsoid(centre, (r, r, r)))
        masks[name] = head.evaluate(grid, pad).inside(grid.shape) & ~taken
        taken |= masks[name]

    bladder = noisy("Bladder", Offset(anatomy.bladder, style.bladder_delta))
    masks["Bladder"] = bladder.evaluate(grid, pad).inside(grid.shape) & ~taken
    taken |= masks["Bladder"]

    ctv_top = anatomy.promontory_z + style.ctv_top + top_jitter
    bowel_top = anatomy.promontory_z + style.bowel_top + top_jitter
    loops: list[Shape] = []
    for loop, (skip, miss) in zip(anatomy.bowel, loop_draws, strict=True):
        if loop.contents == "collapsed" and skip < style.skip_collapsed:
            continue
        if miss < style.miss_loop:
            continue
        loops.append(Tube(loop.points, max(loop.radius + style.bowel_delta, 1.0)))
    if extra_draw[0] < style.extra_loop:
        # A piece of sigmoid mistaken for small bowel.
        sigmoid = anatomy.colon[0]
        n = len(sigmoid.points)
        start = int(extra_draw[1] * max(n - 12, 1))
        length = 6 + int(extra_draw[2] * 8)
        piece = sigmoid.points[start : start + length]
        if len(piece) >= 2:
            loops.append(Tube(piece, np.asarray(sigmoid.radii)[start : start + len(piece)]))
    if loops:
        bowel = noisy(
            "Bowel_Small", Intersection([Union(loops), HalfSpace((0.0, 0.0, 1.0), bowel_top)])
        )
        masks["Bowel_Small"] = bowel.evaluate(grid, pad).inside(grid.shape) & ~taken
    else:
        masks["Bowel_Small"] = np.zeros(grid.shape, dtype=bool)
    taken |= masks["Bowel_Small"]

    ctv = noisy("CTV", _ctv_shape(anatomy, style, ctv_top))
    masks["CTV"] = ctv.evaluate(grid, pad).inside(grid.shape) & ~taken
    return {name: masks[name] for name in STRUCTURES}
