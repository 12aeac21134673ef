import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import type { Param } from '../src/head/head.js';
import { Adam, AdamW, SGD, clipGradNorm, clipGradValue, spread, type GroupSpec, type Optimizer, type OptimizerState } from '../src/train/optimizer.js';
import { combine, combinedCos, constant, cosine, exponential, linear, oneCycle, Scheduler, step, warmup } from '../src/train/schedule.js';
import { GraftError } from '../src/errors.js';

// ---- fixtures: two params (a decaying weight, a non-decaying bias), deterministic gradients per step ----

const W0 = [0.5, -1.2, 0.3, 2.0, -0.7, 0.05, 1.1];
const B0 = [0.1, -0.2, 0.4];

function makeParams(): Param[] {
  return [
    { name: 'w', dims: [7], data: Float32Array.from(W0), decay: true },
    { name: 'b', dims: [3], data: Float32Array.from(B0), decay: false },
  ];
}

/** Gradient of param k at step t (1-based), rounded to float32 as the optimizer sees it. */
function grad(k: number, t: number, n: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => Math.sin(1.3 * t + 0.7 * i + 2 * k) * (1 + 0.3 * i) + 0.1 * k);
}

function gradsAt(t: number, params: readonly Param[]): Float32Array[] {
  return params.map((p, k) => grad(k, t, p.data.length));
}

function close(actual: ArrayLike<number>, expected: ArrayLike<number>, tol = 2e-6, what = ''): void {
  assert.equal(actual.length, expected.length);
  for (let i = 0; i < expected.length; i++) {
    const e = expected[i]!;
    assert.ok(Math.abs(actual[i]! - e) <= tol * Math.max(1, Math.abs(e)), `${what}[${i}]: ${actual[i]} vs ${e}`);
  }
}

// ---- float64 references, written from the algorithms in PyTorch's documentation ----

interface RefParam {
  w: number[];
  decay: boolean;
  lr: number;
}

function refSGD(ps: RefParam[], steps: number, o: { momentum: number; dampening: number; nesterov: boolean; wd: number }): number[][] {
  const bufs: number[][] = ps.map((p) => p.w.map(() => 0));
  const w = ps.map((p) => [...p.w]);
  for (let t = 1; t <= steps; t++) {
    ps.forEach((p, k) => {
      const g0 = grad(k, t, p.w.length);
      for (let i = 0; i < p.w.length; i++) {
        let g = g0[i]!;
        if (p.decay && o.wd !== 0) g += o.wd * w[k]![i]!;
        if (o.momentum !== 0) {
          bufs[k]![i] = t > 1 ? o.momentum * bufs[k]![i]! + (1 - o.dampening) * g : g;
          g = o.nesterov ? g + o.momentum * bufs[k]![i]! : bufs[k]![i]!;
        }
        w[k]![i] = w[k]![i]! - p.lr * g;
      }
    });
  }
  return w;
}

function refAdam(ps: RefParam[], steps: number, o: { b1: number; b2: number; eps: number; wd: number; decoupled: boolean }, firstStep = 1): number[][] {
  const m = ps.map((p) => p.w.map(() => 0));
  const v = ps.map((p) => p.w.map(() => 0));
  const w = ps.map((p) => [...p.w]);
  for (let t = 1; t <= steps; t++) {
    ps.forEach((p, k) => {
      const g0 = grad(k, t + firstStep - 1, p.w.length);
      const wd = p.decay ? o.wd : 0;
      for (let i = 0; i < p.w.length; i++) {
        let g = g0[i]!;
        if (o.decoupled) w[k]![i] = w[k]![i]! - p.lr * wd * w[k]![i]!;
        else g += wd * w[k]![i]!;
        m[k]![i] = o.b1 * m[k]![i]! + (1 - o.b1) * g;
        v[k]![i] = o.b2 * v[k]![i]! + (1 - o.b2) * g * g;
        const mHat = m[k]![i]! / (1 - o.b1 ** t);
        const vHat = v[k]![i]! / (1 - o.b2 ** t);
        w[k]![i] = w[k]![i]! - (p.lr * mHat) / (Math.sqrt(vHat) + o.eps);
      }
    });
  }
  return w;
}

/** Two groups: the weight at lr 0.1, the bias at lr 0.05. */
/** n groups of one scalar parameter each (p0, p1, …). */
function scalarGroups(n: number): GroupSpec[] {
  return Array.from({ length: n }, (_, i) => ({ params: [{ name: `p${i}`, dims: [1], data: new Float32Array(1), decay: false }] }));
}

