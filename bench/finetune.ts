/**
 * Fine-tuning step time: forward + backward + AdamW of the last K inverted-residual blocks of MobileNetV2 +
 * the default head, batch 32, on cached block inputs; graft (ONNX Runtime + in-place AdamW) against PyTorch
 * CPU measured in the same run (bench/finetune_torch.py with Debian's python3-torch, tcmalloc, OpenBLAS,
 * channels_last, the same thread count).
 *
 *   node dist/bench/finetune.js [--threads T] [--blocks 2,4,7] [--rounds 3] [--profile] [--plain]
 *
 * Each round measures graft (25 steps, the first 5 not counted) then PyTorch; the ratio reported is the median
 * over rounds of the two median step times, `minRatio` that of the best steps.
 *
 * --profile adds where graft's time goes, from ONNX Runtime's profiler, summed by op type. --plain: standard
 * ONNX ops only (no NCHWc kernels).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { loadBackbone } from '../src/backbone/backbone.js';
import { dequantizeModel } from '../src/onnx/dequantize.js';
import { encodeModel } from '../src/onnx/proto.js';
import { gradName, initParams, type HeadSpec } from '../src/head/head.js';
import { planSuffix, probeShape, suffixTrainable } from '../src/train/finetune.js';
import { AdamW } from '../src/train/optimizer.js';
import { nchwcBlockSize } from '../src/train/runtime.js';
import { Random } from '../src/util/random.js';
import { kernelTimes } from './profile.js';
import { args, option } from './cli.js';

const threads = Number(option('--threads', String(availableParallelism())));
const blocks = option('--blocks', '2,4,7').split(',').map(Number);
const profile = args.includes('--profile');
const rounds = Number(option('--rounds', '3'));
const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const MODEL = resolve(root, '../shared/models/mobilenetv2-12-int8/model.onnx');
const B = 32;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

// What graft's trainer uses: a fixed batch size, and ONNX Runtime's NCHWc kernels where this CPU has them.
const nchwcBlock = args.includes('--plain') ? 0 : await nchwcBlockSize();
const backbone = await loadBackbone(MODEL);
const float = dequantizeModel(backbone.featureModel).model;
const spec: HeadSpec = { kind: 'mlp', hidden: 512, dropout: 0.5, inputDim: 1280, numClasses: 5 };
const std = { mean: new Float32Array(1280), invStd: new Float32Array(1280).fill(1) };
const rng = new Random(0);

interface GraftTiming { median: number; min: number; input: number[]; run: number; update: number; profile?: Record<string, number> }

async function measureGraft(k: number, withProfile: boolean): Promise<GraftTiming> {
  const plan = planSuffix(float, 'features', { unfreeze: k });
  const rowShape = await probeShape(float, plan.boundary, backbone.pipeline);
  const trainable = suffixTrainable(plan, rowShape, spec, std, initParams(spec, 0), { lr: 1e-4, lrMult: 10, weightDecay: 0.01, batchSize: B, nchwcBlock });
  const session = await ort.InferenceSession.create(encodeModel(trainable.trainModel), {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    ...(withProfile ? { enableProfiling: true, profileFilePrefix: `/tmp/graft-finetune-${k}` } : {}),
  });
  const opt = new AdamW(trainable.groups, { lr: 1e-4, weightDecay: 0.01 });
  const size = rowShape.reduce((a, b) => a * b, 1);
  const feeds: Record<string, ort.Tensor> = {
    [plan.boundary]: new ort.Tensor('float32', Float32Array.from({ length: B * size }, () => Math.max(0, rng.normal())), [B, ...rowShape]),
    labels: new ort.Tensor('int64', BigInt64Array.from({ length: B }, () => BigInt(rng.int(5))), [B]),
    dropout_mask: new ort.Tensor('float32', Float32Array.from({ length: B * 512 }, () => (rng.next() < 0.5 ? 2 : 0)), [B, 512]),
  };
  const total: number[] = [];
  const runs: number[] = [];
  const updates: number[] = [];
  for (let step = 0; step < 25; step++) {
    const t0 = performance.now();
    for (const p of opt.params) feeds[p.name] = new ort.Tensor('float32', p.data, p.dims);
    const out = await session.run(feeds);
    const t1 = performance.now();
    opt.step(opt.params.map((p) => out[gradName(p.name)]!.data as Float32Array));
    const t2 = performance.now();
    if (step >= 5) {
      total.push(t2 - t0);
      runs.push(t1 - t0);
      updates.push(t2 - t1);
    }
  }
  let byOp: Record<string, number> | undefined;
  if (withProfile) {
    session.endProfiling();
    // The profiler names its file from the prefix and a timestamp; take the newest.
    const prefix = `graft-finetune-${k}`;
    const file = readdirSync('/tmp').filter((f) => f.startsWith(prefix) && f.endsWith('.json')).sort().pop();
    if (file) byOp = summarizeProfile(join('/tmp', file));
  }
  await session.release();
  return { median: median(total), min: Math.min(...total), input: rowShape, run: median(runs), update: median(updates), ...(byOp ? { profile: byOp } : {}) };
}

/** Percent of kernel time by op type (forward and backward ops together). */
function summarizeProfile(file: string): Record<string, number> {
  const { medians, sum, byOp } = kernelTimes(file);
  if (!process.env.KEEP_PROFILE) rmSync(file, { force: true }); else console.error(file);
  // The costliest nodes, to stderr: where a faster gradient formulation would pay.
  console.error(`kernel time ${(sum / 1000).toFixed(1)} ms a step (sum of per-node medians)`);
  for (const m of [...medians].sort((a, b) => b.t - a.t).slice(0, 15)) console.error(`${((100 * m.t) / sum).toFixed(1).padStart(5)}%  ${m.node}`);
  return Object.fromEntries(byOp.slice(0, 12).map(([op, t]) => [op, +((100 * t) / sum).toFixed(1)]));
}

