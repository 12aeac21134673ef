import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import sharp from 'sharp';
import { scanImageFolder, scanLabelledFolder, sniffImageType } from '../src/data/dataset.js';
import { GraftError } from '../src/errors.js';
import { requireShared, SHARED } from './support/paths.js';

const HYMENOPTERA = `${SHARED}/data/hymenoptera`;

let tmp: string;
let jpeg: Buffer;

/** Writes `count` small JPEGs into each `dir/<class>` of `layout` (paths relative to `dir`). */
async function makeTree(dir: string, layout: Record<string, number>): Promise<string> {
  for (const [folder, count] of Object.entries(layout)) {
    await mkdir(path.join(dir, folder), { recursive: true });
    for (let i = 0; i < count; i++) await writeFile(path.join(dir, folder, `img${String(i).padStart(2, '0')}.jpg`), jpeg);
  }
  return dir;
}

let counter = 0;
const fresh = () => path.join(tmp, `case${counter++}`);

/** Asserts that `promise` rejects with a GraftError of `code` whose message matches every pattern. */
async function rejectsWith(promise: Promise<unknown>, code: string, ...patterns: RegExp[]): Promise<void> {
  await assert.rejects(promise, (e: unknown) => {
    assert.ok(e instanceof GraftError, `expected a GraftError, got ${String(e)}`);
    assert.equal(e.code, code);
    for (const p of patterns) assert.match(e.message, p);
    return true;
  });
}

before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'graft-data-'));
  jpeg = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#808080' } }).jpeg().toBuffer();
});
after(() => rm(tmp, { recursive: true, force: true }));

describe('sniffImageType', () => {
  const bytes = (...parts: Array<string | number[]>) =>
    Uint8Array.from(parts.flatMap((p) => (typeof p === 'string' ? [...p].map((c) => c.charCodeAt(0)) : p)));
  it('recognises image signatures and nothing else', () => {
    assert.equal(sniffImageType(bytes([0xff, 0xd8, 0xff, 0xe0])), 'jpeg');
    assert.equal(sniffImageType(bytes([0x89], 'PNG\r\n', [0x1a, 0x0a])), 'png');
    assert.equal(sniffImageType(bytes('GIF89a')), 'gif');
    assert.equal(sniffImageType(bytes('RIFF', [1, 2, 3, 4], 'WEBPVP8 ')), 'webp');
    assert.equal(sniffImageType(bytes('II', [42, 0])), 'tiff');
    assert.equal(sniffImageType(bytes('MM', [0, 42])), 'tiff');
    assert.equal(sniffImageType(bytes('BM', new Array(14).fill(0))), 'bmp');
    assert.equal(sniffImageType(bytes([0, 0, 0, 28], 'ftypavif')), 'avif');
    assert.equal(sniffImageType(bytes([0, 0, 0, 28], 'ftypheic')), 'heif');
    assert.equal(sniffImageType(bytes([0, 0, 0, 28], 'ftypisom')), undefined); // an MP4 video
    assert.equal(sniffImageType(bytes('hello world!')), undefined);
    assert.equal(sniffImageType(new Uint8Array(0)), undefined);
  });
});