function twoGroups(params: Param[]) {
  return [
    { name: 'body', params: [params[0]!], lr: 0.1 },
    { name: 'head', params: [params[1]!], lr: 0.05 },
  ];
}
const refParams = (): RefParam[] => [
  { w: W0, decay: true, lr: 0.1 },
  { w: B0, decay: false, lr: 0.05 },
];

function run(opt: Optimizer, params: Param[], from: number, to: number): void {
  for (let t = from; t <= to; t++) opt.step(gradsAt(t, params));
}

describe('update rules match PyTorch', () => {
  const STEPS = 6;
  for (const o of [
    { momentum: 0, dampening: 0, nesterov: false, wd: 0.1 },
    { momentum: 0.9, dampening: 0, nesterov: false, wd: 0.01 },
    { momentum: 0.9, dampening: 0, nesterov: true, wd: 0.05 },
    { momentum: 0.8, dampening: 0.3, nesterov: false, wd: 0 },
  ]) {
    test(`SGD ${JSON.stringify(o)}`, () => {
      const params = makeParams();
      const opt = new SGD(twoGroups(params), { lr: 1, momentum: o.momentum, dampening: o.dampening, nesterov: o.nesterov, weightDecay: o.wd });
      run(opt, params, 1, STEPS);
      const ref = refSGD(refParams(), STEPS, o);
      close(params[0]!.data, ref[0]!, 2e-6, 'w');
      close(params[1]!.data, ref[1]!, 2e-6, 'b');
    });
  }

  for (const [name, Ctor, decoupled, simd] of [
    ['Adam', Adam, false, true],
    ['AdamW', AdamW, true, true],
    ['Adam (JavaScript loop)', Adam, false, false],
    ['AdamW (JavaScript loop)', AdamW, true, false],
  ] as const) {
    test(`${name} with weight decay`, () => {
      const params = makeParams();
      const o = { b1: 0.9, b2: 0.99, eps: 1e-8, wd: 0.2, decoupled };
      const opt = new Ctor(twoGroups(params), { lr: 1, beta1: o.b1, beta2: o.b2, eps: o.eps, weightDecay: o.wd, simd });
      run(opt, params, 1, STEPS);
      const ref = refAdam(refParams(), STEPS, o);
      close(params[0]!.data, ref[0]!, 2e-6, 'w');
      close(params[1]!.data, ref[1]!, 2e-6, 'b');
      // Decay really happened (the decaying weight differs from a no-decay run) and only where flagged.
      const noDecay = refAdam(refParams(), STEPS, { ...o, wd: 0 });
      assert.ok(Math.abs(noDecay[0]![3]! - ref[0]![3]!) > 1e-3);
      close(noDecay[1]!, ref[1]!, 1e-12, 'bias untouched by decay');
    });
  }

  test('torch defaults: AdamW decays 0.01, Adam 0, β = (0.9, 0.999), ε = 1e-8', () => {
    const a = new AdamW(makeParams(), { lr: 1e-3 });
    const b = new Adam(makeParams(), { lr: 1e-3 });
    assert.equal(a.groups[0]!.weightDecay, 0.01);
    assert.equal(b.groups[0]!.weightDecay, 0);
    assert.equal(a.groups[0]!.momentum, 0.9);
    assert.equal(a.beta2, 0.999);
    assert.equal(a.eps, 1e-8);
  });

  test('gradients by name equal aligned gradients', () => {
    const p1 = makeParams();
    const p2 = makeParams();
    const o1 = new AdamW(twoGroups(p1), { lr: 1, weightDecay: 0.1 });
    const o2 = new AdamW(twoGroups(p2), { lr: 1, weightDecay: 0.1 });
    for (let t = 1; t <= 3; t++) {
      o1.step(gradsAt(t, p1));
      o2.step(new Map(p2.map((p, k) => [p.name, grad(k, t, p.data.length)])));
    }
    assert.deepEqual(p1, p2);
  });

  test('missing or misshapen gradients are errors', () => {
    const params = makeParams();
    const opt = new SGD(params, { lr: 0.1 });
    assert.throws(() => opt.step([params[0]!.data]), GraftError);
    assert.throws(() => opt.step(new Map([['w', new Float32Array(7)]])), /no gradient for trainable parameter "b"/);
    assert.throws(() => opt.step([new Float32Array(7), new Float32Array(2)]), /gradient of "b"/);
    assert.throws(() => new SGD(params, { lr: 0.1, nesterov: true }), GraftError);
    assert.throws(() => new SGD([...params, { ...params[0]! }], { lr: 0.1 }), /unique names/);
  });
});

