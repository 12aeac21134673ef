import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import sharp from 'sharp';
import type { Browser } from 'playwright-core';
import { escapeHtml, renderReport, thumbnails, type ReportInput } from '../src/evaluate/html-report.js';
import { computeMetrics } from '../src/evaluate/metrics.js';
import type { EpochRecord } from '../src/train/trainer.js';
import { requireShared, SHARED } from './support/paths.js';

const ROOT = `${SHARED}/data/hymenoptera`;
const [ANT, BEE] = requireShared(`${ROOT}/train/ants/0013035.jpg`, `${ROOT}/train/bees/16838648_415acd9e3f.jpg`);
const MISSING = `${ROOT}/train/ants/no-such-image.jpg`;
const XSS = '<script>alert(1)</script>';
const ODD_FILE = `${ROOT}/val/bees/a&b "quoted" 'single'.jpg`;
const CHROMIUM = '/usr/bin/chromium';

const dir = mkdtempSync(join(tmpdir(), 'graft-html-report-'));
let browser: Browser | undefined;
after(async () => {
  await browser?.close();
  rmSync(dir, { recursive: true, force: true });
});

function history(epochs: number, start: { train: number; val: number; acc: number }, lr: number): EpochRecord[] {
  return Array.from({ length: epochs }, (_, i) => ({
    epoch: i + 1,
    lr: lr * 0.8 ** i,
    trainLoss: start.train * 0.8 ** i,
    valLoss: start.val * 0.85 ** i + 0.05,
    valAccuracy: Math.min(0.97, start.acc + 0.04 * i),
    valMacroF1: Math.min(0.96, start.acc - 0.02 + 0.04 * i),
    seconds: 1.5,
  }));
}

function input(thumbs: Record<string, string>, task: ReportInput['task'] = 'image', lrFind = true): ReportInput {
  const labels = ['ants', 'bees', XSS];
  // 30 validation samples: 10 per class, a few mistakes.
  const truth = [...Array(10).fill(0), ...Array(10).fill(1), ...Array(10).fill(2)] as number[];
  const predicted = [0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 2, 2, 2, 2, 2, 2, 2, 1, 1, 0];
  const metrics = { ...computeMetrics(labels, truth, predicted), loss: 0.4123 };
  const lrs = Array.from({ length: 60 }, (_, i) => 1e-6 * 10 ** (i / 10));
  const smoothed = lrs.map((_, i) => (i < 35 ? 1.1 - 0.8 * (i / 35) ** 2 : 0.3 + 0.02 * (i - 35) ** 2));
  return {
    title: 'graft · hymenoptera',
    createdAt: '2025-01-02T03:04:05.000Z',
    task,
    dataset: {
      root: ROOT,
      classes: labels,
      trainPerClass: [124, 121, 40],
      valPerClass: [10, 10, 10],
      split: 'train/ and val/ folders',
      skipped: [
        { file: ODD_FILE, reason: `unsupported image format ${XSS}` },
        ...Array.from({ length: 59 }, (_, i) => ({ file: `${ROOT}/train/ants/broken-${i}.jpg`, line: i + 1, reason: 'truncated JPEG' })),
      ],
    },
    backbone: { name: 'mobilenet-v3-small', featureDim: 576 },
    phases: [
      { name: 'head', history: history(5, { train: 0.9, val: 0.8, acc: 0.7 }, 1e-3) },
      { name: 'fine-tune', history: history(4, { train: 0.35, val: 0.32, acc: 0.86 }, 1e-4) },
    ],
    metrics,
    diagnostics: {
      topLosses: [
        { file: ANT, label: 'ants', predicted: 'bees', probability: 0.08, loss: 2.53, text: 'an ant & a "bee"' },
        { file: BEE, label: 'bees', predicted: XSS, probability: 0.12, loss: 2.12, text: `tricky ${XSS}` },
        { file: ODD_FILE, line: 7, label: XSS, predicted: 'ants', probability: 0.2, loss: 1.61, text: 'no thumbnail for this one' },
      ],
      confusedPairs: [
        { actual: XSS, predicted: 'bees', count: 2, rate: 0.2 },
        { actual: 'ants', predicted: 'bees', count: 1, rate: 0.1 },
      ],
      calibration: {
        ece: 0.0612,
        perClass: { ants: 0.041, bees: 0.055, [XSS]: 0.083 },
        bins: Array.from({ length: 10 }, (_, i) => ({
          lower: i / 10,
          upper: (i + 1) / 10,
          count: i < 3 ? 0 : 2 + i,
          confidence: i < 3 ? 0 : i / 10 + 0.05,
          accuracy: i < 3 ? 0 : Math.min(1, i / 10 + 0.05 - 0.08 + 0.01 * i),
        })),
      },
      mislabeled: [
        { file: BEE, given: 'ants', suggested: 'bees', givenProbability: 0.05, suggestedProbability: 0.91, text: 'clearly a bee' },
        { file: MISSING, given: 'bees', suggested: XSS, givenProbability: 0.1, suggestedProbability: 0.7, text: 'gone' },
      ],
      nearDuplicates: [{ val: { file: `${ROOT}/val/ants/dup.jpg`, text: 'dup' }, train: { file: ANT, text: 'orig' }, cosine: 0.9987 }],
    },
    ...(lrFind ? { lrFind: { lrs, smoothed, suggestion: lrs[28]! } } : {}),
    thumbnails: thumbs,
  };
}

