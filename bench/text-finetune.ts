/**
 * Text fine-tuning step time: forward + backward + AdamW of the last 2 encoder layers of a MiniLM-L6-shaped BERT
 * (hidden 384, 12 heads, 6 layers, feed-forward 1536; random weights from graft's own builder,
 * test/support/bert.ts) + graft's default text head (MLP 512, dropout 0.5, 2 classes), batch 32 × 128 tokens, on
 * cached boundary activations (the output of layer 3, as graft's fine-tuning caches the frozen prefix's), graft
 * (ONNX Runtime + in-place AdamW) against PyTorch CPU measured in the same run (bench/text_finetune_torch.py with
 * Debian's python3-torch, tcmalloc, the same thread count), both from the SAME weights.
 *
 *   flock /tmp/graft-cpu.lock node dist/bench/text-finetune.js [--threads T] [--rounds 2] [--steps 25]
 *        [--variants dropout,nodropout] [--spin] [--profile]
 *
 * Variants: `dropout` is what graft trains by default (encoder dropout 0.1 on the attention probabilities and on
 * both residual branches of each layer, head dropout 0.5), against torch in train() mode with nn.Dropout at the
 * same places; `nodropout` is `encoderDropout: 0` (head dropout only) against torch without encoder dropout.
 *
 * Weights: graft's training-graph parameters (layers 4-5, head) are written before any step to a temp folder
 * (raw float32 in the graph's layout, one file each, and index.json naming each by its Hugging Face name) with
 * the boundary activations, the all-ones attention mask (128 real tokens in every row: both sides do the same
 * work), labels and one head dropout mask; the torch script loads them (transposing MatMul [in, out] weights to
 * Linear's [out, in]) and, before timing, checks that its loss and every gradient at those weights agree with
 * graft's first `nodropout` step (same head mask, no encoder dropout); the check is part of the output.
 *
 * Each round measures graft (each variant: `--steps` steps, the first 5 not counted) then PyTorch (both
 * variants); the ratio is the median over rounds of the two median step times, `minRatio` that of the best steps.
 * The session is created as graft's trainer creates it (intra-op threads = T, no spinning; --spin turns ONNX
 * Runtime's spin-waiting back on). A graft step includes feeding the weights, drawing the head's dropout mask
 * (as the trainer does) and the AdamW update.
 *
 * --profile adds one profiled graft run per variant after the rounds (not counted): where graft's time goes, from
 * ONNX Runtime's profiler, summed by op type (forward and backward together), the costliest nodes on stderr.
 *
 * One JSON document on stdout; progress on stderr. ~3.5 minutes with the defaults on 2 cores (~4 with --profile).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { loadTextBackbone, type TextBackbone } from '../src/backbone/backbone.js';
import { encodeModel } from '../src/onnx/proto.js';
import { DEFAULT_HEAD, gradName, initParams, TRAIN_LOSS, type HeadSpec, type Param } from '../src/head/head.js';
import { DEFAULT_FINE_TUNE } from '../src/learner.js';
import { planSuffix, probeShape, suffixTrainable } from '../src/train/finetune.js';
import { AdamW } from '../src/train/optimizer.js';
import { DEFAULT_FIT } from '../src/train/trainer.js';
import { Random } from '../src/util/random.js';
import { bertInitializerNames, buildBert, type BertOptions } from '../test/support/bert.js';
import { kernelTimes } from './profile.js';
import { args, option } from './cli.js';

const threads = Number(option('--threads', String(availableParallelism())));
const rounds = Number(option('--rounds', '2'));
const steps = Number(option('--steps', '25'));
const WARMUP = 5;
const variants = option('--variants', 'dropout,nodropout').split(',') as Variant[];
const profile = args.includes('--profile');
const spin = args.includes('--spin');
const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const TOKENIZER_DIR = resolve(root, '../shared/models/minilm-l6-tokenizer');
const B = 32;
const L = 128;
const H = 384;
const CLASSES = 2;
const BERT: BertOptions = { vocabSize: 30522, hidden: H, layers: 6, heads: 12, intermediate: 1536, maxPosition: 512, seed: 0 };
const UNFREEZE = 2;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const log = (s: string) => process.stderr.write(`${s}\n`);

type Variant = 'dropout' | 'nodropout';
const ENCODER_DROPOUT: Record<Variant, number> = { dropout: 0.1, nodropout: 0 };
for (const v of variants) if (!(v in ENCODER_DROPOUT)) throw new Error(`unknown variant ${v}: dropout or nodropout`);

// A MiniLM-L6-shaped BERT with random weights, in the hub layout, loaded and cut as graft loads text backbones.
const tmp = mkdtempSync(join(tmpdir(), 'graft-text-finetune-'));
process.on('exit', () => rmSync(tmp, { recursive: true, force: true }));
mkdirSync(join(tmp, 'bert/onnx'), { recursive: true });
const modelFile = join(tmp, 'bert/onnx/model.onnx');
log('building the random BERT');
writeFileSync(modelFile, encodeModel(buildBert(BERT)));
for (const f of ['tokenizer.json', 'tokenizer_config.json']) symlinkSync(join(TOKENIZER_DIR, f), join(tmp, 'bert', f));
const backbone: TextBackbone = await loadTextBackbone(modelFile, { tokenizer: join(tmp, 'bert/tokenizer.json') });
// Graph initializer name → Hugging Face parameter name (MatMul weights are anonymous `onnx::MatMul_<k>`).
const hfName = new Map(Object.entries(bertInitializerNames(BERT)).map(([hf, init]) => [init, hf]));

const spec: HeadSpec = { ...DEFAULT_HEAD, inputDim: H, numClasses: CLASSES };
const std = { mean: new Float32Array(H), invStd: new Float32Array(H).fill(1) };
const { lr, lrMult } = DEFAULT_FINE_TUNE;
const weightDecay = DEFAULT_FIT.weightDecay;

// The rows: boundary activations (LayerNorm outputs: ~N(0, 1)), 128 real tokens each, labels, a head mask.
const rng = new Random(0);
const boundaryData = Float32Array.from({ length: B * L * H }, () => rng.normal());
const attentionMask = new BigInt64Array(B * L).fill(1n);
const labels = BigInt64Array.from({ length: B }, (_, i) => BigInt(i % CLASSES));
const keep = 1 - spec.dropout;
const headMask = Float32Array.from({ length: B * spec.hidden }, () => (rng.next() < keep ? 1 / keep : 0));

interface GraftTiming { median: number; min: number; run: number; update: number; loss: number; profile?: Record<string, number> }

/** Graft's first step's loss and gradients, and the weights before it (for the torch check). */
interface FirstStep { loss: number; params: Param[]; grads: Map<string, Float32Array> }