describe('scanImageFolder: random split', () => {
  it('is stratified, seeded and sized max(1, round(n·f)) per class', async () => {
    const dir = await makeTree(fresh(), { a: 10, b: 7, c: 3, 'c/nested/deeper': 2 });
    const ds = await scanImageFolder(dir);
    assert.deepEqual(ds.classes, ['a', 'b', 'c']);
    assert.deepEqual(ds.split, { kind: 'random', valFraction: 0.2, seed: 0 });
    const count = (samples: typeof ds.train, label: number) => samples.filter((s) => s.label === label).length;
    assert.deepEqual([0, 1, 2].map((l) => count(ds.val, l)), [2, 1, 1]);
    assert.deepEqual([0, 1, 2].map((l) => count(ds.train, l)), [8, 6, 4]);
    // Every file exactly once, absolute, nested ones included.
    const all = [...ds.train, ...ds.val].map((s) => s.file).sort();
    assert.equal(new Set(all).size, 22);
    assert.ok(all.every((f) => path.isAbsolute(f)));
    assert.ok(all.some((f) => f.includes(path.join('c', 'nested', 'deeper'))));

    assert.deepEqual(await scanImageFolder(dir, { seed: 0 }), ds);
    const other = await scanImageFolder(dir, { seed: 1 });
    assert.notDeepEqual(other.val, ds.val);
    assert.equal(other.val.length, ds.val.length);
  });

  it('keeps at least one training image per class', async () => {
    const dir = await makeTree(fresh(), { a: 2, b: 3 });
    const ds = await scanImageFolder(dir, { valSplit: 0.9 });
    assert.deepEqual(ds.train.map((s) => s.label), [0, 1]);
    assert.deepEqual(ds.val.map((s) => s.label), [0, 1, 1]);
  });

  it('ignores hidden files and folders silently', async () => {
    const dir = await makeTree(fresh(), { a: 2, b: 2, 'b/.thumbs': 3, '.git': 2 });
    await writeFile(path.join(dir, '.DS_Store'), 'junk');
    await writeFile(path.join(dir, 'a', '.hidden.jpg'), 'junk');
    const ds = await scanImageFolder(dir);
    assert.deepEqual(ds.classes, ['a', 'b']);
    assert.equal(ds.train.length + ds.val.length, 4);
    assert.deepEqual(ds.skipped, []);
  });

  it('skips and names empty files and non-images', async () => {
    const dir = await makeTree(fresh(), { a: 2, b: 2 });
    await writeFile(path.join(dir, 'a', 'empty.jpg'), '');
    await writeFile(path.join(dir, 'b', 'notes.txt'), 'not a picture');
    const ds = await scanImageFolder(dir);
    assert.deepEqual(ds.skipped, [
      { file: path.join(dir, 'a', 'empty.jpg'), reason: 'empty file (0 bytes)' },
      { file: path.join(dir, 'b', 'notes.txt'), reason: 'not an image (unrecognised file signature)' },
    ]);
    assert.equal(ds.train.length + ds.val.length, 4);
  });

  it('rejects a valSplit outside (0, 1)', async () => {
    const dir = await makeTree(fresh(), { a: 2, b: 2 });
    for (const valSplit of [0, 1, -0.5, Number.NaN]) await rejectsWith(scanImageFolder(dir, { valSplit }), 'USAGE', /valSplit/);
  });
});

describe('scanImageFolder: train/val folders', () => {
  for (const valName of ['val', 'valid', 'validation', 'test']) {
    it(`uses train/ and ${valName}/`, async () => {
      const dir = await makeTree(fresh(), { 'train/cat': 3, 'train/dog': 2, [`${valName}/cat`]: 1, [`${valName}/dog`]: 2 });
      const ds = await scanImageFolder(dir);
      assert.deepEqual(ds.classes, ['cat', 'dog']);
      assert.deepEqual(ds.split, { kind: 'folders', train: path.join(dir, 'train'), val: path.join(dir, valName) });
      assert.deepEqual(ds.train.map((s) => s.label), [0, 0, 0, 1, 1]);
      assert.deepEqual(ds.val.map((s) => s.label), [0, 1, 1]);
      assert.ok(ds.val.every((s) => s.file.startsWith(path.join(dir, valName) + path.sep)));
    });
  }

  it('prefers val/ over test/', async () => {
    const dir = await makeTree(fresh(), { 'train/a': 2, 'train/b': 2, 'val/a': 1, 'test/a': 2 });
    const ds = await scanImageFolder(dir);
    assert.deepEqual(ds.split, { kind: 'folders', train: path.join(dir, 'train'), val: path.join(dir, 'val') });
    assert.equal(ds.val.length, 1);
  });

  it('rejects a validation class that train does not have', async () => {
    const dir = await makeTree(fresh(), { 'train/a': 2, 'train/b': 2, 'val/a': 1, 'val/zebra': 1 });
    await rejectsWith(scanImageFolder(dir), 'DATASET', /zebra/, /not present/, /train classes: a, b/);
  });

  it('reads the real hymenoptera layout', async () => {
    requireShared(HYMENOPTERA);
    const ds = await scanImageFolder(HYMENOPTERA);
    assert.deepEqual(ds.classes, ['ants', 'bees']);
    assert.equal(ds.split.kind, 'folders');
    const count = (samples: typeof ds.train, label: number) => samples.filter((s) => s.label === label).length;
    assert.deepEqual([count(ds.train, 0), count(ds.train, 1)], [124, 121]);
    assert.deepEqual([count(ds.val, 0), count(ds.val, 1)], [70, 83]);
    assert.deepEqual(ds.skipped, []); // the placeholder GIF is a valid GIF: it is caught at decode time
  });
});

