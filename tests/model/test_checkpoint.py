"""Model files: safetensors + JSON round trip, integrity checks, and no pickle ever executed."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from dlas.model import (
    PRESETS,
    DpnUNet,
    DpnUNetConfig,
    ModelFileError,
    Preprocessing,
    check_state_dict,
    file_sha256,
    load_model,
    read_model_info,
    save_model,
)
from dlas.model.checkpoint import WeightsEntry, _model_hash
from dlas.structures import StructureSet

STRUCTURES = StructureSet.from_data(
    {"schema_version": 1, "name": "two", "structures": [{"name": "Bladder"}, {"name": "Rectum"}]}
)


def _architecture() -> DpnUNetConfig:
    return DpnUNetConfig.model_validate(
        {
            **PRESETS["cpu"],
            "widths": (8, 16),
            "blocks": (1, 1),
            "growth": (4, 4),
            "groups": 4,
            "norm_groups": 4,
            "num_classes": 3,
        }
    )


def _save(folder: Path, members: int = 1) -> tuple[Path, list[DpnUNet]]:
    nets = []
    for i in range(members):
        torch.manual_seed(i)
        nets.append(DpnUNet(_architecture()))
    save_model(
        folder,
        name="test model",
        architecture=_architecture(),
        preprocessing=Preprocessing(spacing_mm=2.0),
        structure_set=STRUCTURES,
        members=[(n.state_dict(), i + 1, 3) for i, n in enumerate(nets)],
        training={"note": "unit test"},
    )
    return folder, nets


class _Payload:
    """Unpickling this creates ``marker``: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_model_round_trip_gives_the_same_predictions(tmp_path: Path) -> None:
    folder, nets = _save(tmp_path / "model")
    loaded = load_model(folder)
    info = loaded.info
    assert info.classes == ["background", "Bladder", "Rectum"]
    assert info.name == "test model"
    assert info.preprocessing.spacing_mm == 2.0
    assert info.weights[0].sha256 == file_sha256(folder / "model.safetensors")
    assert info.version.endswith(info.model_sha256[:12])
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.networks[0](x), nets[0].eval()(x))
    data = json.loads((folder / "model.json").read_text())
    assert data["software"]["version"] and data["training"] == {"note": "unit test"}


def test_ensemble_has_one_weights_file_per_member(tmp_path: Path) -> None:
    folder, _ = _save(tmp_path / "model", members=3)
    info = read_model_info(folder)
    assert [w.file for w in info.weights] == [f"member-{i}.safetensors" for i in (1, 2, 3)]
    assert [w.fold for w in info.weights] == [1, 2, 3]
    assert not (folder / "model.safetensors").exists()
    assert len(load_model(folder).networks) == 3


def test_model_hash_ignores_dates_and_logs_but_not_weights(tmp_path: Path) -> None:
    a, _ = _save(tmp_path / "a")
    b, _ = _save(tmp_path / "b")
    assert read_model_info(a).model_sha256 == read_model_info(b).model_sha256
    torch.manual_seed(7)
    save_model(
        tmp_path / "c",
        name="x",
        architecture=_architecture(),
        preprocessing=Preprocessing(spacing_mm=2.0),
        structure_set=STRUCTURES,
        members=[(DpnUNet(_architecture()).state_dict(), None, None)],
    )
    assert read_model_info(tmp_path / "c").model_sha256 != read_model_info(a).model_sha256


def test_edited_postprocess_in_model_json_is_refused(tmp_path: Path) -> None:
    # Post-processing changes the predicted masks (a CTV went from 6722 to 360 voxels when
    # largest_component was switched on), so it must be covered by the model hash.
    folder, _ = _save(tmp_path / "model")
    data = json.loads((folder / "model.json").read_text())
    data["structure_set"]["structures"][0]["postprocess"] = {"largest_component": True}
    (folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match=r"model hash does not match model\.json"):
        read_model_info(folder)


