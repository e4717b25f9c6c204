"""Playwright drives Debian's Chromium through the login to the dashboard shell."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests import services


@pytest.fixture
def browser(chromium_path):
    with services.chromium(chromium_path) as browser:
        yield browser


def test_dashboard_shell_after_login(browser, tmp_path, artifacts_dir):
    env = services.appliance_env(tmp_path, None, None)
    with services.Appliance(env, tmp_path / "server.log") as app:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(app.url + "/")
        expect(page).to_have_url(f"{app.url}/accounts/login/?next=/")
        page.fill("#id_username", app.username)
        page.fill("#id_password", services.TEST_PASSWORD)
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_have_text("Fleet")
        expect(page.locator("#ws-state")).to_have_attribute("data-state", "open", timeout=10_000)
        page.screenshot(path=str(artifacts_dir / "dashboard-shell.png"), full_page=True)
