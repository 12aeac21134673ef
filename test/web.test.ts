/**
 * graft serve's page in a real browser (Debian's chromium driven by playwright-core): create a project, upload
 * real hymenoptera photos into two classes, train, read the accuracy, predict an uploaded image, download the
 * zip, and run the exported model.onnx in the page with onnxruntime-web (WASM), matching the server to 1e-4 —
 * with no console error, and labels / file names shown as text, never markup. A second test uploads 2,000 small
 * generated images through the page and checks that it stays light and responsive, reporting the page's heap and
 * the server's RSS. Screenshots go to test-artifacts/web/.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { unzipSync, zipSync } from 'fflate';
import sharp from 'sharp';
import { ROOT, SHARED, requireShared } from './support/paths.js';

const [MODEL, HYM] = requireShared(join(SHARED, 'models/mobilenetv2-12-int8/model.onnx'), join(SHARED, 'data/hymenoptera'));
const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = join(ROOT, 'test-artifacts/web');
const TOKEN = 'web-test-token-0123456789';
const PER_CLASS = 12;
const MANY = 2000;
const XSS_CLASS = '<img src=x onerror="window.__xss=1">';
const XSS_FILE = '<img src=x onerror=window.__xss=2>.jpg';
/** The onnxruntime-web files the page asked for. */
const ortRequests = new Set<string>();

interface Server {
  proc: ChildProcess;
  url: string;
  stderr: string[];
}

/** `graft serve --port 0` in a child process; resolves once it prints its listening line. */
async function startServer(dataDir: string): Promise<Server> {
  const proc = spawn(process.execPath, [join(ROOT, 'bin/graft.js'), 'serve', '--port', '0', '--data-dir', dataDir, '--token', TOKEN], {
    env: { ...process.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const stderr: string[] = [];
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => {
    stderr.push(d);
    if (stderr.length > 200) stderr.shift();
  });
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`graft serve did not say it was listening in 30 s: ${stderr.join('')}`)), 30_000);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`graft serve exited with ${code}: ${stderr.join('')}`));
    });
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      const m = /graft serve listening on (http:\/\/\S+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!.endsWith('/') ? m[1]! : `${m[1]}/`);
      }
    });
  });
  return { proc, url, stderr };
}

/** A page that records every console error, page error and failed request. */
async function openPage(context: BrowserContext): Promise<{ page: Page; problems: string[] }> {
  const page = await context.newPage();
  const problems: string[] = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(`console.error: ${msg.text()} ${JSON.stringify(msg.location())}`);
  });
  page.on('pageerror', (err) => problems.push(`page error: ${err.stack ?? err.message}`));
  page.on('request', (req) => {
    const u = new URL(req.url());
    if (u.pathname.startsWith('/ort/')) ortRequests.add(u.pathname);
  });
  page.on('requestfailed', (req) => {
    const why = req.failure()?.errorText ?? '';
    if (!why.includes('ERR_ABORTED')) problems.push(`request failed: ${req.method()} ${req.url()} ${why}`);
  });
  return { page, problems };
}

/** A small JPEG of seeded noise: distinct for each seed, and never flat. */
async function noiseJpeg(seed: number, size = 16): Promise<Buffer> {
  const px = Buffer.alloc(size * size * 3);
  let s = (seed * 2654435761 + 1) >>> 0;
  for (let k = 0; k < px.length; k++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    px[k] = s >>> 24;
  }
  return sharp(px, { raw: { width: size, height: size, channels: 3 } }).jpeg({ quality: 80 }).toBuffer();
}

