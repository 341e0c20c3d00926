"""NIfTI label maps (one integer label per structure) and their label tables.

TotalSegmentator, nnU-Net and MONAI write their predictions as one NIfTI file whose voxels hold
integer labels, and name the labels in a separate table. This module reads both and returns one
boolean mask per structure on the grid of a reference image (the case's CT), so that such
contour sets can be evaluated like any other.

Label tables (:func:`read_label_table`) come as

* TotalSegmentator-style JSON, label id → name: ``{"1": "spleen", "5": "liver"}``;
* nnU-Net ``dataset.json``: v2 ``"labels": {"background": 0, "spleen": 1}`` (name → id), or v1
  ``"labels": {"0": "background", "1": "spleen"}`` (id → name). Region-based label sets
  (a label whose value is a list of labels) are refused: their regions overlap, so one label
  map cannot hold them;
* CSV with a header row naming the columns ``label`` (or ``value``) and ``name``; other columns
  are ignored.

Label 0 is background and never a structure. Ids must be non-negative integers, every id and
every name (compared without case and surrounding spaces) must appear once.

Why our own code for the geometry: NIfTI carries no frame of reference, so a label map can only
be matched to the CT through physical coordinates. Writers differ in how they store the same
grid (TotalSegmentator's output, for one, is stored with its rows flipped relative to the DICOM
series), and resampling such a map would blur nothing but still hide that it happened. So a map
whose voxel centres are those of the reference, stored with flipped or permuted axes, is
reindexed exactly (no interpolation); a genuinely different grid is refused unless resampling is
asked for, and then it is done by nearest neighbour through SimpleITK and reported.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dlas.errors import NiftiError, StructureSetError
from dlas.io.nifti import Digest, read_nifti
from dlas.io.rtstruct import RTStructWarning
from dlas.io.volume import Volume

__all__ = ["LabelMapData", "read_label_map", "read_label_table"]

#: Column headers a CSV label table may use for the label id, and for the structure name.
CSV_ID_HEADERS = ("label", "value")
CSV_NAME_HEADER = "name"

_INTEGER = re.compile(r"^\s*\+?\d+\s*$")


# ------------------------------------------------------------------------------ label tables


def _table_error(what: str, where: str, expected: str, found: str, fix: str) -> StructureSetError:
    return StructureSetError(what, where=where, expected=expected, found=found, fix=fix)


def _label_id(value: Any, where: str, context: str) -> int:
    """A label id: a non-negative integer, or a string of digits."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        ok = False
    elif isinstance(value, int):
        ok = value >= 0
    else:
        ok = bool(_INTEGER.match(value))
    if not ok:
        raise _table_error(
            "label id is not a non-negative integer",
            where,
            "integer label ids (0 is background)",
            f"{value!r} ({context})",
            "give every structure the integer label it has in the label map",
        )
    return int(value)


def _checked_table(pairs: list[tuple[int, str]], where: str) -> dict[int, str]:
    """Drop background, refuse duplicate ids or names and empty names; sorted by id."""
    table: dict[int, str] = {}
    by_name: dict[str, int] = {}
    for label, raw_name in pairs:
        if not isinstance(raw_name, str) or not raw_name.strip():
            raise _table_error(
                "label without a name",
                where,
                "a non-empty structure name for every label",
                f"label {label}: {raw_name!r}",
                "name every label, or remove it from the table",
            )
        name = raw_name.strip()
        if label in table:
            raise _table_error(
                "label id listed twice",
                where,
                "each label id once",
                f"label {label} as {table[label]!r} and as {name!r}",
                "keep one entry per label id",
            )
        key = name.lower()
        if key in by_name:
            raise _table_error(
                "structure name listed twice",
                where,
                "each name once (names are compared without case)",
                f"{name!r} for labels {by_name[key]} and {label}",
                "give the labels distinct names (or merge them into one label in the map)",
            )
        table[label] = name
        by_name[key] = label
    table.pop(0, None)  # background
    if not table:
        raise _table_error(
            "label table lists no structure",
            where,
            "at least one label other than 0 (background)",
            "no structure labels",
            "pass the table that belongs to the label map",
        )
    return dict(sorted(table.items()))


