/**
 * Optimizers over parameter groups (fastai's shape): every group carries its own hyper-parameters (learning
 * rate, weight decay, momentum) and can be frozen, so a backbone and a head train at different rates
 * (`setLr({ lo, hi })`) and fine-tuning starts with only the head trainable (`freeze()`).
 *
 * The update rules are fused in-place loops over Float32Arrays, written after PyTorch's documented
 * algorithms (torch.optim.SGD, Adam, AdamW): a fused loop costs a few milliseconds where the same update as
 * ONNX ops costs far more (measured for fine-tuning, issue 3). Moment buffers are float32, as in torch, and
 * are created at a parameter's first update; after that step() allocates nothing.
 */
import { GraftError, invalidParameter } from '../errors.js';
import type { Param } from '../head/head.js';
import { AdamKernel } from './adam-kernel.js';

/** One group of parameters with its own hyper-parameters. A frozen group is skipped by step() entirely. */
export interface ParamGroup {
  name: string;
  params: Param[];
  lr: number;
  weightDecay: number;
  frozen: boolean;
  /** SGD's momentum, or Adam's β1 (fastai's `mom`): what a one-cycle schedule cycles inverse to the LR. */
  momentum: number;
}

/** A group as given to a constructor: unset hyper-parameters take the optimizer's defaults. */
export interface GroupSpec {
  name?: string;
  params: Param[];
  lr?: number;
  weightDecay?: number;
  momentum?: number;
  frozen?: boolean;
}

/** Gradients by parameter name, or one per parameter aligned with `optimizer.params` (all groups, in order). */
export type Grads = ReadonlyMap<string, Float32Array> | readonly (Float32Array | undefined)[];

/** The hyper-parameters that setHyper() spreads over groups. */
export type Hyper = 'lr' | 'weightDecay' | 'momentum';

/**
 * A value for every group: one number for all; one per group; or fastai's `slice(lo, hi)`: geometrically
 * spaced from `lo` (first group) to `hi` (last group); `{ hi }` alone gives hi/10 to all but the last group.
 */
export type HyperValue = number | readonly number[] | { lo?: number; hi: number };

/** Checkpointable optimizer state: plain arrays and numbers (JSON-safe), so training can resume. */
export interface OptimizerState {
  kind: string;
  groups: Array<{ name: string; lr: number; weightDecay: number; momentum: number; frozen: boolean }>;
  /** One entry per parameter, in `optimizer.params` order; `buffers` is null before its first update. */
  params: Array<{ name: string; step: number; buffers: number[][] | null }>;
}

/** OptimizerState with the moments as Float32Array copies: what checkpoints store (state()'s plain arrays cost ~200 ns a value). */
export type TypedOptimizerState = Omit<OptimizerState, 'params'> & { params: Array<{ name: string; step: number; buffers: Float32Array[] | null }> };

/** Per-parameter optimizer state. */
export interface ParamSlot {
  /** Updates applied to this parameter (torch's per-parameter `step`). */
  step: number;
  /** Moment buffers (SGD: [momentum_buffer]; Adam: [exp_avg, exp_avg_sq]); null until first needed. */
  buffers: Float32Array[] | null;
}

/** Spreads `value` over `n` groups (fastai's `set_hyper` with `even_mults` for a slice). */
export function spread(value: HyperValue, n: number, name = 'value'): number[] {
  if (typeof value === 'number') return new Array<number>(n).fill(value);
  if (Array.isArray(value)) {
    const list = value as readonly number[];
    if (list.length !== n) throw invalidParameter(name, `${n} values (one per group)`, `${list.length} values`);
    return [...list];
  }
  const { lo, hi } = value as { lo?: number; hi: number };
  if (lo === undefined) return Array.from({ length: n }, (_, i) => (i === n - 1 ? hi : hi / 10));
  if (n === 1) return [hi];
  if (!(lo > 0 && hi > 0)) throw invalidParameter(name, 'positive lo and hi for a geometric spread', `{ lo: ${lo}, hi: ${hi} }`);
  // even_mults(lo, hi, n): lo · (hi/lo)^(i/(n−1)).
  const ratio = hi / lo;
  return Array.from({ length: n }, (_, i) => (i === n - 1 ? hi : lo * ratio ** (i / (n - 1))));
}

function checkNumber(name: string, v: number, min = 0): void {
  if (!(typeof v === 'number' && Number.isFinite(v) && v >= min)) throw invalidParameter(name, `a finite number ≥ ${min}`, v);
}

