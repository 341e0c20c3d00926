"""What every configuration file of dlas shares: reading YAML, one-line validation errors, hashes.

Structure sets, training recipes, phantom configurations and study configurations are YAML files
validated by pydantic models. They are read, refused and hashed the same way, here:

* :func:`read_yaml_mapping` — a missing file, broken YAML and a top level that is not a mapping
  each become a one-line error of the caller's class;
* :func:`validation_error` — the first pydantic problem, with its location, as one line;
* :func:`canonical_sha256` — the hash of the canonical JSON form (sorted keys, no spaces), so that
  the same configuration gives the same hash whatever its YAML formatting.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from dlas.errors import DlasError

__all__ = ["canonical_sha256", "read_yaml_mapping", "validation_error"]

E = TypeVar("E", bound=DlasError)


def canonical_sha256(data: Any) -> str:
    """SHA-256 of the canonical JSON form of ``data`` (a pydantic model or JSON-ready data)."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def read_yaml_mapping(
    path: str | os.PathLike[str],
    error: type[E],
    *,
    what: str,
    expected_keys: str,
    missing_fix: str,
    schema_fix: str,
    empty_is_mapping: bool = False,
) -> dict[str, Any]:
    """The top-level mapping of a YAML file, or a one-line ``error``.

    Parameters
    ----------
    path
        The file.
    error
        The :class:`DlasError` subclass to raise.
    what
        What the file is, for the messages ("recipe", "study configuration").
    expected_keys
        Examples of top-level keys, for the message when the file is not a mapping.
    missing_fix, schema_fix
        What to do when the file is missing, or is not a mapping.
    empty_is_mapping
        Read an empty file as an empty mapping (all defaults) instead of refusing it.
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError):
        raise error(
            f"{what} file not found",
            where=str(p),
            expected=f"a YAML {what}",
            found="nothing at that path" if not p.exists() else "a folder",
            fix=missing_fix,
        ) from None
    except UnicodeDecodeError:
        raise error(
            f"{what} is not a text file",
            where=str(p),
            expected="UTF-8 YAML",
            found="binary content",
            fix="check the path",
        ) from None
    except yaml.YAMLError as exc:
        raise error(
            f"{what} is not valid YAML",
            where=str(p),
            expected="YAML",
            found=str(exc).splitlines()[0],
            fix="correct the YAML syntax",
        ) from None
    if data is None and empty_is_mapping:
        data = {}
    if not isinstance(data, dict):
        raise error(
            f"{what} is not a mapping",
            where=str(p),
            expected=f"keys such as {expected_keys}",
            found=type(data).__name__,
            fix=schema_fix,
        )
    return data


def validation_error(
    exc: ValidationError,
    error: type[E],
    *,
    what: str,
    source: str | None,
    expected: str,
    fix: str,
) -> E:
    """One-line ``error`` for the first problem pydantic found (and how many more there are)."""
    problems = exc.errors()
    first = problems[0]
    location = ".".join(str(p) for p in first["loc"]) or "top level"
    more = len(problems) - 1
    return error(
        what,
        where=f"{source}, at {location}" if source else location,
        expected=expected,
        found=first["msg"],
        fix=fix + (f" ({more} more problem(s))" if more else ""),
    )
