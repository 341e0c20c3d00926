"""The synthetic replica of the seed study: pelvic CT phantoms, two contouring styles, two scanners.

``dlas phantom OUT --preset demo`` writes the study's four cohorts (vendor pretraining, local
training, ExVal on the same scanner, GenEva on another) as DICOM CT series with RTSTRUCTs, ready
for ``dlas import``. The parts:

* :mod:`~dlas.phantom.geometry` — signed distance fields in mm, evaluated on any voxel grid;
* :mod:`~dlas.phantom.anatomy` — a random adult pelvis (bones, muscles, fat, vessels, bowel,
  bladder, rectum, prostate or uterus) in the patient frame;
* :mod:`~dlas.phantom.render` — painting the anatomy into HU with partial volume;
* :mod:`~dlas.phantom.scanners` — scanner profiles (resolution, noise texture, offset, tags);
* :mod:`~dlas.phantom.styles` — the vendor's and the local institution's contouring habits,
  with observer variation;
* :mod:`~dlas.phantom.config` — cohorts and the ``paper`` and ``demo`` presets;
* :mod:`~dlas.phantom.generate` — patients, cohorts, DICOM and data-set writers, manifest;
* :mod:`~dlas.phantom.preview` — the Fig.-3-style figure of both styles over the CT.
"""

from dlas.phantom.anatomy import Anatomy, BowelLoop, sample_anatomy
from dlas.phantom.config import (
    COHORT_NAMES,
    PRESETS,
    CohortSpec,
    GridSpec,
    PhantomConfig,
    PhantomError,
    parse_cohort_counts,
    preset,
    validate_config,
)
from dlas.phantom.generate import (
    PatientIdentity,
    PhantomCase,
    PhantomPatient,
    generate,
    make_case,
    make_patient,
)
from dlas.phantom.preview import render_preview
from dlas.phantom.render import render_ct
from dlas.phantom.scanners import SCANNERS, ScannerProfile, acquire
from dlas.phantom.styles import LOCAL, STRUCTURES, STYLES, VENDOR, ContouringStyle, contour

__all__ = [
    "COHORT_NAMES",
    "LOCAL",
    "PRESETS",
    "SCANNERS",
    "STRUCTURES",
    "STYLES",
    "VENDOR",
    "Anatomy",
    "BowelLoop",
    "CohortSpec",
    "ContouringStyle",
    "GridSpec",
    "PatientIdentity",
    "PhantomCase",
    "PhantomConfig",
    "PhantomError",
    "PhantomPatient",
    "ScannerProfile",
    "acquire",
    "contour",
    "generate",
    "make_case",
    "make_patient",
    "parse_cohort_counts",
    "preset",
    "render_ct",
    "render_preview",
    "sample_anatomy",
    "validate_config",
]
