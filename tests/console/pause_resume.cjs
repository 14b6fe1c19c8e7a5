// Drives the admin console in Chromium (playwright-core), for tests/admin.rs: pauses the sink
// from the page while the test writes to the source, waits for the page to show its lag grow,
// takes a screenshot, resumes it from the page, and waits for the lag to drain.
// Environment: PLAYWRIGHT_CORE (the package's directory), CHROMIUM, URL, TOKEN, SINK, SHOT.
"use strict";
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

function lagBytes(text) {
  const [n, unit] = text.trim().split(/\s+/);
  const scale = { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, TiB: 1024 ** 4 }[unit];
  if (scale === undefined) throw new Error("not a size: " + text);
  return Number(n) * scale;
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 1200 } });
    await page.goto(process.env.URL);
    const sink = process.env.SINK;
    const lagCell = page.locator(`tr[data-sink="${sink}"] td.lag`);
    await lagCell.waitFor({ timeout: 30000 });
    await page.fill("#token", process.env.TOKEN);
    await page.click(`button[data-sink="${sink}"][data-action="pause"]`);
    await page.waitForFunction(() => document.getElementById("message").textContent.includes("done"), null, { timeout: 10000 });
    console.log("paused from the page");
    // The test writes meanwhile: the paused sink's lag must grow.
    let grown = 0;
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline) {
      grown = lagBytes(await lagCell.textContent());
      if (grown > 0) break;
      await page.waitForTimeout(500);
    }
    if (grown === 0) throw new Error("the paused sink's lag did not grow");
    console.log("lag grew to " + grown + " bytes");
    // A chart with a few samples (one every 5 s) for the screenshot.
    await page.waitForFunction(
      () => (document.querySelector("#chart polyline")?.getAttribute("points") || "").split(" ").length >= 3,
      null, { timeout: 30000 });
    await page.screenshot({ path: process.env.SHOT, fullPage: true });
    await page.click(`button[data-sink="${sink}"][data-action="resume"]`);
    console.log("resumed from the page");
    const drained = Date.now() + 60000;
    while (Date.now() < drained) {
      // Drained: back under what it grew to, and within what a second of other databases' WAL
      // on the shared test cluster can add before the next heartbeat (256 KiB).
      const lag = lagBytes(await lagCell.textContent());
      if (lag < Math.min(grown, 262144)) {
        console.log("lag drained to " + lag + " bytes");
        return;
      }
      await page.waitForTimeout(500);
    }
    throw new Error("the lag did not drain after resume: " + (await lagCell.textContent()));
  } finally {
    await browser.close();
  }
}

main().catch(e => { console.error(e); process.exit(1); });
