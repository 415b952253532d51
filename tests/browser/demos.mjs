// The approval and deploy demos through the web page of `wasnap serve`,
// in headless Chromium driven by Playwright, as a person would use it:
// upload, start, read the question, click the answers, branch from an
// older version; then the approval demo as a JavaScript script, uploaded
// as its source. A screenshot of every step goes to ARTIFACTS.
//
//   node demos.mjs URL APPROVAL.wasm DEPLOY.wasm APPROVAL.js ARTIFACTS_DIR
import { chromium } from "playwright-core";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, approvalWasm, deployWasm, approvalScript, artifacts] = process.argv.slice(2);
if (!artifacts) {
  console.error("usage: node demos.mjs URL APPROVAL.wasm DEPLOY.wasm APPROVAL.js ARTIFACTS_DIR");
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), "wasnap-chromium-"));
// A fresh profile each run: Playwright takes it as the persistent
// context's directory (it refuses --user-data-dir among the args).
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  viewport: { width: 1280, height: 900 },
});
let shot = 0;
let page;
const snap = async (name) => {
  shot += 1;
  const file = join(artifacts, `${String(shot).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot ${file}`);
};
const question = (text) => page.locator("#question", { hasText: text }).waitFor({ timeout: 20000 });
const nodeOf = (version) => page.locator(`.node[data-version="${version}"]`);

async function start(wasm) {
  await page.setInputFiles("#module-file", wasm);
  await page.click("#start-button");
  await page.locator("#start-status", { hasText: "Started instance" }).waitFor({ timeout: 30000 });
}

async function reply(text) {
  await page.fill("#reply-text", text);
  await page.click("#reply-send");
}

try {
  page = await browser.newPage();
  page.on("pageerror", (e) => { console.error(`page error: ${e.message}`); process.exitCode = 1; });
  await page.goto(url);
  await page.locator("#live.on").waitFor({ timeout: 10000 });
  await snap("empty");

  // ---- approval: start, continue, answer "true", branch from v2 with "false"
  await start(approvalWasm);
  await question("do something");
  await snap("approval-started");
  await reply("");
  await question("ask boss for permission");
  // A yes/no question gets buttons.
  await page.locator("#answer-yes", { hasText: "true" }).waitFor();
  await snap("approval-asks");
  await page.click("#answer-yes");
  await question("do another after approved");
  await nodeOf(3).waitFor();
  await snap("approval-approved");
  // Version 2 again, answered the other way: a branch.
  await nodeOf(2).click();
  await page.locator("#version-title", { hasText: "Version 2" }).waitFor();
  await page.locator("#inspection", { hasText: "Suspended in wasnap.yield" }).waitFor();
  const download = page.waitForEvent("download");
  await page.click("#download");
  const file = await download;
  if (!(await file.suggestedFilename()).endsWith(".wsnap")) throw new Error("no snapshot download");
  await snap("approval-version-2");
  await page.click("#branch-false");
  await question("do another after rejected");
  await nodeOf(4).waitFor();
  const tree = await page.locator("#tree").innerText();
  if (!/answered “true”[\s\S]*answered “false”/.test(tree)) throw new Error(`tree: ${tree}`);
  await snap("approval-branched");
  await reply("");
  await page.locator("#pending", { hasText: "finished" }).waitFor();
  await snap("approval-finished");

  // ---- deploy: a question with a deadline, a sleep the server ends by itself
  await start(deployWasm);
  await question("waiting for approval [yes/no]");
  await page.locator("#pending", { hasText: "Answer before" }).waitFor();
  await snap("deploy-deadline");
  await page.click("#answer-yes");
  await page.locator("#pending", { hasText: "Sleeping until" }).waitFor({ timeout: 20000 });
  await snap("deploy-sleeping");
  // No click: the server wakes it at the maintenance window, and the page
  // hears of it.
  await question("deploying to machine-1");
  await snap("deploy-woken");
  for (const next of ["deploying to machine-2", "deploying to machine-3"]) {
    await reply("ok");
    await question(next);
  }
  await reply("ok");
  await page.locator("#pending", { hasText: "finished" }).waitFor();
  await snap("deploy-finished");

  // ---- approval as a script: the page uploads its source, the server
  // starts it in the JavaScript runtime
  await start(approvalScript);
  await question("do something");
  await reply("");
  await question("ask boss for permission");
  await page.click("#answer-yes");
  await question("do another after approved");
  await snap("script-approved");
  console.log("browser demos: 3 passed, 0 failed");
} catch (e) {
  console.error(`browser demos failed: ${e.stack ?? e}`);
  if (page) await snap("failure").catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
