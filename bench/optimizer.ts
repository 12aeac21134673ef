/**
 * Time of one optimizer step over 1.2M parameters (a 1200×1000 weight and its bias), median of 50 steps
 * after 10 warm-up steps.
 *
 *   node dist/bench/optimizer.js
 */
import type { Param } from '../src/head/head.js';
import { Adam, AdamW, SGD, clipGradNorm, type Optimizer } from '../src/train/optimizer.js';

const ROWS = 1200;
const COLS = 1000;

function setup(): { params: Param[]; grads: Float32Array[] } {
  const params: Param[] = [
    { name: 'fc.weight', dims: [ROWS, COLS], data: Float32Array.from({ length: ROWS * COLS }, (_, i) => Math.sin(i) * 0.05), decay: true },
    { name: 'fc.bias', dims: [COLS], data: new Float32Array(COLS), decay: false },
  ];
  const grads = params.map((p) => Float32Array.from({ length: p.data.length }, (_, i) => Math.cos(i * 1.7) * 1e-3));
  return { params, grads };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return (s[(s.length - 1) >> 1]! + s[s.length >> 1]!) / 2;
}

function time(label: string, make: (p: Param[]) => Optimizer, runs = 50): void {
  const { params, grads } = setup();
  const opt = make(params);
  for (let i = 0; i < 10; i++) opt.step(grads);
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    opt.step(grads);
    times.push(performance.now() - t0);
  }
  const n = params.reduce((a, p) => a + p.data.length, 0);
  console.log(`${label.padEnd(28)} ${median(times).toFixed(2)} ms  (median of ${runs}, ${n} params, min ${Math.min(...times).toFixed(2)} ms)`);
}

time('AdamW (wd 0.01)', (p) => new AdamW(p, { lr: 1e-3, weightDecay: 0.01 }));
time('AdamW, JavaScript loop', (p) => new AdamW(p, { lr: 1e-3, weightDecay: 0.01, simd: false }));
time('Adam (wd 0.01)', (p) => new Adam(p, { lr: 1e-3, weightDecay: 0.01 }));
time('SGD (momentum 0.9, nesterov)', (p) => new SGD(p, { lr: 1e-2, momentum: 0.9, nesterov: true, weightDecay: 1e-4 }));
{
  const { grads } = setup();
  const times: number[] = [];
  for (let i = 0; i < 50; i++) {
    const t0 = performance.now();
    clipGradNorm(grads, 1e9);
    times.push(performance.now() - t0);
  }
  console.log(`${'clipGradNorm (no scaling)'.padEnd(28)} ${median(times).toFixed(2)} ms`);
}
