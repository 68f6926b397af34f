"""Airflow's UI in a real browser: Debian's Chromium, driven by Playwright (PyPI) with its
executable, so no browser is downloaded. Headless, with a fresh profile, and with Chromium's
own background traffic off (this machine's network is loopback only)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing() -> list[str]:
    problems = [] if chromium() else ["Chromium (Debian's package chromium; ./run installs it)"]
    try:
        import playwright  # noqa: F401
    except ImportError:
        problems.append("the Python package playwright (pip install -e '.[test]')")
    return problems


class Browser:
    """One logged-in page of Airflow's UI."""

    def __init__(self, api: str, page: Any, context: Any) -> None:
        self.api, self.page, self.context = api, page, context

    def log_in(self, user: str = "admin", password: str = "admin") -> None:
        page = self.page
        page.goto(f"{self.api}/")
        page.fill("input[name=username]", user)
        page.fill("input[name=password]", password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/auth/login" not in url, timeout=30_000)

    def trigger_form(self, dag_id: str) -> Any:
        """The open "Trigger Dag" dialog of ``dag_id``."""
        page = self.page
        page.goto(f"{self.api}/dags/{dag_id}")
        page.get_by_role("button", name="Trigger Dag").click()
        dialog = page.get_by_role("dialog").filter(has_text=f"Trigger Dag - {dag_id}")
        dialog.wait_for(timeout=30_000)
        return dialog

    @staticmethod
    def section(dialog: Any, title: str) -> None:
        """Open one section of the form (an accordion item: one is open at a time)."""
        trigger = dialog.locator("[data-scope=accordion][data-part=item-trigger]",
                                 has_text=title).first
        if trigger.get_attribute("aria-expanded") != "true":
            trigger.click()

    @staticmethod
    def field(dialog: Any, param: str) -> Any:
        return dialog.locator(f'[name="element_{param}"]').first

    @staticmethod
    def row(dialog: Any, param: str) -> Any:
        """The field's row: its label, input, description and error."""
        return Browser.field(dialog, param).locator(
            "xpath=ancestor::*[@data-scope='field'][@data-part='root'][1]")

    def choose(self, dialog: Any, param: str, option: str) -> None:
        self.row(dialog, param).get_by_role("combobox").click()
        self.page.get_by_role("option", name=option).click()

    def submit(self, dialog: Any) -> Any:
        """Press Trigger; the trigger request's response. (Clicked from the page's script: a
        refusal's toast may lie over the button.)"""
        with self.page.expect_response(lambda r: r.request.method == "POST"
                                       and r.url.endswith("/dagRuns")) as response:
            dialog.get_by_test_id("trigger-dag-submit").evaluate("button => button.click()")
        return response.value

    def screenshot(self, dialog: Any, path: Path) -> None:
        """The whole dialog: the viewport grown to its height first (it scrolls inside)."""
        height = dialog.evaluate("e => e.getBoundingClientRect().height")
        self.page.set_viewport_size({"width": 1400, "height": int(height) + 160})
        self.page.wait_for_timeout(300)
        dialog.screenshot(path=str(path))
        self.page.set_viewport_size({"width": 1400, "height": 1000})

    def extra_links(self, dag_id: str, run_id: str, task_id: str) -> dict[str, str]:
        """The task instance's extra links as its Details tab shows them: name -> href."""
        page = self.page
        page.goto(f"{self.api}/dags/{dag_id}/runs/{quote(run_id, safe='')}/tasks/{task_id}/details")
        heading = page.get_by_role("heading", name="Extra Links")
        heading.wait_for(timeout=30_000)
        links = heading.locator("xpath=..").get_by_role("link")
        return {links.nth(i).inner_text().strip(): links.nth(i).get_attribute("href") or ""
                for i in range(links.count())}

    def paste(self, row: Any, value: Any) -> None:
        """Replace a JSON field's text (Monaco: typed brackets and quotes auto-close)."""
        self.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=self.api)
        row.locator(".monaco-editor .native-edit-context, .monaco-editor textarea").first.focus()
        self.page.keyboard.press("Control+A")
        self.page.evaluate("t => navigator.clipboard.writeText(t)", json.dumps(value))
        self.page.keyboard.press("Control+V")


@contextmanager
def browser(api: str) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="smtask-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=chromium(), headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 1000})
            try:
                page = context.pages[0] if context.pages else context.new_page()
                page.set_default_timeout(30_000)
                yield Browser(api, page, context)
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