describe('parameter groups', () => {
  test('a frozen group is skipped: weights and moments untouched; it starts at step 1 when unfrozen', () => {
    const params = makeParams();
    const opt = new Adam(twoGroups(params), { lr: 1, beta2: 0.99, weightDecay: 0.2 });
    opt.freeze(); // only 'head' (the bias) trains
    assert.deepEqual(
      opt.groups.map((g) => g.frozen),
      [true, false],
    );
    // Frozen params need no gradient when given by name.
    for (let t = 1; t <= 3; t++) opt.step(new Map([['b', grad(1, t, 3)]]));
    assert.deepEqual(Array.from(params[0]!.data), Array.from(Float32Array.from(W0)));
    const s = opt.state();
    assert.equal(s.params[0]!.step, 0);
    assert.equal(s.params[0]!.buffers, null);
    assert.equal(s.params[1]!.step, 3);
    // Frozen with existing moments: they stay as they are.
    opt.unfreeze();
    opt.step(gradsAt(4, params));
    opt.freezeTo(-1);
    const before = opt.state().params[0]!;
    const w = params[0]!.data.slice();
    opt.step(gradsAt(5, params));
    assert.deepEqual(opt.state().params[0], before);
    assert.deepEqual(params[0]!.data, w);
    // The weight's one update was its step 1 (bias correction restarts for it), with gradient of t = 4.
    const ref = refAdam([{ w: W0, decay: true, lr: 0.1 }], 1, { b1: 0.9, b2: 0.99, eps: 1e-8, wd: 0.2, decoupled: false }, 4);
    close(params[0]!.data, ref[0]!, 2e-6);
  });

  test('freezeTo(n), freeze(), unfreeze()', () => {
    const opt = new SGD(scalarGroups(4), { lr: 0.1 });
    const frozen = () => opt.groups.map((g) => g.frozen);
    opt.freezeTo(-1);
    assert.deepEqual(frozen(), [true, true, true, false]);
    opt.freezeTo(2);
    assert.deepEqual(frozen(), [true, true, false, false]);
    opt.freezeTo(-3);
    assert.deepEqual(frozen(), [true, false, false, false]);
    opt.unfreeze();
    assert.deepEqual(frozen(), [false, false, false, false]);
    opt.freeze();
    assert.deepEqual(frozen(), [true, true, true, false]);
    opt.freezeTo(4);
    assert.deepEqual(frozen(), [true, true, true, true]);
    assert.throws(() => opt.freezeTo(5), GraftError);
    assert.throws(() => opt.freezeTo(-5), GraftError);
    assert.deepEqual(
      opt.groups.map((g) => g.name),
      ['group0', 'group1', 'group2', 'group3'],
    );
  });

  test('discriminative LRs: {lo, hi} over 3 groups gives lo, the geometric mean, hi', () => {
    const opt = new AdamW(scalarGroups(3), { lr: 1 });
    opt.setLr({ lo: 1e-5, hi: 1e-3 });
    const lrs = opt.groups.map((g) => g.lr);
    assert.equal(lrs[0], 1e-5);
    assert.ok(Math.abs(lrs[1]! - Math.sqrt(1e-5 * 1e-3)) < 1e-18);
    assert.equal(lrs[2], 1e-3);
    assert.equal(opt.lr, 1e-3);
    opt.setLr({ hi: 1e-3 });
    assert.deepEqual(
      opt.groups.map((g) => g.lr),
      [1e-4, 1e-4, 1e-3],
    );
    opt.setLr([1, 2, 3]);
    assert.deepEqual(
      opt.groups.map((g) => g.lr),
      [1, 2, 3],
    );
    opt.setLr(0.5);
    assert.deepEqual(
      opt.groups.map((g) => g.lr),
      [0.5, 0.5, 0.5],
    );
    opt.setHyper('weightDecay', [0, 0.1, 0.2]);
    assert.deepEqual(
      opt.groups.map((g) => g.weightDecay),
      [0, 0.1, 0.2],
    );
    assert.throws(() => opt.setLr([1, 2]), GraftError);
    assert.throws(() => opt.setLr(-1), GraftError);
    assert.deepEqual(spread({ lo: 1, hi: 16 }, 5), [1, 2, 4, 8, 16]);
    assert.deepEqual(spread({ lo: 1, hi: 16 }, 1), [16]);
  });

  for (const make of [
    (p: Param[]) => new SGD(twoGroups(p), { lr: 1, momentum: 0.9, nesterov: true, weightDecay: 0.05 }),
    (p: Param[]) => new Adam(twoGroups(p), { lr: 1, weightDecay: 0.05 }),
    (p: Param[]) => new AdamW(twoGroups(p), { lr: 1, weightDecay: 0.05 }),
  ]) {
    test(`state round trip resumes exactly (${make(makeParams()).constructor.name})`, () => {
      const straight = makeParams();
      const a = make(straight);
      run(a, straight, 1, 7);

      const first = makeParams();
      const b = make(first);
      b.freeze(); // hyper-parameters travel too
      run(b, first, 1, 1);
      b.unfreeze();
      b.setLr([0.1, 0.05]);
      run(b, first, 2, 3);
      const saved = JSON.parse(JSON.stringify(b.state())) as OptimizerState;
      const weights = first.map((p) => Array.from(p.data));

      const resumed: Param[] = makeParams().map((p, k) => ({ ...p, data: Float32Array.from(weights[k]!) }));
      const c = make(resumed);
      c.setLr(123);
      c.loadState(saved);
      assert.deepEqual(c.state(), saved);
      run(c, resumed, 4, 7);

      const again = makeParams();
      const d = make(again);
      d.freeze();
      run(d, again, 1, 1);
      d.unfreeze();
      d.setLr([0.1, 0.05]);
      run(d, again, 2, 7);
      assert.deepEqual(resumed, again); // bit-identical to the uninterrupted run
      assert.throws(() => new SGD(makeParams(), { lr: 1 }).loadState(saved), GraftError);
    });
  }

  test('zeroState forgets moments and step counts', () => {
    const p1 = makeParams();
    const opt = new SGD(p1, { lr: 0.1, momentum: 0.9, dampening: 0.5 });
    run(opt, p1, 1, 3);
    opt.zeroState();
    const w = p1.map((p) => p.data.slice());
    run(opt, p1, 4, 5);
    const p2: Param[] = makeParams().map((p, k) => ({ ...p, data: w[k]! }));
    const fresh = new SGD(p2, { lr: 0.1, momentum: 0.9, dampening: 0.5 });
    run(fresh, p2, 4, 5);
    assert.deepEqual(p1, p2);
  });

  test('the SIMD update agrees with the JavaScript loop (odd sizes, zeroState, several steps)', () => {
    const sizes = [10_007, 3, 1];
    const make = () => sizes.map((n, k): Param => ({ name: `p${k}`, dims: [n], data: Float32Array.from({ length: n }, (_, i) => Math.sin(i + k)), decay: k === 0 }));
    const [a, b] = [make(), make()];
    const grads = (t: number) => sizes.map((n, k) => Float32Array.from({ length: n }, (_, i) => Math.cos(i * 0.37 + t + k) * 1e-2));
    for (const Ctor of [Adam, AdamW]) {
      const simd = new Ctor(a, { lr: 1e-2, weightDecay: 0.1 });
      const js = new Ctor(b, { lr: 1e-2, weightDecay: 0.1, simd: false });
      for (let t = 0; t < 5; t++) {
        if (t === 3) {
          simd.zeroState();
          js.zeroState();
        }
        simd.step(grads(t));
        js.step(grads(t));
      }
      a.forEach((p, k) => close(p.data, b[k]!.data, 1e-6, `${Ctor.name} p${k}`));
    }
  });

  test('step() allocates nothing once moments exist', () => {
    const n = 100_000;
    const params: Param[] = [
      { name: 'w', dims: [n], data: new Float32Array(n).fill(0.1), decay: true },
      { name: 'b', dims: [8], data: new Float32Array(8), decay: false },
    ];
    const grads = [new Float32Array(n).fill(1e-3), new Float32Array(8).fill(1e-3)];
    const byName = new Map(params.map((p, k) => [p.name, grads[k]!]));
    for (const opt of [new AdamW(params, { lr: 1e-4, weightDecay: 0.1 }), new SGD(params, { lr: 1e-4, momentum: 0.9, nesterov: true, weightDecay: 0.1 })]) {
      opt.step(grads);
      const start = process.memoryUsage().arrayBuffers;
      let peak = start;
      for (let s = 0; s < 1_000; s++) {
        opt.step(s % 2 ? grads : byName);
        if (s % 10 === 0) peak = Math.max(peak, process.memoryUsage().arrayBuffers);
      }
      peak = Math.max(peak, process.memoryUsage().arrayBuffers);
      assert.ok(peak - start < 8 * 1024, `arrayBuffers grew by ${peak - start} bytes`);
    }
  });
});

