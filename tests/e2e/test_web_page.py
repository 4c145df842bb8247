"""The web page in real chromium, on the real stack: the platform's services run as processes
(orchestrator, metrics ingest, diagnostics and its recorder, a CPU trainer agent, the gateway)
on this test's own topic namespace and database. From the page: enter the token, get a refused
pipeline's problems by stage and field, submit the example pipeline from its file, watch its
stages turn green on the DAG (with its edges), open a training stage by its URL and see points
and an anomaly marker on its charts, with the page never wider than the window. The last
screenshot is kept (its path is printed)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

import pytest
import yaml

from posttrain.testing import services
from tests.e2e.browser import artifacts_dir, chromium, require_chromium
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pipelines" / "arithmetic.yaml"
FAULTS = "posttrain.testing.hf_faults:Inject"
STAGES = {"preprocess", "train_sft", "train_grpo", "train_dpo", "evaluate"}
EDGES = 5  # preprocess->sft, sft->grpo, sft->dpo, grpo->evaluate, dpo->evaluate

NO_WIDER = "return document.scrollingElement.scrollWidth <= window.innerWidth"


async def submitter_token(database_url: str) -> tuple[str, dict[str, str]]:
    """A token that may submit, and what the gateway's environment needs to accept it.

    Gateways that keep hashed tokens in their database get one made there; older ones read
    ``TOKEN:ROLE`` pairs from POSTTRAIN_API_TOKENS."""
    try:
        from posttrain.gateway.auth import Role, create_token
    except ImportError:
        token = "web-test-operator"
        return token, {"POSTTRAIN_API_TOKENS": f"{token}:operator"}
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        return await create_token(conn, "web-test", Role.SUBMITTER), {}
    finally:
        await conn.close()


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


async def test_the_page_submits_the_example_and_shows_it_live(
    kafka_settings, database_url, tmp_path
):
    require_chromium()  # before starting anything: fails with how to install it
    token, gateway_env = await submitter_token(database_url)
    logs = tmp_path / "logs"
    platform = [
        services.orchestrator(kafka_settings, logs / "orchestrator.log", database_url=database_url),
        services.ingest(kafka_settings, database_url, logs / "ingest.log"),
        services.diagnostics(kafka_settings, logs / "diagnostics.log"),
        services.recorder(kafka_settings, database_url, logs / "recorder.log"),
        # Started beside the pipeline file, as a user would: the file's relative data paths
        # (a document sent from a browser has no location of its own) resolve from there.
        services.agent(
            kafka_settings,
            logs / "agent.log",
            name="web-cpu-1",
            work_dir=tmp_path / "agent",
            cwd=EXAMPLE.parent,
        ),
        services.gateway(
            kafka_settings,
            database_url,
            logs / "gateway.log",
            auth=True,
            env=gateway_env,
        ),
    ]
    for service in platform:
        service.start()
    shot = tmp_path / "web-page.png"
    release = tmp_path / "release-sft"
    example = _paced_example(tmp_path / EXAMPLE.name, release)
    try:
        await asyncio.gather(*(s.wait_ready() for s in platform))
        url = f"http://127.0.0.1:{platform[-1].port}/"
        with chromium() as driver:
            await _use_the_page(driver, url, token, shot, example, release)
    finally:
        services.stop_all(platform)
        for taken in sorted(tmp_path.glob("web-page*.png")):
            kept = artifacts_dir() / taken.name
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(taken, kept)
            print(f"\nweb page screenshot: {taken} (kept as {kept})")


def _paced_example(path: Path, release: Path) -> Path:
    """The example pipeline with its SFT stage paced (0.25 s a step) until ``release`` exists:
    the page is watched while SFT trains, and 120 steps may take 2 s on a fast machine, too
    short for its chart to be seen growing. The test releases it once it has seen that.
    Its relative data paths still resolve from the agent's directory, the example's."""
    document = yaml.safe_load(EXAMPLE.read_text())
    [sft] = [s for s in document["stages"] if s["name"] == "train_sft"]
    pace = {"step_s": 0.25, "release_file": str(release)}
    sft["params"]["config"]["callbacks"] = [{"entrypoint": FAULTS, "kwargs": pace}]
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


async def _use_the_page(
    driver, url: str, token: str, shot: Path, example: Path, release: Path
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    find = driver.find_element
    # Without a token the gateway refuses; the page says so, then takes one.
    driver.get(url + "#/")
    await wait_for(
        lambda: "needs a token" in find(By.ID, "banner").text,
        timeout=20,
        what="the page to ask for a token",
    )
    find(By.ID, "token").send_keys(token)
    find(By.ID, "token-save").click()
    assert js(driver, "return localStorage.getItem('posttrain-token')") == token
    await wait_for(
        lambda: (
            driver.find_elements(By.CSS_SELECTOR, "#pipelines")
            and not find(By.ID, "banner").is_displayed()
        ),
        timeout=20,
        what="the pipeline list, with the token",
    )

    # A pipeline the gateway refuses: its problems, by stage and field.
    driver.get(url + "#/submit")
    box = await wait_for(lambda: driver.find_elements(By.ID, "document"), timeout=10)
    box[0].send_keys(
        '{"stages": [{"name": "a", "task": "teleport"}, '
        '{"name": "b", "task": "command", "depends_on": ["ghost"]}]}'
    )
    find(By.ID, "submit").click()
    rows = await wait_for(
        lambda: driver.find_elements(By.CSS_SELECTOR, "#submit-errors tbody tr"),
        timeout=20,
        what="the 422's problems",
    )
    cells = {tuple(c.text for c in r.find_elements(By.TAG_NAME, "td"))[:2] for r in rows}
    assert ("a", "task") in cells and ("b", "depends_on") in cells, cells
    driver.save_screenshot(str(shot.with_name("web-page-refused.png")))

    # The example pipeline, from its file.
    driver.get(url + "#/submit")
    await wait_for(lambda: driver.find_elements(By.ID, "file"), timeout=10)
    find(By.ID, "file").send_keys(str(example))
    await wait_for(
        lambda: "train_grpo" in find(By.ID, "document").get_attribute("value"),
        timeout=10,
        what="the file in the text box",
    )
    find(By.ID, "submit").click()
    await wait_for(
        lambda: js(driver, "return location.hash").startswith("#/pipelines/"),
        timeout=30,
        what="the page to open the submitted pipeline",
    )
    pipeline_id = js(driver, "return decodeURIComponent(location.hash.split('/')[2])")

    # Its stages turn green, live: the page is left alone while the pipeline runs.
    seen: set[str] = set()

    def dag() -> dict[str, str]:
        nodes = js(
            driver,
            "return [...document.querySelectorAll('#dag .node')]"
            ".map(n => [n.dataset.stage, n.dataset.status])",
        )
        states = dict(nodes)
        seen.update(states.values())
        return states

    # While the SFT stage trains, its page (reached through its box on the DAG) is watched:
    # its chart grows as the points arrive.
    sft = f"#/pipelines/{pipeline_id}/stages/train_sft"
    sft_points: list[int] = []

    def all_green():
        states = dag()
        running = shot.with_name("web-page-running.png")
        if "running" in states.values() and not running.exists():
            driver.save_screenshot(str(running))  # the DAG as it was, mid-run
        here = js(driver, "return location.hash")
        if states.get("train_sft") == "running" and here != sft:
            with contextlib.suppress(StaleElementReferenceException):  # redrawn meanwhile
                find(By.CSS_SELECTOR, '#dag .node[data-stage="train_sft"]').click()
        elif here == sft:
            points = js(
                driver,
                "const c = document.querySelector('#stage-metrics .chart svg');"
                "return c ? +c.dataset.points : 0",
            )
            if points and (not sft_points or sft_points[-1] != points):
                sft_points.append(points)
            if len(sft_points) >= 2:
                release.touch()  # seen growing: SFT may go at full speed
        return set(states) == STAGES and set(states.values()) == {"succeeded"}

    await wait_for(all_green, timeout=600, interval=0.3, what="every stage green")
    assert seen & {"pending", "assigned", "running", "waiting"}, seen  # it changed as we looked
    assert js(driver, "return location.hash") == sft  # the DAG's boxes link to their stages
    print(f"\nthe SFT chart's points as the page showed them: {sft_points}")
    assert len(sft_points) >= 2, f"the SFT chart did not grow while it ran: {sft_points}"
    assert js(driver, "return +document.querySelector('#dag svg').dataset.edges") == EDGES
    heading = find(By.CSS_SELECTOR, "#pipeline-head h2").text
    assert "arithmetic-posttrain" in heading and "succeeded" in heading

    # Diagnostics raised something on a training job, on the record: listed, and linked.
    links = await wait_for(
        lambda: driver.find_elements(By.CSS_SELECTOR, "#anomalies tbody tr td:first-child a"),
        timeout=120,
        interval=0.5,
        what="an anomaly listed for the pipeline",
    )
    stage = links[0].text
    step = js(driver, "return arguments[0].closest('tr').children[1].textContent", links[0])
    links[0].click()
    assert js(driver, "return location.hash") == f"#/pipelines/{pipeline_id}/stages/{stage}"

    def chart_with_marker():
        return js(
            driver,
            """
            const charts = [...document.querySelectorAll('#stage-metrics .chart svg')];
            const points = charts.map(c => +c.dataset.points);
            const marks = [...document.querySelectorAll(
                `#stage-metrics .anomaly.marker[data-step="${arguments[0]}"] title`)];
            return points.some(p => p > 0) && marks.length ? marks[0].textContent : null;
            """,
            step,
        )

    marker = await wait_for(
        chart_with_marker, timeout=60, interval=0.5, what="points and an anomaly marker"
    )
    assert " at step " in marker, marker  # its hover text says what and where
    assert js(driver, "return document.querySelectorAll('#stage-metrics .x-ticks text').length") > 2
    assert js(driver, NO_WIDER), "the stage view is wider than the window"

    # Every stage by its own URL: facts, outputs that wrap, never a page wider than the window
    # (nor on a narrow one).
    longest = 0
    for name, width in [(n, 1280) for n in sorted(STAGES)] + [("train_sft", 640)]:
        driver.set_window_size(width, 900)
        driver.get(f"{url}#/pipelines/{pipeline_id}/stages/{name}")
        await wait_for(
            lambda name=name: find(By.ID, "stage-facts").text.startswith(f"↑ stage {name}"),
            timeout=20,
            what=f"stage {name}'s facts",
        )
        await wait_for(
            lambda: driver.find_elements(By.CSS_SELECTOR, "#outputs dd"),
            timeout=20,
            what=f"stage {name}'s outputs",
        )
        longest = max(longest, len(find(By.ID, "outputs").text))
        assert js(driver, NO_WIDER), f"stage {name} makes the page wider than {width} px"
    assert longest > 1000  # some stage's outputs are long: they wrapped

    driver.save_screenshot(str(shot.with_name("web-page-narrow.png")))
    driver.set_window_size(1280, 900)

    # Sections that older gateways lack say so, or show their data.
    driver.get(url + "#/agents")
    await wait_for(
        lambda: driver.find_elements(By.CSS_SELECTOR, "#agents tbody tr, .unavailable"),
        timeout=20,
        what="the agents, or a note that they are unavailable",
    )
    agents = driver.find_elements(By.CSS_SELECTOR, '#agents tr[data-agent="web-cpu-1"]')
    assert agents or driver.find_elements(By.CSS_SELECTOR, ".unavailable")
    driver.save_screenshot(str(shot.with_name("web-page-agents.png")))
    driver.get(url + "#/")
    await wait_for(
        lambda: driver.find_elements(
            By.CSS_SELECTOR, f'#pipelines tr[data-pipeline="{pipeline_id}"]'
        ),
        timeout=20,
        what="the pipeline in the list",
    )
    driver.save_screenshot(str(shot.with_name("web-page-list.png")))

    # The history: its entries, or (an older gateway) a note that it is unavailable.
    driver.get(f"{url}#/pipelines/{pipeline_id}")
    await wait_for(
        lambda: driver.find_elements(
            By.CSS_SELECTOR, "#history tr[data-seq], #history-box .unavailable"
        ),
        timeout=20,
        what="the history, or a note that it is unavailable",
    )

    # The picture: the stage with the anomaly, the whole page.
    driver.get(f"{url}#/pipelines/{pipeline_id}/stages/{stage}")
    await wait_for(chart_with_marker, timeout=30, what="the charts again")
    height = js(driver, "return document.scrollingElement.scrollHeight")
    before = js(driver, "return window.innerHeight")
    driver.set_window_size(1280, min(max(height + 120, 900), 4000))
    await wait_for(
        lambda: js(driver, "return window.innerHeight") != before or height + 120 <= before,
        timeout=10,
        what="the window to grow",
    )
    assert js(driver, NO_WIDER)
    js(driver, "window.scrollTo(0, 0)")
    driver.save_screenshot(str(shot))
