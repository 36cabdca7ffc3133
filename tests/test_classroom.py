"""The classroom app: its page logic in plain pytest, then the Voilà app in real headless Chromium
(one visitor trains and moves σ; three visitors at once each see their own results). Screenshots
and the measured kernel memory are kept in test-artifacts/."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import ipywidgets as W
import pytest

import workbench as wb
from workbench.classroom import Classroom, POISONING_MODES

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
VISITOR_TARGETS = (3, 5, 8)  # the three simultaneous visitors' target classes
ATLAS_MODES = ({"poisoning": "clean-label"}, {"target_mode": "all-to-all"})


def _controls(page):
    return [w for w in _walk(page) if hasattr(w, "disabled") and not isinstance(w, W.IntProgress)]


def _walk(w):
    yield w
    for c in getattr(w, "children", ()):
        yield from _walk(c)


def test_page_before_any_run(digits):
    page = Classroom(digits, open_cached=False)
    assert page.run is None and page.smoothness is None
    assert page.attack.train_button.description == "Train"
    assert page.mode is page.attack.poisoning and page.mode.options == POISONING_MODES
    assert not page.mode.disabled and page.attack.target_mode.options == wb.poison.TARGET_MODES
    assert "dirty-label" in wb.classroom.EXPLAIN["attack"]
    assert "Train a model in step 2 first" in page._smooth_box.children[0].value
    before = {id(w): w.disabled for w in _controls(page)}
    with page.busy("testing…"):
        assert all(w.disabled for w in _controls(page))
        assert "paused" in page.status.value
    assert {id(w): w.disabled for w in _controls(page)} == before  # restored
    assert "Ready" in page.status.value


@pytest.mark.slow
def test_page_opens_cached_run_and_stays_busy_while_training(digits, digits_run):
    page = Classroom(digits)  # the default configuration is the cached demo run
    assert page.run is not None and page.run.attack_success_rate == digits_run.attack_success_rate
    assert "attack success rate" in page.attack.result.value
    assert page.smoothness.comparison is not None and page.landscape.landscapes is not None
    seen = []
    page.attack.progress.observe(lambda _c: seen.append(page.attack.rate.disabled
                                                        and page.designer.kind.disabled),
                                 names="value")
    page.smoothness.sigma_max.value = 0.4
    assert max(max(tr.x) for tr in page.smoothness.curves.data if tr.x is not None) == 0.4
    # step 4: σ for W does nothing while the map is coloured by class: disabled, and it stays
    # so through a training's pause (the page restores each control as it was)
    assert page.landscape.colour.value == "class" and page.landscape.sigma.disabled
    page.attack.train()
    assert seen and all(seen)  # every progress update came while the controls were disabled
    assert not page.attack.train_button.disabled and not page.designer.kind.disabled
    assert page.landscape.sigma.disabled
    page.landscape.colour.value = "entropy"
    assert not page.landscape.sigma.disabled


# ---------------------------------------------------------------------------------------------
# Voilà in Chromium


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def voila(tmp_path_factory, digits, digits_run):
    """`voila notebooks/classroom.ipynb` on a free port, with the session's run cache (warmed for
    the default configuration and the three visitors'); stopped with its kernels at the end."""
    import psutil

    for t in VISITOR_TARGETS:
        wb.train_backdoor(digits, trigger=wb.triggers.Patch(size=3), rate=0.05, target=t,
                          progress=False)
    for mode in ATLAS_MODES:  # the attack-atlas test's runs: a new trigger in two new modes
        # (the designer's FTrojan: its default magnitude for 16x16 images, written out)
        wb.train_backdoor(digits, trigger=wb.triggers.FTrojan().resolve(digits.image_shape),
                          rate=0.05, target=0, epochs=3, progress=False, **mode)
    wb.train_backdoor(digits, rate=0.0, progress=False)  # the clean model crafting starts from
    work = tmp_path_factory.mktemp("voila")
    port = _free_port()
    env = {**os.environ, "TQDM_DISABLE": "1", "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
           "JUPYTER_CONFIG_PATH": str(ROOT / "jupyter")}
    log = open(work / "voila.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "voila", str(ROOT / "notebooks" / "classroom.ipynb"), "--no-browser",
         f"--port={port}", "--Voila.ip=127.0.0.1", "--show_tracebacks=True"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    for _ in range(240):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("Voila did not start: " + (work / "voila.log").read_text()[-2000:])
    if proc.poll() is not None:
        pytest.fail("Voila exited: " + (work / "voila.log").read_text()[-2000:])
    server = psutil.Process(proc.pid)
    yield f"http://127.0.0.1:{port}/", server
    kernels = server.children(recursive=True)
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    for k in kernels:  # kernels the server did not stop
        if k.is_running():
            k.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


def _open(context, url):
    """Open the app in a new page; wait until the cached run is shown and the page is idle."""
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, timeout=180_000)
    page.wait_for_selector(".classroom", timeout=240_000)
    _wait_ready(page)
    return page, errors


