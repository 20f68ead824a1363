"""Drives relay's web console in a real browser: Debian's headless Chromium through
chromium-driver and Selenium (in the test venv). Run by bin/relay/tests/console.rs, which sets
the relay up and checks afterwards what the clicks did to it.

    console_browser.py demo URL SHOTS
        Opens the URL `relay demo --console` printed and watches the overview update as the
        demo's events come in; screenshots the overview.
    console_browser.py clickthrough URL SHOTS INGEST_URL INGEST_KEY
        Finds an event and opens its timeline, tails new events, redrives one dead letter and
        purges the others with a reason, pauses and resumes, signs out and in again.

Prints one JSON line per step ({"step": ..., ...}); exits non-zero at the first thing that
is not as it should be, with what the page showed.
"""

import json
import shutil
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def say(step, **what):
    print(json.dumps({"step": step, **what}), flush=True)


def browser():
    options = webdriver.ChromeOptions()
    # Debian's Chromium here; Chrome where a machine has it instead (GitHub's runners).
    options.binary_location = shutil.which("chromium") or shutil.which("google-chrome")
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ]:
        options.add_argument(flag)
    # Console errors (a CSP violation among them) are read back at the end.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def until(driver, what, check, timeout=30):
    try:
        # A page being replaced by the next one: look again.
        ignored = (NoSuchElementException, StaleElementReferenceException)
        return WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=ignored).until(lambda d: check(d))
    except TimeoutException:
        raise SystemExit(f"timed out waiting for: {what}\npage {driver.current_url}:\n{driver.find_element(By.TAG_NAME, 'body').text[:3000]}")


def card(driver, key):
    return driver.find_element(By.CSS_SELECTOR, f"[data-k='{key}']").text


def no_console_errors(driver):
    # The one error the click-through causes on purpose: the wrong token's 401.
    expected = lambda e: e["source"] == "network" and "/login" in e["message"] and "401" in e["message"]
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and not expected(e)]
    if errors:
        raise SystemExit(f"the browser reported errors: {errors}")


def demo(driver, url, shots):
    driver.get(url)
    until(driver, "the overview", lambda d: d.find_elements(By.CSS_SELECTOR, "[data-live='overview']"))
    say("opened", title=driver.title, url=driver.current_url)
    if "token=" in driver.current_url:
        raise SystemExit("the token stayed in the address bar")
    # The demo's source starts 5 s after the URL is printed: the figures move on their own.
    until(driver, "events coming in", lambda d: card(d, "ingest") not in ("", "0.0/s"), timeout=60)
    until(driver, "a backlog", lambda d: card(d, "backlog") not in ("", "0"), timeout=60)
    # A few points on the charts and a backlog building: the picture the README shows.
    points = lambda d: len(d.find_element(By.CSS_SELECTOR, "svg[data-chart='throughput'] polyline").get_attribute("points").split())
    until(driver, "four points on the charts, and a backlog of 100", lambda d:
          len(d.find_elements(By.CSS_SELECTOR, "svg[data-chart='throughput'] polyline")) == 3
          and points(d) >= 4 and int(card(d, "backlog")) >= 100, timeout=60)
    updates = int(driver.find_element(By.CSS_SELECTOR, "[data-live='overview']").get_attribute("data-updates"))
    say("watched", ingest=card(driver, "ingest"), backlog=card(driver, "backlog"),
        learned=card(driver, "learned"), updates=updates)
    driver.save_screenshot(f"{shots}/console-overview.png")
    until(driver, "the backlog drained", lambda d: card(d, "backlog") == "0", timeout=120)
    say("drained", delivered=card(driver, "delivered"))
    no_console_errors(driver)


def post_event(ingest_url, key, event):
    request = urllib.request.Request(
        ingest_url, data=json.dumps(event).encode(), method="POST",
        headers={"content-type": "application/json", "x-api-key": key})
    with urllib.request.urlopen(request) as answer:
        return answer.status


def click(driver, css):
    driver.find_element(By.CSS_SELECTOR, css).click()


def text(driver):
    return driver.find_element(By.TAG_NAME, "main").text