let boundaryName = '';
let boundaryLayer = '';
let feedNames: string[] = [];
let trainableTensors = 0;

async function measureGraft(variant: Variant, opts: { steps: number; profileTag?: string; capture?: (s: FirstStep) => void }): Promise<GraftTiming> {
  const plan = planSuffix(backbone.featureModel, 'features', { unfreeze: UNFREEZE, encoderDropout: ENCODER_DROPOUT[variant] });
  const rowShape = await probeShape(backbone.featureModel, plan.boundary, backbone.pipeline);
  const trainable = suffixTrainable(plan, rowShape, spec, std, initParams(spec, 0), { lr, lrMult, weightDecay, batchSize: B, seed: 0 });
  boundaryName = plan.boundary;
  boundaryLayer = plan.nodes.find((n) => n.input?.includes(plan.boundary))?.name ?? '?';
  feedNames = (trainable.trainModel.graph!.input ?? []).map((i) => i.name!);
  trainableTensors = plan.trainable.length;
  const session = await ort.InferenceSession.create(encodeModel(trainable.trainModel), {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    ...(spin ? {} : { extra: { session: { intra_op: { allow_spinning: '0' } } } }),
    ...(opts.profileTag ? { enableProfiling: true, profileFilePrefix: join(tmp, opts.profileTag) } : {}),
  });
  const opt = new AdamW(trainable.groups, { lr, weightDecay });
  const mask = trainable.mask ? new Float32Array(B * trainable.mask.width) : undefined;
  const feeds: Record<string, ort.Tensor> = {
    [plan.boundary]: new ort.Tensor('float32', boundaryData, [B, L, H]),
    labels: new ort.Tensor('int64', labels, [B]),
  };
  for (const s of plan.sideInputs) feeds[s.name] = new ort.Tensor('int64', attentionMask, [B, L]);
  const maskRng = new Random(1);
  const total: number[] = [];
  const runs: number[] = [];
  const updates: number[] = [];
  let firstLoss = NaN;
  for (let step = 0; step < opts.steps; step++) {
    const t0 = performance.now();
    for (const p of opt.params) feeds[p.name] = new ort.Tensor('float32', p.data, p.dims);
    if (mask && trainable.mask) {
      // The first step uses the shared head mask (the torch check); later ones draw as the trainer does.
      if (step === 0) mask.set(headMask);
      else for (let i = 0; i < mask.length; i++) mask[i] = maskRng.next() < keep ? 1 / keep : 0;
      feeds[trainable.mask.name] = new ort.Tensor('float32', mask, [B, trainable.mask.width]);
    }
    const before = step === 0 && opts.capture ? opt.params.map((p) => ({ ...p, data: p.data.slice() })) : undefined;
    const out = await session.run(feeds);
    const t1 = performance.now();
    const grads = opt.params.map((p) => out[gradName(p.name)]!.data as Float32Array);
    if (step === 0) {
      firstLoss = (out[TRAIN_LOSS]!.data as Float32Array)[0]!;
      opts.capture?.({ loss: firstLoss, params: before!, grads: new Map(opt.params.map((p, i) => [p.name, grads[i]!.slice()])) });
    }
    opt.step(grads);
    const t2 = performance.now();
    if (step >= WARMUP) {
      total.push(t2 - t0);
      runs.push(t1 - t0);
      updates.push(t2 - t1);
    }
  }
  let byOp: Record<string, number> | undefined;
  if (opts.profileTag) {
    session.endProfiling();
    const file = readdirSync(tmp).filter((f) => f.startsWith(opts.profileTag!) && f.endsWith('.json')).sort().pop();
    if (file) byOp = summarizeProfile(join(tmp, file), variant);
  }
  await session.release();
  return { median: median(total), min: Math.min(...total), run: median(runs), update: median(updates), loss: firstLoss, ...(byOp ? { profile: byOp } : {}) };
}

