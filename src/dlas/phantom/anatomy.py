"""A random adult pelvis in millimetres: bones, muscles, fat, vessels, bowel and pelvic organs.

:func:`sample_anatomy` draws one patient from a random generator. Everything is placed in the
patient frame (mm; x patient left, y posterior, z superior; origin midway between the femoral-head
centres) and built from the solids of :mod:`dlas.phantom.geometry`, so the same patient can be
imaged at any resolution. The result holds

* the *image layers*: solids in painting order with their Hounsfield values (tissue by tissue,
  later layers over earlier ones; see :mod:`dlas.phantom.render`), and
* the *true organs* that the contouring styles of :mod:`dlas.phantom.styles` turn into ground
  truth: femoral heads, bladder, small-bowel loops, and the parts of the rectal-cancer CTV
  (mesorectum, presacral space, internal iliac and obturator vessels, pelvic side walls).

Per-patient variation: sex (prostate and seminal vesicles, or uterus, cervix and vagina; wider,
shallower female pelvis), body size and subcutaneous fat, pelvic size, femoral-head size,
bladder filling (about 80–500 cm³, which moves the bowel up or down), rectal distension, gas and
stool, tumour position, number, calibre and contents (fluid, oral contrast, gas) of small-bowel
loops, intravenous contrast, bone density with age, and smooth random deformation of the body
and organs.

The HU values follow published ranges for 120 kVp CT; they overlap on purpose (urine, bowel
fluid, prostate, vessels without contrast and muscle all lie within 0–60 HU), so that a model has
to use shape and context, as on real images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from dlas.phantom.geometry import (
    Capsule,
    Cuboid,
    Difference,
    Displace,
    Ellipsoid,
    Grid,
    HalfSpace,
    Intersection,
    Loft,
    Offset,
    Shape,
    Shell,
    SmoothField,
    Tube,
    Union,
)

__all__ = ["Anatomy", "BowelLoop", "Layer", "Texture", "sample_anatomy"]

F64 = npt.NDArray[np.float64]

#: Sides as (name, sign of x): the patient's left is +x in the patient frame (DICOM LPS).
SIDES: tuple[tuple[str, float], ...] = (("L", 1.0), ("R", -1.0))

#: Patient-frame region where textures and shape perturbations are defined (x, y, z; mm).
_TEXTURE_LO = (-320.0, -320.0, -220.0)
_TEXTURE_HI = (320.0, 320.0, 260.0)


@dataclass(frozen=True)
class Texture:
    """A tissue value that varies smoothly: ``mean + sd * field`` (HU)."""

    mean: float
    sd: float
    field: SmoothField


@dataclass
class Layer:
    """One solid painted into the CT with a value (HU): filled, or as a wall (``shell`` mm)."""

    name: str
    shape: Shape
    value: float | Texture
    shell: float | None = None


@dataclass
class BowelLoop:
    """A small-bowel loop: centreline (n, 3) in mm, outer radius (mm) and contents."""

    points: F64
    radius: float
    contents: str  # "fluid", "contrast" or "collapsed"
    gas: bool

    @property
    def tube(self) -> Tube:
        """The loop's outer surface (serosa), which is what clinicians contour."""
        return Tube(self.points, self.radius)

    @property
    def length_mm(self) -> float:
        """Length of the centreline (mm)."""
        return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum())


@dataclass
class Anatomy:
    """One synthetic patient: image layers and the true organs the styles contour."""

    sex: str
    age: int
    layers: list[Layer]
    femoral_heads: dict[str, tuple[F64, float]]
    bladder: Shape
    bowel: list[BowelLoop]
    colon: list[Tube]
    rectum: Tube
    mesorectum: Loft
    sacrum: Loft
    cavity: Shape
    bones: Shape
    side_wall_muscles: Shape
    internal_iliac: list[Tube]
    obturator: list[Tube]
    pelvic_floor_z: float
    promontory_z: float
    body_width_mm: float
    summary: dict[str, Any] = field(default_factory=dict)

    def rectum_at(self, z: float) -> tuple[float, float, float]:
        """Centre (x, y) and outer radius of the rectum at height ``z`` (mm)."""
        pts, radii = self.rectum.points, self.rectum.radii
        order = np.argsort(pts[:, 2])
        zs = pts[order, 2]
        return (
            float(np.interp(z, zs, pts[order, 0])),
            float(np.interp(z, zs, pts[order, 1])),
            float(np.interp(z, zs, np.asarray(radii)[order])),
        )


