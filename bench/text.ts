/**
 * Texts end to end on SMS spam with the offline default text backbone (USE-lite): quality against outside
 * yardsticks on graft's own split, extraction speed against raw ONNX Runtime, and memory while extracting many texts.
 *
 *   node dist/bench/text.js [DATA=../shared/data/sms-spam/SMSSpamCollection.tsv] [--sections quality,speed,memory]
 *        [--model M] [--skip-finetune] [--unfreeze 2] [--ft-epochs E] [--ft-freeze-epochs E] [--ft-lr X]
 *        [--ft-lr-mult M] [--ft-encoder-dropout P] [--ft-patience P] [--ft-batch-size B] [--cv-scoring accuracy]
 *        [--batch 32] [--rounds 3] [--speed-repeat 1] [--texts 50000] [--texts-small N/5] [--memory-no-cache]
 *
 * All three sections take ~11 minutes on 2 cores (fine-tuning ~4 of them); `--sections quality` and
 * `--sections speed,memory` split it into two runs of ~5 and ~6 minutes.
 *
 * 1. quality, on the split the Learner makes (seed 0, 80/20 stratified): (a) word uni+bigram TF-IDF + logistic
 *    regression (C by 5-fold stratified CV on the train rows, and sklearn's defaults), (b) the backbone's features as
 *    graft computes them + StandardScaler + logistic regression (C by 5-fold stratified CV on the train rows), both
 *    in bench/text_baselines.py (Debian's /usr/bin/python3 + sklearn, fed through a temp folder); (c) graft's
 *    frozen backbone + default head (`Learner.create` → `fit()` → `evaluate()`); (d) graft fine-tuned as
 *    `graft train --unfreeze 2` does it (`fineTune({ unfreeze: 2, fit: {} })`: the CLI passes only the flags given,
 *    so every other option is the library default; the --ft-* flags change them).
 * 2. speed: the extractor over the texts (tokenising in the worker pool, inference in its worker; no cache, and a
 *    fresh temp cache) against raw onnxruntime-node `session.run` on the same texts tokenised beforehand (untimed),
 *    in the same batches (batch size, windows of 16 batches sorted longest first), same threads and session options.
 * 3. memory: RSS sampled every 250 ms while N distinct texts (the SMS texts repeated, each with its number appended,
 *    written to a temp CSV) go through the training path (openDataset → the Learner's backbone → FeatureExtractor with
 *    a fresh temp cache), each N in its own process (N and N/5, to tell what grows with N). The features themselves
 *    (N × D float32, filled as extraction progresses) are reported separately from the rest.
 *
 * Run it alone on the machine (`flock /tmp/graft-cpu.lock node dist/bench/text.js`): timings share the cores.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import type { TextBackbone } from '../src/backbone/backbone.js';
import { FeatureExtractor, type ExtractInput } from '../src/backbone/extractor.js';
import type { Sample } from '../src/data/dataset.js';
import { openDataset } from '../src/data/open.js';
import type { Metrics } from '../src/evaluate/metrics.js';
import * as learnerModule from '../src/learner.js';
import { fineTuneDefaults, Learner, type FineTuneOptions, type LearnerOptions } from '../src/learner.js';
import { textFeeds } from '../src/preprocess/pipeline.js';
import { TextTokenizer, type Encoded } from '../src/preprocess/text.js';
import { DEFAULT_FIT, type FitOptions } from '../src/train/trainer.js';
import { DEFAULT_ENCODER_DROPOUT } from '../src/train/finetune.js';

process.env.HF_HUB_OFFLINE ??= '1';
const args = process.argv.slice(2);
const valued = new Set(['--sections', '--model', '--unfreeze', '--ft-epochs', '--ft-freeze-epochs', '--ft-lr', '--ft-lr-mult', '--ft-encoder-dropout', '--ft-patience', '--ft-batch-size', '--cv-scoring', '--batch', '--rounds', '--speed-repeat', '--texts', '--texts-small', '--memory-child']);
const option = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const num = (name: string, fallback: number): number => {
  const v = option(name);
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${name}: expected a number, got ${v}`);
  return n;
};
const positional = args.filter((a, i) => !a.startsWith('--') && !(i > 0 && valued.has(args[i - 1]!)));
const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const data = resolve(positional[0] ?? join(root, '../shared/data/sms-spam/SMSSpamCollection.tsv'));
const cores = availableParallelism();
const batch = num('--batch', 32);
const model = option('--model');
const log = (m: string) => process.stderr.write(`${m}\n`);
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const round = (x: number, digits = 4) => +x.toFixed(digits);
const MB = 1024 * 1024;

/** The backbone exactly as Learner.create picks and loads it (its private static, called as the Learner does). */
async function learnerBackbone(): Promise<TextBackbone> {
  const options: LearnerOptions = { data, ...(model ? { model } : {}), onNotice: log };
  const b = await (Learner as unknown as { backboneFor(m: 'text', o: LearnerOptions): Promise<TextBackbone> }).backboneFor('text', options);
  if (b.modality !== 'text') throw new Error('not a text backbone');
  return b;
}

