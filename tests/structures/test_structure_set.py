"""Structure-name mapping: what clinicians type → canonical names, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlas.errors import StructureSetError
from dlas.structures import (
    InputQAThresholds,
    QAThresholds,
    StructureSet,
    load_structure_set,
    name_stem,
)


@pytest.fixture(scope="module")
def rectal() -> StructureSet:
    return StructureSet.builtin("rectal")


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("Femoral Head Lt", "FemoralHead_L"),
        ("FemoralHead L", "FemoralHead_L"),
        ("Femur_Head_L", "FemoralHead_L"),
        ("femur-head-left", "FemoralHead_L"),
        ("L Femoral Head", "FemoralHead_L"),
        ("FEMORALHEAD_RT", "FemoralHead_R"),
        ("FemoralHeadRight", "FemoralHead_R"),
        ("femoralheadright", "FemoralHead_R"),
        ("Bowel_Small", "SmallBowel"),
        ("Small Intestine", "SmallBowel"),
        ("SMALL_BOWEL", "SmallBowel"),
        ("bladder", "Bladder"),
        ("Urinary Bladder", "Bladder"),
        ("CTV", "CTV"),
        ("CTV_Rectum", "CTV"),
        ("ctv rectal", "CTV"),
    ],
)
def test_clinical_spellings_map(rectal: StructureSet, typed: str, canonical: str) -> None:
    assert rectal.match(typed) == canonical


@pytest.mark.parametrize(
    "typed",
    [
        "Femur_L",
        "FemoralHead",
        "Femoral Heads",
        "CTV_R",
        "CTV_Boost",
        "PTV",
        "Rectum",
        "z_Bladder_opt",
        "Bladder_Wall",
        "Bowel_Large",
        "BODY",
    ],
)
def test_other_structures_do_not_map(rectal: StructureSet, typed: str) -> None:
    assert rectal.match(typed) is None


def test_name_stem_reads_laterality_at_either_end() -> None:
    assert name_stem("Femoral Head Lt") == ("femoralhead", "L")
    assert name_stem("Rt_Femur_Head") == ("femurhead", "R")
    assert name_stem("Bowel_Small") == ("bowelsmall", None)
    assert name_stem("L") == ("l", None)  # a lone letter is a name, not a side


def test_map_names_lists_unmatched(rectal: StructureSet) -> None:
    mapping = rectal.map_names(["CTV_Rectum", "PTV_50", "Femur_Head_R"])
    assert mapping.mapped == {"CTV_Rectum": "CTV", "Femur_Head_R": "FemoralHead_R"}
    assert mapping.unmatched == ["PTV_50"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "set.yaml"
    path.write_text(text)
    return path


def test_ambiguous_name_mapping_is_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
schema_version: 1
name: bowel
structures:
  - name: SmallBowel
    patterns: ['.*bowel.*']
  - name: LargeBowel
    synonyms: [Colon]
    patterns: ['.*bowel.*']
""",
    )
    structure_set = StructureSet.from_yaml(path)
    with pytest.raises(
        StructureSetError, match=r"ambiguous.*matches both LargeBowel and SmallBowel"
    ):
        structure_set.match("Bowel_Bag")


def test_structure_set_with_a_shared_spelling_is_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
schema_version: 1
name: clash
structures:
  - name: Bladder
    synonyms: [Vesica]
  - name: BladderWall
    synonyms: [vesica]
""",
    )
    with pytest.raises(StructureSetError, match="'vesica' matches both Bladder and BladderWall"):
        StructureSet.from_yaml(path)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("schema_version: 2\nname: x\nstructures: [{name: A}]", "schema_version"),
        ("schema_version: 1\nname: x\nstructures: [{name: 'A B'}]", "structures.0.name"),
        ("schema_version: 1\nname: x\nstructures: [{name: A, colour: [0, 0, 300]}]", "colour"),
        ("schema_version: 1\nname: x\nstructures: [{name: A, patterns: ['(']}]", "patterns"),
        ("schema_version: 1\nname: x\nstructures: [{name: A, colur: [1, 2, 3]}]", "colur"),
        ("schema_version: 1\nname: x\nstructures: [{name: A_L, laterality: R}]", "contradicts"),
        ("schema_version: 1\nname: x\nstructures: [{name: A, may_overlap: [B]}]", "unknown"),
        ("- just\n- a list", "not a mapping"),
        ("name: [unclosed", "not valid YAML"),
    ],
)
def test_invalid_structure_set_is_refused(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(StructureSetError, match=message):
        StructureSet.from_yaml(_write(tmp_path, body))


def test_missing_file_and_unknown_builtin_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StructureSetError, match="structure set file not found"):
        load_structure_set(tmp_path / "absent.yaml")
    with pytest.raises(StructureSetError, match="unknown built-in structure set"):
        StructureSet.builtin("thorax")


def test_builtin_rectal_set(rectal: StructureSet) -> None:
    assert rectal.names == ["CTV", "Bladder", "FemoralHead_L", "FemoralHead_R", "SmallBowel"]
    assert rectal["FemoralHead_L"].laterality == "L"
    assert rectal["Bladder"].postprocess.largest_component
    # the hash is of the content, not of the YAML layout
    assert StructureSet.from_data(rectal.to_data()).sha256() == rectal.sha256()


def test_structure_set_without_qa_reads_with_defaults_and_keeps_its_hash(tmp_path: Path) -> None:
    body = "schema_version: 1\nname: old\nstructures:\n  - name: Bladder\n  - name: FemoralHead_L\n"
    old = StructureSet.from_yaml(_write(tmp_path, body))
    assert old["Bladder"].qa == QAThresholds() and old.qa == InputQAThresholds()
    data = old.to_data()
    assert "qa" not in data and all("qa" not in s for s in data["structures"])
    # The hash this set had before QA thresholds existed (dlas before the qa blocks).
    assert old.sha256() == "b4784a8919baac75c74aa16716fa47fdc5f6adfbbc6035b6dd8b831433e7f66d"


def test_qa_thresholds_round_trip_and_change_the_hash(tmp_path: Path) -> None:
    plain = "schema_version: 1\nname: s\nstructures:\n  - name: SmallBowel\n"
    tuned = plain + "    qa: {max_fragments: null, volume_margin: 0.5}\nqa: {hu_margin: 50}\n"
    a = StructureSet.from_yaml(_write(tmp_path, plain))
    b = StructureSet.from_yaml(_write(tmp_path, tuned))
    assert b["SmallBowel"].qa.max_fragments is None and b["SmallBowel"].qa.volume_margin == 0.5
    assert b.qa.hu_margin == 50
    assert StructureSet.from_data(b.to_data()) == b
    assert a.sha256() != b.sha256()


def test_negative_qa_margin_is_refused(tmp_path: Path) -> None:
    body = (
        "schema_version: 1\nname: s\nstructures:\n  - name: Bladder\n    qa: {volume_margin: -1}\n"
    )
    with pytest.raises(StructureSetError, match="volume_margin"):
        StructureSet.from_yaml(_write(tmp_path, body))


def test_builtin_rectal_set_lets_small_bowel_be_in_pieces(rectal: StructureSet) -> None:
    assert rectal["SmallBowel"].qa.max_fragments is None
    assert rectal["SmallBowel"].qa.max_z_gaps is None
    assert rectal["SmallBowel"].qa.holes is False
    # The CTV ignores islands below 1.5 cm³ (chosen on replica training ground truth).
    assert rectal["CTV"].qa == QAThresholds(fragment_min_cm3=1.5)
    assert rectal["Bladder"].qa == QAThresholds()