describe('gradient clipping', () => {
  test('clipGradNorm returns the total norm and scales by maxNorm / (norm + 1e-6)', () => {
    const g = [Float32Array.from([3, 4]), Float32Array.from([12])];
    assert.equal(clipGradNorm(g, 6.5), 13);
    const c = 6.5 / (13 + 1e-6);
    close(g[0]!, [3 * c, 4 * c], 1e-7);
    close(g[1]!, [12 * c], 1e-7);
    // Below the limit: untouched.
    const h = new Map([['a', Float32Array.from([0.3, -0.4])]]);
    assert.ok(Math.abs(clipGradNorm(h, 1) - 0.5) < 1e-7);
    assert.deepEqual(Array.from(h.get('a')!), Array.from(Float32Array.from([0.3, -0.4])));
    // Max norm.
    const m = [Float32Array.from([1, -8, 2])];
    assert.equal(clipGradNorm(m, 4, Infinity), 8);
    close(m[0]!, [0.5, -4, 1], 1e-6);
  });

  test('clipGradValue clamps into [-v, v]', () => {
    const g = [Float32Array.from([-3, -0.5, 0, 0.5, 3])];
    clipGradValue(g, 1);
    assert.deepEqual(Array.from(g[0]!), [-1, -0.5, 0, 0.5, 1]);
  });
});