def _region_error(where: str, name: str, value: Any) -> StructureSetError:
    return _table_error(
        "region-based label sets are not supported",
        where,
        'one integer label per structure, e.g. nnU-Net labels {"background": 0, "liver": 1}',
        f"label {name!r} = {value!r} (a region: a union of labels that overlaps others)",
        "give a table of the labels the label map holds; nnU-Net writes region-based "
        "predictions as ordinary labels (regions_class_order), one per region",
    )


def _json_pairs(pairs: list[tuple[str, Any]], where: str) -> dict[str, Any]:
    """object_pairs_hook that refuses keys given twice (json keeps the last one silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _table_error(
                "key listed twice in JSON",
                where,
                "each key once",
                f"{key!r} twice",
                "keep one entry per label",
            )
        out[key] = value
    return out


def _table_from_json(text: str, where: str) -> dict[int, str]:
    try:
        data = json.loads(text, object_pairs_hook=lambda p: _json_pairs(p, where))
    except json.JSONDecodeError as exc:
        raise _table_error(
            "label table is not valid JSON",
            where,
            "a JSON object",
            f"{exc.msg} at line {exc.lineno}, column {exc.colno}",
            "repair the file (or export it again)",
        ) from exc
    if not isinstance(data, dict):
        raise _table_error(
            "label table is not a JSON object",
            where,
            'a JSON object, {"1": "spleen", ...} or nnU-Net\'s {"labels": {...}}',
            f"a JSON {type(data).__name__}",
            "pass TotalSegmentator's classes JSON or nnU-Net's dataset.json",
        )
    if "labels" in data and isinstance(data["labels"], dict):  # nnU-Net dataset.json
        labels: dict[str, Any] = data["labels"]
        context = "nnU-Net dataset.json"
        for name, value in labels.items():
            if isinstance(value, (list, tuple)):
                raise _region_error(where, name, value)
        if "regions_class_order" in data:
            raise _region_error(where, "regions_class_order", data["regions_class_order"])
        if labels and all(isinstance(v, str) for v in labels.values()):  # nnU-Net v1: id → name
            pairs = [(_label_id(k, where, f"key in {context}"), v) for k, v in labels.items()]
        else:  # nnU-Net v2: name → id
            pairs = [(_label_id(v, where, f"label of {k!r}"), k) for k, v in labels.items()]
        return _checked_table(pairs, where)
    pairs = []
    for key, value in data.items():
        if not _INTEGER.match(key):
            raise _table_error(
                "label id is not a non-negative integer",
                where,
                'keys that are label ids, {"1": "spleen", ...} (or nnU-Net\'s '
                '{"labels": {"spleen": 1, ...}})',
                f"key {key!r}",
                "write the table as label id → name, or wrap a name → id mapping as "
                '{"labels": {...}}',
            )
        pairs.append((int(key), value))
    return _checked_table(pairs, where)


def _table_from_csv(text: str, where: str) -> dict[int, str]:
    reader = csv.reader(text.splitlines())
    rows = [row for row in reader if any(cell.strip() for cell in row)]
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    id_columns = [h for h in CSV_ID_HEADERS if h in header]
    if len(id_columns) != 1 or CSV_NAME_HEADER not in header:
        raise _table_error(
            "CSV label table without the expected header",
            where,
            "a comma-separated header row with the columns 'label' (or 'value') and 'name'",
            f"header {rows[0] if rows else '<empty file>'}",
            "add the header row label,name",
        )
    i_id, i_name = header.index(id_columns[0]), header.index(CSV_NAME_HEADER)
    pairs = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) <= max(i_id, i_name):
            raise _table_error(
                "CSV row too short",
                f"{where}, row {line}",
                f"{len(header)} columns",
                f"{row}",
                "give a label and a name on every row",
            )
        pairs.append((_label_id(row[i_id].strip(), where, f"row {line}"), row[i_name]))
    return _checked_table(pairs, where)


def read_label_table(path: str | os.PathLike[str]) -> dict[int, str]:
    """Read the names of a label map's labels.

    Parameters
    ----------
    path
        ``.json`` (TotalSegmentator-style ``{"1": "spleen", ...}``, or nnU-Net's
        ``dataset.json`` with ``"labels"``) or ``.csv`` (header ``label,name`` or ``value,name``;
        other columns ignored).

    Returns
    -------
    dict of int to str
        Label id → structure name, sorted by id, without background (label 0).

    Raises
    ------
    StructureSetError
        Unknown file type, malformed JSON or CSV, a CSV without the header, region-based nnU-Net
        labels, ids that are not non-negative integers, ids or names listed twice, empty names,
        or no structure at all.
    """
    p = Path(path)
    where = str(p)
    suffix = p.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise _table_error(
            "unsupported label table format",
            where,
            "a .json file (TotalSegmentator classes, nnU-Net dataset.json) or a .csv file",
            f"a {suffix or 'suffix-less'} file",
            "convert the table to JSON or CSV (header label,name)",
        )
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise _table_error(
            "cannot read label table",
            where,
            "a readable UTF-8 text file",
            f"{type(exc).__name__}: {exc}",
            "check the path",
        ) from exc
    return _table_from_json(text, where) if suffix == ".json" else _table_from_csv(text, where)


# ------------------------------------------------------------------------------- label maps


@dataclass
class LabelMapData:
    """A label map on the reference grid, with its labels and every warning.

    Attributes
    ----------
    label_map
        Label ids (an unsigned integer array, (z, y, x)) on the reference grid.
    labels
        Structure name → label id, for every structure of the table (sorted by id).
    voxel_counts
        Structure name → voxels inside on the reference grid (0 for a label absent from the map:
        the model found nothing).
    warnings
        ``unlisted-label`` for each label in the map that the table does not name (its voxels
        are ignored), ``resampled`` when the map was resampled, ``label-lost-in-resampling`` for
        a label that the resampling removed entirely.
    reoriented
        The map was stored with flipped or permuted axes and was reindexed exactly.
    resampled
        The map lay on another grid and was resampled (nearest neighbour) onto the reference;
        masks from it should be flagged as resampled.
    """

    label_map: Volume
    labels: dict[str, int]
    voxel_counts: dict[str, int]
    warnings: list[RTStructWarning]
    reoriented: bool
    resampled: bool

    def mask(self, name: str) -> Volume:
        """Boolean mask (z, y, x) of structure ``name`` on the reference grid.

        Empty for a structure of the table that the map does not hold.
        """
        if name not in self.labels:
            raise StructureSetError(
                "structure not in the label table",
                where="label map",
                expected=f"one of {', '.join(self.labels)}",
                found=repr(name),
                fix="use a name of the label table",
            )
        return self.label_map.with_array(self.label_map.array == self.labels[name])

    def masks(self) -> dict[str, Volume]:
        """Every structure's boolean mask, by name, in table order.

        Each mask takes one byte per voxel; for a table of many structures, prefer
        :meth:`mask` one structure at a time.
        """
        return {name: self.mask(name) for name in self.labels}

    def to_data(self) -> dict[str, Any]:
        """JSON-ready summary (no voxels)."""
        return {
            "labels": dict(self.labels),
            "voxel_counts": dict(self.voxel_counts),
            "warnings": [w.to_data() for w in self.warnings],
            "reoriented": self.reoriented,
            "resampled": self.resampled,
        }


def _reorient_exactly(
    volume: Volume, reference: Volume, tolerance: float
) -> tuple[npt.NDArray[Any], bool] | None:
    """``volume``'s array reindexed onto ``reference``'s grid, if both grids have the same voxel
    centres (within ``tolerance`` of a voxel along each axis) up to axis flips and permutations.

    Returns the array and whether any axis was flipped or permuted; ``None`` for another grid.
    """
    dots = volume.direction @ reference.direction.T  # dots[a, b]: volume axis a · reference b
    target = np.argmax(np.abs(dots), axis=1)  # volume axis a lies along reference axis target[a]
    if sorted(target.tolist()) != [0, 1, 2]:
        return None
    if any(volume.shape[a] != reference.shape[target[a]] for a in range(3)):
        return None
    signs = np.sign(dots[np.arange(3), target])
    source_axis = np.argsort(target)  # reference axis b is filled from volume axis source_axis[b]
    # Affine maps: if the 8 corners of the grid coincide, every voxel centre does.
    shape = np.array(reference.shape)
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1).T
    source_index = np.empty_like(corners)
    for b in range(3):
        a = source_axis[b]
        source_index[:, a] = corners[:, b] if signs[a] > 0 else shape[b] - 1 - corners[:, b]
    landed = reference.physical_to_index(volume.index_to_physical(source_index))
    if np.abs(landed - corners).max() > tolerance:
        return None
    array = volume.array.transpose(source_axis)
    flips = tuple(b for b in range(3) if signs[source_axis[b]] < 0)
    if flips:
        array = np.flip(array, axis=flips)
    changed = bool(flips) or source_axis.tolist() != [0, 1, 2]
    return np.ascontiguousarray(array), changed


def _integer_labels(volume: Volume, where: str) -> npt.NDArray[np.unsignedinteger[Any]]:
    """The map's voxels as the smallest unsigned integer type, or an error saying why not."""
    array = np.asarray(volume.array)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        fractional = array != np.round(array)
        if fractional.any():
            k, j, i = (int(v) for v in np.argwhere(fractional)[0])
            raise NiftiError(
                "label map holds non-integer values",
                where=where,
                expected="integer labels",
                found=f"{int(fractional.sum())} voxels with a fraction, e.g. "
                f"{float(array[k, j, i]):g} at (z, y, x) = ({k}, {j}, {i})",
                fix="pass the label map (not a probability map or an image); if it is a "
                "probability map, threshold it first",
            )
    elif array.dtype.kind not in "iu":
        raise NiftiError(
            "label map is not numeric",
            where=where,
            expected="integer labels",
            found=f"voxels of type {array.dtype}",
            fix="export the label map as an integer image",
        )
    if array.size == 0:
        return array.astype(np.uint8)
    low, high = array.min(), array.max()
    if low < 0:
        raise NiftiError(
            "label map holds negative values",
            where=where,
            expected="labels ≥ 0 (0 is background)",
            found=f"values down to {low:g}",
            fix="pass the label map, not an image (a CT in HU has negative values)",
        )
    if high > np.iinfo(np.uint32).max:
        raise NiftiError(
            "label map holds implausibly large labels",
            where=where,
            expected=f"labels up to {np.iinfo(np.uint32).max}",
            found=f"values up to {high:g}",
            fix="pass the label map, not an image",
        )
    return array.astype(np.min_scalar_type(int(high)), copy=False)


