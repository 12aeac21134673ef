/**
 * The `graft` command line: a thin layer over the library. Results go to stdout (tables, or exactly one JSON
 * document with --json); progress and notices go to stderr.
 */
import { basename, join, relative, resolve } from 'node:path';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { GraftModel } from '../artifact/model.js';
import { writeFileAtomic } from '../util/fs.js';
import { scanLabelledFolder, type Skipped } from '../data/dataset.js';
import { GraftError } from '../errors.js';
import { argmaxRows, computeMetrics, crossEntropy, type Metrics } from '../evaluate/metrics.js';
import { formatMetrics } from '../evaluate/report.js';
import { Learner } from '../learner.js';
import type { OptimizerKind, ScheduleKind, TrainResult, TrainState } from '../train/trainer.js';
import { VERSION } from '../version.js';
import { formatBytes, hubOptions, importCommand, models, pull, type HubFlags } from './backbones.js';
import { createProgress } from './progress.js';

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
  process.stderr.write(`skipped ${skipped.length} file${skipped.length === 1 ? '' : 's'}:\n`);
  for (const s of skipped) process.stderr.write(`  ${relative(process.cwd(), s.file) || s.file}: ${s.reason}\n`);
}

interface TrainFlags {
  model?: string;
  offline?: boolean;
  cut?: string;
  out: string;
  head: 'mlp' | 'linear';
  epochs?: number;
  lr?: number;
  batchSize?: number;
  weightDecay?: number;
  patience?: number;
  valSplit?: number;
  seed: number;
  cacheDir?: string;
  cache: boolean;
  json: boolean;
  fineTuneAt?: string;
  unfreeze?: number;
  freezeEpochs?: number;
  lrMult?: number;
  batchNorm?: 'frozen-stats' | 'train';
  optimizer?: OptimizerKind;
  schedule?: ScheduleKind;
  warmup?: number;
  clipNorm?: number;
  momentum?: number;
}

async function train(data: string, flags: TrainFlags): Promise<void> {
  const progress = createProgress();
  const started = performance.now();
  const learn = await Learner.create({
    data,
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
    ...(flags.cut ? { cut: flags.cut } : {}),
    ...(flags.valSplit !== undefined ? { valSplit: flags.valSplit } : {}),
    ...(flags.cache ? (flags.cacheDir ? { cacheDir: flags.cacheDir } : {}) : { cacheDir: false as const }),
    onProgress: (() => {
      let begun = false;
      return (p) => {
        if (!begun) {
          progress.start('features', p.total);
          begun = true;
        }
        progress.update(p.done, `cached ${p.cached} skipped ${p.skipped}`);
        if (p.done === p.total) progress.stop();
      };
    })(),
  });
  progress.stop();
  const { backbone, data: d } = learn;
  progress.log(
    `backbone ${backbone.source.name ?? basename(backbone.source.file)} cut at "${backbone.config.cut}" (${backbone.cutReason}), ${backbone.config.featureDim} features; ` +
      `${d.trainRows.length} train / ${d.valRows.length} val images, ${learn.classes.length} classes; ` +
      `features: ${d.extraction.cached} cached, ${d.extraction.extracted} extracted in ${d.extraction.seconds.toFixed(1)} s`,
  );
  const fit = {
    ...(flags.epochs !== undefined ? { epochs: flags.epochs } : {}),
    ...(flags.lr !== undefined ? { lr: flags.lr } : {}),
    ...(flags.batchSize !== undefined ? { batchSize: flags.batchSize } : {}),
    ...(flags.weightDecay !== undefined ? { weightDecay: flags.weightDecay } : {}),
    ...(flags.patience !== undefined ? { patience: flags.patience } : {}),
    ...(flags.optimizer !== undefined ? { optimizer: flags.optimizer } : {}),
    ...(flags.schedule !== undefined ? { schedule: flags.schedule } : {}),
    ...(flags.warmup !== undefined ? { warmup: flags.warmup } : {}),
    ...(flags.clipNorm !== undefined ? { clipNorm: flags.clipNorm } : {}),
    ...(flags.momentum !== undefined ? { momentum: flags.momentum } : {}),
  };
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
    },
    afterFit: () => progress.stop(),
  };
  let result: TrainResult;
  if (flags.fineTuneAt !== undefined || flags.unfreeze !== undefined) {
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
        fit,
      },
      [show, { afterFit: () => (phase = 'fine-tune') }],
    );
    result = tuned.phase2;
    progress.log(`fine-tuned ${tuned.trainableNodes} backbone nodes (${tuned.trainableTensors} weight tensors) after "${tuned.boundary}" with the head`);
  } else {
    result = await learn.fit(fit, [show]);
  }
  progress.log(
    `trained ${result.history.length}/${epochsPlanned} epochs${result.stoppedEarly ? ' (early stop)' : ''}; best epoch ${result.bestEpoch + 1} restored`,
  );
  const metrics = await learn.evaluate();
  const out = resolve(flags.out);
  await learn.export(out, metrics);
  await writeFileAtomic(join(out, 'metrics.json'), JSON.stringify({ split: 'val', metrics, skipped: d.skipped }, null, 2) + '\n');
  const seconds = (performance.now() - started) / 1000;
  if (flags.json) {
    emitJson({
      metrics,
      skipped: d.skipped,
      out,
      labels: learn.classes,
      features: d.extraction,
      epochs: result.history.length,
      bestEpoch: result.bestEpoch + 1,
      seconds,
    });
  } else {
    printSkipped(d.skipped);
    process.stdout.write(`Validation (${d.valRows.length} images)\n${formatMetrics(metrics)}\n\nModel written to ${out} (${seconds.toFixed(1)} s)\n`);
  }
}

