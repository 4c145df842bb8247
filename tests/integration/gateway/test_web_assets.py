"""The web page and every module it loads are served, without a token (the data behind them
needs one); the page names no address outside the gateway (there is no internet at run time:
no CDN), and calls only routes that exist."""

from __future__ import annotations

import re

import pytest

from posttrain.gateway.app import GatewayConfig, create_app
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
        sources = [(await client.get(path)).text for path in sorted(seen)]

    # Every API call in the page's code, as a URL with each ${...} made concrete.
    called = {
        re.sub(r"\$\{[^}]*\}", "x", path)
        for text in sources
        for path in re.findall(r"[`\"](/v1/[^`\"?]*)", text)
    }
    assert {"/v1/pipelines", "/v1/pipelines/x", "/v1/pipelines/x/events"} <= called
    assert {"/v1/pipelines/x/resume", "/v1/pipelines/x/stages/x/retry"} <= called
    app = create_app(GatewayConfig(kafka_settings, database_url))
    patterns = [route.path_regex for route in app.routes if hasattr(route, "path_regex")]
    missing = {path for path in called if not any(p.match(path) for p in patterns)}
    assert not missing, missing
    assert {"/v1/agents", "/v1/pipelines/x/history", "/v1/jobs/x/series"} <= called
