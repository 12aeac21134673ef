/**
 * Schedules are pure functions of the training position pos ∈ [0, 1] (fastai's annealers), joined by
 * combine(); a Scheduler turns them into per-group hyper-parameters step by step.
 *
 * A learning-rate schedule gives a multiplier of each group's base LR, so discriminative rates keep their
 * ratios (fastai scales its schedule per group the same way); a momentum schedule gives the value itself.
 */
import { invalidParameter } from '../errors.js';
import type { Optimizer } from './optimizer.js';

export type Schedule = (pos: number) => number;

/** The same value everywhere (fastai's SchedNo). */
export function constant(value: number): Schedule {
  return () => value;
}

/** Straight line from start (pos 0) to end (pos 1) (SchedLin). */
export function linear(start: number, end: number): Schedule {
  return (pos) => start + pos * (end - start);
}

/** Half a cosine from start to end: start + (1 + cos(π·(1 − pos)))·(end − start)/2 (SchedCos). */
export function cosine(start: number, end: number): Schedule {
  return (pos) => start + ((1 + Math.cos(Math.PI * (1 - pos))) * (end - start)) / 2;
}

/** Geometric from start to end: start·(end/start)^pos (SchedExp). */
export function exponential(start: number, end: number): Schedule {
  return (pos) => start * (end / start) ** pos;
}

/** start + (end − start)·pos^power (SchedPoly). */
export function polynomial(start: number, end: number, power: number): Schedule {
  return (pos) => start + (end - start) * pos ** power;
}

/** value·gamma^k where k counts the milestones (positions in [0, 1]) at or before pos (MultiStepLR over positions). */
export function step(value: number, milestones: readonly number[], gamma = 0.1): Schedule {
  const sorted = [...milestones].sort((a, b) => a - b);
  return (pos) => {
    let k = 0;
    while (k < sorted.length && pos >= sorted[k]!) k++;
    return value * gamma ** k;
  };
}

/**
 * fastai's combine_scheds: schedule i runs over the i-th share `pcts[i]` of training (the shares sum to 1),
 * seeing its own position rescaled to [0, 1]. At a boundary the later schedule starts; zero-length
 * segments are skipped, and pos 1 ends the last non-empty one.
 */
export function combine(pcts: readonly number[], scheds: readonly Schedule[]): Schedule {
  if (pcts.length === 0 || pcts.length !== scheds.length) throw invalidParameter('pcts', `one share per schedule (${scheds.length})`, pcts.length);
  if (pcts.some((p) => !(p >= 0))) throw invalidParameter('pcts', 'shares ≥ 0', pcts.join(', '));
  const sum = pcts.reduce((a, b) => a + b, 0);
  if (Math.abs(sum - 1) > 1e-9) throw invalidParameter('pcts', 'shares summing to 1', sum);
  const starts: number[] = [];
  let acc = 0;
  for (const p of pcts) {
    starts.push(acc);
    acc += p;
  }
  return (pos) => {
    let idx = -1;
    for (let i = 0; i < pcts.length; i++) if (pcts[i]! > 0 && (idx < 0 || pos >= starts[i]!)) idx = i;
    const local = Math.min(1, Math.max(0, (pos - starts[idx]!) / pcts[idx]!));
    return scheds[idx]!(local);
  };
}

/** fastai's combined_cos: cosine from start to middle over pct, then cosine from middle to end. */
export function combinedCos(pct: number, start: number, middle: number, end: number): Schedule {
  return combine([pct, 1 - pct], [cosine(start, middle), cosine(middle, end)]);
}

/**
 * Linear warmup over the first `pct` of training from from·after(0) to after(0), then `after` over the rest
 * (rescaled). For a warmup of `steps` out of `total` steps use warmup(steps / total, …).
 */
export function warmup(pct: number, after: Schedule, from = 0): Schedule {
  if (!(pct >= 0 && pct <= 1)) throw invalidParameter('pct', 'a share in [0, 1]', pct);
  const top = after(0);
  return combine([pct, 1 - pct], [linear(from * top, top), after]);
}

export interface OneCycleOptions {
  /** The LR starts at lrMax / div (25). */
  div?: number;
  /** The LR ends at lrMax / divFinal (1e5). */
  divFinal?: number;
  /** Share of training spent rising to lrMax (0.25). */
  pctStart?: number;
  /** Momentum (SGD) or β1 (Adam) at start, peak LR, end: (0.95, 0.85, 0.95). */
  moms?: readonly [number, number, number];
}

/**
 * fastai's fit_one_cycle: the LR multiplier rises by a cosine from 1/div to 1 over pctStart, then falls by a
 * cosine to 1/divFinal; momentum moves inversely, from moms[0] down to moms[1] and back up to moms[2].
 */
export function oneCycle(options: OneCycleOptions = {}): { lr: Schedule; momentum: Schedule } {
  const { div = 25, divFinal = 1e5, pctStart = 0.25, moms = [0.95, 0.85, 0.95] } = options;
  return {
    lr: combinedCos(pctStart, 1 / div, 1, 1 / divFinal),
    momentum: combinedCos(pctStart, moms[0], moms[1], moms[2]),
  };
}

export interface Schedules {
  /** Multiplier of each group's base LR. */
  lr?: Schedule;
  /** Each group's momentum (SGD) or β1 (Adam), as a value. */
  momentum?: Schedule;
  /** Each group's weight decay, as a multiplier of its base value. */
  weightDecay?: Schedule;
}

/**
 * Sets an optimizer's hyper-parameters for each step of a run of `totalSteps` steps, at position
 * step / totalSteps (fastai's ParamScheduler: the first step sees pos 0). Base LRs (and decays) are read
 * from the groups when the Scheduler is made, so set discriminative LRs first.
 */
export class Scheduler {
  readonly baseLrs: readonly number[];
  readonly baseWeightDecays: readonly number[];

  constructor(readonly optimizer: Optimizer, readonly totalSteps: number, readonly schedules: Schedules) {
    if (!(Number.isInteger(totalSteps) && totalSteps >= 1)) throw invalidParameter('totalSteps', 'an integer ≥ 1', totalSteps);
    this.baseLrs = optimizer.groups.map((g) => g.lr);
    this.baseWeightDecays = optimizer.groups.map((g) => g.weightDecay);
  }

  /** The position of a 0-based step: step / totalSteps, clamped to [0, 1]. */
  pos(stepIndex: number): number {
    return Math.min(1, Math.max(0, stepIndex / this.totalSteps));
  }

  /** Sets every group's hyper-parameters for the 0-based step `stepIndex`; call before optimizer.step(). Idempotent. */
  setStep(stepIndex: number): void {
    const pos = this.pos(stepIndex);
    const { lr, momentum, weightDecay } = this.schedules;
    const groups = this.optimizer.groups;
    const lrMult = lr ? lr(pos) : 1;
    const mom = momentum ? momentum(pos) : NaN;
    const wdMult = weightDecay ? weightDecay(pos) : 1;
    for (let i = 0; i < groups.length; i++) {
      const g = groups[i]!;
      if (lr) g.lr = this.baseLrs[i]! * lrMult;
      if (momentum) g.momentum = mom;
      if (weightDecay) g.weightDecay = this.baseWeightDecays[i]! * wdMult;
    }
  }
}
