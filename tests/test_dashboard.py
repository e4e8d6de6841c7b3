"""The dashboard at /ui, driven in a real headless Chromium (Debian's chromium + chromidriver via
selenium) against a live service on a real port: sign-in, a dsir job submitted from the form and
followed to the end, its manifest's charts, the SQL box, job pages that render their summaries
(evaluate's gain with its error, CoLoR-Filter's diagnostics, a selection's counts by source; dedup,
decontaminate and quality) and every stage, a duplicate cluster's members side by side, models and
projections, a projection's sliders, a curriculum run, a browser upload, tenant isolation and a
wrong key. Each page is saved as a screenshot under test-output/screenshots/ (not committed;
docs/img holds chosen ones)."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from tests.conftest import make_settings
from tests.corpus_gen import corpus, jsonl
from tests.helpers import wait

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-output" / "screenshots"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
KEY_ALICE, KEY_BOB = "key-alice", "key-bob"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """The real app under uvicorn in a thread, on a free loopback port."""

    def __init__(self, settings):
        from service.app import create_app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *_):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def live(tmp_path_factory, ray_address):
    with LiveServer(make_settings(tmp_path_factory.mktemp("ui-home"), ray_address)) as server:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY_ALICE}"}, timeout=60) as api:
            server.api = api
            yield server


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.fail("chromium and chromedriver are missing: `make install` installs them (apt: chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1360,1000", "--force-device-scale-factor=1", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_script_timeout(30)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def until(driver, condition, timeout=20.0, what="condition"):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))
    except TimeoutException:
        shot(driver, f"timeout-{re.sub(r'[^a-z0-9]+', '-', what.lower())}")
        errors = driver.find_elements("css selector", ".error")
        raise AssertionError(f"timed out waiting for {what}; errors on the page: {[e.text for e in errors]}") from None


def shot(driver, name: str, full: bool = True) -> Path:
    """A screenshot of the whole page (the window grown to the page's height)."""
    path = SHOTS / f"{name}.png"
    if full:
        height = driver.execute_script("return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight")
        driver.set_window_size(1360, min(int(height), 5000))
    driver.save_screenshot(str(path))
    driver.set_window_size(1360, 1000)
    return path


def attr(driver, selector, name):
    """An element's attribute, read in one step (None if absent)."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e && e.getAttribute(arguments[1])",
                                 selector, name)


def click(driver, selector):
    """Click like a user; lists re-render on a timer, so retry on a replaced element."""
    from selenium.common.exceptions import StaleElementReferenceException
    for _ in range(5):
        try:
            return css(driver, selector).click()
        except StaleElementReferenceException:
            time.sleep(0.1)
    raise AssertionError(f"{selector} kept being replaced")


def css(driver, selector):
    return driver.find_element("css selector", selector)


def text_of(driver, selector) -> str:
    """The element's visible text ("" if absent), read in one step so a re-render cannot go stale."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText.trim() : ''",
                                 selector)


def go(driver, live, hash_):
    driver.get(f"{live.url}/ui/{hash_}")


def sign_in(driver, live, key):
    driver.get(f"{live.url}/ui/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{live.url}/ui/#/jobs")
    until(driver, lambda d: d.find_elements("id", "key"), what="the sign-in form")
    css(driver, "#key").send_keys(key)
    css(driver, "#signin").click()


def signed_in_as(driver, tenant):
    until(driver, lambda d: text_of(d, "#who") == f"tenant {tenant}", what=f"signed in as {tenant}")


def chart(driver, canvas_id, expr):
    """Evaluate `expr` with `c` bound to the Chart.js chart drawn on canvas `canvas_id`."""
    return driver.execute_script(f"const c = Chart.getChart(document.getElementById('{canvas_id}')); return c && ({expr});")


def stages_shown(driver) -> list[str]:
    """The stages a job page lists, each checked to show how long it took."""
    items = driver.find_elements("css selector", "#job-stages li")
    for li in items:
        assert re.search(r"\d s", li.find_element("css selector", ".stage-time").text), li.text
    return [li.get_attribute("data-stage") for li in items]


def histogram_off_axis(driver) -> int:
    """Documents the score histogram leaves off its (percentile-cut) axis."""
    return driver.execute_script("const d = document.getElementById('chart-histogram').parentElement.dataset;"
                                 "return Number(d.below) + Number(d.above);")


def inked_pixels(driver, canvas_id) -> int:
    return driver.execute_script(f"""
        const cv = document.getElementById('{canvas_id}');
        const px = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
        let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
        return n;""")


@pytest.fixture(scope="module")
def data(live):
    """Alice's corpora: a three-domain pool (two shards), an astronomy target."""
    def up(rows, name):
        r = live.api.post("/v1/corpora", params={"name": name, "format": "jsonl"}, content=jsonl(rows))
        assert r.status_code == 201, r.text
        return r.json()
    return {"pool": up(corpus(360, seed=1), "pool"),
            "target": up(corpus(60, seed=2, domains=["astronomy"], prefix="t"), "target"),
            "state": {}}


