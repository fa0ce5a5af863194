// Reads the shadow router's row on the CDRS dashboard in headless Chromium
// for the end-to-end test (tests/e2e/shadow.rs):
//
//   node shadow.cjs URL SHADOW_NAME SCREENSHOT_DIR
//   -> SHADOW <the row's comparison text>
//   -> FAIL <why>                 (exit code 1)
//
// Chromium: $CDRS_CHROMIUM; puppeteer-core from $NODE_PATH (scripts/dev.sh
// installs both).
"use strict";

const path = require("node:path");
const puppeteer = require("puppeteer-core");

const [url, name, shots] = process.argv.slice(2);

function fail(why) {
  process.stdout.write("FAIL " + String(why).replace(/\s+/g, " ") + "\n");
  process.exit(1);
}

(async () => {
  const browser = await puppeteer.launch({
    executablePath: process.env.CDRS_CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1400, height: 900 });
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(url, { waitUntil: "domcontentloaded" });
    const row = `#plugins tbody tr[data-plugin="${name}"]`;
    await page.waitForSelector(`${row} .shadow`, { timeout: 30_000 })
      .catch(() => fail(`no shadow comparison in the row of ${name} within 30 s`));
    const text = await page.evaluate((sel) => [...document.querySelectorAll(sel + " .shadow, " + sel + " .reason")]
      .map((e) => e.textContent).join(" | "), row);
    await page.screenshot({ path: path.join(shots, "dashboard-shadow.png"), fullPage: true });
    if (errors.length) fail("page errors: " + errors.join(" | "));
    process.stdout.write("SHADOW " + text + "\n");
  } finally {
    await browser.close();
  }
  process.exit(0);
})().catch(fail);
