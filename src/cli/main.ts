/**
 * The `graft` command line: a thin layer over the library. Results go to stdout (tables, or exactly one JSON
 * document with --json); progress and notices go to stderr.
 */
import { constants } from 'node:fs';
import { access, mkdir, readFile, stat } from 'node:fs/promises';
import { basename, dirname, extname, join, relative, resolve } from 'node:path';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { GraftModel } from '../artifact/model.js';
import { fileProblem, oneLine, writeFileAtomic } from '../util/fs.js';
import { byCodeUnit, walkFiles } from '../data/walk.js';
import { digestSamples } from '../artifact/split.js';
import { sampleName, type DatasetSplit, type Skipped } from '../data/dataset.js';
import { openLabelled } from '../data/open.js';
import { readTable } from '../data/table.js';
import { GraftError } from '../errors.js';
import { CHECKPOINT_DIR, CheckpointStore } from '../train/checkpoint.js';
import { argmaxRows, computeMetrics, crossEntropy, type Metrics } from '../evaluate/metrics.js';
import { formatMetrics } from '../evaluate/report.js';
import { lrFindSvg, type LrFindResult } from '../train/lr-find.js';
import { renderReport, thumbnails } from '../evaluate/html-report.js';
import { Learner, roundTiming, type Diagnostics, type HeadChoice, type FineTuneTiming, type SampleRef } from '../learner.js';
import type { HeadCandidate, HeadSelection } from '../train/select-head.js';
import type { EpochRecord, FitOptions, OptimizerKind, ScheduleKind, TrainResult, TrainState } from '../train/trainer.js';
import type { AugmentLevel } from '../preprocess/augment.js';
import { VERSION } from '../version.js';
import { formatBytes, hubOptions, importCommand, models, pull, type HubFlags } from './backbones.js';
import { createProgress } from './progress.js';
import { registerServe } from './serve.js';
import { defaultCacheDir, listCacheFolders, parseSize, pruneCache, type CacheFolder } from '../backbone/cache.js';

const int = (name: string, min = 0) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer ≥ ${min}, got "${v}"`);
  return n;
};
const positive = (name: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a positive number, got "${v}"`);
  return n;
};
const rateOrAuto = (v: string) => (v === 'auto' ? ('auto' as const) : positive('--lr')(v));
const fractionOf = (name: string) => (v: string) => {
  const n = Number(v);
  if (!(n >= 0 && n < 1)) throw new InvalidArgumentError(`${name} must be in [0, 1), got "${v}"`);
  return n;
};
const fraction = (v: string) => {
  const n = Number(v);
  if (!(n > 0 && n < 1)) throw new InvalidArgumentError(`--val-split must be between 0 and 1 (exclusive), got "${v}"`);
  return n;
};

function emitJson(doc: unknown): void {
  process.stdout.write(JSON.stringify(doc, null, 2) + '\n');
}

function printSkipped(skipped: Skipped[]): void {
  if (skipped.length === 0) return;
  const rows = skipped.some((s) => s.line !== undefined);
  process.stderr.write(`skipped ${skipped.length} ${rows ? 'sample' : 'file'}${skipped.length === 1 ? '' : 's'}:\n`);
  for (const s of skipped) process.stderr.write(`  ${oneLine(sampleName({ ...s, file: relative(process.cwd(), s.file) || s.file }))}: ${oneLine(s.reason)}\n`);
}

/**
 * Makes sure `--out` can be written before any training happens: an existing file, a path under a file or a
 * read-only location is an error now, not after the training is done.
 */
