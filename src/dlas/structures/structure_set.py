"""Structure sets: canonical structure names, how clinicians spell them, and how to draw them.

A structure set is a YAML file (schema below) that names the structures a study works with and
how the names typed in a planning system map onto them. Matching is deliberately simple and
predictable, so that a physicist can tell from the file alone what will match:

1. A name is split into words at spaces, underscores, hyphens, dots and lower→upper case
   changes ("FemoralHead L" → femoral, head, l; "Femur_Head_Lt" → femur, head, lt).
2. A laterality word at the start or end — L, Lt, Lft, Left, R, Rt, Rgt, Right — is taken off and
   becomes the name's side.
3. The remaining words, joined and lower-cased, are the *stem*. A name matches a structure when
   its stem equals the stem of the structure's name or of one of its synonyms, or fully matches
   one of its regular-expression ``patterns``, **and** its side equals the structure's side
   (none for a structure without laterality).

So "Femoral Head Lt", "FemoralHead L" and "Femur_Head_L" all become Femur_Head_L, while
"Femur_L" (stem "femur") is not a femoral head, and "CTV_R" is not the (unsided) CTV. A name that
matches two structures is an error naming both; a structure set in which two structures share a
spelling is refused when it is loaded.

Schema (version 1)::

    schema_version: 1
    name: rectal-cancer
    naming: TG-263                     # optional: the standard the canonical names follow
    description: free text
    structures:
      - name: Femur_Head_L             # canonical name, also a spelling that matches
        interpreted_type: ORGAN        # DICOM RTROIInterpretedType
        synonyms: [FemoralHead_L]      # more spellings
        patterns: []                   # regular expressions on the stem
        laterality: L                  # optional; read from the name's last word otherwise
        colour: [0, 200, 0]            # RGB 0-255
        priority: 50                   # label-map priority where structures overlap
        may_overlap: []                # structures this one may legitimately overlap
        category: {scheme: SCT, value: "91723000", meaning: Anatomical Structure}
        property_type: {scheme: SCT, value: "2812003", meaning: Head of Femur}
        postprocess: {largest_component: true, fill_holes: true}
        qa: {volume_margin: 0.25}      # optional: prediction QA thresholds (QAThresholds)
    qa: {spacing_margin: 0.25}         # optional: input-domain thresholds (InputQAThresholds)

``naming`` declares the naming standard of the canonical names. The one known is ``TG-263``
(AAPM Task Group 263, 2018), and a set that declares it is checked when it loads against the
rules of the report that can be checked from a name alone (:func:`tg263_problems`): at most 16
characters; letters, digits and underscores only, the underscore separating components; a
capital first letter (or the ``z`` that marks a non-clinical structure); laterality as the last
component, ``_L`` or ``_R``. Whether a name is the one the report's table lists for that organ
(``Femur_Head_L``, not ``Femur_L``) is not checked: that needs the table, which dlas does not
ship. The built-in set follows TG-263; the names it used before (``FemoralHead_L``,
``SmallBowel``) are kept as synonyms, so data and models named the old way still match.
A set that does not declare a standard is not checked, and its hash is what it was before
``naming`` existed.

The ``qa`` blocks are optional; what they hold and how the defaults were chosen is documented in
:mod:`dlas.prediction.qa`. A set written without them reads with the defaults, and a ``qa`` block
equal to the defaults is left out of :meth:`StructureSet.to_data`, so the hash of a structure set
that does not customise its QA is the hash it had before QA thresholds existed.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dlas.config_files import canonical_sha256, read_yaml_mapping, validation_error
from dlas.errors import StructureSetError

__all__ = [
    "BUILTIN_STRUCTURE_SETS",
    "Code",
    "InputQAThresholds",
    "NameMapping",
    "Postprocess",
    "QAThresholds",
    "RTROIInterpretedType",
    "StructureDef",
    "StructureSet",
    "load_structure_set",
    "name_stem",
    "tg263_problems",
]

#: Structure sets shipped with dlas, by name.
BUILTIN_STRUCTURE_SETS = {"rectal": "rectal.yaml"}

#: TG-263's limit on the length of a structure name.
_TG263_MAX_LENGTH = 16

_LATERALITY_WORDS = {
    "l": "L",
    "lt": "L",
    "lft": "L",
    "left": "L",
    "r": "R",
    "rt": "R",
    "rgt": "R",
    "right": "R",
}
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_GLUED_SIDE = re.compile(r"^(?P<stem>.+?)(?P<side>left|right|lt|rt)$")


def tg263_problems(name: str, laterality: str | None = None) -> list[str]:
    """The TG-263 rules that ``name`` breaks, as phrases (empty when it follows them all).

    Only rules that can be checked from the name alone (see the module docstring).
    ``laterality`` is the structure's side, "L", "R" or None.

    >>> tg263_problems("Femur_Head_L", "L")
    []
    >>> tg263_problems("L_FemoralHead", "L")
    ['has its side L elsewhere than as the last component _L']
    """
    problems = []
    if len(name) > _TG263_MAX_LENGTH:
        problems.append(f"is {len(name)} characters long (at most {_TG263_MAX_LENGTH})")
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        problems.append("has characters other than letters, digits and _")
    if name.startswith("_") or name.endswith("_") or "__" in name:
        problems.append("has an empty component (a leading, trailing or doubled _)")
    if name[:1].islower() and not name.startswith("z"):
        problems.append("starts with a lower-case letter")
    if laterality is not None and not name.endswith(f"_{laterality}"):
        problems.append(
            f"has its side {laterality} elsewhere than as the last component _{laterality}"
        )
    return problems


class RTROIInterpretedType(str, enum.Enum):
    """DICOM RT ROI Interpreted Type (3006,00A4) values used for structures."""

    EXTERNAL = "EXTERNAL"
    PTV = "PTV"
    CTV = "CTV"
    GTV = "GTV"
    TREATED_VOLUME = "TREATED_VOLUME"
    IRRAD_VOLUME = "IRRAD_VOLUME"
    BOLUS = "BOLUS"
    AVOIDANCE = "AVOIDANCE"
    ORGAN = "ORGAN"
    MARKER = "MARKER"
    REGISTRATION = "REGISTRATION"
    ISOCENTER = "ISOCENTER"
    CONTRAST_AGENT = "CONTRAST_AGENT"
    CAVITY = "CAVITY"
    BRACHY_CHANNEL = "BRACHY_CHANNEL"
    SUPPORT = "SUPPORT"
    FIXATION = "FIXATION"
    DOSE_REGION = "DOSE_REGION"
    CONTROL = "CONTROL"


def name_stem(name: str) -> tuple[str, str | None]:
    """Split a structure name into its normalised stem and its side ("L", "R" or None).

    >>> name_stem("Femoral Head Lt")
    ('femoralhead', 'L')
    >>> name_stem("Bowel_Small")
    ('bowelsmall', None)
    """
    words = [w.lower() for w in _WORD.findall(name)]
    side: str | None = None
    if len(words) > 1 and words[-1] in _LATERALITY_WORDS:
        side = _LATERALITY_WORDS[words.pop()]
    elif len(words) > 1 and words[0] in _LATERALITY_WORDS:
        side = _LATERALITY_WORDS[words.pop(0)]
    return "".join(words), side


class Code(BaseModel):
    """A coded concept (e.g. SNOMED CT) for DICOM SEG segment descriptions."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    scheme: str
    value: str
    meaning: str


