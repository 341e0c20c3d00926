"""The nnU-Net engine end to end on a tiny synthetic data set (CPU, a few minutes): `dlas train`
with `engine: nnunet` (nnU-Net plans, preprocesses and trains the study's folds), prediction
through `dlas predict`, and fine-tuning an nnU-Net result folder written by nnunetv2 itself with
another class list (one class added, one dropped)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dlas.cli import main
from dlas.dataset import CaseDataset
from dlas.structures import StructureSet

pytest.importorskip("nnunetv2")

TINY = {
    "engine": "nnunet",
    "epochs": 1,
    "steps_per_epoch": 2,
    "folds": 2,
    "nnunet": {"val_steps_per_epoch": 1, "keep_work": True},
}


def _other_classes(synthetic: ModuleType) -> StructureSet:
    """The tiny set without Femur_Head_R, with a Rod."""
    data = synthetic.structure_set(with_rod=True, name="tiny-rod").to_data()
    data["structures"] = [s for s in data["structures"] if s["name"] != "Femur_Head_R"]
    return StructureSet.from_data(data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from dlas.training import train
    from helpers import synthetic_data

    root = tmp_path_factory.mktemp("nnunet")
    ds = synthetic_data.make_dataset(root / "ds", 4, cohorts=("A", "B"))
    train(ds, root / "model", config=TINY, device="cpu")
    return root / "ds", root / "model"


def test_train_writes_a_dlas_model_and_predicts(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dlas.engines.nnunet.model import read_nnunet_model

    ds_dir, model = trained
    info = read_nnunet_model(model)
    assert info.classes == ["background", "Bladder", "Femur_Head_L", "Femur_Head_R"]
    assert info.configuration == "2d" and len(info.weights) == 1
    assert info.qa  # the QA reference, measured on the training cases
    cv = json.loads((model / "cv.json").read_text())
    ds = CaseDataset.open(ds_dir)
    split = json.loads((model / "run.json").read_text())["split"]["folds"]
    # nnU-Net trained the study's folds: its splits_final.json is the dlas split.
    work = model / "nnunet-work" / "preprocessed" / "Dataset001_dlas" / "splits_final.json"
    nn_split = json.loads(work.read_text())
    assert [sorted(f["val"]) for f in nn_split] == [sorted(f["validation"]) for f in split]
    assert {c for f in split for c in f["validation"]} == set(ds.case_ids())
    assert [f["fold"] for f in cv["folds"]] == [1, 2]
    assert all(len(f["history"]) == 1 for f in cv["folds"])
    assert not list(model.glob("*.pth")) and (model / "folds" / "fold-1").is_dir()

    code = main(["predict", str(model), str(ds_dir), "--out", str(tmp_path / "p"),
                 "--format", "nifti", "--device", "cpu", "--cohort", "A"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, (out, err)
    assert "perform_everything_on_device" not in out + err  # nnU-Net's CPU notice, not ours
    report = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert report["model"]["model_sha256"] == info.model_sha256
    assert [i["status"] for i in report["items"]] == ["written", "written"]
    masks = sorted(p.name for p in (tmp_path / "p" / "case00" / "structures").iterdir())
    assert masks == ["Bladder.nii.gz", "Femur_Head_L.nii.gz", "Femur_Head_R.nii.gz"]


def _transfer(
    pretrained: Any, local: StructureSet
) -> tuple[Any, dict[str, Any], tuple[dict[str, Any], dict[str, Any]]]:
    """The local network (seeded), its freshly initialised state, and the pretrained weights
    mapped onto it (state, note)."""
    import torch

    from dlas.engines.nnunet.model import build_network
    from dlas.engines.nnunet.train import transfer_weights

    labels = {"background": 0, **{n: i for i, n in enumerate(local.names, start=1)}}
    torch.manual_seed(0)
    network = build_network(
        pretrained.plans, "2d", {"labels": labels, "channel_names": {"0": "CT"}},
        deep_supervision=True, where="test",
    )  # fmt: skip
    fresh = {k: v.clone() for k, v in network.state_dict().items()}
    return network, fresh, transfer_weights(network, pretrained, local)


def test_finetune_an_nnunet_result_folder_with_other_classes(
    trained: tuple[Path, Path], tmp_path: Path, synthetic: ModuleType
) -> None:
    import torch

    from dlas.engines.nnunet.model import read_nnunet_model
    from dlas.engines.nnunet.train import read_pretrained
    from dlas.training import train

    _, model = trained
    results = model / "nnunet-work" / "results" / "Dataset001_dlas"
    (folder,) = list(results.iterdir())  # written by nnU-Net: plans.json, fold_N/*.pth
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file()
    pretrained = read_pretrained(folder)
    assert pretrained.classes == ["background", "Bladder", "Femur_Head_L", "Femur_Head_R"]

    local = _other_classes(synthetic)
    _, fresh, (state, note) = _transfer(pretrained, local)
    assert note["kept"] == ["background", "Bladder", "Femur_Head_L"]
    assert note["new"] == ["Rod"] and note["dropped"] == ["Femur_Head_R"]
    heads = [k for k in state if ".seg_layers." in k]
    assert heads
    for key in state:
        if key in heads:
            old = pretrained.weights[key]
            assert torch.equal(state[key][:3], old[:3])  # kept classes: unchanged
            assert torch.equal(state[key][3], fresh[key][3])  # Rod: fresh
        else:
            assert torch.equal(state[key], pretrained.weights[key])

    ds = CaseDataset.open_or_create(tmp_path / "local", local)
    for i in range(3):
        ct, masks = synthetic.make_case(500 + i, with_rod=True)
        del masks["Femur_Head_R"]
        ds.write_case(f"loc{i}", "L", ct, masks, {"case_id": f"loc{i}", "cohort": "L"})
    recipe = {
        **TINY,
        "folds": 1,
        "freeze_encoder_epochs": 1,
        "time_budget": "45s",  # the fold's epochs are fitted to what planning left of it
        "nnunet": {"val_steps_per_epoch": 1},
    }
    result = train(ds, tmp_path / "lft", config=recipe, pretrained=folder, device="cpu")
    info = read_nnunet_model(result.model_dir)
    assert info.classes == ["background", "Bladder", "Femur_Head_L", "Rod"]
    assert info.training["pretrained"]["classes"]["new"] == ["Rod"]
    assert not (tmp_path / "lft" / "nnunet-work").exists()
    schedule = info.training["schedule"]
    assert schedule["time_budget"] == 45.0 and schedule["epochs_trained"][0] >= 1
    assert "fit the time budget" in (tmp_path / "lft" / "nnunet.log").read_text()
    # the pretrained plans were transferred: same network, same patch
    assert (
        info.plans["configurations"]["2d"]["patch_size"]
        == (pretrained.plans["configurations"]["2d"]["patch_size"])
    )


def _old_format(config: dict[str, Any]) -> None:
    """Rewrite one plans configuration as nnU-Net before 2.4 wrote it (TotalSegmentator's
    plans): the network as UNet_* fields instead of an ``architecture`` entry."""
    arch = config.pop("architecture")
    kw = arch["arch_kwargs"]
    strides = kw["strides"]
    assert arch["network_class_name"].endswith(".PlainConvUNet")
    config.update(
        UNet_class_name="PlainConvUNet",
        UNet_base_num_features=kw["features_per_stage"][0],
        unet_max_num_features=max(kw["features_per_stage"]),
        n_conv_per_stage_encoder=kw["n_conv_per_stage"],
        n_conv_per_stage_decoder=kw["n_conv_per_stage_decoder"],
        pool_op_kernel_sizes=kw["strides"],
        conv_kernel_sizes=kw["kernel_sizes"],
        num_pool_per_axis=[sum(s[a] > 1 for s in strides) for a in range(len(strides[0]))],
    )


def _numpy1_pickle(path: Path) -> None:
    """Make ``path`` (a torch.save zip) name NumPy's scalar constructor as NumPy 1 did."""
    import zipfile

    with zipfile.ZipFile(path) as old:
        entries = [(info, old.read(info.filename)) for info in old.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as new:
        for info, data in entries:
            if info.filename.endswith("/data.pkl"):
                assert b"cnumpy._core.multiarray\nscalar" in data  # the training log's floats
                data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
            new.writestr(info, data)


def _totalsegmentator_style(modern: Path, root: Path) -> Path:
    """An nnU-Net result folder laid out and written as TotalSegmentator's released weights
    are (nnU-Net < 2.4, NumPy 1, the no-mirroring trainer, lower-case organ names), made from
    ``modern``, a result folder nnunetv2 2.8 wrote."""
    import torch

    folder = root / "Dataset291_TotalSegmentator_part1_organs_1559subj"
    folder = folder / "nnUNetTrainerNoMirroring__nnUNetPlans__2d"
    (folder / "fold_0").mkdir(parents=True)
    plans = json.loads((modern / "plans.json").read_text())
    for config in plans["configurations"].values():
        if "architecture" in config:
            _old_format(config)
    dataset = json.loads((modern / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, "urinary_bladder": 1, "femur_left": 2, "femur_right": 3}
    dataset["name"] = "TotalSegmentator_part1_organs"
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    # our own file, written by nnunetv2 in this module: safe to unpickle in full
    saved = torch.load(modern / "fold_0" / "checkpoint_final.pth", weights_only=False)
    saved.update(
        trainer_name="nnUNetTrainerNoMirroring",
        inference_allowed_mirroring_axes=None,
        init_args={
            "plans": plans, "configuration": "2d", "fold": 0, "dataset_json": dataset,
            "unpack_dataset": True, "device": torch.device("cuda"),
        },
    )  # fmt: skip
    torch.save(saved, folder / "fold_0" / "checkpoint_final.pth")
    _numpy1_pickle(folder / "fold_0" / "checkpoint_final.pth")
    return folder


def test_finetune_a_totalsegmentator_style_result_folder(
    trained: tuple[Path, Path], tmp_path: Path, synthetic: ModuleType
) -> None:
    """Weights released before nnU-Net 2.4 and NumPy 2, as TotalSegmentator's are: old-format
    plans, a checkpoint naming numpy.core.multiarray, no mirroring, organ names matched through
    the structure set's synonyms. None could be tried for real here (nothing is downloaded)."""
    from dlas.engines.nnunet import load_checkpoint
    from dlas.engines.nnunet.model import read_nnunet_model
    from dlas.engines.nnunet.train import read_pretrained
    from dlas.training import train

    _, model = trained
    (modern,) = list((model / "nnunet-work" / "results" / "Dataset001_dlas").iterdir())
    folder = _totalsegmentator_style(modern, tmp_path / "ts")
    checkpoint = load_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    assert checkpoint.mirroring_axes is None and checkpoint.log["train_losses"]
    pretrained = read_pretrained(folder)
    assert pretrained.classes == ["background", "urinary_bladder", "femur_left", "femur_right"]
    config = pretrained.plans["configurations"]["2d"]
    # rewritten by nnU-Net's own conversion, into exactly what nnunetv2 2.8 had planned
    assert "UNet_class_name" not in config
    modern_plans = json.loads((modern / "plans.json").read_text())
    assert config["architecture"] == modern_plans["configurations"]["2d"]["architecture"]

    data = synthetic.structure_set().to_data()
    data["structures"][0]["synonyms"] = ["Urinary_Bladder"]  # as the built-in rectal set has
    ds = CaseDataset.open_or_create(tmp_path / "local", StructureSet.from_data(data))
    for i in range(2):
        ct, masks = synthetic.make_case(700 + i)
        ds.write_case(f"loc{i}", "L", ct, masks, {"case_id": f"loc{i}", "cohort": "L"})
    recipe = {**TINY, "folds": 1, "nnunet": {"val_steps_per_epoch": 1}}
    result = train(ds, tmp_path / "lft", config=recipe, pretrained=folder, device="cpu")
    info = read_nnunet_model(result.model_dir)
    classes = info.training["pretrained"]["classes"]
    assert classes["matched"] == {"background": "background", "Bladder": "urinary_bladder"}
    assert classes["new"] == ["Femur_Head_L", "Femur_Head_R"]
    assert classes["dropped"] == ["femur_left", "femur_right"]
    assert "architecture" in info.plans["configurations"]["2d"]
    assert "old nnU-Net plans format" not in (tmp_path / "lft" / "nnunet.log").read_text()


def test_a_region_based_model_lends_its_regions_to_classes_of_the_same_name(
    trained: tuple[Path, Path], tmp_path: Path, synthetic: ModuleType
) -> None:
    """A region-based model has one output per region and none for background: regions named
    like a local class initialise it, the background output starts fresh, other regions are
    dropped; a dataset.json that does not fit the checkpoint is refused in one line."""
    import shutil

    import torch

    from dlas.engines.nnunet import NnUNetFileError
    from dlas.engines.nnunet.train import read_pretrained, transfer_weights

    _, model = trained
    (modern,) = list((model / "nnunet-work" / "results" / "Dataset001_dlas").iterdir())
    folder = tmp_path / "regions"
    shutil.copytree(modern, folder)
    dataset = json.loads((modern / "dataset.json").read_text())
    regions: dict[str, Any] = {"background": 0, "Bladder": 1, "Femur_Head_L": 2}
    regions.update({"Femur_Head_R": 3, "Femora": [2, 3]})

    def write(data: dict[str, Any]) -> None:
        (folder / "dataset.json").write_text(json.dumps(data))

    write({**dataset, "labels": regions, "regions_class_order": [1, 2, 3, 2]})
    pretrained = read_pretrained(folder)
    assert pretrained.region_based
    assert pretrained.classes == ["Bladder", "Femur_Head_L", "Femur_Head_R", "Femora"]

    local = synthetic.structure_set()
    network, fresh, (state, note) = _transfer(pretrained, local)
    assert note["matched"] == {"Bladder": "Bladder", "Femur_Head_L": "Femur_Head_L",
                               "Femur_Head_R": "Femur_Head_R"}  # fmt: skip
    assert note["new"] == ["background"] and note["dropped"] == ["Femora"]
    assert note["region_based"] is True
    heads = [k for k in state if ".seg_layers." in k]
    for key in heads:
        old = pretrained.weights[key]
        assert torch.equal(state[key][0], fresh[key][0])  # background: fresh
        assert torch.equal(state[key][1:], old[:3])  # output k of the regions → class k + 1

    write({**dataset, "labels": regions})
    with pytest.raises(NnUNetFileError, match="without regions_class_order"):
        read_pretrained(folder)
    del regions["Femora"]
    regions["Bones"] = [1, 2, 3]
    regions.pop("Femur_Head_R")
    write({**dataset, "labels": regions, "regions_class_order": [1, 2, 3]})
    with pytest.raises(NnUNetFileError, match=r"has 4 outputs, dataset\.json names 3"):
        transfer_weights(network, read_pretrained(folder), local)
    for labels, message in (
        (None, "labels missing"),
        ({"background": 0, "Bladder": "one"}, "labels dlas cannot read"),
        ({"background": 0, "Bladder": 2}, "labels are not consecutive"),
    ):
        write({**dataset, "labels": labels})
        with pytest.raises(NnUNetFileError, match=message) as error:
            read_pretrained(folder)
        assert "\n" not in str(error.value)


def test_export_cli_errors_are_one_line(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds_dir, _ = trained
    code = main(["export-nnunet", str(ds_dir), str(tmp_path), "--dataset-id", "1000"])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "1 to 999" in err
    code = main(["export-nnunet", str(ds_dir), str(tmp_path), "--dataset-id", "5", "--json"])
    out, _ = capsys.readouterr()
    assert code == 0 and json.loads(out)["dataset_name"] == "Dataset005_ds"


def test_a_study_with_the_nnunet_engine_runs_end_to_end(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """`engine: nnunet` in a study: the given nnU-Net model is fine-tuned on the training
    cohort with the study's folds, both models predict the evaluation cohorts, and the
    comparison and the report follow as for the DpnUNet."""
    import pandas as pd

    from dlas.engines.nnunet.model import read_nnunet_model
    from dlas.study import StudyConfig, preset_config, run_study
    from helpers import synthetic_data

    tiny = preset_config("tiny", "nnunet").to_data()
    assert tiny["engine"] == "nnunet" and "base" not in tiny["finetune"]
    assert "engine" not in preset_config("tiny").to_data()  # old studies keep their hash
    data = tmp_path / "ds"
    synthetic_data.make_dataset(data, 6, cohorts=("training", "ExVal", "GenEva"), seed=3)
    config = StudyConfig.model_validate(
        {
            "name": "nnunet-study",
            "engine": "nnunet",
            "data": {"kind": "dataset", "path": str(data)},
            "cohorts": {"pretrain": None},
            "pretrained_model": str(trained[1]),
            "finetune": {**TINY, "folds": 2, "nnunet": {"val_steps_per_epoch": 1}},
            "statistics": {"bootstrap": 100},
            "report": {"viewer": False},
        }
    )
    result = run_study(config, tmp_path / "study", device="cpu")
    assert list(result.steps) == [
        "data", "pretrain", "finetune", "predict", "evaluate", "compare", "report"
    ]  # fmt: skip
    assert (result.steps["pretrain"], result.steps["report"]) == ("ran", "ran")
    lft = read_nnunet_model(tmp_path / "study" / "models" / "LFT")
    assert lft.training["pretrained"]["classes"]["kept"] == [
        "background", "Bladder", "Femur_Head_L", "Femur_Head_R"
    ]  # fmt: skip
    metrics = pd.read_csv(tmp_path / "study" / "metrics.csv")
    assert set(metrics["model"]) == {"VPM", "LFT"} and len(metrics) == 2 * 4 * 3
    assert (tmp_path / "study" / "report" / "index.html").is_file()


def test_engine_option_of_dlas_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dlas.errors import StudyError
    from dlas.study import preset_config

    with pytest.raises(StudyError, match=r"unknown training engine.*found 'monai'"):
        preset_config("tiny", "monai")
    config = tmp_path / "study.yaml"
    config.write_text("schema_version: 1\n", encoding="utf-8")
    code = main(["study", str(config), "--engine", "nnunet", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--engine together with a configuration" in err and "engine: nnunet" in err
    assert not (tmp_path / "s").exists()


class _StopError(Exception):
    pass


def test_resume_keeps_the_folds_already_trained(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """Stopped before its second fold, a run resumes with nnU-Net's plans, preprocessed data
    and first fold as they were (only the second fold trains) and ends with the model the
    uninterrupted run wrote (training on this CPU is deterministic)."""
    from dlas.engines.nnunet.model import read_nnunet_model
    from dlas.training import TrainingEvent, train
    from helpers import synthetic_data

    ds = synthetic_data.make_dataset(tmp_path / "ds", 4, cohorts=("A", "B"))

    def stop_at_second_fold(event: TrainingEvent) -> None:
        if event.kind == "fold" and event.fold == 2:
            raise _StopError

    with pytest.raises(_StopError):
        train(ds, tmp_path / "model", config=TINY, device="cpu", progress=stop_at_second_fold)
    assert not (tmp_path / "model" / "model.json").exists()
    events: list[TrainingEvent] = []
    train(ds, tmp_path / "model", config=TINY, device="cpu", resume=True, progress=events.append)
    assert [e.fold for e in events if e.kind == "fold"] == [2]
    resumed, whole = read_nnunet_model(tmp_path / "model"), read_nnunet_model(trained[1])
    assert [w.sha256 for w in resumed.weights] == [w.sha256 for w in whole.weights]
    assert resumed.model_sha256 == whole.model_sha256
