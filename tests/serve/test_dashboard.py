"""The dashboard at `/` (toy 'spell' modality): versions with their split, current and candidate marks,
request rate / latency / feedback per version, the newest compare table and plot, drift status, escaping,
the API key; and a headless-Chromium screenshot of the page a real server renders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from mmadapt.engine.artifact import read_manifest
from mmadapt.govern.compare import COST_COLUMNS, CompareResult, rank_rows, write_report
from mmadapt.govern.livelog import write_drift
from mmadapt.recipe import load_recipe
from mmadapt.serve.app import create_app
from mmadapt.serve.dashboard import recipe_view
from tests.serve.conftest import LiveServer, chat


def write_compare(rdir, recipe_path) -> None:
    """A compare report of the two served versions, written by compare's own writer (report.json + .png)."""
    recipe = load_recipe(recipe_path)
    rows = []
    for version, label in (("v0001", "prompt[suffix='']"), ("v0002", "prompt[suffix='!']")):
        manifest = read_manifest(rdir / version)
        row = {"stack": "prompt", "label": label, "version": f"spell/{version}"}
        for metric, value in manifest["metrics"].items():
            row[metric], row[f"{metric}_ci"] = value, manifest["ci95"][metric]
        row.update({k: manifest["costs"].get(k) for k in COST_COLUMNS})
        rows.append(row)
    rank_rows(rows, "exact", {"edits"})
    report_dir = rdir / "compare" / "20261202-000000"
    report_dir.mkdir(parents=True)
    write_report(CompareResult(rows, report_dir, "exact"), recipe)


def _traffic(client) -> None:
    for n in range(12):
        body = client.post("/v1/chat/completions", json=chat("zeta", user=f"user{n}")).json()
        client.post("/v1/feedback", json={"id": body["id"], "score": 1 if body["model"].endswith("v0002") else 0})
    client.post("/v1/chat/completions", json=chat("<script>alert(1)</script>", user="x"))


def test_the_dashboard_shows_versions_split_traffic_feedback_compare_and_drift(spell_runs):
    rdir = spell_runs["rdir"]
    write_compare(rdir, spell_runs["recipe"])
    write_drift(rdir, {"n_new": 13, "n_train": 40, "signals": [{"name": "oov_rate", "value": 0.4, "threshold": 0.1, "drifted": True}]})
    app = create_app([rdir], split={"spell": {"v0001": 50, "v0002": 50}})
    with TestClient(app) as client:
        _traffic(client)
        page = client.get("/")
        view = recipe_view("spell", rdir, app.state.router, time.time())
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    rows = {v["version"]: v for v in view["versions"]}
    assert rows["v0002"]["states"] == ["current", "split 50%", "loaded"] and rows["v0001"]["states"] == ["split 50%", "loaded"]
    assert sum(r["requests"] for r in rows.values()) == 13 and sum(r["feedback_n"] for r in rows.values()) == 12
    assert rows["v0002"]["feedback_mean"] == 1.0 and rows["v0001"]["feedback_mean"] == 0.0
    assert rows["v0002"]["p50_ms"] is not None and rows["v0002"]["per_minute"] > 0
    assert '<table class="versions">' in html and "v0001" in html and "split 50%" in html and "feedback mean" in html
    assert '<table class="compare">' in html and "20261202-000000" in html
    assert '<img class="plot"' in html and "data:image/png;base64,iVBOR" in html  # the compare plot, inlined
    assert "DRIFT (oov_rate)" in html
    assert "<script>" not in html  # nothing from a request reaches the page unescaped; no script at all
    logged = [json.loads(line) for line in (rdir / "serve" / "requests.jsonl").read_text().splitlines()]
    assert any(e["input"]["messages"][0]["content"].startswith("<script>") for e in logged)


def test_the_dashboard_without_a_report_or_drift_says_what_to_run_and_needs_the_key(spell_runs):
    with TestClient(create_app([spell_runs["rdir"]], api_key="k")) as client:
        assert client.get("/").status_code == 401
        html = client.get("/", headers={"Authorization": "Bearer k"}).text
    assert "no compare report yet" in html and "drift: not checked yet" in html and "candidate none" in html


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.slow  # a uvicorn server and two chromium runs (~10 s)
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (.ci/run installs the Debian package `chromium`)")
def test_headless_chromium_renders_the_versions_table_and_the_compare_plot(spell_runs, tmp_path):
    from PIL import Image

    rdir = spell_runs["rdir"]
    write_compare(rdir, spell_runs["recipe"])
    app = create_app([rdir], split={"spell": {"v0001": 50, "v0002": 50}})
    shot = tmp_path / "dashboard.png"
    with LiveServer(app) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            _traffic(client)
        common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
        dom = subprocess.run([*common, "--dump-dom", server.url + "/"], capture_output=True, text=True, timeout=120)
        subprocess.run([*common, "--window-size=1200,1400", f"--screenshot={shot}", server.url + "/"],
                       capture_output=True, timeout=120, check=True)
    assert '<table class="versions">' in dom.stdout and '<img class="plot"' in dom.stdout  # what chromium rendered
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 1400)
    colors = image.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text, tables and the plot, not a blank page
    # the plot sits below the tables: the lower half of the page holds more than the background
    lower = image.crop((0, 600, 1200, 1400)).getcolors(maxcolors=1 << 20)
    assert lower is not None and len(lower) > 20
    if os.environ.get("MMADAPT_DASHBOARD_SHOT"):  # how docs/dashboard.png was made (README)
        shutil.copyfile(shot, os.environ["MMADAPT_DASHBOARD_SHOT"])
