/**
 * Extraction throughput: the whole path (read, hash, decode, resize, normalise, infer, cache write) against
 * raw ONNX Runtime on pre-made tensors of the same shape, measured in one run on this machine.
 *
 *   node dist/bench/extract.js [DATA=../shared/data/flowers5] [MODEL=../shared/models/mobilenetv2-12-int8/model.onnx]
 *        [--limit N] [--batch 32] [--decode-threads T] [--infer-threads T] [--augment light|standard|strong]
 *
 * --augment also measures the path extracting an augmented view (what `graft train --augment` adds per view):
 * its decoding CPU per image, its throughput, and that against the clean limit and against its own limit.
 *
 * Decoding and inference share the same cores, so the best the path can do is
 *   limit = raw × t_infer / (t_infer + t_decode)
 * with t_infer and t_decode the CPU seconds per image of each, measured separately here.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import * as ort from 'onnxruntime-node';
import { loadBackbone } from '../src/backbone/backbone.js';
import { FeatureExtractor } from '../src/backbone/extractor.js';
import { inputShape } from '../src/preprocess/config.js';
import { ImagePool, sharedFloat32 } from '../src/preprocess/pool.js';
import { args, cpuModel, flag, measure, option, positional } from './cli.js';
import { IMAGE_POLICIES, imageView, type ViewSpec } from '../src/preprocess/augment.js';
import { contentHash } from '../src/backbone/cache.js';
import { readFile } from 'node:fs/promises';

const data = resolve(positional[0] ?? '../shared/data/flowers5');
const modelPath = resolve(positional[1] ?? '../shared/models/mobilenetv2-12-int8/model.onnx');
const cores = availableParallelism();
const batch = flag('--batch', 32);
const limit = flag('--limit', Infinity);
const decodeThreads = flag('--decode-threads', cores);
const inferThreads = flag('--infer-threads', cores);

async function listImages(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of (await readdir(dir, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
    if (entry.name.startsWith('.')) continue;
    const p = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await listImages(p)));
    else if (/\.(jpe?g|png|webp|gif|tiff?|bmp)$/i.test(entry.name)) out.push(p);
  }
  return out;
}

const files = (await listImages(data)).slice(0, limit);
const backbone = await loadBackbone(modelPath);
const shape = inputShape(backbone.config, batch);
const stride = shape.slice(1).reduce((a, b) => a * b, 1);
console.error(`${files.length} images from ${data}; ${modelPath} cut at ${backbone.config.cut}; batch ${batch}, ${cores} cores`);

// 1. Raw ONNX Runtime: the same cut model, pre-made input, no decoding.
// Raw throughput uses every core (the best ONNX Runtime can do here), whatever the path's thread split.
const session = await ort.InferenceSession.create(backbone.featureModelBytes, { intraOpNumThreads: cores, interOpNumThreads: 1 });
const x = new Float32Array(batch * stride).map((_, i) => Math.sin(i));
const feeds = { [backbone.config.inputName]: new ort.Tensor('float32', x, shape) };
for (let i = 0; i < 3; i++) await session.run(feeds);
const rawRuns = Math.max(5, Math.ceil(640 / batch));
const raw = await measure(async () => {
  for (let i = 0; i < rawRuns; i++) await session.run(feeds);
});
await session.release();
const rawRate = (rawRuns * batch) / raw.wall;
const tInfer = raw.cpu / (rawRuns * batch);

// 2. Decoding alone (read + decode + resize + normalise in the worker pool).
const decodeFiles = files.slice(0, Math.min(files.length, 640));
const pool = new ImagePool(backbone.config, { threads: decodeThreads });
const target = sharedFloat32(batch * stride);
await Promise.all(decodeFiles.slice(0, 8).map((file, i) => pool.loadInto({ file }, target, (i % batch) * stride)));
const decode = await measure(async () => {
  for (let s = 0; s < decodeFiles.length; s += batch) {
    await Promise.all(decodeFiles.slice(s, s + batch).map((file, i) => pool.loadInto({ file }, target, i * stride)));
  }
});
await pool.close();
const tDecode = decode.cpu / decodeFiles.length;
const limitRate = rawRate * (tInfer / (tInfer + tDecode));

// 3. The whole path, cold cache.
const cacheDir = await mkdtemp(join(tmpdir(), 'graft-bench-'));
const extractor = new FeatureExtractor(backbone, { cacheDir, batchSize: batch, decodeThreads, inferThreads, spin: args.includes('--spin') });
const full = await measure(() => extractor.extract(files));
// 4. The whole path again, warm cache.
const warm = await measure(() => extractor.extract(files));
// 5. An augmented view: decoding alone, then the whole path (cold: a view is not in the clean cache).
const policy = option('--augment', '');
let augmented: Record<string, number> | undefined;
if (policy) {
  const view: ViewSpec = { kind: 'image', policy: IMAGE_POLICIES[policy as keyof typeof IMAGE_POLICIES], seed: 0, view: 1 };
  const viewPool = new ImagePool(backbone.config, { threads: decodeThreads });
  const sources = await Promise.all(decodeFiles.map(async (file) => ({ file, bytes: await readFile(file) })));
  const views = sources.map((s) => imageView(view as Extract<ViewSpec, { kind: 'image' }>, contentHash(s.bytes)));
  const viewDecode = await measure(async () => {
    for (let s = 0; s < sources.length; s += batch) {
      await Promise.all(sources.slice(s, s + batch).map((src, i) => viewPool.loadInto(src, target, i * stride, views[s + i])));
    }
  });
  await viewPool.close();
  const tView = viewDecode.cpu / sources.length;
  const viewLimit = rawRate * (tInfer / (tInfer + tView));
  const path = await measure(() => extractor.extract(files, undefined, { view }));
  const rate = path.value.extracted / path.wall;
  augmented = {
    decodeCpuMsPerImage: +(tView * 1000).toFixed(2),
    limitImagesPerSecond: +viewLimit.toFixed(1),
    pathImagesPerSecond: +rate.toFixed(1),
    ratioToCleanLimit: +(rate / limitRate).toFixed(3),
    ratioToOwnLimit: +(rate / viewLimit).toFixed(3),
  };
}
await extractor.close();
await rm(cacheDir, { recursive: true, force: true });
const fullRate = full.value.extracted / full.wall;

const report = {
  images: files.length,
  batch,
  cores,
  decodeThreads,
  inferThreads,
  rawImagesPerSecond: +rawRate.toFixed(1),
  inferCpuMsPerImage: +(tInfer * 1000).toFixed(2),
  decodeCpuMsPerImage: +(tDecode * 1000).toFixed(2),
  decodeOnlyImagesPerSecond: +(decodeFiles.length / decode.wall).toFixed(1),
  limitImagesPerSecond: +limitRate.toFixed(1),
  pathImagesPerSecond: +fullRate.toFixed(1),
  pathCpuMsPerImage: +((full.cpu / files.length) * 1000).toFixed(2),
  ratioToRaw: +(fullRate / rawRate).toFixed(3),
  ratioToLimit: +(fullRate / limitRate).toFixed(3),
  warmCacheImagesPerSecond: +(files.length / warm.wall).toFixed(1),
  skipped: full.value.skipped.length,
  ...(augmented ? { augmented: { policy, ...augmented } } : {}),
  cpu: cpuModel(),
};
console.log(JSON.stringify(report, null, 2));