/**
 * Parameter groups, freezing, hyper-parameter spreading and checkpointing; subclasses supply the update
 * rule for one parameter.
 */
export abstract class Optimizer {
  readonly groups: ParamGroup[];
  /** Every parameter of every group, in order: the order of an aligned gradient array and of state(). */
  readonly params: readonly Param[];
  private readonly slots: ParamSlot[];
  /** Group index of params[i]. */
  private readonly groupOf: Int32Array;
  protected abstract readonly kind: string;
  /** Number of moment buffers per parameter. */
  protected abstract readonly bufferCount: number;

  protected constructor(paramsOrGroups: readonly Param[] | readonly GroupSpec[], defaults: { lr: number; weightDecay: number; momentum: number }) {
    if (paramsOrGroups.length === 0) throw invalidParameter('params', 'at least one parameter or group', 'an empty list');
    const specs: GroupSpec[] = 'data' in paramsOrGroups[0]! ? [{ params: [...(paramsOrGroups as readonly Param[])] }] : [...(paramsOrGroups as readonly GroupSpec[])];
    this.groups = specs.map((g, i) => {
      const group: ParamGroup = {
        name: g.name ?? `group${i}`,
        params: [...g.params],
        lr: g.lr ?? defaults.lr,
        weightDecay: g.weightDecay ?? defaults.weightDecay,
        momentum: g.momentum ?? defaults.momentum,
        frozen: g.frozen ?? false,
      };
      checkNumber(`${group.name}.lr`, group.lr);
      checkNumber(`${group.name}.weightDecay`, group.weightDecay);
      checkNumber(`${group.name}.momentum`, group.momentum);
      return group;
    });
    const params: Param[] = [];
    const groupOf: number[] = [];
    const names = new Set<string>();
    this.groups.forEach((g, gi) => {
      for (const p of g.params) {
        if (names.has(p.name)) throw invalidParameter('params', 'each parameter in one group only (unique names)', p.name);
        names.add(p.name);
        params.push(p);
        groupOf.push(gi);
      }
    });
    this.params = params;
    this.groupOf = Int32Array.from(groupOf);
    this.slots = params.map(() => ({ step: 0, buffers: null }));
  }

  /** Updates one parameter in place from its gradient; `slot.step` has already been incremented. */
  protected abstract update(w: Float32Array, g: Float32Array, slot: ParamSlot, group: ParamGroup, decay: boolean, k: number): void;

  /** One step over every parameter of every trainable group; frozen groups are skipped (weights and state untouched). */
  step(grads: Grads): void {
    const byName = grads instanceof Map;
    if (!byName && (grads as readonly unknown[]).length !== this.params.length) {
      throw invalidParameter('grads', `${this.params.length} gradients aligned with the optimizer's parameters`, `${(grads as readonly unknown[]).length}`);
    }
    const { params, slots, groupOf, groups } = this;
    for (let k = 0; k < params.length; k++) {
      const group = groups[groupOf[k]!]!;
      if (group.frozen) continue;
      const p = params[k]!;
      const g = byName ? (grads as ReadonlyMap<string, Float32Array>).get(p.name) : (grads as readonly (Float32Array | undefined)[])[k];
      if (g === undefined) throw new GraftError('TRAIN', `no gradient for trainable parameter "${p.name}"`, { param: p.name, group: group.name });
      if (g.length !== p.data.length) throw new GraftError('TRAIN', `gradient of "${p.name}" has ${g.length} values, the parameter ${p.data.length}`, { param: p.name });
      const slot = slots[k]!;
      slot.step++;
      this.update(p.data, g, slot, group, p.decay, k);
    }
  }

  /** Forgets all optimizer state (step counts and moments), as for a fresh optimizer. */
  zeroState(): void {
    for (const s of this.slots) {
      s.step = 0;
      s.buffers = null;
    }
  }

  /** Sets one hyper-parameter on every group (see HyperValue for the ways to spread it). */
  setHyper(key: Hyper, value: HyperValue): void {
    const values = spread(value, this.groups.length, key);
    values.forEach((v, i) => checkNumber(`${this.groups[i]!.name}.${key}`, v));
    this.groups.forEach((g, i) => (g[key] = values[i]!));
  }

  /** Learning rates: one for all, one per group, or `{ lo, hi }` spread geometrically from the first group to the last. */
  setLr(lr: HyperValue): void {
    this.setHyper('lr', lr);
  }

  /** The last group's learning rate (the head's, in fine-tuning). */
  get lr(): number {
    return this.groups[this.groups.length - 1]!.lr;
  }