def _wait_ready(page, timeout=240_000):
    page.wait_for_function(
        "() => { const s = document.querySelector('.classroom-status');"
        " return s && s.textContent.includes('Ready. Current model'); }", timeout=timeout,
        polling=500)


def _result(page):
    return page.locator(".classroom-step-2 .workbench-panel .widget-html").filter(
        has_text="attack success rate").first.inner_text()


def _watch_busy(page):
    """Record whether the Train button is ever disabled from now on. A cached run trains in well
    under a second, and a loaded browser may apply "disabled" and "enabled" in one go, so polling
    the button can miss the busy state; a MutationObserver sees every change."""
    page.evaluate(
        "() => { window.__trainWasDisabled = false;"
        " const root = document.querySelector('.classroom-step-2');"
        " new MutationObserver(records => { if (records.some(r => r.oldValue === null"
        "   && r.target.tagName === 'BUTTON' && r.target.textContent.includes('Train')))"
        "   window.__trainWasDisabled = true; })"  # oldValue null: the attribute was just added
        " .observe(root, {attributes: true, subtree: true, attributeOldValue: true,"
        "   attributeFilter: ['disabled']}); }")


def _curve_x(page):
    return page.locator(".classroom-step-3 .js-plotly-plot").first.evaluate(
        "el => el.data.map(t => Array.from(t.x || []))")


# anywidget gives a widget's JavaScript 2 s to load and then drops every later message to it;
# plotly's 5 MB module for six figures on a busy 2-core machine often takes longer. LiveFigure
# notices the missing answers and puts a fresh copy in place: the page keeps working (the tests
# check that the figures follow the controls), and this one error message is expected.
ANYWIDGET_TIMEOUT = "[anywidget] Failed to initialize model."


def _no_error(page, errors):
    text = page.inner_text("body")
    assert "Error displaying widget" not in text
    assert "Traceback" not in text
    assert not [e for e in errors if e != ANYWIDGET_TIMEOUT], errors


