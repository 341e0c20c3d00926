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
    tg263_problems,
)


@pytest.fixture(scope="module")
def rectal() -> StructureSet:
    return StructureSet.builtin("rectal")


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("Femoral Head Lt", "Femur_Head_L"),
        ("FemoralHead L", "Femur_Head_L"),
        ("Femur_Head_L", "Femur_Head_L"),
        ("femur-head-left", "Femur_Head_L"),
        ("L Femoral Head", "Femur_Head_L"),
        ("FEMORALHEAD_RT", "Femur_Head_R"),
        ("FemoralHeadRight", "Femur_Head_R"),
        ("femoralheadright", "Femur_Head_R"),
        ("Bowel_Small", "Bowel_Small"),
        # the canonical names before TG-263, kept as synonyms
        ("FemoralHead_L", "Femur_Head_L"),
        ("FemoralHead_R", "Femur_Head_R"),
        ("SmallBowel", "Bowel_Small"),
        ("Small Intestine", "Bowel_Small"),
        ("SMALL_BOWEL", "Bowel_Small"),
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
    assert mapping.mapped == {"CTV_Rectum": "CTV", "Femur_Head_R": "Femur_Head_R"}
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
  - name: Bowel_Small
    patterns: ['.*bowel.*']
  - name: Bowel_Large
    synonyms: [Colon]
    patterns: ['.*bowel.*']
""",
    )
    structure_set = StructureSet.from_yaml(path)
    with pytest.raises(
        StructureSetError, match=r"ambiguous.*matches both Bowel_Large and Bowel_Small"
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
    assert rectal.names == ["CTV", "Bladder", "Femur_Head_L", "Femur_Head_R", "Bowel_Small"]
    assert rectal["Femur_Head_L"].laterality == "L"
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
    plain = "schema_version: 1\nname: s\nstructures:\n  - name: Bowel_Small\n"
    tuned = plain + "    qa: {max_fragments: null, volume_margin: 0.5}\nqa: {hu_margin: 50}\n"
    a = StructureSet.from_yaml(_write(tmp_path, plain))
    b = StructureSet.from_yaml(_write(tmp_path, tuned))
    assert b["Bowel_Small"].qa.max_fragments is None and b["Bowel_Small"].qa.volume_margin == 0.5
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
    assert rectal["Bowel_Small"].qa.max_fragments is None
    assert rectal["Bowel_Small"].qa.max_z_gaps is None
    assert rectal["Bowel_Small"].qa.holes is False
    # The CTV ignores islands below 1.5 cm³ (chosen on replica training ground truth).
    assert rectal["CTV"].qa == QAThresholds(fragment_min_cm3=1.5)
    assert rectal["Bladder"].qa == QAThresholds()


@pytest.mark.parametrize(
    ("name", "side", "rule"),
    [
        ("Femur_Head_L", "L", None),
        ("Bowel_Small", None, None),
        ("CTV", None, None),
        ("zPTV_Opt", None, None),  # z marks a non-clinical structure
        ("Cochlea_Inner_Ear_L", "L", "19 characters long"),
        ("Femoral-Head_L", "L", "other than letters, digits and _"),
        ("Femur__Head_L", "L", "empty component"),
        ("Bowel_Small_", None, "empty component"),
        ("bowel_Small", None, "lower-case"),
        ("L_Femur_Head", "L", "side L elsewhere than as the last component _L"),
        ("Femur_Head_Lt", "L", "side L elsewhere"),
    ],
)
def test_tg263_rules(name: str, side: str | None, rule: str | None) -> None:
    problems = tg263_problems(name, side)
    if rule is None:
        assert problems == []
    else:
        assert len(problems) == 1 and rule in problems[0], problems


def test_builtin_and_example_sets_follow_tg263(rectal: StructureSet) -> None:
    example = Path(__file__).parents[2] / "examples" / "openkbp-hn" / "structures.yaml"
    for structure_set in (rectal, StructureSet.from_yaml(example)):
        assert structure_set.naming == "TG-263"
        for s in structure_set.structures:
            assert tg263_problems(s.name, s.laterality) == [], s.name


def test_set_declaring_tg263_with_a_breaking_name_is_refused(tmp_path: Path) -> None:
    body = (
        "schema_version: 1\nname: s\nnaming: TG-263\nstructures:\n"
        "  - name: Bladder\n  - name: L_Femur_Head\n  - name: SpinalCord_Plus_5mm_PRV\n"
    )
    with pytest.raises(StructureSetError) as caught:
        StructureSet.from_yaml(_write(tmp_path, body))
    message = str(caught.value)
    assert "\n" not in message
    assert "'L_Femur_Head' has its side L elsewhere than as the last component _L" in message
    assert "'SpinalCord_Plus_5mm_PRV' is 23 characters long (at most 16)" in message
    assert "Bladder" not in message.split("naming TG-263")[1]
    assert "keep the old name as a synonym" in message


def test_set_without_naming_is_not_checked_and_keeps_its_hash(tmp_path: Path) -> None:
    body = "schema_version: 1\nname: s\nstructures:\n  - name: L_Femur_Head\n"
    plain = StructureSet.from_yaml(_write(tmp_path, body))
    assert plain.naming is None and "naming" not in plain.to_data()
    declared = StructureSet.from_data({**plain.to_data(), "structures": [{"name": "Femur_Head_L"}]})
    tg263 = StructureSet.from_data({**declared.to_data(), "naming": "TG-263"})
    assert tg263.to_data()["naming"] == "TG-263" and tg263.sha256() != declared.sha256()
    with pytest.raises(StructureSetError, match="naming"):
        StructureSet.from_data({**plain.to_data(), "naming": "RTOG"})