class Postprocess(BaseModel):
    """Clean-up of a predicted mask of this structure."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    largest_component: bool = False
    fill_holes: bool = False


class QAThresholds(BaseModel):
    """Prediction QA thresholds of one structure (see :mod:`dlas.prediction.qa`).

    A field set to ``null`` turns its check off for the structure.

    Attributes
    ----------
    missing
        Flag an empty prediction (``missing``).
    volume_margin
        Relative tolerance around the range of volumes on the training cases: a volume below
        ``min x (1 - margin)`` or above ``max x (1 + margin)`` is flagged
        (``volume-out-of-range``).
    max_fragments
        Connected components allowed beyond the largest (``fragments``).
    fragment_min_cm3
        Components (and cavities) smaller than this (cm³) are ignored.
    max_z_gaps
        Empty axial slices allowed between the first and the last slice of the structure
        (``z-gaps``).
    holes
        Flag cavities enclosed in 3-D (``holes``).
    laterality
        Flag a sided structure whose centroid lies on the wrong side of the body midline
        (``laterality``).
    outside_body_max
        Largest fraction of the structure allowed outside the body (``outside-body``).
    uncertainty_max
        Largest 1 - mean pairwise DSC between ensemble/TTA members (``uncertainty``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    missing: bool = True
    volume_margin: float | None = Field(0.25, ge=0.0, le=10.0)
    max_fragments: int | None = Field(0, ge=0)
    fragment_min_cm3: float = Field(0.1, ge=0.0)
    max_z_gaps: int | None = Field(0, ge=0)
    holes: bool = True
    laterality: bool = True
    outside_body_max: float | None = Field(0.05, ge=0.0, le=1.0)
    uncertainty_max: float | None = Field(0.2, ge=0.0, le=1.0)


class InputQAThresholds(BaseModel):
    """Input-domain QA thresholds of a structure set (see :mod:`dlas.prediction.qa`).

    Attributes
    ----------
    enabled
        Compare every input CT with the training cases' domain (``input-domain``).
    spacing_margin
        Relative tolerance around the training range of in-plane pixel spacings, slice
        thicknesses and fields of view.
    hu_margin
        Tolerance (HU) around the training range of each HU percentile.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True
    spacing_margin: float = Field(0.25, ge=0.0, le=10.0)
    hu_margin: float = Field(100.0, ge=0.0)


_DEFAULT_CATEGORY = Code(scheme="SCT", value="91723000", meaning="Anatomical Structure")


class StructureDef(BaseModel):
    """One structure of a structure set."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=64)
    interpreted_type: RTROIInterpretedType = RTROIInterpretedType.ORGAN
    synonyms: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    laterality: Literal["L", "R"] | None = None
    colour: tuple[int, int, int] = (255, 0, 0)
    priority: int = 0
    may_overlap: tuple[str, ...] = ()
    category: Code = _DEFAULT_CATEGORY
    property_type: Code | None = None
    postprocess: Postprocess = Postprocess()
    qa: QAThresholds = QAThresholds()

    @field_validator("name")
    @classmethod
    def _name_is_a_file_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", value):
            raise ValueError(
                "canonical names may hold letters, digits and _ . + - only "
                f"(they become file names), got {value!r}"
            )
        return value

    @field_validator("colour")
    @classmethod
    def _colour_range(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in value):
            raise ValueError(f"colour components must be 0-255, got {list(value)}")
        return value

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a regular expression: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _side_from_name(self) -> StructureDef:
        _, side = name_stem(self.name)
        if self.laterality is None and side is not None:
            object.__setattr__(self, "laterality", side)
        elif self.laterality is not None and side is not None and side != self.laterality:
            raise ValueError(
                f"laterality {self.laterality} contradicts the name {self.name!r} (side {side})"
            )
        return self

    def spellings(self) -> list[str]:
        """The canonical name followed by the synonyms."""
        return [self.name, *self.synonyms]


@dataclass(frozen=True)
class NameMapping:
    """How the ROI names of one source map onto a structure set.

    Attributes
    ----------
    mapped
        Original name → canonical name, for the names that matched.
    unmatched
        Original names that matched no structure.
    """

    mapped: dict[str, str]
    unmatched: list[str]


class StructureSet(BaseModel):
    """A validated structure set (see the module docstring for the YAML schema)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1] = 1
    name: str = Field(min_length=1)
    naming: Literal["TG-263"] | None = None
    description: str = ""
    structures: tuple[StructureDef, ...] = Field(min_length=1)
    qa: InputQAThresholds = InputQAThresholds()

    @model_validator(mode="after")
    def _names_follow_the_standard(self) -> StructureSet:
        if self.naming is None:
            return self
        broken = [
            f"{s.name!r} {', '.join(problems)}"
            for s in self.structures
            if (problems := tg263_problems(s.name, s.laterality))
        ]
        if broken:
            raise ValueError(
                f"the set declares naming {self.naming}, but "
                + "; ".join(broken)
                + " (rename the structure and keep the old name as a synonym, or drop naming:)"
            )
        return self

    @model_validator(mode="after")
    def _spellings_unique(self) -> StructureSet:
        seen: dict[tuple[str, str | None], str] = {}
        for structure in self.structures:
            if structure.name in {s for s in seen.values()}:
                raise ValueError(f"structure {structure.name!r} is defined twice")
            for spelling in structure.spellings():
                stem, side = name_stem(spelling)
                if side is not None and side != structure.laterality:
                    raise ValueError(
                        f"spelling {spelling!r} of {structure.name} has side {side}, "
                        f"the structure has {structure.laterality or 'none'}"
                    )
                key = (stem, structure.laterality)
                other = seen.get(key)
                if other is not None and other != structure.name:
                    raise ValueError(
                        f"spelling {spelling!r} matches both {other} and {structure.name}"
                    )
                seen[key] = structure.name
        names = {s.name for s in self.structures}
        for structure in self.structures:
            unknown = set(structure.may_overlap) - names
            if unknown:
                raise ValueError(
                    f"{structure.name}.may_overlap names unknown structures {sorted(unknown)}"
                )
        return self

    # ------------------------------------------------------------------ lookup
    @property
    def names(self) -> list[str]:
        """Canonical names in file order."""
        return [s.name for s in self.structures]

    def __getitem__(self, name: str) -> StructureDef:
        for structure in self.structures:
            if structure.name == name:
                return structure
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(s.name == name for s in self.structures)

    @cached_property
    def stem_table(self) -> dict[tuple[str, str | None], str]:
        table: dict[tuple[str, str | None], str] = {}
        for structure in self.structures:
            for spelling in structure.spellings():
                stem, _ = name_stem(spelling)
                table[(stem, structure.laterality)] = structure.name
        return table

    def _candidates(self, stem: str, side: str | None) -> set[str]:
        found: set[str] = set()
        exact = self.stem_table.get((stem, side))
        if exact is not None:
            found.add(exact)
        for structure in self.structures:
            if structure.laterality != side:
                continue
            if any(re.fullmatch(p, stem) for p in structure.patterns):
                found.add(structure.name)
        return found

    def match(self, name: str) -> str | None:
        """The canonical name that ``name`` maps to, or None.

        Raises
        ------
        StructureSetError
            If ``name`` matches more than one structure.
        """
        stem, side = name_stem(name)
        found = self._candidates(stem, side)
        if not found and side is None:
            # A side glued to the last word ("femoralheadleft"): accept it only when the rest is
            # exactly a sided spelling, so that words merely ending in "l" or "r" never match.
            glued = _GLUED_SIDE.match(stem)
            if glued:
                side_word = glued.group("side")
                found = {
                    n
                    for n in [
                        self.stem_table.get((glued.group("stem"), _LATERALITY_WORDS[side_word]))
                    ]
                    if n is not None
                }
        if len(found) > 1:
            a, b = sorted(found)[:2]
            raise StructureSetError(
                "ambiguous structure name",
                where=f"ROI name {name!r}",
                expected=f"a name that matches one structure of the set {self.name!r}",
                found=f"it matches both {a} and {b}",
                fix="rename the ROI, or make the synonyms/patterns of the structure set distinct",
            )
        return next(iter(found)) if found else None

    def map_names(self, names: Iterable[str]) -> NameMapping:
        """Map every name; ambiguous names raise, unmatched ones are listed."""
        mapped: dict[str, str] = {}
        unmatched: list[str] = []
        for name in names:
            canonical = self.match(name)
            if canonical is None:
                unmatched.append(name)
            else:
                mapped[name] = canonical
        return NameMapping(mapped=mapped, unmatched=unmatched)

    # ------------------------------------------------------------------ I/O
    def to_data(self) -> dict[str, Any]:
        """JSON/YAML-ready data that :meth:`from_data` reads back.

        ``qa`` blocks equal to the defaults and an undeclared ``naming`` are left out, so that
        sets which do not use them keep the content (and hash) they had before they existed.
        """
        data = self.model_dump(mode="json")
        if self.naming is None:
            data.pop("naming")
        if self.qa == InputQAThresholds():
            data.pop("qa")
        for structure, entry in zip(self.structures, data["structures"], strict=True):
            if structure.qa == QAThresholds():
                entry.pop("qa")
        return data

    def sha256(self) -> str:
        """Hash of the canonical JSON form (independent of YAML formatting)."""
        return canonical_sha256(self.to_data())

    @classmethod
    def from_data(cls, data: Mapping[str, Any], *, source: str = "structure set") -> StructureSet:
        """Validate data (from YAML or JSON); errors become one-line :class:`StructureSetError`."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise validation_error(
                exc,
                StructureSetError,
                what="invalid structure set",
                source=source,
                expected="the schema in the dlas.structures documentation",
                fix="correct the YAML file",
            ) from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> StructureSet:
        """Read a structure set from a YAML file."""
        p = Path(path)
        data = read_yaml_mapping(
            p,
            StructureSetError,
            what="structure set",
            expected_keys="schema_version, name, structures",
            missing_fix="check the path, or use a built-in set: "
            + ", ".join(BUILTIN_STRUCTURE_SETS),
            schema_fix="see the schema in the dlas.structures documentation",
        )
        return cls.from_data(data, source=str(p))

    @classmethod
    def builtin(cls, name: str = "rectal") -> StructureSet:
        """A structure set shipped with dlas (``rectal``: the seed study's five structures)."""
        if name not in BUILTIN_STRUCTURE_SETS:
            raise StructureSetError(
                "unknown built-in structure set",
                where=name,
                expected=", ".join(BUILTIN_STRUCTURE_SETS),
                found=name,
                fix="give a YAML file instead",
            )
        text = (
            resources.files("dlas.structures")
            .joinpath(BUILTIN_STRUCTURE_SETS[name])
            .read_text(encoding="utf-8")
        )
        return cls.from_data(yaml.safe_load(text), source=f"built-in structure set {name!r}")


def load_structure_set(spec: str | os.PathLike[str] | None) -> StructureSet:
    """A structure set from a YAML path or a built-in name (default: ``rectal``)."""
    if spec is None:
        return StructureSet.builtin("rectal")
    text = str(spec)
    if text in BUILTIN_STRUCTURE_SETS:
        return StructureSet.builtin(text)
    return StructureSet.from_yaml(text)
