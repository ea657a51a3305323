#!/usr/bin/env python3
"""Runs web/test/index.html and the page web/index.html in headless Chromium and checks them.

Serves the repository over HTTP on localhost, starts ChromeDriver, opens the test page with the
browser settings in webdriver.json (WebGPU on), waits for `window.testOutcome`, and checks it: every
check the page made passed, a bad model's error message is the one line the CLI prints for the
same bytes, and the benchmark's report has exactly the keys of `resgraph bench --json`. Then it
uses the real page as a person would: it runs the built-in residual MLP and a small benchmark by
clicking, and checks what the page shows (and saves a screenshot with --screenshot). Exits
non-zero on any failure, and when the browser has no WebGPU adapter.

With --benchmark OPTIONS (the JSON object `Engine.benchmark` takes), it runs only that benchmark in
the browser (web/test/bench.html) and prints its report, one JSON line as `resgraph bench --json`.

Usage: drive.py [--resgraph target/release/resgraph] [--timeout 600] [--screenshot page.png]
       drive.py --benchmark '{"width": 512, "depth": 8, "batch": 1, "iters": 100}'
Standard library only; needs web/pkg (web/build.sh), chromedriver and the built CLI.
"""

import argparse
import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(root):
    handler = functools.partial(QuietHandler, directory=root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def webdriver(port, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["value"]


def script(port, session, text, *arguments):
    return webdriver(port, "POST", f"/session/{session}/execute/sync",
                     {"script": text, "args": list(arguments)})


def wait_for(port, session, text, timeout, what):
    """Polls the page's script `text` until it returns something other than null."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = script(port, session, text)
        if value is not None:
            return value
        time.sleep(0.5)
    log = script(port, session, "const log = document.getElementById('log');"
                 " return log ? log.textContent : '';")
    raise SystemExit(f"the page did not {what} within {timeout:.0f} s" + (f":\n{log}" if log else ""))


# The page's script that returns the run section's table cells, its error, or null while neither
# is there yet.
RUN_RESULT = """
    const cells = document.querySelectorAll('#run-result td');
    const error = document.querySelector('#run-result .error');
    if (error) return {error: error.textContent};
    return cells.length ? Array.from(cells, (cell) => cell.textContent) : null;"""


def use_the_page(port, session, base, timeout, screenshot):
    """Clicks through web/index.html; returns the checks as (ok, name, detail)."""
    webdriver(port, "POST", f"/session/{session}/url", {"url": f"{base}/web/index.html"})
    adapter = wait_for(port, session, """
        const text = document.getElementById('adapter').textContent;
        return text.startsWith('Opening') ? null : text;""", timeout, "open the adapter")
    checks = [(adapter.startswith("Adapter: "), "the page opens the adapter", adapter)]
    script(port, session, """
        const set = (id, value) => { document.getElementById(id).value = value; };
        set('mlp-width', 48); set('mlp-depth', 3); set('run-batch', 5); set('run-count', 3);
        set('bench-width', 64); set('bench-depth', 2); set('bench-batch', 8);
        set('bench-iters', 4); set('bench-warmup', 1);
        document.getElementById('run').click();""")
    run = wait_for(port, session, RUN_RESULT, timeout, "show a run's result")
    checks.append(("error" not in run and "[5, 48]" in run, "Run shows the output's shape",
                   run))
    checks.append(("error" not in run and any("ms (median of 3" in cell for cell in run),
                   "Run shows the time per inference", run))
    # A photo classified by a ResNet file, both chosen in the page's file inputs, as a user would.
    for element_id, path in (("model-file", "tests/data/onnx_resnet/"
                              "resnet18_torchscript_opset17_w4_29x32.onnx"),
                             ("photo-file", "tests/data/classify/wide_61x47.png")):
        element = webdriver(port, "POST", f"/session/{session}/element",
                            {"using": "css selector", "value": f"#{element_id}"})
        element = next(iter(element.values()))
        webdriver(port, "POST", f"/session/{session}/element/{element}/value",
                  {"text": os.path.join(ROOT, path)})
    script(port, session, """
        document.getElementById('run-result').textContent = '';
        document.querySelector('input[name=source][value=file]').checked = true;
        document.getElementById('run-batch').value = 1;
        document.getElementById('run').click();""")
    photo = wait_for(port, session, RUN_RESULT, timeout, "show a photo's classes")
    # torchvision's top class for this photo is 8, with 14.65% (tests/data/classify).
    checks.append(("error" not in photo and "14.65%" in photo and "class 8" in photo,
                   "Run classifies a photo with a ResNet file", photo))
    script(port, session, "document.getElementById('bench').click();")
    bench = wait_for(port, session, """
        const error = document.querySelector('#bench-result .error');
        if (error) return {error: error.textContent};
        const raw = document.querySelector('#bench-result pre');
        return raw ? JSON.parse(raw.textContent) : null;""", timeout, "show a benchmark")
    checks.append(("error" not in bench and bench.get("iters") == 4
                   and bench.get("width") == 64 and bench.get("max_rel_err", 1) <= 1e-5,
                   "Benchmark shows bench's report", json.dumps(bench)[:200]))
    if screenshot:
        import base64
        webdriver(port, "POST", f"/session/{session}/window/rect", {"width": 1100, "height": 2000})
        image = webdriver(port, "GET", f"/session/{session}/screenshot")
        with open(screenshot, "wb") as file:
            file.write(base64.b64decode(image))
    return checks


def cli_error(resgraph, name, contents):
    """What `resgraph inspect` prints for a model file `name` holding `contents`."""
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, name), "wb") as file:
            file.write(contents)
        done = subprocess.run(
            [resgraph, "inspect", name], cwd=folder, capture_output=True, text=True
        )
    prefix = "resgraph: error: "
    lines = [line for line in done.stderr.splitlines() if line.startswith(prefix)]
    if done.returncode == 0 or not lines:
        raise SystemExit(f"the CLI accepted the bad model, or printed no error: {done.stderr}")
    return lines[0][len(prefix):]


def cli_bench_keys(resgraph):
    """The keys of `resgraph bench --json` with --check, on a tiny synthetic MLP."""
    with tempfile.TemporaryDirectory() as cache:
        environment = dict(os.environ, RESGRAPH_CACHE_DIR=cache)
        done = subprocess.run(
            [resgraph, "bench", "--width", "32", "--depth", "2", "--batch", "4", "--iters", "2",
             "--warmup", "1", "--check", "--json"],
            capture_output=True, text=True, env=environment, check=True,
        )
    return sorted(json.loads(done.stdout.strip().splitlines()[-1]).keys())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resgraph", default=os.path.join(ROOT, "target/release/resgraph"))
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--screenshot", help="save the page, after its benchmark, as this PNG")
    parser.add_argument("--benchmark", metavar="OPTIONS",
                        help="only run Engine.benchmark with these JSON options; print its report")
    args = parser.parse_args()
    # The CLI runs in a folder of its own (so that its error names the file as the page does).
    args.resgraph = os.path.abspath(args.resgraph)
    if not os.path.exists(os.path.join(ROOT, "web/pkg/resgraph_web.js")):
        raise SystemExit("web/pkg is missing: run web/build.sh first")
    chromedriver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromedriver:
        raise SystemExit("chromedriver not found (Debian: apt-get install chromium-driver)")
    with open(os.path.join(ROOT, "webdriver.json")) as file:
        capabilities = json.load(file)

    server = serve(ROOT)
    port = free_port()
    driver = subprocess.Popen(
        [chromedriver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    session = None
    started = time.monotonic()
    try:
        for _ in range(100):
            try:
                webdriver(port, "GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        session = webdriver(port, "POST", "/session",
                            {"capabilities": {"alwaysMatch": capabilities}})["sessionId"]
        base = f"http://127.0.0.1:{server.server_address[1]}"
        if args.benchmark is not None:
            options = urllib.parse.quote(json.dumps(json.loads(args.benchmark)))
            webdriver(port, "POST", f"/session/{session}/url",
                      {"url": f"{base}/web/test/bench.html#{options}"})
            outcome = wait_for(port, session, "return window.benchOutcome || null;",
                               args.timeout, "finish the benchmark")
            if "error" in outcome:
                print(f"resgraph (browser): error: {outcome['error']}", file=sys.stderr)
                return 1
            print(json.dumps(outcome["report"]))
            return 0
        webdriver(port, "POST", f"/session/{session}/url", {"url": f"{base}/web/test/index.html"})
        outcome = wait_for(port, session, "return window.testOutcome || null;", args.timeout,
                           "report its outcome")
        page_checks = [] if "fatal" in outcome else use_the_page(
            port, session, base, args.timeout, args.screenshot)
    finally:
        if session:
            try:
                webdriver(port, "DELETE", f"/session/{session}")
            except OSError:
                pass
        driver.terminate()
        server.shutdown()

    failures = 0
    for result in outcome.get("results", []):
        print(f"{'ok  ' if result['ok'] else 'FAIL'} {result['name']} {result['detail']}")
        failures += not result["ok"]
    if "fatal" in outcome:
        print(f"FAIL the page stopped: {outcome['fatal']}")
        failures += 1
    else:
        expected = cli_error(args.resgraph, "bad.onnx", b"not an ONNX model")
        same = outcome.get("badModelMessage") == expected
        print(f"{'ok  ' if same else 'FAIL'} a bad model's message is the CLI's: "
              f"{outcome.get('badModelMessage')!r} vs {expected!r}")
        failures += not same
        keys = cli_bench_keys(args.resgraph)
        same = outcome.get("benchKeys") == keys
        print(f"{'ok  ' if same else 'FAIL'} the benchmark report has the keys of bench --json"
              + ("" if same else f": {outcome.get('benchKeys')} vs {keys}"))
        failures += not same
        for ok, name, detail in page_checks:
            print(f"{'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"))
            failures += not ok
    print(f"adapter: {outcome.get('adapter')}; {len(outcome.get('results', []))} page checks, "
          f"{failures} failed, {time.monotonic() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
