"""report.html: self-contained, one row per image, its data round-trips; and in a real headless Chromium.

The browser tests use Debian's `chromium` and `chromium-driver` through Selenium with an explicit driver path
(Selenium Manager never runs, nothing is downloaded at run time). Where they are missing the set-up installs
them with apt-get when running as root (as CI does), else the browser tests skip saying why.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from run_fixtures import untrained_run

import vfmxai.training
import vfmxai.viz.report_html as report_html
from vfmxai.evaluation import EvaluationSettings, evaluate, load_per_image, reproduce
from vfmxai.evaluation.report import per_image_scores
from vfmxai.evaluation.reproduce import write_reproduce_report
from vfmxai.run_folder import Recipe, dataset_split, load_run
from vfmxai.viz.report_html import ReportImages, SummaryTable, read_report_data, write_report_html

METHODS = ("ala", "gradcam", "rollout")
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
TINY = [
    "backbone.name=tiny", "backbone.image_size=32", "backbone.lora_rank=4", "model.patch_size=8", "model.dim=16",
    "model.depth=2", "model.heads=2", "model.n_inject=2", "model.map_channels=8", "model.pb_channels=16",
    "data.n_train=16", "data.n_val=8", "data.n_test=6", "data.synth_size=32", "data.seed=3",
    "train.epochs=1", "train.batch_size=8", "train.lr=0.01", "train.patience=0",
]


@pytest.fixture(scope="module")
def evaluated(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished evaluation folder: the tiny run's 8 test images, three real methods, 4 insertion steps."""
    with _one_thread():
        model, config, _ = load_run(trained_run)
        out = tmp_path_factory.mktemp("report") / "eval"
        evaluate(model, dataset_split(config, "test"), METHODS, out, EvaluationSettings(steps=4, batch_size=3),
                 progress=False, dataset_name="synthetic", config=config.to_dict())
    return out


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """As conftest's per-test `_threads`, for the module-scoped fixtures that run before it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _many_images(n: int, methods: tuple[str, ...] = ("ala", "gradcam"), points: int = 11) -> ReportImages:
    """`n` images of random scores and flat random colours (so the sprites stay small enough to embed), as an
    evaluation of that size would hand them over."""
    rng = np.random.default_rng(0)
    square = torch.zeros(n, 64, 64, dtype=torch.uint8)
    square[:, 16:48, 16:48] = 255
    scores = {m: {k: rng.random(n) for k in ("miou", "insertion", "deletion", "id", "pointing_game", "energy_pg")}
              for m in methods}
    curves = {m: (rng.random((n, points)), rng.random((n, points))) for m in methods}
    return ReportImages(
        ids=[f"img-{i:05d}" for i in range(n)], labels=rng.integers(0, 5, n), predicted=rng.integers(0, 5, n),
        scores=scores, curves=curves, class_names=[f"class {k}" for k in range(5)], mask_share=rng.random(n),
        target_prob=rng.random(n), images=torch.randint(0, 256, (n, 3, 1, 1), dtype=torch.uint8).expand(-1, -1, 64, 64),
        masks=square, maps={m: torch.randint(0, 256, (n, 1, 1), dtype=torch.uint8).expand(-1, 32, 32) for m in methods},
    )


@pytest.fixture(scope="module")
def many() -> ReportImages:
    return _many_images(5000)


@pytest.fixture(scope="module")
def large_page(many: ReportImages, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """report.html of 5000 images and the seconds its writing took."""
    with _one_thread():
        begin = time.perf_counter()
        path = write_report_html(tmp_path_factory.mktemp("large") / "report.html", "5000", [], many, {"ala": "ALA"})
        return path, time.perf_counter() - begin


def test_report_holds_no_external_reference_and_one_row_per_image(evaluated: Path) -> None:
    page = (evaluated / "report.html").read_text(encoding="utf-8")
    for external in ("http://", "https://", "//cdn", "@import"):
        assert external not in page, external
    for reference in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page):
        assert reference.startswith("data:") or not re.match(r"^([a-z]+:|/)", reference), reference
    data = read_report_data(page)["images"]
    per_image = load_per_image(evaluated)
    assert data["ids"] == per_image.ids and len(data["ids"]) == 8
    assert data["methods"] == list(METHODS)
    assert all(len(data["scores"][m]["miou"]) == 8 for m in METHODS)
    assert page.count('<figure><img src="data:image/png;base64,') == 2  # grid.png and curves.png
    assert "Methods (paper Table 2 layout)" in page and "Versions" in page


def test_report_data_round_trips_to_the_per_image_results(evaluated: Path) -> None:
    data = read_report_data((evaluated / "report.html").read_text(encoding="utf-8"))["images"]
    per_image = load_per_image(evaluated)
    assert data["label"] == per_image.labels.tolist() and data["predicted"] == per_image.predicted.tolist()
    for method in METHODS:
        expected = per_image_scores(per_image.methods[method])
        for metric in ("miou", "insertion", "deletion", "id", "pointing_game", "energy_pg"):
            np.testing.assert_allclose(data["scores"][method][metric], expected[metric], atol=5.1e-5, err_msg=metric)
        for kind in ("insertion", "deletion"):
            raw = np.frombuffer(base64.b64decode(data["curves"][method][kind]), dtype=np.uint8)
            curves = per_image.methods[method][f"{kind}_curve"]
            np.testing.assert_allclose(raw.reshape(curves.shape) / 255, curves, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(data["target_prob"], per_image.methods["ala"]["deletion_curve"][:, 0], atol=5.1e-5)
    np.testing.assert_allclose(data["mask_share"], per_image.pictures["mask_share"].numpy(), atol=5.1e-5)
    assert data["tiles"]["columns"] == ["image", *METHODS]
    assert all(len(urls) == 1 and urls[0].startswith("data:image/jpeg;base64,") for urls in
               data["tiles"]["sprites"].values())


def test_text_that_closes_a_script_stays_data(tmp_path: Path) -> None:
    images = _many_images(3)
    hostile = "</script><script>alert(1)</script><!--"
    images = dataclasses.replace(images, ids=[hostile, "b", "c"], class_names=["</SCRIPT>"] * 5)
    table = SummaryTable("T", {"ala": {"miou": 0.5}}, [("miou", "mIoU")], labels={"ala": "</script>"})
    page = write_report_html(tmp_path / "r.html", "<title>", [table], images, {"ala": "</script>"}).read_text()
    assert page.lower().count("</script>") == 2  # the blob's and the program's, nothing from the data
    data = read_report_data(page)
    assert data["images"]["ids"][0] == hostile and data["images"]["classes"][0] == "</SCRIPT>"


def test_5000_images_write_in_seconds_and_large_sprites_go_beside(
    large_page: tuple[Path, float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, seconds = large_page
    assert seconds < 30, seconds
    data = read_report_data(path.read_text())
    assert len(data["images"]["ids"]) == 5000 and data["page_size"] == report_html.PAGE_SIZE
    sprites = data["images"]["tiles"]["sprites"]
    assert [len(urls) for urls in sprites.values()] == [50, 50, 50]
    assert all(u.startswith("data:image/jpeg;base64,") for urls in sprites.values() for u in urls)

    monkeypatch.setattr(report_html, "EMBED_LIMIT", 0)
    path = write_report_html(tmp_path / "beside" / "report.html", "beside", [], _many_images(150), {})
    sprites = read_report_data(path.read_text())["images"]["tiles"]["sprites"]
    for urls in sprites.values():
        assert len(urls) == 2 and all(u.startswith("report/") and (path.parent / u).is_file() for u in urls)


def test_reproduce_writes_a_report_with_both_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_train(config, out, resume=False, progress=True, callbacks=None):
        """An untrained model in a real run folder: only the report is under test."""
        return untrained_run(config, out)

    monkeypatch.setattr(vfmxai.training, "train", fake_train)
    reproduce(Recipe("toy", "synthetic", overrides=TINY), 1, tmp_path, EvaluationSettings(steps=4, batch_size=4),
              ablations=True, methods=["ala", "rollout"], progress=False)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "paper Table 2 layout" in page and "paper Table 4 layout" in page
    at = [page.index(f"<td>{label}</td>") for label in ("ALA (ours)", "Rollout", "(i)", "(ii)", "(iii)", "(iv)")]
    assert at == sorted(at)  # the order asked for and the paper's, not metrics.json's sorted keys
    assert "Maps with and without AEA" in page and "±" in page
    data = read_report_data(page)["images"]
    assert data["ids"] == load_per_image(tmp_path / "seed0" / "eval").ids and len(data["ids"]) == 6
    assert data["classes"] == (tmp_path / "seed0" / "run" / "classes.txt").read_text().splitlines()
    demo_page = write_reproduce_report(tmp_path, tmp_path / "demo.html", timings={"total": 12.5})
    assert "&quot;total&quot;: 12.5" in demo_page.read_text(encoding="utf-8")


def _browser_missing() -> str | None:
    """Why no browser can run here, or None (after installing Debian's chromium when root and apt allow)."""
    if CHROMIUM.is_file() and CHROMEDRIVER.is_file():
        return None
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"no {CHROMIUM} and {CHROMEDRIVER}; install Debian's chromium and chromium-driver (needs root and apt)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium", "chromium-driver"]
    error = ""
    for attempt in range(2):
        try:
            done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=150)
        except subprocess.TimeoutExpired:
            return "apt-get install chromium chromium-driver took over 150 s"
        if done.returncode == 0 and CHROMIUM.is_file() and CHROMEDRIVER.is_file():
            return None
        error = (done.stderr or done.stdout).strip()[-300:]
        if attempt == 0:  # a clean machine may have no package lists yet
            try:
                subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=90)
            except subprocess.TimeoutExpired:
                return "apt-get update took over 90 s"
    return f"apt-get install chromium chromium-driver failed: {error}"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra has it)")
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1600", "--disable-extensions"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _severe(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _column(driver, index: int) -> list[str]:
    """The shown text of column `index` of the per-image table's rows (one script call, not one per cell)."""
    script = "return Array.from(document.querySelectorAll('#images tbody tr'), r => r.cells[arguments[0]].innerText);"
    return driver.execute_script(script, index)