test('escapeHtml escapes the five special characters', () => {
  assert.equal(escapeHtml(XSS), '&lt;script&gt;alert(1)&lt;/script&gt;');
  assert.equal(escapeHtml(`a&b "q" 'x'`), 'a&amp;b &quot;q&quot; &#39;x&#39;');
  assert.equal(escapeHtml(42), '42');
});

test('thumbnails: small JPEG data URLs of the readable images, unreadable files left out', async () => {
  const thumbs = await thumbnails([ANT, BEE, MISSING, ANT]);
  assert.deepEqual(Object.keys(thumbs).sort(), [ANT, BEE].sort());
  for (const url of Object.values(thumbs)) {
    assert.match(url, /^data:image\/jpeg;base64,[A-Za-z0-9+/]+=*$/);
    const meta = await sharp(Buffer.from(url.slice(url.indexOf(',') + 1), 'base64')).metadata();
    assert.equal(meta.format, 'jpeg');
    assert.ok(meta.width! <= 112 && meta.height! <= 112 && Math.max(meta.width!, meta.height!) === 112, `${meta.width}x${meta.height}`);
  }
  const small = await thumbnails([BEE], 32);
  const meta = await sharp(Buffer.from(small[BEE]!.split(',')[1]!, 'base64')).metadata();
  assert.ok(Math.max(meta.width!, meta.height!) === 32);
});

