/**
 * Comparing graft's training steps with a PyTorch fixture (the records that scripts/torch_reference.py and
 * scripts/torch_bert_reference.py write): shared by test/torch-steps.test.ts and test/torch-bert.test.ts.
 *
 * A network record holds the inputs, the initial parameters (torch names and layouts), the loss and gradients
 * at them, and per optimizer the parameters after step 1, the loss and gradients there, and the parameters
 * after step 2. checkNetwork rebuilds the network as an ONNX graph with its parameters as graph inputs
 * (`Build`), appends the backward pass with appendGradients, runs it in onnxruntime-node, steps graft's own
 * optimizers (src/train/optimizer.ts) from the same start and compares everything with the record. Each
 * trajectory is graft's own (gradients from ORT, updates from the optimizers): nothing from torch is fed back
 * after the start.
 *
 * Tolerance, float32 against float32 (different kernels, summation orders and fusions), element-wise:
 * - losses and parameters: |graft − torch| ≤ 1e-4 · max(|torch|, 1e-2) (absolute 1e-6 near zero);
 * - gradients: |graft − torch| ≤ 1e-4 · max(|torch|, 1e-2 · max|torch| over the tensor): small gradient
 *   elements are sums that cancel, so their float32 error is relative to the tensor's scale, not their own;
 * - the update w − w0 (what the optimizer did, where a parameter comparison would drown it in |w|):
 *   |Δgraft − Δtorch| − 2·ulp(w) ≤ 1e-4 · max(|Δtorch|, 1e-2 · max|Δtorch| over the tensor), the 2 ulp
 *   being the float32 rounding of the two parameters.
 * - a parameter flagged `zeroGradient` (a BERT key bias: its gradient is exactly 0 in exact arithmetic, so
 *   both sides' float32 values are rounding noise that no two implementations share): both gradients
 *   ≤ 1e-6 · the largest torch gradient of the network, and no optimizer steps it (torch's put it in no
 *   parameter group), so its value must stay exactly the initial one.
 * - with `propagateGradientTolerance` (opt-in; test/torch-bert.test.ts): each parameter element may also
 *   differ by what the gradient tolerance implies for its update. Adam normalises every gradient element by
 *   its own magnitude, so an element near 0 (1.5e-7 in a tensor whose largest is 0.04) whose float32 value
 *   differs by a few 1e-9, well inside the gradient tolerance, moves by ~1e-5 more or less than torch's. The
 *   allowance of an element is the largest change of its parameter after step k when each of its torch
 *   gradients (steps 1..k) moves by ± its gradient tolerance (or by its actual difference from graft's, if
 *   larger), the optimizer replayed on that one element (propagatedAllowance); it is added to both the
 *   parameter and the update bound. Since graft's step-1 parameters then legitimately differ from torch's, the
 *   step-2 gradients are checked at torch's step-1 parameters (the same point), while graft's own gradients,
 *   at its own parameters, make step 2 (their difference from torch's enters step 2's allowance).
 * Set GRAFT_TORCH_VERBOSE=1 to print the largest error of every check.
 */
import assert from 'node:assert/strict';
import * as ort from 'onnxruntime-node';
import { appendGradients } from '../../src/onnx/autodiff.js';
import { GraphBuilder } from '../../src/onnx/builder.js';
import { DataType, encodeModel } from '../../src/onnx/proto.js';
import { Adam, AdamW, SGD, type Optimizer } from '../../src/train/optimizer.js';
import type { Param } from '../../src/head/head.js';

export interface Entry {
  shape: number[];
  data: number[];
  /** Element type of an input (torch_bert_reference.py records it; torch_reference.py's labels are int64, x float32). */
  dtype?: 'float32' | 'int64';
}
export interface OptimizerRecord {
  kind: 'SGD' | 'Adam' | 'AdamW';
  lr: number;
  weightDecay: number;
  momentum?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  params1: Record<string, number[]>;
  loss2: number;
  grads2: Record<string, number[]>;
  params2: Record<string, number[]>;
}
export interface ParamRecord {
  name: string;
  shape: number[];
  decay: boolean;
  /** Exactly zero gradient (noise in float32): compared as ≈ 0 and not stepped (see the header). */
  zeroGradient?: boolean;
  data: number[];
}
export interface NetworkRecord {
  inputs: Record<string, Entry>;
  constants: Record<string, Entry | number>;
  params: ParamRecord[];
  loss: number;
  grads: Record<string, number[]>;
  optimizers: Record<string, OptimizerRecord>;
}

