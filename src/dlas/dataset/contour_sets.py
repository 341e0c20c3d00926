"""Contour sets: which RTSTRUCT or SEG of a CT series goes into which named set of a case.

A case holds its CT, the *reference* structures (the contours models learn from and are measured
against, e.g. the approved clinical ones) and any number of other named contour sets: a vendor
model's exported contours (``VPM``), a second clinician's (``observer2``), a locally fine-tuned
model's. Each RTSTRUCT or DICOM SEG drawn on a series is assigned to a set by a rule on its DICOM
attributes, given as ``--contour-set NAME=COND[,COND...]`` to `dlas import` (all conditions of a
rule must hold):

``approved`` / ``unapproved``
    ApprovalStatus (RTSTRUCT) is / is not ``APPROVED``; a SEG carries no approval and is never
    approved.
``manufacturer:TEXT``, ``model:TEXT``
    Manufacturer, ManufacturerModelName contain TEXT.
``label:TEXT``
    StructureSetLabel (RTSTRUCT) or ContentLabel (SEG) contains TEXT.
``description:TEXT``
    SeriesDescription contains TEXT.
``operator:TEXT``
    OperatorsName contains TEXT.
``date:YYYYMMDD`` or ``date:YYYYMMDD-YYYYMMDD``
    StructureSetDate (RTSTRUCT) or ContentDate (SEG), else SeriesDate, on that day or within
    that period (both ends included).
``kind:rtstruct`` / ``kind:seg``
    The object's kind.
``any``
    Every object.

Text comparisons ignore case and match anywhere in the value (``manufacturer:rt-mind`` matches
``RT-Mind-AI Ltd``), as a physicist reading the export listing would expect.

Refuse rather than guess: an object whose attributes satisfy the rules of two sets, and a rule
that matches no object in the whole source (most likely a typo), stop the import before any case
is written. Objects that match no rule are listed as unused with that reason. When one set
receives several objects of the same series, the approved one, then the newest, is used and the
others are listed as unused, as for the single structure set of earlier versions.

Without any rule there is one set, the reference, filled from RTSTRUCTs only (how `dlas import`
has always behaved), so existing commands and data sets keep their meaning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from dlas.errors import DatasetError
from dlas.io.dicom_scan import (
    LABEL_MAP_SEG_STORAGE,
    SEG_STORAGE,
    ScannedFile,
    SkippedFile,
    sop_class_of,
)
from dlas.io.rtstruct import referenced_series_uids

__all__ = [
    "DEFAULT_REFERENCE_SET",
    "SET_NAME",
    "ContourSetRule",
    "ContourSetRules",
    "Pairing",
    "describe_object",
    "object_kind",
    "object_summary",
    "pair_contour_objects",
    "referenced_series",
]

#: Name of the reference set of data sets imported without contour-set rules.
DEFAULT_REFERENCE_SET = "reference"
#: What a set name may look like (it becomes a folder name and a model name in metrics).
SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")

_TEXT_KEYS = {
    "manufacturer": ("Manufacturer",),
    "model": ("ManufacturerModelName",),
    "label": ("StructureSetLabel", "ContentLabel"),
    "description": ("SeriesDescription",),
    "operator": ("OperatorsName",),
}
_FLAG_KEYS = ("approved", "unapproved", "any")
_KINDS = ("rtstruct", "seg")
_DATE = re.compile(r"^(\d{8})(?:-(\d{8}))?$")
_SYNTAX = (
    "NAME=COND[,COND...] with COND one of approved, unapproved, any, kind:rtstruct|seg, "
    "date:YYYYMMDD[-YYYYMMDD], or manufacturer|model|label|description|operator:TEXT"
)


def object_kind(header: Dataset) -> str:
    """``seg`` for a DICOM Segmentation, else ``rtstruct``."""
    seg = (SEG_STORAGE, LABEL_MAP_SEG_STORAGE)
    if sop_class_of(header) in seg or str(header.get("Modality", "")).upper() == "SEG":
        return "seg"
    return "rtstruct"


def _approved(header: Dataset) -> bool:
    return str(header.get("ApprovalStatus", "") or "").upper() == "APPROVED"


def _date(header: Dataset) -> str:
    for key in ("StructureSetDate", "ContentDate", "SeriesDate"):
        value = str(header.get(key, "") or "").strip()
        if value:
            return value
    return ""


def _time(header: Dataset) -> str:
    for key in ("StructureSetTime", "ContentTime", "SeriesTime"):
        value = str(header.get(key, "") or "").strip()
        if value:
            return value
    return ""


@dataclass(frozen=True)
class _Condition:
    key: str
    value: str = ""

    def holds(self, header: Dataset) -> bool:
        if self.key == "any":
            return True
        if self.key == "approved":
            return _approved(header)
        if self.key == "unapproved":
            return not _approved(header)
        if self.key == "kind":
            return object_kind(header) == self.value
        if self.key == "date":
            first, _, last = self.value.partition("-")
            day = _date(header)[:8]
            return bool(day) and first <= day <= (last or first)
        wanted = self.value.casefold()
        return any(
            wanted in str(header.get(attribute, "") or "").casefold()
            for attribute in _TEXT_KEYS[self.key]
        )


@dataclass(frozen=True)
class ContourSetRule:
    """One ``NAME=COND[,COND...]`` rule."""

    name: str
    conditions: tuple[_Condition, ...]
    text: str

    @classmethod
    def parse(cls, spec: str, *, option: str = "--contour-set") -> ContourSetRule:
        """Parse a rule (see the module documentation for the conditions).

        Raises
        ------
        DatasetError
            The rule is malformed: no ``=``, a bad set name, an unknown condition, a condition
            without its value, or a malformed date.
        """
        name, sep, body = spec.partition("=")
        name = name.strip()

        def bad(found: str, fix: str) -> DatasetError:
            return DatasetError(
                "cannot read the contour-set rule",
                where=f"{option} {spec}",
                expected=_SYNTAX,
                found=found,
                fix=fix,
            )

        if not sep or not body.strip():
            raise bad(repr(spec), "write e.g. --contour-set VPM=manufacturer:RT-Mind")
        if not SET_NAME.match(name):
            raise bad(
                f"set name {name!r}",
                "name the set with letters, digits, '_', '.', '+', '-' (at most 64 characters)",
            )
        conditions: list[_Condition] = []
        for part in (p.strip() for p in body.split(",")):
            key, colon, value = part.partition(":")
            key = key.strip().lower()
            value = value.strip()
            if key in _FLAG_KEYS and not colon:
                conditions.append(_Condition(key))
            elif key in _TEXT_KEYS and value:
                conditions.append(_Condition(key, value))
            elif key == "kind" and value.lower() in _KINDS:
                conditions.append(_Condition(key, value.lower()))
            elif key == "date" and _DATE.match(value):
                conditions.append(_Condition(key, value))
            else:
                raise bad(f"condition {part!r}", "use one of the conditions listed above")
        return cls(name, tuple(conditions), body.strip())

    def matches(self, header: Dataset) -> bool:
        """Whether every condition holds for the object."""
        return all(c.holds(header) for c in self.conditions)


@dataclass(frozen=True)
class ContourSetRules:
    """The rules of an import and which set is the reference."""

    rules: tuple[ContourSetRule, ...]
    reference: str
    #: False for the default (no rule given): unused objects need no explanation then
    explicit: bool = True

    @classmethod
    def default(cls) -> ContourSetRules:
        """No rule given: the reference set from RTSTRUCTs (the behaviour of earlier versions)."""
        rule = ContourSetRule(DEFAULT_REFERENCE_SET, (_Condition("kind", "rtstruct"),), "")
        return cls((rule,), DEFAULT_REFERENCE_SET, explicit=False)

    @classmethod
    def from_options(
        cls, specs: Sequence[str], reference: str | None, *, option: str = "--contour-set"
    ) -> ContourSetRules:
        """Rules from ``--contour-set`` options and the ``--reference-set`` name.

        Raises
        ------
        DatasetError
            A malformed rule, a set named twice, a reference set without rules, rules without
            a reference set, or a reference set that no rule names.
        """
        if not specs:
            if reference not in (None, DEFAULT_REFERENCE_SET):
                raise DatasetError(
                    "reference set named but no contour-set rules given",
                    where=f"--reference-set {reference}",
                    expected=f"--contour-set {reference}=COND[,COND...] naming its objects",
                    found="no --contour-set option",
                    fix=f"add e.g. --contour-set {reference}=approved",
                )
            return cls.default()
        rules = tuple(ContourSetRule.parse(s, option=option) for s in specs)
        names = [r.name for r in rules]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise DatasetError(
                "contour set named twice",
                where=option,
                expected="one rule per set (join conditions with ',')",
                found=", ".join(doubled),
                fix="merge the conditions of the set into one rule",
            )
        if reference is None or reference not in names:
            raise DatasetError(
                "which contour set is the reference is not given"
                if reference is None
                else "reference set has no rule",
                where="--reference-set",
                expected=f"one of the sets named by {option}: {', '.join(names)}",
                found="no --reference-set option" if reference is None else repr(reference),
                fix=f"add --reference-set {names[0]} (the set the models are measured against)",
            )
        return cls(rules, reference)

    def describe(self) -> dict[str, str]:
        """Set name → its rule, as given."""
        return {r.name: r.text or "kind:rtstruct (default)" for r in self.rules}

    def assign(self, objects: Sequence[ScannedFile]) -> tuple[dict[int, str], list[SkippedFile]]:
        """Set of each object (by its position in ``objects``); objects matching no rule.

        Raises
        ------
        DatasetError
            An object matches the rules of two sets, or an explicit rule matches no object.
        """
        chosen: dict[int, str] = {}
        unused: list[SkippedFile] = []
        hits: dict[str, int] = {r.name: 0 for r in self.rules}
        for n, obj in enumerate(objects):
            names = [r.name for r in self.rules if r.matches(obj.header)]
            if len(names) > 1:
                raise DatasetError(
                    "a contour object matches the rules of two sets",
                    where=f"{object_kind(obj.header).upper()} file {obj.path.name}",
                    expected="each RTSTRUCT or SEG in at most one contour set",
                    found=f"sets {', '.join(names)} ("
                    + "; ".join(f"{r.name}={r.text}" for r in self.rules if r.name in names)
                    + f"); the object: {describe_object(obj.header)}",
                    fix="make the rules exclusive, e.g. add approved/unapproved or kind:seg",
                )
            if names:
                chosen[n] = names[0]
                hits[names[0]] += 1
            else:
                reason = (
                    "matches no --contour-set rule: "
                    if self.explicit
                    else "DICOM SEG (not read without --contour-set rules): "
                )
                # stored in import-report.json: no label text and no (unshifted) date
                unused.append(
                    SkippedFile(obj.path, reason + describe_object(obj.header, stored=True))
                )
        idle = [name for name, count in hits.items() if count == 0]
        if self.explicit and idle:
            raise DatasetError(
                "a contour-set rule matches no RTSTRUCT or SEG in the source",
                where="--contour-set " + ", ".join(f"{n}={self.describe()[n]}" for n in idle),
                expected="at least one object per rule",
                found=f"{len(objects)} object(s): "
                + "; ".join(sorted({describe_object(o.header) for o in objects})[:5]),
                fix="check the rule against these attributes (`dlas inspect SRC` lists them), "
                "or drop the rule",
            )
        return chosen, unused


def describe_object(header: Dataset, *, stored: bool = False) -> str:
    """Kind and the attributes rules look at, in one line (no patient data, no UIDs); for text
    that is ``stored`` in a de-identified data set, without the free-text label and the real
    date."""
    summary = object_summary(header)
    keys = ("manufacturer", "model") if stored else ("manufacturer", "model", "label")
    parts = [summary["kind"]]
    parts += [f"{k} {summary[k]!r}" for k in keys if summary[k]]
    parts.append("approved" if summary["approved"] else "not approved")
    if summary["date"] and not stored:
        parts.append(f"date {summary['date']}")
    return ", ".join(parts)


def object_summary(header: Dataset) -> dict[str, Any]:
    """The attributes a rule may look at, except the operator's name and the description."""
    kind = object_kind(header)
    label = header.get("StructureSetLabel" if kind == "rtstruct" else "ContentLabel", "")
    return {
        "kind": kind,
        "manufacturer": str(header.get("Manufacturer", "") or ""),
        "model": str(header.get("ManufacturerModelName", "") or ""),
        "label": str(label or ""),
        "approved": _approved(header),
        "date": _date(header)[:8],
    }