def _kernel_rss_mib(server):
    return sorted(p.memory_info().rss / 2**20 for p in server.children(recursive=True)
                  if "ipykernel" in " ".join(p.cmdline()))


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_classroom_in_browser_train_and_move_sigma(voila, browser, artifacts):
    url, server = voila
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page, errors = _open(context, url)
    assert page.locator(".classroom-step-1 .js-plotly-plot").count() >= 1
    assert "attack success rate" in _result(page)  # the cached default run, opened at once
    # step 1: a 2x2 checkerboard trigger
    page.locator(".classroom-step-1 select").first.select_option("Checkerboard")
    page.wait_for_timeout(500)
    before = _result(page)
    _watch_busy(page)
    page.locator(".classroom-step-2 button", has_text="Train").click()
    page.wait_for_function(
        "before => { const s = document.querySelector('.classroom-status');"
        " const r = [...document.querySelectorAll('.classroom-step-2 .widget-html')]"
        "   .map(e => e.textContent).find(t => t.includes('attack success rate'));"
        " return s.textContent.includes('Ready. Current model') && r && r !== before; }",
        arg=before, timeout=300_000, polling=500)
    result = _result(page)
    assert page.evaluate("() => window.__trainWasDisabled")  # busy while the kernel trained
    assert "attack success rate" in result
    asr = float(result.split("attack success rate")[1].split()[0])
    assert 0.0 <= asr <= 1.0
    rss = _kernel_rss_mib(server)
    (artifacts / "classroom-kernel-rss.txt").write_text(
        f"one visitor after opening the page and training: kernel RSS {rss} MiB\n")
    assert len(rss) == 1 and rss[0] < 3000
    # step 3: move the largest-σ slider as a person would; the curves redraw
    x0 = _curve_x(page)
    handle = page.locator(".classroom-step-3 .widget-slider", has_text="largest σ").locator(
        ".noUi-handle")
    handle.scroll_into_view_if_needed()
    handle.focus()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    # Two quick presses: the second change reaches the kernel while the first redraw computes.
    # The curves must end at the slider's final value (a stale plot here was a real bug).
    readout = page.locator(".classroom-step-3 .widget-slider", has_text="largest σ").locator(
        ".widget-readout")
    expected = round(max(max(x) for x in x0 if x) - 0.1, 2)
    try:
        page.wait_for_function(
            "want => { const el = document.querySelector('.classroom-step-3 .js-plotly-plot');"
            " const m = Math.max(...el.data.filter(t => t.x).map(t => Math.max(...t.x)));"
            " return Math.abs(m - want) < 1e-6; }", arg=expected, timeout=120_000, polling=500)
    except Exception:
        raise AssertionError(f"the curves did not follow the slider: readout {readout.inner_text()}, "
                             f"curves' largest σ {[max(x) for x in _curve_x(page) if x]}, "
                             f"expected {expected}") from None
    _wait_ready(page)
    assert readout.inner_text() == f"{expected:.2f}"
    assert handle.get_attribute("aria-valuenow") == f"{expected:g}"
    page.set_viewport_size({"width": 1400, "height": 3600})  # Voila scrolls inside its page
    page.wait_for_timeout(2500)
    page.screenshot(path=str(artifacts / "classroom.png"))
    with open(artifacts / "classroom-pageerrors.txt", "w") as f:
        f.write(f"one visitor: {errors}\n")
    _no_error(page, errors)
    context.close()


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_classroom_three_visitors_at_once(voila, browser, artifacts):
    url, server = voila
    contexts = [browser.new_context(viewport={"width": 1200, "height": 900}) for _ in VISITOR_TARGETS]
    pages = []
    for c in contexts:  # three visitors: three kernels, opened together
        p = c.new_page()
        errs = []
        p.on("pageerror", lambda e, errs=errs: errs.append(str(e)))
        p.goto(url, timeout=180_000, wait_until="commit")
        pages.append((p, errs))
    for p, _ in pages:
        p.wait_for_selector(".classroom", timeout=300_000)
        _wait_ready(p, timeout=300_000)
    for (p, _), t in zip(pages, VISITOR_TARGETS):  # each its own target, then Train in each
        p.locator(".classroom-step-2 .widget-dropdown", has_text="target").first.locator("select").select_option(
            label=f"{t}: {t}")
    for p, _ in pages:
        p.locator(".classroom-step-2 button", has_text="Train").click()
    for (p, errs), t in zip(pages, VISITOR_TARGETS):
        p.wait_for_function(
            "t => [...document.querySelectorAll('.classroom-step-2 .widget-html')]"
            ".some(e => e.textContent.includes('backdoor target class ' + t))",
            arg=str(t), timeout=300_000, polling=500)
        _wait_ready(p)
        result = _result(p)
        assert f"backdoor target class {t}" in result
        assert not any(f"backdoor target class {o}" in result for o in VISITOR_TARGETS if o != t)
        text = p.inner_text("body")
        assert "Error displaying widget" not in text and "Traceback" not in text
        assert p.locator(".classroom .js-plotly-plot").count() >= 6
        # Known: with three kernels starting at once on 2 busy cores, anywidget may log "Failed to
        # initialize model" for figures updated while Voila's page was connecting; recorded here.
        with open(artifacts / "classroom-three-visitors-pageerrors.txt", "a") as f:
            f.write(f"target {t}: {errs}\n")
    rss = _kernel_rss_mib(server)
    with open(artifacts / "classroom-kernel-rss.txt", "a") as f:
        f.write(f"three visitors at once, after training: kernel RSS {rss} MiB\n")
    assert len(rss) >= 3
    for c in contexts:
        c.close()


