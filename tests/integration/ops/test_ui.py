"""The topology page in headless Chromium: it draws what the API holds and follows changes live."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

from alcor.api.app import HttpModule
from tests.conftest import require
from tests.integration.ops.browser import CHROMIUM, Browser
from tests.integration.ops.conftest import NODE, dev_controller, small_cloud
from tests.support.wait import eventually

SCREENSHOTS = Path(__file__).resolve().parents[3] / "var" / "screenshots"


def ocr(png: Path) -> str:
    """The words in a screenshot, as a person reading it would see them."""
    text = subprocess.run(["tesseract", str(png), "stdout"], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    return re.sub(r"\s+", " ", text).lower()


async def test_page_shows_vpcs_subnets_ports_and_hosts_live(tmp_path: Path) -> None:
    require(CHROMIUM is not None, "chromium is not installed (Debian: apt-get install chromium)")
    require(shutil.which("tesseract") is not None,
            "tesseract is not installed (Debian: apt-get install tesseract-ocr)")
    async with dev_controller(tmp_path) as (kernel, c):
        cloud = await small_cloud(c)

        async def active() -> bool:
            r = await c.get(f"/v2.0/ports/{cloud['plum']['id']}")
            return r.body["port"]["status"] == "ACTIVE"
        await eventually(active)
        async with Browser.launch(tmp_path) as b:
            await b.open(c.base + "/ui")
            await b.wait_for("document.querySelectorAll('[data-port]').length === 3")
            await b.wait_for(f"document.querySelector('[data-host=\"{NODE}\"]')?.textContent"
                             ".includes('in sync')")
            vpcs = await b.eval("[...document.querySelectorAll('.vpc-name')].map(e => e.textContent)")
            assert vpcs == ["orchard"]
            subnet = await b.eval("document.querySelector('.subnet-head').textContent")
            assert "apples" in subnet and "10.8.0.0/24" in subnet
            rows = await b.eval("Object.fromEntries([...document.querySelectorAll('[data-port]')]"
                                ".map(r => [r.querySelector('.port-name').textContent, r.textContent]))")
            assert "ACTIVE" in rows["pear"] and NODE in rows["pear"]
            assert "DOWN" in rows["quince"] and "unbound" in rows["quince"]

            # Live: a new VPC and a port going DOWN show up without a reload.
            net = await c.create("network", "/v2.0/networks", name="vineyard")
            await c.create("subnet", "/v2.0/subnets", network_id=net["id"], cidr="10.9.0.0/24",
                           ip_version=4, name="grapes")
            await b.wait_for("[...document.querySelectorAll('.vpc-name')]"
                             ".some(e => e.textContent === 'vineyard')", timeout=10)

            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shot = await b.screenshot(SCREENSHOTS / "topology.png")
            text = await asyncio.to_thread(ocr, shot)
            for word in ("orchard", "vineyard", "apples", "grapes", "pear", "plum", "quince", NODE,
                         "10.8.0.0/24", "172.16.0.11", "2 active", "in sync"):
                assert word in text, f"{word!r} is not visible in {shot}: {text}"


async def test_page_says_when_the_controller_is_gone(tmp_path: Path) -> None:
    require(CHROMIUM is not None, "chromium is not installed (Debian: apt-get install chromium)")
    async with dev_controller(tmp_path) as (kernel, c):
        async with Browser.launch(tmp_path) as b:
            await b.open(c.base + "/ui")
            await b.wait_for("document.getElementById('conn').textContent.startsWith('live')")
            await kernel.get(HttpModule).stop()
            await b.wait_for("document.getElementById('conn').textContent.includes('unreachable')",
                             timeout=10)
