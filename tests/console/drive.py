#!/usr/bin/env python3
"""Drives the meshgate console in Debian's headless Chromium (Selenium + chromedriver).

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


def active_replica(driver):
    rows = driver.find_elements(By.CSS_SELECTOR, 'article[data-node-name="web"] tr[data-ha-status="active"]')
    return (rows[0].get_attribute("data-replica-id"), int(rows[0].get_attribute("data-epoch"))) if rows else None


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
    wait = WebDriverWait(driver, 10)
    driver.get(url)
    field = wait.until(EC.visibility_of_element_located((By.ID, "token")))
    driver.save_screenshot(os.path.join(shots, "console-signin.png"))

    # A wrong token is refused with a message and no console view.
    field.send_keys("not-the-admin-token", Keys.ENTER)
    wait.until(EC.text_to_be_present_in_element((By.ID, "signin-error"), "refused"))
    assert not driver.find_element(By.ID, "console").is_displayed()
    # The 403 itself is a network error Chromium logs; nothing else may be there.
    refused = driver.get_log("browser")
    unexpected = [e for e in severe(refused) if "403" not in e["message"]]
    assert not unexpected, f"console errors before sign-in: {unexpected}"

    # Sign in with the keyboard only: the field has focus after the refusal.
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token, Keys.ENTER)
    wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, 'article[data-node-name="web"]')))

    # The map: node web with one active and one passive replica, the device, the route.
    WebDriverWait(driver, 10).until(lambda d: len(d.find_elements(
        By.CSS_SELECTOR, 'article[data-node-name="web"] tr[data-replica-id]')) == 2 and active_replica(d))
    body = driver.find_element(By.TAG_NAME, "body").text
    for expected in ["laptop", "192.168.50.0/24", "Packets relayed", "Failovers"]:
        assert expected in body, f"{expected!r} is not on the page"
    before, epoch = active_replica(driver)
    passive = driver.find_elements(By.CSS_SELECTOR, 'article[data-node-name="web"] tr[data-ha-status="passive"]')
    assert len(passive) == 1, "expected one passive replica"
    coords = driver.find_elements(By.CSS_SELECTOR, "[data-coordinator]")
    assert coords, "no coordinator on the map"
    result["coordinators"] = [c.text for c in coords]
    driver.save_screenshot(os.path.join(shots, "console-map.png"))

    # The timeline lists the node's registrations; keyboard: Tab to the node's button.
    # (Compared by key: a redraw replaces the element, keeping its focus.)
    key = driver.find_element(By.CSS_SELECTOR, 'article[data-node-name="web"] header button').get_attribute("data-focus-key")
    for _ in range(60):
        if driver.switch_to.active_element.get_attribute("data-focus-key") == key:
            break
        driver.switch_to.active_element.send_keys(Keys.TAB)
    else:
        raise AssertionError("the node's Events & logs button is not reachable with Tab")
    driver.switch_to.active_element.send_keys(Keys.ENTER)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#detail li[data-event="registered"]'))

    # A marker that a reload would wipe: the promotion must appear without one.
    driver.execute_script("window.__meshgateNoReload = 42;")
    with open(os.path.join(workdir, "active.tmp"), "w") as f:
        f.write(before)
    os.rename(os.path.join(workdir, "active.tmp"), os.path.join(workdir, "active"))
    wait_file(os.path.join(workdir, "killed"), 60)
    killed_at = time.monotonic()

    def promoted(d):
        now = active_replica(d)
        return now if now and now[0] != before and now[1] > epoch else False

    after, new_epoch = WebDriverWait(driver, PROMOTION_TIMEOUT_S, poll_frequency=0.05).until(promoted)
    result["seen_after_kill_s"] = round(time.monotonic() - killed_at, 3)
    assert driver.execute_script("return window.__meshgateNoReload;") == 42, "the page reloaded"
    WebDriverWait(driver, 5).until(lambda d: d.find_elements(
        By.CSS_SELECTOR, f'#detail li[data-event="promoted"][data-replica="{after}"][data-epoch="{new_epoch}"]'))
    WebDriverWait(driver, 5).until(lambda d: d.find_element(
        By.CSS_SELECTOR, '[data-counter="Failovers"] .value').text not in ("", "0"))
    result.update(before=before, after=after, epoch_before=epoch, epoch_after=new_epoch)
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
