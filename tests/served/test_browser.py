"""The web UI in a real browser: headless Chromium opens the running page, asks for an image, sees it.

Needs the system Chromium (Debian: `apt-get install chromium chromium-driver`) and Playwright
(requirements/browser-test.txt); Playwright's own browser download is never used.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from decoding import read_image
from helpers import ROOT

from genserve.serving.processes import free_port, start_process, stop_process_tree, wait_until_ready

CHROMIUM = Path("/usr/bin/chromium")
# What Chromium needs here: no sandbox (containers), no GPU, and no calls home of its own.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_S = 120

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"no {CHROMIUM}: install it with `apt-get install -y chromium chromium-driver`",
    ),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is missing: pip install -r requirements/browser-test.txt"
)


@pytest.fixture
def ui(server: str, tmp_path: Path) -> Iterator[str]:
    """`streamlit run frontend/app.py` against the served API, as `make serve` starts it; yields its URL."""
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", "frontend/app.py"]
    command += ["--server.address", "127.0.0.1", "--server.port", str(port)]
    log = tmp_path / "streamlit.log"
    process = start_process(command, log, ROOT, {"GENSERVE_URL": server})
    url = f"http://127.0.0.1:{port}"
    try:
        probe = "/_stcore/health"
        wait_until_ready(url, process.poll, timeout_s=TIMEOUT_S, poll_s=0.2, log=log, probe=probe)
        yield url
    finally:
        stop_process_tree(process)


def test_browser_generates_an_image(ui, settings, tmp_path) -> None:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh --user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_S * 1000)
            page.goto(ui)
            prompt = page.get_by_role("textbox", name="Prompt", exact=True).first
            prompt.fill("a red cat flying through space")
            page.get_by_role("button", name="Generate image").click()

            caption = page.get_by_text(re.compile(r"^a red cat flying through space · seed \d+$")).first
            caption.wait_for()
            image = page.locator('[data-testid="stImage"] img').first
            image.wait_for()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
            screenshot = tmp_path / "ui.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"screenshot: {screenshot}")

            # The picture the browser shows is the generated file, as the UI served it.
            served = page.request.get(str(httpx.URL(ui).join(image.get_attribute("src"))))
            mime, pixels = read_image(served.body())
            preset = settings.image.preset
            assert (mime, pixels.shape) == ("image/png", (preset.default_height, preset.default_width, 3))
        finally:
            browser.close()
