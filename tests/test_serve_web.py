"""The served digits model (trained once for this module, the demo's recipe): it answers
real digit images correctly through the HTTP API and through the web page in a real
headless browser (Debian's chromium, driven by selenium), whose maps render."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import requests
from test_serve import free_port
from test_train import _digit_pngs

from efficientmod.cli import main

pytestmark = pytest.mark.slow  # trains the digits demo (~1-2 min) and starts Ray

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# what a user's drag and drop does: the image shown in the first row, dropped as a file on the drop zone
DROP_THE_FIRST_IMAGE_AGAIN = """
const shown = document.querySelector(".result img.photo");
fetch(shown.src).then((r) => r.blob()).then((blob) => {
  const files = new DataTransfer();
  files.items.add(new File([blob], "dropped.png", {type: "image/png"}));
  document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: files, bubbles: true}));
});
"""


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("digits") / "run"
    assert main(["train", "--output", str(run)]) == 0  # no --data: the digits demo's recipe
    return run


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return _digit_pngs(tmp_path_factory.mktemp("pngs") / "digits")


@pytest.fixture(scope="module")
def server(digits_run):
    """The run's model/ folder at / and its best.pth (a training checkpoint) at /best."""
    import ray
    from ray import serve

    from efficientmod.serve.app import ServeSettings, build_app
    from efficientmod.serve.cluster import init_ray

    init_ray(num_cpus=2, object_store_bytes=200 * 2**20)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(ServeSettings(str(digits_run / "model"), max_batch_size=16)), name="model",
                  route_prefix="/")
        serve.run(build_app(ServeSettings(str(digits_run / "best.pth"))), name="best", route_prefix="/best")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def top1(url: str, paths: list[Path]) -> list[str]:
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    response = requests.post(f"{url}/v1/classify", files=files, params={"top_k": 1}, timeout=120)
    assert response.status_code == 200, response.text
    return [result["top"][0]["label"] for result in response.json()["results"]]


def test_the_served_digits_model_answers_real_digit_images_correctly(server, digits):
    paths, labels = digits
    predicted = [label for start in range(0, len(paths), 16) for label in top1(server, paths[start:start + 16])]
    accuracy = 100 * sum(p == str(t) for p, t in zip(predicted, labels, strict=True)) / len(labels)
    assert accuracy >= 95, accuracy  # the demo's target on these 360 held-out digits
    model = requests.get(f"{server}/best/v1/model", timeout=30).json()
    assert (model["name"], model["runtime"], model["classes"]) == ("efficientmod_xxs", "torch", list("0123456789"))
    assert model["preprocessing"]["input_size"] == [1, 32, 32]
    assert top1(f"{server}/best", paths[:16]) == predicted[:16]  # the checkpoint serves the same model


@pytest.fixture
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def test_the_web_page_shows_the_label_and_the_maps(server, digits, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    paths, labels = digits
    path, label = next((p, str(t)) for p, t in zip(paths[:32], labels[:32], strict=True)
                       if top1(server, [p]) == [str(t)])  # a digit the model gets right
    browser.get(f"{server}/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: "efficientmod_xxs" in b.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "files").send_keys(str(path))
    row = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, ".result.done, .result.failed"))
    assert "done" in row.get_attribute("class"), row.text
    assert row.get_attribute("data-label") == label
    assert row.find_element(By.CSS_SELECTOR, ".bar .label").text == label  # the top bar names it
    maps = row.find_elements(By.CSS_SELECTOR, "img.map")
    titles = [m.get_attribute("alt") for m in maps]
    assert any(t.startswith("context") for t in titles) and any(t.startswith("CAM") for t in titles), titles
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", m) == 32
               for m in maps)  # decoded: the model's 32x32 crop
    browser.execute_script(DROP_THE_FIRST_IMAGE_AGAIN)
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".result.done")) == 2)
    dropped = browser.find_elements(By.CSS_SELECTOR, ".result")[0]  # the newest row comes first
    assert dropped.get_attribute("data-label") == label and dropped.find_elements(By.CSS_SELECTOR, "img.map")
    screenshot = tmp_path / "serve_page.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 0
    if os.environ.get("PYTEST_ARTIFACTS"):
        Path(os.environ["PYTEST_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(os.environ["PYTEST_ARTIFACTS"]) / screenshot.name)
