"""The web page and every module it loads are served, without a token (the data behind them
needs one), and the page names no address outside the gateway (there is no internet at run
time: no CDN)."""

from __future__ import annotations

import re

import pytest

from tests.integration.gateway.test_api import gateway

pytestmark = pytest.mark.integration

IMPORT = re.compile(r"""(?:import|from)\s*(?:[^"';]*?\sfrom\s*)?["'](\./[^"']+)["']""")


async def test_the_page_and_its_modules_are_served_and_self_contained(kafka_settings, database_url):
    async with gateway(kafka_settings, database_url) as client:
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert (await client.get("/v1/pipelines")).status_code == 401  # the data needs a token
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
        assert "/static/js/main.js" in assets and "/static/page.css" in assets
        seen: set[str] = set()
        while assets:
            path = assets.pop()
            if path in seen:
                continue
            seen.add(path)
            answer = await client.get(path)
            assert answer.status_code == 200, path
            text = answer.text
            assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), path
            if path.endswith(".js"):
                assert "javascript" in answer.headers["content-type"], path
                base = path.rsplit("/", 1)[0]
                assets += [f"{base}/{m.removeprefix('./')}" for m in IMPORT.findall(text)]
        # Every module of the page is reached from main.js, and none is missing.
        assert {
            "/static/js/api.js",
            "/static/js/dag.js",
            "/static/js/chart.js",
            "/static/js/pipeline.js",
            "/static/js/metrics.js",
            "/static/js/history.js",
            "/static/js/agents.js",
            "/static/js/submit.js",
            "/static/js/pipelines.js",
            "/static/js/dom.js",
        } <= seen
        assert (await client.get("/static/js/no-such.js")).status_code == 404
