/**
 * FeatureExtractor over real hymenoptera images with the int8 MobileNetV2: every row against the same image run
 * alone through the feature model (catches batch mix-ups), broken files skipped with reasons, the on-disk cache
 * (pack records, hits, skip records, content-keyed invalidation) and `cacheDir: false`.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import * as ort from 'onnxruntime-node';
import { loadBackbone, type ImageBackbone as Backbone } from '../src/backbone/backbone.js';
import { contentHash, FeatureCache, FEATURES_RECORD, HEADER, listRecords, SKIP_RECORD, type PackRecord } from '../src/backbone/cache.js';
import { GraftError } from '../src/errors.js';
import { GraphBuilder } from '../src/onnx/builder.js';
import { DataType, encodeModel } from '../src/onnx/proto.js';
import { FeatureExtractor, type ExtractOptions, type ExtractProgress, type ExtractResult } from '../src/backbone/extractor.js';
import { inputShape } from '../src/preprocess/config.js';
import { decodeImage, normalizeInto } from '../src/preprocess/image.js';
import { requireShared, SHARED } from './support/paths.js';

const INT8_MODEL = `${SHARED}/models/mobilenetv2-12-int8/model.onnx`;
const HYMENOPTERA = `${SHARED}/data/hymenoptera`;
requireShared(INT8_MODEL, HYMENOPTERA);
const PER_CLASS = 20;
const BATCH = 8;
/** Row of the one good image that is a real copy (not a symlink), so that its content can be changed. */
const MUTABLE = 11;

async function jpgs(dir: string, n: number): Promise<string[]> {
  return (await readdir(dir))
    .filter((f) => f.endsWith('.jpg'))
    .sort()
    .slice(0, n)
    .map((f) => path.join(dir, f));
}

async function listTree(dir: string): Promise<string[]> {
  if (!existsSync(dir)) return [];
  return (await readdir(dir, { recursive: true })).map(String).sort();
}