def test_the_report_in_a_headless_browser(browser, evaluated: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    driver.get((evaluated / "report.html").as_uri())
    assert _severe(driver) == []
    rows = driver.find_elements(By.CSS_SELECTOR, "#images tbody tr")
    assert len(rows) == 8 and "page 1 of 1 · 8 of 8 images" in driver.find_element(By.ID, "p-info").text

    keyed = driver.find_elements(By.CSS_SELECTOR, "#images thead th[data-key]")
    headers = [th.get_attribute("data-key") for th in keyed]
    index = headers.index("ala:miou")
    header = driver.find_element(By.CSS_SELECTOR, '#images thead th[data-key="ala:miou"]')
    header.click()
    ascending = [float(v) for v in _column(driver, index)]
    assert ascending == sorted(ascending)
    driver.find_element(By.CSS_SELECTOR, '#images thead th[data-key="ala:miou"]').click()
    descending = [float(v) for v in _column(driver, index)]
    assert descending == sorted(ascending, reverse=True)
    summary = driver.find_elements(By.CSS_SELECTOR, "table.summary thead th")[1]  # mIoU of Table 2
    summary.click()
    values = [float(td.text) for td in driver.find_elements(By.CSS_SELECTOR, "table.summary tbody td:nth-child(2)")]
    assert values == sorted(values)

    driver.find_elements(By.CSS_SELECTOR, "#images tbody tr")[0].click()
    cards = driver.find_elements(By.CSS_SELECTOR, "#detail .card[data-method]")
    assert [c.get_attribute("data-method") for c in cards] == list(METHODS)
    for card in cards:
        tile = card.find_element(By.CLASS_NAME, "tile")
        assert tile.value_of_css_property("background-image").startswith('url("data:image/jpeg;base64,')
    assert len(driver.find_elements(By.CSS_SELECTOR, "#detail svg polyline")) == 2 * len(METHODS)
    first = driver.find_element(By.CSS_SELECTOR, "#detail h3").text
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    second_row = driver.find_elements(By.CSS_SELECTOR, "#images tbody tr")[1]
    assert "selected" in second_row.get_attribute("class") and driver.find_element(By.CSS_SELECTOR,
                                                                                  "#detail h3").text != first
    screenshot = tmp_path / "report.png"
    assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    assert _severe(driver) == []


def test_5000_images_page_in_a_headless_browser(browser, many: ReportImages, large_page: tuple[Path, float]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver, images = browser, many
    driver.get(large_page[0].as_uri())
    info = driver.find_element(By.ID, "p-info")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#images tbody tr")) == 100
    assert "page 1 of 50 · 5000 of 5000 images" in info.text
    driver.find_element(By.ID, "p-last").click()
    assert "page 50 of 50" in info.text and _column(driver, 0)[-1] == "5000"
    Select(driver.find_element(By.ID, "f-class")).select_by_visible_text("class 3")
    in_class = int(np.sum(images.labels == 3))
    assert f"{in_class} of 5000 images" in info.text and set(_column(driver, 2)) == {"class 3"}
    Select(driver.find_element(By.ID, "f-worse")).select_by_visible_text("gradcam")
    shown = {m: np.round(images.scores[m]["miou"], 4) for m in ("ala", "gradcam")}  # the page compares these
    worse = int(np.sum((images.labels == 3) & (shown["ala"] < shown["gradcam"])))
    assert f"{worse} of 5000 images" in info.text
    assert _severe(driver) == []