  /**
   * Freezes groups [0, n) and unfreezes groups [n, end); a negative n counts from the end, so freezeTo(-1)
   * leaves only the last group trainable (fastai's freeze_to).
   */
  freezeTo(n: number): void {
    const count = this.groups.length;
    if (!Number.isInteger(n) || n < -count || n > count) throw invalidParameter('n', `an integer in [${-count}, ${count}]`, n);
    const idx = n >= 0 ? n : count + n;
    this.groups.forEach((g, i) => (g.frozen = i < idx));
  }

  /** Only the last group trainable. */
  freeze(): void {
    this.freezeTo(-1);
  }

  /** Every group trainable. */
  unfreeze(): void {
    this.freezeTo(0);
  }

  /** A copy of the hyper-parameters and moments, as plain arrays. */
  state(): OptimizerState {
    return this.copyState((b) => Array.from(b));
  }

  /** state() with the moments as Float32Array copies (fast; for checkpoints, not JSON-safe). */
  typedState(): TypedOptimizerState {
    return this.copyState((b) => b.slice());
  }

  private copyState<T>(copy: (b: Float32Array) => T): { kind: string; groups: OptimizerState['groups']; params: Array<{ name: string; step: number; buffers: T[] | null }> } {
    return {
      kind: this.kind,
      groups: this.groups.map(({ name, lr, weightDecay, momentum, frozen }) => ({ name, lr, weightDecay, momentum, frozen })),
      params: this.params.map((p, k) => {
        const s = this.slots[k]!;
        return { name: p.name, step: s.step, buffers: s.buffers ? s.buffers.map(copy) : null };
      }),
    };
  }

  /** Restores state() (or typedState()) output into an optimizer of the same kind over the same parameters (weights are not part of it). */
  loadState(state: OptimizerState | TypedOptimizerState): void {
    if (state.kind !== this.kind) throw invalidParameter('state.kind', `"${this.kind}"`, state.kind);
    if (state.groups.length !== this.groups.length) throw invalidParameter('state.groups', `${this.groups.length} groups`, state.groups.length);
    if (state.params.length !== this.params.length) throw invalidParameter('state.params', `${this.params.length} parameters`, state.params.length);
    state.params.forEach((s, k) => {
      const p = this.params[k]!;
      if (s.name !== p.name) throw invalidParameter(`state.params[${k}].name`, `"${p.name}"`, s.name);
      if (s.buffers && (s.buffers.length !== this.bufferCount || s.buffers.some((b) => b.length !== p.data.length))) {
        throw invalidParameter(`state.params[${k}].buffers`, `${this.bufferCount} buffers of ${p.data.length} values`, `${s.buffers.length} buffers`);
      }
    });
    state.groups.forEach((g, i) => {
      const own = this.groups[i]!;
      if (g.name !== own.name) throw invalidParameter(`state.groups[${i}].name`, `"${own.name}"`, g.name);
      own.lr = g.lr;
      own.weightDecay = g.weightDecay;
      own.momentum = g.momentum;
      own.frozen = g.frozen;
    });
    state.params.forEach((s, k) => {
      const slot = this.slots[k]!;
      slot.step = s.step;
      slot.buffers = s.buffers ? (s.buffers as ReadonlyArray<ArrayLike<number>>).map((b) => (b instanceof Float32Array ? b.slice() : Float32Array.from(b))) : null;
    });
  }

  /** The moment buffers of a parameter, created (zeroed) at its first update. */
  protected buffers(slot: ParamSlot, size: number): Float32Array[] {
    if (!slot.buffers) slot.buffers = Array.from({ length: this.bufferCount }, () => new Float32Array(size));
    return slot.buffers;
  }
}

export interface SGDOptions {
  lr: number;
  momentum?: number;
  dampening?: number;
  nesterov?: boolean;
  /** Coupled L2 weight decay (added to the gradient), on parameters whose `decay` flag is set. */
  weightDecay?: number;
}

/**
 * torch.optim.SGD, per element (maximize = false):
 *   g ← g + λ·w                                  (λ = weight_decay, if the parameter decays)
 *   if μ ≠ 0:  b ← g at the first step with momentum, else b ← μ·b + (1 − τ)·g     (τ = dampening)
 *              g ← g + μ·b if nesterov, else g ← b
 *   w ← w − γ·g
 */
export class SGD extends Optimizer {
  protected readonly kind = 'sgd';
  protected readonly bufferCount = 1;
  readonly dampening: number;
  readonly nesterov: boolean;

