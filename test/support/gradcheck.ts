/**
 * Finite-difference gradient checks for the rules in src/onnx/autodiff.ts, run in onnxruntime-node
 * (shared by test/autodiff.test.ts and test/autodiff-cnn.test.ts).
 *
 * Method. A case builds y = op(inputs) and the scalar loss = ReduceSum(y · R), R a fixed random
 * weighting of y's shape (so that the gradient is not all ones); with `isLoss` y is the loss itself.
 * The analytic gradients come from `appendGradients` on that graph, run twice: with static shapes
 * (constant-folded unbroadcast, the normal path) and with `useStaticShapes: false` (every
 * unbroadcast/reshape done with Shape ops). They are compared, element by element for every `wrt` input,
 * with central differences (f(x+ε) − f(x−ε)) / 2ε of the forward graph; there Σ R·y is summed in float64
 * in JS, so only y's own rounding remains. With `fourthOrder`, (8(f(x+ε) − f(x−ε)) − (f(x+2ε) − f(x−2ε))) / 12ε.
 * The error is max |g − fd| / max(|fd|, floor) over the tensor, and must be below `tol`.
 *
 * Precision. float64 by default: ε = 1e-6, tol 1e-5, floor 1e-3. ORT has float32-only CPU kernels for some
 * ops (Conv, AveragePool, GlobalAveragePool, HardSigmoid, HardSwish, Erf, Gelu): `float32` cases get
 * float32-exact data and default to ε = 1e-3, tol 1e-2, floor 1e-1 (a case sets its own eps/tol/floor
 * where it can do better), and their floor is raised to 1% of the tensor's largest difference, since the
 * loss's rounding error scales with the whole tensor, not with each entry. A float32 case can instead take
 * its differences in float64 on a `reference` graph of the same function (checked against `build` first).
 *
 * GRAFT_GRAD_VERBOSE=1 prints each case's worst error (and kink crossings); =2 also each tensor's worst entry.
 */
import assert from 'node:assert/strict';
import * as ort from 'onnxruntime-node';
import { appendGradients } from '../../src/onnx/autodiff.js';
import { GraphBuilder } from '../../src/onnx/builder.js';
import { DataType, encodeModel, type ModelProto } from '../../src/onnx/proto.js';
import { GraftError } from '../../src/errors.js';
import { Random } from '../../src/util/random.js';

/** normal: N(0, 1); positive: U[0.5, 2); int: int64 labels/indices; mask: dropout mask (0 w.p. 0.3, else 1/0.7). */
export type Kind = 'normal' | 'positive' | 'int' | 'mask';

export interface GradInput {
  name: string;
  dims: number[];
  /** Declared shape, when it should differ from dims (symbolic sizes). */
  decl?: Array<number | string>;
  kind?: Kind;
  /** For 'int': values drawn from [0, max) (default 2). */
  max?: number;
  /** Fixed values instead of random ones. */
  values?: number[];
  /** Multiplies random values (normal or positive). */
  scale?: number;
  /** Offset added to random values. */
  shift?: number;
  /** Kinks of the op: random values closer than 0.05 to one are moved 0.1 away from it. */
  avoid?: number[];
  /** Differentiate the loss with respect to this input. */
  wrt?: boolean;
}

/** Constants of the case's float type, and kink watching for piecewise-smooth blocks. */
export interface Typed {
  scalar(b: GraphBuilder, v: number): string;
  tensor(b: GraphBuilder, values: number[], dims: number[]): string;
  /**
   * Marks t as the input of a piecewise op with kinks at `at` (ReLU6: 0 and 6); returns t. A finite
   * difference whose two evaluations put an element of t on different sides of a kink is not a derivative
   * and is left out of the comparison (at most 10% of a tensor's elements may be left out).
   */
  watch(b: GraphBuilder, t: string, at: number[]): string;
}