describe('schedules', () => {
  const near = (a: number, b: number, tol = 1e-12) => assert.ok(Math.abs(a - b) <= tol * Math.max(1, Math.abs(b)), `${a} vs ${b}`);

  test('constant, linear, cosine, exponential', () => {
    assert.equal(constant(3)(0.7), 3);
    near(linear(1, 3)(0.25), 1.5);
    near(cosine(1, 0)(0), 1);
    near(cosine(1, 0)(0.5), 0.5);
    near(cosine(1, 0)(1), 0);
    near(cosine(2, 4)(0.5), 3);
    near(cosine(1, 0)(0.25), (1 + Math.cos(Math.PI / 4)) / 2);
    near(exponential(1, 100)(0.5), 10);
  });

  test('step: gamma per passed milestone', () => {
    const s = step(1, [0.5, 0.75], 0.1);
    near(s(0), 1);
    near(s(0.4999), 1);
    near(s(0.5), 0.1);
    near(s(0.7), 0.1);
    near(s(0.75), 0.01);
    near(s(1), 0.01);
  });

  test('combine: each schedule over its share; the later one starts at a boundary', () => {
    const s = combine([0.3, 0.7], [linear(0, 1), linear(10, 20)]);
    near(s(0), 0);
    near(s(0.15), 0.5);
    near(s(0.3), 10);
    near(s(0.65), 15);
    near(s(1), 20);
    const empty = combine([1, 0], [linear(0, 1), constant(99)]);
    near(empty(1), 1);
    assert.throws(() => combine([0.5, 0.4], [constant(0), constant(1)]), GraftError);
  });

  test('warmup: linear from 0 to the schedule start, then the schedule over the rest', () => {
    const s = warmup(0.1, cosine(1, 0));
    near(s(0), 0);
    near(s(0.05), 0.5);
    near(s(0.1), 1);
    near(s(0.55), 0.5);
    near(s(1), 0);
    near(warmup(0.2, constant(2), 0.5)(0), 1);
  });

  test('oneCycle: lr/div → lr at pct_start → lr/div_final, momentum inverse', () => {
    const { lr, momentum } = oneCycle({ pctStart: 0.25 });
    near(lr(0), 1 / 25);
    near(lr(0.125), (1 / 25 + 1) / 2);
    near(lr(0.25), 1);
    near(lr(0.625), (1 + 1e-5) / 2);
    near(lr(1), 1e-5);
    near(momentum(0), 0.95);
    near(momentum(0.25), 0.85);
    near(momentum(1), 0.95);
    near(combinedCos(0.5, 0, 1, 0)(0.75), 0.5);
  });

  test('Scheduler keeps discriminative ratios and cycles momentum (β1 for Adam)', () => {
    const opt = new AdamW(scalarGroups(3), { lr: 1 });
    opt.setLr({ lo: 1e-4, hi: 1e-2 });
    const oc = oneCycle();
    const sched = new Scheduler(opt, 100, oc);
    sched.setStep(0);
    near(opt.groups[0]!.lr, 1e-4 / 25);
    near(opt.groups[2]!.lr, 1e-2 / 25);
    assert.equal(opt.groups[1]!.momentum, 0.95);
    sched.setStep(25);
    near(opt.groups[0]!.lr, 1e-4);
    near(opt.groups[1]!.lr, 1e-3);
    near(opt.groups[2]!.lr, 1e-2);
    near(opt.groups[2]!.momentum, 0.85);
    sched.setStep(100);
    near(opt.groups[2]!.lr, 1e-7);
    sched.setStep(0);
    near(opt.groups[2]!.lr, 1e-2 / 25); // idempotent: base LRs are remembered
  });
});
