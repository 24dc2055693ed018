"""report.html in a real headless Chromium: no console errors, every figure drawn, every viral
record in the table, nothing fetched from the network."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from answers_support import read_tsv
from conftest import REPO, predict_args, run_cli

EXAMPLE = REPO / "examples" / "example.fna"


def _browser_or_reason() -> tuple[object | None, str]:
    try:
        from selenium import webdriver
    except ImportError:
        return None, "selenium is not installed (pip install virnucpro[test])"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        return None, "Chromium or chromedriver missing (apt-get install chromium chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=driver)
    return webdriver.Chrome(options=options, service=service), ""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from virnucpro.pipeline.selfcheck import write_random_models

    models = write_random_models(tmp_path_factory.mktemp("models"))
    out = tmp_path_factory.mktemp("report") / "out"
    result = run_cli(*predict_args(EXAMPLE, out, models))
    assert result.returncode == 0, result.stderr
    return out


def viral_ids(out: Path) -> list[str]:
    summary = read_tsv(out / "virnucpro_summary.tsv")
    return [s["id"] for s in summary if s["call"] == "virus" or s["viral_regions"] != "0"]


def test_report_command_rebuilds_a_self_contained_file(run):
    (run / "report.html").unlink()
    shutil.rmtree(run / "plots")
    result = run_cli("report", str(run))
    assert result.returncode == 0, result.stderr
    html = (run / "report.html").read_text()
    assert "http://" not in html and "https://" not in html
    assert viral_ids(run), "the random classifier calls no record viral: nothing to show"
    tracks = sorted((run / "plots").glob("track_*.png"))
    assert len(tracks) == min(50, len(viral_ids(run)))
    assert (run / "plots" / "frame_scores.png").is_file()
    assert html.count("data:image/png;base64,") == len(tracks) + 2


def test_report_renders_in_headless_chromium(run):
    browser, reason = _browser_or_reason()
    if browser is None:
        pytest.skip(reason)
    try:
        browser.get((run / "report.html").as_uri())
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth]);"
        )
        assert images and all(done and width > 0 for done, width in images), images
        listed = browser.execute_script(
            "return Array.from(document.querySelectorAll('table.viral tr td:first-child'))"
            ".map(td => td.textContent);"
        )
        assert listed == viral_ids(run)
    finally:
        browser.quit()