interface TorchResult { torch: string; ms: Record<string, { median: number; min: number; input: number[] }> }
const tcmalloc = '/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4';
function measureTorch(): TorchResult | undefined {
  try {
    const out = execFileSync('/usr/bin/python3', [resolve(root, 'bench/finetune_torch.py'), String(threads), ...blocks.map(String)], {
      env: { ...process.env, OPENBLAS_NUM_THREADS: String(threads), ...(existsSync(tcmalloc) ? { LD_PRELOAD: tcmalloc } : {}) },
      encoding: 'utf8',
    });
    return JSON.parse(out.trim().split('\n').pop()!) as TorchResult;
  } catch (e) {
    console.error(`PyTorch reference not run (${(e as Error).message.split('\n')[0]}); apt-get install python3-torch python3-torchvision libopenblas0-pthread libtcmalloc-minimal4`);
    return undefined;
  }
}

// Rounds alternate graft and PyTorch, so that the machine's slow spells (this VM has them) fall on both.
const graftRounds: Record<number, GraftTiming[]> = Object.fromEntries(blocks.map((k) => [k, []]));
const torchRounds: TorchResult[] = [];
for (let round = 0; round < rounds; round++) {
  for (const k of blocks) graftRounds[k]!.push(await measureGraft(k, profile && round === 0));
  const t = measureTorch();
  if (!t) break;
  torchRounds.push(t);
}

const rows = blocks.map((k) => {
  const g = graftRounds[k]!;
  const t = torchRounds.map((r) => r.ms[String(k)]!);
  const ratios = t.map((x, i) => g[i]!.median / x.median);
  return {
    blocks: k,
    input: g[0]!.input.join('x'),
    graftMs: +median(g.map((x) => x.median)).toFixed(1),
    graftRunMs: +median(g.map((x) => x.run)).toFixed(1),
    graftUpdateMs: +median(g.map((x) => x.update)).toFixed(1),
    torchMs: t.length ? +median(t.map((x) => x.median)).toFixed(1) : null,
    /** Median over rounds of graft / PyTorch (each a median step time of that round). */
    ratio: ratios.length ? +median(ratios).toFixed(2) : null,
    ratios: ratios.map((r) => +r.toFixed(2)),
    /** Best step of all rounds, each side: the least disturbed measurement. */
    minRatio: t.length ? +(Math.min(...g.map((x) => x.min)) / Math.min(...t.map((x) => x.min))).toFixed(2) : null,
    ...(g[0]!.profile ? { profile: g[0]!.profile } : {}),
  };
});
console.log(JSON.stringify({ threads, batch: B, rounds, nchwcBlock, torch: torchRounds[0]?.torch ?? null, tcmalloc: existsSync(tcmalloc), rows }, null, 2));