async function evaluate(modelDir: string, data: string, flags: { json: boolean }): Promise<void> {
  const model = await GraftModel.load(modelDir);
  try {
    const { samples, skipped: scanSkipped, source } = await scanLabelledFolder(data, model.labels);
    const progress = createProgress();
    progress.log(`evaluating ${samples.length} images from ${source}`);
    const { probabilities, valid, skipped } = await model.probabilities(samples.map((s) => s.file));
    const rows = samples.map((_, i) => i).filter((i) => valid[i]);
    const c = model.labels.length;
    const probs = new Float32Array(rows.length * c);
    rows.forEach((r, k) => probs.set(probabilities.subarray(r * c, (r + 1) * c), k * c));
    const truth = Int32Array.from(rows, (r) => samples[r]!.label);
    const metrics: Metrics = computeMetrics(model.labels, truth, argmaxRows(probs, c), { loss: crossEntropy(probs, c, truth) });
    const allSkipped = [...scanSkipped, ...skipped].sort((a, b) => a.file.localeCompare(b.file));
    const out = join(model.dir, 'eval.json');
    await writeFileAtomic(out, JSON.stringify({ data: resolve(source), metrics, skipped: allSkipped }, null, 2) + '\n');
    if (flags.json) emitJson({ metrics, skipped: allSkipped, out });
    else {
      printSkipped(allSkipped);
      process.stdout.write(`${source} (${rows.length} images)\n${formatMetrics(metrics)}\n`);
    }
  } finally {
    await model.close();
  }
}

async function predict(modelDir: string, images: string[], flags: { topK: number; json: boolean }): Promise<void> {
  const model = await GraftModel.load(modelDir);
  try {
    const files = images.map((f) => resolve(f));
    const { predictions, skipped } = await model.predict(files, Math.min(flags.topK, model.labels.length));
    const byFile = new Map(predictions.map((p) => [p.file, p]));
    const errors = new Map(skipped.map((s) => [s.file, s.reason]));
    const entries = files.map((file) => (byFile.has(file) ? { file, predictions: byFile.get(file)!.top } : { file, error: errors.get(file) ?? 'not predicted' }));
    if (flags.json) emitJson(entries);
    else {
      for (const e of entries) {
        if ('error' in e) process.stdout.write(`${e.file}\n  error: ${e.error}\n`);
        else process.stdout.write(`${e.file}\n${e.predictions.map((p) => `  ${(p.probability * 100).toFixed(1).padStart(5)}%  ${p.label}`).join('\n')}\n`);
      }
    }
    if (skipped.length) process.exitCode = 1;
  } finally {
    await model.close();
  }
}

