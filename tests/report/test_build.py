"""Building the whole report: files, provenance, the HTML page, atomicity."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from dlas import __version__
from dlas.report import ReportError, ReportOptions, build_report, load_study

from .conftest import StudyFixture

FIGURES = ["slices", "volume_profile_CTV", "dsc_heatmap"] + [
    f"{kind}_{s}"
    for kind in ("distributions", "bland_altman")
    for s in ("CTV", "Bladder", "Femur_Head_L", "Femur_Head_R", "Bowel_Small")
]


def test_report_has_every_table_and_figure(report: Path) -> None:
    for stem in FIGURES:
        for ext in ("png", "svg"):
            path = report / "figures" / f"{stem}.{ext}"
            assert path.stat().st_size > 1000, path
        with Image.open(report / "figures" / f"{stem}.png") as image:
            assert image.size[0] >= 500  # 100 dpi, at least 5 inches wide
    for stem in ("table1_cohorts", "table2", "volume_CTV"):
        for ext in ("csv", "md", "tex"):
            assert (report / "tables" / f"{stem}.{ext}").stat().st_size > 50
    assert sorted(p.name for p in (report / "viewer").iterdir()) == ["ExVal.html", "GenEva.html"]
    assert not list(report.parent.glob(".tmp-*"))


def test_table2_is_the_evaluation_rendering(report: Path, study: StudyFixture) -> None:
    from dlas.evaluation import render_table2
    from dlas.report import read_comparison

    comparison, _ = read_comparison(study.comparison)
    for fmt in ("md", "tex", "csv"):
        written = (report / "tables" / f"table2.{fmt}").read_text(encoding="utf-8")
        rendered = render_table2(
            comparison,
            {"md": "markdown", "tex": "latex", "csv": "csv"}[fmt],
            cohorts=["ExVal", "GenEva"],
        )
        assert written == rendered


def test_report_json_records_provenance(report: Path, study: StudyFixture) -> None:
    data = json.loads((report / "report.json").read_text(encoding="utf-8"))
    assert data["software"] == {"name": "dlas", "version": __version__}
    assert {m["name"]: m["sha256"][:3] for m in data["models"]} == {"VPM": "vpm", "LFT": "lft"}
    assert len(data["config"]["sha256"]) == 64
    assert "metrics.csv" in data["inputs"]
    assert data["options"]["volume_structure"] == "CTV"
    listed = set(data["files"])
    on_disk = {p.relative_to(report).as_posix() for p in report.rglob("*") if p.is_file()}
    assert listed == on_disk
    assert any("LFT was significantly better than VPM" in p for p in data["summary"])


def test_html_is_self_contained(report: Path) -> None:
    html = (report / "index.html").read_text(encoding="utf-8")
    sources = re.findall(r'\bsrc="([^"]*)"', html)
    assert len(sources) == len(FIGURES)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"<(script|link)\b", html)
    assert "Content-Security-Policy" in html
    assert not re.search(r"https?://", html)
    for anchor in ("table1", "table2", "volume-table", "provenance-table"):
        assert f'id="{anchor}"' in html
    assert "Wilcoxon signed-rank test" in html or "wilcoxon" in html


def test_html_summary_and_provenance(report: Path) -> None:
    html = (report / "index.html").read_text(encoding="utf-8")
    assert "ExVal (n = 6), LFT against VPM:" in html
    assert "Better with LFT:" in html
    assert "CTV DSC" in html
    assert "sha256 vpm" in html and "sha256 lft" in html
    assert f"dlas {__version__}" in html
    # Metric definitions come from the evaluation's metrics.json.
    assert "pooled directed distances" in html


def test_viewer_pages_hold_every_case(report: Path, study: StudyFixture) -> None:
    html = (report / "viewer" / "ExVal.html").read_text(encoding="utf-8")
    match = re.search(
        r'<script type="application/json" id="viewer-data">(.*?)</script>', html, re.S
    )
    assert match is not None
    data = json.loads(match.group(1))
    assert [c["id"] for c in data["cases"]] == [f"EX{i:03d}" for i in range(1, 7)]
    assert [s["name"] for s in data["sources"]] == ["GT", "VPM", "LFT"]
    case = data["cases"][0]
    assert all(s["img"].startswith("data:image/webp;base64,") for s in case["slices"])
    shown = [s for s in case["slices"] if s["contours"]]
    assert {"GT", "VPM", "LFT"} <= set().union(*(s["contours"] for s in shown))
    assert case["metrics"][0]["structure"] == "CTV"
    assert len(case["metrics"][0]["values"]["VPM"]) == 5
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", html)


def test_existing_report_folder_is_refused(study: StudyFixture, tmp_path: Path) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ReportError, match=r"report folder already exists.*--overwrite"):
        build_report(load_study(study.root), out, ReportOptions(viewer=False))
    assert (out / "keep.txt").read_text() == "mine"


def test_failed_build_keeps_the_old_report(
    copy_study: Callable[[], StudyFixture], tmp_path: Path
) -> None:
    copy = copy_study()
    out = tmp_path / "report"
    out.mkdir()
    (out / "index.html").write_text("old report")
    shutil.rmtree(copy.predictions["LFT"] / "GE003")
    with pytest.raises(ReportError, match="prediction mask missing"):
        build_report(
            load_study(copy.root), out, ReportOptions(dpi=50, cases=("GE003",)), overwrite=True
        )
    assert (out / "index.html").read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "study"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (ReportOptions(volume_structure="Prostate"), r"--volume-structure.*'Prostate'"),
        (ReportOptions(metrics=("dice",)), r"unknown metric.*found dice"),
        (ReportOptions(cases=("XX001",)), r"case to show is not in the metrics table.*XX001"),
        (ReportOptions(cases=("median", "EX001")), r"invalid case selection"),
        (ReportOptions(n_slices=0), r"--slices: option out of range"),
        (ReportOptions(viewer_format="gif"), r"unknown viewer image format.*'gif'"),
        (ReportOptions(palette="rainbow"), r"unknown colour palette"),
    ],
)
def test_bad_options_are_refused(
    study: StudyFixture, tmp_path: Path, options: ReportOptions, message: str
) -> None:
    with pytest.raises(ReportError, match=message):
        build_report(load_study(study.root), tmp_path / "report", options)
    assert not (tmp_path / "report").exists()


def test_unknown_model_to_compare_is_refused(
    copy_study: Callable[[], StudyFixture], tmp_path: Path
) -> None:
    copy = copy_study()
    shutil.rmtree(copy.comparison)
    inputs = load_study(copy.root)
    with pytest.raises(ReportError, match=r"model to compare is not in the metrics table.*'XYZ'"):
        build_report(inputs, tmp_path / "r", ReportOptions(model_a="XYZ", model_b="LFT"))
