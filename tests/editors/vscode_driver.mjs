// Drives a real VS Code (code-server) in Debian's chromium through playwright-core; run by
// tests/editors/test_vscode.py. argv: URL, file name to open, JSON list of texts to type,
// screenshot path. Prints one JSON report on stdout.
import { createRequire } from 'node:module';

const require = createRequire(process.env.GHOST_PLAYWRIGHT_FROM);
const { chromium } = require('playwright-core');
const [url, fileName, spotsJson, shot] = process.argv.slice(2);
const report = { steps: [] };
const t0 = Date.now();

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
try {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await page.goto(url);
  await page.locator('.monaco-workbench').waitFor({ timeout: 60000 });
  report.workbenchMs = Date.now() - t0;
  // Open the file from the explorer (Quick Open can miss keys while the workbench loads).
  const row = page.locator('.explorer-folders-view .monaco-list-row', { hasText: fileName }).first();
  await row.waitFor({ timeout: 30000 });
  await row.dblclick();
  const editor = page.locator('.editor-instance .monaco-editor').first();
  await editor.waitFor({ timeout: 30000 });
  await editor.locator('.view-lines').click();
  // Wait for the extension's status item: the server is up.
  const item = page.locator('.statusbar-item', { hasText: 'ghost' }).first();
  await item.waitFor({ timeout: 30000 });
  for (const typed of JSON.parse(spotsJson)) {
    await page.keyboard.press('Control+End');
    await page.keyboard.press('Enter');
    await page.keyboard.press('Shift+Home'); // drop auto-indent: type the spot exactly
    await page.keyboard.press('Delete');
    await page.keyboard.type(typed, { delay: 20 });
    const step = { typed };
    report.steps.push(step);
    const ghost = page.locator('.ghost-text-decoration, .ghost-text').first();
    try {
      await ghost.waitFor({ timeout: 6000 });
    } catch {
      await page.keyboard.press('Escape');
      await page.keyboard.press('Shift+Home');
      await page.keyboard.press('Delete');
      await page.keyboard.press('Backspace');
      continue;
    }
    report.ghostMs = Date.now() - t0;
    step.ghost = (await page.locator('.ghost-text-decoration, .ghost-text').allTextContents()).join('\n');
    step.status = (await item.textContent())?.trim();
    await page.screenshot({ path: shot });
    await page.keyboard.press('Tab');
    await page.waitForTimeout(300);
    await page.keyboard.press('Escape');
    await page.keyboard.press('Control+S');
    await page.waitForTimeout(500);
    report.accepted = step;
    break;
  }
  // The stats command answers with the session's numbers.
  await page.keyboard.press('Control+Shift+P');
  await page.keyboard.type('ghost-lsp: Show stats');
  await page.keyboard.press('Enter');
  const toast = page.locator('.notification-list-item-message', { hasText: 'server:' }).first();
  await toast.waitFor({ timeout: 10000 }).then(async () => { report.statsToast = (await toast.textContent())?.trim(); },
    () => { report.statsToast = null; });
} catch (e) {
  report.error = String(e);
  try { await (browser.contexts()[0].pages()[0]).screenshot({ path: shot.replace(/\.png$/, '-error.png') }); } catch {}
} finally {
  await browser.close();
  process.stdout.write(JSON.stringify(report));
}