export interface GradCase {
  name: string;
  inputs: GradInput[];
  /** Builds the op under test on the declared inputs; returns y (weighted and summed), or the loss when `isLoss`. */
  build(b: GraphBuilder, x: Record<string, string>, t: Typed): string;
  /** y is the scalar loss itself (its gradient seeded with 1), not weighted by R. */
  isLoss?: boolean;
  /** ORT has no float64 kernel for the op: run in float32 (float32-exact data, looser defaults). */
  float32?: boolean;
  /** Step ε; default 1e-6 (float64) or 1e-3 (float32). */
  eps?: number;
  /** Largest relative error allowed; default 1e-5 (float64) or 1e-2 (float32). */
  tol?: number;
  /** Absolute floor of the relative error's denominator; default 1e-3 (float64) or 1e-1 (float32). */
  floor?: number;
  /** Opset of every graph (default 17). */
  opset?: number;
  /**
   * A float64 forward graph of the same function built from ops that ORT has float64 kernels for: the
   * finite differences of a float32 case are then taken on it (ε, tolerances as given).
   */
  reference?(b: GraphBuilder, x: Record<string, string>, t: Typed): string;
  /** Fourth-order differences (f(x±ε), f(x±2ε)): larger ε for smooth float32 cases, less rounding noise. */
  fourthOrder?: boolean;
  /**
   * Rewrites the gradient graph before it runs (e.g. the NCHWc rewrite of src/onnx/nchwc.ts): its gradients
   * are checked against the differences of the plain forward graph.
   */
  transform?(model: ModelProto): ModelProto;
  /** The rule needs static sizes (auto_pad SAME): the dynamic run must refuse it with a GraftError. */
  staticOnly?: boolean;
}

type Data = Record<string, Float64Array | BigInt64Array>;
type Feeds = Record<string, ort.Tensor>;

const verbose = process.env.GRAFT_GRAD_VERBOSE;

function makeData(spec: GradInput, rng: Random): Float64Array | BigInt64Array {
  const size = spec.dims.reduce((a, b) => a * b, 1);
  if (spec.kind === 'int') return BigInt64Array.from(spec.values ?? Array.from({ length: size }, () => rng.int(spec.max ?? 2)), (v) => BigInt(v));
  if (spec.values) return Float64Array.from(spec.values);
  if (spec.kind === 'mask') return Float64Array.from({ length: size }, () => (rng.next() < 0.3 ? 0 : 1 / 0.7));
  return Float64Array.from({ length: size }, () => {
    let v = (spec.shift ?? 0) + (spec.scale ?? 1) * (spec.kind === 'positive' ? 0.5 + rng.next() * 1.5 : rng.normal());
    for (const k of spec.avoid ?? []) if (Math.abs(v - k) < 0.05) v = k + (v < k ? -0.1 : 0.1);
    return v;
  });
}

function toTensor(data: Float64Array | BigInt64Array, dims: number[], float32: boolean): ort.Tensor {
  if (data instanceof BigInt64Array) return new ort.Tensor('int64', data, dims);
  return float32 ? new ort.Tensor('float32', Float32Array.from(data), dims) : new ort.Tensor('float64', data, dims);
}

function typed(float32: boolean, watched?: Array<{ name: string; at: number[] }>): Typed {
  const arr = (v: number[]) => (float32 ? Float32Array.from(v) : Float64Array.from(v));
  return {
    scalar: (b, v) => b.constant('k', arr([v]), []),
    tensor: (b, v, dims) => b.constant('k', arr(v), dims),
    watch: (_b, t, at) => {
      watched?.push({ name: t, at });
      return t;
    },
  };
}

function declare(b: GraphBuilder, c: GradCase, fType: number): Record<string, string> {
  const names: Record<string, string> = {};
  for (const s of c.inputs) names[s.name] = b.input(s.name, s.kind === 'int' ? DataType.INT64 : fType, s.decl ?? s.dims);
  return names;
}

/** The op types of every case's graph (built in float64): for checking that each rule is exercised. */
export function opTypesOf(cases: readonly GradCase[]): Set<string> {
  const ops = new Set<string>();
  for (const c of cases) {
    const b = new GraphBuilder('ops');
    c.build(b, declare(b, c, DataType.DOUBLE), typed(false));
    for (const n of b.nodes) ops.add(n.opType!);
  }
  return ops;
}