export function program(): Command {
  const cmd = new Command('graft')
    .description('Transfer learning for TypeScript: train a classifier on your images from a pretrained ONNX model')
    .version(VERSION)
    .showHelpAfterError();
  cmd
    .command('train')
    .description('extract features with a pretrained backbone and train a new head on them')
    .argument('<data>', 'dataset folder: DATA/train/<class>/* + DATA/val/<class>/*, or DATA/<class>/*')
    .option('--model <path|name>', 'backbone: an ONNX image model, a zoo name (graft models), or a hub repo (owner/name, hf:owner/name/file.onnx); default mobilenetv2 from the hub when cached or reachable, else the bundled offline one')
    .option('--offline', 'never touch the network (also HF_HUB_OFFLINE=1)')
    .option('--cut <tensor>', 'tensor to cut the model at (default: the input of its last global pooling)')
    .option('--out <dir>', 'output directory for model.onnx and graft.json', 'graft-model')
    .addOption(new Option('--head <kind>', 'new classifier head').choices(['mlp', 'linear']).default('mlp'))
    .option('--epochs <n>', 'maximum training epochs', int('--epochs', 1))
    .option('--lr <x>', 'learning rate', positive('--lr'))
    .option('--batch-size <n>', 'training batch size', int('--batch-size', 1))
    .option('--weight-decay <x>', 'decoupled weight decay', Number)
    .option('--patience <n>', 'early-stopping patience in epochs (0: off)', int('--patience'))
    .addOption(new Option('--batch-norm <policy>', 'BatchNorm in the fine-tuned blocks: keep pretrained statistics, or train them').choices(['frozen-stats', 'train']))
    .addOption(new Option('--optimizer <name>', 'optimizer (default adamw)').choices(['adamw', 'adam', 'sgd']))
    .addOption(new Option('--schedule <name>', 'learning-rate schedule over the epochs (default cosine)').choices(['constant', 'cosine', 'one-cycle', 'step']))
    .option('--warmup <f>', 'fraction of the steps spent warming the learning rate up', fractionOf('--warmup'))
    .option('--clip-norm <x>', "clip the gradients' global L2 norm", positive('--clip-norm'))
    .option('--momentum <x>', 'SGD momentum (default 0.9)', fractionOf('--momentum'))
    .option('--val-split <f>', 'validation fraction when DATA has no val folder', fraction, undefined)
    .option('--seed <s>', 'random seed (split, initialisation, shuffling, dropout)', int('--seed'), 0)
    .option('--cache-dir <dir>', 'feature cache directory (default $GRAFT_CACHE or ~/.cache/graft)')
    .option('--no-cache', 'do not read or write the feature cache')
    .option('--fine-tune-at <n|tensor>', 'fine-tune the backbone from this node index or tensor on (after training the head)')
    .option('--unfreeze <k>', 'fine-tune the last K blocks of the backbone (after training the head)', int('--unfreeze', 1))
    .option('--freeze-epochs <e>', 'head-only epochs before unfreezing (fine-tuning; default 3)', int('--freeze-epochs'))
    .option('--lr-mult <m>', 'the backbone trains at lr / m (fine-tuning; default 10)', positive('--lr-mult'))
    .option('--json', 'print one JSON document on stdout', false)
    .action((data: string, flags: TrainFlags) => train(data, flags));
  cmd
    .command('eval')
    .description('evaluate an exported model on a labelled image folder')
    .argument('<model-dir>', 'directory written by graft train')
    .argument('<data>', 'DATA/test, DATA/val or DATA itself, with one folder per class')
    .option('--json', 'print one JSON document on stdout', false)
    .action((modelDir: string, data: string, flags: { json: boolean }) => evaluate(modelDir, data, flags));
  cmd
    .command('predict')
    .description('classify images with an exported model')
    .argument('<model-dir>', 'directory written by graft train')
    .argument('<images...>', 'image files')
    .option('--top-k <k>', 'number of ranked classes per image', int('--top-k', 1), 5)
    .option('--json', 'print one JSON document on stdout', false)
    .action((modelDir: string, images: string[], flags: { topK: number; json: boolean }) => predict(modelDir, images, flags));
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
  return cmd;
}

export async function main(argv: string[]): Promise<void> {
  const json = argv.includes('--json');
  const cmd = program();
  // Commander's own parse errors become USAGE errors (exit 2, and a JSON document with --json).
  const quietUsage = (c: Command) => {
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
