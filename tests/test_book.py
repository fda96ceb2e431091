"""The smoke book, built for real and read in headless Chromium with the network blocked."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHAPTERS = {  # page -> number of charts it must draw at the smoke preset (2 tasks)
    "index.html": 0,
    "book/executed/methods.html": 2,  # the upstream learning curves (standard, robust)
    "book/executed/calibration.html": 1,  # the upstream models' learning curves
    "book/executed/differences.html": 0,
    "book/executed/rq1_robustness_during_finetuning.html": 2,
    "book/executed/rq2_strategies_and_complexity.html": 4,
    "book/executed/rq3_ood_robustness.html": 2,  # a scatter per task
    # selection gains, an interpolation chart per task, one per robust task (digits)
    "book/executed/remedies.html": 4,
    "book/executed/takeaways.html": 0,
}


def _copy_sources(dest: Path) -> None:
    """The repository's tracked files (what a fresh clone has), without builds or results."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    if os.environ.get("RTLIB_TEST_BOOK_HTML"):  # an already built book, to iterate on the test
        return Path(os.environ["RTLIB_TEST_BOOK_HTML"])
    work = tmp_path_factory.mktemp("book")
    _copy_sources(work)
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "rtlib", "book", "-p", "preset", "smoke", "-p", "results_dir",
         str(work / "results")], cwd=work, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(work)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"smoke book built in {time.time() - t0:.0f} s")
    return work / "_build" / "html"


@pytest.fixture(scope="module")
def served(smoke_book):
    """The built book over HTTP on the loopback interface, as a reader's browser gets it."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(smoke_book))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage",
                 # No network: every http(s) request goes to a dead proxy and fails loudly.
                 "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                 "--window-size=1280,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def _marks(driver) -> list[int]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.vega-embed')).map(e => "
        "e.querySelectorAll('svg .role-mark path, svg .role-mark line, svg .role-mark rect,"
        " svg .role-mark text').length)")


@pytest.mark.parametrize("page", list(CHAPTERS))
def test_chapter_loads_offline_without_console_errors(smoke_book, served, browser, page):
    assert (smoke_book / page).is_file(), page
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(f"{served}/{page}")
    deadline = time.time() + 30
    while time.time() < deadline and not (
            browser.execute_script("return document.readyState") == "complete"
            and (page != "index.html" or browser.current_url.endswith("intro.html"))):
        time.sleep(0.1)  # index.html redirects to the introduction
    marks = _marks(browser)
    while time.time() < deadline and (len(marks) < CHAPTERS[page] or not all(marks)):
        time.sleep(0.25)
        marks = _marks(browser)
    assert len(marks) == CHAPTERS[page], marks
    assert all(m > 0 for m in marks), f"a chart drew no marks: {marks}"
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
              and "favicon.ico" not in e["message"]]  # the browser's own request
    assert not errors, errors
    shown = browser.execute_script("return document.body.innerText")
    assert "Error loading script" not in shown and "Javascript Error" not in shown
    # Each chart links the data it draws, as CSV files the built book serves.
    links = browser.execute_script(
        "return [...document.querySelectorAll('p.figure-data a')].map(a => a.href)")
    assert len(links) >= CHAPTERS[page]
    for link in links:
        path = smoke_book / link.removeprefix(f"{served}/")
        assert path.is_file() and path.read_text().count("\n") > 1, link


def test_scorecard_table_is_present(served, browser):
    browser.get(f"{served}/book/executed/takeaways.html")
    headers = browser.execute_script(
        "return Array.from(document.querySelectorAll('table th')).map(t => t.textContent.trim())")
    assert {"claim", "paper", "ours", "verdict", "rule"} <= set(headers)
    cells = browser.execute_script(
        "return Array.from(document.querySelectorAll('table td')).map(t => t.textContent.trim())")
    from rtlib.report.verdicts import OUTCOMES

    verdicts = [c for c in cells if c in OUTCOMES]
    assert len(verdicts) >= 7  # RQ1, four of RQ2, two of RQ3
    assert "partly" not in cells  # the old fourth outcome, read from point estimates


def test_a_rebuild_from_a_complete_store_executes_chapters_at_once(smoke_book, tmp_path,
                                                                   capfd):
    """Once the store holds every run (a committed study, a second build), the chapters only
    read and draw: they run one per core, and compute nothing. Their kernels talk over
    sockets of their own (no TCP warning on the console, no crossed messages)."""
    import json

    from rtlib.report import book

    params = {"preset": "smoke", "results_dir": str(smoke_book.parents[1] / "results")}
    assert book.missing_runs(params) == 0
    # An empty store lacks each run once, the OOD chapter's task among the study's included.
    runs = book.chapter_runs(params)
    expected = {(t, s, seed) for t in runs.tasks + runs.ood_tasks for s in runs.strategies
                for seed in runs.seeds}
    empty = {**params, "results_dir": str(tmp_path / "empty")}
    assert book.missing_runs(empty, remedies=False) == len(expected)
    # ... and, for the remedies chapter, a path per fine-tuned run of the study's tasks and the
    # runs from the robust upstream model.
    paths = len(runs.tasks) * (len(runs.strategies) - 1) * len(runs.seeds)
    robust = len(runs.robust_tasks) * len(runs.strategies) * len(runs.seeds)
    assert runs.robust_tasks and book.missing_runs(empty) == len(expected) + paths + robust
    # Another source domain: the OOD chapter's task fine-tuned on it, every strategy and seed.
    outline = book.missing_work({**params, "domain": "outline"})
    assert len(outline) == len(runs.ood_tasks) * len(runs.strategies) * len(runs.seeds)
    assert {c.domain for c in outline} == {"outline"}
    assert book.rerun_cost({**params, "domain": "outline"}).startswith(f"{len(outline)} new runs")
    written = book.execute(["rq3_ood_robustness", "takeaways"], params, output_dir=tmp_path,
                           progress=False, jobs=2)
    # takeaways starts first (book.SLOWEST_FIRST); the pages come back in the order asked
    assert [p.stem for p in written] == ["rq3_ood_robustness", "takeaways"]
    assert set(book.SLOWEST_FIRST) <= {p.stem for p in book.notebooks()}
    for path in written:
        cells = json.loads(path.read_text())["cells"]
        outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"], path.name
        text = json.dumps(outputs)
        assert "0 trained now" in text and "read from the store" in text, path.name
    console = capfd.readouterr().err
    assert "running over TCP" not in console and "Invalid Signature" not in console, console


#: What a page's content may not cross (the theme's article column at a 1280 px window).
OVERFLOW_JS = """
const article = document.querySelector('article.bd-article') || document.body;
const right = article.getBoundingClientRect().right;
return [...article.querySelectorAll('table, .vega-embed, img')].filter(e => {
  const r = e.getBoundingClientRect();
  return r.right > right + 1 || e.scrollWidth > e.clientWidth + 1;
}).map(e => [e.tagName, Math.round(e.getBoundingClientRect().right - right),
             (e.innerText || '').slice(0, 60)]);