/** Checks the case's analytic gradients against finite differences (see the header); random data from `seed`. */
export async function checkGradients(c: GradCase, seed: number): Promise<void> {
  const f32 = c.float32 ?? false;
  const fType = f32 ? DataType.FLOAT : DataType.DOUBLE;
  const t = typed(f32);
  const opset = c.opset ?? 17;
  const rng = new Random(seed);
  // float32 cases get float32-representable data, so that a float64 reference sees the same point.
  const data: Data = Object.fromEntries(c.inputs.map((s) => {
    const d = makeData(s, rng);
    return [s.name, f32 && d instanceof Float64Array ? d.map(Math.fround) : d];
  }));
  const feedsOf = (d: Data, asF32 = f32): Feeds => Object.fromEntries(c.inputs.map((s) => [s.name, toTensor(d[s.name]!, s.dims, asF32)]));

  // The forward graph outputs y itself (and the watched kink inputs); Σ R·y is summed in float64 here.
  // With a reference, the differences are taken on it in float64, after checking that it matches build.
  const fwd = new GraphBuilder('forward');
  const watched: Array<{ name: string; at: number[] }> = [];
  const ref = c.reference !== undefined;
  const out = (c.reference ?? c.build)(fwd, declare(fwd, c, ref ? DataType.DOUBLE : fType), typed(f32 && !ref, watched));
  fwd.outputs.push({ name: out }, ...watched.map((w) => ({ name: w.name })));
  const fwdSession = await ort.InferenceSession.create(encodeModel(fwd.model(opset)));
  const fwdFeeds = (d: Data) => feedsOf(d, f32 && !ref);
  const first = (await fwdSession.run(fwdFeeds(data)))[out]!;
  const dims = [...first.dims];
  if (ref) await checkReference(c, opset, feedsOf(data), first);
  if (verbose && watched.length) {
    const r = await fwdSession.run(fwdFeeds(data));
    for (const w of watched) {
      const v = r[w.name]!.data as Float64Array;
      console.log(`${c.name}: ${w.name} below/inside/above the kinks: ${w.at.map((_, k) => v.filter((x) => w.at.filter((a) => x > a).length === k).length).join('/')}/${v.filter((x) => x > w.at[w.at.length - 1]!).length}`);
    }
  }
  const weights = c.isLoss ? Float64Array.of(1) : Float64Array.from({ length: first.data.length }, () => rng.normal());
  /** Σ R·y, and for every watched element the number of kinks below it. */
  const lossAt = async (d: Data): Promise<{ loss: number; sides: number[] }> => {
    const result = await fwdSession.run(fwdFeeds(d));
    const y = result[out]!.data as Float32Array | Float64Array;
    let loss = 0;
    for (let i = 0; i < y.length; i++) loss += y[i]! * weights[i]!;
    const sides: number[] = [];
    for (const w of watched) for (const v of result[w.name]!.data as Float32Array) sides.push(w.at.filter((k) => v > k).length);
    return { loss, sides };
  };

  const wrt = c.inputs.filter((s) => s.wrt);
  const eps = c.eps ?? (f32 ? 1e-3 : 1e-6);
  const numeric = new Map<string, Float64Array>(); // NaN: a kink was crossed
  for (const s of wrt) {
    const base = data[s.name] as Float64Array;
    const g = new Float64Array(base.length);
    for (let i = 0; i < base.length; i++) {
      const at = (h: number) => {
        const moved = Float64Array.from(base);
        moved[i]! += h;
        return lossAt({ ...data, [s.name]: moved });
      };
      const [hi, lo] = [await at(eps), await at(-eps)];
      if (!hi.sides.every((v, j) => v === lo.sides[j])) g[i] = NaN;
      else if (!c.fourthOrder) g[i] = (hi.loss - lo.loss) / (2 * eps);
      else g[i] = (8 * (hi.loss - lo.loss) - ((await at(2 * eps)).loss - (await at(-2 * eps)).loss)) / (12 * eps);
    }
    const crossed = g.filter((v) => Number.isNaN(v)).length;
    assert.ok(crossed <= 0.1 * g.length, `${c.name}: ${crossed} of ${g.length} differences in ${s.name} cross a kink`);
    if (verbose && crossed) console.log(`${c.name}: ${crossed}/${g.length} differences in ${s.name} cross a kink`);
    numeric.set(s.name, g);
  }
  await fwdSession.release();

  const tol = c.tol ?? (f32 ? 1e-2 : 1e-5);
  const floor = c.floor ?? (f32 ? 1e-1 : 1e-3);
  const wrtNames = wrt.map((s) => s.name);
  for (const useStaticShapes of [true, false]) {
    const b = new GraphBuilder('grad');
    const y = c.build(b, declare(b, c, fType), t);
    const loss = c.isLoss ? y : b.op('ReduceSum', [b.op('Mul', [y, t.tensor(b, [...weights], dims)])], { keepdims: 0 });
    if (c.staticOnly && !useStaticShapes) {
      assert.throws(() => appendGradients(b, { loss, wrt: wrtNames, useStaticShapes }), (e: unknown) => e instanceof GraftError && e.code === 'MODEL' && /auto_pad/.test(e.message));
      continue;
    }
    const grads = appendGradients(b, { loss, wrt: wrtNames, useStaticShapes });
    assert.deepEqual([...grads.keys()], wrtNames);
    b.output(loss, fType, []);
    for (const s of wrt) b.output(grads.get(s.name)!, fType, s.dims);
    const model = b.model(opset);
    const session = await ort.InferenceSession.create(encodeModel(c.transform ? c.transform(model) : model));
    const result = await session.run(feedsOf(data), wrt.map((s) => grads.get(s.name)!));
    await session.release();
    let worstAll = 0;
    for (const s of wrt) {
      const a = Float64Array.from(result[grads.get(s.name)!]!.data as Float64Array | Float32Array);
      const n = numeric.get(s.name)!;
      assert.equal(a.length, n.length, `${c.name}: gradient of ${s.name} has ${a.length} values, expected ${n.length}`);
      // In float32 the differences carry the loss's rounding error, which scales with the whole tensor, not
      // with each entry: entries far below the tensor's largest are compared against 1% of it.
      let largest = 0;
      for (const v of n) if (!Number.isNaN(v)) largest = Math.max(largest, Math.abs(v));
      const tensorFloor = f32 ? Math.max(floor, 1e-2 * largest) : floor;
      const errorAt = (i: number) => Math.abs(a[i]! - n[i]!) / Math.max(Math.abs(n[i]!), tensorFloor);
      let worst = 0;
      for (let i = 0; i < a.length; i++) if (!Number.isNaN(n[i]!)) worst = Math.max(worst, errorAt(i));
      worstAll = Math.max(worstAll, worst);
      if (verbose === '2') {
        const k = a.findIndex((_, i) => errorAt(i) === worst);
        console.log(`  ${s.name}: worst ${worst.toExponential(2)} at ${k}: autodiff ${a[k]} numeric ${n[k]}`);
      }
      assert.ok(worst < tol, `${c.name} (static shapes ${useStaticShapes}): d/d${s.name} max relative error ${worst.toExponential(2)}\n  autodiff ${[...a].map((v) => v.toFixed(6))}\n  numeric  ${[...n].map((v) => v.toFixed(6))}`);
    }
    if (verbose) console.log(`${c.name} static=${useStaticShapes}: worst ${worstAll.toExponential(2)} (tol ${tol})`);
  }
}

/** The float32 graph of `build` must match the float64 `reference` forward graph to 1e-5 (relative, floor 1). */
async function checkReference(c: GradCase, opset: number, feeds: Feeds, want: ort.Tensor): Promise<void> {
  const b = new GraphBuilder('build');
  const y = c.build(b, declare(b, c, c.float32 ? DataType.FLOAT : DataType.DOUBLE), typed(c.float32 ?? false));
  b.outputs.push({ name: y });
  const session = await ort.InferenceSession.create(encodeModel(b.model(opset)));
  const got = (await session.run(feeds))[y]!;
  await session.release();
  assert.deepEqual([...got.dims], [...want.dims]);
  const w = want.data as Float64Array;
  const diff = Math.max(...Array.from(got.data as Float32Array, (v, i) => Math.abs(v - w[i]!) / Math.max(1, Math.abs(w[i]!))));
  assert.ok(diff < 1e-5, `${c.name}: the float64 reference differs from the graph by ${diff.toExponential(2)}`);
}
