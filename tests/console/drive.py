#!/usr/bin/env python3
"""Drives the meshgate console in Debian's headless Chromium (Selenium + chromedriver).

Besides the map and the failover it checks the combined replica logs: both replicas'
flip records appear, and the replica filter (keyboard only) narrows them to one.

Started by tests/tests/console_browser.rs inside the coordinator's network namespace.
It talks to the Rust test through files in DIR, so the test can kill the active replica
while the page stays open:

  DIR/active    written here: the replica id the console shows as active
  DIR/killed    written by the test once that replica's agent is dead
  DIR/result.json  written here at the end: {"ok": bool, "error": str, ...}

Usage: drive.py URL DIR   (admin token in $MESHGATE_ADMIN_TOKEN; screenshots go to
$MESHGATE_SCREENSHOTS when set, else DIR).
"""

import json
import os
import sys
import tempfile
import time
import traceback

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The console polls once a second and promises changes within 2 s; a failover itself
# takes the lease (~250 ms) plus the agent's reconnect, on a loaded 2-core machine.
PROMOTION_TIMEOUT_S = 15


def browser(profile):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # As root Chromium needs --no-sandbox; the rest keeps it off the (closed) network.
    for flag in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", "--window-size=1440,1000",
        f"--user-data-dir={profile}",
    ]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def severe(logs):
    return [entry for entry in logs if entry.get("level") == "SEVERE"]


# The console redraws parts of the page every second, so an element found in one
# WebDriver call may be gone by the next: every read of the page is one script.
def js(driver, script, *args):
    return driver.execute_script(script, *args)


def active_replica(driver):
    found = js(driver, """
        const r = document.querySelector('article[data-node-name="web"] tr[data-ha-status="active"]');
        return r ? [r.dataset.replicaId, Number(r.dataset.epoch)] : null;""")
    return tuple(found) if found else None


def count(driver, selector):
    return js(driver, "return document.querySelectorAll(arguments[0]).length;", selector)


def focus_key(driver):
    return js(driver, "return document.activeElement && document.activeElement.dataset.focusKey || null;")


def press(driver, key):
    # A key for whatever has focus now, not for an element looked up a call earlier:
    # a redraw may have replaced that element (keeping focus on its successor), and
    # sending to the detached one fails with "element not interactable".
    ActionChains(driver).send_keys(key).perform()


# Agents send their log records every 500 ms; the console polls every second.
LOGS_TIMEOUT_S = 10


def flip_line(replica):
    return f'#detail ol.logs li.flip[data-replica="{replica}"]'


def log_replicas(driver):
    """The replica of every log line the panel shows, top to bottom."""
    return js(driver, "return [...document.querySelectorAll('#detail ol.logs li')].map((l) => l.dataset.replica);")


def choose_replica(driver, replica):
    """Tab to the replica filter and pick `replica` with the arrow keys."""
    for _ in range(40):
        if focus_key(driver) == "replica-filter":
            break
        press(driver, Keys.TAB)
    else:
        raise AssertionError("the logs' replica filter is not reachable with Tab")
    for key in (Keys.HOME, *[Keys.ARROW_DOWN] * 20):
        if js(driver, "return document.activeElement.value;") == replica:
            return
        press(driver, key)
    raise AssertionError(f"the replica filter does not offer {replica}")


def filter_logs(driver, after, before, shots):
    """The filter narrows the panel to one replica, each way, and back to all."""
    everything = log_replicas(driver)
    assert {after, before} <= set(everything), f"both replicas' lines expected: {everything}"
    for replica in (after, before):
        choose_replica(driver, replica)

        def narrowed(d, replica=replica):
            shown = log_replicas(d)
            return shown and set(shown) == {replica} and count(d, flip_line(replica)) > 0

        wait(driver, 10).until(narrowed)
    driver.save_screenshot(os.path.join(shots, "console-logs-filtered.png"))
    choose_replica(driver, "")
    wait(driver, 10).until(lambda d: {after, before} <= set(log_replicas(d)))


def wait(driver, timeout, poll=0.1):
    return WebDriverWait(driver, timeout, poll_frequency=poll, ignored_exceptions=(StaleElementReferenceException,))


def wait_file(path, timeout):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def run(url, workdir, token, shots, result):
    with tempfile.TemporaryDirectory(prefix="meshgate-chromium-") as profile:
        driver = browser(profile)
        try:
            drive(driver, url, workdir, token, shots, result)
        finally:
            driver.quit()


