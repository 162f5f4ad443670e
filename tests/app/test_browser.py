"""The app as a person uses it: a real server on a free localhost port, driven by headless Chromium (selenium).

Needs the Debian ``chromium`` and ``chromium-driver`` packages (``.ci/run`` installs them); skipped without them.
Screenshots of every tab go to the test's ``tmp_path`` and, when ``DREAMVIDEO_APP_SCREENSHOTS`` names a folder,
there too (that is how ``docs/app/`` is made).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)
DRIVER = shutil.which("chromedriver")
if (CHROMIUM is None or DRIVER is None) and os.environ.get("DREAMVIDEO_REQUIRE_BROWSER"):
    raise RuntimeError("DREAMVIDEO_REQUIRE_BROWSER is set but chromium or chromedriver is not on PATH")
if CHROMIUM is None or DRIVER is None:
    pytest.skip(
        "headless browser tests need Chromium and its driver (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
pytest.importorskip("gradio", reason="the app needs gradio (pip install -e '.[app]')")
pytest.importorskip("selenium", reason="the browser tests need selenium (pip install -e '.[test]')")

from conftest import generate_args  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from dreamvideo.toy import world  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"
# training steps per stage: enough to write checkpoints and previews, seconds on a CPU (docs/app/ used more)
STEPS = int(os.environ.get("DREAMVIDEO_APP_TEST_STEPS", "6"))
EVERY = max(1, STEPS // 2)  # checkpoints and previews
TRAIN_TIMEOUT = float(os.environ.get("DREAMVIDEO_APP_TEST_TIMEOUT", "300"))  # seconds per learning job
FRAMES = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``dreamvideo app`` on a free port with the toy model, in its own process, as a user would start it."""
    root = tmp_path_factory.mktemp("app")
    port = _free_port()
    env = dict(
        os.environ,
        PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        GRADIO_ANALYTICS_ENABLED="False",
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
    )
    log = open(root / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dreamvideo.cli",
            "app",
            "--port",
            str(port),
            "--workspace",
            str(root / "workspace"),
            "--device",
            "cpu",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300  # importing torch and gradio can take minutes on a busy machine
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()  # never leave a server behind
                proc.wait(10)
                log.close()
                raise RuntimeError(f"the app did not start:\n{(root / 'server.log').read_text()}") from None
            time.sleep(0.5)
    yield {"url": url, "workspace": root / "workspace", "root": root}
    proc.terminate()
    proc.wait(10)
    log.close()


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1500",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    subject = world.write_subject_folder("totem", root / "subject", n=4)
    motion = world.write_motion_folder("pendulum", root / "motion", n=2)
    corrupt = root / "corrupt" / "broken.png"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"this is not a PNG file" * 8)
    return {
        "images": sorted((subject / "images").glob("*.png")),
        "masks": sorted((subject / "masks").glob("*.png")),
        "videos": sorted(motion.glob("*.gif")),
        "corrupt": corrupt,
    }