def _tn(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    """A normal draw clipped to [lo, hi] (keeps every patient anatomically plausible)."""
    return float(np.clip(rng.normal(mean, sd), lo, hi))


def _rot(axis: str, degrees: float) -> F64:
    """Rows: the local axes of a solid rotated by ``degrees`` about a patient axis."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)


def _smooth_path(knots: F64, step: float = 6.0) -> F64:
    """Resample a polyline through ``knots`` (n, 3) smoothly (Catmull–Rom) every ``step`` mm."""
    p = np.vstack([2 * knots[0] - knots[1], knots, 2 * knots[-1] - knots[-2]])
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        n = max(2, int(np.ceil(np.linalg.norm(p2 - p1) / step)))
        t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
        out.append(
            0.5
            * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
            )
        )
    out.append(knots[-1][None, :])
    return np.vstack(out)


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient.

    The organ builders below draw from ``rng`` in a fixed order (traits and textures, skeleton,
    vessels, rectum, colon, bladder, sex organs, small bowel, bones), so the same stream always
    gives the same patient. Reordering the calls (or the draws inside a builder) changes every
    generated patient.

    Parameters
    ----------
    rng
        The patient's anatomy stream; the same stream gives the same patient.

    Returns
    -------
    Anatomy
        Layers and organs in the patient frame (mm; x left, y posterior, z superior).
    """
    t = _draw_traits(rng)
    body = _body(t)
    skeleton = _skeleton(rng, t)
    cavity, pelvic_back = _pelvic_cavity(t, body.inner)
    soft = _fat_and_muscles(t, body, cavity, pelvic_back)
    vessels = _vessels(rng, t)
    rectum = _rectum(rng, t)
    rectal = _rectal_layers(t, rectum) + _rectal_gas(rng, rectum)
    tumour, tumour_z = _tumour(rng, t, rectum)
    nodes = _mesorectal_nodes(rng, rectum)
    colon = _colon(rng, t, rectum)
    bladder = _bladder(rng, t, body.fat_mm, skeleton.pelvis)
    organs, pelvic_organs = (
        _female_organs(rng, t, bladder) if t.female else _male_organs(rng, t, bladder)
    )
    organs += [
        Layer("bladder wall", bladder.shape, 40.0),
        Layer("urine", Offset(bladder.shape, -bladder.wall_mm), bladder.urine_hu),
    ]
    obstacles = [
        Offset(bladder.shape, 4.0),
        Offset(colon.sigmoid, 3.0),
        Offset(colon.caecum, 3.0),
        Offset(rectum.mesorectum, 4.0),
        Offset(soft.side_wall_muscles, 2.0),
        Offset(skeleton.all, 4.0),
        *[Offset(o, 3.0) for o in pelvic_organs],
        *[Offset(v.shape, 2.0) for v in vessels.layers if v.name in ("artery", "vein")],
    ]
    bowel = _bowel_loops(
        rng,
        cavity=cavity,
        forbidden=Union(obstacles),
        z_floor=max(bladder.centre[2] + bladder.si_mm - 25.0, 10.0),
        total_mm=_tn(rng, 2600.0, 600.0, 1400.0, 4000.0),
        oral=t.oral,
    )
    bowel_layers = [layer for loop in bowel for layer in _bowel_loop_layers(rng, t, loop)]
    layers = [
        *body.layers,
        *soft.layers,
        *vessels.layers,
        *rectal,
        tumour,
        *nodes,
        *colon.layers,
        *bowel_layers,
        *organs,
        *_bone_layers(rng, t, skeleton),
    ]
    lateral_width = float(body.hip_half * 2.0)
    return Anatomy(
        sex=t.sex,
        age=t.age,
        layers=layers,
        femoral_heads=skeleton.heads,
        bladder=bladder.shape,
        bowel=bowel,
        colon=[colon.sigmoid, colon.caecum],
        rectum=rectum.wall,
        mesorectum=rectum.mesorectum,
        sacrum=skeleton.sacrum,
        cavity=cavity,
        bones=skeleton.all,
        side_wall_muscles=soft.side_wall_muscles,
        internal_iliac=vessels.internal_iliac,
        obturator=vessels.obturator,
        pelvic_floor_z=rectum.pelvic_floor_z,
        promontory_z=skeleton.promontory_z,
        body_width_mm=lateral_width,
        summary=_summary(t, body, bladder, rectum, bowel, tumour_z),
    )


def _summary(
    t: _Traits,
    body: _Body,
    bladder: _Bladder,
    rectum: _Rectum,
    bowel: list[BowelLoop],
    tumour_z: float,
) -> dict[str, Any]:
    """What the manifest records of the patient's anatomy (rounded to 0.1 mm or cm³)."""
    return {
        "sex": t.sex,
        "age": t.age,
        "body_width_mm": round(float(body.hip_half * 2.0), 1),
        "subcutaneous_fat_mm": round(body.fat_mm, 1),
        "bladder_filling_cm3": round(bladder.cm3, 1),
        "rectal_radius_mm": round(rectum.distension, 1),
        "small_bowel_loops": len(bowel),
        "small_bowel_length_mm": round(sum(loop.length_mm for loop in bowel), 1),
        "oral_contrast": bool(t.oral),
        "iv_contrast": bool(t.ivc),
        "tumour_z_mm": round(tumour_z, 1),
    }


class _Textures:
    """The smooth random fields of one patient: tissue textures and shape perturbations.

    Drawn in a fixed order from the anatomy stream, independent of any image grid.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self.shape_body = SmoothField(rng, 60.0)
        self.shape_fat = SmoothField(rng, 45.0)
        self.shape_cavity = SmoothField(rng, 35.0)
        self.shape_organ = SmoothField(rng, 30.0)
        self.fat = SmoothField(rng, 14.0, _TEXTURE_LO, _TEXTURE_HI)
        self.muscle = SmoothField(rng, 10.0, _TEXTURE_LO, _TEXTURE_HI)
        self.stool = SmoothField(rng, 5.0, (-160.0, -160.0, -120.0), (160.0, 120.0, 220.0))
        self.bone = SmoothField(rng, 5.0, (-200.0, -120.0, -220.0), (200.0, 140.0, 220.0))


# ---------------------------------------------------------------------- patient-wide traits


@dataclass(frozen=True)
class _Traits:
    """What every organ builder reads: sex, age, pelvic scale, fat, contrast and textures."""

    sex: str
    age: int
    wx: float  # pelvic scale, left-right
    wy: float  # pelvic scale, anterior-posterior
    wz: float  # pelvic scale, inferior-superior
    fat: float  # 0 lean … 1 obese
    ivc: bool  # intravenous contrast
    oral: bool  # oral contrast for small-bowel delineation
    tex: _Textures

    @property
    def female(self) -> bool:
        """Whether the patient is female (uterus, cervix and vagina; wider pelvis)."""
        return self.sex == "F"

    def P(self, x: float, y: float, z: float) -> F64:  # noqa: N802 - reads like the point P(x, y, z)
        """A pelvic landmark (mm) scaled to this patient's pelvis."""
        return np.array([x * self.wx, y * self.wy, z * self.wz], dtype=np.float64)


def _draw_traits(rng: np.random.Generator) -> _Traits:
    """Sex, age, pelvic size, fat, contrast, then the patient's smooth random fields."""
    sex = "F" if rng.random() < 0.4 else "M"
    age = round(_tn(rng, 62, 11, 33, 86))
    female = sex == "F"
    # Pelvic size and shape: female pelves are wider and shallower.
    s = _tn(rng, 1.0, 0.04, 0.9, 1.1)
    fat = float(rng.beta(2.0, 3.0))
    ivc = rng.random() < 0.5
    oral = rng.random() < 0.6
    return _Traits(
        sex=sex,
        age=age,
        wx=s * (1.04 if female else 1.0),
        wy=s * (0.97 if female else 1.0),
        wz=s * (0.96 if female else 1.0),
        fat=fat,
        ivc=ivc,
        oral=oral,
        tex=_Textures(rng),
    )


# ---------------------------------------------------------------------- body outline and fat


@dataclass(frozen=True)
class _Body:
    """The skin outline, the muscle under the subcutaneous fat, and the table top."""

    outline: Shape
    inner: Shape
    fat_mm: float  # subcutaneous fat thickness
    hip_half: float  # half-width at the greater trochanters (mm)
    depth_post: float  # posterior skin depth (mm)
    layers: list[Layer]


def _body(t: _Traits) -> _Body:
    """Trunk and thighs flattened on the couch, with subcutaneous fat over muscle."""
    t_sc = 8.0 + 30.0 * t.fat + (6.0 if t.female else 0.0)  # subcutaneous fat (mm)
    hip_half = (150.0 * t.wx) + 12.0 + t_sc  # half-width at the greater trochanters
    depth_ant = 88.0 * t.wy + t_sc * 1.1 + 25.0 * t.fat  # anterior skin below the navel
    depth_post = 112.0 * t.wy + t_sc * 0.8
    zk = [-160.0, -110.0, -70.0, -35.0, 0.0, 40.0, 80.0, 120.0, 170.0]
    width = np.array([0.50, 0.62, 0.85, 0.98, 1.0, 0.97, 0.93, 0.90, 0.88]) * hip_half
    bulge = 1.0 + 0.25 * t.fat * np.clip((np.array(zk) - 20.0) / 120.0, 0.0, 1.0)
    ant = np.array([0.55, 0.70, 0.88, 0.97, 1.0, 1.0, 1.0, 1.02, 1.05]) * depth_ant * bulge
    post = np.array([0.75, 0.85, 0.95, 1.0, 1.0, 1.0, 0.97, 0.94, 0.92]) * depth_post
    cy = (post - ant) / 2.0
    ay = (post + ant) / 2.0
    trunk = Loft(zk, np.zeros(9), cy, width, ay)
    couch_y = 0.9 * depth_post  # the body flattens on the table top
    body = Intersection(
        [
            Displace(Union([trunk, *_thighs(hip_half, depth_post)]), t.tex.shape_body, 4.0),
            HalfSpace((0.0, 1.0, 0.0), couch_y),
        ]
    )
    inner = Displace(Offset(body, -t_sc), t.tex.shape_fat, 0.25 * t_sc)
    layers = [
        *_couch(couch_y),
        Layer("subcutaneous fat", body, Texture(-102.0, 9.0, t.tex.fat)),
        Layer("muscle", inner, Texture(48.0, 5.0, t.tex.muscle)),
    ]
    return _Body(body, inner, t_sc, hip_half, depth_post, layers)


def _thighs(hip_half: float, depth_post: float) -> list[Shape]:
    """The upper thighs (left, right) below the trunk."""
    thighs: list[Shape] = []
    for _, sg in SIDES:
        thigh_z = [-170.0, -120.0, -80.0, -40.0]
        thighs.append(
            Loft(
                thigh_z,
                [sg * 0.50 * hip_half] * 4,
                [8.0, 6.0, 4.0, 0.0],
                [0.52 * hip_half, 0.54 * hip_half, 0.55 * hip_half, 0.50 * hip_half],
                [0.62 * depth_post + 8, 0.64 * depth_post + 8, 0.66 * depth_post + 8, 60.0],
            )
        )
    return thighs


def _couch(couch_y: float) -> list[Layer]:
    """Flat radiotherapy table top: carbon-fibre skins around a foam core."""
    return [
        Layer(
            "couch", Cuboid((-260.0, couch_y + 1.0, -400.0), (260.0, couch_y + 46.0, 400.0)), 300.0
        ),
        Layer(
            "couch foam",
            Cuboid((-257.0, couch_y + 4.0, -400.0), (257.0, couch_y + 43.0, 400.0)),
            -880.0,
        ),
    ]


# ---------------------------------------------------------------------- skeleton


@dataclass(frozen=True)
class _Skeleton:
    """Bones as solids: the pelvis (hip bones, sacrum, L5), femurs, heads, canal and disc."""

    heads: dict[str, tuple[F64, float]]
    sacrum: Loft
    pelvis: Shape
    femurs: Shape
    all: Shape
    marrow: list[Shape]
    canal: Loft
    disc: Loft
    promontory_z: float


@dataclass(frozen=True)
class _Spine:
    """Sacrum and coccyx, the fifth lumbar vertebra, the spinal canal and the L5/S1 disc."""

    sacrum: Loft
    vertebra: list[Shape]
    canal: Loft
    disc: Loft
    promontory_z: float


def _skeleton(rng: np.random.Generator, t: _Traits) -> _Skeleton:
    """Femoral heads, spine, femurs, acetabula, ilia, pubic and ischial bones."""
    heads = _femoral_heads(rng, t)
    spine = _spine(rng, t)
    bones: list[Shape] = [spine.sacrum, *spine.vertebra]
    femurs: list[Shape] = []
    marrow: list[Shape] = []
    acetabula: list[Shape] = []
    wings: list[Shape] = []
    for name, sg in SIDES:
        c, r = heads[name]
        shaft, medulla = _femur(c, r, sg)
        femurs += shaft
        marrow.append(medulla)
        acetabula.append(_acetabulum(c, r, sg))
        ilium, wing = _ilium(t, c, sg)
        bones += ilium
        wings.append(wing)
        bones += _pubis_and_ischium(t, c, sg)
    bones += acetabula + wings
    pelvis_bones = Union(bones)
    femur_bones = Union(femurs)
    all_bones = Union(
        [pelvis_bones, femur_bones, *[Ellipsoid(c, (r, r, r)) for c, r in heads.values()]]
    )
    return _Skeleton(
        heads=heads,
        sacrum=spine.sacrum,
        pelvis=pelvis_bones,
        femurs=femur_bones,
        all=all_bones,
        marrow=marrow,
        canal=spine.canal,
        disc=spine.disc,
        promontory_z=spine.promontory_z,
    )


def _femoral_heads(rng: np.random.Generator, t: _Traits) -> dict[str, tuple[F64, float]]:
    """Centre (mm) and radius (mm) of each femoral head, by side."""
    r_fh = _tn(rng, 22.0 if t.female else 23.4, 1.0, 20.0, 25.5)
    heads: dict[str, tuple[F64, float]] = {}
    for name, sg in SIDES:
        centre = np.array(
            [sg * (88.0 * t.wx + rng.normal(0, 1.0)), rng.normal(0, 1.5), rng.normal(0, 1.5)]
        )
        heads[name] = (centre, r_fh + rng.normal(0, 0.35))
    return heads


def _spine(rng: np.random.Generator, t: _Traits) -> _Spine:
    """Sacrum and coccyx (anterior surface, thickness and half-width along z), L5 and canal."""
    wx, wy, wz = t.wx, t.wy, t.wz
    sz = np.array([-18.0, -5.0, 15.0, 40.0, 70.0, 95.0, 122.0]) * wz
    y_ant = np.array([55.0, 62.0, 72.0, 78.0, 72.0, 55.0, 38.0]) * wy + rng.normal(0, 3)
    thick = np.array([6.0, 8.0, 12.0, 18.0, 24.0, 30.0, 34.0])
    half = np.array([6.0, 9.0, 20.0, 33.0, 46.0, 54.0, 56.0]) * wx
    sacrum = Loft(sz, np.zeros(7), y_ant + thick / 2, half, thick / 2 + 2.0)
    promontory_z = float(sz[-1])
    l5 = Loft(
        [promontory_z + 8.0, promontory_z + 60.0],
        [0.0, 0.0],
        [y_ant[-1] + 16.0, y_ant[-1] + 12.0],
        [27.0 * wx, 28.0 * wx],
        [19.0, 19.0],
    )
    l5_arch = Ellipsoid((0.0, y_ant[-1] + 50.0, promontory_z + 30.0), (30.0, 14.0, 22.0))
    canal = Loft(
        [promontory_z - 20.0, promontory_z + 60.0],
        [0.0, 0.0],
        [y_ant[-1] + 33.0, y_ant[-1] + 38.0],
        [10.0, 11.0],
        [7.0, 8.0],
    )
    disc = Loft(
        [promontory_z + 1.0, promontory_z + 8.0],
        [0, 0],
        [y_ant[-1] + 16.0] * 2,
        [26.0 * wx] * 2,
        [18.0] * 2,
    )
    return _Spine(sacrum, [l5, l5_arch], canal, disc, promontory_z)


def _femur(c: F64, r: float, sg: float) -> tuple[list[Shape], Shape]:
    """Neck, greater and lesser trochanter and shaft of one femur (head excluded); marrow."""
    neck_dir = np.array([sg * 0.74, -0.17, -0.65])
    neck_dir /= np.linalg.norm(neck_dir)
    parts: list[Shape] = [
        Capsule(c, c + 48.0 * neck_dir, 0.68 * r, 0.72 * r),
        Ellipsoid(c + np.array([sg * 54.0, 6.0, -16.0]), (17.0, 22.0, 28.0)),
        Ellipsoid(c + np.array([sg * 30.0, 14.0, -64.0]), (10.0, 10.0, 13.0)),
        Capsule(
            c + np.array([sg * 46.0, 3.0, -42.0]),
            c + np.array([sg * 34.0, -6.0, -330.0]),
            15.5,
            13.5,
        ),
    ]
    marrow = Capsule(
        c + np.array([sg * 44.0, 3.0, -70.0]),
        c + np.array([sg * 34.0, -6.0, -330.0]),
        9.0,
        8.5,
    )
    return parts, marrow


def _acetabulum(c: F64, r: float, sg: float) -> Shape:
    """A cup over the femoral head, open laterally, anteriorly and inferiorly."""
    opening = np.array([sg * 0.72, -0.38, -0.58])
    opening /= np.linalg.norm(opening)
    return Difference(
        Intersection(
            [
                Ellipsoid(c + np.array([-sg * 3.0, 2.0, 3.0]), (r + 12.0, r + 13.0, r + 13.0)),
                HalfSpace(opening, float(opening @ c) + 0.3 * r),
            ]
        ),
        [Ellipsoid(c, (r + 2.2, r + 2.2, r + 2.2))],
    )


def _ilium(t: _Traits, c: F64, sg: float) -> tuple[list[Shape], Shape]:
    """Body of the ilium above the acetabulum, and the wing as the lateral arc of a ring."""
    wx, wy, wz = t.wx, t.wy, t.wz
    body: list[Shape] = [
        Capsule(c + np.array([-sg * 6.0, 10.0, 22.0]), t.P(sg * 66.0, 58.0, 70.0), 19.0, 14.0),
        Capsule(c + np.array([-sg * 4.0, 20.0, 14.0]), t.P(sg * 55.0, 72.0, 45.0), 13.0, 12.0),
    ]
    wz_k = np.array([52.0, 80.0, 115.0, 148.0]) * wz
    ring = Loft(
        wz_k,
        [sg * 44.0 * wx] * 4,
        [18.0 * wy, 14.0 * wy, 12.0 * wy, 10.0 * wy],
        np.array([40.0, 66.0, 80.0, 84.0]) * wx,
        np.array([50.0, 60.0, 66.0, 68.0]) * wy,
    )
    wing = Intersection(
        [
            Shell(ring, 5.0),
            HalfSpace((-sg, 0.0, 0.0), -(44.0 * wx - 6.0)),
            HalfSpace((0.0, -1.0, 0.0), 34.0 * wy),
        ]
    )
    return body, wing


def _pubis_and_ischium(t: _Traits, c: F64, sg: float) -> list[Shape]:
    """Pubis, ischium and ischial tuberosity (the obturator foramen is the gap between them)."""
    P = t.P
    return [
        Capsule(c + np.array([-sg * 18.0, -30.0, -4.0]), P(sg * 14.0, -71.0, -24.0), 10.0, 11.0),
        Ellipsoid(P(sg * 10.5, -72.0, -36.0), (8.5, 11.0, 19.0)),
        Capsule(P(sg * 13.0, -66.0, -50.0), P(sg * 50.0, 0.0, -64.0), 8.0, 9.0),
        Capsule(c + np.array([-sg * 10.0, 22.0, -10.0]), P(sg * 52.0, 30.0, -58.0), 14.0, 12.0),
        Ellipsoid(P(sg * 52.0, 34.0, -64.0), (14.0, 18.0, 13.0)),
    ]


# ---------------------------------------------------------------------- cavities and muscles


def _pelvic_cavity(t: _Traits, inner: Shape) -> tuple[Shape, Loft]:
    """The abdominopelvic cavity, and its posterior part (which bounds the ischioanal fossae).

    In front, above the symphysis, the cavity reaches the thin anterior abdominal wall.
    """
    wx, wy = t.wx, t.wy
    pelvic_front = Intersection(
        [
            Loft(
                [-45.0, -20.0, 0.0, 20.0, 45.0, 75.0],
                [0.0] * 6,
                np.array([-10.0, -30.0, -50.0, -55.0, -55.0, -50.0]) * wy,
                np.array([30.0, 46.0, 54.0, 60.0, 66.0, 75.0]) * wx,
                np.array([30.0, 42.0, 62.0, 70.0, 70.0, 70.0]) * wy,
            ),
            Offset(inner, -11.0),
        ]
    )
    pelvic_back = Loft(
        [-75.0, -50.0, -20.0, 10.0, 40.0, 75.0, 110.0],
        [0.0] * 7,
        np.array([42.0, 30.0, 20.0, 25.0, 32.0, 28.0, 15.0]) * wy,
        np.array([18.0, 32.0, 48.0, 56.0, 62.0, 66.0, 62.0]) * wx,
        np.array([22.0, 26.0, 30.0, 36.0, 40.0, 42.0, 38.0]) * wy,
    )
    abdomen = Intersection(
        [
            Loft(
                [45.0, 80.0, 120.0, 170.0],
                [0.0] * 4,
                np.array([-25.0, -30.0, -32.0, -30.0]),
                np.array([78.0, 108.0, 122.0, 128.0]) * wx,
                np.array([62.0, 75.0, 80.0, 85.0]) * wy + 25.0 * t.fat,
            ),
            Offset(inner, -13.0),
        ]
    )
    cavity = Displace(Union([pelvic_front, pelvic_back, abdomen]), t.tex.shape_cavity, 3.0)
    return cavity, pelvic_back


@dataclass(frozen=True)
class _SoftTissue:
    """Fat and muscle layers in painting order, and the muscles of the pelvic side walls."""

    layers: list[Layer]
    side_wall_muscles: Shape


def _fat_and_muscles(t: _Traits, body: _Body, cavity: Shape, pelvic_back: Loft) -> _SoftTissue:
    """Intermuscular, ischioanal and pelvic fat; psoas, iliacus and piriformis."""
    psoas: list[Shape] = []
    iliacus: list[Shape] = []
    gluteal: list[Shape] = []
    ischioanal: list[Shape] = []
    piriformis: list[Shape] = []
    for _, sg in SIDES:
        psoas.append(_psoas(t, sg))
        iliacus.append(_iliacus(t, sg))
        piriformis.append(
            Capsule(t.P(sg * 28.0, 78.0, 70.0), t.P(sg * 100.0, 58.0, 20.0), 10.0, 8.0)
        )
        gluteal += _gluteal(t, sg)
        ischioanal.append(
            Difference(
                Ellipsoid(t.P(sg * 34.0, 50.0, -62.0), (24.0, 42.0, 34.0)),
                [Offset(pelvic_back, 5.0)],
            )
        )
    fat = t.tex.fat
    layers: list[Layer] = []
    for g in gluteal:
        g = Displace(g, t.tex.shape_organ, 4.0)
        layers.append(
            Layer(
                "intermuscular fat",
                Intersection([g, Offset(body.inner, -4.0)]),
                Texture(-95.0, 8.0, fat),
                shell=2.5,
            )
        )
    # Intergluteal cleft: fat between the buttocks, behind the coccyx.
    cleft = Intersection(
        [
            Ellipsoid((0.0, body.depth_post * 0.9, -60.0), (8.0 + 0.3 * body.fat_mm, 50.0, 60.0)),
            Offset(body.outline, -2.0),
        ]
    )
    layers += [
        Layer("ischioanal fat", Union([*ischioanal, cleft]), Texture(-98.0, 8.0, fat)),
        Layer("pelvic fat", cavity, Texture(-94.0, 8.0, fat)),
        Layer("psoas", Union(psoas), Texture(50.0, 5.0, t.tex.muscle)),
        Layer("iliacus", Union(iliacus), Texture(47.0, 5.0, t.tex.muscle)),
        Layer("piriformis", Union(piriformis), Texture(46.0, 5.0, t.tex.muscle)),
    ]
    return _SoftTissue(layers, Union([*psoas, *iliacus, *piriformis]))


def _psoas(t: _Traits, sg: float) -> Shape:
    """Psoas major from the lumbar spine to the lesser trochanter."""
    pts = np.array(
        [
            [sg * 36.0, 40.0, 175.0],
            [sg * 42.0, 32.0, 125.0],
            [sg * 60.0, 12.0, 82.0],
            [sg * 72.0, -22.0, 42.0],
            [sg * 76.0, -50.0, 12.0],
            [sg * 80.0, -44.0, -25.0],
            [sg * 96.0, -14.0, -62.0],
            [sg * 108.0, 6.0, -72.0],
        ]
    ) * np.array([t.wx, t.wy, t.wz])
    return Tube(pts, np.array([17.0, 19.0, 21.0, 20.0, 16.0, 14.0, 11.0, 8.0]))


def _iliacus(t: _Traits, sg: float) -> Shape:
    """Iliacus: a 16 mm sheet lining the inside of the iliac wing."""
    wx, wy, wz = t.wx, t.wy, t.wz
    ring_in = Loft(
        np.array([60.0, 80.0, 115.0, 150.0]) * wz,
        [sg * 44.0 * wx] * 4,
        [18.0 * wy, 14.0 * wy, 12.0 * wy, 10.0 * wy],
        np.array([40.0, 62.0, 76.0, 80.0]) * wx,
        np.array([46.0, 56.0, 62.0, 64.0]) * wy,
    )
    return Intersection(
        [
            Difference(ring_in, [Offset(ring_in, -16.0)]),
            HalfSpace((-sg, 0.0, 0.0), -50.0 * wx),
            HalfSpace((0.0, -1.0, 0.0), 34.0 * wy),
        ]
    )


def _gluteal(t: _Traits, sg: float) -> list[Shape]:
    """Gluteal and thigh muscle bellies of one side (outlined by intermuscular fat)."""
    wx, wy = t.wx, t.wy
    return [
        Ellipsoid((sg * 82.0 * wx, 96.0 * wy, 5.0), (78.0 * wx, 40.0, 88.0), _rot("z", -sg * 28)),
        Ellipsoid((sg * 122.0 * wx, 45.0 * wy, 62.0), (32.0, 52.0, 55.0), _rot("z", sg * 20)),
        Ellipsoid((sg * 95.0 * wx, -55.0 * wy, -110.0), (48.0, 40.0, 80.0)),
        Ellipsoid((sg * 55.0 * wx, 10.0, -120.0), (35.0, 45.0, 70.0)),
    ]


# ---------------------------------------------------------------------- vessels


@dataclass(frozen=True)
class _Vessels:
    """Iliac vessels and lymph nodes in painting order; the CTV's vessels by name."""

    layers: list[Layer]
    internal_iliac: list[Tube]  # artery, vein, artery, vein (left, right)
    obturator: list[Tube]


def _vessels(rng: np.random.Generator, t: _Traits) -> _Vessels:
    """Common, external and internal iliac and obturator arteries with their veins, and nodes."""
    art_hu = _tn(rng, 175, 25, 120, 240) if t.ivc else _tn(rng, 42, 4, 32, 50)
    vein_hu = art_hu - (15.0 if t.ivc else 2.0)
    layers: list[Layer] = []
    internal: list[Tube] = []
    obturator: list[Tube] = []
    for _, sg in SIDES:
        common, external, inner_il, obt = _iliac_paths(rng, t, sg)
        vein_shift = np.array([-sg * 6.0, 9.0, 0.0])
        for path, ra, rv in (
            (common, 5.5, 8.0),
            (external, 4.5, 6.5),
            (inner_il, 4.0, 6.0),
            (obt, 2.2, 2.8),
        ):
            smooth = _smooth_path(path, 14.0)
            art = Tube(smooth, ra)
            vein = Tube(smooth + vein_shift, rv)
            layers += [Layer("vein", vein, vein_hu), Layer("artery", art, art_hu)]
            if path is inner_il:
                internal += [art, vein]
            if path is obt:
                obturator += [art, vein]
    layers += _lymph_nodes(rng, internal[::2] + obturator[::2])
    return _Vessels(layers, internal, obturator)


def _iliac_paths(rng: np.random.Generator, t: _Traits, sg: float) -> tuple[F64, F64, F64, F64]:
    """Knots (mm) of the common, external, internal iliac and obturator arteries of one side.

    Each path is jittered in the axial plane and starts where its parent vessel divides.
    """
    scale = np.array([t.wx, t.wy, t.wz])
    common = (
        np.array([[sg * 10.0, 0.0, 180.0], [sg * 20.0, 12.0, 140.0], [sg * 30.0, 20.0, 108.0]])
        * scale
    )
    external = (
        np.array(
            [
                [sg * 30.0, 20.0, 108.0],
                [sg * 42.0, -8.0, 80.0],
                [sg * 55.0, -42.0, 42.0],
                [sg * 62.0, -66.0, 10.0],
                [sg * 70.0, -66.0, -25.0],
                [sg * 80.0, -58.0, -140.0],
            ]
        )
        * scale
    )
    inner_il = (
        np.array(
            [
                [sg * 30.0, 20.0, 108.0],
                [sg * 40.0, 42.0, 86.0],
                [sg * 50.0, 50.0, 60.0],
                [sg * 55.0, 40.0, 35.0],
                [sg * 56.0, 26.0, 12.0],
            ]
        )
        * scale
    )
    obt = (
        np.array(
            [
                [sg * 55.0, 40.0, 35.0],
                [sg * 60.0, 14.0, 20.0],
                [sg * 62.0, -14.0, 4.0],
                [sg * 62.0, -30.0, -4.0],
            ]
        )
        * scale
    )
    common = common + _jitter(rng, 3) * [1, 1, 0]
    external[1:] += _jitter(rng, 5) * [1, 1, 0]
    inner_il[1:] += _jitter(rng, 4) * [1, 1, 0]
    inner_il[0] = common[-1]
    external[0] = common[-1]
    obt[0] = inner_il[3]
    return common, external, inner_il, obt


def _jitter(rng: np.random.Generator, n: int) -> F64:
    """Random displacements (mm) of ``n`` knots."""
    return rng.normal(0, 2.5, size=(n, 3))


def _lymph_nodes(rng: np.random.Generator, arteries: list[Tube]) -> list[Layer]:
    """Zero to two lymph nodes beside each of the given arteries."""
    nodes: list[Layer] = []
    for tube in arteries:
        for _ in range(int(rng.integers(0, 3))):
            p = tube.points[int(rng.integers(0, len(tube.points)))]
            nodes.append(
                Layer(
                    "lymph node",
                    Ellipsoid(p + rng.normal(0, 5, 3) + [0, 6, 0], rng.uniform(2.5, 4.5, 3)),
                    38.0,
                )
            )
    return nodes


# ---------------------------------------------------------------------- rectum and mesorectum


@dataclass(frozen=True)
class _Rectum:
    """The rectum (knots along z, outer wall and lumen) and the mesorectum around it."""

    knots_x: F64
    knots_y: F64
    knots_z: F64
    knots_r: F64
    points: F64  # smoothed centreline (n, 3)
    radii: F64  # outer radius along ``points``
    wall: Tube
    lumen: Tube
    mesorectum: Loft
    meso_z: F64  # knots of the mesorectum along z
    distension: float
    pelvic_floor_z: float

    def at(self, z: float) -> tuple[Any, Any, Any]:
        """Centre (x, y) and outer radius (mm) of the rectum at height ``z``, from the knots."""
        return (
            np.interp(z, self.knots_z, self.knots_x),
            np.interp(z, self.knots_z, self.knots_y),
            np.interp(z, self.knots_z, self.knots_r),
        )


def _rectum(rng: np.random.Generator, t: _Traits) -> _Rectum:
    """Rectal centreline, distension and wall, and the mesorectum (thicker with more fat)."""
    wz = t.wz
    rk_z = np.array([-95.0, -72.0, -52.0, -30.0, -5.0, 20.0, 45.0, 68.0]) * wz
    rk_y = np.array([52.0, 40.0, 26.0, 24.0, 30.0, 38.0, 40.0, 30.0]) * t.wy + rng.normal(0, 3, 8)
    rk_x = rng.normal(0, 4, 8) * np.array([0, 0.3, 0.6, 1, 1, 1, 1, 1.5])
    distension = _tn(rng, 17.0, 3.0, 12.0, 24.0)
    rk_r = np.array(
        [
            9.0,
            11.0,
            12.0,
            distension,
            distension,
            0.85 * distension,
            0.8 * distension,
            0.75 * distension,
        ]
    )
    rect_pts = _smooth_path(np.column_stack([rk_x, rk_y, rk_z]), 9.0)
    rect_r = np.interp(rect_pts[:, 2], rk_z, rk_r)
    mz = np.array([-52.0, -35.0, -10.0, 20.0, 45.0, 66.0]) * wz
    mx = np.interp(mz, rk_z, rk_x)
    my = np.interp(mz, rk_z, rk_y)
    mr = np.interp(mz, rk_z, rk_r)
    meso_w = np.array([5.0, 13.0, 22.0, 24.0, 18.0, 10.0]) * (0.8 + 0.4 * t.fat)
    meso_d = np.array([5.0, 9.0, 12.0, 13.0, 11.0, 7.0]) * (0.8 + 0.4 * t.fat)
    return _Rectum(
        knots_x=rk_x,
        knots_y=rk_y,
        knots_z=rk_z,
        knots_r=rk_r,
        points=rect_pts,
        radii=rect_r,
        wall=Tube(rect_pts, rect_r),
        lumen=Tube(rect_pts, np.maximum(rect_r - 3.5, 0.5)),
        mesorectum=Loft(mz, mx, my + 4.0, mr + meso_w, mr + meso_d),
        meso_z=mz,
        distension=distension,
        pelvic_floor_z=float(rk_z[2]),
    )


def _rectal_layers(t: _Traits, r: _Rectum) -> list[Layer]:
    """Mesorectal fascia, anal sphincter, rectal wall and stool above the pelvic floor."""
    return [
        Layer("mesorectal fascia", r.mesorectum, 15.0, shell=1.4),
        Layer(
            "anal sphincter",
            Intersection([Tube(r.points, r.radii + 5.0), HalfSpace((0, 0, 1), r.pelvic_floor_z)]),
            52.0,
        ),
        Layer("rectal wall", r.wall, Texture(46.0, 5.0, t.tex.muscle)),
        Layer(
            "rectal contents",
            Intersection([r.lumen, HalfSpace((0, 0, -1), -r.pelvic_floor_z)]),
            Texture(-40.0, 70.0, t.tex.stool),
        ),
    ]


def _rectal_gas(rng: np.random.Generator, r: _Rectum) -> list[Layer]:
    """Zero to three gas bubbles, on the anterior (non-dependent) side of the supine lumen."""
    gas: list[Layer] = []
    for _ in range(int(rng.integers(0, 4))):
        zc = rng.uniform(r.pelvic_floor_z + 15, r.knots_z[-1])
        x0, y0, r0 = r.at(zc)
        bubble = Ellipsoid((x0, y0 - 0.55 * r0, zc), (0.8 * r0, 0.55 * r0, rng.uniform(8, 22)))
        gas.append(Layer("rectal gas", Intersection([r.lumen, bubble]), -900.0))
    return gas


def _tumour(rng: np.random.Generator, t: _Traits, r: _Rectum) -> tuple[Layer, float]:
    """Tumour of the mid-low rectum (eccentric wall thickening), and its height z (mm)."""
    tz = float(rng.uniform(-35.0, 10.0))
    tphi = float(rng.uniform(0, 2 * np.pi))
    tx, ty, tr = r.at(tz)
    t_len = rng.uniform(25, 50)
    tumour = Intersection(
        [
            Offset(r.wall, rng.uniform(2.0, 6.0)),
            Ellipsoid(
                (tx + 0.6 * tr * math.cos(tphi), ty + 0.6 * tr * math.sin(tphi), tz),
                (0.95 * tr, 0.95 * tr, t_len / 2),
            ),
        ]
    )
    return Layer("tumour", tumour, Texture(52.0, 6.0, t.tex.muscle)), tz


def _mesorectal_nodes(rng: np.random.Generator, r: _Rectum) -> list[Layer]:
    """One to four lymph nodes in the anterior half of the mesorectum."""
    nodes: list[Layer] = []
    for _ in range(int(rng.integers(1, 5))):
        zc = rng.uniform(r.meso_z[1], r.meso_z[-2])
        cx0, cy0, ax0, ay0 = (float(v[0]) for v in r.mesorectum.params(np.array([zc])))
        ang = rng.uniform(0.2 * np.pi, 0.8 * np.pi)
        p = (cx0 + 0.75 * ax0 * math.cos(ang), cy0 + 0.75 * ay0 * math.sin(ang), zc)
        nodes.append(Layer("mesorectal node", Ellipsoid(p, rng.uniform(2.5, 4.5, 3)), 40.0))
    return nodes


# ---------------------------------------------------------------------- colon


@dataclass(frozen=True)
class _Colon:
    """Sigmoid and caecum (outer walls) and their layers (wall, stool, gas)."""

    sigmoid: Tube
    caecum: Tube
    layers: list[Layer]


def _colon(rng: np.random.Generator, t: _Traits, rectum: _Rectum) -> _Colon:
    """The sigmoid, continuing the rectum up to the left, and the caecum on the right."""
    sig_knots = np.array(
        [
            [rectum.knots_x[-1], rectum.knots_y[-1], rectum.knots_z[-1]],
            [18.0, 22.0, 80.0],
            [42.0, -12.0, 92.0],
            [52.0, -36.0, 104.0],
            [34.0, -26.0, 118.0],
            [55.0, -6.0, 132.0],
            [80.0, 20.0, 150.0],
            [88.0, 30.0, 175.0],
            [92.0, 40.0, 200.0],
        ]
    )
    sig_knots[1:-1] += rng.normal(0, 6, (7, 3)) * [1, 1, 0.5]
    sig_pts = _smooth_path(sig_knots, 11.0)
    sig_r = _tn(rng, 15.0, 2.0, 11.0, 19.0)
    sigmoid = Tube(sig_pts, sig_r)
    cae_knots = np.array(
        [[-74.0, -18.0, 62.0], [-80.0, -5.0, 95.0], [-82.0, 8.0, 140.0], [-80.0, 15.0, 200.0]]
    ) * [t.wx, t.wy, 1] + rng.normal(0, 4, (4, 3))
    caecum = Tube(_smooth_path(cae_knots, 14.0), _tn(rng, 23.0, 2.5, 18.0, 28.0))
    layers: list[Layer] = []
    for tube in (sigmoid, caecum):
        layers += _colon_layers(rng, t, tube)
    return _Colon(sigmoid, caecum, layers)


def _colon_layers(rng: np.random.Generator, t: _Traits, tube: Tube) -> list[Layer]:
    """Wall and stool of one colon segment, with one to three gas pockets."""
    inner_tube = Tube(tube.points, np.asarray(tube.radii) - 2.5)
    layers = [
        Layer("colon wall", tube, Texture(44.0, 5.0, t.tex.muscle)),
        Layer("colon contents", inner_tube, Texture(-60.0, 90.0, t.tex.stool)),
    ]
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(0, len(tube.points)))
        c0 = tube.points[k]
        r0 = float(np.asarray(tube.radii)[k])
        layers.append(
            Layer(
                "colon gas",
                Intersection(
                    [
                        inner_tube,
                        Ellipsoid(
                            c0 + np.array([0.0, -0.45 * r0, 0.0]),
                            (r0, 0.6 * r0, rng.uniform(10, 30)),
                        ),
                    ]
                ),
                -920.0,
            )
        )
    return layers