def _train_and_wait(page, text, timeout=240_000):
    """Press Train in step 2; wait until the result shows `text` and the page is idle again."""
    page.locator(".classroom-step-2 button", has_text="Train").click()
    page.wait_for_function(
        "want => { const s = document.querySelector('.classroom-status');"
        " return s.textContent.includes('Ready. Current model') &&"
        "  [...document.querySelectorAll('.classroom-step-2 .widget-html')]"
        "   .some(e => e.textContent.includes('attack success rate') && e.textContent.includes(want)); }",
        arg=text, timeout=timeout, polling=500)
    return _result(page)


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_classroom_in_browser_attack_atlas(voila, browser, artifacts):
    """A crafted trigger (TrojanNN: Craft, with its progress bar), a new trigger (FTrojan) with its own
    controls, clean-label poisoning and an all-to-all attack, in the browser (the runs are warmed
    in the fixture, 3 epochs each: Train opens them from the cache)."""
    url, _server = voila
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page, errors = _open(context, url)
    step1 = page.locator(".classroom-step-1")
    kind = step1.locator("select").first
    # TrojanNN: crafted on the clean model with progress; only its own controls are shown
    kind.select_option("TrojanNN")
    page.wait_for_function("() => document.querySelector('.classroom-step-1').textContent"
                           ".includes('press Craft')", timeout=60_000, polling=250)
    step1.locator(".widget-slider", has_text="neurons").wait_for(state="visible", timeout=30_000)
    step1.locator(".widget-slider", has_text="magnitude").wait_for(state="hidden", timeout=30_000)
    steps = step1.locator(".widget-slider:visible", has_text="steps")  # Home: the fewest steps, 10
    steps.locator(".noUi-handle").focus()
    page.keyboard.press("Home")
    page.wait_for_function("() => [...document.querySelectorAll('.classroom-step-1 .widget-slider')]"
                           ".some(s => s.textContent.includes('steps') &&"
                           " s.querySelector('.widget-readout').textContent.trim() === '10')",
                           timeout=30_000, polling=250)
    step1.locator("button", has_text="Craft").click()
    page.wait_for_function(
        "() => { const s = document.querySelector('.classroom-status');"
        " return document.querySelector('.classroom-step-1').textContent.includes('TrojanNN(')"
        "  && s.textContent.includes('Ready'); }", timeout=180_000, polling=500)
    bar = step1.locator(".progress-bar")
    assert bar.evaluate("b => b.style.width") == "100%"
    assert not step1.locator("button", has_text="Craft").is_disabled()
    # FTrojan: a new trigger, with its own controls; then clean-label poisoning
    kind.select_option("FTrojan")
    page.wait_for_function("() => document.querySelector('.classroom-step-1').textContent"
                           ".includes('FTrojan(block_size=4')", timeout=60_000, polling=250)
    step1.locator(".widget-slider", has_text="magnitude").wait_for(state="visible", timeout=30_000)
    step1.locator(".widget-slider", has_text="neurons").wait_for(state="hidden", timeout=30_000)
    step2 = page.locator(".classroom-step-2")
    epochs = step2.locator(".widget-slider", has_text="epochs")  # 3 epochs: quick runs
    epochs.locator(".noUi-handle").focus()
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    page.wait_for_function("() => [...document.querySelectorAll('.classroom-step-2 .widget-slider')]"
                           ".some(s => s.textContent.includes('epochs') &&"
                           " s.querySelector('.widget-readout').textContent.trim() === '3')",
                           timeout=30_000, polling=250)
    step2.locator(".widget-dropdown", has_text="dirty-label").locator("select").select_option(
        "clean-label")
    result = _train_and_wait(page, "clean-label: of the target class")
    assert "backdoor target class 0" in result
    # all-to-all (dirty-label): ASR per shifted label; steps 3 and 4 follow
    step2.locator(".widget-dropdown", has_text="clean-label").locator("select").select_option(
        "dirty-label")
    step2.locator(".widget-dropdown", has_text="all-to-one").locator("select").select_option(
        "all-to-all")
    result = _train_and_wait(page, "all-to-all")
    assert "each class y → y + 1" in result and "own label y + 1 mod 10" in result
    page.wait_for_function(
        "() => document.querySelector('.classroom-step-3').textContent.includes('every class')"
        " && document.querySelector('.classroom-step-4').textContent.includes(\"attack's label\")",
        timeout=120_000, polling=500)
    assert "→" in page.locator(".classroom-step-2 .js-plotly-plot").first.inner_text()
    page.set_viewport_size({"width": 1400, "height": 3600})
    page.wait_for_timeout(1500)
    page.screenshot(path=str(artifacts / "classroom-attack-atlas.png"))
    _no_error(page, errors)
    context.close()