/** Percent of kernel time by op type (forward and backward ops together); the costliest nodes to stderr. */
function summarizeProfile(file: string, variant: Variant): Record<string, number> {
  if (process.env.KEEP_PROFILE) {
    const kept = join(tmpdir(), `graft-text-finetune-profile-${variant}.json`);
    writeFileSync(kept, readFileSync(file));
    log(`profile kept in ${kept}`);
  }
  const { medians, sum, byOp } = kernelTimes(file);
  log(`[${variant}] kernel time ${(sum / 1000).toFixed(1)} ms a step (sum of per-node medians), ${medians.length} nodes; costliest:`);
  for (const m of [...medians].sort((a, b) => b.t - a.t).slice(0, 20)) log(`${((100 * m.t) / sum).toFixed(1).padStart(5)}%  ${(m.t / 1000).toFixed(1).padStart(7)} ms  ${m.node}`);
  log(`[${variant}] by op type:`);
  for (const [op, t] of byOp.slice(0, 16)) log(`${((100 * t) / sum).toFixed(1).padStart(5)}%  ${(t / 1000).toFixed(1).padStart(7)} ms  ${op}`);
  return Object.fromEntries(byOp.slice(0, 14).map(([op, t]) => [op, +((100 * t) / sum).toFixed(1)]));
}

