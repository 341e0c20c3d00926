"""Errors a user can hit, each saying what was expected, what was found, where, and what to do.

Every error that bad input can cause in `dlas` is a :class:`DlasError` (or a subclass). The
command-line interface prints it as one line, ``error: <message>``, and exits with status 2.
Library code raises these with all four parts filled in so that the message alone lets a
physicist fix the input without reading the source.
"""

from __future__ import annotations

__all__ = [
    "DatasetError",
    "DicomSeriesError",
    "DlasError",
    "EvaluationError",
    "NiftiError",
    "OutputError",
    "RTStructError",
    "ReportError",
    "StructureSetError",
    "StudyError",
]


class DlasError(Exception):
    """A problem with the user's input or configuration.

    Parameters
    ----------
    what
        The short statement of the problem ("missing slice").
    where
        The place: a file, a folder, a DICOM tag, an ROI, a slice.
    expected
        What the toolkit expected to find.
    found
        What it found instead.
    fix
        What the user can do about it.
    """

    def __init__(
        self,
        what: str,
        *,
        where: str | None = None,
        expected: str | None = None,
        found: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.what = what
        self.where = where
        self.expected = expected
        self.found = found
        self.fix = fix
        super().__init__(self._compose())

    def _compose(self) -> str:
        parts: list[str] = []
        head = f"{self.where}: {self.what}" if self.where else self.what
        parts.append(head)
        if self.expected is not None:
            parts.append(f"expected {self.expected}")
        if self.found is not None:
            parts.append(f"found {self.found}")
        message = "; ".join(parts)
        if self.fix:
            message += f" — {self.fix}"
        # One line, always: the CLI prints messages verbatim.
        return " ".join(message.split())


class DicomSeriesError(DlasError):
    """A DICOM file or CT series that cannot be read as one regular axial CT volume."""


class RTStructError(DlasError):
    """An RTSTRUCT that cannot be rasterised onto its CT, or masks that cannot be written as one."""


class StructureSetError(DlasError):
    """An invalid structure-set definition, or a structure name that maps ambiguously."""


class NiftiError(DlasError):
    """A NIfTI image that is unreadable or unusable (NaN values, wrong grid, wrong dimension)."""


class DatasetError(DlasError):
    """A data-set folder that is missing, malformed, or inconsistent with the request."""


class EvaluationError(DlasError):
    """Inputs of an evaluation or comparison that are missing, malformed or inconsistent."""


class ReportError(DlasError):
    """Inputs or options of a report that are missing, malformed or inconsistent."""


class StudyError(DlasError):
    """A study configuration or study folder that cannot be run or resumed."""


class OutputError(DlasError):
    """An output path that cannot be written: a file where a folder belongs, a read-only or
    full file system, or earlier results that would be overwritten without ``--overwrite``."""
