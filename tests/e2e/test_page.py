"""The live page at / in a real browser: Debian's Chromium, driven by Playwright."""

import json
import shutil

import httpx
import pytest

from llm_tasks.kinds import JobKind
from tests.conftest import ARTIFACTS

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium")
# The flags keep a root, headless Chromium off the network it cannot reach anyway.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
def test_submit_a_job_and_watch_it_stream_in_the_browser(api_url: str, client: httpx.Client):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(f"{api_url}/")
            expect(page.locator("#kind option")).to_have_count(len(JobKind))  # every kind
            page.select_option("#kind", "generate")
            assert json.loads(page.input_value("#input"))["prompt"]  # the kind's example
            page.fill(
                "#input", json.dumps({"prompt": "SLOW: Once upon a time", "max_new_tokens": 24})
            )
            page.click("#submit")

            text = page.locator('.step[data-step="generate"] .text')
            expect(page.locator("#status")).to_have_text("running", timeout=30_000)
            expect(text).not_to_be_empty(timeout=30_000)  # streaming while still running
            streamed_while_running = page.locator("#status").text_content() == "running"
            expect(page.locator("#status")).to_have_text("succeeded", timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "live-page.png"), full_page=True)

            job_id = page.locator("#job-id").text_content()
            job = client.get(f"/v1/jobs/{job_id}").json()
            assert text.text_content() == job["output"]["text"]
            assert streamed_while_running, "the text must appear while the job runs, not at the end"
            assert (
                page.locator('.step[data-step="generate"] progress').get_attribute("value") == "1"
            )
        finally:
            browser.close()


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
def test_cancel_from_the_page(api_url: str):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{api_url}/")
            page.select_option("#kind", "story")
            page.fill("#input", json.dumps({"topic": "SLOW: a long voyage", "max_new_tokens": 60}))
            page.click("#submit")
            expect(page.locator("#status")).to_have_text("running", timeout=30_000)
            page.click("#cancel")
            expect(page.locator("#status")).to_have_text("canceled", timeout=30_000)
            expect(page.locator("#cancel")).to_be_disabled()
        finally:
            browser.close()