def drive(driver, url, workdir, token, shots, result):
    driver.get(url)
    field = wait(driver, 10).until(EC.visibility_of_element_located((By.ID, "token")))
    driver.save_screenshot(os.path.join(shots, "console-signin.png"))

    # A wrong token is refused with a message and no console view.
    field.send_keys("not-the-admin-token", Keys.ENTER)
    wait(driver, 10).until(EC.text_to_be_present_in_element((By.ID, "signin-error"), "refused"))
    assert js(driver, "return document.getElementById('console').hidden;"), "console shown"
    # The 403 itself is a network error Chromium logs; nothing else may be there.
    refused = driver.get_log("browser")
    unexpected = [e for e in severe(refused) if "403" not in e["message"]]
    assert not unexpected, f"console errors before sign-in: {unexpected}"

    # Sign in with the keyboard only: the field still has focus after the refusal.
    assert js(driver, "return document.activeElement.id;") == "token", "focus left the field"
    field = driver.switch_to.active_element
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(token, Keys.ENTER)

    # The map: node web with one active and one passive replica, the device, the route.
    web = 'article[data-node-name="web"]'
    wait(driver, 20).until(lambda d: count(d, f"{web} tr[data-replica-id]") == 2 and active_replica(d))
    body = js(driver, "return document.body.innerText;")
    for expected in ["laptop", "192.168.50.0/24", "Packets relayed", "Failovers"]:
        assert expected in body, f"{expected!r} is not on the page"
    before, epoch = active_replica(driver)
    assert count(driver, f'{web} tr[data-ha-status="passive"]') == 1, "expected one passive replica"
    coords = js(driver, "return [...document.querySelectorAll('[data-coordinator]')].map((c) => c.innerText);")
    assert coords, "no coordinator on the map"
    result["coordinators"] = coords
    driver.save_screenshot(os.path.join(shots, "console-map.png"))

    # Keyboard: Tab reaches the node's "Events & logs" button; Enter opens the timeline.
    key = js(driver, f"return document.querySelector('{web} header button').dataset.focusKey;")
    for _ in range(60):
        if focus_key(driver) == key:
            break
        press(driver, Keys.TAB)
    else:
        raise AssertionError("the node's Events & logs button is not reachable with Tab")
    press(driver, Keys.ENTER)
    wait(driver, 10).until(lambda d: count(d, '#detail li[data-event="registered"]') > 0)
    # The combined logs: the active replica's flip record, sent by its agent.
    wait(driver, LOGS_TIMEOUT_S).until(lambda d: count(d, flip_line(before)) > 0)

    # A marker that a reload would wipe: the promotion must appear without one.
    js(driver, "window.__meshgateNoReload = 42;")
    with open(os.path.join(workdir, "active.tmp"), "w") as f:
        f.write(before)
    os.rename(os.path.join(workdir, "active.tmp"), os.path.join(workdir, "active"))
    wait_file(os.path.join(workdir, "killed"), 60)
    killed_at = time.monotonic()

    def promoted(d):
        now = active_replica(d)
        return now if now and now[0] != before and now[1] > epoch else False

    after, new_epoch = wait(driver, PROMOTION_TIMEOUT_S, 0.05).until(promoted)
    result["seen_after_kill_s"] = round(time.monotonic() - killed_at, 3)
    assert js(driver, "return window.__meshgateNoReload;") == 42, "the page reloaded"
    promoted_event = f'#detail li[data-event="promoted"][data-replica="{after}"][data-epoch="{new_epoch}"]'
    wait(driver, 5).until(lambda d: count(d, promoted_event) == 1)
    failovers = "return document.querySelector('[data-counter=\"Failovers\"] .value').innerText;"
    wait(driver, 5).until(lambda d: js(d, failovers) not in ("", "0"))
    result.update(before=before, after=after, epoch_before=epoch, epoch_after=new_epoch)

    # The successor's flip joins the combined logs live, next to the killed replica's.
    wait(driver, LOGS_TIMEOUT_S).until(lambda d: count(d, flip_line(after)) > 0)
    assert count(driver, flip_line(before)) > 0, "the killed replica's flip left the logs"
    result["log_replicas"] = log_replicas(driver)
    filter_logs(driver, after, before, shots)
    time.sleep(1.2)  # one more poll, so the screenshot shows the settled map
    driver.save_screenshot(os.path.join(shots, "console-failover.png"))

    errors = severe(driver.get_log("browser"))
    assert not errors, f"console errors: {errors}"


def main():
    url, workdir = sys.argv[1], sys.argv[2]
    token = os.environ["MESHGATE_ADMIN_TOKEN"].strip()
    shots = os.environ.get("MESHGATE_SCREENSHOTS") or workdir
    os.makedirs(shots, exist_ok=True)
    result = {"ok": False}
    try:
        run(url, workdir, token, shots, result)
        result["ok"] = True
    except Exception as e:  # noqa: BLE001 - every failure goes to the Rust test
        traceback.print_exc()
        result["error"] = f"{type(e).__name__}: {e}"
    with open(os.path.join(workdir, "result.json.tmp"), "w") as f:
        json.dump(result, f)
    os.rename(os.path.join(workdir, "result.json.tmp"), os.path.join(workdir, "result.json"))
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
