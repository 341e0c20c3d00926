"""``dlas train`` on the command line."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture
def dlas() -> Callable[[Sequence[str]], int]:
    """``dlas(args)`` → exit status, with the model commands registered."""
    from dlas import cli
    from dlas.cli import model

    if "train" not in {c.name for c in cli.app.registered_commands}:
        model.register(cli.app)
    return cli.main


def test_train_command_writes_a_model(
    tmp_path: Path, synthetic: ModuleType, dlas, capsys: pytest.CaptureFixture[str]
) -> None:
    synthetic.make_dataset(tmp_path / "ds", 2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "learning_rate: 0.003\nmodel: {preset: cpu, widths: [8, 16, 24], blocks: [1, 1, 1], "
        "growth: [4, 4, 4], groups: 4, norm_groups: 4}\n"
    )
    status = dlas(
        [
            "train",
            str(tmp_path / "ds"),
            "--out",
            str(tmp_path / "model"),
            "--config",
            str(recipe),
            "--folds",
            "2",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert status == 0
    out = json.loads(capsys.readouterr().out)
    assert out["selected_fold"] in (1, 2)
    info = json.loads((tmp_path / "model" / "model.json").read_text())
    assert info["model_sha256"] == out["model_sha256"]
    assert info["training"]["recipe"]["epochs"] == 1


def test_train_command_prints_losses_per_epoch(
    tmp_path: Path, synthetic: ModuleType, dlas, capsys: pytest.CaptureFixture[str]
) -> None:
    synthetic.make_dataset(tmp_path / "ds", 2)
    status = dlas(
        [
            "train",
            str(tmp_path / "ds"),
            "--out",
            str(tmp_path / "model"),
            "--folds",
            "1",
            "--epochs",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert status == 0
    captured = capsys.readouterr()
    assert "fold 1/1 epoch 1/2: train loss" in captured.err
    assert "fold 1/1 epoch 2/2: train loss" in captured.err
    assert "model written to" in captured.out


def test_train_command_with_a_bad_recipe_fails_with_one_line(
    tmp_path: Path, synthetic: ModuleType, dlas, capsys: pytest.CaptureFixture[str]
) -> None:
    synthetic.make_dataset(tmp_path / "ds", 2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochz: 3\n")
    status = dlas(
        ["train", str(tmp_path / "ds"), "--out", str(tmp_path / "model"), "--config", str(recipe)]
    )
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "epochz" in err[0]
    assert not (tmp_path / "model").exists()


TINY_RECIPE = (
    "model: {preset: cpu, widths: [8, 16, 24], blocks: [1, 1, 1], growth: [4, 4, 4], "
    "groups: 4, norm_groups: 4}\n"
)


def test_train_command_with_a_time_budget_says_what_it_chose(
    tmp_path: Path, synthetic: ModuleType, dlas, capsys: pytest.CaptureFixture[str]
) -> None:
    synthetic.make_dataset(tmp_path / "ds", 2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base: fast\nsteps_per_epoch: 3\n" + TINY_RECIPE)
    status = dlas(
        [
            "train",
            str(tmp_path / "ds"),
            "--out",
            str(tmp_path / "model"),
            "--config",
            str(recipe),
            "--folds",
            "1",
            "--time-budget",
            "15s",
            "--device",
            "cpu",
        ]
    )
    assert status == 0
    err = capsys.readouterr().err
    assert "time budget 15 s:" in err and "epoch(s) of 3 steps per fold" in err
    info = json.loads((tmp_path / "model" / "model.json").read_text())
    assert info["training"]["recipe"]["base"] == "fast"
    assert info["training"]["schedule"]["time_budget"]["budget_s"] == 15.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--time-budget", "soon"], "'soon' is not a duration"),
        (["--time-budget", "1m", "--epochs", "2"], "both a number of epochs and a time budget"),
        (["--config", "fastest"], "recipe file not found"),
    ],
)
def test_train_command_with_bad_budget_or_recipe_name_fails_with_one_line(
    tmp_path: Path,
    synthetic: ModuleType,
    dlas,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    synthetic.make_dataset(tmp_path / "ds", 2)
    status = dlas(["train", str(tmp_path / "ds"), "--out", str(tmp_path / "model"), *args])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "model").exists()