def test_model_hash_covers_qa_reference(tmp_path: Path) -> None:
    a, _ = _save(tmp_path / "a")
    torch.manual_seed(0)
    save_model(
        tmp_path / "b",
        name="test model",
        architecture=_architecture(),
        preprocessing=Preprocessing(spacing_mm=2.0),
        structure_set=STRUCTURES,
        members=[(DpnUNet(_architecture()).state_dict(), 1, 3)],
        qa={"volumes_cm3": {"Bladder": {"min": 50.0, "max": 400.0}}},
    )
    assert read_model_info(tmp_path / "b").qa["volumes_cm3"]["Bladder"]["max"] == 400.0
    assert read_model_info(tmp_path / "b").model_sha256 != read_model_info(a).model_sha256
    data = json.loads((tmp_path / "b" / "model.json").read_text())
    data["qa"]["volumes_cm3"]["Bladder"]["max"] = 4000.0
    (tmp_path / "b" / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match=r"model hash does not match model\.json"):
        read_model_info(tmp_path / "b")


def test_qa_reference_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    folder, _ = _save(tmp_path / "model")
    data = json.loads((folder / "model.json").read_text())
    data["qa"] = ["not", "an", "object"]
    (folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match=r"model\.json is incomplete or malformed"):
        read_model_info(folder)


def test_version_1_model_is_refused_with_retrain_advice(tmp_path: Path) -> None:
    folder, _ = _save(tmp_path / "model")
    data = json.loads((folder / "model.json").read_text())
    data["schema_version"] = 1
    (folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="retrain it with this dlas version"):
        read_model_info(folder)


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    folder, _ = _save(tmp_path / "model")
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match=r"weights file does not match model.json"):
        load_model(folder)


def test_edited_model_json_is_refused(tmp_path: Path) -> None:
    folder, _ = _save(tmp_path / "model")
    data = json.loads((folder / "model.json").read_text())
    data["preprocessing"]["hu_max"] = 500.0
    (folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="model hash does not match"):
        read_model_info(folder)


def test_folder_without_model_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not a dlas model folder"):
        read_model_info(tmp_path)


def test_missing_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="model not found"):
        read_model_info(tmp_path / "nothing")


def test_bare_weights_file_is_refused(tmp_path: Path) -> None:
    folder, _ = _save(tmp_path / "model")
    with pytest.raises(ModelFileError, match="not a dlas model"):
        load_model(folder / "model.safetensors")


def test_model_json_of_another_kind_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text(json.dumps({"kind": "something-else"}))
    with pytest.raises(ModelFileError, match="not a dlas model description"):
        read_model_info(tmp_path)


def test_malicious_pickle_model_is_refused_without_execution(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    # The payload is live: unpickling it does run code (here: creates a file elsewhere).
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()

    raw = tmp_path / "vendor_model.pt"
    raw.write_bytes(payload)
    zipped = tmp_path / "vendor_model.pth"
    torch.save({"state_dict": _Payload(marker)}, zipped)
    for path in (raw, zipped):
        with pytest.raises(ModelFileError, match="refusing to load a pickled model file"):
            load_model(path)
    # A pickle disguised as the weights of a model folder whose model.json matches it.
    folder, _ = _save(tmp_path / "model")
    (folder / "model.safetensors").write_bytes(payload)
    data = json.loads((folder / "model.json").read_text())
    data["weights"][0]["sha256"] = file_sha256(folder / "model.safetensors")
    entries = [WeightsEntry(w["file"], w["sha256"]) for w in data["weights"]]
    data["model_sha256"] = _model_hash(
        _architecture(), Preprocessing(spacing_mm=2.0), STRUCTURES, data["classes"], entries, {}
    )
    (folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="refusing to load a pickled model file"):
        load_model(folder)
    assert not marker.exists()


def test_weights_of_another_architecture_list_the_layers() -> None:
    small = DpnUNet(_architecture())
    other = DpnUNet(_architecture().model_copy(update={"widths": (8, 24)}))
    with pytest.raises(ModelFileError, match=r"mismatching layer\(s\): .*encoder\.1"):
        check_state_dict(small, other.state_dict(), where="weights")
    state = dict(small.state_dict())
    state["extra.weight"] = torch.zeros(1)
    del state["head.2.bias"]
    with pytest.raises(ModelFileError, match=r"extra.weight unexpected; head.2.bias missing"):
        check_state_dict(small, state, where="weights")
    check_state_dict(small, state, where="weights", ignore_prefixes=("head.", "extra."))


def test_safetensors_starting_with_0x80_is_not_mistaken_for_a_pickle(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from dlas.model import load_weights

    path = tmp_path / "w.safetensors"
    # A header of 128 bytes: the file's first byte is 0x80, like a pickle's.
    for length in range(1, 300):
        save_file({"k" * length: torch.zeros(1)}, str(path))
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert list(load_weights(path)) == ["k" * length]