/** What Learner.create hands the extractor: train samples then validation samples, as texts named by file and line. */
function extractInputs(samples: readonly Sample[]): ExtractInput[] {
  return samples.map((s) => ({ file: s.file, text: s.text!, ...(s.line !== undefined ? { line: s.line } : {}) }));
}

function cpuInfo(): { model: string; threads: number; availableParallelism: number } {
  const info = readFileSync('/proc/cpuinfo', 'utf8');
  const names = [...info.matchAll(/^model name\s*:\s*(.*)$/gm)].map((m) => m[1]!.trim());
  return { model: names[0] ?? 'unknown', threads: names.length, availableParallelism: cores };
}

// ---------------------------------------------------------------------------------------------- 1. quality

type Quality = { accuracy: number; spamF1: number; macroF1: number } & Record<string, unknown>;

function fromMetrics(m: Metrics, positive: string): Quality {
  return { accuracy: round(m.accuracy), spamF1: round(m.perClass[positive]!.f1), macroF1: round(m.macroF1), ...(m.loss !== undefined ? { loss: round(m.loss) } : {}), confusion: m.confusion };
}

function fineTuneOptions(): FineTuneOptions {
  const fit: Partial<FitOptions> = {};
  if (option('--ft-epochs') !== undefined) fit.epochs = num('--ft-epochs', 0);
  if (option('--ft-lr') !== undefined) fit.lr = num('--ft-lr', 0);
  if (option('--ft-patience') !== undefined) fit.patience = num('--ft-patience', 0);
  if (option('--ft-batch-size') !== undefined) fit.batchSize = num('--ft-batch-size', 0);
  return {
    unfreeze: num('--unfreeze', 2),
    ...(option('--ft-freeze-epochs') !== undefined ? { freezeEpochs: num('--ft-freeze-epochs', 0) } : {}),
    ...(option('--ft-lr-mult') !== undefined ? { lrMult: num('--ft-lr-mult', 0) } : {}),
    ...(option('--ft-encoder-dropout') !== undefined ? { encoderDropout: num('--ft-encoder-dropout', 0) } : {}),
    fit,
  };
}

/** What fineTune() makes of the options on a text dataset (the library's own defaults, fineTuneDefaults). */
function effectiveFineTune(ft: FineTuneOptions): Record<string, unknown> {
  const defaults = fineTuneDefaults('text');
  const { schedule, optimizer, epochs, lr, batchSize, weightDecay, patience, warmup } = { ...DEFAULT_FIT, ...defaults.fit, ...ft.fit };
  return {
    unfreeze: ft.unfreeze,
    encoderDropout: ft.encoderDropout ?? DEFAULT_ENCODER_DROPOUT,
    freezeEpochs: ft.freezeEpochs ?? defaults.freezeEpochs,
    lrMult: ft.lrMult ?? defaults.lrMult,
    fit: { epochs, lr, batchSize, weightDecay, patience, schedule, optimizer, warmup },
  };
}

