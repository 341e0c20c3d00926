"""The shared reading, refusing and hashing of configuration files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from dlas.config_files import canonical_sha256, read_yaml_mapping, validation_error
from dlas.errors import DlasError


class _Error(DlasError):
    pass


def _read(path: Path, **kwargs: bool) -> dict[str, object]:
    return read_yaml_mapping(
        path,
        _Error,
        what="widget file",
        expected_keys="a, b",
        missing_fix="check the path",
        schema_fix="see the widget docs",
        **kwargs,
    )


def test_mapping_is_read(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("a: 1\nb: [x, y]\n", encoding="utf-8")
    assert _read(path) == {"a": 1, "b": ["x", "y"]}


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(_Error, match="widget file file not found") as info:
        _read(tmp_path / "nope.yaml")
    assert info.value.found == "nothing at that path"
    assert info.value.fix == "check the path"


def test_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(_Error, match="not found") as info:
        _read(tmp_path)
    assert info.value.found == "a folder"


def test_broken_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("a: [unclosed\n", encoding="utf-8")
    with pytest.raises(_Error, match="is not valid YAML"):
        _read(path)


def test_binary_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(_Error, match="is not a text file"):
        _read(path)


def test_list_at_top_level_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(_Error, match="is not a mapping") as info:
        _read(path)
    assert info.value.found == "list"
    assert info.value.expected == "keys such as a, b"


def test_empty_file_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(_Error, match="is not a mapping"):
        _read(path)
    assert _read(path, empty_is_mapping=True) == {}


class _Model(BaseModel):
    epochs: int
    rate: float


def test_validation_error_names_the_first_problem_and_counts_the_rest() -> None:
    with pytest.raises(ValidationError) as info:
        _Model.model_validate({"epochs": "many", "rate": "fast"})
    error = validation_error(
        info.value, _Error, what="invalid widget", source="w.yaml", expected="ints", fix="fix it"
    )
    assert isinstance(error, _Error)
    assert error.where == "w.yaml, at epochs"
    assert "integer" in (error.found or "")
    assert error.fix == "fix it (1 more problem(s))"
    alone = validation_error(
        info.value, _Error, what="invalid widget", source=None, expected="ints", fix="fix it"
    )
    assert alone.where == "epochs"


def test_hash_is_that_of_the_canonical_json() -> None:
    data = {"b": [1, 2.5, "x"], "a": {"z": None, "y": True}}
    text = '{"a":{"y":true,"z":null},"b":[1,2.5,"x"]}'
    assert canonical_sha256(data) == hashlib.sha256(text.encode()).hexdigest()
    # Key order and the model/data form do not matter.
    assert canonical_sha256(json.loads(json.dumps(data, sort_keys=False))) == canonical_sha256(
        dict(reversed(list(data.items())))
    )
    assert canonical_sha256(_Model(epochs=3, rate=0.5)) == canonical_sha256(
        {"rate": 0.5, "epochs": 3}
    )


def test_hash_refuses_nan() -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        canonical_sha256({"a": float("nan")})
