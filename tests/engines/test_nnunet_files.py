"""The nnU-Net engine's file handling: export to nnU-Net's raw format (checked by nnunetv2's own
dataset checks), safe checkpoint loading, plans that name foreign code, recipe rules."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from dlas.dataset import CaseDataset
from dlas.errors import DatasetError
from dlas.training.config import TrainingConfigError, load_recipe

nnunetv2 = pytest.importorskip("nnunetv2")


def _overlapping_dataset(root: Path, synthetic: ModuleType) -> CaseDataset:
    """Four cases; in case00 the bladder also covers part of the left femoral head, and case03
    has no right femoral head."""
    ds = CaseDataset.open_or_create(root, synthetic.structure_set())
    for i in range(4):
        ct, masks = synthetic.make_case(100 + i)
        if i == 0:
            grown = masks["Bladder"].array | masks["Femur_Head_L"].array
            masks["Bladder"] = ct.with_array(grown)
        if i == 3:
            del masks["Femur_Head_R"]
        ds.write_case(f"case{i:02d}", "A", ct, masks, {"case_id": f"case{i:02d}", "cohort": "A"})
    return ds


def test_export_is_accepted_by_nnunet_and_resolves_overlaps(
    tmp_path: Path, synthetic: ModuleType
) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from dlas.engines.nnunet import export_nnunet

    ds = _overlapping_dataset(tmp_path / "ds", synthetic)
    result = export_nnunet(ds, tmp_path / "raw", dataset_id=7, name="pelvis")
    folder = tmp_path / "raw" / "Dataset007_pelvis"
    assert result.folder == folder
    assert result.cases == ["case00", "case01", "case02"]
    assert result.skipped == {"case03": "lacks Femur_Head_R"}
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "Bladder": 1, "Femur_Head_L": 2, "Femur_Head_R": 3}
    assert meta["numTraining"] == 3 and meta["channel_names"] == {"0": "CT"}
    verify_dataset_integrity(str(folder), num_processes=1)  # raises on any problem

    # The femoral head (priority 50) wins over the bladder (40); the overlap is counted.
    case = ds.load_case("case00")
    overlap = int((case.structures["Bladder"].array & case.structures["Femur_Head_L"].array).sum())
    assert result.overlaps["case00"] == {"Bladder under Femur_Head_L": overlap}
    image, props = SimpleITKIO().read_images([str(folder / "imagesTr" / "case00_0000.nii.gz")])
    labels, _ = SimpleITKIO().read_seg(str(folder / "labelsTr" / "case00.nii.gz"))
    np.testing.assert_array_equal(image[0], case.ct.array)
    np.testing.assert_allclose(props["spacing"], case.ct.spacing)
    head = case.structures["Femur_Head_L"].array
    assert set(labels[0][head].tolist()) == {2}
    assert set(labels[0][case.structures["Bladder"].array & ~head].tolist()) == {1}
    record = json.loads((folder / "dlas-export.json").read_text())
    assert record["structure_set_sha256"] == ds.structure_set.sha256()


def test_export_refuses_bad_requests(tmp_path: Path, synthetic: ModuleType) -> None:
    from dlas.engines.nnunet import export_nnunet

    ds = _overlapping_dataset(tmp_path / "ds", synthetic)
    with pytest.raises(DatasetError, match="lacks structures") as error:
        export_nnunet(ds, tmp_path / "raw", dataset_id=7, missing="error")
    assert "case03" in str(error.value)
    assert not (tmp_path / "raw" / "Dataset007_ds").exists()
    assert not list((tmp_path / "raw").glob(".*partial"))  # nothing half-written
    with pytest.raises(DatasetError, match="out of range"):
        export_nnunet(ds, tmp_path / "raw", dataset_id=1000)
    result = export_nnunet(ds, tmp_path / "raw", dataset_id=8, missing="background")
    assert result.cases == ["case00", "case01", "case02", "case03"]
    with pytest.raises(DatasetError, match="id already used"):
        export_nnunet(ds, tmp_path / "raw", dataset_id=8, name="other")
    with pytest.raises(DatasetError, match="unknown cohort"):
        export_nnunet(ds, tmp_path / "raw", dataset_id=9, cohorts=["Z"])


class _OpensAFile:
    """Unpickling this object calls ``open(path, "w")``: proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_checkpoint_loads_weights_and_refuses_other_objects(tmp_path: Path) -> None:
    import torch

    from dlas.engines.nnunet import NnUNetFileError, load_checkpoint

    weights = {"encoder.w": torch.arange(6.0).reshape(2, 3)}
    good = tmp_path / "checkpoint_final.pth"
    torch.save(
        {
            "network_weights": weights,
            "logging": {"ema_fg_dice": [np.float32(0.5), np.float64(0.75)]},
            "init_args": {"configuration": "2d", "device": torch.device("cpu")},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1),
            "current_epoch": 3,
        },
        good,
    )
    checkpoint = load_checkpoint(good)
    assert torch.equal(checkpoint.weights["encoder.w"], weights["encoder.w"])
    assert checkpoint.configuration == "2d" and checkpoint.mirroring_axes == (0, 1)
    assert checkpoint.log == {"ema_fg_dice": [0.5, 0.75]} and checkpoint.epochs == 3

    proof = tmp_path / "executed"
    evil = tmp_path / "evil.pth"
    torch.save({"network_weights": weights, "extra": _OpensAFile(proof)}, evil)
    with pytest.raises(NnUNetFileError, match="more than weights") as error:
        load_checkpoint(evil)
    assert "io.open" in str(error.value)
    assert not proof.exists()
    with pytest.raises(NnUNetFileError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(NnUNetFileError, match="cannot read"):
        load_checkpoint(tmp_path / "text.pth")
    torch.save({"weights": weights}, tmp_path / "other.pth")
    with pytest.raises(NnUNetFileError, match="not an nnU-Net checkpoint"):
        load_checkpoint(tmp_path / "other.pth")


def _plans(network: str, conv: str = "torch.nn.modules.conv.Conv2d") -> dict[str, object]:
    return {
        "dataset_name": "Dataset001_x",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [3.0, 2.0, 2.0],
        "original_median_shape_after_transp": [12, 48, 48],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "2d": {
                "data_identifier": "x",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [48, 48],
                "spacing": [2.0, 2.0],
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "architecture": {
                    "network_class_name": network,
                    "arch_kwargs": {"conv_op": conv, "norm_op": None, "nonlin": None},
                    "_kw_requires_import": ["conv_op", "norm_op", "nonlin"],
                },
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }


def test_plans_that_name_foreign_code_are_refused() -> None:
    from dlas.engines.nnunet import NnUNetFileError
    from dlas.engines.nnunet.checkpoint import check_plans

    unet = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    check_plans(_plans(unet), "2d", where="plans.json")
    with pytest.raises(NnUNetFileError, match="code dlas does not run") as error:
        check_plans(_plans("os.system"), "2d", where="plans.json")
    assert "os.system" in str(error.value)
    with pytest.raises(NnUNetFileError, match="code dlas does not run"):
        check_plans(_plans(unet, conv="subprocess.Popen"), "2d", where="plans.json")
    with pytest.raises(NnUNetFileError, match="lack the configuration"):
        check_plans(_plans(unet), "3d_fullres", where="plans.json")


def test_old_format_plans_are_read_or_refused_in_one_line() -> None:
    """Plans written before nnU-Net 2.4 name the network in UNet_* fields; nnU-Net's own
    conversion reads a PlainConvUNet, and anything else is refused in one line."""
    from dlas.engines.nnunet import NnUNetFileError
    from dlas.engines.nnunet.checkpoint import current_plans

    plans = _plans("unused")
    config: dict[str, Any] = plans["configurations"]["2d"]  # type: ignore[index]
    del config["architecture"]
    config.update(
        UNet_class_name="PlainConvUNet", UNet_base_num_features=32, unet_max_num_features=64,
        n_conv_per_stage_encoder=[2, 2], n_conv_per_stage_decoder=[2],
        pool_op_kernel_sizes=[[1, 1], [2, 2]], conv_kernel_sizes=[[3, 3], [3, 3]],
        num_pool_per_axis=[1, 1],
    )  # fmt: skip
    before = json.dumps(plans, sort_keys=True)
    current = current_plans(plans, "2d", where="plans.json")
    assert json.dumps(plans, sort_keys=True) == before  # the caller's plans are left as given
    arch = current["configurations"]["2d"]["architecture"]
    assert arch["network_class_name"].endswith("unet.PlainConvUNet")
    assert arch["arch_kwargs"]["features_per_stage"] == [32, 64]
    assert "UNet_class_name" not in current["configurations"]["2d"]
    config["UNet_class_name"] = "MyOwnUNet"
    with pytest.raises(NnUNetFileError, match="plans dlas cannot read") as error:
        current_plans(plans, "2d", where="plans.json")
    assert "MyOwnUNet" in str(error.value) and "\n" not in str(error.value)
    del config["conv_kernel_sizes"]
    config["UNet_class_name"] = "PlainConvUNet"
    with pytest.raises(NnUNetFileError, match="plans dlas cannot read") as error:
        current_plans(plans, "2d", where="plans.json")
    assert "conv_kernel_sizes" in str(error.value)
    config["architecture"] = "PlainConvUNet"  # today's key, but not the entry nnU-Net writes
    with pytest.raises(NnUNetFileError, match="plans dlas cannot read") as error:
        current_plans(plans, "2d", where="plans.json")
    assert "no architecture" in str(error.value)


def test_recipe_engine_rules() -> None:
    recipe = load_recipe({"engine": "nnunet", "epochs": 3, "nnunet": {"configuration": "2d"}})
    assert recipe.engine == "nnunet" and recipe.nnunet.configuration == "2d"
    with pytest.raises(TrainingConfigError, match="remove base: fast, loss"):
        load_recipe({"engine": "nnunet", "base": "fast", "loss": "ce"})
    # A DpnUNet recipe hashes as it did before there was a second engine.
    plain = load_recipe({"epochs": 3})
    assert "engine" not in plain.to_data()
    assert plain.sha256() != load_recipe({"epochs": 3, "engine": "nnunet"}).sha256()


def test_missing_nnunet_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from dlas.engines.nnunet import NnUNetFileError, require_nnunet

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nnunetv2" else real(name)
    )
    with pytest.raises(NnUNetFileError, match="nnunetv2 is not installed") as error:
        require_nnunet()
    assert "dlas[nnunet]" in str(error.value)


def test_time_budget_fitting_of_the_nnunet_trainer() -> None:
    """The arithmetic of the trainer's deadline: whole epochs after the timed probe epoch, one
    shorter epoch when a whole one does not fit, and the refit after each whole epoch, which
    uses the time the epoch really took (the probe's one-time costs had left most of an
    OpenKBP budget unused)."""
    from dlas.engines.nnunet.worker import fit_epochs, refit_epochs

    # 10 steps of 2 s, 2 validation steps of 1 s, 3 s overhead: 25 s per epoch
    assert fit_epochs(100.0, 10, 2, 2.0, 1.0, 3.0) == (4, 10)
    assert fit_epochs(24.0, 10, 2, 2.0, 1.0, 3.0) == (1, 9)  # one epoch of (24 - 5) // 2 steps
    assert fit_epochs(6.0, 10, 2, 2.0, 1.0, 3.0) == (0, 1)  # not even one step and validation
    # 2 epochs done of 5 planned; the last took 10 s and 65 s are left: 6 more fit
    assert refit_epochs(2, 5, 65.0, 10.0) == 8
    assert refit_epochs(2, 5, 5.0, 10.0) == 2  # none more fits: stop after this one
    assert refit_epochs(5, 5, 100.0, 10.0) == 5  # the run is over
    assert refit_epochs(2, 5, 50.0, 0.0) == 5  # no measurement: keep the plan


def _saved_nnunet_model(folder: Path, synthetic: ModuleType) -> Path:
    import torch

    from dlas.engines.nnunet.model import save_nnunet_model

    structure_set = synthetic.structure_set()
    labels = {name: i for i, name in enumerate(["background", *structure_set.names])}
    save_nnunet_model(
        folder,
        name="test nnU-Net",
        plans=_plans("dynamic_network_architectures.architectures.unet.PlainConvUNet"),
        configuration="2d",
        dataset_json={"labels": labels, "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"},
        trainer_name="nnUNetTrainer",
        mirroring_axes=None,
        structure_set=structure_set,
        members=[({"w": torch.zeros(2)}, 0, 1)],
    )
    return folder


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(qa=["not", "an", "object"]), r"model\.json is incomplete or malformed"),
        (lambda d: d.pop("trainer_name"), r"model\.json is incomplete or malformed"),
        (lambda d: d["classes"].reverse(), "model classes do not match its structure set"),
        (lambda d: d.update(weights=[]), "model lists no weights"),
        (lambda d: d["dataset_json"]["labels"].update(CTV=99), "do not match its nnU-Net labels"),
        (lambda d: d.update(trainer_name="nnUNetTrainerOther"), "model hash does not match"),
    ],
)
def test_damaged_nnunet_model_json_is_refused(
    tmp_path: Path, synthetic: ModuleType, edit: object, message: str
) -> None:
    """The nnU-Net reader shares the DpnUNet reader's checks of the common fields."""
    from dlas.engines.nnunet.model import read_nnunet_model
    from dlas.model.checkpoint import ModelFileError

    folder = _saved_nnunet_model(tmp_path / "model", synthetic)
    assert read_nnunet_model(folder).structures == synthetic.structure_set().names
    data = json.loads((folder / "model.json").read_text())
    edit(data)  # type: ignore[operator]
    (folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match=message) as error:
        read_nnunet_model(folder)
    assert "\n" not in str(error.value)