def _counts(array: npt.NDArray[Any]) -> dict[int, int]:
    values, counts = np.unique(array, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def read_label_map(
    path: str | os.PathLike[str],
    table: Mapping[int, str] | str | os.PathLike[str],
    reference: Volume,
    *,
    resample: bool = False,
    tolerance: float = 0.1,
    digest: Digest | None = None,
) -> LabelMapData:
    """Read a NIfTI label map onto the grid of ``reference``, one structure per labelled name.

    Parameters
    ----------
    path
        The label map (``.nii`` or ``.nii.gz``): one integer label per voxel.
    table
        Label id → structure name, or the path of a label table (see :func:`read_label_table`).
        Label 0 is background.
    reference
        The grid the masks must lie on (the case's CT): geometry in mm, DICOM patient LPS,
        arrays (z, y, x).
    resample
        Resample a map on another grid onto ``reference`` (nearest neighbour, SimpleITK;
        voxels outside the map become background). Off by default: a different grid is refused.
    tolerance
        How far, as a fraction of the voxel size along each axis, the map's voxel centres may lie
        from the reference's and still count as the same grid (default 1/10).
    digest
        A :mod:`hashlib` object fed the file's bytes from the same read (one read to decode and
        hash a map).

    Returns
    -------
    LabelMapData
        The label map on the reference grid, a mask per structure of the table
        (:meth:`LabelMapData.mask`; empty for a label the map does not hold), voxel counts,
        flags ``reoriented`` and ``resampled``, and warnings (labels the table does not name
        are reported, never silently dropped).

    Raises
    ------
    NiftiError
        Unreadable map; non-integer, negative or implausibly large values; a grid other than
        the reference's (up to flipped or permuted axes) when ``resample`` is false.
    StructureSetError
        A malformed label table.

    Notes
    -----
    NIfTI holds no frame of reference: the map is matched to the reference by physical
    coordinates alone, so the caller must know that both come from the same scan.
    """
    where = str(path)
    if isinstance(table, (str, os.PathLike)):
        names = read_label_table(table)
    else:
        names = _checked_table(
            [(_label_id(k, "label table", "key"), v) for k, v in table.items()], "label table"
        )
    image = read_nifti(path, digest=digest)
    labels = _integer_labels(image, where)
    source_counts = _counts(labels)
    warnings: list[RTStructWarning] = []
    matched = _reorient_exactly(image, reference, tolerance)
    reoriented = resampled = False
    if matched is not None:
        array, reoriented = matched
    elif resample:
        array = _resample_labels(image, labels, reference)
        resampled = True
        warnings.append(
            RTStructWarning(
                "resampled",
                f"label map on {image.grid_description()} resampled (nearest neighbour) onto "
                f"{reference.grid_description()}",
            )
        )
    else:
        raise NiftiError(
            "label map grid differs from the reference grid",
            where=where,
            expected=f"{reference.grid_description()}, or the same voxel centres stored with "
            "flipped or permuted axes",
            found=image.grid_description(),
            fix="pass resample=True to resample it (nearest neighbour; the masks are then "
            "flagged as resampled), or export the label map on the CT's grid",
        )
    counts = _counts(array) if resampled else source_counts
    warnings += _label_warnings(names, source_counts, counts if resampled else None)
    return LabelMapData(
        label_map=reference.with_array(array),
        labels={name: label for label, name in names.items()},
        voxel_counts={name: counts.get(label, 0) for label, name in names.items()},
        warnings=warnings,
        reoriented=reoriented,
        resampled=resampled,
    )


def _resample_labels(
    image: Volume, labels: npt.NDArray[np.unsignedinteger[Any]], reference: Volume
) -> npt.NDArray[np.unsignedinteger[Any]]:
    """The labels of ``image`` resampled onto the grid of ``reference`` (nearest neighbour,
    SimpleITK; voxels outside the map become background)."""
    import SimpleITK as sitk

    grid = reference.with_array(np.zeros(reference.shape, dtype=np.uint8)).to_sitk()
    moved = sitk.Resample(
        image.with_array(labels).to_sitk(),
        grid,
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        0,
    )
    array: npt.NDArray[np.unsignedinteger[Any]] = sitk.GetArrayFromImage(moved).astype(
        labels.dtype, copy=False
    )
    return array


def _label_warnings(
    names: Mapping[int, str], source_counts: dict[int, int], resampled: dict[int, int] | None
) -> list[RTStructWarning]:
    """Labels of the map that the table does not name, and (``resampled``: the voxel counts
    after resampling) named labels that vanished in resampling."""
    warnings: list[RTStructWarning] = []
    for label, count in source_counts.items():
        if label == 0:
            continue
        if label not in names:
            warnings.append(
                RTStructWarning(
                    "unlisted-label",
                    f"label {label} ({count} voxels) is not in the label table; ignored",
                    roi_number=label,
                )
            )
        elif resampled is not None and label not in resampled:
            warnings.append(
                RTStructWarning(
                    "label-lost-in-resampling",
                    f"label {label} '{names[label]}' ({count} voxels) lies outside the reference "
                    "grid or vanished in resampling",
                    roi_number=label,
                    roi_name=names[label],
                )
            )
    return warnings