def referenced_series(header: Dataset) -> list[str]:
    """SeriesInstanceUIDs an RTSTRUCT or SEG says it was drawn on."""
    if object_kind(header) == "rtstruct":
        return referenced_series_uids(header)
    uids = [str(s.get("SeriesInstanceUID", "")) for s in header.get("ReferencedSeriesSequence", [])]
    return [u for u in uids if u]


def _frames_of_reference(header: Dataset) -> set[str]:
    if object_kind(header) == "rtstruct":
        return {
            str(r.get("FrameOfReferenceUID", ""))
            for r in header.get("ReferencedFrameOfReferenceSequence", [])
        }
    return {str(header.get("FrameOfReferenceUID", "") or "")}


@dataclass
class Pairing:
    """Contour objects by series and set, notes per series, objects not used (with reasons)."""

    chosen: dict[str, dict[str, ScannedFile]]
    notes: dict[str, list[str]]
    unused: list[SkippedFile]


def pair_contour_objects(
    series: dict[str, list[ScannedFile]],
    objects: Sequence[ScannedFile],
    rules: ContourSetRules,
) -> Pairing:
    """Find the series each RTSTRUCT/SEG was drawn on (its referenced series, else its frame of
    reference when exactly one series has it) and its set; one object per series and set.

    Raises
    ------
    DatasetError
        From :meth:`ContourSetRules.assign`.
    """
    set_of, unused = rules.assign(objects)
    for_of_series = {
        uid: str(files[0].header.get("FrameOfReferenceUID", "")) for uid, files in series.items()
    }
    notes: dict[str, list[str]] = {}
    candidates: dict[tuple[str, str], list[ScannedFile]] = {}
    for n, obj in enumerate(objects):
        if n not in set_of:
            continue
        kind = object_kind(obj.header).upper()
        targets = [u for u in referenced_series(obj.header) if u in series]
        if not targets:
            fors = _frames_of_reference(obj.header)
            by_for = [u for u, f in for_of_series.items() if f and f in fors]
            if len(by_for) == 1:
                targets = by_for
                notes.setdefault(by_for[0], []).append(
                    f"{kind} paired with the series by frame of reference (it does not "
                    "reference the series itself)"
                )
        if not targets:
            unused.append(
                SkippedFile(
                    obj.path, f"{kind} whose CT series is not in the source (export it with its CT)"
                )
            )
            continue
        candidates.setdefault((targets[0], set_of[n]), []).append(obj)
    chosen: dict[str, dict[str, ScannedFile]] = {}
    for (uid, name), options in candidates.items():
        options.sort(
            key=lambda f: (_approved(f.header), _date(f.header), _time(f.header)), reverse=True
        )
        chosen.setdefault(uid, {})[name] = options[0]
        for other in options[1:]:
            kind = object_kind(other.header).upper()
            unused.append(
                SkippedFile(
                    other.path,
                    f"another {kind} of the same series was preferred for contour set "
                    f"{name} (approved or newer)"
                    if rules.explicit
                    else f"another {kind} of the same series was preferred (approved or newer)",
                )
            )
        if len(options) > 1:
            notes.setdefault(uid, []).append(
                f"{len(options)} objects of contour set {name} reference this series; the "
                "approved or newest was used"
                if rules.explicit
                else f"{len(options)} RTSTRUCTs reference this series; the approved or newest "
                "was used"
            )
    return Pairing(chosen, notes, unused)