describe('FeatureExtractor (int8 MobileNetV2, hymenoptera)', () => {
  let tmp: string;
  let cacheDir: string;
  let backbone: Backbone;
  let session: ort.InferenceSession;
  /** The dataset: good images with two broken files among them. */
  let files: string[];
  let bad: Set<string>;
  let emptyFile: string;
  let truncatedFile: string;
  let replacement: Uint8Array;
  const extractors: FeatureExtractor[] = [];
  const referenceCache = new Map<string, Float32Array>();
  let first: ExtractResult;

  const open = (options: ExtractOptions) => {
    const e = new FeatureExtractor(backbone, { batchSize: BATCH, decodeThreads: 2, inferThreads: 2, ...options });
    extractors.push(e);
    return e;
  };

  /** The features of one image, decoded and run alone (batch of 1) through the feature model. */
  async function reference(bytes: Uint8Array): Promise<Float32Array> {
    const hash = contentHash(bytes);
    const known = referenceCache.get(hash);
    if (known) return known;
    const config = backbone.config;
    const input = new Float32Array(3 * config.inputSize[0] * config.inputSize[1]);
    normalizeInto(await decodeImage(bytes, config), config, input, 0);
    const out = (await session.run({ [config.inputName]: new ort.Tensor('float32', input, inputShape(config, 1)) })).features!;
    assert.deepEqual([...out.dims], [1, backbone.config.featureDim]);
    const f = new Float32Array(out.data as Float32Array);
    referenceCache.set(hash, f);
    return f;
  }

  function row(r: ExtractResult, i: number): Float32Array {
    return r.features.subarray(i * r.dim, (i + 1) * r.dim);
  }

  function maxAbsDiff(a: Float32Array, b: Float32Array): number {
    assert.equal(a.length, b.length);
    let m = 0;
    for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
    return m;
  }

  /** Every good row equals its image run alone; broken rows are zero and invalid. */
  async function checkRows(r: ExtractResult): Promise<void> {
    assert.equal(r.dim, 1280);
    assert.equal(r.features.length, files.length * r.dim);
    assert.deepEqual([...r.valid], files.map((f) => (bad.has(f) ? 0 : 1)));
    for (let i = 0; i < files.length; i++) {
      if (bad.has(files[i]!)) {
        assert.ok(row(r, i).every((v) => v === 0), `row ${i} of a skipped file is zero`);
        continue;
      }
      const expected = await reference(await readFile(files[i]!));
      const diff = maxAbsDiff(row(r, i), expected);
      assert.ok(diff < 1e-4, `row ${i} (${path.basename(files[i]!)}): max abs diff ${diff}`);
    }
  }

  const cacheFolder = () => path.join(cacheDir, 'features', backbone.key);
  /** The records of the cache's packs for `hash`, in the order they were written. */
  const recordsOf = (hash: string) => listRecords(cacheFolder()).filter((r) => r.hash === hash);
  const payload = async (r: PackRecord & { pack: string }) => (await readFile(r.pack)).subarray(r.offset, r.offset + r.length);
  const floats = (b: Uint8Array) => new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
  /** Reads `hash` through a cache object of its own (a fresh scan of the packs). */
  async function readBack(hash: string): Promise<{ kind: string; row?: Float32Array; reason?: string }> {
    const cache = new FeatureCache(cacheDir, backbone.key, backbone.config.featureDim);
    try {
      const target = new Float32Array(backbone.config.featureDim);
      const e = await cache.read(hash, target, 0);
      return e.kind === 'features' ? { kind: e.kind, row: target } : e.kind === 'skip' ? { kind: e.kind, reason: e.reason } : { kind: e.kind };
    } finally {
      cache.close();
    }
  }

  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'graft-extractor-'));
    cacheDir = path.join(tmp, 'cache');
    const data = path.join(tmp, 'data');
    await mkdir(data);
    backbone = await loadBackbone(INT8_MODEL);
    session = await ort.InferenceSession.create(backbone.featureModelBytes, { intraOpNumThreads: 2 });

    const ants = await jpgs(path.join(HYMENOPTERA, 'train/ants'), PER_CLASS);
    const bees = await jpgs(path.join(HYMENOPTERA, 'train/bees'), PER_CLASS);
    const sources = ants.flatMap((a, i) => [a, bees[i]!]);
    files = [];
    for (const [i, source] of sources.entries()) {
      const file = path.join(data, `${String(i).padStart(2, '0')}-${path.basename(source)}`);
      if (i === MUTABLE) await copyFile(source, file);
      else await symlink(source, file);
      files.push(file);
    }
    // Broken files land in the first and third batches, so batches mix good and bad images; 42 rows leave a
    // partial last batch of 2.
    emptyFile = path.join(data, 'empty.jpg');
    await writeFile(emptyFile, new Uint8Array(0));
    truncatedFile = path.join(data, 'truncated.jpg');
    const whole = await readFile(path.join(HYMENOPTERA, 'val/ants', (await readdir(path.join(HYMENOPTERA, 'val/ants'))).filter((f) => f.endsWith('.jpg')).sort()[0]!));
    await writeFile(truncatedFile, whole.subarray(0, Math.floor(whole.length / 2)));
    files.splice(5, 0, emptyFile);
    files.splice(19, 0, truncatedFile);
    bad = new Set([emptyFile, truncatedFile]);
    replacement = await readFile((await jpgs(path.join(HYMENOPTERA, 'val/bees'), 1))[0]!);
  });

  after(async () => {
    await Promise.all(extractors.map((e) => e.close()));
    await session?.release();
    await rm(tmp, { recursive: true, force: true });
  });

  it('extracts every image in batches exactly as if run alone, and skips broken files with a reason', async () => {
    assert.equal(files.length, 2 * PER_CLASS + 2);
    const progress: ExtractProgress[] = [];
    first = await open({ cacheDir }).extract(files, (p) => progress.push(p));
    assert.equal(first.cached, 0);
    assert.equal(first.extracted, 2 * PER_CLASS);
    assert.deepEqual(
      first.skipped.map((s) => s.file),
      [emptyFile, truncatedFile],
    );
    // The file is named by `file`; the reason is about the content (skip records are keyed by content).
    assert.equal(first.skipped[0]!.reason, 'empty file (0 bytes)');
    assert.match(first.skipped[1]!.reason, /cannot decode image \(.+\)/);
    assert.deepEqual(progress.at(-1), { done: files.length, total: files.length, cached: 0, skipped: 2 });
    await checkRows(first);
  });

  it('writes one features record per good image and one skip record per broken one to one pack under features/<key>/', async () => {
    const meta = JSON.parse(await readFile(path.join(cacheFolder(), 'meta.json'), 'utf8')) as { dim: number; backbone: { sha256: string } };
    assert.equal(meta.dim, 1280);
    assert.equal(meta.backbone.sha256, backbone.source.sha256);
    for (const [i, file] of files.entries()) {
      const hash = contentHash(await readFile(file));
      const records = recordsOf(hash);
      assert.equal(records.length, 1, `one record for ${path.basename(file)}`);
      const bytes = await payload(records[0]!);
      if (bad.has(file)) {
        const reason = first.skipped.find((s) => s.file === file)!.reason;
        assert.equal(records[0]!.kind, SKIP_RECORD);
        assert.equal(Buffer.from(bytes).toString('utf8'), reason);
        assert.deepEqual(await readBack(hash), { kind: 'skip', reason });
      } else {
        assert.equal(records[0]!.kind, FEATURES_RECORD);
        assert.equal(bytes.byteLength, 1280 * 4);
        assert.deepEqual(floats(bytes), row(first, i));
        assert.deepEqual(await readBack(hash), { kind: 'features', row: row(first, i) });
      }
    }
    const all = listRecords(cacheFolder());
    assert.equal(all.filter((r) => r.kind === FEATURES_RECORD).length, 2 * PER_CLASS);
    assert.equal(all.filter((r) => r.kind === SKIP_RECORD).length, 2);
    // meta.json and the one pack this extractor's cache object wrote: no temp files, no old per-entry files.
    const tree = await listTree(cacheFolder());
    assert.deepEqual(tree.filter((f) => f !== 'meta.json' && f !== 'packs' && !/^packs\/[^/]+\.pack$/.test(f)), [], 'only meta.json and packs/*.pack');
    assert.equal(tree.filter((f) => f.endsWith('.pack')).length, 1);
    const pack = path.join(cacheFolder(), 'packs', tree.find((f) => f.endsWith('.pack'))!.slice('packs/'.length));
    assert.equal((await stat(pack)).size, all.reduce((s, r) => s + HEADER + r.length, 0), 'the pack holds these records and nothing else');
  });

  it('serves a second extraction from the cache, broken files included, without decoding anything', async () => {
    // Mark the skip records: a reason that comes back marked was read from the cache, not from decoding again.
    // The marked records are written later, by another cache object (so to another pack), and later records win.
    const marker = new FeatureCache(cacheDir, backbone.key, backbone.config.featureDim);
    for (const file of bad) {
      const hash = contentHash(await readFile(file));
      await marker.writeSkip(hash, `${first.skipped.find((s) => s.file === file)!.reason} [cached]`);
      assert.equal(recordsOf(hash).length, 2);
    }
    marker.close();
    const second = await open({ cacheDir }).extract(files);
    assert.equal(second.cached, 2 * PER_CLASS);
    assert.equal(second.extracted, 0);
    assert.deepEqual(second.valid, first.valid);
    assert.deepEqual(second.features, first.features);
    assert.deepEqual(
      second.skipped,
      first.skipped.map((s) => ({ file: s.file, reason: `${s.reason} [cached]` })),
    );
  });

  it('re-extracts only a file whose content changed', async () => {
    const file = files.find((f) => path.basename(f).startsWith(`${MUTABLE}-`))!;
    const index = files.indexOf(file);
    const oldHash = contentHash(await readFile(file));
    await writeFile(file, replacement);
    const third = await extractors[1]!.extract(files);
    assert.equal(third.extracted, 1);
    assert.equal(third.cached, 2 * PER_CLASS - 1);
    assert.equal(third.skipped.length, 2);
    assert.ok(maxAbsDiff(row(third, index), await reference(replacement)) < 1e-4);
    assert.ok(maxAbsDiff(row(third, index), row(first, index)) > 1e-3, 'the new image has other features');
    for (let i = 0; i < files.length; i++) if (i !== index) assert.deepEqual(row(third, i), row(first, i), `row ${i}`);
    const added = recordsOf(contentHash(replacement));
    assert.equal(added.length, 1);
    assert.equal(added[0]!.kind, FEATURES_RECORD);
    assert.deepEqual(floats(await payload(added[0]!)), row(third, index));
    assert.deepEqual(await readBack(contentHash(replacement)), { kind: 'features', row: row(third, index) });
    assert.deepEqual(await readBack(oldHash), { kind: 'features', row: row(first, index) }, 'entries are keyed by content, the old one stays');
  });

  it('rejects extract() with a MODEL error when inference fails, without an unhandled rejection', async () => {
    // A feature model whose every run fails (3 pooled values cannot be reshaped to rows of 7).
    const b = new GraphBuilder('broken');
    b.input(backbone.config.inputName, DataType.FLOAT, ['N', 3, 224, 224]);
    const pooled = b.op('ReduceMean', [backbone.config.inputName], { axes: [2, 3], keepdims: 0 });
    b.op('Reshape', [pooled, b.int64('shape', [-1, 7])], {}, { outputs: ['features'] });
    b.output('features', DataType.FLOAT, ['N', 7]);
    const broken: Backbone = { ...backbone, featureModelBytes: encodeModel(b.model(13)) };
    const e = new FeatureExtractor(broken, { batchSize: 2, cacheDir: false, decodeThreads: 2, inferThreads: 1 });
    extractors.push(e);
    // Several batches: the first failure happens while later files are still being read and queued.
    await assert.rejects(e.extract(files.filter((f) => !bad.has(f)).slice(0, 12)), (err: unknown) => {
      assert.ok(err instanceof GraftError, String(err));
      assert.equal(err.code, 'MODEL');
      assert.match(err.message, /backbone inference failed/);
      return true;
    });
  });

  it('can be closed at any moment after construction without aborting the process', async () => {
    // Closing while ONNX Runtime is still creating the session (as after a run served entirely from the cache)
    // used to abort the process ("terminate called after throwing an instance of 'Napi::Error'"). The delays sweep
    // across the session's creation; a child process, because the failure is an abort.
    const script = path.join(tmp, 'close-early.mjs');
    const url = (p: string) => JSON.stringify(new URL(p, import.meta.url).href);
    await writeFile(
      script,
      `import { loadBackbone } from ${url('../src/backbone/backbone.js')};
import { FeatureExtractor } from ${url('../src/backbone/extractor.js')};
const backbone = await loadBackbone(${JSON.stringify(INT8_MODEL)});
for (let delay = 45; delay <= 300; delay += 15) {
  const e = new FeatureExtractor(backbone, { cacheDir: false, decodeThreads: 1, inferThreads: 1 });
  await new Promise((resolve) => setTimeout(resolve, delay));
  await e.close();
}
console.log('closed');
`,
    );
    const { stdout } = await promisify(execFile)(process.execPath, [script], { timeout: 60_000 });
    assert.equal(stdout.trim(), 'closed');
  });

  it('writes nothing with cacheDir: false', async () => {
    const defaultCache = path.join(tmp, 'default-cache');
    const saved = process.env.GRAFT_CACHE;
    process.env.GRAFT_CACHE = defaultCache;
    try {
      const before = await listTree(cacheDir);
      const mtimes = await Promise.all(before.map(async (f) => (await stat(path.join(cacheDir, f))).mtimeMs));
      const some = files.slice(0, 10);
      const r = await open({ cacheDir: false }).extract(some);
      assert.equal(r.cached, 0);
      assert.equal(r.extracted, 9);
      assert.deepEqual(r.skipped.map((s) => s.file), [emptyFile]);
      assert.match(r.skipped[0]!.reason, /empty file/);
      assert.doesNotMatch(r.skipped[0]!.reason, /\[cached\]/);
      const mutable = some.findIndex((f) => path.basename(f).startsWith(`${MUTABLE}-`));
      for (let i = 0; i < some.length; i++) {
        if (some[i] === emptyFile) continue;
        const expected = i === mutable ? await reference(replacement) : row(first, i);
        assert.ok(maxAbsDiff(row(r, i), expected) < 1e-4, `row ${i}`);
      }
      assert.ok(!existsSync(defaultCache), 'the default cache folder is not created');
      assert.deepEqual(await listTree(cacheDir), before);
      assert.deepEqual(await Promise.all(before.map(async (f) => (await stat(path.join(cacheDir, f))).mtimeMs)), mtimes);
    } finally {
      if (saved === undefined) delete process.env.GRAFT_CACHE;
      else process.env.GRAFT_CACHE = saved;
    }
  });
});