async function quality(): Promise<Record<string, unknown>> {
  const options: LearnerOptions = { data, seed: 0, ...(model ? { model } : {}), onNotice: log };
  let t0 = performance.now();
  const learn = await Learner.create(options);
  const create = (performance.now() - t0) / 1000;
  const { dataset, features, trainRows, valRows } = learn.data;
  const positive = learn.classes.includes('spam') ? 'spam' : learn.classes[learn.classes.length - 1]!;
  const samples = [...dataset.train, ...dataset.val];
  log(`quality: ${trainRows.length} train / ${valRows.length} val texts, backbone ${learn.backbone.source.name ?? learn.backbone.source.file}`);

  // (a), (b): sklearn on the same rows and the same features.
  const dir = mkdtempSync(join(tmpdir(), 'graft-text-bench-'));
  let baselines: Record<string, Record<string, unknown>>;
  try {
    const scoring = option('--cv-scoring') ?? 'accuracy';
    writeFileSync(
      join(dir, 'split.json'),
      JSON.stringify({ texts: samples.map((s) => s.text!), labels: Array.from(features.labels), train: trainRows, val: valRows, classes: learn.classes, dim: features.dim, positive, scoring, folds: 5, seed: 0 }),
    );
    writeFileSync(join(dir, 'features.f32'), new Uint8Array(features.features.buffer, features.features.byteOffset, features.features.byteLength));
    log('quality: sklearn baselines (bench/text_baselines.py)');
    const out = execFileSync('/usr/bin/python3', [join(root, 'bench/text_baselines.py'), dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 * MB });
    baselines = JSON.parse(out) as Record<string, Record<string, unknown>>;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const py = (r: Record<string, unknown>, extra: Record<string, unknown>): Quality => ({
    accuracy: round(r.accuracy as number),
    spamF1: round(r.positiveF1 as number),
    macroF1: round(r.macroF1 as number),
    ...extra,
    C: r.C,
    ...(r.cvScore !== undefined ? { cvScore: round(r.cvScore as number) } : {}),
    seconds: r.seconds,
  });
  const common = baselines.common as { scoring: string; folds: number; sklearn: string };

  // (c) the frozen backbone + the default head.
  t0 = performance.now();
  const fitted = await learn.fit();
  const frozen = { ...fromMetrics(await learn.evaluate(), positive), epochs: fitted.history.length, bestEpoch: fitted.bestEpoch + 1, fitSeconds: round((performance.now() - t0) / 1000, 1) };
  await learn.close();

  // (d) fine-tuned, as `graft train --unfreeze 2` does it, on a learner of its own.
  let tuned: Record<string, unknown>;
  if (args.includes('--skip-finetune')) tuned = { skipped: 'run without --skip-finetune (takes minutes)' };
  else {
    const ft = fineTuneOptions();
    log(`quality: fine-tuning ${JSON.stringify(ft)}`);
    const learn2 = await Learner.create(options);
    try {
      t0 = performance.now();
      const unfrozenEpochs: number[] = [];
      let phase = 0;
      let epochStart = 0;
      const r = await learn2.fineTune(ft, [
        {
          beforeFit: () => void (phase += 1),
          beforeEpoch: () => void (epochStart = performance.now()),
          afterEpoch: () => {
            if (phase === 2) unfrozenEpochs.push(round((performance.now() - epochStart) / 1000, 1));
            log(`  phase ${phase} epoch (${((performance.now() - t0) / 1000).toFixed(0)} s)`);
          },
        },
      ]);
      const seconds = (performance.now() - t0) / 1000;
      tuned = {
        ...fromMetrics(await learn2.evaluate(), positive),
        options: ft,
        effectiveOptions: effectiveFineTune(ft),
        headEpochs: r.phase1?.history.length ?? 0,
        epochs: r.phase2.history.length,
        bestEpoch: r.phase2.bestEpoch + 1,
        stoppedEarly: r.phase2.stoppedEarly,
        boundary: r.boundary,
        unit: r.unit,
        trainableTensors: r.trainableTensors,
        seconds: round(seconds, 1),
        phases: learnerModule.roundTiming(r.timing),
        unfrozenEpochSeconds: unfrozenEpochs,
        note: 'options as `graft train --unfreeze 2` passes them (only the flags given); the rest are the library defaults (texts: TEXT_FINE_TUNE in src/learner.ts)',
      };
    } finally {
      await learn2.close();
    }
  }

  return {
    split: { seed: 0, valFraction: 0.2, stratified: true, train: trainRows.length, val: valRows.length, positive, valPositives: valRows.filter((r) => learn.classes[features.labels[r]!] === positive).length },
    backbone: { name: learn.backbone.source.name, file: learn.backbone.source.file, featureDim: features.dim, maxLength: (learn.backbone as TextBackbone).config.maxLength },
    learnerCreateSeconds: round(create, 1),
    extraction: { cached: learn.data.extraction.cached, extracted: learn.data.extraction.extracted, seconds: round(learn.data.extraction.seconds, 1), tokens: learn.data.extraction.tokens },
    tfidfLogReg: py(baselines.tfidf!, { features: 'TfidfVectorizer(ngram_range=(1, 2)) word uni+bigrams', C_choice: `${common.folds}-fold stratified CV on train (${common.scoring})`, sklearn: common.sklearn }),
    tfidfLogRegDefaults: py(baselines.tfidfDefaults!, { C_choice: 'sklearn default' }),
    embeddingsLogReg: py(baselines.embeddings!, { features: `graft's ${features.dim}-d features + StandardScaler`, C_choice: `${common.folds}-fold stratified CV on train (${common.scoring})` }),
    graftFrozen: frozen,
    graftFineTuned: tuned,
  };
}

// ---------------------------------------------------------------------------------------------- 2. speed

/** The extractor's text batching (src/backbone/extractor.ts): windows of 16 batches, longest first, ties by row. */
const WINDOW_BATCHES = 16;

function graftBatches(encoded: readonly Encoded[], size: number): number[][] {
  const out: number[][] = [];
  const window = size * WINDOW_BATCHES;
  for (let from = 0; from < encoded.length; from += window) {
    const rows = Array.from({ length: Math.min(window, encoded.length - from) }, (_, i) => from + i);
    rows.sort((a, b) => encoded[b]!.ids.length - encoded[a]!.ids.length || a - b);
    for (let i = 0; i < rows.length; i += size) out.push(rows.slice(i, i + size));
  }
  return out;
}

async function speed(): Promise<Record<string, unknown>> {
  const backbone = await learnerBackbone();
  const config = backbone.config;
  const tRead = performance.now();
  const ds = await openDataset(data, { seed: 0, task: 'text' });
  const readSeconds = (performance.now() - tRead) / 1000;
  const base = extractInputs([...ds.train, ...ds.val]) as Array<{ file: string; text: string; line?: number }>;
  const repeat = num('--speed-repeat', 1);
  const inputs = Array.from({ length: base.length * repeat }, (_, i) => base[i % base.length]!);
  const rounds = num('--rounds', 3);
  log(`speed: ${inputs.length} texts, batch ${batch}, ${cores} threads, ${rounds} rounds`);

  // Raw ONNX Runtime: tokenised first (untimed), the same batches, the infer worker's session options.
  const tokenizer = new TextTokenizer(backbone.pipeline.tokenizer);
  const encoded = inputs.map((s) => tokenizer.encode(s.text, config.maxLength));
  const batches = graftBatches(encoded, batch);
  let rawReal = 0;
  let rawComputed = 0;
  const feeds = batches.map((rows) => {
    const f = textFeeds(config, rows.map((r) => encoded[r]!));
    const T = f[config.inputs.ids]!.dims[1]!;
    rawComputed += rows.length * T;
    for (const r of rows) rawReal += encoded[r]!.ids.length;
    return Object.fromEntries(Object.entries(f).map(([name, x]) => [name, new ort.Tensor('int64', x.data as BigInt64Array, [...x.dims])]));
  });
  const sessionOptions = (spin: boolean): ort.InferenceSession.SessionOptions => ({
    intraOpNumThreads: cores,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    ...(spin ? {} : { extra: { session: { intra_op: { allow_spinning: '0' } } } }),
  });
  const session = await ort.InferenceSession.create(backbone.featureModelBytes, sessionOptions(false));
  const inputNames = new Set(session.inputNames);
  const runFeeds = feeds.map((f) => Object.fromEntries(Object.entries(f).filter(([n]) => inputNames.has(n))));
  for (let i = 0; i < 3; i++) await session.run(runFeeds[i % runFeeds.length]!);
  const raw = async () => {
    const t0 = performance.now();
    for (const f of runFeeds) await session.run(f);
    return inputs.length / ((performance.now() - t0) / 1000);
  };

  // graft's path: a warm extractor (worker started, session made, a first small extraction done), then timed.
  const warmup = inputs.slice(0, 256).map((s, i) => ({ ...s, text: `${s.text} (warm-up ${i})` }));
  const graft = async (cached: boolean) => {
    const cacheDir = cached ? mkdtempSync(join(tmpdir(), 'graft-text-cache-')) : false;
    const extractor = new FeatureExtractor(backbone, { cacheDir, batchSize: batch });
    try {
      await extractor.extract(warmup);
      const r = await extractor.extract(inputs);
      if (r.extracted !== inputs.length) throw new Error(`extracted ${r.extracted} of ${inputs.length} texts`);
      return { rate: inputs.length / r.seconds, tokens: r.tokenStats! };
    } finally {
      await extractor.close();
      if (cacheDir) rmSync(cacheDir, { recursive: true, force: true });
    }
  };

  const rawRates: number[] = [];
  const noCache: number[] = [];
  const freshCache: number[] = [];
  let tokens = { truncated: 0, real: 0, computed: 0 };
  for (let r = 0; r < rounds; r++) {
    rawRates.push(await raw());
    const g = await graft(false);
    noCache.push(g.rate);
    tokens = g.tokens;
    freshCache.push((await graft(true)).rate);
    log(`  round ${r + 1}: raw ${rawRates[r]!.toFixed(0)}, graft ${noCache[r]!.toFixed(0)} (no cache), ${freshCache[r]!.toFixed(0)} (fresh cache) texts/s`);
  }
  await session.release();
  const spinSession = await ort.InferenceSession.create(backbone.featureModelBytes, sessionOptions(true));
  for (let i = 0; i < 3; i++) await spinSession.run(runFeeds[i % runFeeds.length]!);
  const t1 = performance.now();
  for (const f of runFeeds) await spinSession.run(f);
  const rawSpin = inputs.length / ((performance.now() - t1) / 1000);
  await spinSession.release();

  const rawMedian = median(rawRates);
  return {
    texts: inputs.length,
    datasetTexts: base.length,
    datasetReadSeconds: round(readSeconds, 3),
    batch,
    threads: { inference: cores, tokenising: cores },
    batching: `windows of ${WINDOW_BATCHES} batches, sorted longest first`,
    rounds,
    rawTextsPerSecond: round(rawMedian, 1),
    rawSpinTextsPerSecond: round(rawSpin, 1),
    graftNoCacheTextsPerSecond: round(median(noCache), 1),
    graftFreshCacheTextsPerSecond: round(median(freshCache), 1),
    ratioNoCache: round(median(noCache) / rawMedian, 3),
    ratioFreshCache: round(median(freshCache) / rawMedian, 3),
    perRound: { raw: rawRates.map((x) => round(x, 1)), graftNoCache: noCache.map((x) => round(x, 1)), graftFreshCache: freshCache.map((x) => round(x, 1)) },
    tokens: {
      ...tokens,
      paddingWaste: round(tokens.computed / tokens.real, 4),
      meanRealPerText: round(tokens.real / inputs.length, 2),
      rawSameBatches: rawReal === tokens.real && rawComputed === tokens.computed,
    },
    note: 'raw = session.run only, on pre-tokenised batches; graft = FeatureExtractor.extract (tokenising in the worker pool, inference in its worker, hashing; the cache variant also appends each text\'s features to its pack file)',
  };
}

// ---------------------------------------------------------------------------------------------- 3. memory

/** One extraction of the N texts in `csv` in this process, RSS sampled; the parent spawns one process per N. */
async function memoryChild(csv: string): Promise<void> {
  const mem = () => process.memoryUsage();
  const start = mem();
  const ds = await openDataset(csv, { seed: 0, task: 'text' });
  const samples = [...ds.train, ...ds.val];
  const afterDataset = mem();
  const backbone = await learnerBackbone();
  const inputs = extractInputs(samples);
  const cacheDir = args.includes('--memory-no-cache') ? false : mkdtempSync(join(tmpdir(), 'graft-text-mem-'));
  const extractor = new FeatureExtractor(backbone, { cacheDir });
  const dim = backbone.config.featureDim;
  const n = inputs.length;
  let done = 0;
  const samplesTaken: Array<{ t: number; done: number; rss: number; heapUsed: number; heapTotal: number; external: number; rssAnon: number; rssFile: number }> = [];
  const t0 = performance.now();
  const forceGc = args.includes('--memory-gc') ? (globalThis as { gc?: () => void }).gc : undefined;
  const take = () => {
    forceGc?.();
    const m = mem();
    const status = readFileSync('/proc/self/status', 'utf8');
    const kb = (key: string) => Number(new RegExp(`^${key}:\\s*(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
    samplesTaken.push({ t: (performance.now() - t0) / 1000, done, rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external, rssAnon: kb('RssAnon'), rssFile: kb('RssFile') });
  };
  // gc is not forced (what a training run sees) unless --memory-gc: then the main thread's heap is collected before each sample.
  const before = mem();
  take();
  const timer = setInterval(take, 250);
  let result;
  try {
    result = await extractor.extract(inputs, (p) => {
      done = p.done;
    });
  } finally {
    clearInterval(timer);
  }
  take();
  await extractor.close();
  if (cacheDir) rmSync(cacheDir, { recursive: true, force: true });
  const featureBytes = n * dim * 4;
  const at = (p: number) => {
    const s = p >= 1 ? samplesTaken[samplesTaken.length - 1]! : samplesTaken.find((x) => x.done >= p * n)!;
    const features = s.done * dim * 4; // rows filled so far (their pages are resident once written)
    return { done: s.done, t: round(s.t, 1), rssMB: round(s.rss / MB, 1), featuresSoFarMB: round(features / MB, 1), rssExFeaturesMB: round((s.rss - features) / MB, 1), heapUsedMB: round(s.heapUsed / MB, 1), heapTotalMB: round(s.heapTotal / MB, 1), externalMB: round(s.external / MB, 1), rssAnonMB: round(s.rssAnon / MB, 1), rssFileMB: round(s.rssFile / MB, 1) };
  };
  // Least-squares slope of RSS minus the features filled so far against texts done, past the first 10% (start-up).
  const tail = samplesTaken.filter((s) => s.done >= 0.1 * n);
  const mx = tail.reduce((a, s) => a + s.done, 0) / tail.length;
  const my = tail.reduce((a, s) => a + (s.rss - s.done * dim * 4), 0) / tail.length;
  const slope = tail.reduce((a, s) => a + (s.done - mx) * (s.rss - s.done * dim * 4 - my), 0) / tail.reduce((a, s) => a + (s.done - mx) ** 2, 0);
  const maxRss = Math.max(...samplesTaken.map((s) => s.rss));
  const maxExFeatures = Math.max(...samplesTaken.map((s) => s.rss - s.done * dim * 4));
  process.stdout.write(
    JSON.stringify({
      texts: n,
      cache: cacheDir ? 'fresh temp folder' : 'off',
      forcedGc: !!forceGc,
      extracted: result.extracted,
      seconds: round(result.seconds, 1),
      textsPerSecond: round(n / result.seconds, 1),
      samples: samplesTaken.length,
      rssStartMB: round(start.rss / MB, 1),
      rssAfterDatasetMB: round(afterDataset.rss / MB, 1),
      datasetHeapMB: round((afterDataset.heapUsed - start.heapUsed) / MB, 1),
      rssBeforeExtractMB: round(before.rss / MB, 1),
      featuresMB: round(featureBytes / MB, 1),
      at10: at(0.1),
      at50: at(0.5),
      at90: at(0.9),
      at100: at(1),
      maxRssMB: round(maxRss / MB, 1),
      slopeExFeaturesMBPer10kTexts: round((slope * 10000) / MB, 2),
      extractionOverheadMB: round((samplesTaken[samplesTaken.length - 1]!.rss - featureBytes - afterDataset.rss) / MB, 1),
      maxRssExFeaturesMB: round(maxExFeatures / MB, 1),
      trace: `seconds done rssMB | ${samplesTaken.filter((_, i) => i % Math.max(1, Math.ceil(samplesTaken.length / 40)) === 0).map((s) => `${s.t.toFixed(1)} ${s.done} ${(s.rss / MB).toFixed(0)}`).join(' | ')}`,
    }) + '\n',
  );
}

function writeCsv(path: string, texts: ReadonlyArray<{ text: string; label: string }>, n: number): void {
  const q = (s: string) => `"${s.replace(/"/g, '""')}"`;
  const lines = ['label,text'];
  for (let i = 0; i < n; i++) {
    const s = texts[i % texts.length]!;
    lines.push(`${s.label},${q(`${s.text} ${i}`)}`);
  }
  writeFileSync(path, lines.join('\n') + '\n');
}

async function memory(): Promise<Record<string, unknown>> {
  const n = num('--texts', 50000);
  const small = num('--texts-small', Math.round(n / 5));
  const ds = await openDataset(data, { seed: 0, task: 'text' });
  const texts = [...ds.train, ...ds.val].sort((a, b) => (a.line ?? 0) - (b.line ?? 0)).map((s) => ({ text: s.text!, label: ds.classes[s.label]! }));
  const dir = mkdtempSync(join(tmpdir(), 'graft-text-csv-'));
  const runs: Record<string, Record<string, unknown>> = {};
  try {
    for (const count of small > 0 && small < n ? [small, n] : [n]) {
      const csv = join(dir, `texts-${count}.csv`);
      writeCsv(csv, texts, count);
      log(`memory: ${count} texts (${csv}) in a child process`);
      const out = execFileSync(process.execPath, [...(args.includes('--memory-gc') ? ['--expose-gc'] : []), fileURLToPath(import.meta.url), '--memory-child', csv, ...(args.includes('--memory-no-cache') ? ['--memory-no-cache'] : []), ...(args.includes('--memory-gc') ? ['--memory-gc'] : []), ...(model ? ['--model', model] : [])], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 * MB });
      runs[String(count)] = JSON.parse(out) as Record<string, unknown>;
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const big = runs[String(n)]!;
  const slope = big.slopeExFeaturesMBPer10kTexts as number;
  const result: Record<string, unknown> = {
    runs,
    slopeExFeaturesMBPer10kTexts: slope,
    criterion: 'flat: the least-squares slope of RSS minus the features filled so far, over the samples past 10% of the extraction, is < 2 MB per 10k texts (the features alone: 19.5 MB per 10k texts)',
    flat: slope < 2,
  };
  const other = small > 0 && small < n ? runs[String(small)] : undefined;
  if (other) {
    const per10k = (key: (r: Record<string, unknown>) => number) => round((key(big) - key(other)) / ((n - small) / 10000), 2);
    result.acrossRuns = {
      note: `${n} vs ${small} texts, each in its own process; per 10k texts more`,
      datasetMBPer10kTexts: per10k((r) => (r.rssAfterDatasetMB as number) - (r.rssStartMB as number)),
      extractionOverheadMBPer10kTexts: per10k((r) => r.extractionOverheadMB as number),
      finalRssExFeaturesMBPer10kTexts: per10k((r) => (r.at100 as { rssExFeaturesMB: number }).rssExFeaturesMB),
    };
  }
  return result;
}

// ---------------------------------------------------------------------------------------------- main

const child = option('--memory-child');
if (child) {
  await memoryChild(child);
} else {
  const sections = (option('--sections') ?? 'quality,speed,memory').split(',');
  const report: Record<string, unknown> = {
    machine: { cpu: cpuInfo(), node: process.version, onnxruntimeNode: JSON.parse(readFileSync(join(root, 'node_modules/onnxruntime-node/package.json'), 'utf8')).version },
    data,
  };
  const started = performance.now();
  if (sections.includes('quality')) report.quality = await quality();
  if (sections.includes('speed')) report.speed = await speed();
  if (sections.includes('memory')) report.memory = await memory();
  report.seconds = round((performance.now() - started) / 1000, 1);
  console.log(JSON.stringify(report, null, 2));
}