async function firstImages(dir: string, n: number): Promise<string[]> {
  return (await readdir(dir)).filter((f) => f.endsWith('.jpg')).sort().slice(0, n).map((f) => join(dir, f));
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** The page's JS heap (after a GC) and DOM size, from the DevTools protocol. */
async function pageMetrics(page: Page): Promise<Record<string, number>> {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('HeapProfiler.collectGarbage');
  await cdp.send('Performance.enable');
  const { metrics } = await cdp.send('Performance.getMetrics');
  await cdp.detach();
  return Object.fromEntries(metrics.map((m) => [m.name, m.value]));
}

async function health(server: Server): Promise<{ memory: { rssBytes: number; heapUsedBytes: number } }> {
  const res = await fetch(new URL('v1/health', server.url), { headers: { Authorization: `Bearer ${TOKEN}` } });
  assert.equal(res.status, 200);
  return (await res.json()) as { memory: { rssBytes: number; heapUsedBytes: number } };
}

const MB = 2 ** 20;

describe('graft serve: the web page in chromium', () => {
  let tmp: string;
  let server: Server;
  let browser: Browser;
  let context: BrowserContext;

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'graft-web-'));
    await rm(ARTIFACTS, { recursive: true, force: true });
    await mkdir(ARTIFACTS, { recursive: true });
    server = await startServer(join(tmp, 'data'));
    // A fake camera and microphone (a test pattern and a beep), granted without asking.
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'] });
    context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1500, height: 1000 } });
    context.setDefaultTimeout(30_000);
  });

  after(async () => {
    await browser?.close();
    if (server && server.proc.exitCode === null) {
      server.proc.kill('SIGTERM');
      await new Promise((r) => {
        const t = setTimeout(() => {
          server.proc.kill('SIGKILL');
          r(undefined);
        }, 5000);
        server.proc.once('exit', () => {
          clearTimeout(t);
          r(undefined);
        });
      });
    }
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('creates a project, uploads, trains, predicts, downloads the zip and runs model.onnx in the page', async () => {
    const t0 = Date.now();
    const { page, problems } = await openPage(context);
    try {
      // The token travels in the fragment and leaves the address bar.
      await page.goto(`${server.url}#token=${TOKEN}`);
      await page.getByTestId('server-status').filter({ hasText: 'graft' }).waitFor();
      assert.ok(!page.url().includes(TOKEN), 'the token is removed from the URL');

      await page.getByTestId('project-name').fill('ants and bees');
      await page.getByTestId('project-create').click();
      const cards = page.getByTestId('class-card');
      await cards.nth(1).waitFor();
      assert.equal(await cards.count(), 2, 'a new project starts with two classes');

      for (const [i, name] of ['ants', 'bees'].entries()) {
        const input = cards.nth(i).getByTestId('class-name');
        await input.fill(name);
        await input.press('Enter');
        await page.waitForFunction(([idx, n]) => document.querySelectorAll<HTMLElement>('[data-testid="class-card"]')[idx as number]?.dataset.className === n, [i, name]);
      }

      // Labels are text: a class named like markup shows those characters and runs nothing.
      await page.getByTestId('new-class-name').fill(XSS_CLASS);
      await page.getByTestId('add-class').click();
      await cards.nth(2).waitFor();
      assert.equal(await cards.nth(2).getByTestId('class-name').inputValue(), XSS_CLASS);
      await page.getByTestId('project-item').first().waitFor();

      // Upload: 12 real photos per class, plus a "photo" that is not one, whose name is markup.
      const ants = await firstImages(join(HYM, 'train/ants'), PER_CLASS);
      const bees = await firstImages(join(HYM, 'train/bees'), PER_CLASS);
      await cards.nth(0).getByTestId('class-file-input').setInputFiles([
        ...ants,
      ]);
      await cards.nth(0).getByTestId('class-count').filter({ hasText: `${PER_CLASS} samples` }).waitFor();
      await cards.nth(1).getByTestId('class-file-input').setInputFiles(bees);
      await cards.nth(1).getByTestId('class-count').filter({ hasText: `${PER_CLASS} samples` }).waitFor();
      await cards.nth(2).getByTestId('class-file-input').setInputFiles([{ name: XSS_FILE, mimeType: 'image/jpeg', buffer: Buffer.from('these are not pixels\n') }]);
      const rejected = cards.nth(2).getByTestId('upload-rejected');
      await rejected.filter({ hasText: XSS_FILE }).waitFor();
      assert.equal(await rejected.locator('img').count(), 0, 'a rejected file name is shown as text');
      assert.equal(await cards.nth(2).getByTestId('class-count').textContent(), '0 samples');
      await page.locator('[data-testid="class-card"]:nth-child(1) [data-testid="sample-thumb"] img[src^="blob:"]').first().waitFor();
      assert.ok((await cards.nth(0).getByTestId('sample-thumb').count()) === PER_CLASS);
      await shot(page, '01-uploaded');
      assert.equal(await page.evaluate(() => (window as { __xss?: number }).__xss), undefined, 'no injected script ran');
      assert.equal(await page.locator('img[src="x"]').count(), 0, 'no injected element');

      // The empty markup-named class goes (two clicks: the button asks first).
      await cards.nth(2).getByTestId('class-delete').click();
      await cards.nth(2).getByTestId('class-delete').click();
      await page.waitForFunction(() => document.querySelectorAll('[data-testid="class-card"]').length === 2);

      // Train: head only, on the fast int8 MobileNetV2 given in the advanced options, with augmented views and
      // test-time augmentation (so the in-browser export check below must mirror as the server does).
      await page.getByTestId('train-advanced-toggle').click();
      await page.getByTestId('train-model').fill(MODEL);
      await page.getByTestId('train-augment').selectOption('light');
      await page.getByTestId('train-tta').check();
      await page.getByTestId('train-epochs').fill('20');
      await page.getByTestId('train-seed').fill('1');
      const tTrain = Date.now();
      await page.getByTestId('train-start').click();
      await page.locator('[data-testid="train-panel"][data-state="succeeded"], [data-testid="train-panel"][data-state="failed"]').waitFor({ timeout: 90_000 });
      const trainError = await page.getByTestId('train-error').textContent();
      assert.equal(await page.getByTestId('train-panel').getAttribute('data-state'), 'succeeded', `training failed: ${trainError}`);
      const trainSeconds = (Date.now() - tTrain) / 1000;
      const points = Number(await page.getByTestId('chart-loss').getAttribute('data-points'));
      assert.ok(points >= 1, 'the loss curve has points');
      await page.getByTestId('metric-accuracy').waitFor();
      const accuracy = parseFloat((await page.getByTestId('metric-accuracy').textContent()) ?? '');
      assert.ok(accuracy >= 50 && accuracy <= 100, `validation accuracy ${accuracy}%`);
      assert.equal(await page.getByTestId('per-class-row').count(), 2);
      await page.getByTestId('confusion-matrix').waitFor();
      await shot(page, '02-trained');

      // Preview: a validation bee.
      const [bee] = await firstImages(join(HYM, 'val/bees'), 1);
      await page.getByTestId('preview-file').setInputFiles(bee!);
      const bars = page.getByTestId('preview-bars');
      await bars.waitFor();
      assert.equal(await bars.getByTestId('prob-bar').count(), 2);
      assert.deepEqual((await bars.getByTestId('prob-label').allTextContents()).sort(), ['ants', 'bees']);
      const total = (await bars.getByTestId('prob-value').allTextContents()).reduce((a, t) => a + parseFloat(t), 0);
      assert.ok(Math.abs(total - 100) < 0.5, `probabilities add up to ${total}%`);
      await shot(page, '03-preview');

      // Export: the zip.
      const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('export-download').click()]);
      const zipPath = join(tmp, 'model.zip');
      await download.saveAs(zipPath);
      assert.match(download.suggestedFilename(), /\.zip$/);
      const zip = await readFile(zipPath);
      assert.equal(zip.readUInt32LE(0), 0x04034b50, 'a zip file');
      const unzipped = unzipSync(new Uint8Array(zip), { filter: (f) => f.name.endsWith('graft.json') || f.name.endsWith('model.onnx') });
      const entries = Object.keys(unzipped);
      const manifest = JSON.parse(new TextDecoder().decode(unzipped[entries.find((e) => e.endsWith('graft.json'))!]!)) as { inference?: unknown; training: { augmentation?: unknown } };
      assert.deepEqual(manifest.inference, { tta: 'flip' }, 'trained with test-time augmentation');
      assert.deepEqual(manifest.training.augmentation, { policy: 'light', views: 4, tta: true });
      assert.ok(entries.some((e) => e.endsWith('model.onnx')), `zip entries: ${entries.join(', ')}`);
      assert.ok(entries.some((e) => e.endsWith('graft.json')), `zip entries: ${entries.join(', ')}`);

      // Export: the same model.onnx in the page (onnxruntime-web, WASM) against the server's prediction.
      const [ant] = await firstImages(join(HYM, 'val/ants'), 1);
      await page.getByTestId('export-check-file').setInputFiles(ant!);
      const tCheck = Date.now();
      await page.getByTestId('export-check-run').click();
      await page.locator('[data-testid="export-panel"][data-check="match"], [data-testid="export-panel"][data-check="mismatch"], [data-testid="export-panel"][data-check="error"]').waitFor({ timeout: 60_000 });
      const status = await page.getByTestId('export-check-status').textContent();
      assert.notEqual(await page.getByTestId('export-panel').getAttribute('data-check'), 'error', `export check: ${status}`);
      const diff = Number(await page.getByTestId('export-maxdiff').getAttribute('data-value'));
      assert.ok(diff <= 1e-4, `browser vs server max |diff| = ${diff}`);
      // Exactly the files the server's /ort/ allow-list must hold.
      assert.deepEqual([...ortRequests].sort(), ['/ort/ort-wasm-simd-threaded.mjs', '/ort/ort-wasm-simd-threaded.wasm', '/ort/ort.wasm.min.mjs']);
      await shot(page, '04-export');

      // Cancel: a long second run stops when asked, and the trained model stays.
      await page.getByTestId('train-epochs').fill('1000');
      await page.getByTestId('train-start').click();
      await page.locator('[data-testid="train-panel"][data-state="running"]').waitFor();
      await page.getByTestId('train-cancel').click();
      await page.locator('[data-testid="train-panel"][data-state="cancelled"]').waitFor();
      assert.ok(await page.getByTestId('metric-accuracy').isVisible(), 'the earlier model is still shown');
      console.log(`web flow: trained in ${trainSeconds.toFixed(1)} s (${points} epochs, accuracy ${accuracy}%), export check max |diff| ${diff.toExponential(2)} in ${((Date.now() - tCheck) / 1000).toFixed(1)} s, whole flow ${((Date.now() - t0) / 1000).toFixed(1)} s`);

      assert.equal(await page.evaluate(() => (window as { __xss?: number }).__xss), undefined, 'no injected script ran');
      assert.deepEqual(problems, [], 'no console errors, page errors or failed requests');
    } catch (err) {
      await shot(page, 'failure-flow').catch(() => undefined);
      console.log(`server stderr (tail):\n${server.stderr.join('').slice(-4000)}`);
      if (problems.length) console.log(`page problems:\n${problems.join('\n')}`);
      throw err;
    } finally {
      await page.close();
    }
  });

  it('adds samples from the webcam, drag and drop, a zip, the microphone and typed text', async () => {
    const { page, problems } = await openPage(context);
    try {
      await page.goto(`${server.url}#token=${TOKEN}`);
      await page.getByTestId('server-status').filter({ hasText: 'graft' }).waitFor();
      const cards = page.getByTestId('class-card');

      // Images: one frame from the webcam.
      await page.getByTestId('project-name').fill('webcam');
      await page.getByTestId('project-create').click();
      await page.getByTestId('project-title').and(page.locator('[value="webcam"]')).waitFor();
      await cards.nth(0).getByTestId('class-webcam').click();
      await cards.nth(0).getByTestId('class-webcam-video').waitFor();
      await page.waitForFunction(() => (document.querySelector<HTMLVideoElement>('[data-testid="class-webcam-video"]')?.videoWidth ?? 0) > 0);
      await cards.nth(0).getByTestId('class-webcam-snap').click();
      await cards.nth(0).getByTestId('class-count').filter({ hasText: '1 sample' }).waitFor();
      await cards.nth(0).locator('[data-testid="sample-thumb"] img[src^="blob:"]').waitFor();
      await cards.nth(0).getByTestId('class-webcam-close').click();

      // Drag and drop: two files dropped on the second class.
      const dropped = await Promise.all([1, 2].map(async (i) => ({ name: `dropped-${i}.jpg`, bytes: [...(await noiseJpeg(1000 + i))] })));
      const dataTransfer = await page.evaluateHandle((files) => {
        const dt = new DataTransfer();
        for (const f of files) dt.items.add(new File([new Uint8Array(f.bytes)], f.name, { type: 'image/jpeg' }));
        return dt;
      }, dropped);
      await cards.nth(1).getByTestId('class-dropzone').dispatchEvent('drop', { dataTransfer });
      await cards.nth(1).getByTestId('class-count').filter({ hasText: '2 samples' }).waitFor();

      // A zip of class folders (under one top folder): its classes are made as needed.
      const zip = zipSync({
        'photos/cats/a.jpg': await noiseJpeg(2001),
        'photos/cats/b.jpg': await noiseJpeg(2002),
        'photos/dogs/c.jpg': await noiseJpeg(2003),
      });
      await page.getByTestId('import-zip-input').setInputFiles({ name: 'photos.zip', mimeType: 'application/zip', buffer: Buffer.from(zip) });
      await page.getByTestId('import-zip-status').filter({ hasText: 'Imported 3 samples' }).waitFor();
      await page.locator('[data-testid="class-card"][data-class-name="cats"] [data-testid="class-count"]', { hasText: '2 samples' }).waitFor();
      await page.locator('[data-testid="class-card"][data-class-name="dogs"] [data-testid="class-count"]', { hasText: '1 sample' }).waitFor();
      await page.getByTestId('project-item').filter({ hasText: 'webcam' }).filter({ hasText: '6 samples' }).waitFor();

      // Audio: a one-second clip from the microphone, sent as WAV.
      await page.getByTestId('project-name').fill('microphone');
      await page.getByTestId('project-task').selectOption('audio');
      await page.getByTestId('project-create').click();
      await page.getByTestId('project-task-badge').filter({ hasText: 'audio' }).waitFor();
      await cards.nth(0).getByTestId('class-mic-seconds').selectOption('1');
      await cards.nth(0).getByTestId('class-mic').click();
      await cards.nth(0).getByTestId('class-count').filter({ hasText: '1 sample' }).waitFor();
      assert.match((await cards.nth(0).getByTestId('sample-thumb').textContent()) ?? '', /mic-.*\.wav/);

      // Text: typed examples, one a line; markup in a text is shown as text.
      await page.getByTestId('project-name').fill('texts');
      await page.getByTestId('project-task').selectOption('text');
      await page.getByTestId('project-create').click();
      await page.getByTestId('project-task-badge').filter({ hasText: 'text' }).waitFor();
      const markup = '<img src=x onerror="window.__xss=3"> hello';
      await cards.nth(0).getByTestId('class-text-input').fill(`first example\n${markup}`);
      await cards.nth(0).getByTestId('class-text-add').click();
      await cards.nth(0).getByTestId('class-count').filter({ hasText: '2 samples' }).waitFor();
      await cards.nth(0).getByTestId('sample-thumb').nth(1).waitFor();
      assert.deepEqual(await cards.nth(0).getByTestId('sample-thumb').allTextContents(), ['first example×', `${markup}×`]);
      await shot(page, '05-text');

      assert.equal(await page.evaluate(() => (window as { __xss?: number }).__xss), undefined, 'no injected script ran');
      assert.equal(await page.locator('img[src="x"]').count(), 0, 'no injected element');
      assert.deepEqual(problems, [], 'no console errors, page errors or failed requests');
    } catch (err) {
      await shot(page, 'failure-capture').catch(() => undefined);
      console.log(`server stderr (tail):\n${server.stderr.join('').slice(-4000)}`);
      if (problems.length) console.log(`page problems:\n${problems.join('\n')}`);
      throw err;
    } finally {
      await page.close();
    }
  });

  it(`stays light and responsive with ${MANY} uploaded images`, async () => {
    // Small, distinct, non-flat JPEGs: noise from a per-image seed.
    const dir = join(tmp, 'many');
    await mkdir(dir, { recursive: true });
    const tGen = Date.now();
    const files: string[] = [];
    for (let i = 0; i < MANY; i++) {
      const f = join(dir, `img-${String(i).padStart(4, '0')}.jpg`);
      await writeFile(f, await noiseJpeg(i));
      files.push(f);
    }
    const genSeconds = (Date.now() - tGen) / 1000;

    const { page, problems } = await openPage(context);
    try {
      await page.goto(`${server.url}#token=${TOKEN}`);
      await page.getByTestId('server-status').filter({ hasText: 'graft' }).waitFor();
      await page.getByTestId('project-name').fill('many images');
      await page.getByTestId('project-create').click();
      const cards = page.getByTestId('class-card');
      await cards.nth(1).waitFor();

      const rssBefore = (await health(server)).memory.rssBytes;
      const tUp = Date.now();
      const half = MANY / 2;
      await cards.nth(0).getByTestId('class-file-input').setInputFiles(files.slice(0, half));
      await cards.nth(1).getByTestId('class-file-input').setInputFiles(files.slice(half));
      // Both cards upload at once, in chunks, each with its progress bar.
      await cards.nth(0).getByTestId('class-count').filter({ hasText: `${half} samples` }).waitFor({ timeout: 90_000 });
      await cards.nth(1).getByTestId('class-count').filter({ hasText: `${MANY - half} samples` }).waitFor({ timeout: 90_000 });
      await page.locator('[data-testid="upload-progress-label"]', { hasText: `Uploaded ${half} of ${half} files` }).first().waitFor();
      const upSeconds = (Date.now() - tUp) / 1000;
      await page.getByTestId('project-item').filter({ hasText: `${MANY} samples` }).waitFor();

      // The grid shows a bounded page of thumbnails per class, and says how many there are.
      await cards.nth(0).getByTestId('samples-shown').filter({ hasText: `of ${half}` }).waitFor();
      const tiles = await page.getByTestId('sample-thumb').count();
      assert.ok(tiles <= 2 * 24, `${tiles} tiles rendered for ${MANY} samples`);

      // Responsive: an interaction completes quickly.
      const tMore = Date.now();
      await cards.nth(0).getByTestId('samples-more').click();
      await cards.nth(0).getByTestId('samples-shown').filter({ hasText: `Showing 48 of ${half}` }).waitFor();
      const moreMs = Date.now() - tMore;
      assert.ok(moreMs < 3000, `"show more" took ${moreMs} ms`);
      const tRename = Date.now();
      const name = cards.nth(1).getByTestId('class-name');
      await name.fill('renamed');
      await name.press('Enter');
      await page.waitForFunction(() => document.querySelectorAll<HTMLElement>('[data-testid="class-card"]')[1]?.dataset.className === 'renamed');
      const renameMs = Date.now() - tRename;
      assert.ok(renameMs < 3000, `rename took ${renameMs} ms`);

      // A fresh load of the project with its 2,000 samples.
      const tLoad = Date.now();
      await page.reload();
      await cards.nth(0).getByTestId('samples-shown').filter({ hasText: `of ${half}` }).waitFor();
      await cards.nth(1).getByTestId('samples-shown').filter({ hasText: `of ${MANY - half}` }).waitFor();
      const loadMs = Date.now() - tLoad;
      // One page per class, once (a second load of the same page would double the tiles).
      await page.waitForTimeout(300);
      assert.deepEqual(await page.getByTestId('samples-shown').allTextContents(), [`Showing 24 of ${half}`, `Showing 24 of ${MANY - half}`]);
      assert.equal(await page.getByTestId('sample-thumb').count(), 48);
      assert.ok(loadMs < 5000, `reload took ${loadMs} ms`);
      const evalStart = Date.now();
      await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r(null))));
      const frameMs = Date.now() - evalStart;
      assert.ok(frameMs < 1000, `a frame took ${frameMs} ms`);
      await shot(page, '06-many');

      const m = await pageMetrics(page);
      const h = await health(server);
      console.log(`${MANY} images: generated in ${genSeconds.toFixed(1)} s, uploaded through the page in ${upSeconds.toFixed(1)} s (${Math.ceil(half / 20) * 2} requests of ≤ 20 files); show more ${moreMs} ms, rename ${renameMs} ms, reload ${loadMs} ms, frame ${frameMs} ms`);
      console.log(`page JS heap ${((m.JSHeapUsedSize ?? 0) / MB).toFixed(1)} MB used of ${((m.JSHeapTotalSize ?? 0) / MB).toFixed(1)} MB, ${m.Nodes} DOM nodes; server RSS ${(rssBefore / MB).toFixed(0)} MB before the uploads, ${(h.memory.rssBytes / MB).toFixed(0)} MB after, server heap ${(h.memory.heapUsedBytes / MB).toFixed(0)} MB`);
      assert.ok((m.JSHeapUsedSize ?? Infinity) < 50 * MB, `page heap ${m.JSHeapUsedSize}`);
      assert.deepEqual(problems, [], 'no console errors, page errors or failed requests');
    } catch (err) {
      await shot(page, 'failure-many').catch(() => undefined);
      console.log(`server stderr (tail):\n${server.stderr.join('').slice(-4000)}`);
      if (problems.length) console.log(`page problems:\n${problems.join('\n')}`);
      throw err;
    } finally {
      await page.close();
    }
  });
});
