"""Fine-tuning from a pretrained model: head re-initialisation, layer checks, freezing."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch

from dlas.model import ModelFileError, load_model, read_model_info
from dlas.training import TrainingConfigError, initial_network, train
from helpers.synthetic_data import TINY_NETWORK, write_malicious_pickle

TINY = TINY_NETWORK
RECIPE = {"epochs": 1, "folds": 1, "learning_rate": 3e-3, "model": TINY}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, synthetic: ModuleType) -> Path:
    root = tmp_path_factory.mktemp("pretrained")
    dataset = synthetic.make_dataset(root / "ds", 2, seed=5)
    train(dataset, root / "model", config=RECIPE, device="cpu", name="vendor")
    return root / "model"


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_model(folder).networks[0].state_dict()


def test_new_structure_set_reinitialises_only_the_head(
    tmp_path: Path, synthetic: ModuleType, pretrained: Path
) -> None:
    info = read_model_info(pretrained)
    classes = ["background", "Bladder", "Femur_Head_L", "Femur_Head_R", "Rod"]
    architecture = info.architecture.model_copy(update={"num_classes": 5})
    net, note = initial_network(architecture, classes, seed=0, pretrained=info)
    fresh, _ = initial_network(architecture, classes, seed=0)
    vendor = _weights(pretrained)
    assert note is not None and note["head_reinitialised"]
    for key, value in net.state_dict().items():
        if key.startswith("head."):
            assert torch.equal(value, fresh.state_dict()[key]), key
        else:
            assert torch.equal(value, vendor[key]), key
    assert net.head[-1].weight.shape[0] == 5

    dataset = synthetic.make_dataset(tmp_path / "ds", 2, with_rod=True)
    train(dataset, tmp_path / "lft", config=RECIPE, pretrained=pretrained, device="cpu")
    lft = read_model_info(tmp_path / "lft")
    assert lft.classes == classes
    assert lft.training["pretrained"]["model_sha256"] == info.model_sha256
    assert lft.training["pretrained"]["head_reinitialised"] is True
    assert lft.preprocessing == info.preprocessing


def test_same_structure_set_keeps_every_layer(pretrained: Path) -> None:
    info = read_model_info(pretrained)
    net, note = initial_network(info.architecture, info.classes, seed=9, pretrained=info)
    assert note is not None and not note["head_reinitialised"]
    vendor = _weights(pretrained)
    for key, value in net.state_dict().items():
        assert torch.equal(value, vendor[key]), key


def test_pretrained_weights_of_another_architecture_are_refused(
    tmp_path: Path, synthetic: ModuleType, pretrained: Path
) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 2)
    recipe = {**RECIPE, "model": {**TINY, "widths": [8, 16, 32]}}
    with pytest.raises(ModelFileError, match=r"weights do not fit.*encoder\.2\..*shape"):
        train(dataset, tmp_path / "lft", config=recipe, pretrained=pretrained, device="cpu")


def test_training_only_the_decoder_leaves_the_encoder_unchanged(
    tmp_path: Path, synthetic: ModuleType, pretrained: Path
) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 2, seed=3)
    train(
        dataset,
        tmp_path / "lft",
        config={**RECIPE, "train_parts": "decoder"},
        pretrained=pretrained,
        device="cpu",
    )
    before, after = _weights(pretrained), _weights(tmp_path / "lft")
    encoder = [k for k in before if k.startswith(("stem.", "encoder."))]
    decoder = [k for k in before if k.startswith(("decoder.", "up.", "head."))]
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)


def test_encoder_frozen_for_the_first_epochs_only(
    tmp_path: Path, synthetic: ModuleType, pretrained: Path
) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 2, seed=3)
    train(
        dataset,
        tmp_path / "one",
        config={**RECIPE, "freeze_encoder_epochs": 1},
        pretrained=pretrained,
        device="cpu",
    )
    before, after = _weights(pretrained), _weights(tmp_path / "one")
    assert torch.equal(before["encoder.0.0.reduce.2.weight"], after["encoder.0.0.reduce.2.weight"])
    train(
        dataset,
        tmp_path / "two",
        config={**RECIPE, "freeze_encoder_epochs": 1, "epochs": 2, "selection": "last"},
        pretrained=pretrained,
        device="cpu",
    )
    history = read_model_info(tmp_path / "two").training["folds"][0]["history"]
    assert [h["encoder_frozen"] for h in history] == [True, False]
    assert not torch.equal(
        before["encoder.0.0.reduce.2.weight"],
        _weights(tmp_path / "two")["encoder.0.0.reduce.2.weight"],
    )


def test_fine_tuning_a_fold_ensemble_is_refused(tmp_path: Path, synthetic: ModuleType) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", 2)
    train(dataset, tmp_path / "ens", config={**RECIPE, "folds": 2}, ensemble=True, device="cpu")
    with pytest.raises(TrainingConfigError, match="cannot fine-tune a fold ensemble"):
        train(dataset, tmp_path / "lft", config=RECIPE, pretrained=tmp_path / "ens", device="cpu")


def test_pickled_pretrained_model_is_refused_without_execution(
    tmp_path: Path, synthetic: ModuleType
) -> None:

    marker = tmp_path / "pwned"

    write_malicious_pickle(tmp_path / "vendor.pth", marker)
    dataset = synthetic.make_dataset(tmp_path / "ds", 2)
    with pytest.raises(ModelFileError, match="refusing to load a pickled model file"):
        train(
            dataset,
            tmp_path / "lft",
            config=RECIPE,
            pretrained=tmp_path / "vendor.pth",
            device="cpu",
        )
    assert not marker.exists()
