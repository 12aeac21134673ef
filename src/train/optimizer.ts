/**
 * Optimizers update weight arrays in place from gradient arrays: a fused loop over Float32Arrays costs a few
 * milliseconds where the same update as ONNX ops costs far more (measured for fine-tuning, issue 3).
 */
import type { Param } from '../head/head.js';

export interface AdamWOptions {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Decoupled weight decay (AdamW), applied to parameters whose `decay` flag is set. */
  weightDecay?: number;
}

export class AdamW {
  private readonly m: Float32Array[];
  private readonly v: Float32Array[];
  private t = 0;
  lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;

  constructor(readonly params: readonly Param[], options: AdamWOptions) {
    this.lr = options.lr;
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.999;
    this.eps = options.eps ?? 1e-8;
    this.weightDecay = options.weightDecay ?? 0;
    this.m = params.map((p) => new Float32Array(p.data.length));
    this.v = params.map((p) => new Float32Array(p.data.length));
  }

  /** One step; `grads[i]` is the gradient of `params[i]`. */
  step(grads: readonly Float32Array[]): void {
    this.t++;
    const { beta1: b1, beta2: b2, eps, lr } = this;
    const c1 = 1 / (1 - b1 ** this.t);
    const c2 = 1 / (1 - b2 ** this.t);
    this.params.forEach((p, k) => {
      const w = p.data;
      const g = grads[k]!;
      const m = this.m[k]!;
      const v = this.v[k]!;
      const decay = p.decay ? 1 - lr * this.weightDecay : 1;
      for (let i = 0; i < w.length; i++) {
        const gi = g[i]!;
        const mi = (m[i] = b1 * m[i]! + (1 - b1) * gi);
        const vi = (v[i] = b2 * v[i]! + (1 - b2) * gi * gi);
        w[i] = w[i]! * decay - (lr * mi * c1) / (Math.sqrt(vi * c2) + eps);
      }
    });
  }
}