async function prepareOut(dir: string): Promise<string> {
  const out = resolve(dir);
  const info = await stat(out).catch((e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? undefined : Promise.reject(e)));
  if (info && !info.isDirectory()) throw new GraftError('USAGE', `--out ${out} is an existing file, not a folder`, { out });
  try {
    await mkdir(out, { recursive: true });
    await access(out, constants.W_OK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    let parent = dirname(out);
    while (!(await stat(parent).catch(() => undefined))) parent = dirname(parent);
    const why = code === 'ENOTDIR' || !(await stat(parent))?.isDirectory() ? `${parent} is a file` : code === 'EACCES' || code === 'EROFS' || code === 'EPERM' ? 'the location is not writable' : `${code ?? (e as Error).message}`;
    throw new GraftError('USAGE', `--out ${out} cannot be created: ${why}`, { out });
  }
  return out;
}

interface TrainFlags {
  task?: 'image' | 'text' | 'audio';
  textColumn?: string[];
  labelColumn?: string;
  namePattern?: string;
  valWhere?: string;
  maxLength?: number;
  pooling?: 'mean' | 'cls' | 'mean+max';
  model?: string;
  offline?: boolean;
  cut?: string;
  out: string;
  head: HeadChoice;
  epochs?: number;
  lr?: number | 'auto';
  batchSize?: number;
  weightDecay?: number;
  patience?: number;
  valSplit?: number;
  seed: number;
  cacheDir?: string;
  cache: boolean;
  json: boolean;
  /** --resume (true), --no-resume (false), neither (undefined: resume a checkpoint of this same run if OUT holds one). */
  resume?: boolean;
  fineTuneAt?: string;
  unfreeze?: number;
  freezeEpochs?: number;
  lrMult?: number;
  batchNorm?: 'frozen-stats' | 'train';
  encoderDropout?: number;
  optimizer?: OptimizerKind;
  schedule?: ScheduleKind;
  warmup?: number;
  clipNorm?: number;
  classWeights?: 'auto' | 'none';
  augment?: AugmentLevel;
  views?: number;
  tta?: boolean;
  monitor?: 'val-loss' | 'accuracy' | 'macro-f1';
  momentum?: number;
  events?: string;
}

async function train(data: string, flags: TrainFlags): Promise<void> {
  const progress = createProgress(false, { events: flags.events });
  const started = performance.now();
  const out = await prepareOut(flags.out);
  const wallStart = Date.now() - 1000;
  // Checkpoints of this run (OUT/.graft-checkpoint): resumed when they were written by the same command.
  const checkpoints = join(out, CHECKPOINT_DIR);
  if (flags.resume === false) await CheckpointStore.remove(checkpoints);
  else if (flags.resume && !(await CheckpointStore.exists(checkpoints))) throw new GraftError('USAGE', `--resume: ${out} holds no checkpoint to resume (${checkpoints})`, { out });
  const learn = await openLearner(data, flags, progress, checkpoints);
  try {
    await trainLearner(learn, flags, out, progress, started);
    await learn.discardCheckpoints();
  } finally {
    await learn.close();
  }
  if (flags.cache) evictOverBudget(flags.cacheDir ?? defaultCacheDir(), wallStart, (m) => progress.log(m));
}

/**
 * `graft lr-find DATA [train's options]`: the learning-rate range test on the head (the options that shape the
 * training steps apply: batch size, weight decay, optimizer, class weights); writes OUT/lr-find.svg and
 * OUT/lr-find.json and prints the suggested rate.
 */
async function lrFindCommand(data: string, flags: TrainFlags): Promise<void> {
  const progress = createProgress(false, { events: flags.events });
  const out = await prepareOut(flags.out);
  const learn = await openLearner(data, flags, progress);
  try {
    progress.stop();
    const r = await rangeTest(learn, flags, out);
    if (flags.json) emitJson({ suggestion: r.suggestion, minimumTenth: r.minimumTenth, plot: join(out, 'lr-find.svg'), lrs: r.lrs, losses: r.losses, smoothed: r.smoothed });
    else process.stdout.write(`suggested learning rate ${r.suggestion.toExponential(1)} (a tenth of the least-loss rate: ${r.minimumTenth.toExponential(1)}); curve in ${join(out, 'lr-find.svg')}\n`);
  } finally {
    await learn.close();
  }
}

/** Runs the range test with the run's step options and writes its curve into `out`. */
async function rangeTest(learn: Learner, flags: TrainFlags, out: string): Promise<LrFindResult> {
  const { lr: _lr, epochs: _epochs, patience: _patience, ...stepOptions } = fitFlags(flags);
  const r = await learn.lrFind(stepOptions);
  await writeFileAtomic(join(out, 'lr-find.svg'), lrFindSvg(r, `learning-rate range test (${basename(resolve(learn.data.dataset.root))})`));
  await writeFileAtomic(join(out, 'lr-find.json'), JSON.stringify({ suggestion: r.suggestion, minimumTenth: r.minimumTenth, lrs: r.lrs, losses: r.losses, smoothed: r.smoothed }, null, 2) + '\n');
  return r;
}

/** The dataset scanned, the backbone loaded and its features extracted, as the flags say. */
async function openLearner(data: string, flags: TrainFlags, progress: ReturnType<typeof createProgress>, checkpointDir?: string): Promise<Learner> {
  const learn = await Learner.create({
    data,
    ...(flags.task ? { task: flags.task } : {}),
    ...(flags.textColumn?.length ? { textColumns: flags.textColumn } : {}),
    ...(flags.labelColumn ? { labelColumn: flags.labelColumn } : {}),
    ...(flags.maxLength !== undefined ? { maxLength: flags.maxLength } : {}),
    ...(flags.namePattern ? { namePattern: flags.namePattern } : {}),
    ...(flags.valWhere ? { valWhere: flags.valWhere } : {}),
    ...(flags.pooling ? { pooling: flags.pooling === 'cls' ? ('class-token' as const) : flags.pooling === 'mean+max' ? ('mean+max' as const) : ('masked-mean' as const) } : {}),
    ...(flags.model !== undefined ? { model: flags.model } : {}),
    hub: {
      ...hubOptions(flags),
      onProgress: (() => {
        const begun = new Set<string>();
        return (p) => {
          const key = `${p.repo}/${p.path}`;
          if (!begun.has(key)) progress.log(`downloading ${key} (${formatBytes(p.total)}${p.resumedFrom ? `, resuming at ${formatBytes(p.resumedFrom)}` : ''})`);
          begun.add(key);
        };
      })(),
    },
    onNotice: (message) => progress.log(message),
    head: flags.head,
    seed: flags.seed,
    ...(flags.augment ? { augment: flags.augment } : {}),
    ...(flags.views !== undefined ? { views: flags.views } : {}),
    ...(flags.tta ? { tta: true } : {}),
    ...(flags.cut ? { cut: flags.cut } : {}),
    ...(flags.valSplit !== undefined ? { valSplit: flags.valSplit } : {}),
    ...(flags.cache ? (flags.cacheDir ? { cacheDir: flags.cacheDir } : {}) : { cacheDir: false as const }),
    ...(checkpointDir ? { checkpointDir } : {}),
    onProgress: (() => {
      // One bar for the clean features, one per augmented view.
      let current: string | undefined;
      return (p) => {
        const label = p.view === undefined ? 'features' : p.view === 'mirror' ? 'mirrored' : `view ${p.view}`;
        if (label !== current) {
          progress.start(label, p.total);
          current = label;
        }
        progress.update(p.done, `cached ${p.cached} skipped ${p.skipped}`);
        if (p.done === p.total) progress.stop();
      };
    })(),
  });
  const split = learn.data.dataset.split;
  if (flags.valSplit !== undefined && split.kind !== 'random') {
    const by =
      split.kind === 'column' ? `the data's "${split.column}" column`
      : split.kind === 'names' ? `--val-where ${split.valWhere}`
      : `the ${split.kind} ${relative(process.cwd(), split.train) || '.'} and ${relative(process.cwd(), split.val) || '.'}`;
    progress.log(`--val-split ${flags.valSplit} ignored: ${by} already split it`);
  }
  return learn;
}

/** The fit options the flags set (the rest keep the library's defaults). */
function fitFlags(flags: TrainFlags): Partial<FitOptions> {
  return {
    ...(flags.epochs !== undefined ? { epochs: flags.epochs } : {}),
    ...(typeof flags.lr === 'number' ? { lr: flags.lr } : {}),
    ...(flags.batchSize !== undefined ? { batchSize: flags.batchSize } : {}),
    ...(flags.weightDecay !== undefined ? { weightDecay: flags.weightDecay } : {}),
    ...(flags.patience !== undefined ? { patience: flags.patience } : {}),
    ...(flags.optimizer !== undefined ? { optimizer: flags.optimizer } : {}),
    ...(flags.schedule !== undefined ? { schedule: flags.schedule } : {}),
    ...(flags.warmup !== undefined ? { warmup: flags.warmup } : {}),
    ...(flags.clipNorm !== undefined ? { clipNorm: flags.clipNorm } : {}),
    ...(flags.classWeights === 'auto' ? { balance: true } : {}),
    ...(flags.monitor !== undefined ? { monitor: flags.monitor } : {}),
    ...(flags.momentum !== undefined ? { momentum: flags.momentum } : {}),
  };
}

/**
 * Keeps the feature cache within `$GRAFT_CACHE_MAX_SIZE` (default 20G) after a training run: least recently
 * used folders go first, never one this run used (opening a folder rewrites its meta.json).
 */
function evictOverBudget(root: string, since: number, log: (m: string) => void): void {
  const budget = parseSize(process.env.GRAFT_CACHE_MAX_SIZE ?? DEFAULT_CACHE_BUDGET);
  const { removed } = pruneCache(root, { maxBytes: budget, usedSince: since });
  if (removed.length) log(`feature cache over ${formatBytes(budget)} (GRAFT_CACHE_MAX_SIZE): removed ${removed.length} least recently used folder${removed.length === 1 ? '' : 's'} (${formatBytes(removed.reduce((a, f) => a + f.bytes, 0))})`);
}

const DEFAULT_CACHE_BUDGET = '20G';

async function trainLearner(learn: Learner, flags: TrainFlags, out: string, progress: ReturnType<typeof createProgress>, started: number): Promise<void> {
  progress.stop();
  const { backbone, data: d } = learn;
  const what = NOUNS[learn.modality];
  progress.log(
    `backbone ${backbone.source.name ?? basename(backbone.source.file)} cut at "${backbone.config.cut}" (${backbone.cutReason}), ${backbone.config.featureDim} features; ` +
      `${d.trainRows.length} train / ${d.valRows.length} val ${what}, ${learn.classes.length} classes; ` +
      `features: ${d.extraction.cached} cached, ${d.extraction.extracted} extracted in ${d.extraction.seconds.toFixed(1)} s`,
  );

  if (d.extraction.tokens?.truncated) {
    const max = backbone.modality === 'text' ? backbone.config.maxLength : 0;
    progress.log(`${d.extraction.tokens.truncated} text${d.extraction.tokens.truncated === 1 ? '' : 's'} longer than ${max} tokens were truncated (--max-length sets the limit)`);
  }
  const leaks = d.dataset.leaks ?? [];
  if (leaks.length) {
    const example = leaks[0]!;
    progress.log(
      `warning: ${leaks.length} validation text${leaks.length === 1 ? ' also occurs' : 's also occur'} in training (leakage: validation scores are optimistic), e.g. ` +
        `${oneLine(sampleName({ ...example.val, file: relative(process.cwd(), example.val.file) || example.val.file }))} = ${oneLine(sampleName({ ...example.train, file: relative(process.cwd(), example.train.file) || example.train.file }))}`,
    );
  }
  const fit = fitFlags(flags);
  const fineTuning = flags.fineTuneAt !== undefined || flags.unfreeze !== undefined;
  let headLr: number | undefined;
  let rangeTested: LrFindResult | undefined;
  if (flags.lr === 'auto') {
    // --lr auto: the range test picks the head's rate (when fine-tuning, its head phase's; the unfrozen phase keeps its default).
    const r = await rangeTest(learn, flags, out);
    rangeTested = r;
    progress.log(`--lr auto: learning-rate range test suggests ${r.suggestion.toExponential(1)} for the head (curve in ${join(out, 'lr-find.svg')})`);
    if (fineTuning) headLr = r.suggestion;
    else fit.lr = r.suggestion;
  }
  let epochsPlanned = 0;
  let phase = 'train';
  const show = {
    beforeFit: (st: TrainState) => {
      epochsPlanned = st.options.epochs;
      progress.start(phase, epochsPlanned);
    },
    afterEpoch: (st: TrainState) => {
      const h = st.history[st.history.length - 1]!;
      progress.update(h.epoch + 1, `loss ${h.trainLoss.toFixed(3)} val_loss ${h.valLoss.toFixed(3)} val_acc ${h.valAccuracy.toFixed(3)}`);
      progress.epoch({ phase, epoch: h.epoch + 1, epochs: epochsPlanned, trainLoss: h.trainLoss, valLoss: h.valLoss, valAccuracy: h.valAccuracy, valMacroF1: h.valMacroF1 });
    },
    afterFit: () => progress.stop(),
  };
  let result: TrainResult;
  let phases: FineTuneTiming | undefined;
  const curves: Array<{ name: string; history: EpochRecord[] }> = [];
  if (fineTuning) {
    if (flags.fineTuneAt !== undefined && flags.unfreeze !== undefined) throw new GraftError('USAGE', 'give --fine-tune-at or --unfreeze, not both');
    const at = flags.fineTuneAt;
    phase = 'head';
    const tuned = await learn.fineTune(
      {
        ...(at !== undefined ? { fineTuneAt: /^\d+$/.test(at) ? Number(at) : at } : {}),
        ...(flags.unfreeze !== undefined ? { unfreeze: flags.unfreeze } : {}),
        ...(flags.freezeEpochs !== undefined ? { freezeEpochs: flags.freezeEpochs } : {}),
        ...(flags.lrMult !== undefined ? { lrMult: flags.lrMult } : {}),
        ...(flags.batchNorm !== undefined ? { batchNorm: flags.batchNorm } : {}),
        ...(flags.encoderDropout !== undefined ? { encoderDropout: flags.encoderDropout } : {}),
        ...(headLr !== undefined ? { headLr } : {}),
        fit,
      },
      [show, { afterFit: () => (phase = 'fine-tune') }],
    );
    result = tuned.phase2;
    if (tuned.phase1) curves.push({ name: 'head', history: tuned.phase1.history });
    curves.push({ name: 'fine-tune', history: tuned.phase2.history });
    phases = roundTiming(tuned.timing);
    progress.log(`fine-tuned ${tuned.trainableNodes} backbone nodes (${tuned.trainableTensors} weight tensors) after "${tuned.boundary}" with the head`);
    const stages = phases.stages.length > 1 ? ` (stages ${phases.stages.map((x) => `${x.toFixed(1)} s`).join(', ')})` : '';
    progress.log(`phases: frozen prefix ${phases.prefix.toFixed(1)} s, head ${phases.head.toFixed(1)} s, fine-tune ${phases.fineTune.toFixed(1)} s${stages}`);
    if (tuned.activations.disk > 0) progress.log(`boundary activations: ${formatBytes(tuned.activations.memory)} in memory, ${formatBytes(tuned.activations.disk)} read from disk per batch (GRAFT_MEMORY_BUDGET)`);
  } else {
    result = await learn.fit(fit, [show]);
  }
  if (learn.selection) progress.log(describeSelection(learn.selection));
  // Augmented views are extracted by the training that needs them (pooled, or at the fine-tuning boundary).
  const v = d.extraction.views;
  if (v) progress.log(`augmented views: ${v.rows} rows (${v.cached} cached, ${v.extracted} extracted in ${v.seconds.toFixed(1)} s, ${(v.extracted / Math.max(v.seconds, 1e-9)).toFixed(1)} per s)`);
  progress.log(
    `trained ${result.history.length}/${epochsPlanned} epochs${result.stoppedEarly ? ' (early stop)' : ''}; best epoch ${result.bestEpoch + 1} restored`,
  );
  const metrics = await learn.evaluate();
  await learn.export(out, metrics);
  const leakage = leaks.map((l) => ({ val: sampleName(l.val), train: sampleName(l.train) }));
  const diagnostics = await learn.diagnose();
  await writeFileAtomic(join(out, 'metrics.json'), JSON.stringify({ split: 'val', metrics, skipped: d.skipped, ...(leaks.length ? { leaks: leakage } : {}), diagnostics }, null, 2) + '\n');
  for (const line of summariseDiagnostics(diagnostics)) progress.log(line);
  if (!curves.length) curves.push({ name: 'head', history: result.history });
  const shown = [...diagnostics.topLosses, ...diagnostics.mislabeled].map((x) => x.file);
  const { dataset } = d;
  const perClass = (rows: number[]) => learn.classes.map((_, c) => rows.filter((r) => d.features.labels[r] === c).length);
  await writeFileAtomic(
    join(out, 'report.html'),
    renderReport({
      title: `graft · ${basename(resolve(dataset.root))}`,
      createdAt: new Date().toISOString(),
      task: learn.modality,
      dataset: { root: dataset.root, classes: learn.classes, trainPerClass: perClass(d.trainRows), valPerClass: perClass(d.valRows), split: describeSplit(dataset.split), skipped: d.skipped },
      backbone: { name: backbone.source.name ?? basename(backbone.source.file), featureDim: backbone.config.featureDim },
      phases: curves,
      metrics,
      diagnostics,
      ...(rangeTested ? { lrFind: rangeTested } : {}),
      ...(learn.modality === 'image' ? { thumbnails: await thumbnails([...new Set(shown)]) } : {}),
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  if (flags.json) {
    emitJson({
      task: learn.modality,
      metrics,
      skipped: d.skipped,
      out,
      labels: learn.classes,
      features: d.extraction,
      ...(learn.modality === 'text' ? { leaks: leakage } : {}),
      epochs: result.history.length,
      bestEpoch: result.bestEpoch + 1,
      seconds,
      ...(phases ? { phases } : {}),
      head: { kind: learn.spec.kind, ...(learn.selection ? { selection: learn.selection } : {}) },
      diagnostics,
    });
  } else {
    printSkipped(d.skipped);
    process.stdout.write(`Validation (${d.valRows.length} ${what})\n${formatMetrics(metrics)}\n\nModel written to ${out} (${seconds.toFixed(1)} s)\n`);
  }
}

/** The head chosen by cross-validation, and against what, in one line. */
export function describeSelection(s: HeadSelection): string {
  const name = (c: HeadCandidate) => (c.kind === 'mlp' ? 'MLP' : c.kind === 'logistic' ? `logistic C=${c.C}` : `MLP + logistic C=${c.C} averaged`);
  if (s.fallback) return `head: ${name(s.chosen)} (${s.fallback})`;
  const best = (kind: HeadCandidate['kind']) => s.scores.filter((x) => x.candidate.kind === kind).sort((a, b) => b.score - a.score || a.loss - b.loss)[0];
  const chosen = best(s.chosen.kind)!;
  const others = (['logistic', 'mlp', 'ensemble'] as const).filter((k) => k !== s.chosen.kind).flatMap((k) => best(k) ?? []);
  const how = `${s.folds}-fold cross-validation${s.repeats > 1 ? ` (${s.repeats} splits)` : ''} on the training rows`;
  return `head: ${name(s.chosen)} by ${how} (${s.metric} ${chosen.score.toFixed(3)}${others.map((o) => `; ${name(o.candidate)} ${o.score.toFixed(3)}`).join('')}; ${s.seconds.toFixed(1)} s)`;
}

/** How the data was split, in words. */
function describeSplit(split: DatasetSplit): string {
  switch (split.kind) {
    case 'random':
      return `random, stratified: ${Math.round(split.valFraction * 100)}% of each class validates (seed ${split.seed})`;
    case 'column':
      return `by the "${split.column}" column`;
    case 'names':
      return `by file name (${split.pattern}): ${split.valWhere} validates`;
    default:
      return `folders: ${split.train} and ${split.val}`;
  }
}

/** A few lines on stderr: what most deserves a look (the whole lists are in --json and metrics.json). */
function summariseDiagnostics(g: Diagnostics): string[] {
  const ref = (r: SampleRef) => (r.text !== undefined ? `${sampleName(r)} ${JSON.stringify(r.text.length > 60 ? `${r.text.slice(0, 59)}…` : r.text)}` : sampleName(r));
  const lines = [`calibration: expected calibration error ${g.calibration.ece.toFixed(3)}`];
  if (g.confusedPairs.length) lines.push(`most confused: ${g.confusedPairs.slice(0, 3).map((p) => `${p.actual} → ${p.predicted} (${p.count})`).join(', ')}`);
  if (g.mislabeled.length) lines.push(`possibly mislabelled (${g.mislabeled.length} shown in metrics.json), e.g. ${oneLine(ref(g.mislabeled[0]!))}: given ${g.mislabeled[0]!.given}, looks like ${g.mislabeled[0]!.suggested}`);
  if (g.nearDuplicates.length) lines.push(`warning: ${g.nearDuplicates.length} validation sample${g.nearDuplicates.length === 1 ? '' : 's'} nearly identical to training ones (features' cosine ≥ 0.98), e.g. ${oneLine(ref(g.nearDuplicates[0]!.val))} ~ ${oneLine(ref(g.nearDuplicates[0]!.train))}`);
  return lines;
}

/** How each modality's samples are called in messages. */
const NOUNS = { image: 'images', text: 'texts', audio: 'clips' } as const;

interface EvalFlags {
  json: boolean;
  textColumn?: string[];
  labelColumn?: string;
  namePattern?: string;
  valWhere?: string;
}

async function evaluate(modelDir: string, data: string, flags: EvalFlags): Promise<void> {
  const model = await GraftModel.load(modelDir);
  try {
    const modality = model.task === 'text-classification' ? 'text' : model.task === 'audio-classification' ? 'audio' : 'image';
    const { samples: scanned, skipped: scanSkipped, source } = await openLabelled(data, model.labels, modality, {
      ...(flags.textColumn?.length ? { textColumns: flags.textColumn } : {}),
      ...(flags.labelColumn ? { labelColumn: flags.labelColumn } : {}),
      ...(flags.namePattern ? { namePattern: flags.namePattern } : {}),
      ...(flags.valWhere ? { valWhere: flags.valWhere } : {}),
    });
    const progress = createProgress();
    const what = NOUNS[modality];
    // Samples the model was trained on are left out: scoring them would overstate accuracy (split.json).
    let samples = scanned;
    let excluded = 0;
    if (model.split) {
      const train = new Set(model.split.train);
      const digests = await digestSamples(scanned);
      samples = scanned.filter((_, i) => !(digests[i] !== undefined && train.has(digests[i]!)));
      excluded = scanned.length - samples.length;
      if (excluded) progress.log(`left out ${excluded} of ${scanned.length} ${what} the model was trained on`);
      if (samples.length === 0) throw new GraftError('DATASET', `every sample of ${source} is one the model was trained on: nothing left to evaluate`, { dir: source });
    } else progress.log(`warning: ${model.dir} records no training split (made by an older graft): training samples in ${source} would be scored too`);
    progress.log(`evaluating ${samples.length} ${what} from ${source}`);
    const { probabilities, valid, skipped } = await model.probabilities(samples.map((s) => (modality === 'text' ? s.text! : s.file)));
    const rows = samples.map((_, i) => i).filter((i) => valid[i]);
    const c = model.labels.length;
    const probs = new Float32Array(rows.length * c);
    rows.forEach((r, k) => probs.set(probabilities.subarray(r * c, (r + 1) * c), k * c));
    const truth = Int32Array.from(rows, (r) => samples[r]!.label);
    const metrics: Metrics = computeMetrics(model.labels, truth, argmaxRows(probs, c), { loss: crossEntropy(probs, c, truth) });
    const allSkipped = [...scanSkipped, ...skipped].sort((a, b) => byCodeUnit(a.file, b.file) || (a.line ?? 0) - (b.line ?? 0));
    const out = join(model.dir, 'eval.json');
    const trainingSamples = { excluded, known: model.split !== undefined };
    await writeFileAtomic(out, JSON.stringify({ data: resolve(source), metrics, skipped: allSkipped, trainingSamples }, null, 2) + '\n');
    if (flags.json) emitJson({ metrics, skipped: allSkipped, trainingSamples, out });
    else {
      printSkipped(allSkipped);
      process.stdout.write(`${source} (${rows.length} ${what})\n${formatMetrics(metrics)}\n`);
    }
  } finally {
    await model.close();
  }
}

interface PredictFlags {
  topK: number;
  json: boolean;
  text?: string[];
  textColumn?: string[];
  filesFrom?: string;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * The image files to classify: each argument (a folder stands for every file under it, recursively, sorted) and
 * each line of `--files-from` (a file, or `-` for stdin). Paths that cannot be used are returned with a reason.
 */
async function imageInputs(inputs: string[], flags: PredictFlags): Promise<{ files: string[]; problems: Skipped[] }> {
  const listed = [...inputs];
  if (flags.filesFrom !== undefined) {
    let text: string;
    try {
      text = flags.filesFrom === '-' ? await readStdin() : await readFile(flags.filesFrom, 'utf8');
    } catch (e) {
      throw new GraftError('USAGE', `--files-from ${flags.filesFrom}: ${fileProblem(e)}`);
    }
    listed.push(...text.split(/\r?\n/).filter((l) => l.trim() !== ''));
  }
  const files: string[] = [];
  const problems: Skipped[] = [];
  for (const input of listed) {
    const file = resolve(input);
    const info = await stat(file).catch((e: unknown) => e as Error);
    if (info instanceof Error) problems.push({ file, reason: fileProblem(info) });
    else if (info.isDirectory()) files.push(...(await walkFiles(file, problems)));
    else files.push(file);
  }
  return { files, problems };
}

/** Texts to classify: each `--text`, each line of a `.txt` file, each row of a table (its text column). */
async function textInputs(inputs: string[], flags: PredictFlags): Promise<Array<{ text: string; file?: string; line?: number }>> {
  const texts: Array<{ text: string; file?: string; line?: number }> = (flags.text ?? []).map((text) => ({ text }));
  for (const input of inputs) {
    const file = resolve(input);
    const ext = extname(file).toLowerCase();
    if (ext === '.txt') {
      let content: string;
      try {
        content = new TextDecoder('utf-8', { fatal: true }).decode(await readFile(file));
      } catch (e) {
        throw new GraftError('DATASET', `${file}: cannot read the texts (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, { file });
      }
      content.split(/\r?\n/).forEach((line, i) => {
        if (line.trim()) texts.push({ text: line, file, line: i + 1 });
      });
    } else {
      const table = await readTable(file, { ...(flags.textColumn?.length ? { textColumns: flags.textColumn } : {}), requireLabel: false });
      for (const row of table.rows) if (row.text !== undefined) texts.push({ text: row.text, file, line: row.line });
    }
  }
  if (texts.length === 0) throw new GraftError('USAGE', 'nothing to classify: give --text "…", a .txt file (one text a line) or a .csv/.tsv/.jsonl file');
  return texts;
}

async function predict(modelDir: string, inputs: string[], flags: PredictFlags): Promise<void> {
  const model = await GraftModel.load(modelDir);
  try {
    const k = Math.min(flags.topK, model.labels.length);
    if (model.task === 'text-classification') {
      const texts = await textInputs(inputs, flags);
      const { predictions } = await model.predict(texts.map((t) => t.text), k);
      const entries = texts.map((t, i) => ({ ...(t.file ? { file: t.file, line: t.line } : {}), text: t.text, predictions: predictions[i]!.predictions }));
      if (flags.json) emitJson(entries);
      else for (const e of entries) process.stdout.write(`${e.file ? `${relative(process.cwd(), e.file)}:${e.line}: ` : ''}${oneLine(e.text.length > 80 ? `${e.text.slice(0, 77)}…` : e.text)}\n${formatPredictions(e.predictions)}\n`);
      return;
    }
    const kind = model.task === 'audio-classification' ? 'audio' : 'image';
    if (flags.text?.length) throw new GraftError('USAGE', `${model.dir} is an ${kind} model: give ${kind} files, not --text`);
    if (inputs.length === 0 && flags.filesFrom === undefined) throw new GraftError('USAGE', `nothing to classify: give ${kind} files or folders, or --files-from LIST`);
    const { files: found, problems } = await imageInputs(inputs, flags);
    const predicted = found.length ? await model.predict(found, k) : { predictions: [], skipped: [] };
    const predictions = predicted.predictions;
    const skipped = [...problems, ...predicted.skipped];
    const files = [...new Set([...found, ...problems.map((p) => p.file)])];
    const byFile = new Map(predictions.map((p) => [p.input, p]));
    const errors = new Map(skipped.map((s) => [s.file, oneLine(s.reason)]));
    const entries = files.map((file) => (byFile.has(file) ? { file, predictions: byFile.get(file)!.predictions } : { file, error: errors.get(file) ?? 'not predicted' }));
    if (flags.json) emitJson(entries);
    else {
      for (const e of entries) {
        if ('error' in e) process.stdout.write(`${oneLine(e.file)}\n  error: ${e.error}\n`);
        else process.stdout.write(`${oneLine(e.file)}\n${formatPredictions(e.predictions)}\n`);
      }
    }
    if (skipped.length) process.exitCode = 1;
  } finally {
    await model.close();
  }
}

const formatPredictions = (ps: Array<{ label: string; probability: number }>) => ps.map((p) => `  ${(p.probability * 100).toFixed(1).padStart(5)}%  ${p.label}`).join('\n');

const collect = (value: string, previous: string[] = []) => [...previous, value];

/** The options of `graft train` (and of `graft lr-find`, which reads the data and builds the head the same way). */
function trainOptions(c: Command): Command {
  return c
    .addOption(new Option('--task <kind>', 'image, text or audio (default: detected from DATA)').choices(['image', 'text', 'audio']))
    .option('--name-pattern <pattern>', "labels from file names: the name with {label} (and other {fields}, * for any text), e.g. '{label}_{speaker}_{index}.wav'")
    .option('--val-where <rule>', "with --name-pattern: which files validate, field<op>value (= != < <= > >=; = takes a,b,c), e.g. 'index<5' or 'speaker=jackson'")
    .option('--text-column <name>', 'text tables: the column holding the text (repeat to join several, e.g. title and body)', collect)
    .option('--label-column <name>', 'tables: the column holding the label')
    .option('--max-length <n>', 'text: tokens per text, special tokens included (default: the tokenizer\'s limit)', int('--max-length', 2))
    .addOption(new Option('--pooling <kind>', 'text encoders with token outputs: mean of the tokens, or the first ([CLS]) token; audio: mean (or mean+max, the default) over windows').choices(['mean', 'cls', 'mean+max']))
    .option('--model <path|name>', 'backbone: an ONNX model, a zoo name (graft models), or a hub repo (owner/name, hf:owner/name/file.onnx); default: mobilenetv2 (images) or minilm-l6 (texts) from the hub when cached or reachable, else the bundled offline one')
    .option('--offline', 'never touch the network (also HF_HUB_OFFLINE=1)')
    .option('--cut <tensor>', 'tensor to cut the model at (default: the input of its last global pooling)')
    .option('--out <dir>', 'output directory for model.onnx and graft.json', 'graft-model')
    .addOption(new Option('--head <kind>', 'new classifier head: auto chooses by 5-fold cross-validation on the training rows between an L2 logistic regression (C by CV) and the MLP; logistic: the former; mlp, linear: trained by the optimizer').choices(['auto', 'logistic', 'mlp', 'linear']).default('auto'))
    .option('--epochs <n>', 'maximum training epochs (default 60, early stopping; the unfrozen phase of a text encoder: 5, of audio: 10)', int('--epochs', 1))
    .option('--lr <x|auto>', 'learning rate, or auto: the range test picks it (graft lr-find) (default: MLP head 3e-4, on texts 1e-3; linear head 1e-3; fine-tuning 1e-4, a text encoder 3e-5)', rateOrAuto)
    .option('--batch-size <n>', 'training batch size (default 32)', int('--batch-size', 1))
    .option('--weight-decay <x>', 'decoupled weight decay (default 0.3)', Number)
    .option('--patience <n>', 'early-stopping patience in epochs, 0: off (default 8)', int('--patience'))
    .addOption(new Option('--batch-norm <policy>', 'BatchNorm in the fine-tuned blocks: keep pretrained statistics, or train them').choices(['frozen-stats', 'train']))
    .addOption(new Option('--optimizer <name>', 'optimizer (default adamw)').choices(['adamw', 'adam', 'sgd']))
    .addOption(new Option('--schedule <name>', 'learning-rate schedule over the epochs (default cosine)').choices(['constant', 'cosine', 'one-cycle', 'step']))
    .option('--warmup <f>', 'fraction of the steps spent warming the learning rate up (default 0; fine-tuning a text encoder 0.1)', fractionOf('--warmup'))
    .option('--clip-norm <x>', "clip the gradients' global L2 norm (default: no clipping)", positive('--clip-norm'))
    .addOption(new Option('--monitor <measure>', 'what early stopping watches and which epoch it keeps: validation loss, accuracy or macro-F1 (default val-loss)').choices(['val-loss', 'accuracy', 'macro-f1']))
    .addOption(new Option('--class-weights <mode>', 'auto: balanced sampling, every class drawn each epoch as often as the largest (default none)').choices(['auto', 'none']))
    .option('--momentum <x>', 'SGD momentum (default 0.9)', fractionOf('--momentum'))
    .addOption(new Option('--augment <policy>', 'augment the training images (random resized crop, flip, rotation, colour jitter) or clips (time shift, gain, noise): views are extracted once and cached (default none)').choices(['none', 'light', 'standard', 'strong']))
    .option('--views <k>', 'augmented views per training sample (default 4 with --augment); each epoch trains on the sample or one of its views', int('--views'))
    .option('--tta', 'test-time augmentation (images): validation and the exported model average each image with its mirror')
    .option('--val-split <f>', 'validation fraction when DATA has no split of its own (default 0.2)', fraction, undefined)
    .option('--seed <s>', 'random seed (split, initialisation, shuffling, dropout)', int('--seed'), 0)
    .option('--cache-dir <dir>', 'feature cache directory (default $GRAFT_CACHE or ~/.cache/graft)')
    .option('--no-cache', 'do not read or write the feature cache')
    .option('--fine-tune-at <n|tensor>', 'fine-tune the backbone from this node index or tensor on (after training the head)')
    .option('--unfreeze <k>', 'fine-tune the last K blocks of the backbone (after training the head)', int('--unfreeze', 1))
    .option('--freeze-epochs <e>', 'head-only epochs before unfreezing (fine-tuning; default 3, texts and audio: up to 60 with early stopping)', int('--freeze-epochs'))
    .option('--lr-mult <m>', 'the backbone trains at lr / m (fine-tuning; default 10, a text encoder 1)', positive('--lr-mult'))
    .option('--encoder-dropout <p>', "dropout in a transformer's unfrozen layers while fine-tuning (default 0.1)", fractionOf('--encoder-dropout'))
    .option('--events <file>', 'append progress to FILE as NDJSON, one event a line (phase, epoch, log), for programs to follow')
    .option('--json', 'print one JSON document on stdout', false);
}

export function program(): Command {
  const cmd = new Command('graft')
    .description('Transfer learning for TypeScript: train a classifier on your images, texts or audio clips from a pretrained ONNX model')
    .version(VERSION);
  trainOptions(
    cmd
      .command('train')
      .description('extract features with a pretrained backbone and train a new head on them')
      .argument('<data>', 'images or audio: DATA/train/<class>/* + DATA/val/<class>/*, or DATA/<class>/*, or a folder of files labelled by name (--name-pattern); texts: a .csv/.tsv/.jsonl file, a folder with train.<ext> + val.<ext>, or DATA/<class>/*.txt; or a manifest (path, label, split columns)'),
  )
    .option('--resume', 'continue the run whose checkpoint OUT holds (an error when it holds none); without --resume or --no-resume, a checkpoint written by this same command is resumed')
    .option('--no-resume', 'start over, discarding any checkpoint in OUT')
    .action((data: string, flags: TrainFlags) => train(data, flags));
  trainOptions(
    cmd
      .command('lr-find')
      .description("the learning-rate range test on the head (fastai's lr_find): suggests a rate, writes OUT/lr-find.svg and lr-find.json; takes train's options")
      .argument('<data>', 'as for train'),
  ).action((data: string, flags: TrainFlags) => lrFindCommand(data, flags));
  cmd
    .command('eval')
    .description('evaluate an exported model on labelled data')
    .argument('<model-dir>', 'directory written by graft train')
    .argument('<data>', 'images or audio: DATA/test, DATA/val or DATA itself, with one folder per class, or files labelled by name (--name-pattern); texts: a labelled table, a folder of them, or DATA/<class>/*.txt')
    .option('--text-column <name>', 'text tables: the column holding the text (repeatable)', collect)
    .option('--label-column <name>', 'tables: the column holding the label')
    .option('--name-pattern <pattern>', "labels from file names, as for train (e.g. '{label}_{speaker}_{index}.wav')")
    .option('--val-where <rule>', 'with --name-pattern: evaluate only the files this rule picks (e.g. index<5)')
    .option('--json', 'print one JSON document on stdout', false)
    .action((modelDir: string, data: string, flags: EvalFlags) => evaluate(modelDir, data, flags));
  cmd
    .command('predict')
    .description('classify images, texts or audio clips with an exported model')
    .argument('<model-dir>', 'directory written by graft train')
    .argument('[inputs...]', 'image or audio files or folders of them; for a text model: .txt files (one text a line) or .csv/.tsv/.jsonl tables')
    .option('--files-from <list>', 'image and audio models: also classify the files listed in LIST, one path a line (- reads stdin)')
    .option('--text <text>', 'a text to classify (text models; repeatable)', collect)
    .option('--text-column <name>', 'tables: the column holding the text (repeatable)', collect)
    .option('--top-k <k>', 'number of ranked classes per input', int('--top-k', 1), 5)
    .option('--json', 'print one JSON document on stdout', false)
    .action((modelDir: string, inputs: string[], flags: PredictFlags) => predict(modelDir, inputs, flags));
  cmd
    .command('models')
    .description('list the model zoo: size, licence, feature dimension, and whether each is cached')
    .option('--offline', 'never touch the network (also HF_HUB_OFFLINE=1)')
    .option('--json', 'print one JSON document on stdout', false)
    .action((flags: HubFlags) => models(flags));
  cmd
    .command('pull')
    .description('download a zoo model (and its preprocessing and tokenizer files) into the Hugging Face cache')
    .argument('<model>', 'zoo name (graft models)')
    .option('--offline', 'only check the cache (also HF_HUB_OFFLINE=1)')
    .option('--json', 'print one JSON document on stdout', false)
    .action((name: string, flags: HubFlags) => pull(name, flags));
  cmd
    .command('import')
    .description('convert a TensorFlow.js model (layers or graph format: Keras, Teachable Machine) to ONNX')
    .argument('<source>', 'folder holding model.json and its weight files (or the model.json itself)')
    .requiredOption('--out <dir>', 'output folder for model.onnx, pretrained_cfg.json (and labels.json)')
    .option('--json', 'print one JSON document on stdout', false)
    .action((source: string, flags: { out: string; json: boolean }) => importCommand(source, flags));
  const cache = cmd.command('cache').description('what the feature cache holds, and evicting it');
  cache
    .command('ls')
    .description('list the feature cache: one folder per backbone + preprocessing, its size and when it was last used')
    .option('--cache-dir <dir>', 'feature cache directory (default $GRAFT_CACHE or ~/.cache/graft)')
    .option('--json', 'print one JSON document on stdout', false)
    .action((flags: CacheFlags) => cacheList(flags));
  cache
    .command('prune')
    .description('remove least recently used feature folders')
    .option('--cache-dir <dir>', 'feature cache directory (default $GRAFT_CACHE or ~/.cache/graft)')
    .option('--max-size <size>', 'keep at most this much (e.g. 500M, 2G), least recently used removed first', sizeOption)
    .option('--older-than <days>', 'remove folders unused for more than this many days', positive('--older-than'))
    .option('--all', 'remove every feature folder')
    .option('--dry-run', 'say what would be removed, remove nothing')
    .option('--json', 'print one JSON document on stdout', false)
    .action((flags: CacheFlags) => cachePrune(flags));
  registerServe(cmd);
  return cmd;
}

interface CacheFlags {
  cacheDir?: string;
  maxSize?: number;
  olderThan?: number;
  all?: boolean;
  dryRun?: boolean;
  json: boolean;
}

const sizeOption = (v: string) => {
  try {
    return parseSize(v);
  } catch (e) {
    throw new InvalidArgumentError(`--max-size: ${(e as Error).message}`);
  }
};

const folderDoc = (f: CacheFolder) => ({ key: f.key, dir: f.dir, bytes: f.bytes, lastUsed: f.lastUsed.toISOString(), backbone: f.meta?.backbone?.name ?? f.meta?.backbone?.file ?? null, dim: f.meta?.dim ?? null, sequences: !!f.meta?.ragged });

function cacheList(flags: CacheFlags): void {
  const root = flags.cacheDir ?? defaultCacheDir();
  const folders = listCacheFolders(root).reverse(); // most recently used first
  const total = folders.reduce((a, f) => a + f.bytes, 0);
  if (flags.json) return emitJson({ root, bytes: total, folders: folders.map(folderDoc) });
  if (folders.length === 0) return void process.stdout.write(`${root}: no cached features\n`);
  for (const f of folders) {
    const what = `${f.meta?.backbone?.name ?? f.meta?.backbone?.file ?? 'unknown backbone'}${f.meta?.ragged ? ' (token states for fine-tuning)' : ''}`;
    process.stdout.write(`${f.key.slice(0, 16)}  ${formatBytes(f.bytes).padStart(9)}  last used ${f.lastUsed.toISOString().slice(0, 16).replace('T', ' ')}  ${oneLine(what)}\n`);
  }
  process.stdout.write(`${folders.length} folder${folders.length === 1 ? '' : 's'}, ${formatBytes(total)} in ${root}/features\n`);
}

function cachePrune(flags: CacheFlags): void {
  if (flags.maxSize === undefined && flags.olderThan === undefined && !flags.all) throw new GraftError('USAGE', 'say what to remove: --max-size SIZE, --older-than DAYS or --all');
  const root = flags.cacheDir ?? defaultCacheDir();
  const { removed, remainingBytes: left } = pruneCache(root, {
    ...(flags.all ? { maxBytes: 0 } : flags.maxSize !== undefined ? { maxBytes: flags.maxSize } : {}),
    ...(flags.olderThan !== undefined ? { olderThanMs: flags.olderThan * 86_400_000 } : {}),
    dryRun: !!flags.dryRun,
  });
  const freed = removed.reduce((a, f) => a + f.bytes, 0);
  if (flags.json) return emitJson({ root, dryRun: !!flags.dryRun, removed: removed.map(folderDoc), freedBytes: freed, remainingBytes: left });
  for (const f of removed) process.stdout.write(`${flags.dryRun ? 'would remove' : 'removed'} ${f.key.slice(0, 16)} (${formatBytes(f.bytes)}, last used ${f.lastUsed.toISOString().slice(0, 10)})\n`);
  process.stdout.write(`${flags.dryRun ? 'would free' : 'freed'} ${formatBytes(freed)}; ${formatBytes(left)} left in ${root}/features\n`);
}

export async function main(argv: string[]): Promise<void> {
  const json = argv.includes('--json');
  const cmd = program();
  // Commander's own parse errors become USAGE errors (exit 2, and a JSON document with --json).
  const quietUsage = (c: Command) => {
    // The error and a one-line hint, not the whole help.
    c.showHelpAfterError(c.parent ? `(graft ${c.name()} --help lists its options)` : '(graft --help lists the commands)');
    c.exitOverride().configureOutput({ writeErr: (s) => (json ? undefined : process.stderr.write(s)) });
    c.commands.forEach(quietUsage);
  };
  quietUsage(cmd);
  try {
    await cmd.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.exitCode === 0) return; // --help, --version
      if (!json) {
        process.exitCode = 2;
        return; // commander already printed the message and the help hint
      }
    }
    const err =
      e instanceof GraftError ? e
      : e instanceof CommanderError ? new GraftError('USAGE', e.message.replace(/^error: /, ''))
      : new GraftError('TRAIN', (e as Error).message ?? String(e), {}, { cause: e });
    if (json) emitJson({ error: { code: err.code, message: err.message } });
    process.stderr.write(`graft: error: ${err.message}\n`);
    if (process.env.GRAFT_DEBUG && e instanceof Error) process.stderr.write(`${e.stack}\n`);
    process.exitCode = err.code === 'USAGE' ? 2 : 1;
  }
}
