"""End to end in a real browser: `wukong demo` trains a small model, `wukong space` serves it on 127.0.0.1 with
the demo's held-out images as the search folder, and headless Chromium (selenium, the Debian chromium and
chromium-driver packages; nothing downloaded) uploads images and runs every tab. One screenshot per tab goes to
tmp_path, or to $WUKONG_SPACE_SCREENSHOTS (docs/images for the docs: see docs/space.md)."""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALL = "install the browser with `apt-get install -y chromium chromium-driver fonts-noto-cjk` (.ci/run does)"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is missing: pip install -e '.[dev]'")
if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
    pytest.skip(f"no {CHROMIUM} / {CHROMEDRIVER}: {INSTALL}", allow_module_level=True)

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from wukong_hf.demo import DemoSettings, run_demo  # noqa: E402
from wukong_hf.space.handlers import load_session, zero_shot  # noqa: E402

WAIT = 180  # seconds for one result on a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_server(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            assert process.poll() is None, f"wukong space exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"wukong space did not answer in 300 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)


def _browser(profile: Path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def _bars(text: str) -> dict[str, int]:
    """gr.Label's text: a label line followed by its percentage line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return {lines[i]: int(lines[i + 1][:-1]) for i in range(len(lines) - 1) if re.fullmatch(r"\d+%", lines[i + 1])}


@pytest.mark.timeout(1200)
def test_every_tab_in_a_real_browser(tmp_path, monkeypatch):
    started = time.perf_counter()
    shots = Path(os.environ.get("WUKONG_SPACE_SCREENSHOTS") or tmp_path / "screenshots").resolve()
    shots.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)  # the user's own commands, paths and all: wukong demo, then wukong space
    demo = run_demo(DemoSettings(out="wukong-demo", steps=100, train_size=2000, eval_size=48,
                                 alignment_images=2, pipeline_images=1, progress=False))
    model, held_out = demo.paths["model"], Path(demo.paths["held_out"])
    assert (model, str(held_out)) == ("wukong-demo/train/final", "wukong-demo/held_out")
    held_out = held_out.resolve()  # the browser uploads by absolute path
    trained = time.perf_counter()
    port = _free_port()
    log = tmp_path / "space.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with log.open("w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "wukong_hf.cli", "space", "--model", "wukong-demo/train/final",
             "--images", "wukong-demo/held_out", "--port", str(port), "--cache-dir", "cache"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    driver = None
    try:
        _wait_for_server(server, f"http://127.0.0.1:{port}/", log)
        served = time.perf_counter()
        driver = _browser(Path(tempfile.mkdtemp(dir=tmp_path)))
        wait = WebDriverWait(driver, WAIT)
        driver.get(f"http://127.0.0.1:{port}/")
        wait.until(lambda d: d.find_elements(By.ID, "zs-run"))
        tabs = {tab.text: tab for tab in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]")}
        assert list(tabs) == ["Zero-shot 零样本分类", "Search 以文搜图", "Alignment 词-块对齐"]

        # ----- zero-shot: a file that is not an image first, then a held-out image
        not_image = tmp_path / "notes.png"
        not_image.write_text("this is text")
        driver.find_element(By.CSS_SELECTOR, "#zs-image input[type=file]").send_keys(str(not_image))
        time.sleep(1)
        driver.find_element(By.ID, "zs-run").click()
        wait.until(lambda d: "is not an image" in _text(d, "zs-message"))
        assert "notes.png is not an image this app can read" in _text(driver, "zs-message")
        assert "Traceback" not in driver.page_source
        image = sorted(held_out.glob("*.png"))[0]
        labels = sorted({path.stem.split("-", 1)[1] for path in held_out.glob("*.png")})  # the 4 held-out names
        driver.find_element(By.CSS_SELECTOR, "#zs-image input[type=file]").send_keys(str(image))
        time.sleep(1)
        box = driver.find_element(By.CSS_SELECTOR, "#zs-labels textarea")
        box.clear()
        box.send_keys(", ".join(labels[:2]) + "，" + ", ".join(labels[2:]))  # both kinds of comma
        driver.find_element(By.ID, "zs-run").click()
        wait.until(lambda d: "Bars:" in _text(d, "zs-message"))
        time.sleep(1)  # the bars animate in
        driver.save_screenshot(str(shots / "space-zero-shot.png"))
        shown = _bars(_text(driver, "zs-bars"))
        expected = zero_shot(load_session(model), str(image), ", ".join(labels), "{c}").probabilities
        assert len(labels) == 4 and set(shown) == set(labels) and abs(sum(shown.values()) - 100) <= 2
        assert max(shown, key=shown.get) == next(iter(expected))  # the page shows what the model computes
        assert all(abs(shown[k] - 100 * v) <= 1 for k, v in expected.items())

        # ----- search: the held-out images for a colour-shape name
        tabs["Search 以文搜图"].click()
        query = driver.find_element(By.CSS_SELECTOR, "#se-query textarea, #se-query input")
        query.send_keys("绿圆")
        driver.find_element(By.ID, "se-run").click()
        wait.until(lambda d: "Scores:" in _text(d, "se-message"))
        time.sleep(2)  # thumbnails load
        driver.save_screenshot(str(shots / "space-search.png"))
        message = _text(driver, "se-message")
        assert "re-ranked" in message and f"{len(list(held_out.glob('*.png')))} images of" in message
        captions = re.findall(r"^(-?\d\.\d{3}) · (\S+\.png)$", _text(driver, "se-gallery"), re.M)
        scores = [float(score) for score, _ in captions]
        assert len(captions) == 12 and scores == sorted(scores, reverse=True)
        # Absolute quality: the file names carry the truth; chance is about 1 in 4 per result.
        assert sum("绿圆" in name for _, name in captions[:4]) >= 3, captions

        # ----- alignment: Figure 4 on a held-out image, the legend in real characters
        tabs["Alignment 词-块对齐"].click()
        image = next(p for p in sorted(held_out.glob("*.png")) if "绿圆" in p.name)
        driver.find_element(By.CSS_SELECTOR, "#al-image input[type=file]").send_keys(str(image))
        time.sleep(1)
        driver.find_element(By.CSS_SELECTOR, "#al-label textarea, #al-label input").send_keys("绿圆")
        driver.find_element(By.ID, "al-run").click()
        wait.until(lambda d: "Tokens of" in _text(d, "al-legend"))
        time.sleep(2)
        driver.save_screenshot(str(shots / "space-alignment.png"))
        legend = _text(driver, "al-legend")
        assert "Tokens of 「绿圆」" in legend and "1 = 绿, 2 = 圆" in legend
        overlay = _text(driver, "al-overlay")
        assert re.search(r"^绿 · \d+%$", overlay, re.M) and re.search(r"^\[CLS\] · \d+%$", overlay, re.M)
        assert driver.find_elements(By.CSS_SELECTOR, "#al-figure img")
        assert "Traceback" not in driver.page_source
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
    print(f"\nbrowser test: demo model {trained - started:.0f} s, server start {served - trained:.0f} s, "
          f"browser {time.perf_counter() - served:.0f} s; screenshots in {shots}")
    for name in ("space-zero-shot.png", "space-search.png", "space-alignment.png"):
        assert (shots / name).stat().st_size > 10_000
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