# ---------------------------------------------------------------------- pelvic organs


@dataclass(frozen=True)
class _Bladder:
    """The bladder (outer wall), its size and position, wall thickness and urine value."""

    shape: Shape
    centre: tuple[float, float, float]
    ap_mm: float  # anterior-posterior semi-axis
    si_mm: float  # inferior-superior semi-axis
    base_z: float
    cm3: float
    wall_mm: float
    urine_hu: float


def _bladder(rng: np.random.Generator, t: _Traits, t_sc: float, pelvis_bones: Shape) -> _Bladder:
    """A bladder of 80–500 cm³ behind the anterior abdominal wall, above the symphysis."""
    bladder_cm3 = float(np.clip(np.exp(rng.normal(math.log(200.0), 0.45)), 80.0, 500.0))
    R = (3.0 * bladder_cm3 * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    b_ap = min(0.88 * R, 37.0)
    b_lr = 1.18 * R
    b_si = bladder_cm3 * 1000.0 / (4.0 / 3.0 * math.pi * b_lr * b_ap)
    base_z = (-22.0 if not t.female else -27.0) * t.wz + rng.normal(0, 3)
    # Behind the anterior abdominal wall (a little fat between), above and behind the symphysis.
    front = -(88.0 * t.wy + 0.1 * t_sc + 25.0 * t.fat) + 11.0
    b_front = max(front + 5.0 + abs(rng.normal(0, 3)), -80.0 * t.wy)
    b_centre = (rng.normal(0, 3), b_front + b_ap, base_z + b_si)
    bladder = Difference(
        Displace(
            Ellipsoid(b_centre, (b_lr, b_ap, b_si), _rot("x", rng.normal(-8, 5))),
            t.tex.shape_organ,
            2.5,
        ),
        [Offset(pelvis_bones, 2.0)],
    )
    return _Bladder(
        shape=bladder,
        centre=b_centre,
        ap_mm=b_ap,
        si_mm=b_si,
        base_z=base_z,
        cm3=bladder_cm3,
        wall_mm=_tn(rng, 2.0 + 60.0 / R, 0.4, 2.0, 5.0),
        urine_hu=_tn(rng, 8.0, 4.0, 0.0, 18.0),
    )


def _female_organs(
    rng: np.random.Generator, t: _Traits, bladder: _Bladder
) -> tuple[list[Layer], list[Shape]]:
    """Uterus (enhancing with intravenous contrast), cervix and vagina: layers and solids."""
    b_centre, b_ap = bladder.centre, bladder.ap_mm
    top = b_centre[2] + 0.4 * bladder.si_mm
    ut_c = (rng.normal(0, 5), b_centre[1] + b_ap * 0.7 + 18.0, top + 5.0)
    uterus = Ellipsoid(
        ut_c,
        (_tn(rng, 27, 4, 18, 36), _tn(rng, 19, 3, 13, 26), _tn(rng, 36, 5, 25, 48)),
        _rot("x", rng.normal(-45, 10)),
    )
    cervix = Capsule(ut_c + np.array([0, 12.0, -25.0]), (0.0, 12.0 * t.wy, -35.0), 13.0, 12.0)
    vagina = Capsule((0.0, 12.0 * t.wy, -35.0), (0.0, 14.0 * t.wy, -80.0), 10.0, 9.0)
    layers = [
        Layer("uterus", uterus, Texture(75.0 if t.ivc else 48.0, 6.0, t.tex.muscle)),
        Layer("cervix", cervix, 50.0),
        Layer("vagina", vagina, 42.0),
    ]
    return layers, [uterus, cervix, vagina]


def _male_organs(
    rng: np.random.Generator, t: _Traits, bladder: _Bladder
) -> tuple[list[Layer], list[Shape]]:
    """Prostate (larger with age) and seminal vesicles: layers and solids."""
    pr = _tn(rng, 1.0 + (t.age - 60) * 0.006, 0.1, 0.8, 1.35)
    prostate = Ellipsoid((0.0, -26.0 * t.wy, -44.0 * t.wz), (20.0 * pr, 15.0 * pr, 17.0 * pr))
    layers = [Layer("prostate", prostate, Texture(42.0, 5.0, t.tex.muscle))]
    solids: list[Shape] = [prostate]
    for _, sg in SIDES:
        sv = Ellipsoid(
            (sg * 19.0, bladder.centre[1] + bladder.ap_mm * 0.75 + 6.0, bladder.base_z + 10.0),
            (20.0, 6.5, 7.0),
            _rot("y", sg * 20) @ _rot("z", -sg * 15),
        )
        layers.append(Layer("seminal vesicle", sv, 36.0))
        solids.append(sv)
    return layers, solids


# ---------------------------------------------------------------------- small bowel and bones


def _bowel_loop_layers(rng: np.random.Generator, t: _Traits, loop: BowelLoop) -> list[Layer]:
    """Wall, contents (oral contrast, collapsed or fluid) and perhaps a gas pocket of a loop."""
    tube = loop.tube
    lumen_r = max(loop.radius - 2.0, 0.5)
    layers = [Layer("bowel wall", tube, 55.0 if t.ivc else 44.0)]
    value: float | Texture
    if loop.contents == "contrast":
        value = Texture(_tn(rng, 260, 50, 150, 380), 25.0, t.tex.stool)
    elif loop.contents == "collapsed":
        value = Texture(35.0, 10.0, t.tex.stool)
    else:
        value = Texture(_tn(rng, 18, 6, 5, 32), 6.0, t.tex.stool)
    layers.append(Layer("bowel contents", Tube(loop.points, lumen_r), value))
    if loop.gas:
        k = int(rng.integers(0, len(loop.points)))
        c0 = loop.points[k]
        layers.append(
            Layer(
                "bowel gas",
                Intersection(
                    [
                        Tube(loop.points, lumen_r),
                        Ellipsoid(
                            c0 + np.array([0.0, -0.5 * lumen_r, 0.0]),
                            (lumen_r, 0.6 * lumen_r, 15.0),
                        ),
                    ]
                ),
                -900.0,
            )
        )
    return layers


def _bone_layers(rng: np.random.Generator, t: _Traits, sk: _Skeleton) -> list[Layer]:
    """Bones, painted last: cortex, trabecular bone (density falls with age), marrow, canal."""
    bmd = _tn(rng, 1.0 - 0.006 * (t.age - 50), 0.08, 0.6, 1.2)  # bone density factor
    cortical = 1050.0 * bmd
    trab = Texture(220.0 * bmd, 45.0, t.tex.bone)
    layers = [
        Layer("cortical bone", sk.pelvis, cortical * 0.9),
        Layer("trabecular bone", Offset(sk.pelvis, -2.2), trab),
        Layer("cortical bone", sk.femurs, cortical),
        Layer("trabecular bone", Offset(sk.femurs, -3.0), trab),
        Layer("marrow", Union(sk.marrow), Texture(-20.0, 20.0, t.tex.bone)),
    ]
    for c, r in sk.heads.values():
        head = Ellipsoid(c, (r, r, r))
        layers += [
            Layer("cortical bone", head, cortical * 0.8),
            Layer("trabecular bone", Offset(head, -1.6), trab),
        ]
    layers += [
        Layer("spinal canal", sk.canal, 12.0),
        Layer("intervertebral disc", sk.disc, 85.0),
    ]
    return layers


# ---------------------------------------------------------------------- small-bowel random walk

#: Lattice on which the free space for bowel loops is tabulated (patient frame, mm).
_SPACE_LO = np.array([-150.0, -170.0, -40.0])
_SPACE_STEP = 5.0
_SPACE_SHAPE = (49, 53, 61)  # (z, y, x): up to z = +200, y = +90, x = +150

#: Length (mm) of one step of the walk: short enough to avoid collisions between loops.
_WALK_STEP = 6.0


def _bowel_loops(
    rng: np.random.Generator,
    *,
    cavity: Shape,
    forbidden: Shape,
    z_floor: float,
    total_mm: float,
    oral: bool,
) -> list[BowelLoop]:
    """Small-bowel loops as self-avoiding random walks in the free abdominal/pelvic space.

    The free space (clearance to the cavity wall and to every organ, bone and muscle, in mm) is
    tabulated once on a fixed 5 mm patient-frame lattice, so the walk is cheap and the loops do
    not depend on the image grid. Loops are added until their total length reaches
    ``total_mm`` or 200 have been tried.
    """
    space = _FreeSpace(cavity, forbidden, z_floor)
    placed_pts = np.zeros((0, 3))
    placed_r = np.zeros(0)
    loops: list[BowelLoop] = []
    length = 0.0
    attempts = 0
    while length < total_mm and attempts < 200:
        attempts += 1
        radius = float(rng.uniform(8.0, 14.5))
        start = space.random_start(rng, radius)
        if start is None:
            break
        if (
            len(placed_pts)
            and np.min(np.linalg.norm(placed_pts - start, axis=1) - placed_r - radius) < -2.0
        ):
            continue
        pts = _walk(rng, space, start, radius, placed_pts, placed_r)
        if len(pts) < 6:
            continue
        # The walk's 6 mm steps are needed to avoid collisions; 12 mm segments describe the tube.
        arr = np.asarray(pts)[::2] if len(pts) % 2 == 1 else np.asarray([*pts, pts[-1]])[::2]
        contents = _loop_contents(rng, radius, oral)
        loops.append(BowelLoop(arr, radius, contents, gas=bool(rng.random() < 0.15)))
        placed_pts = np.vstack([placed_pts, np.asarray(pts)])
        placed_r = np.concatenate([placed_r, np.full(len(pts), radius)])
        length += loops[-1].length_mm
    return loops


class _FreeSpace:
    """Clearance (mm) for bowel above ``z_floor``, tabulated on the fixed 5 mm lattice.

    Positive inside the cavity and away from every forbidden solid; ``-pad`` outside the
    lattice and below the floor.
    """

    pad = 30.0

    def __init__(self, cavity: Shape, forbidden: Shape, z_floor: float) -> None:
        nz, ny, nx = _SPACE_SHAPE
        grid = Grid(
            (nz, ny, nx),
            (_SPACE_STEP,) * 3,
            (float(_SPACE_LO[0]), float(_SPACE_LO[1]), float(_SPACE_LO[2])),
        )
        inside = -cavity.evaluate(grid, self.pad).values(grid.full)
        away = forbidden.evaluate(grid, self.pad).values(grid.full)
        clearance = np.minimum(inside, away)
        zc = grid.axis(0)[:, None, None]
        self.clearance = np.where(zc >= z_floor, clearance, -self.pad).astype(np.float32)
        self.flat = self.clearance.ravel()
        self.free = np.flatnonzero(self.flat >= 9.0)
        # Prefer low starts: the loops that matter for a pelvic CTV lie just above the bladder.
        z_of = grid.axis(0)[self.free // (ny * nx)]
        self.weight = np.exp(-(z_of - z_floor) / 70.0)

    def at(self, p: F64) -> npt.NDArray[np.float32]:
        """Clearance (mm) at the lattice points nearest to ``p`` (n, 3; x, y, z)."""
        nz, ny, nx = _SPACE_SHAPE
        idx = np.rint((p - _SPACE_LO) / _SPACE_STEP).astype(int)
        ok = (
            (idx[:, 0] >= 0)
            & (idx[:, 0] < nx)
            & (idx[:, 1] >= 0)
            & (idx[:, 1] < ny)
            & (idx[:, 2] >= 0)
            & (idx[:, 2] < nz)
        )
        out = np.full(len(p), -self.pad, dtype=np.float32)
        out[ok] = self.clearance[idx[ok, 2], idx[ok, 1], idx[ok, 0]]
        return out

    def random_start(self, rng: np.random.Generator, radius: float) -> F64 | None:
        """A start (x, y, z; mm) with room for a loop of ``radius``; None if there is none."""
        ok_start = self.flat[self.free] >= radius + 1.0
        if not ok_start.any():
            return None
        free = self.free[ok_start]
        weight = self.weight[ok_start]
        flat_index = int(free[rng.choice(len(free), p=weight / weight.sum())])
        pick = np.array(np.unravel_index(flat_index, self.clearance.shape))
        start: F64 = _SPACE_LO + pick[::-1] * _SPACE_STEP + rng.uniform(-2, 2, 3)
        return start


def _walk(
    rng: np.random.Generator,
    space: _FreeSpace,
    start: F64,
    radius: float,
    placed_pts: F64,
    placed_r: F64,
) -> list[F64]:
    """Centreline (mm) of one loop: 20–70 steps that keep clear of walls, loops and itself."""
    step = _WALK_STEP
    pts = [start]
    direction = rng.normal(0, 1, 3)
    direction[2] *= 0.5
    direction /= np.linalg.norm(direction)
    n_steps = int(rng.uniform(120, 420) / step)
    for _ in range(n_steps):
        # Mostly straight on; when the way ahead is blocked, any free direction (a loop
        # folds back on itself at a wall, as bowel does).
        ahead = direction[None, :] + rng.normal(0, 0.55, (16, 3))
        anywhere = rng.normal(0, 1, (24, 3))
        cand = np.vstack([ahead, anywhere])
        cand[:, 2] *= 0.6
        cand /= np.linalg.norm(cand, axis=1, keepdims=True)
        nxt = pts[-1][None, :] + step * cand
        ok = space.at(nxt) >= radius
        if len(placed_pts):
            gap = np.linalg.norm(nxt[:, None, :] - placed_pts[None, :, :], axis=2) - (
                placed_r[None, :] + radius
            )
            ok &= gap.min(axis=1) > -2.0
        if len(pts) > 4:
            own = np.asarray(pts[:-4])
            ok &= (
                np.linalg.norm(nxt[:, None, :] - own[None, :, :], axis=2).min(axis=1)
                > 2.0 * radius - 2.0
            )
        if not ok.any():
            break
        j = int(np.flatnonzero(ok)[0])
        direction = cand[j]
        pts.append(nxt[j])
    return pts


def _loop_contents(rng: np.random.Generator, radius: float, oral: bool) -> str:
    """Thin loops are collapsed; others hold oral contrast (65 % when given) or fluid."""
    if radius < 9.5:
        return "collapsed"
    if oral and rng.random() < 0.65:
        return "contrast"
    return "fluid"