# ----------------------------------------------------------------------------------------------- helpers
def wait_for(driver, predicate, timeout: float = 120, what: str = "condition"):
    """Poll ``predicate(driver)`` until truthy; on a timeout the error carries the page's status messages."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(lambda d: predicate(d))
    except Exception as err:
        statuses = {
            e.get_attribute("id"): e.text for e in driver.find_elements(By.CSS_SELECTOR, "[id$=-status]")
        }
        if os.environ.get("DREAMVIDEO_APP_SCREENSHOTS"):
            driver.save_screenshot(str(Path(os.environ["DREAMVIDEO_APP_SCREENSHOTS"]) / "failure.png"))
        raise AssertionError(f"timed out waiting for {what}; status messages: {statuses}") from err


def text(driver, elem_id: str) -> str:
    return driver.find_element(By.ID, elem_id).text


def open_tab(driver, label: str) -> None:
    buttons = [
        b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == label
    ]
    assert buttons, f"no tab {label!r}"
    buttons[0].click()
    time.sleep(0.5)


def upload(driver, elem_id: str, files: list[Path]) -> None:
    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]")
    field.send_keys("\n".join(str(f) for f in files))
    names = [f.stem for f in files]  # the component shows a file name as stem and extension on two lines
    wait_for(driver, lambda d: all(n in text(d, elem_id) for n in names), 60, f"{elem_id} to list {names}")


def fill(driver, elem_id: str, value) -> None:
    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input, #{elem_id} textarea")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value))


def open_accordion(driver, elem_id: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f"#{elem_id} button").click()
    time.sleep(0.3)


def choose(driver, elem_id: str, option: str) -> None:
    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    field.click()
    wait_for(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, f'[role=option][aria-label="{option}"]'),
        30,
        f"option {option!r} in {elem_id}",
    )[0].click()
    wait_for(
        driver,
        lambda d: d.find_element(By.CSS_SELECTOR, f"#{elem_id} input").get_attribute("value") == option,
        10,
        f"{elem_id} = {option}",
    )


def sample_the_learned(driver, prefix: str) -> None:
    """Run the Generate (``gen``) or Compare (``cmp``) tab with the learned totem and pendulum."""
    choose(driver, f"{prefix}-subject", "totem")
    choose(driver, f"{prefix}-motion", "pendulum")
    fill(driver, f"{prefix}-frames", FRAMES)
    fill(driver, f"{prefix}-steps", 10)
    driver.find_element(By.ID, f"{prefix}-run").click()


def screenshot(driver, tmp_path: Path, name: str) -> None:
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.3)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, min(max(int(height) + 40, 900), 2400))
    time.sleep(0.5)
    for folder in filter(None, [tmp_path / "screenshots", os.environ.get("DREAMVIDEO_APP_SCREENSHOTS")]):
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))
    driver.set_window_size(1400, 1500)


def video_state(driver, elem_id: str) -> dict | None:
    """The page's <video> element in a component: its source URL and whether the browser can play it."""
    return driver.execute_script(
        "const v = document.querySelector(arguments[0]);"
        "if (!v || !v.currentSrc) return null;"
        "return {src: v.currentSrc, ready: v.readyState, duration: v.duration, error: v.error && v.error.code,"
        "        width: v.videoWidth, height: v.videoHeight};",
        f"#{elem_id} video",
    )


def playable_video(driver, elem_id: str, timeout: float = 120) -> dict:
    state = wait_for(
        driver, lambda d: (s := video_state(d, elem_id)) and s["src"] and s, timeout, f"{elem_id} video"
    )
    state = wait_for(
        driver,
        lambda d: (s := video_state(d, elem_id)) and (s["ready"] >= 1 or s["error"]) and s,
        30,
        f"{elem_id} metadata",
    )
    assert not state["error"], f"the browser cannot play the video: {state}"
    assert state["duration"] > 0 and state["width"] > 0, state
    return state


def frame_count(url: str, tmp_path: Path) -> int:
    from dreamvideo.data import load_video

    target = tmp_path / ("downloaded" + Path(url.split("?")[0]).suffix)
    with urllib.request.urlopen(url, timeout=30) as response:
        target.write_bytes(response.read())
    return len(load_video(target)[0])


# ----------------------------------------------------------------------------------------------- tests
def test_a_corrupt_photo_shows_the_library_error_and_leaves_the_workspace_intact(
    server, browser, data, tmp_path
):
    browser.get(server["url"])
    wait_for(browser, lambda d: d.find_elements(By.ID, "subject-learn"), 60, "the page")
    upload(browser, "subject-photos", [*data["images"][:2], data["corrupt"]])
    fill(browser, "subject-name", "broken")
    browser.find_element(By.ID, "subject-learn").click()
    message = wait_for(browser, lambda d: "Error" in (t := text(d, "subject-status")) and t, 60, "the error")
    assert "broken.png" in message and "not a readable image" in message
    ws = server["workspace"]
    assert not list((ws / "subjects").iterdir())  # nothing published, no half-written folder
    assert not list((ws / "uploads").iterdir()) and not list((ws / ".work").iterdir())  # uploads discarded