/** Writes the weights, rows and graft's first-step loss and gradients for the torch script. */
function writeShared(dir: string, first: FirstStep): void {
  mkdirSync(dir, { recursive: true });
  const raw = (name: string, data: Float32Array | BigInt64Array) => {
    writeFileSync(join(dir, name), new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    return name;
  };
  const headNames = new Set(initParams(spec, 0).map((p) => p.name));
  const params = first.params.map((p, i) => {
    const name = headNames.has(p.name) ? `head.${p.name}` : hfName.get(p.name);
    if (!name) throw new Error(`no Hugging Face name for graph parameter ${p.name}`);
    // MatMul / Gemm weights are [in, out]; everything else keeps its torch shape.
    const linear = p.dims.length === 2;
    return { name, graph: p.name, shape: p.dims, linear, file: raw(`p${i}.bin`, p.data), grad: raw(`g${i}.bin`, first.grads.get(p.name)!) };
  });
  const index = {
    config: { hidden: H, heads: BERT.heads, intermediate: BERT.intermediate, eps: 1e-12, layers: UNFREEZE, firstLayer: 6 - UNFREEZE, headHidden: spec.hidden, classes: CLASSES, headDropout: spec.dropout },
    optimizer: { lr, lrMult, weightDecay },
    batch: B,
    length: L,
    boundary: raw('boundary.bin', boundaryData),
    attentionMask: raw('attention_mask.bin', attentionMask),
    labels: raw('labels.bin', labels),
    headMask: raw('head_mask.bin', headMask),
    loss: first.loss,
    params,
  };
  writeFileSync(join(dir, 'index.json'), JSON.stringify(index, null, 1));
}

interface TorchCheck { loss: number; graftLoss: number; lossRelDiff: number; maxGradRelDiff: number; worstGrad: string; params: number; skipped: string[] }
interface TorchResult { torch: string; threads: number; check?: TorchCheck; ms: Record<string, { median: number; min: number }> }
const tcmalloc = ['/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4', '/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4'].find((f) => existsSync(f));

function measureTorch(dir: string, check: boolean): TorchResult | undefined {
  try {
    const out = execFileSync('/usr/bin/python3', [resolve(root, 'bench/text_finetune_torch.py'), dir, String(threads), String(steps), variants.join(','), check ? 'check' : 'nocheck'], {
      env: { ...process.env, OMP_NUM_THREADS: String(threads), OPENBLAS_NUM_THREADS: String(threads), ...(tcmalloc ? { LD_PRELOAD: tcmalloc } : {}) },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
      maxBuffer: 1 << 24,
    });
    return JSON.parse(out.trim().split('\n').pop()!) as TorchResult;
  } catch (e) {
    log(`PyTorch reference not run (${(e as Error).message.split('\n')[0]}); apt-get install python3-torch python3-numpy libtcmalloc-minimal4`);
    return undefined;
  }
}

// Rounds alternate graft and PyTorch, so that the machine's slow spells fall on both.
const shared = join(tmp, 'shared');
const graftRounds: Record<string, GraftTiming[]> = Object.fromEntries(variants.map((v) => [v, []]));
const torchRounds: TorchResult[] = [];
let check: TorchCheck | undefined;
for (let round = 0; round < rounds; round++) {
  for (const v of variants) {
    log(`round ${round + 1}/${rounds}: graft ${v}`);
    // The torch check compares against graft's first step without encoder dropout (deterministic but for the
    // head mask, which both sides share).
    const capture = round === 0 && (v === 'nodropout' || !variants.includes('nodropout'))
      ? (s: FirstStep) => writeShared(shared, s)
      : undefined;
    graftRounds[v]!.push(await measureGraft(v, { steps, ...(capture ? { capture } : {}) }));
    log(`  median ${graftRounds[v]!.at(-1)!.median.toFixed(0)} ms`);
  }
  log(`round ${round + 1}/${rounds}: torch`);
  const t = measureTorch(shared, round === 0 && variants.includes('nodropout'));
  if (!t) break;
  if (t.check) check = t.check;
  torchRounds.push(t);
  log(`  ${variants.map((v) => `${v} median ${t.ms[v]!.median.toFixed(0)} ms`).join(', ')}`);
}
const profiles: Record<string, Record<string, number>> = {};
if (profile) {
  for (const v of variants) {
    log(`profiling graft ${v}`);
    profiles[v] = (await measureGraft(v, { steps: Math.min(steps, 12), profileTag: `profile-${v}` })).profile ?? {};
  }
}

const rows = variants.map((v) => {
  const g = graftRounds[v]!;
  const t = torchRounds.map((r) => r.ms[v]!);
  const ratios = t.map((x, i) => g[i]!.median / x.median);
  return {
    variant: v,
    encoderDropout: ENCODER_DROPOUT[v],
    headDropout: spec.dropout,
    graftMs: +median(g.map((x) => x.median)).toFixed(1),
    graftMinMs: +Math.min(...g.map((x) => x.min)).toFixed(1),
    graftRunMs: +median(g.map((x) => x.run)).toFixed(1),
    graftUpdateMs: +median(g.map((x) => x.update)).toFixed(1),
    torchMs: t.length ? +median(t.map((x) => x.median)).toFixed(1) : null,
    torchMinMs: t.length ? +Math.min(...t.map((x) => x.min)).toFixed(1) : null,
    /** Median over rounds of graft / PyTorch (each a median step time of that round). */
    ratio: ratios.length ? +median(ratios).toFixed(2) : null,
    ratios: ratios.map((r) => +r.toFixed(2)),
    /** Best step of all rounds, each side: the least disturbed measurement. */
    minRatio: t.length ? +(Math.min(...g.map((x) => x.min)) / Math.min(...t.map((x) => x.min))).toFixed(2) : null,
    ...(profiles[v] ? { profile: profiles[v] } : {}),
  };
});

const require = createRequire(import.meta.url);
let cpuModel = cpus()[0]?.model ?? '?';
try {
  cpuModel = execFileSync('lscpu', { encoding: 'utf8' }).match(/Model name:\s*(.+)/)?.[1]?.trim() ?? cpuModel;
} catch {
  // lscpu missing: os.cpus()' name.
}
console.log(JSON.stringify({
  machine: {
    cpu: cpuModel,
    cores: availableParallelism(),
    threads,
    spin,
    node: process.version,
    onnxruntimeNode: (require('onnxruntime-node/package.json') as { version: string }).version,
    torch: torchRounds[0]?.torch ?? null,
    tcmalloc: tcmalloc ?? null,
  },
  model: { ...BERT, unfreeze: UNFREEZE, boundary: boundaryName, firstTrainedNode: boundaryLayer, trainableTensors, headTensors: initParams(spec, 0).length },
  batch: B,
  tokens: L,
  steps,
  warmup: WARMUP,
  rounds,
  head: spec,
  optimizer: { kind: 'AdamW', lr, lrMult, weightDecay },
  feeds: feedNames.filter((n) => !/^onnx::|encoder\.|^fc\d/.test(n)),
  check: check ?? null,
  rows,
}, null, 2));
