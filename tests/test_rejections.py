"""Rejections per filter and source (issue 29 item 6): GET /v1/manifests/{id}/rejections for a
selection built with `restrict`, for a cleaning manifest itself and for an export's pool, against
counts known from how the generated pool was planted; and the dashboard's view of them, in a real
headless Chromium (the style of tests/test_dashboard.py)."""
from __future__ import annotations

import pytest

from tests.corpus_gen import corpus
from tests.helpers import submit, upload, wait
from tests.test_dashboard import (KEY_ALICE, KEY_BOB, SHOTS, browser, chart, css, go, live, shot,  # noqa: F401
                                  sign_in, signed_in_as, table_rows, text_of, until)

NULL = "(none)"   # the dashboard's name for documents without a source


def run(live, kind, spec):
    job = wait(live.api, submit(live.api, kind, spec)["id"], timeout=120)
    assert job["state"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def world(live):
    """A cooking/finance pool with planted exact copies (5 cooking, 3 finance, and one of a document
    without a source) and planted validation documents (4 cooking, 1 finance, and a finance copy of
    the first cooking one, which dedup and decontaminate both reject); an exact dedup, a
    decontamination against the validation set, a random selection restricted by both (dedup
    first), and an export of the decontamination's survivors restricted by the dedup."""
    base = corpus(60, seed=51, domains=["cooking", "finance"], min_words=20, max_words=40)
    validation = corpus(6, seed=52, domains=["astronomy"], min_words=25, max_words=35, prefix="v")
    cooking = [r for r in base if r["source"] == "cooking"]
    finance = [r for r in base if r["source"] == "finance"]
    planted = [{"id": f"copy-{r['id']}", "text": r["text"], "source": r["source"]} for r in cooking[:5] + finance[:3]]
    planted += [{"id": f"leak{i}", "text": validation[i]["text"], "source": "cooking" if i < 4 else "finance"}
                for i in range(5)]
    planted += [{"id": "leak0-copy", "text": validation[0]["text"], "source": "finance"},
                {"id": "plain0", "text": base[0]["text"] + " plain"}, {"id": "plain1", "text": base[0]["text"] + " plain"}]
    pool = upload(live.api, base + planted, name="rejections-pool")
    val = upload(live.api, validation, name="rejections-validation")
    dedup = run(live, "dedup", {"pool": pool["id"], "method": "exact"})["result"]["manifest_id"]
    decon = run(live, "decontaminate", {"pool": pool["id"], "against": [val["id"]]})["result"]["manifest_id"]
    selection = run(live, "random", {"pool": pool["id"], "select": {"count": 10}, "restrict": [dedup, decon]})
    r = live.api.post(f"/v1/manifests/{decon}/export", json={"restrict": [dedup]})
    assert r.status_code == 202, r.text
    export = wait(live.api, r.json()["id"])
    assert export["state"] == "succeeded", export
    return {"pool": pool, "dedup": dedup, "decon": decon, "selection": selection, "export": export,
            "nc": len(cooking), "nf": len(finance)}


def rejections(live, manifest, **params):
    r = live.api.get(f"/v1/manifests/{manifest}/rejections", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def per_source(answer) -> dict:
    return {s["source"]: s for s in answer["by_source"]}


def test_a_restricted_selection_counts_each_filters_rejections_per_source(live, world):
    d, c, nc, nf = world["dedup"], world["decon"], world["nc"], world["nf"]
    man = world["selection"]["result"]["manifest_id"]
    assert live.api.get(f"/v1/manifests/{man}").json()["built_on"] == [d, c]
    got = rejections(live, man)
    assert [(f["manifest_id"], f["kind"], f["rejected"], f["excluded"]) for f in got["filters"]] == [
        (d, "dedup", 5 + 4 + 1, 5 + 4 + 1), (c, "decontaminate", 4 + 2, 4 + 1)]
    assert (got["pool"], got["survivors"], got["selected"]) == (nc + nf + 16, nc + nf + 1, 10)
    by = per_source(got)
    assert list(by) == ["cooking", "finance", None]
    expected = {"cooking": (nc + 9, nc, {d: 5, c: 4}, {d: 5, c: 4}),
                "finance": (nf + 5, nf, {d: 4, c: 2}, {d: 4, c: 1}),     # leak0-copy: dedup's first
                None: (2, 1, {d: 1, c: 0}, {d: 1, c: 0})}
    assert {s: (r["pool"], r["survivors"], r["rejected"], r["excluded"]) for s, r in by.items()} == expected
    assert sum(r["selected"] for r in by.values()) == 10 and all(r["selected"] <= r["survivors"] for r in by.values())
    # the same figures as the job's own record of what each manifest was the first to exclude
    assert world["selection"]["result"]["summary"]["excluded"] == {f["manifest_id"]: f["excluded"] for f in got["filters"]}
    # a job id names its manifest, as everywhere; the filters can be given in another order
    assert rejections(live, world["selection"]["id"]) == got
    swapped = per_source(rejections(live, man, restrict=[c, d]))
    assert swapped["finance"]["excluded"] == {c: 2, d: 3} and swapped["finance"]["rejected"] == {c: 2, d: 4}


def test_a_cleaning_manifest_is_its_own_filter(live, world):
    d, nc, nf = world["dedup"], world["nc"], world["nf"]
    got = rejections(live, d)
    assert [f["manifest_id"] for f in got["filters"]] == [d] and got["filters"][0]["rejected"] == 10
    assert {s: (r["pool"], r["rejected"][d], r["survivors"], r["selected"]) for s, r in per_source(got).items()} == {
        "cooking": (nc + 9, 5, nc + 4, nc + 4), "finance": (nf + 5, 4, nf + 1, nf + 1), None: (2, 1, 1, 1)}


def test_an_exports_pool_is_the_manifests_selected_documents(live, world):
    """The export of the decontamination's survivors restricted by the dedup: the pool is what the
    decontamination kept, and the dedup rejects its copies there (leak0-copy is contaminated)."""
    d, c, nc, nf = world["dedup"], world["decon"], world["nc"], world["nf"]
    export = world["export"]
    assert export["result"]["manifest_id"] == c and export["result"]["summary"]["built_on"] == [d]
    got = rejections(live, c, restrict=[d], selected_only="true")
    assert got["selected_only"] is True and got["survivors"] == export["result"]["summary"]["num_docs"]
    assert {s: (r["pool"], r["rejected"][d], r["survivors"]) for s, r in per_source(got).items()} == {
        "cooking": (nc + 5, 5, nc), "finance": (nf + 3, 3, nf), None: (2, 1, 1)}


def test_bad_rejection_requests_name_the_problem(live, world):
    other = upload(live.api, corpus(10, seed=53), name="rejections-other")
    elsewhere = run(live, "random", {"pool": other["id"], "select": {"count": 2}})["result"]["manifest_id"]
    d = world["dedup"]
    path = f"/v1/manifests/{d}/rejections"
    for params, status, field, words in (
            ({"restrict": [elsewhere]}, 422, "restrict.0", f"is over corpus {other['id']}, not {world['pool']['id']}"),
            ({"restrict": [d, "man_nope"]}, 404, "restrict.1", "no manifest has the id 'man_nope'"),
            ({"restrict": [d, d]}, 422, "restrict", f"restrict names manifest {d} twice"),
            ({"restrict": [d] * 17}, 422, "restrict", "at most 16 manifests")):
        r = live.api.get(path, params=params)
        err = r.json()["error"]
        assert r.status_code == status and err["details"]["field"] == field and words in err["message"], r.text
    assert live.api.get(path, headers={"Authorization": f"Bearer {KEY_BOB}"}).status_code == 404


# -- the dashboard ----------------------------------------------------------------------------------

def shown_rows(driver) -> dict[str, list[str]]:
    until(driver, lambda d: d.find_elements("css selector", "#rejections-table tbody tr"), what="the rejections table")
    return table_rows(driver, "#rejections-table", "data-source")


def test_the_dashboard_shows_a_selections_rejections_per_filter_and_source(browser, live, world):
    """The restricted selection's manifest page: what it was built on, a row per source (documents
    without a source as "(none)") and one for all of them, each filter's rejections with how many it
    rejected first, the survivors and the selected; and bars per source."""
    d, c, nc, nf = world["dedup"], world["decon"], world["nc"], world["nf"]
    man = world["selection"]["result"]["manifest_id"]
    sign_in(browser, live, KEY_ALICE)
    signed_in_as(browser, "alice")
    go(browser, live, f"#/manifests/{man}")
    rows = shown_rows(browser)
    assert text_of(browser, "#built-on") == f"{d}, {c}"
    assert list(rows) == ["cooking", "finance", NULL, ""]
    selected = {s: r["selected"] for s, r in per_source(rejections(live, man)).items()}   # random: not planted
    pct = lambda n, of: f"{n} {100 * n / of:.1f}%"   # noqa: E731
    assert rows["cooking"] == ["cooking", str(nc + 9), "5", "4", pct(nc, nc + 9), str(selected["cooking"])]
    assert rows["finance"] == ["finance", str(nf + 5), "4", "2 (1 first)", pct(nf, nf + 5), str(selected["finance"])]
    assert rows[NULL] == [NULL, "2", "1", "0", pct(1, 2), str(selected[None])]
    assert rows[""] == ["all sources", str(nc + nf + 16), "10", "6 (5 first)", pct(nc + nf + 1, nc + nf + 16), "10"]
    assert text_of(browser, "#rejections-headline") == (
        f"{nc + nf + 1} of {nc + nf + 16} documents survive all 2 filters "
        f"({100 * (nc + nf + 1) / (nc + nf + 16):.1f}%); 10 selected from them.")
    assert [li.get_attribute("data-filter") for li in browser.find_elements("css selector", "#rejections-filters li")] == [d, c]
    until(browser, lambda b: chart(b, "chart-rejections", "c.data.datasets.length") == 4, what="the rejection bars")
    assert chart(browser, "chart-rejections", "c.data.labels") == ["cooking", "finance", NULL]
    assert chart(browser, "chart-rejections", "c.data.datasets.map(s => s.label)") == [
        "pool", "rejected by dedup", "rejected by decontaminate", "survive all"]
    assert chart(browser, "chart-rejections", "c.data.datasets[2].data") == [4, 2, 0]
    shot(browser, "manifest-rejections")
    browser.execute_script("document.getElementById('manifest-rejections').scrollIntoView()")
    css_shot = SHOTS / "rejections.png"
    browser.find_element("css selector", "#manifest-rejections").screenshot(str(css_shot))


def test_the_dashboard_shows_a_cleaning_manifests_own_rejections_and_an_exports(browser, live, world):
    d, nc, nf = world["dedup"], world["nc"], world["nf"]
    go(browser, live, f"#/manifests/{d}")
    rows = shown_rows(browser)
    assert rows["cooking"][:3] == ["cooking", str(nc + 9), "5"] and len(rows["cooking"]) == 4   # no "selected" column
    assert text_of(browser, "#rejections-headline").startswith(f"{nc + nf + 6} of {nc + nf + 16} documents survive the filter")
    go(browser, live, f"#/jobs/{world['export']['id']}")
    rows = shown_rows(browser)
    assert rows["finance"][:3] == ["finance", str(nf + 3), "3"] and rows[""][1:3] == [str(nc + nf + 10), "9"]
    assert text_of(browser, "#rejections-table th:nth-child(2)") == "POOL (SELECTED)"
    shot(browser, "job-export-rejections")


def test_the_job_form_takes_several_manifests_for_restrict(browser, live, world):
    """A list of manifest ids (restrict) is a multiple select in the job form, not one id: the job
    is submitted with each manifest chosen, and its page shows their rejections."""
    from selenium.webdriver.support.ui import Select
    sign_in(browser, live, KEY_ALICE)
    signed_in_as(browser, "alice")
    go(browser, live, "#/jobs/new/random")
    until(browser, lambda d: d.find_elements("id", "form-random"), what="the random form")
    assert text_of(browser, '.field[data-field="restrict"] .type') == "manifest ids"
    Select(css(browser, "#f-pool")).select_by_value(world["pool"]["id"])
    css(browser, "#f-select").send_keys('{"count": 5}')
    restrict = Select(css(browser, "#f-restrict"))
    assert restrict.is_multiple
    for m in (world["dedup"], world["decon"]):
        restrict.select_by_value(m)
    css(browser, "#submit-job").click()
    until(browser, lambda d: "#/jobs/job_" in d.current_url, what="the job page")
    job = wait(live.api, browser.current_url.rsplit("/", 1)[1])
    assert job["state"] == "succeeded" and sorted(job["spec"]["restrict"]) == sorted([world["dedup"], world["decon"]])
    until(browser, lambda d: d.find_elements("css selector", "#job-rejections #rejections-table tbody tr"),
          what="the job's rejections")
    assert text_of(browser, "#rejections-headline").startswith(f"{world['nc'] + world['nf'] + 1} of ")