export const TOL = 1e-4;
const PARAM_FLOOR = 1e-2;
const GRAD_FLOOR = 1e-2; // times the tensor's largest magnitude
const UPDATE_FLOOR = 1e-2; // times the tensor's largest update
const ZERO_GRADIENT = 1e-6; // times the network's largest gradient
const verbose = !!process.env.GRAFT_TORCH_VERBOSE;

/** Largest |got − want| / max(|want|, floor) over the elements. */
export function maxError(got: ArrayLike<number>, want: readonly number[], floor: number): { err: number; at: number } {
  assert.equal(got.length, want.length);
  let err = 0;
  let at = -1;
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i]! - want[i]!) / Math.max(Math.abs(want[i]!), floor);
    if (!(e <= err)) [err, at] = [Number.isNaN(e) ? Infinity : e, i]; // NaN counts as the worst
  }
  return { err, at };
}

/** Worst error per label, kept for the summary. */
export type Report = Map<string, number>;

export function check(report: Report, label: string, got: ArrayLike<number>, want: readonly number[], floor: number, allowance?: Float64Array): void {
  const { err, at } = allowance ? maxErrorBeyond(got, want, floor, allowance) : maxError(got, want, floor);
  report.set(label, Math.max(report.get(label) ?? 0, err));
  assert.ok(err <= TOL, `${label}: max relative error ${err.toExponential(2)} > ${TOL} at element ${at}: graft ${got[at]}, torch ${want[at]}`);
}

/** maxError of what exceeds a per-element allowance: max(0, |got − want| − allowance) / max(|want|, floor). */
function maxErrorBeyond(got: ArrayLike<number>, want: readonly number[], floor: number, allowance: Float64Array): { err: number; at: number } {
  assert.equal(got.length, want.length);
  let err = 0;
  let at = -1;
  for (let i = 0; i < want.length; i++) {
    const e = Math.max(0, Math.abs(got[i]! - want[i]!) - allowance[i]!) / Math.max(Math.abs(want[i]!), floor);
    if (!(e <= err)) [err, at] = [Number.isNaN(e) ? Infinity : e, i];
  }
  return { err, at };
}

/** float32 spacing at v (the distance to the next float32 away from zero). */
export function ulp32(v: number): number {
  const a = Math.abs(v);
  return a < 2 ** -126 ? 2 ** -149 : 2 ** (Math.floor(Math.log2(a)) - 23);
}

/**
 * The parameter update w − w0 against torch's, element-wise: |Δgraft − Δtorch| − 2·ulp(w) ≤ TOL · max(|Δtorch|,
 * 1e-2 · max|Δtorch|). The 2 ulp of w are the float32 rounding of the two parameters themselves.
 */
export function checkUpdate(report: Report, label: string, w0: Float32Array, got: Float32Array, want: readonly number[], allowance?: Float64Array): void {
  const dWant = want.map((v, i) => v - w0[i]!);
  const floor = UPDATE_FLOOR * dWant.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  let err = 0;
  let at = -1;
  for (let i = 0; i < want.length; i++) {
    const e = Math.max(0, Math.abs(got[i]! - want[i]!) - 2 * ulp32(want[i]!) - (allowance?.[i] ?? 0)) / Math.max(Math.abs(dWant[i]!), floor);
    if (!(e <= err)) [err, at] = [Number.isNaN(e) ? Infinity : e, i];
  }
  report.set(label, Math.max(report.get(label) ?? 0, err));
  assert.ok(err <= TOL, `${label}: max error ${err.toExponential(2)} of the update > ${TOL} at element ${at}: graft ${got[at]! - w0[at]!}, torch ${dWant[at]}`);
}

export function gradFloor(want: readonly number[]): number {
  return GRAD_FLOOR * want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
}

export const f32 = (v: readonly number[]) => Float32Array.from(v);

/** A forward graph with the parameters (named as torch names them) as inputs; returns the loss name. */
export type Build = (b: GraphBuilder, net: NetworkRecord) => string;

/** Whether a recorded input is int64 (labels, masks) or float32. */
const isInt64 = (name: string, e: Entry) => (e.dtype ? e.dtype === 'int64' : name === 'labels');

