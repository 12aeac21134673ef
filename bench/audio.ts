/**
 * Audio: quality on the Free Spoken Digit Dataset and extraction speed, measured in one run on this machine.
 *
 *   node dist/bench/audio.js [FSDD=../shared/data/fsdd/recordings] [--limit N] [--unfreeze 2,4] [--skip-quality] [--skip-loso] [--skip-speed]
 *
 * Quality: the official split (takes 0-4 of every speaker and digit validate, 5-49 train: 2,700 / 300), graft's
 * default head on the bundled speech embedding with mean and mean+max pooling over windows; and
 * leave-one-speaker-out (6 folds: train on five speakers, validate on the sixth), what a user with new voices gets.
 *
 * Speed: extraction clips/s end to end (read, hash, decode, resample 8 → 16 kHz, front end, embedding,
 * pooling, cache write) against raw ONNX Runtime running the same graph on pre-resampled clips, one clip per
 * run as the path runs them. Decoding and inference share the cores, so the best the path can do is
 *   limit = raw × t_infer / (t_infer + t_decode)
 * with t_infer and t_decode the CPU seconds per clip of each, measured separately (as bench/extract does).
 */
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import * as ort from 'onnxruntime-node';
import { loadAudioBackbone, type AudioBackbone } from '../src/backbone/backbone.js';
import { FeatureExtractor } from '../src/backbone/extractor.js';
import { resolveModel } from '../src/backbone/resolve.js';
import { Learner } from '../src/learner.js';
import { decodeAudio } from '../src/preprocess/audio-decode.js';
import type { AudioPooling } from '../src/preprocess/audio.js';
import { EncodePool } from '../src/preprocess/pool.js';
import { args, cpuModel, flag, measure, option, positional } from './cli.js';

const data = resolve(positional[0] ?? '../shared/data/fsdd/recordings');
const limit = flag('--limit', Infinity);
const cores = availableParallelism();
const PATTERN = '{label}_{speaker}_{index}.wav';

const cpu = cpuModel();
const cacheRoot = await mkdtemp(join(tmpdir(), 'graft-bench-audio-'));
const backboneOf = async (pooling: AudioPooling): Promise<AudioBackbone> => {
  const r = await resolveModel('speech-embedding-bundled', { task: 'audio', audioPooling: pooling, cacheDir: cacheRoot });
  return loadAudioBackbone(r.file, { modelConfig: r.audio!, ...(r.name ? { name: r.name } : {}) });
};
const report: Record<string, unknown> = { cpu, cores, data };