describe('scanImageFolder: errors', () => {
  it('names a missing folder', async () => {
    const dir = path.join(tmp, 'does-not-exist');
    await rejectsWith(scanImageFolder(dir), 'DATASET', /does not exist/, new RegExp(dir));
  });

  it('names a file given as the folder', async () => {
    const file = path.join(tmp, 'a-file.txt');
    await writeFile(file, 'x');
    await rejectsWith(scanImageFolder(file), 'DATASET', /not a folder/);
  });

  it('needs class folders', async () => {
    const dir = fresh();
    await mkdir(dir);
    await writeFile(path.join(dir, 'x.jpg'), jpeg);
    await rejectsWith(scanImageFolder(dir), 'DATASET', /No class folders/, /1 file/);
  });

  it('needs two classes', async () => {
    const dir = await makeTree(fresh(), { only: 5 });
    await rejectsWith(scanImageFolder(dir), 'DATASET', /1 class folder \(only\)/, /at least 2 classes/);
  });

  it('lists the classes with fewer than two usable images', async () => {
    const dir = await makeTree(fresh(), { a: 3, b: 1, c: 0, d: 0 });
    await writeFile(path.join(dir, 'b', 'broken.jpg'), '');
    // A class whose every file was skipped says so, not just "(0)".
    for (const f of ['one.jpg', 'two.jpg']) await writeFile(path.join(dir, 'd', f), 'not a picture');
    await rejectsWith(scanImageFolder(dir), 'DATASET', /fewer than 2 usable images/, /: b \(1 usable; 1 skipped, e\.g\. broken\.jpg: empty file \(0 bytes\)\), c \(0\), d \(0 usable; 2 skipped, e\.g\. one\.jpg: not an image [^,]*\)$/);
  });
});

describe('scanLabelledFolder', () => {
  it('prefers test/ and maps folder names onto the given classes', async () => {
    const dir = await makeTree(fresh(), { 'train/x': 1, 'val/x': 1, 'test/dog': 2, 'test/cat': 1 });
    const { samples, skipped, source } = await scanLabelledFolder(dir, ['dog', 'cat', 'bird']);
    assert.equal(source, path.join(dir, 'test'));
    assert.deepEqual(samples.map((s) => s.label), [1, 0, 0]);
    assert.deepEqual(skipped, []);
  });

  it('falls back to valid/ and then to the folder itself', async () => {
    const withValid = await makeTree(fresh(), { 'valid/a': 1, 'valid/b': 1 });
    assert.equal((await scanLabelledFolder(withValid, ['a', 'b'])).source, path.join(withValid, 'valid'));
    const flat = await makeTree(fresh(), { b: 2 });
    await writeFile(path.join(flat, 'b', 'readme.md'), '# not an image');
    const result = await scanLabelledFolder(flat, ['a', 'b']);
    assert.equal(result.source, flat);
    assert.deepEqual(result.samples.map((s) => s.label), [1, 1]);
    assert.equal(result.skipped.length, 1);
  });

  it('rejects a class the model does not know', async () => {
    const dir = await makeTree(fresh(), { a: 1, wasp: 1 });
    await rejectsWith(scanLabelledFolder(dir, ['a', 'b']), 'DATASET', /wasp/, /known classes: a, b/);
  });
});