/** Forward + backward session: params → loss and gradients (by parameter name). */
export async function gradientSession(net: NetworkRecord, build: Build) {
  const b = new GraphBuilder('torch_steps');
  for (const p of net.params) b.input(p.name, DataType.FLOAT, p.shape);
  const loss = build(b, net);
  const grads = appendGradients(b, { loss, wrt: net.params.map((p) => p.name) });
  b.output(loss, DataType.FLOAT, []);
  for (const p of net.params) b.output(grads.get(p.name)!, DataType.FLOAT, p.shape);
  const session = await ort.InferenceSession.create(encodeModel(b.model(17)), { intraOpNumThreads: 1 });
  const fixed = Object.fromEntries(Object.entries(net.inputs).map(([name, e]) => [
    name,
    isInt64(name, e) ? new ort.Tensor('int64', BigInt64Array.from(e.data, (v) => BigInt(v)), e.shape) : new ort.Tensor('float32', f32(e.data), e.shape),
  ]));
  return {
    session,
    async run(params: readonly Param[]): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
      const feeds: Record<string, ort.Tensor> = { ...fixed };
      for (const p of params) feeds[p.name] = new ort.Tensor('float32', Float32Array.from(p.data), p.dims);
      const out = await session.run(feeds);
      return {
        loss: (out[loss]!.data as Float32Array)[0]!,
        grads: new Map(net.params.map((p) => [p.name, Float32Array.from(out[grads.get(p.name)!]!.data as Float32Array)])),
      };
    },
  };
}

export function makeOptimizer(rec: OptimizerRecord, params: Param[]): Optimizer {
  if (rec.kind === 'SGD') return new SGD(params, { lr: rec.lr, momentum: rec.momentum, weightDecay: rec.weightDecay });
  const options = { lr: rec.lr, beta1: rec.beta1, beta2: rec.beta2, eps: rec.eps, weightDecay: rec.weightDecay };
  return rec.kind === 'Adam' ? new Adam(params, options) : new AdamW(params, options);
}

/**
 * Per element of a parameter, how far the optimizer's result after each step can move when each of the element's
 * gradients (torch's, `grads[k]` for step k + 1) moves by ± the larger of its gradient tolerance and its actual
 * difference from the gradient graft stepped with (`actual[k]`; at step 2 that one is taken at graft's own
 * step-1 parameters, and may differ by more than the tolerance only through them): the optimizer (SGD with
 * momentum, Adam, AdamW as torch.optim and src/train/optimizer.ts define them) replayed on the one element for
 * every sign combination. An optimizer that computes its update differently misses this by far on every
 * element, not on a few ill-conditioned ones.
 */
export function propagatedAllowance(rec: OptimizerRecord, decay: boolean, w0: ArrayLike<number>, grads: readonly (readonly number[])[], actual: readonly ArrayLike<number>[]): Float64Array[] {
  const deltas = grads.map((g, k) => {
    const floor = gradFloor(g);
    return g.map((v, i) => Math.max(TOL * Math.max(Math.abs(v), floor), Math.abs(actual[k]![i]! - v)));
  });
  const wd = decay ? rec.weightDecay : 0;
  const [b1, b2, eps] = [rec.beta1 ?? 0.9, rec.beta2 ?? 0.999, rec.eps ?? 1e-8];
  /** The parameter after each step, for gradients gs of one element. */
  const replay = (w: number, gs: readonly number[]): number[] => {
    let [m, v, buf] = [0, 0, 0];
    return gs.map((g0, k) => {
      const t = k + 1;
      if (rec.kind === 'SGD') {
        const g = g0 + wd * w;
        buf = k === 0 ? g : (rec.momentum ?? 0) * buf + g;
        w -= rec.lr * buf;
        return w;
      }
      let g = g0;
      if (rec.kind === 'AdamW') w *= 1 - rec.lr * wd;
      else g += wd * w;
      m = b1 * m + (1 - b1) * g;
      v = b2 * v + (1 - b2) * g * g;
      w -= (rec.lr * (m / (1 - b1 ** t))) / (Math.sqrt(v) / Math.sqrt(1 - b2 ** t) + eps);
      return w;
    });
  };
  const steps = grads.length;
  const out = Array.from({ length: steps }, () => new Float64Array(w0.length));
  for (let i = 0; i < w0.length; i++) {
    const nominal = replay(w0[i]!, grads.map((g) => g[i]!));
    for (let signs = 0; signs < 2 ** steps; signs++) {
      const moved = replay(w0[i]!, grads.map((g, k) => g[i]! + ((signs >> k) & 1 ? 1 : -1) * deltas[k]![i]!));
      for (let k = 0; k < steps; k++) out[k]![i] = Math.max(out[k]![i]!, Math.abs(moved[k]! - nominal[k]!));
    }
  }
  return out;
}

export interface CheckOptions {
  /** Add the propagated gradient tolerance to the parameter bounds (see the header). */
  propagateGradientTolerance?: boolean;
}