  constructor(params: readonly Param[] | readonly GroupSpec[], options: SGDOptions) {
    super(params, { lr: options.lr, weightDecay: options.weightDecay ?? 0, momentum: options.momentum ?? 0 });
    this.dampening = options.dampening ?? 0;
    this.nesterov = options.nesterov ?? false;
    if (this.nesterov && (this.dampening !== 0 || this.groups.some((g) => !(g.momentum > 0)))) {
      throw invalidParameter('nesterov', 'momentum > 0 and dampening 0 (as torch requires)', `momentum ${this.groups.map((g) => g.momentum).join(', ')}, dampening ${this.dampening}`);
    }
  }

  protected update(w: Float32Array, g: Float32Array, slot: ParamSlot, group: ParamGroup, decay: boolean): void {
    const lr = group.lr;
    const wd = decay ? group.weightDecay : 0;
    const mu = group.momentum;
    const n = w.length;
    if (mu === 0) {
      for (let i = 0; i < n; i++) w[i] = w[i]! - lr * (g[i]! + wd * w[i]!);
      return;
    }
    const first = slot.buffers === null;
    const b = this.buffers(slot, n)[0]!;
    const damp = first ? 1 : 1 - this.dampening;
    const keep = first ? 0 : mu;
    if (this.nesterov) {
      for (let i = 0; i < n; i++) {
        const gi = g[i]! + wd * w[i]!;
        const bi = (b[i] = keep * b[i]! + damp * gi);
        w[i] = w[i]! - lr * (gi + mu * bi);
      }
    } else {
      for (let i = 0; i < n; i++) {
        const gi = g[i]! + wd * w[i]!;
        const bi = (b[i] = keep * b[i]! + damp * gi);
        w[i] = w[i]! - lr * bi;
      }
    }
  }
}

export interface AdamOptions {
  lr: number;
  /** β1; per group it is the group's `momentum`. */
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  /**
   * Run the update as WebAssembly SIMD in float32 (adam-kernel.ts; default, where available, about 5x faster)
   * or as a JavaScript loop in float64 (false).
   */
  simd?: boolean;
}

/**
 * The shared Adam moment update and step, per element, at step t (torch.optim.Adam, amsgrad = false):
 *   m ← β1·m + (1 − β1)·g        v ← β2·v + (1 − β2)·g²
 *   w ← w − (γ / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
 * Coupled (Adam) decay first adds λ·w to g; decoupled (AdamW) decay first sets w ← w − γ·λ·w.
 */
abstract class AdamBase extends Optimizer {
  protected readonly bufferCount = 2;
  readonly beta2: number;
  readonly eps: number;
  protected abstract readonly decoupled: boolean;

  protected constructor(params: readonly Param[] | readonly GroupSpec[], options: AdamOptions, defaultDecay: number) {
    super(params, { lr: options.lr, weightDecay: options.weightDecay ?? defaultDecay, momentum: options.beta1 ?? 0.9 });
    this.beta2 = options.beta2 ?? 0.999;
    this.eps = options.eps ?? 1e-8;
    if (options.simd === false) this.kernel = null;
  }

  /** The SIMD update (adam-kernel.ts), where WebAssembly has it; created at the first step. */
  private kernel: AdamKernel | null | undefined;

  protected update(w: Float32Array, g: Float32Array, slot: ParamSlot, group: ParamGroup, decay: boolean, k: number): void {
    const b1 = group.momentum;
    const b2 = this.beta2;
    const eps = this.eps;
    const lr = group.lr;
    const stepSize = lr / (1 - b1 ** slot.step);
    const invBc2Sqrt = 1 / Math.sqrt(1 - b2 ** slot.step);
    const wd = decay ? group.weightDecay : 0;
    if (this.kernel === undefined) this.kernel = AdamKernel.create(this.params.map((p) => p.data.length)) ?? null;
    if (this.kernel) {
      // The moments live in the kernel's memory: fresh ones zeroed there, restored ones (loadState) copied in.
      const [m, v] = this.kernel.moments(k);
      if (slot.buffers === null) {
        m.fill(0);
        v.fill(0);
      } else if (slot.buffers[0] !== m) {
        m.set(slot.buffers[0]!);
        v.set(slot.buffers[1]!);
      }
      slot.buffers = [m, v];
      this.kernel.step(k, w, g, {
        beta1: b1,
        beta2: b2,
        coupledDecay: this.decoupled ? 0 : wd,
        shrink: this.decoupled ? 1 - lr * wd : 1,
        stepSize,
        invBias2Sqrt: invBc2Sqrt,
        eps,
      });
      return;
    }
    const [m, v] = this.buffers(slot, w.length) as [Float32Array, Float32Array];
    const a1 = 1 - b1;
    const a2 = 1 - b2;
    const n = w.length;
    if (this.decoupled) {
      const shrink = 1 - lr * wd;
      for (let i = 0; i < n; i++) {
        const gi = g[i]!;
        const mi = (m[i] = b1 * m[i]! + a1 * gi);
        const vi = (v[i] = b2 * v[i]! + a2 * gi * gi);
        w[i] = w[i]! * shrink - (stepSize * mi) / (Math.sqrt(vi) * invBc2Sqrt + eps);
      }
    } else {
      for (let i = 0; i < n; i++) {
        const wi = w[i]!;
        const gi = g[i]! + wd * wi;
        const mi = (m[i] = b1 * m[i]! + a1 * gi);
        const vi = (v[i] = b2 * v[i]! + a2 * gi * gi);
        w[i] = wi - (stepSize * mi) / (Math.sqrt(vi) * invBc2Sqrt + eps);
      }
    }
  }
}