test('renderReport: self-contained, escaped, every section present', () => {
  const html = renderReport(input({ [ANT]: 'data:image/jpeg;base64,AAAA', [BEE]: 'javascript:alert(1)' }));
  assert.match(html, /^<!DOCTYPE html>\n<html lang="en">/);
  assert.match(html, /<meta charset="utf-8">/);
  // No external resource: the only URL is the SVG namespace.
  const urls = html.match(/https?:\/\/[^\s"'<>]*/g) ?? [];
  assert.ok(urls.length > 0 && urls.every((u) => u === 'http://www.w3.org/2000/svg'), urls.join(' '));
  assert.doesNotMatch(html, /<script/i);
  assert.doesNotMatch(html, /<link|@import|url\(/i);
  assert.ok(!html.includes(XSS));
  assert.ok(html.includes('&lt;script&gt;alert(1)&lt;/script&gt;'));
  assert.ok(!html.includes(`a&b "quoted"`));
  assert.ok(html.includes('a&amp;b &quot;quoted&quot; &#39;single&#39;.jpg'));
  // A thumbnail that is not an image data URL is not used.
  assert.ok(!html.includes('javascript:'));
  // The ant's thumbnail: as a top loss and as the training half of the near-duplicate pair.
  assert.equal((html.match(/<img /g) ?? []).length, 2);
  for (const id of ['dataset', 'curves', 'confusion', 'per-class', 'calibration', 'ece', 'lr-find', 'top-losses', 'mislabeled', 'near-duplicates', 'skipped']) {
    assert.ok(html.includes(`id="${id}"`), id);
  }
  // Skipped files: 50 rows and a count of the rest.
  const skipped = html.slice(html.indexOf('id="skipped"'));
  assert.equal((skipped.slice(0, skipped.indexOf('</table>')).match(/<tr>/g) ?? []).length, 51);
  assert.ok(html.includes('… and 10 more skipped files not shown.'));
  // Both phases labelled, one separator line per panel between them.
  assert.ok(html.includes('>head</text>') && html.includes('>fine-tune</text>'));
  assert.equal((html.match(/class="phase-separator"/g) ?? []).length, 2);
  assert.ok(html.includes('suggested 6.3e-4'));
  // Texts and audio: excerpts and file names instead of thumbnails.
  const text = renderReport(input({}, 'text', false));
  assert.ok(!text.includes('id="lr-find"'));
  assert.ok(text.includes('<blockquote class="excerpt">tricky &lt;script&gt;alert(1)&lt;/script&gt;</blockquote>'));
  assert.ok(text.includes('an ant &amp; a &quot;bee&quot;'));
  assert.ok(!text.includes('<img'));
  const audio = renderReport(input({}, 'audio'));
  assert.ok(!audio.includes('<blockquote') && !audio.includes('<img') && !audio.includes('no preview'));
  assert.ok(audio.includes('train/ants/0013035.jpg'));
  // No history at all still renders.
  assert.ok(renderReport({ ...input({}), phases: [] }).includes('No training history recorded.'));
});

test('report.html renders in a real browser: no errors, charts drawn, thumbnails loaded, not blank', async (t) => {
  // Never skipped: .ci/run and the README's test command install Debian's chromium.
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium (see the README's test command)`);
  const { chromium } = await import('playwright-core');
  const thumbs = await thumbnails([ANT, BEE, MISSING]);
  const file = join(dir, 'report.html');
  writeFileSync(file, renderReport(input(thumbs)));

  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
  const page = await browser.newPage({ viewport: { width: 1366, height: 768 } });
  const errors: string[] = [];
  const requests: string[] = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`console: ${msg.text()}`);
  });
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
  page.on('request', (req) => requests.push(req.url()));
  await page.goto(pathToFileURL(file).href, { waitUntil: 'load' });

  assert.deepEqual(errors, []);
  // Nothing but the file itself (data: URLs are not requests that leave the page).
  assert.ok(requests.every((u) => u.startsWith('file:') || u.startsWith('data:')), requests.join(' '));

  for (const id of ['curves', 'confusion', 'calibration', 'lr-find']) {
    const box = await page.locator(`#${id}`).boundingBox();
    assert.ok(box && box.width > 0 && box.height > 0, `#${id} has no size`);
  }
  const curvePaths = await page.$$eval('#curves path, #curves polyline', (els) =>
    els.map((el) => (el.getAttribute('d') ?? el.getAttribute('points') ?? '').length),
  );
  assert.ok(curvePaths.length >= 4 && curvePaths.every((n) => n > 10), String(curvePaths));
  assert.ok((await page.locator('#lr-find path.series').count()) === 1);
  assert.ok((await page.locator('#calibration rect.bin').count()) === 7);

  const images = await page.$$eval('img.thumb', (imgs) => imgs.map((img) => ({ alt: img.getAttribute('alt'), width: (img as HTMLImageElement).naturalWidth, complete: (img as HTMLImageElement).complete })));
  // Ant: top loss and near-duplicate; bee: top loss and mislabel candidate. The missing and the odd file have none.
  assert.equal(images.length, 4);
  assert.ok(images.every((img) => img.complete && img.width > 0), JSON.stringify(images));
  assert.ok(images.some((img) => img.alt?.includes('ants/')) && images.some((img) => img.alt?.includes('bees/')));
  assert.equal(await page.locator('.thumb.none').count(), 2);

  // The escaped label is shown as text, and nothing injected runs.
  assert.ok((await page.locator('#per-class').innerText()).includes(XSS));
  // Readable on a laptop: no horizontal scrolling of the page.
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth));

  const png = await page.screenshot({ fullPage: true });
  const stats = await sharp(png).stats();
  assert.ok(stats.channels.slice(0, 3).every((ch) => ch.stdev > 5), stats.channels.map((ch) => ch.stdev).join(' '));
  const shot = join(tmpdir(), 'graft-html-report.png');
  writeFileSync(shot, png);
  t.diagnostic(`screenshot: ${shot}`);
});
