"""Make the README's screenshots from the current app, in headless Chromium (the machinery of the
browser tests: Playwright driving Debian's /usr/bin/chromium, see tests/test_classroom.py and
tests/test_browser.py).

    .venv/bin/python docs/make_screenshots.py [--only classroom clean-label explorer] [--out docs/img]

* classroom.png: the classroom app (`make app`: notebooks/classroom.ipynb in Voilà) as a visitor
  first sees it, the whole page: the default configuration opens from the run cache (trained
  first when it is not there: about 10-70 s on 2 cores).
* classroom-clean-label.png: its step 2 with clean-label poisoning chosen (the note beside the
  mode).
* smoothness-explorer.png: the smoothness explorer of notebooks/02_backdoor_smoothing.ipynb in
  JupyterLab after "run all cells".

Runs use the project's data folder (`$WORKBENCH_DATA`, else data/), so cached runs open at once.
Nothing else is written than the PNGs (JupyterLab runs a copy of the notebook in a temporary
folder). Each image takes 1-5 minutes on a loaded 2-core machine, mostly the kernel's start and
plotly's first draw.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WIDTH = 1400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, log: Path, what: str, seconds: float = 180):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{what} did not start:\n{log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _warm_classroom_run() -> None:
    """The classroom's default configuration, in the run cache (the page opens it on load)."""
    import workbench as wb
    from workbench.classroom import Classroom

    data = wb.load_dataset("digits")
    page = Classroom(data, open_cached=False)
    wb.train_backdoor(data, trigger=page.designer.trigger, progress=False,
                      **page.attack.settings())


def _page_height(page, selector: str) -> int:
    return int(page.evaluate(
        "sel => { const r = document.querySelector(sel).getBoundingClientRect();"
        " return r.bottom + window.scrollY; }", selector)) + 24


def classroom(browser, out: Path, which: set[str]) -> list[Path]:
    _warm_classroom_run()
    work = Path(tempfile.mkdtemp(prefix="screenshots-voila-"))
    port = _free_port()
    env = {**os.environ, "TQDM_DISABLE": "1", "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
           "JUPYTER_CONFIG_PATH": str(ROOT / "jupyter")}
    log = work / "voila.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "voila", str(ROOT / "notebooks" / "classroom.ipynb"),
         "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1"],
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT)
    made = []
    try:
        _wait_port(port, proc, log, "Voilà")
        context = browser.new_context(viewport={"width": WIDTH, "height": 1000})
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{port}/", timeout=300_000)
        page.wait_for_selector(".classroom", timeout=300_000)
        page.wait_for_function(
            "() => { const s = document.querySelector('.classroom-status');"
            " return s && s.textContent.includes('Ready. Current model'); }",
            timeout=300_000, polling=500)
        # every figure drawn (Voilà scrolls inside its page: a viewport as tall as the page)
        page.set_viewport_size({"width": WIDTH, "height": _page_height(page, ".classroom")})
        page.wait_for_function("() => document.querySelectorAll('.classroom .js-plotly-plot')"
                               ".length >= 6", timeout=120_000, polling=500)
        page.wait_for_timeout(3000)
        text = page.inner_text("body")
        if "Error displaying widget" in text or "Traceback" in text:
            raise SystemExit("the classroom page shows an error; no screenshot taken")
        if "classroom" in which:
            path = out / "classroom.png"
            page.screenshot(path=str(path), clip={"x": 0, "y": 0, "width": WIDTH,
                                                  "height": _page_height(page, ".classroom")})
            made.append(path)
        if "clean-label" in which:
            page.locator(".classroom-step-2 .widget-dropdown", has_text="dirty-label").locator(
                "select").select_option("clean-label")
            page.wait_for_selector(".classroom-step-2 .workbench-mode-note", state="visible",
                                   timeout=60_000)
            page.wait_for_timeout(1000)
            path = out / "classroom-clean-label.png"
            page.locator(".classroom-step-2").screenshot(path=str(path))
            made.append(path)
        context.close()
    finally:
        _stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    return made


def explorer(browser, out: Path) -> list[Path]:
    """notebooks/02 in JupyterLab, run all, its smoothness explorer (the last panel)."""
    import secrets

    nb = ROOT / "notebooks" / "02_backdoor_smoothing.ipynb"
    work = Path(tempfile.mkdtemp(prefix="screenshots-lab-"))
    nbdir = work / "notebooks"
    nbdir.mkdir()
    shutil.copy(nb, nbdir / nb.name)  # JupyterLab saves outputs into the file it runs
    settings = work / "settings"
    for plugin, value in {
            "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
            "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                            "checkForUpdates": False}}.items():
        f = settings / f"{plugin}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(value))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings), "TQDM_DISABLE": "1",
           "JUPYTER_RUNTIME_DIR": str(work / "runtime"), "JUPYTER_CONFIG_PATH": str(ROOT / "jupyter")}
    log = work / "lab.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
         f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={nbdir}",
         "--LabApp.expose_app_in_browser=True"],
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        _wait_port(port, proc, log, "JupyterLab")
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        page = browser.new_page(viewport={"width": WIDTH, "height": 1700})  # the whole panel
        page.goto(f"{url}/lab/workspaces/shots/tree/{nb.name}?token={token}&reset",
                  timeout=120_000)
        page.wait_for_selector(".jp-Notebook", timeout=120_000)
        page.wait_for_function("() => window.jupyterapp?.shell.currentWidget?.sessionContext"
                               "?.session?.kernel?.status === 'idle'", timeout=180_000)
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        n_code = sum(1 for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        page.wait_for_function(
            f"""() => {{
                const done = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                    .filter(p => /^\\[\\d+\\]:$/.test(p.textContent.trim())).length;
                const k = window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel;
                return done >= {n_code} && !!k && k.status === 'idle';
            }}""", timeout=600_000, polling=1000)
        page.wait_for_timeout(3000)
        text = page.inner_text(".jp-Notebook")
        if "Error displaying widget" in text or "Traceback" in text:
            raise SystemExit("notebook 02 shows an error; no screenshot taken")
        panel = page.locator(".workbench-panel").last
        panel.scroll_into_view_if_needed()
        page.wait_for_timeout(1500)
        path = out / "smoothness-explorer.png"
        panel.screenshot(path=str(path))
        page.close()
        return [path]
    finally:
        _stop(proc)
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="docs/make_screenshots.py", description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=["classroom", "clean-label", "explorer"],
                   default=["classroom", "clean-label", "explorer"])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    a = p.parse_args(argv)
    if not Path(a.chromium).exists():
        raise SystemExit(f"Chromium not found at {a.chromium} (apt-get install chromium)")
    os.environ.setdefault("TQDM_DISABLE", "1")
    a.out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    made = []
    t0 = time.perf_counter()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=a.chromium, args=CHROMIUM_ARGS)
        try:
            which = set(a.only)
            if which & {"classroom", "clean-label"}:
                made += classroom(browser, a.out, which)
            if "explorer" in which:
                made += explorer(browser, a.out)
        finally:
            browser.close()
    for path in made:
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    print(f"{len(made)} screenshots in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
