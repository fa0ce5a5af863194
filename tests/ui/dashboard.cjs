// Drives the CDRS dashboard in headless Chromium for the end-to-end test
// (tests/e2e/dashboard.rs), which talks to it over stdin/stdout lines:
//
//   node dashboard.cjs URL TARGETS SCREENSHOT_DIR
//   -> READY                      every target row shows "healthy"
//   <- KILLED <target id>         the test killed that server
//   -> DOWN <ms> <reason>         the row shows it down, with the reason, no reload
//   -> DONE                       checks passed, screenshots written
//   -> FAIL <why>                 (exit code 1)
//
// Chromium: $CDRS_CHROMIUM; puppeteer-core from $NODE_PATH (scripts/dev.sh
// installs both).
"use strict";

const path = require("node:path");
const readline = require("node:readline");
const puppeteer = require("puppeteer-core");

const [url, targets, shots] = process.argv.slice(2);
const want = Number(targets);

function say(line) {
  process.stdout.write(line + "\n");
}

function fail(why) {
  say("FAIL " + String(why).replace(/\s+/g, " "));
  process.exit(1);
}

const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

// Relative luminance (WCAG 2.x) of a CSS rgb() colour.
function luminance(rgb) {
  const [r, g, b] = rgb.match(/\d+(\.\d+)?/g).slice(0, 3).map(Number).map((c) => {
    c /= 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}

function contrast(a, b) {
  const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
}

(async () => {
  const browser = await puppeteer.launch({
    executablePath: process.env.CDRS_CHROMIUM,
    headless: true,
    // Root in a container has no user namespace for Chromium's sandbox.
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1400, height: 900 });
    await page.emulateMediaFeatures([{ name: "prefers-color-scheme", value: "dark" }]);
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
    await page.goto(url, { waitUntil: "domcontentloaded" });
    await page.waitForFunction(
      (n) => document.querySelectorAll('#targets tbody tr[data-health="healthy"]').length === n
        && document.querySelector("#conn").dataset.state === "live",
      { timeout: 30_000 }, want);
    // Survives only if the page is never reloaded.
    await page.evaluate(() => { window.cdrsTestMarker = 1; });
    await page.screenshot({ path: path.join(shots, "dashboard-healthy.png"), fullPage: true });
    say("READY");

    const killed = (await nextLine()).replace(/^KILLED /, "").trim();
    const started = Date.now();
    const row = `#targets tbody tr[data-target="${killed}"]`;
    await page.waitForSelector(`${row}[data-health="down"] .reason`, { timeout: 5_000 })
      .catch(() => fail(`${killed} not shown down with a reason within 5 s`));
    const ms = Date.now() - started;
    const state = await page.evaluate((sel) => ({
      reason: document.querySelector(sel + " .reason").textContent,
      marker: window.cdrsTestMarker,
      event: [...document.querySelectorAll('#events li[data-type="target.health"]')]
        .map((li) => li.textContent).find((t) => t.includes(sel.match(/"(.*)"/)[1])),
    }), row);
    if (state.marker !== 1) fail("the page was reloaded");
    if (!state.reason.trim()) fail("no reason shown");
    say(`DOWN ${ms} ${state.reason}`);
    if (!state.event) fail("no target.health event listed for " + killed);
    await page.screenshot({ path: path.join(shots, "dashboard-target-down.png"), fullPage: true });

    // Dark background: readable text.
    const colours = await page.evaluate(() => {
      const body = getComputedStyle(document.body);
      const muted = getComputedStyle(document.querySelector(".reason"));
      return { bg: body.backgroundColor, fg: body.color, muted: muted.color };
    });
    if (luminance(colours.bg) > 0.1) fail("dark scheme background is light: " + colours.bg);
    for (const [name, c] of [["text", colours.fg], ["secondary text", colours.muted]]) {
      const ratio = contrast(c, colours.bg);
      if (ratio < 4.5) fail(`${name} contrast ${ratio.toFixed(1)} below WCAG AA 4.5 on ${colours.bg}`);
    }
    // A phone: the page itself does not scroll sideways (tables scroll in
    // their own boxes).
    await page.setViewport({ width: 390, height: 844, isMobile: true, hasTouch: true });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 1) fail(`the page is ${overflow} px wider than a 390 px screen`);
    await page.screenshot({ path: path.join(shots, "dashboard-phone.png"), fullPage: true });
    if (errors.length) fail("page errors: " + errors.join(" | "));
    say("DONE");
  } finally {
    await browser.close();
  }
  process.exit(0);
})().catch(fail);