def test_learn_subject_and_motion_generate_and_compare_in_the_browser(server, browser, data, tmp_path):
    browser.get(server["url"])  # a fresh page load
    wait_for(browser, lambda d: d.find_elements(By.ID, "subject-learn"), 60, "the page")

    # Subjects: photos + masks, few steps, previews every 3 steps
    upload(browser, "subject-photos", data["images"])
    upload(browser, "subject-masks", data["masks"])
    fill(browser, "subject-name", "totem")
    open_accordion(browser, "subject-settings")
    for field, value in (
        ("subject-ti_steps", STEPS),
        ("subject-adapter_steps", STEPS),
        ("subject-checkpoint-every", EVERY),
        ("subject-preview-every", EVERY),
    ):
        fill(browser, field, value)
    browser.find_element(By.ID, "subject-learn").click()
    wait_for(browser, lambda d: "queued subject 'totem'" in text(d, "subject-status"), 30, "the job to queue")
    if STEPS >= 12:  # long enough to catch it running: the progress bars part way
        wait_for(
            browser, lambda d: "identity adapter: step" in text(d, "subject-jobs"), TRAIN_TIMEOUT, "stage 2"
        )
        screenshot(browser, tmp_path, "subjects-training")
    wait_for(
        browser, lambda d: "totem" in text(d, "subject-library"), TRAIN_TIMEOUT, "the subject in the library"
    )
    jobs = text(browser, "subject-jobs")
    assert "done" in jobs and f"textual inversion: step {STEPS}/{STEPS}" in jobs and "loss" in jobs, jobs
    assert f"identity adapter: step {STEPS}/{STEPS}" in jobs, jobs
    playable_video(browser, "subject-preview")  # the last preview written while training
    assert browser.find_elements(By.CSS_SELECTOR, "#subject-jobs progress")
    screenshot(browser, tmp_path, "subjects")

    # the same name again: refused with the library's message
    fill(browser, "subject-name", "totem")
    browser.find_element(By.ID, "subject-learn").click()
    wait_for(browser, lambda d: "already exists" in text(d, "subject-status"), 30, "the duplicate-name error")

    # Motions
    open_tab(browser, "Motions")
    upload(browser, "motion-videos", data["videos"])
    fill(browser, "motion-name", "pendulum")
    fill(browser, "motion-caption", "a square moves")
    open_accordion(browser, "motion-settings")
    for field, value in (
        ("motion-steps", STEPS),
        ("motion-checkpoint-every", EVERY),
        ("motion-preview-every", EVERY),
    ):
        fill(browser, field, value)
    browser.find_element(By.ID, "motion-learn").click()
    wait_for(
        browser, lambda d: "pendulum" in text(d, "motion-library"), TRAIN_TIMEOUT, "the motion in the library"
    )
    assert f"motion adapter: step {STEPS}/{STEPS}" in text(browser, "motion-jobs")
    playable_video(browser, "motion-preview")
    screenshot(browser, tmp_path, "motions")

    # Generate: subject + motion, a checkpoint-free final result
    open_tab(browser, "Generate")
    sample_the_learned(browser, "gen")
    state = playable_video(browser, "gen-video", 180)
    assert frame_count(state["src"], tmp_path) == FRAMES
    assert f"{FRAMES} frames" in text(browser, "gen-status")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#gen-sheet img"), 30, "the contact sheet")
    links = [a.get_attribute("href") or "" for a in browser.find_elements(By.CSS_SELECTOR, "#gen-files a")]
    assert any(h.split("?")[0].endswith(".mp4") for h in links) and any(".gif" in h for h in links), links
    screenshot(browser, tmp_path, "generate")

    # Compare: base model vs subject + motion, with the toy oracle's metrics
    open_tab(browser, "Compare")
    sample_the_learned(browser, "cmp")
    for elem in ("cmp-base", "cmp-custom"):
        assert frame_count(playable_video(browser, elem, 180)["src"], tmp_path) == FRAMES
    table = wait_for(
        browser, lambda d: "subject fidelity" in (t := text(d, "cmp-metrics")) and t, 60, "metrics"
    )
    assert "motion fidelity" in table and "customized" in table
    screenshot(browser, tmp_path, "compare")

    # what the app wrote loads with the CLI
    from dreamvideo.cli import main

    ws = server["workspace"]
    out = tmp_path / "cli.mp4"
    learned = ["--subject", str(ws / "subjects" / "totem"), "--motion", str(ws / "motions" / "pendulum")]
    prompt = "a <sks> square moves on blue sky"
    assert main(generate_args(None, out, *learned, "--device", "cpu", prompt=prompt, frames=4, steps=2)) == 0
    assert out.is_file()