/** torch.optim.Adam: coupled L2 decay, g ← g + λ·w before the moments (default λ = 0, as torch). */
export class Adam extends AdamBase {
  protected readonly kind = 'adam';
  protected readonly decoupled = false;
  constructor(params: readonly Param[] | readonly GroupSpec[], options: AdamOptions) {
    super(params, options, 0);
  }
}

/** torch.optim.AdamW: decoupled decay, w ← w − γ·λ·w before the Adam step (default λ = 0.01, as torch). */
export class AdamW extends AdamBase {
  protected readonly kind = 'adamw';
  protected readonly decoupled = true;
  constructor(params: readonly Param[] | readonly GroupSpec[], options: AdamOptions) {
    super(params, options, 0.01);
  }
}

function eachGrad(grads: Grads, f: (g: Float32Array) => void): void {
  if (grads instanceof Map) {
    for (const g of (grads as ReadonlyMap<string, Float32Array>).values()) f(g);
  } else {
    const list = grads as readonly (Float32Array | undefined)[];
    for (let k = 0; k < list.length; k++) if (list[k]) f(list[k]!);
  }
}

function sumOfSquares(g: Float32Array): number {
  let s = 0;
  for (let i = 0; i < g.length; i++) s += g[i]! * g[i]!;
  return s;
}

function maxAbs(g: Float32Array): number {
  let s = 0;
  for (let i = 0; i < g.length; i++) s = Math.max(s, Math.abs(g[i]!));
  return s;
}

/**
 * torch.nn.utils.clip_grad_norm_: the norm of all gradients taken together (2-norm, or the largest magnitude
 * for Infinity); when it exceeds maxNorm every gradient is scaled in place by maxNorm / (norm + 1e-6).
 * Returns the norm before clipping. Unlike torch, a non-finite norm leaves the gradients as they are.
 */
export function clipGradNorm(grads: Grads, maxNorm: number, normType: 2 | typeof Infinity = 2): number {
  checkNumber('maxNorm', maxNorm);
  // Per-array reductions return plain numbers (a total captured by a closure would be boxed on every add).
  const inf = normType === Infinity;
  let total = 0;
  if (grads instanceof Map) {
    for (const g of (grads as ReadonlyMap<string, Float32Array>).values()) total = inf ? Math.max(total, maxAbs(g)) : total + sumOfSquares(g);
  } else {
    for (const g of grads as readonly (Float32Array | undefined)[]) if (g) total = inf ? Math.max(total, maxAbs(g)) : total + sumOfSquares(g);
  }
  if (!inf) total = Math.sqrt(total);
  const coef = maxNorm / (total + 1e-6);
  if (Number.isFinite(total) && coef < 1) {
    eachGrad(grads, (g) => {
      for (let i = 0; i < g.length; i++) g[i] = g[i]! * coef;
    });
  }
  return total;
}

/** torch.nn.utils.clip_grad_value_: clamps every gradient value into [−clipValue, clipValue] in place. */
export function clipGradValue(grads: Grads, clipValue: number): void {
  checkNumber('clipValue', clipValue);
  eachGrad(grads, (g) => {
    for (let i = 0; i < g.length; i++) {
      const x = g[i]!;
      if (x > clipValue) g[i] = clipValue;
      else if (x < -clipValue) g[i] = -clipValue;
    }
  });
}