"""


@pytest.mark.parametrize("page", [p for p in CHAPTERS if p != "index.html"])
def test_no_table_or_chart_runs_off_the_page_at_1280_px(served, browser, page):
    browser.set_window_size(1280, 2000)
    browser.get(f"{served}/{page}")
    deadline = time.time() + 30
    while time.time() < deadline and len(_marks(browser)) < CHAPTERS[page]:
        time.sleep(0.25)
    time.sleep(0.5)  # the last chart's layout
    assert browser.execute_script(OVERFLOW_JS) == []


LEGEND_JS = """
const charts = [...document.querySelectorAll('.vega-embed')].filter(v =>
  [...v.querySelectorAll('.role-legend-title text')].some(t => t.textContent === 'strategy'));
return charts.length;
"""
STATE_JS = """
const v = [...document.querySelectorAll('.vega-embed')].filter(v =>
  [...v.querySelectorAll('.role-legend-title text')].some(t => t.textContent === 'strategy'))[arguments[0]];
return [...v.querySelectorAll('.role-mark path, .role-mark line, .role-mark symbol, .role-mark rect')]
  .map(e => e.getAttribute('opacity') || e.style.opacity || '1').join(',');
"""
SYMBOL_JS = """
const v = [...document.querySelectorAll('.vega-embed')].filter(v =>
  [...v.querySelectorAll('.role-legend-title text')].some(t => t.textContent === 'strategy'))[arguments[0]];
const legend = [...v.querySelectorAll('.role-legend')].find(l =>
  [...l.querySelectorAll('.role-legend-title text')].some(t => t.textContent === 'strategy'));
return legend.querySelector('.role-legend-symbol path');
"""


@pytest.mark.parametrize("page", [p for p in CHAPTERS if CHAPTERS[p]])
def test_every_strategy_legend_toggles_its_chart(served, browser, page):
    from selenium.webdriver.common.action_chains import ActionChains

    browser.get(f"{served}/{page}")
    deadline = time.time() + 30
    while time.time() < deadline and len(_marks(browser)) < CHAPTERS[page]:
        time.sleep(0.25)
    for k in range(browser.execute_script(LEGEND_JS)):
        before = browser.execute_script(STATE_JS, k)
        symbol = browser.execute_script(SYMBOL_JS, k)
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", symbol)
        ActionChains(browser).move_to_element(symbol).click().perform()
        time.sleep(0.5)
        assert browser.execute_script(STATE_JS, k) != before, f"{page}: legend {k} does nothing"
