// Drives the dashboard in Debian's chromium (playwright-core): a wrong
// token shows only the prompt; the right one shows the migration in
// reads_switched; "Revert routing (all migrations)", confirmed, reverts it.
// Usage: node dashboard.js URL TOKEN MIGRATION SCREENSHOT
"use strict";
const { chromium } = require("playwright-core");

const [url, token, migration, shot] = process.argv.slice(2);
const card = (field) => `[data-migration="${migration}"] [data-field="${field}"]`;

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
    page.setDefaultTimeout(20000);
    const dialogs = [];
    page.on("dialog", (d) => { dialogs.push(d.message()); d.accept(); });
    await page.goto(url);
    await page.locator("#login").waitFor({ state: "visible" });
    await page.fill("#token", "not-the-token");
    await page.click("#login button[type=submit]");
    await page.locator("#banner", { hasText: "401" }).waitFor();
    if (await page.locator("#board").isVisible()) throw new Error("the board shows without a valid token");
    await page.fill("#token", token);
    await page.click("#login button[type=submit]");
    await page.locator(card("phase"), { hasText: "reads_switched" }).waitFor();
    await page.locator(card("routing"), { hasText: "reads: new" }).waitFor();
    await page.click("#revert-all");
    await page.locator(card("routing"), { hasText: "REVERTED" }).waitFor();
    await page.locator("#events", { hasText: "revert" }).waitFor();
    await page.screenshot({ path: shot, fullPage: true });
    if (!dialogs.some((m) => m.includes("Revert routing of EVERY migration"))) {
      throw new Error("no confirmation was asked: " + JSON.stringify(dialogs));
    }
    console.log("ok");
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