if (!args.includes('--skip-speed')) {
  const files = (await readdir(data)).filter((f) => f.endsWith('.wav')).sort().slice(0, limit).map((f) => join(data, f));
  const backbone = await backboneOf('mean+max');
  // 1. Raw ONNX Runtime on clips decoded and resampled beforehand (not timed), one clip per run.
  const clips = await Promise.all(files.map(async (f) => (await decodeAudio(await readFile(f), f, { targetRate: 16000 })).samples));
  const session = await ort.InferenceSession.create(backbone.featureModelBytes, { intraOpNumThreads: cores, interOpNumThreads: 1 });
  const run = (x: Float32Array) => session.run({ waveform: new ort.Tensor('float32', x, [1, x.length]) });
  for (const x of clips.slice(0, 10)) await run(x);
  const raw = await measure(async () => {
    for (const x of clips) await run(x);
  });
  await session.release();
  const rawRate = clips.length / raw.wall;
  const tInfer = raw.cpu / clips.length;
  // 2. Decoding alone (read + decode + resample in the worker pool).
  const pool = new EncodePool(backbone.pipeline, { threads: cores });
  await Promise.all(files.slice(0, 8).map((file) => pool.encodeAudio({ file })));
  const decode = await measure(async () => {
    for (let s = 0; s < files.length; s += 32) await Promise.all(files.slice(s, s + 32).map((file) => pool.encodeAudio({ file })));
  });
  await pool.close();
  const tDecode = decode.cpu / files.length;
  const limitRate = rawRate * (tInfer / (tInfer + tDecode));
  // 3. The whole path with a fresh cache, then warm.
  const cacheDir = await mkdtemp(join(tmpdir(), 'graft-bench-audio-cache-'));
  const extractor = new FeatureExtractor(backbone, { cacheDir });
  const full = await measure(() => extractor.extract(files));
  const warm = await measure(() => extractor.extract(files));
  await extractor.close();
  await rm(cacheDir, { recursive: true, force: true });
  const seconds = clips.reduce((a, x) => a + x.length, 0) / 16000;
  const pathRate = full.value.extracted / full.wall;
  report.speed = {
    clips: files.length,
    audioSeconds: +seconds.toFixed(1),
    rawClipsPerSecond: +rawRate.toFixed(1),
    inferCpuMsPerClip: +(tInfer * 1000).toFixed(2),
    decodeCpuMsPerClip: +(tDecode * 1000).toFixed(2),
    limitClipsPerSecond: +limitRate.toFixed(1),
    pathClipsPerSecond: +pathRate.toFixed(1),
    ratioToLimit: +(pathRate / limitRate).toFixed(3),
    ratioToRaw: +(pathRate / rawRate).toFixed(3),
    warmCacheClipsPerSecond: +(files.length / warm.wall).toFixed(1),
    skipped: full.value.skipped.length,
  };
  console.error(JSON.stringify(report.speed));
}

type Score = { accuracy: number; macroF1: number; seconds: number };
async function trainAndScore(pooling: AudioPooling, valWhere: string, unfreeze?: number): Promise<Score> {
  const t0 = performance.now();
  const learn = await Learner.create({ data, namePattern: PATTERN, valWhere, model: 'speech-embedding-bundled', pooling, cacheDir: cacheRoot });
  try {
    if (unfreeze) await learn.fineTune({ unfreeze });
    else await learn.fit();
    const m = await learn.evaluate();
    return { accuracy: +m.accuracy.toFixed(4), macroF1: +m.macroF1.toFixed(4), seconds: +((performance.now() - t0) / 1000).toFixed(1) };
  } finally {
    await learn.close();
  }
}

if (!args.includes('--skip-quality')) {
  const official: Record<string, Score> = {};
  for (const pooling of ['mean', 'mean+max'] as const) {
    official[pooling] = await trainAndScore(pooling, 'index<5');
    console.error(`official split, ${pooling}: ${JSON.stringify(official[pooling])}`);
  }
  // Fine-tuning the last K blocks of the embedding (the defaults: converged head, then AUDIO_FINE_TUNE.epochs).
  for (const k of option('--unfreeze', '2,4').split(',').map(Number)) {
    official[`mean+max, --unfreeze ${k}`] = await trainAndScore('mean+max', 'index<5', k);
    console.error(`official split, mean+max, unfreeze ${k}: ${JSON.stringify(official[`mean+max, --unfreeze ${k}`])}`);
  }
  report.officialSplit = official;
}

if (!args.includes('--skip-loso')) {
  const speakers = [...new Set((await readdir(data)).filter((f) => f.endsWith('.wav')).map((f) => f.split('_')[1]!))].sort();
  const folds: Record<string, Score> = {};
  for (const speaker of speakers) {
    folds[speaker] = await trainAndScore('mean+max', `speaker=${speaker}`);
    console.error(`leave out ${speaker}: ${JSON.stringify(folds[speaker])}`);
  }
  const accs = Object.values(folds).map((f) => f.accuracy);
  report.leaveOneSpeakerOut = { pooling: 'mean+max', folds, mean: +(accs.reduce((a, b) => a + b, 0) / accs.length).toFixed(4), worst: Math.min(...accs) };
}

await rm(cacheRoot, { recursive: true, force: true });
console.log(JSON.stringify(report, null, 2));