/** Loss, gradients and every optimizer's two steps of `net` against its record (see the header). */
export async function checkNetwork(name: string, net: NetworkRecord, build: Build, options: CheckOptions = {}): Promise<void> {
  const report: Report = new Map();
  const { session, run } = await gradientSession(net, build);
  const zero = new Set(net.params.filter((p) => p.zeroGradient).map((p) => p.name));
  try {
    const initial = (): Param[] => net.params.map((p) => ({ name: p.name, dims: [...p.shape], data: f32(p.data), decay: p.decay }));
    const init = new Map(net.params.map((p) => [p.name, f32(p.data)]));
    const checkAll = (label: string, params: readonly Param[], want: Record<string, number[]>, allowances?: Map<string, Float64Array>) => {
      for (const p of params) check(report, label, p.data, want[p.name]!, PARAM_FLOOR, allowances?.get(p.name));
      for (const p of params) if (!zero.has(p.name)) checkUpdate(report, `${label}, update`, init.get(p.name)!, p.data, want[p.name]!, allowances?.get(p.name));
      if (allowances) {
        // How much the allowance loosened the bound: elements that needed it, and its largest share.
        let needed = 0;
        let largest = 0;
        for (const p of params) {
          const a = allowances.get(p.name)!;
          p.data.forEach((v, i) => {
            const budget = TOL * Math.max(Math.abs(want[p.name]![i]!), PARAM_FLOOR);
            if (Math.abs(v - want[p.name]![i]!) > budget) needed++;
            largest = Math.max(largest, a[i]! / budget);
          });
        }
        report.set(`${label}: elements beyond the plain tolerance (within the propagated one)`, needed);
        report.set(`${label}: largest propagated allowance, in plain tolerances`, largest);
      }
    };
    const checkGrads = (label: string, got: Map<string, Float32Array>, want: Record<string, number[]>) => {
      const largest = Math.max(...net.params.map((p) => gradFloor(want[p.name]!) / GRAD_FLOOR));
      for (const p of net.params) {
        if (!zero.has(p.name)) {
          check(report, `${label} (${p.name})`, got.get(p.name)!, want[p.name]!, gradFloor(want[p.name]!));
          continue;
        }
        // Both ≈ 0 against the network's scale: the (relative) size of each side's rounding noise.
        for (const [side, g] of [['graft', got.get(p.name)!], ['torch', want[p.name]!]] as const) {
          const noise = Array.from(g).reduce((m, v) => Math.max(m, Math.abs(v)), 0) / largest;
          report.set(`${label}, zero gradients (${side})`, Math.max(report.get(`${label}, zero gradients (${side})`) ?? 0, noise));
          assert.ok(noise <= ZERO_GRADIENT, `${label} (${p.name}): ${side}'s gradient ${noise.toExponential(2)} of the largest, expected ≈ 0`);
        }
      }
    };

    const first = await run(initial());
    check(report, 'loss', [first.loss], [net.loss], PARAM_FLOOR);
    checkGrads('gradient', first.grads, net.grads);

    for (const [key, rec] of Object.entries(net.optimizers)) {
      const params = initial();
      const opt = makeOptimizer(rec, params.filter((p) => !zero.has(p.name))); // zero-gradient ones not stepped
      const propagate = options.propagateGradientTolerance;
      /** Allowances after the last of the given steps, by parameter (zero for the ones not stepped). */
      const allowance = (grads: Record<string, number[]>[], actual: Map<string, Float32Array>[]) =>
        new Map(net.params.map((p) => [
          p.name,
          zero.has(p.name) ? new Float64Array(p.data.length) : propagatedAllowance(rec, p.decay, p.data, grads.map((g) => g[p.name]!), actual.map((g) => g.get(p.name)!)).at(-1)!,
        ]));
      opt.step(first.grads);
      checkAll(`${key} params after step 1`, params, rec.params1, propagate ? allowance([net.grads], [first.grads]) : undefined);
      const second = await run(params);
      check(report, `${key} loss at step 2`, [second.loss], [rec.loss2], PARAM_FLOOR);
      if (!propagate) checkGrads(`${key} gradient at step 2`, second.grads, rec.grads2);
      else {
        // graft's step-1 parameters differ from torch's where Adam is ill-conditioned, and the gradients there
        // by what that moves them: the gradients are compared at torch's step-1 parameters (the same point);
        // graft's own, at its own parameters, make step 2.
        const atTorch = await run(params.map((p) => ({ ...p, data: f32(rec.params1[p.name]!) })));
        checkGrads(`${key} gradient at step 2 (at torch's step-1 parameters)`, atTorch.grads, rec.grads2);
        check(report, `${key} loss at step 2 (at torch's step-1 parameters)`, [atTorch.loss], [rec.loss2], PARAM_FLOOR);
      }
      opt.step(second.grads);
      checkAll(`${key} params after step 2`, params, rec.params2, propagate ? allowance([net.grads, rec.grads2], [first.grads, second.grads]) : undefined);
    }
  } finally {
    if (verbose) for (const [label, err] of report) console.log(`${name} ${label}: ${err.toExponential(2)}`);
    await session.release();
  }
}