def clickthrough(driver, url, shots, ingest_url, key):
    base = url.split("?")[0].rstrip("/")
    driver.get(url)
    until(driver, "the overview", lambda d: d.find_elements(By.CSS_SELECTOR, "[data-live='overview']"))
    until(driver, "the dead letters on the overview", lambda d: card(d, "dead") == "2")
    say("overview", dead=card(driver, "dead"), circuit=card(driver, "circuit"))

    # Find an event by id prefix and a payload field, and open its timeline.
    driver.find_element(By.LINK_TEXT, "Events").click()
    until(driver, "the events page", lambda d: d.find_element(By.NAME, "id_prefix")).send_keys("ok-")
    driver.find_element(By.NAME, "field").send_keys("name=order.created")
    click(driver, "form.filters button[type='submit']")
    ids = until(driver, "ok- events listed", lambda d: "id_prefix=ok-" in d.current_url and [
        r.get_attribute("data-id") for r in d.find_elements(By.CSS_SELECTOR, "table.events tbody tr")])
    if not ids or any(not i.startswith("ok-") for i in ids):
        raise SystemExit(f"the filter let through {ids}")
    say("found", ids=ids)
    until(driver, "ok-3's link", lambda d: d.find_element(By.LINK_TEXT, "ok-3")).click()
    until(driver, "the timeline", lambda d: d.find_elements(By.CSS_SELECTOR, "ol.timeline li[data-attempt]"))
    story = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "ol.timeline li")]
    if not story[0].count("Received") or not story[-1].count("Delivered"):
        raise SystemExit(f"the timeline does not run from received to delivered: {story}")
    if "testBrand" not in driver.find_element(By.CSS_SELECTOR, "pre.payload").text:
        raise SystemExit("the request the target receives lacks its brand")
    say("timeline", items=len(story), attempt=driver.find_element(By.CSS_SELECTOR, "li[data-attempt]").text.splitlines()[1])
    driver.save_screenshot(f"{shots}/console-event.png")

    # The live tail: an event sent now shows on top without a reload.
    driver.get(base + "/events")
    click(driver, "#tail")
    time.sleep(0.5)
    if post_event(ingest_url, key, {"id": "tail-1", "name": "order.created", "body": "{}", "timestamp": 1}) != 202:
        raise SystemExit("ingest refused the tailed event")
    until(driver, "tail-1 on top", lambda d: d.find_elements(By.CSS_SELECTOR, "table.events tbody tr[data-id='tail-1']"))
    first = driver.find_element(By.CSS_SELECTOR, "table.events tbody tr").get_attribute("data-id")
    say("tailed", first=first)

    # Redrive one dead letter, chosen by its box, after a confirmation that says what it takes.
    driver.find_element(By.LINK_TEXT, "Dead letters").click()
    groups = until(driver, "the groups", lambda d: d.find_elements(By.CSS_SELECTOR, "table.groups tbody tr"))
    say("dead letters", groups=[g.text.split("\n")[0] for g in groups])
    driver.save_screenshot(f"{shots}/console-dead-letters.png")
    until(driver, "bad-1's box", lambda d: d.find_element(By.CSS_SELECTOR, "input[name='ids'][value='bad-1']")).click()
    driver.find_element(By.XPATH, "//button[normalize-space()='Redrive selected…']").click()
    until(driver, "the confirmation", lambda d: "Redrive dead letters?" in d.title)
    count = driver.find_element(By.CSS_SELECTOR, "[data-count]").get_attribute("data-count")
    if count != "1":
        raise SystemExit(f"the confirmation takes {count} dead letters, not 1:\n{text(driver)}")
    driver.find_element(By.XPATH, "//button[normalize-space()='Redrive 1']").click()
    done = until(driver, "the redrive's result", lambda d: d.find_elements(By.CSS_SELECTOR, "[data-done='redrive']"))
    say("redriven", said=done[0].text)
    driver.get(base + "/events/bad-1")
    until(driver, "bad-1 delivered", lambda d: (d.refresh() or True) and "Delivered" in text(d).splitlines(), timeout=30)
    say("delivered after redrive", trigger="redrive" in text(driver))

    # Purge every dead letter with the other reason, from its group.
    driver.get(base + "/dead-letters")
    row = until(driver, "a group left", lambda d: d.find_elements(By.CSS_SELECTOR, "table.groups tbody tr"))[0]
    row.find_element(By.CSS_SELECTOR, "button[value='purge']").click()
    until(driver, "the purge's confirmation", lambda d: "Purge dead letters?" in d.title)
    count = driver.find_element(By.CSS_SELECTOR, "[data-count]").get_attribute("data-count")
    driver.find_element(By.XPATH, f"//button[normalize-space()='Purge {count}']").click()
    done = until(driver, "the purge's result", lambda d: d.find_elements(By.CSS_SELECTOR, "[data-done='purge']"))
    say("purged", said=done[0].text, count=int(count))

    # Pause, then resume, from the Target page.
    driver.find_element(By.LINK_TEXT, "Target").click()
    until(driver, "the pause form", lambda d: d.find_element(By.NAME, "reason")).send_keys("browser test")
    driver.find_element(By.XPATH, "//button[normalize-space()='Pause delivery']").click()
    until(driver, "paused", lambda d: d.find_elements(By.CSS_SELECTOR, "[data-paused='yes']"))
    say("paused", said=driver.find_element(By.CSS_SELECTOR, "[data-paused='yes']").text)
    driver.save_screenshot(f"{shots}/console-target.png")
    driver.get(base + "/")
    until(driver, "the overview says paused", lambda d: card(d, "paused").startswith("PAUSED"))
    driver.find_element(By.LINK_TEXT, "Target").click()
    until(driver, "the resume button", lambda d: d.find_element(By.XPATH, "//button[normalize-space()='Resume delivery']")).click()
    until(driver, "resumed", lambda d: d.find_elements(By.CSS_SELECTOR, "[data-paused='no']"))
    say("resumed")

    # Sign out; a wrong token is refused; the right one signs in again.
    driver.find_element(By.XPATH, "//button[normalize-space()='Sign out']").click()
    until(driver, "the sign-in page", lambda d: d.find_elements(By.ID, "token"))
    driver.get(base + "/dead-letters")
    until(driver, "sent to sign in", lambda d: "/login" in d.current_url)
    until(driver, "the token field", lambda d: d.find_element(By.ID, "token")).send_keys("not-the-admin-token")
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    until(driver, "refused", lambda d: d.find_elements(By.CSS_SELECTOR, ".error"))
    token = url.split("token=")[1]
    until(driver, "the token field again", lambda d: d.find_element(By.ID, "token")).send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    until(driver, "back where it was going", lambda d: d.current_url.endswith("/dead-letters"))
    say("signed in again")
    no_console_errors(driver)


def main():
    mode, url, shots = sys.argv[1:4]
    driver = browser()
    try:
        if mode == "demo":
            demo(driver, url, shots)
        else:
            clickthrough(driver, url, shots, *sys.argv[4:6])
    finally:
        driver.quit()
    say("done")


if __name__ == "__main__":
    main()