def test_ui_is_served_from_the_package_without_a_key(live):
    r = httpx.get(f"{live.url}/ui", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    page = httpx.get(f"{live.url}/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset, media in (("app.css", "text/css"), ("js/main.js", "text/javascript"),
                         ("vendor/chart.umd.min.js", "text/javascript"), ("vendor/chart.js-LICENSE.md", "text/markdown")):
        r = httpx.get(f"{live.url}/ui/{asset}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(media), asset
    for bad in ("../app.py", "js/../../routes/ui.py", "nothing.js", ".hidden.css", "index.py", "%2Fetc%2Fhostname.css",
                "js//main.js", "js/%2e%2e/app.css"):
        assert httpx.get(f"{live.url}/ui/{bad}").status_code == 404, bad
    # Nothing of ours names another host: every asset is served by Thresher.
    ours = [p for p in (ROOT / "service" / "ui").rglob("*") if p.suffix in (".html", ".js", ".css") and "vendor" not in p.parts]
    assert len(ours) >= 8
    for path in ours:
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", path.read_text()), f"{path} names a host"


def test_wrong_key_shows_a_clear_message(browser, live):
    sign_in(browser, live, "not-a-key")
    msg = until(browser, lambda d: text_of(d, "#signin-message"), what="the sign-in message")
    assert "not accepted" in msg and "unknown API key" in msg
    assert not css(browser, "#nav").is_displayed() and not css(browser, "#signout").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('thresher.key')") is None
    shot(browser, "signin-wrong-key", full=False)


def test_submit_dsir_from_the_form_and_follow_it(browser, live, data):
    sign_in(browser, live, KEY_ALICE)
    signed_in_as(browser, "alice")
    go(browser, live, "#/jobs/new/dsir")
    until(browser, lambda d: d.find_elements("id", "form-dsir"), what="the dsir form")
    from selenium.webdriver.support.ui import Select
    # The form comes from the spec model: its fields, with their defaults.
    labels = [e.get_attribute("data-field") for e in browser.find_elements("css selector", "#form-dsir .field[data-field]")]
    assert labels[:4] == ["restrict", "pool", "target", "select"] and "sampling" in labels
    assert css(browser, "#f-buckets").get_attribute("value") == "10000"
    assert Select(css(browser, "#f-sampling")).first_selected_option.text == "gumbel"
    Select(css(browser, "#f-pool")).select_by_value(data["pool"]["id"])
    Select(css(browser, "#f-target")).select_by_value(data["target"]["id"])
    css(browser, "#f-select").send_keys('{"fraction": 0.1}')
    # The service's spec error shows next to its field (buckets must be at least 16).
    css(browser, "#f-buckets").clear()
    css(browser, "#f-buckets").send_keys("5")
    css(browser, "#submit-job").click()
    until(browser, lambda d: text_of(d, '.field[data-field="buckets"] .field-error'), what="the buckets field's error")
    assert "spec.buckets" in text_of(browser, ".form-status")
    shot(browser, "job-form")
    css(browser, "#f-buckets").clear()
    css(browser, "#f-buckets").send_keys("4096")
    css(browser, "#f-seed").clear()
    css(browser, "#f-seed").send_keys("3")
    css(browser, "#submit-job").click()
    until(browser, lambda d: re.search(r"#/jobs/job_\w+$", d.current_url), what="the job page")
    job_id = browser.current_url.rsplit("/", 1)[1]
    # The page follows the job's server-sent events (it does not poll): it must see the end.
    until(browser, lambda d: text_of(d, "#job-state") == "succeeded", timeout=120, what="the job to succeed")
    assert attr(browser, "#job-progress", "data-fraction") == "1.0000"
    assert browser.find_elements("css selector", "#job-stages li")
    assert not browser.find_elements("id", "cancel-job")
    job = live.api.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded" and job["spec"]["seed"] == 3 and job["spec"]["buckets"] == 4096 and job["spec"]["select"]["fraction"] == 0.1
    assert css(browser, "#result-manifest").text == job["result"]["manifest_id"]
    # Every stage it went through, each with how long it took, from the job's record.
    assert [s["stage"] for s in job["progress"]["stages"]] == ["fit", "score", "select"]
    assert stages_shown(browser) == ["fit", "score", "select"]
    # The summary as tables: the selected count, and per source the selected against the pool.
    assert text_of(browser, "#selection-count").startswith("36 of 360 documents selected")
    by_source = {tr.get_attribute("data-source"): [td.text for td in tr.find_elements("css selector", "td")]
                 for tr in browser.find_elements("css selector", "#summary-by-source tbody tr")}
    assert set(by_source) == set(data["pool"]["sources"])
    for source, selected in job["result"]["summary"]["selected_by_source"].items():
        assert by_source[source][1:3] == [str(selected), str(data["pool"]["sources"][source])]
    assert "nodes" not in job["result"]["summary"] and job["result"]["nodes"]["score"]
    data["state"].update(job=job_id, manifest=job["result"]["manifest_id"])
    shot(browser, "job")
    go(browser, live, "#/jobs")
    until(browser, lambda d: d.find_elements("css selector", f'tr[data-job-id="{job_id}"][data-state="succeeded"]'),
          what="the job in the list")
    shot(browser, "jobs")


def test_every_kind_has_a_form_from_its_spec(browser, live):
    kinds = live.api.get("/v1/kinds").json()["items"]
    browser.get_log("browser")  # start with an empty console
    for kind in kinds:
        go(browser, live, f"#/jobs/new/{kind['name']}")
        until(browser, lambda d: d.find_elements("id", f"form-{kind['name']}"), what=f"the {kind['name']} form")
        fields = browser.execute_script(
            "return [...document.querySelectorAll(arguments[0] + ' .field[data-field]')].map(e => e.dataset.field)",
            f"#form-{kind['name']}")
        assert fields == list(kind["spec_schema"]["properties"]), kind["name"]
        for area in browser.find_elements("css selector", f"#form-{kind['name']} textarea"):
            assert area.get_attribute("placeholder") or area.get_attribute("value"), (kind["name"], area.get_attribute("id"))
    assert browser.get_log("browser") == []
    go(browser, live, "#/jobs/new/projection")     # not the last kind listed any more
    until(browser, lambda d: d.find_elements("id", "form-projection"), what="the projection form")
    assert css(browser, "#f-sources").get_attribute("placeholder").startswith('[{"corpus": …, "price_per_doc": …')
    go(browser, live, "#/jobs/new/dsir")
    until(browser, lambda d: d.find_elements("id", "form-dsir"), what="the dsir form")
    assert css(browser, "#f-select").get_attribute("placeholder") == '{"fraction": …} | {"count": …} | {"tau": …}'


def test_running_job_shows_progress_and_cancels(browser, live, data):
    """A long training job: the page shows its live stage and progress, and Cancel ends it."""
    r = live.api.post("/v1/jobs", json={"kind": "train_model", "name": "long", "spec": {
        "corpus": data["pool"]["id"], "tokens": 50_000_000, "vocab_size": 300, "batch_size": 4, "seq_len": 32}})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    try:
        go(browser, live, f"#/jobs/{job_id}")
        until(browser, lambda d: text_of(d, "#job-state") == "running" and text_of(d, "#job-stage") not in ("", "—"),
              timeout=60, what="the running job's stage")
        shot(browser, "job-running", full=False)
        click(browser, "#cancel-job")
        until(browser, lambda d: text_of(d, "#job-state") == "cancelled", timeout=60, what="the cancelled state")
        assert "cancelled" in text_of(browser, "#job-error")
    finally:
        live.api.post(f"/v1/jobs/{job_id}/cancel")
    assert wait(live.api, job_id, timeout=30)["state"] == "cancelled"


def test_manifest_page_draws_bars_histogram_and_documents(browser, live, data):
    man = data["state"]["manifest"]
    go(browser, live, "#/jobs")
    row = f'tr[data-job-id="{data["state"]["job"]}"] a'
    until(browser, lambda d: d.find_elements("css selector", row), what="the dsir job in the list")
    click(browser, row)
    until(browser, lambda d: d.find_elements("id", "result-manifest"), what="the job page")
    css(browser, "#result-manifest").click()
    until(browser, lambda d: d.find_elements("css selector", "#docs-bottom tbody tr"), what="the manifest page")
    q = lambda sql: live.api.post("/v1/query", json={"sql": sql, "tables": {"m": man}}).json()["rows"]  # noqa: E731
    per_source = q("SELECT source, count(*), count(*) FILTER (WHERE selected) FROM m GROUP BY 1 ORDER BY 1")
    assert len(per_source) == 3
    # Per source: one pool bar and one selected bar each, with the manifest's counts.
    assert chart(browser, "chart-sources", "c.data.labels") == [r[0] for r in per_source]
    assert chart(browser, "chart-sources", "[c.getDatasetMeta(0).data.length, c.getDatasetMeta(1).data.length]") == [3, 3]
    assert chart(browser, "chart-sources", "c.data.datasets.map(d => d.data)") == [[r[1] for r in per_source], [r[2] for r in per_source]]
    # The histogram: 30 bins, stacked selected / not selected, adding up to the manifest with the
    # documents off its axis. DSIR sampled this selection (gumbel): no threshold line, and why.
    assert chart(browser, "chart-histogram", "c.data.datasets.map(d => d.label)") == ["selected", "not selected"]
    heights = chart(browser, "chart-histogram", "c.data.datasets.map(d => d.data.map(p => p.y || 0))")
    assert len(heights[0]) == 30
    (rows, selected), = q("SELECT count(*), count(*) FILTER (WHERE selected) FROM m")
    off_axis = histogram_off_axis(browser)
    assert sum(heights[0]) + sum(heights[1]) + off_axis == rows
    assert off_axis or sum(heights[0]) == selected
    assert chart(browser, "chart-histogram", "c.options.plugins.vline.x") is None
    assert "DSIR sampled its selection" in text_of(browser, "#threshold")
    for canvas in ("chart-sources", "chart-histogram"):
        assert inked_pixels(browser, canvas) > 2000, f"{canvas} is blank"
    # Top and bottom documents with their text, in score order.
    top = [float(e.text.replace(",", "")) for e in browser.find_elements("css selector", "#docs-top tbody td.num")]
    bottom = [float(e.text.replace(",", "")) for e in browser.find_elements("css selector", "#docs-bottom tbody td.num")]
    assert len(top) == len(bottom) == 8 and top == sorted(top, reverse=True) and min(top) > max(bottom)
    texts = [e.text for e in browser.find_elements("css selector", "#docs-top tbody td.text")]
    assert all(len(t) > 20 for t in texts)
    shot(browser, "manifest")


def test_sql_box_runs_a_query(browser, live, data):
    sql = "SELECT source, count(*) AS n FROM m WHERE selected GROUP BY 1 ORDER BY 1"
    box = css(browser, "#sql")
    box.clear()
    box.send_keys(sql)
    css(browser, "#run-sql").click()
    until(browser, lambda d: " row" in text_of(d, "#sql-meta") and
          [e.text for e in d.find_elements("css selector", "#sql-table th")] == ["SOURCE", "N"], what="the query result")
    shown = [[td.text for td in tr.find_elements("css selector", "td")]
             for tr in browser.find_elements("css selector", "#sql-table tbody tr")]
    expected = live.api.post("/v1/query", json={"sql": sql, "tables": {"m": data["state"]["manifest"]}}).json()["rows"]
    assert shown == [[s, str(n)] for s, n in expected]
    box.clear()
    box.send_keys("DELETE FROM m")
    css(browser, "#run-sql").click()
    until(browser, lambda d: "forbidden_statement" in text_of(d, "#sql-result"), what="the refused query's message")


def test_color_filter_manifest_shows_the_loss_scatter(browser, live, data):
    """A deliberately tiny CoLoR-Filter (a few training steps): the page plots prior vs
    conditional loss, selected apart from the rest."""
    r = live.api.post("/v1/jobs", json={"kind": "color_filter", "spec": {
        "pool": data["pool"]["id"], "target": data["target"]["id"], "select": {"fraction": 0.1},
        "prior": {"train": {"preset": "tiny", "tokens": 4096, "vocab_size": 300, "batch_size": 8, "seq_len": 32}},
        "conditional": {"finetune": {"epochs": 1, "warmup_steps": 1, "batch_size": 8}}}})
    assert r.status_code == 202, r.text
    job = wait(live.api, r.json()["id"], timeout=180)
    assert job["state"] == "succeeded", job
    go(browser, live, f"#/manifests/{job['result']['manifest_id']}")
    until(browser, lambda d: chart(d, "chart-scatter", "c.data.datasets.length"), what="the loss scatter")
    counts = dict(chart(browser, "chart-scatter", "c.data.datasets.map(d => [d.label, d.data.length])"))
    assert counts["selected"] == 36 and counts["not selected"] == 324
    assert inked_pixels(browser, "chart-scatter") > 2000
    shot(browser, "manifest-color-filter")
    data["state"]["color"] = job


def table_rows(driver, selector, key) -> dict[str, list[str]]:
    """A table's rows by their `key` attribute: the text of each cell (th and td)."""
    return {tr.get_attribute(key): [c.text for c in tr.find_elements("css selector", "th, td")]
            for tr in driver.find_elements("css selector", f"{selector} tbody tr")}


def test_color_filter_job_page_renders_its_diagnostics(browser, live, data):
    """The job page shows every stage with its time, and the summary as tables: the selection,
    whether fine-tuning helped on the held-out target, scores by source, the models; the raw
    JSON only behind a toggle."""
    job = live.api.get(f"/v1/jobs/{data['state']['color']['id']}").json()
    stages = [s["stage"] for s in job["progress"]["stages"]]
    assert stages == ["train_prior", "finetune", "score", "select"]
    assert all(s["seconds"] is not None and s["done"] == s["total"] for s in job["progress"]["stages"])
    go(browser, live, f"#/jobs/{job['id']}")
    until(browser, lambda d: d.find_elements("css selector", "#cf-diagnostics tr"), what="CoLoR-Filter's diagnostics")
    assert stages_shown(browser) == stages
    held = job["result"]["summary"]["target_holdout"]
    rows = table_rows(browser, "#cf-diagnostics", "data-key")
    assert rows["holdout_docs"] == ["held-out target documents", str(held["holdout_docs"])]
    for key in ("prior_loss", "conditional_loss", "loss_reduction"):
        assert float(rows[key][1].replace(",", "")) == pytest.approx(held[key], rel=1e-3, abs=1e-4), key
    assert {"trained_tokens", "budget_tokens", "stopped_early", "lr", "attempts"} <= set(rows)
    by_source = table_rows(browser, "#cf-score-by-source", "data-row")
    assert set(by_source) == set(job["result"]["summary"]["score_by_source"]) and len(by_source) == 3
    assert set(table_rows(browser, "#cf-models", "data-row")) == {"prior", "conditional"}
    assert len(browser.find_elements("css selector", "#summary-by-source tbody tr")) == 3
    # Nothing is shown as raw JSON unless asked for, and no Ray node id is in the summary.
    assert not css(browser, "#summary-raw").get_attribute("open") and not css(browser, "#summary-raw pre").is_displayed()
    assert "nodes" not in job["result"]["summary"]
    assert not re.search(r"\b[0-9a-f]{56}\b", text_of(browser, "#job-result"))
    shot(browser, "job-color-filter")


def test_evaluate_job_page_shows_the_gain_with_its_error(browser, live, data):
    """A tiny evaluate (two repeats of two tiny proxies): the gain over random with ± its standard
    error, each arm's loss, each repeat."""
    r = live.api.post("/v1/jobs", json={"kind": "evaluate", "spec": {
        "selection": data["state"]["color"]["result"]["manifest_id"], "validation": data["target"]["id"], "repeats": 2,
        "proxy": {"preset": "tiny", "tokens": 1000, "vocab_size": 256, "batch_size": 4, "seq_len": 16, "max_docs": 100}}})
    assert r.status_code == 202, r.text
    job = wait(live.api, r.json()["id"], timeout=180)
    assert job["state"] == "succeeded", job
    s = job["result"]["summary"]
    go(browser, live, f"#/jobs/{job['id']}")
    until(browser, lambda d: text_of(d, "#eval-gain"), what="the evaluate summary")
    gain = text_of(browser, "#eval-gain")
    assert re.fullmatch(r"[+−]?\d+\.\d\d% ± \d+\.\d\d%", gain), gain
    shown, se = (float(x.replace("−", "-").rstrip("%")) for x in gain.split(" ± "))
    assert shown == pytest.approx(100 * s["relative_gain"], abs=0.006) and se == pytest.approx(100 * s["relative_gain_se"], abs=0.006)
    assert "2 repeats" in text_of(browser, "#eval-verdict")
    arms = table_rows(browser, "#eval-arms", "data-arm")
    assert set(arms) == {"selection", "random"}
    for arm in arms:
        assert float(arms[arm][1].replace(",", "")) == pytest.approx(s[arm]["validation_loss"], rel=1e-4)
    assert len(browser.find_elements("css selector", "#eval-repeats tbody tr")) == 2
    assert stages_shown(browser) == ["train_proxies", "check_overlap"]
    shot(browser, "job-evaluate")


def test_model_page(browser, live, data):
    cond = data["state"]["color"]["result"]["model_id"]
    go(browser, live, "#/models")
    until(browser, lambda d: d.find_elements("css selector", f'tr[data-model-id="{cond}"] a'), what="the models list")
    click(browser, f'tr[data-model-id="{cond}"] a')
    until(browser, lambda d: d.find_elements("css selector", "#model-meta tr"), what="the model page")
    assert browser.find_elements("css selector", f'#main a[href="#/jobs/{data["state"]["color"]["id"]}"]'), "its job"
    meta = live.api.get(f"/v1/models/{cond}").json()["meta"]
    assert {tr.get_attribute("data-key") for tr in browser.find_elements("css selector", "#model-meta > tbody > tr")} == set(meta)
    shot(browser, "model")


def test_histogram_of_a_long_tailed_selection(browser, live):
    """Two documents a hundred times longer than the rest give DSIR scores far off the others:
    the axis stops at the percentiles and says how many it left off; a top-k selection is a cut
    on score, so its threshold is drawn."""
    rows = corpus(300, seed=5) + corpus(2, seed=6, domains=["cooking"], min_words=4000, max_words=4000, prefix="long")
    pool = live.api.post("/v1/corpora", params={"name": "long-tail", "format": "jsonl"}, content=jsonl(rows)).json()
    target = live.api.post("/v1/corpora", params={"name": "long-tail-target", "format": "jsonl"},
                           content=jsonl(corpus(40, seed=7, domains=["astronomy"], prefix="t"))).json()
    r = live.api.post("/v1/jobs", json={"kind": "dsir", "spec": {"pool": pool["id"], "target": target["id"],
                                                                 "select": {"fraction": 0.1}, "sampling": "topk"}})
    job = wait(live.api, r.json()["id"], timeout=120)
    assert job["state"] == "succeeded", job
    man = job["result"]["manifest_id"]
    go(browser, live, f"#/manifests/{man}")
    until(browser, lambda d: chart(d, "chart-histogram", "c.data.datasets.length"), what="the histogram")
    q = lambda sql: live.api.post("/v1/query", json={"sql": sql, "tables": {"m": man}}).json()["rows"][0]  # noqa: E731
    lo, hi, threshold = q("SELECT min(score), max(score), min(score) FILTER (WHERE selected) FROM m")
    axis = chart(browser, "chart-histogram", "[c.options.scales.x.min, c.options.scales.x.max]")
    assert axis[0] > lo and histogram_off_axis(browser) >= 2
    assert "not drawn" in text_of(browser, "#histogram-clipped")
    heights = chart(browser, "chart-histogram", "c.data.datasets.map(d => d.data.map(p => p.y || 0))")
    assert sum(map(sum, heights)) + histogram_off_axis(browser) == 302
    assert chart(browser, "chart-histogram", "c.options.plugins.vline.x") == pytest.approx(threshold)
    assert text_of(browser, "#threshold").startswith("Dashed line: the threshold")
    assert hi >= axis[1]
    shot(browser, "manifest-long-tail")


def test_corpus_upload_from_the_browser(browser, live, tmp_path):
    path = tmp_path / "fresh.jsonl"
    rows = corpus(30, seed=9, prefix="u") + [{"id": "blank", "text": "", "source": "cooking"}]
    path.write_bytes(jsonl(rows))
    go(browser, live, "#/corpora")
    until(browser, lambda d: d.find_elements("id", "upload-file"), what="the corpora page")
    css(browser, "#upload-file").send_keys(str(path))
    css(browser, "#upload").click()
    until(browser, lambda d: d.find_elements("css selector", "#corpus-sample tbody tr"), what="the new corpus page")
    assert "Corpus fresh" in css(browser, "h1").text
    assert text_of(browser, "#corpus-empty") == "1"
    assert len(browser.find_elements("css selector", "#corpus-sample tbody tr")) == 10
    assert chart(browser, "chart-corpus-sources", "c.data.datasets[0].data.reduce((a, b) => a + b, 0)") == 31
    shot(browser, "corpus")


def projection_spec(live, data):
    from tests.test_projection_api import spec
    def up(rows, name):
        return live.api.post("/v1/corpora", params={"name": name, "format": "jsonl"}, content=jsonl(rows)).json()["id"]
    ids = [up(corpus(80, seed=60 + i, domains=[d], prefix=d[0]), d) for i, d in enumerate(["cooking", "finance", "astronomy"])]
    return spec(ids, up(corpus(40, seed=70, domains=["astronomy"], prefix="v"), "validation"))


def test_projection_sliders_ask_predict(browser, live, data):
    r = live.api.post("/v1/jobs", json={"kind": "projection", "spec": projection_spec(live, data)})
    assert r.status_code == 202, r.text
    job = wait(live.api, r.json()["id"], timeout=180)
    assert job["state"] == "succeeded", job
    data["state"]["projection"] = job["id"]
    go(browser, live, f"#/projections/{job['id']}")
    until(browser, lambda d: css(d, "#mix-predicted").get_attribute("data-value"), what="the first prediction")
    # Optimum, uniform, one line per source, the measured pilots (2 sizes × 15 mixtures), the plan,
    # then the slider's own mixture.
    labels = chart(browser, "chart-projection", "c.data.datasets.map(d => d.label)")
    assert labels == ["optimum", "uniform", "only cooking", "only finance", "only astronomy", "pilots (measured)",
                      "the plan", "your mixture"]
    assert chart(browser, "chart-projection", "c.data.datasets[5].data.length") == 30
    # A line stops where its mixture cannot be bought any larger: astronomy costs 2 a document
    # under a budget of 10,000, so "only astronomy" ends at 5,000 documents; the plan is marked.
    opt = job["result"]["summary"]["optimum"]
    ends = chart(browser, "chart-projection", "c.data.datasets.slice(0, 5).map(d => [d.stopsAt, Math.max(...d.data.map(p => p.x))])")
    assert ends[4] == [5000, 5000]
    assert ends[2][0] in (None, 10_000) and ends[2][1] > 5000
    assert chart(browser, "chart-projection", "c.data.datasets[6].data") == [{"x": opt["size"], "y": pytest.approx(opt["predicted"])}]
    assert "Star: the plan" in text_of(browser, "#projection-caption")
    assert inked_pixels(browser, "chart-projection") > 5000
    assert len(browser.find_elements("css selector", "#plan-table tbody tr")) == 3
    before = css(browser, "#mix-predicted").get_attribute("data-value")
    from selenium.webdriver.common.keys import Keys
    slider = css(browser, "#slider-0")
    slider.click()
    for _ in range(15):
        slider.send_keys(Keys.ARROW_RIGHT)
    weights = [int(css(browser, f"#slider-{i}").get_attribute("value")) for i in range(3)]
    mixture = [w / sum(weights) for w in weights]

    def settled(d):
        shown = d.find_element("id", "mix-predicted")
        mix = json.loads(shown.get_attribute("data-mixture") or "null")
        return mix and max(abs(a - b) for a, b in zip(mix, mixture)) < 1e-12 and shown.get_attribute("data-value")
    value = float(until(browser, settled, what="the prediction for the moved slider"))
    assert str(value) != before
    size = int(css(browser, "#mix-predicted").get_attribute("data-size"))
    answer = live.api.post(f"/v1/projections/{job['id']}/predict", json={"mixtures": [mixture], "sizes": [size]}).json()
    assert value == pytest.approx(answer["predictions"][0]["predicted"], rel=1e-12)
    shown = css(browser, "#mix-predicted").text
    assert float(shown.replace(",", "")) == pytest.approx(value, rel=1e-5)
    shot(browser, "projection")


def test_projections_are_in_the_navigation(browser, live, data):
    job = data["state"]["projection"]
    click(browser, '#nav a[data-section="projections"]')
    until(browser, lambda d: d.find_elements("css selector", f'#projections-table tr[data-job-id="{job}"] a'),
          what="the projections list")
    assert "active" in css(browser, '#nav a[data-section="projections"]').get_attribute("class")
    click(browser, f'#projections-table tr[data-job-id="{job}"] a')
    until(browser, lambda d: d.find_elements("id", "plan-table"), what="the projection page")


def test_curriculum_page_shows_epochs(browser, live, data):
    r = live.api.post("/v1/jobs", json={"kind": "curriculum", "spec": {
        "corpus": data["target"]["id"], "method": "seta", "epochs": 4, "prune_ratio": 0.3}})
    job = wait(live.api, r.json()["id"], timeout=60)
    run = job["result"]["curriculum_id"]
    ids = live.api.get(f"/v1/curricula/{run}/epochs/0").json()["doc_ids"]
    live.api.post(f"/v1/curricula/{run}/losses", json={"epoch": 0, "losses": [
        {"doc_id": d, "loss": 1.0 + (i % 7) / 3} for i, d in enumerate(ids)]}).raise_for_status()
    second = live.api.get(f"/v1/curricula/{run}/epochs/1").json()["doc_ids"]
    info = live.api.get(f"/v1/curricula/{run}").json()
    go(browser, live, f"#/jobs/{job['id']}")
    until(browser, lambda d: d.find_elements("id", "result-curriculum"), what="the curriculum job's page")
    css(browser, "#result-curriculum").click()
    until(browser, lambda d: chart(d, "chart-epochs", "c.data.datasets[0].data"), what="the epochs chart")
    kept = chart(browser, "chart-epochs", "c.data.datasets[0].data")
    assert kept == [len(ids), len(second), None, None]
    assert text_of(browser, "#cur-saved") == f"{100 * info['saved_fraction']:.1f}%"
    shot(browser, "curriculum")


# --- cleaning: dedup, decontaminate and quality pages -------------------------------------------

INSTALL = ("To install the package, download the latest release from the project page and unpack it into a "
           "directory of your choice. Run the configure script, then make and make install as root. The default "
           "installation prefix is /usr/local; pass --prefix to configure to change it. Documentation is installed "
           "under share/doc, and the manual pages under share/man. If you find a bug, please report it on the issue "
           "tracker with the version number, your operating system and the exact steps that reproduce the problem. "
           "Patches are welcome, as are translations of the documentation into other languages.")
LICENSE = ("This program is free software: you can redistribute it and/or modify it under the terms of the GNU "
           "General Public License as published by the Free Software Foundation, either version 3 of the License, "
           "or (at your option) any later version. This program is distributed in the hope that it will be useful, "
           "but without any warranty; without even the implied warranty of merchantability or fitness for a "
           "particular purpose. See the GNU General Public License for more details. You should have received a "
           "copy of the GNU General Public License along with this program.")


def cleaning_pool() -> list[dict]:
    """Web-like filler (two sources), a README paragraph copied four times with a word or two changed,
    a license text twice (once with another version) and once in capitals, four essays that differ
    in one word, and a few documents a quality filter rejects."""
    from tests.test_quality import GOOD
    rows = corpus(80, seed=31, min_words=40, max_words=90, prefix="w")
    for r in rows:
        r["source"] = "web" if r["source"] != "finance" else "forum"
    readme = [INSTALL, INSTALL.replace("/usr/local", "/opt"),
              INSTALL.replace("issue tracker", "mailing list"),
              INSTALL.replace("as root", "as the superuser") + " Thank you for using it."]
    rows += [{"id": f"readme-{i}", "text": t, "source": "readme"} for i, t in enumerate(readme)]
    rows += [{"id": "license-a", "text": LICENSE, "source": "license"},
             {"id": "license-b", "text": LICENSE.replace("version 3", "version 2"), "source": "license"},
             {"id": "license-caps", "text": LICENSE.upper(), "source": "license"}]
    rows += [{"id": f"essay-{i}", "text": GOOD.replace("river", w), "source": "essays"}
             for i, w in enumerate(("river", "lake", "forest", "harbour"))]
    rows += [{"id": "bullets", "text": "\n".join(f"- item {i}" for i in range(30)), "source": "web"},
             {"id": "lorem", "text": "Lorem ipsum dolor sit amet. " * 12, "source": "web"},
             {"id": "blank", "text": "", "source": "web"}]
    return rows


@pytest.fixture(scope="module")
def cleaning(live):
    """Alice's cleaning jobs over one pool: a fuzzy dedup verified at Jaccard 0.7, a
    decontamination against a validation set that holds one of the pool's essays (the other three
    share its 13-grams) and one web document, a quality pass."""
    def up(rows, name):
        r = live.api.post("/v1/corpora", params={"name": name, "format": "jsonl"}, content=jsonl(rows))
        assert r.status_code == 201, r.text
        return r.json()["id"]
    rows = cleaning_pool()
    pool = up(rows, "clean-pool")
    leaked = ["essay-1", next(r["id"] for r in rows if r["source"] == "web")]
    validation = up([r for r in rows if r["id"] in leaked] + corpus(20, seed=32, prefix="v"), "validation-set")
    specs = {"dedup": {"pool": pool, "threshold": 0.7},
             "decontaminate": {"pool": pool, "against": [validation]},
             "quality": {"pool": pool}}
    ids = {}
    for kind, spec in specs.items():
        r = live.api.post("/v1/jobs", json={"kind": kind, "spec": spec})
        assert r.status_code == 202, r.text
        ids[kind] = r.json()["id"]
    jobs = {kind: wait(live.api, job_id, timeout=120) for kind, job_id in ids.items()}
    assert all(j["state"] == "succeeded" for j in jobs.values()), jobs
    return {"pool": pool, "validation": validation, "rows": {r["id"]: r for r in rows}, **jobs}


def test_dedup_job_page_shows_clusters_pairs_and_lsh(browser, live, cleaning):
    """The dedup summary as tables: clusters, the largest, candidate and verified pairs, the LSH
    parameters with the chance of detecting a pair at Jaccard 0.8 and the whole curve."""
    sign_in(browser, live, KEY_ALICE)
    signed_in_as(browser, "alice")
    job = cleaning["dedup"]
    s = job["result"]["summary"]
    assert (s["clusters"], s["largest_cluster"]) == (3, 4)
    go(browser, live, f"#/jobs/{job['id']}")
    until(browser, lambda d: d.find_elements("css selector", "#dedup-figures tr"), what="dedup's figures")
    assert text_of(browser, "#dedup-kept").startswith(f"{s['num_selected']} of {s['num_rows']} documents kept")
    figures = table_rows(browser, "#dedup-figures", "data-key")
    assert figures["clusters"][1] == "3" and figures["largest_cluster"][1] == "4"
    assert figures["removed"][1] == str(s["num_rows"] - s["num_selected"] - s["num_empty"]) == "8"
    assert figures["candidate_pairs"][1] == f"{s['candidate_pairs']:,}"
    assert figures["verified_pairs"][1] == f"{s['verified_pairs']:,}"
    lsh = table_rows(browser, "#dedup-lsh", "data-key")
    assert lsh["bands"][1] == "20 × 8 = 160 MinHash values per document"
    assert lsh["detection_probability_at_0.8"][1] == f"{100 * s['lsh']['detection_probability_at_0.8']:.2f}%"
    assert lsh["threshold"][1] == "≥ 0.7"
    until(browser, lambda d: chart(d, "chart-lsh", "c.data.datasets[0].data.length") == 101, what="the LSH curve")
    at_08 = chart(browser, "chart-lsh", "c.data.datasets[0].data[80].y")
    assert at_08 == pytest.approx(s["lsh"]["detection_probability_at_0.8"], abs=1e-4)
    assert chart(browser, "chart-lsh", "c.options.plugins.vline.x") == 0.7
    kept = table_rows(browser, "#summary-by-source", "data-source")
    assert kept["readme"][1] == kept["license"][1] == kept["essays"][1] == "1"
    shot(browser, "job-dedup")


def test_a_duplicate_clusters_members_side_by_side(browser, live, cleaning):
    """The dedup manifest's page: the largest cluster's members in columns, the kept one first,
    words it lacks marked in the others; another cluster by its id."""
    man = cleaning["dedup"]["result"]["manifest_id"]
    go(browser, live, f"#/manifests/{man}")
    until(browser, lambda d: d.find_elements("css selector", "#cluster-members .member"), what="the largest cluster")
    members = browser.find_elements("css selector", "#cluster-members .member")
    assert [m.get_attribute("data-doc-id") for m in members] == ["readme-0", "readme-1", "readme-2", "readme-3"]
    assert [m.get_attribute("data-kept") for m in members] == ["true", "false", "false", "false"]
    assert "duplicate of readme-0" in members[1].text
    marks = [[e.text for e in m.find_elements("css selector", "mark")] for m in members]
    assert marks == [[], ["opt"], ["mailing", "list"], ["superuser", "Thank", "for", "using"]]
    assert members[0].find_element("css selector", ".doc-text").text == INSTALL
    assert len(browser.find_elements("css selector", "#cluster-pick option")) == 3
    shot(browser, "manifest-dedup")
    license_cluster = live.api.post("/v1/query", json={
        "sql": "SELECT cluster_id FROM m WHERE doc_id = 'license-a'", "tables": {"m": man}}).json()["rows"][0][0]
    css(browser, "#cluster-id").send_keys(str(license_cluster))
    click(browser, "#show-cluster")
    until(browser, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#cluster-members .member')].map(m => m.dataset.docId)") ==
        ["license-a", "license-b", "license-caps"], what="the license cluster")
    assert "3 pool documents" in text_of(browser, "#cluster-caption")
    browser.execute_script("document.getElementById('manifest-clusters').scrollIntoView()")
    css(browser, "#manifest-clusters").screenshot(str(SHOTS / "dedup-cluster.png"))


def test_decontaminate_job_page_shows_contamination_by_corpus_and_source(browser, live, cleaning):
    job = cleaning["decontaminate"]
    s = job["result"]["summary"]
    assert s["contaminated_by_corpus"] == {cleaning["validation"]: 5} and s["contaminated_by_source"] == {"essays": 4, "web": 1}
    go(browser, live, f"#/jobs/{job['id']}")
    until(browser, lambda d: d.find_elements("css selector", "#decon-by-corpus tr"), what="decontamination's tables")
    assert text_of(browser, "#decon-count").startswith(f"5 of {s['num_rows']} documents contaminated")
    by_corpus = table_rows(browser, "#decon-by-corpus", "data-row")
    assert by_corpus[cleaning["validation"]][1] == "5"
    by_source = table_rows(browser, "#decon-by-source", "data-row")
    assert by_source["essays"] == ["essays", "4", "4", "100.0%", "0"] and by_source["readme"][1] == "0"
    web = live.api.get(f"/v1/corpora/{cleaning['pool']}").json()["sources"]["web"]
    assert by_source["web"] == ["web", "1", str(web), f"{100 / web:.1f}%", str(s["selected_by_source"]["web"])]
    shot(browser, "job-decontaminate")


def test_quality_job_page_shows_rejections_per_preset_rule_and_source(browser, live, cleaning):
    job = cleaning["quality"]
    s = job["result"]["summary"]
    go(browser, live, f"#/jobs/{job['id']}")
    until(browser, lambda d: d.find_elements("css selector", "#quality-presets tbody tr"), what="quality's tables")
    assert text_of(browser, "#quality-kept").startswith(f"{s['num_selected']} of {s['num_rows']} documents pass")
    presets = table_rows(browser, "#quality-presets", "data-row")
    assert {p: int(r[1]) for p, r in presets.items()} == s["rejected_by_preset"]
    assert all(r[3] == "yes" for r in presets.values())
    # Rules that rejected something, most first; the others named in one line.
    shown = [(tr.get_attribute("data-row"), int(tr.find_elements("css selector", "td")[1].text.replace(",", "")))
             for tr in browser.find_elements("css selector", "#quality-rules tbody tr")]
    assert shown == sorted(((k, n) for k, n in s["rejected_by_rule"].items() if n), key=lambda x: -x[1])
    assert ("c4_no_lorem_ipsum", 1) in shown and ("gopher_bullet_lines", 1) in shown
    idle = [k for k, n in s["rejected_by_rule"].items() if not n]
    assert text_of(browser, "#quality-rules-none") == f"Rejected nothing ({len(idle)} rules): {', '.join(idle)}"
    by_source = table_rows(browser, "#quality-by-source", "data-row")
    assert set(by_source) == set(s["by_source"]) >= {"web", "forum", "readme", "license", "essays"}
    essays = s["by_source"]["essays"]
    assert by_source["essays"][:3] == ["essays", str(essays["docs"]), str(essays["selected"])]
    assert set(table_rows(browser, "#quality-sql", "data-key")) == set(s["presets"])
    shot(browser, "job-quality")


def test_cluster_members_through_the_documents_path(live, cleaning):
    """GET /v1/manifests/{id}/documents?cluster_id=: a cluster's members with their text, the kept
    one first; an unknown cluster is a 404, a manifest without clusters a 409, both naming the field."""
    man = cleaning["dedup"]["result"]["manifest_id"]
    path = f"/v1/manifests/{man}/documents"
    cid = live.api.post("/v1/query", json={"sql": "SELECT cluster_id FROM m WHERE doc_id = 'readme-2'",
                                           "tables": {"m": man}}).json()["rows"][0][0]
    items = live.api.get(path, params={"cluster_id": cid, "snippet": 50}).json()["items"]
    assert [(d["doc_id"], d["kept"], d["duplicate_of"], d["cluster_size"]) for d in items] == [
        ("readme-0", True, None, 4), ("readme-1", False, "readme-0", 4), ("readme-2", False, "readme-0", 4),
        ("readme-3", False, "readme-0", 4)]
    rows = cleaning["rows"]
    assert all(d["text"] == rows[d["doc_id"]]["text"][:50] and d["num_chars"] == len(rows[d["doc_id"]]["text"])
               and d["cluster_id"] == cid for d in items)
    dropped = live.api.get(path, params={"cluster_id": cid, "selected": False, "n": 2}).json()["items"]
    assert [d["doc_id"] for d in dropped] == ["readme-1", "readme-2"]
    r = live.api.get(path, params={"cluster_id": 12345678})
    assert r.status_code == 404 and r.json()["error"]["details"]["field"] == "cluster_id"
    assert r.json()["error"]["message"] == f"manifest {man} has no cluster 12345678"
    r = live.api.get(path, params={"cluster_id": -1})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "cluster_id"
    quality = cleaning["quality"]["result"]["manifest_id"]
    r = live.api.get(f"/v1/manifests/{quality}/documents", params={"cluster_id": cid})
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_clusters"
    assert r.json()["error"]["details"]["field"] == "cluster_id" and "missing cluster_id" in r.json()["error"]["message"]
    assert live.api.get(path, params={"cluster_id": cid}, headers={"Authorization": f"Bearer {KEY_BOB}"}).status_code == 404


def test_another_tenant_sees_none_of_it(browser, live, data):
    css(browser, "#signout").click()
    until(browser, lambda d: d.find_elements("id", "key"), what="the sign-in form")
    css(browser, "#key").send_keys(KEY_BOB)
    css(browser, "#signin").click()
    signed_in_as(browser, "bob")
    for page, table_id in (("#/jobs", "#jobs-table"), ("#/corpora", "#corpora-table"), ("#/manifests", "#manifests-table")):
        go(browser, live, page)
        until(browser, lambda d: d.find_elements("css selector", f"{table_id} tbody tr"), what=f"bob's {page}")
        rows = browser.find_elements("css selector", f"{table_id} tbody tr")
        assert len(rows) == 1 and rows[0].text.startswith("No "), (page, [r.text for r in rows])
    shot(browser, "other-tenant-jobs")
    for page in (f"#/jobs/{data['state']['job']}", f"#/manifests/{data['state']['manifest']}",
                 f"#/projections/{data['state']['projection']}"):
        go(browser, live, page)
        msg = until(browser, lambda d: text_of(d, ".error"), what=f"bob's view of {page}")
        assert msg.startswith("not_found"), msg


def test_without_keys_the_dashboard_opens_directly(browser, tmp_path, ray_address):
    from service.settings import Settings
    with LiveServer(Settings(home=str(tmp_path), ray_address=ray_address, shard_size=200)) as open_server:
        browser.get(f"{open_server.url}/ui/")
        until(browser, lambda d: text_of(d, "#who").startswith("open"), what="the open dashboard")
        assert not browser.find_elements("id", "key")
        until(browser, lambda d: d.find_elements("css selector", "#jobs-table tbody tr"), what="the jobs list")
        # Every resource the page loaded came from the service itself.
        urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert urls and all(u.startswith(open_server.url + "/") for u in urls), urls


# --- the small API the dashboard reads (plain HTTP) ---------------------------------------------

def test_root_redirects_to_the_dashboard(live):
    r = httpx.get(f"{live.url}/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "ui/"
    page = httpx.get(f"{live.url}/", follow_redirects=True)
    assert page.status_code == 200 and str(page.url) == f"{live.url}/ui/" and "<title>Thresher</title>" in page.text


def test_serve_says_where_the_dashboard_and_docs_are(tmp_path, ray_address):
    """`thresher serve` prints the dashboard's and the API docs' URLs once it is ready."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--home", str(tmp_path), "--port", str(port)],
                            env={**os.environ, "THRESHER_RAY_ADDRESS": ray_address},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while not any("API docs" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        said = "".join(lines)
        base = f"http://127.0.0.1:{port}"
        assert f"dashboard  {base}/ui/" in said and f"API docs   {base}/docs" in said, said
        assert httpx.get(f"{base}/ui/").status_code == 200 and httpx.get(f"{base}/docs").status_code == 200
    finally:
        proc.terminate()
        proc.wait(60)

def test_ui_files_are_package_data():
    """Every file under service/ui matches a package-data pattern, so an installed wheel serves it."""
    import fnmatch
    import tomllib
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["service"]
    files = [p.relative_to(ROOT / "service").as_posix() for p in (ROOT / "service" / "ui").rglob("*") if p.is_file()]
    assert "ui/vendor/chart.js-LICENSE.md" in files
    assert [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)] == []


def test_kinds_describe_every_public_kind(live):
    from service.schemas import PUBLIC_KINDS
    r = live.api.get("/v1/kinds")
    assert r.status_code == 200
    kinds = {k["name"]: k for k in r.json()["items"]}
    assert set(kinds) == PUBLIC_KINDS
    dsir = kinds["dsir"]
    assert dsir["refs"] == {"restrict": "manifests", "pool": "corpora", "target": "corpora"}   # restrict: a list of ids
    assert dsir["spec_schema"]["properties"]["buckets"]["default"] == 10000
    assert set(dsir["spec_schema"]["required"]) == {"pool", "target", "select"}
    assert kinds["score"]["refs"] == {"corpus": "corpora", "model": "models"}
    assert httpx.get(f"{live.url}/v1/kinds").status_code == 401
    assert live.api.get("/v1/whoami").json() == {"tenant": "alice", "auth": True}
    assert live.api.get("/v1/whoami", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_manifest_documents(live, data):
    man = data["state"]["manifest"]
    top = live.api.get(f"/v1/manifests/{man}/documents", params={"n": 5, "snippet": 40}).json()["items"]
    expected = live.api.post("/v1/query", json={"sql": "SELECT doc_id FROM m ORDER BY score DESC, doc_id LIMIT 5",
                                                "tables": {"m": man}}).json()["rows"]
    assert [d["doc_id"] for d in top] == [r[0] for r in expected]
    pool = {r["id"]: r["text"] for r in corpus(360, seed=1)}
    for d in top:
        assert d["text"] == pool[d["doc_id"]][:40] and d["num_chars"] == len(pool[d["doc_id"]])
    unselected = live.api.get(f"/v1/manifests/{man}/documents", params={"order": "bottom", "selected": False}).json()["items"]
    assert len(unselected) == 10 and not any(d["selected"] for d in unselected)
    assert [d["score"] for d in unselected] == sorted(d["score"] for d in unselected)
    r = live.api.get(f"/v1/manifests/{man}/documents", params={"n": 0})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "n"
    assert live.api.get(f"/v1/manifests/{man}/documents", headers={"Authorization": f"Bearer {KEY_BOB}"}).status_code == 404
    projection = live.api.get(f"/v1/jobs/{data['state']['projection']}").json()["result"]["manifest_id"]
    r = live.api.get(f"/v1/manifests/{projection}/documents")
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_a_selection"


def test_compare_job_page_shows_gains_as_bars_with_error_bars(browser, live, data):
    """A small compare (random and dsir, two repeats of tiny proxies): a bar per selector with its
    ± one standard error whisker, the table, the overlaps and the winner statement."""
    val = live.api.post("/v1/corpora", params={"name": "cmp-val", "format": "jsonl"},
                        content=jsonl(corpus(30, seed=3, domains=["astronomy"], prefix="v"))).json()
    r = live.api.post("/v1/jobs", json={"kind": "compare", "spec": {
        "pool": data["pool"]["id"], "target": data["target"]["id"], "validation": val["id"], "select": {"count": 60},
        "selectors": ["random", "dsir"], "repeats": 2,
        "proxy": {"preset": "tiny", "tokens": 1000, "vocab_size": 256, "batch_size": 4, "seq_len": 16, "max_docs": 100}}})
    assert r.status_code == 202, r.text
    job = wait(live.api, r.json()["id"], timeout=300)
    assert job["state"] == "succeeded", job
    s = job["result"]["summary"]
    sign_in(browser, live, KEY_ALICE)
    signed_in_as(browser, "alice")
    go(browser, live, f"#/jobs/{job['id']}")
    until(browser, lambda d: chart(d, "chart-compare-gains", "c.data.datasets[0].data.length") == 2,
          what="the gains chart")
    assert chart(browser, "chart-compare-gains", "c.data.labels") == ["random", "dsir"]
    assert chart(browser, "chart-compare-gains", "c.options.plugins.whiskers.errors") == \
        pytest.approx([row["gain_se"] for row in s["table"]])
    rows = table_rows(browser, "#compare-table", "data-row")
    assert set(rows) == {"random", "dsir"} and all("%" in rows[n][1] and "%" in rows[n][2] for n in rows)
    assert table_rows(browser, "#compare-overlap", "data-row")["dsir"][2] == "100%"
    assert text_of(browser, "#compare-statement") == s["winner"]["statement"]
    shot(browser, "job-compare")
