/**
 * Multinomial L2 logistic regression on standardised features, solved to optimality by L-BFGS: the linear
 * head's weights solved for rather than trained by epochs of SGD. The objective is sklearn's LogisticRegression
 * (L2, intercept unpenalised) divided by N, so a C means what it means there:
 *
 *   f(W, b) = mean_i CE(softmax(z_i W + b), y_i) + ||W||² / (2·C·N),   z_i = (x_i − mean) · invStd
 *
 * The data term runs as an ONNX graph (buildLogisticGraph: two matrix products per evaluation, on ONNX Runtime's
 * kernels); the penalty and the L-BFGS update are here.
 */
import { GraftError } from '../errors.js';
import { GraphBuilder } from '../onnx/builder.js';
import { DataType, type ModelProto } from '../onnx/proto.js';
import type { HeadParams } from './head.js';

/** The objective at theta ([dim·K weights, K biases]), writing its gradient into `grad`. */
export type Objective = (theta: Float64Array, grad: Float64Array) => number | Promise<number>;

export interface LogisticOptions {
  /** Warm start: the solution for a neighbouring C (same problem). */
  init?: Float64Array;
  /** Stop when the gradient's largest component is below this (default 1e-5). */
  gradientTolerance?: number;
  maxIterations?: number;
}

export interface LogisticSolution {
  /** [dim, numClasses] then [numClasses]: W (as Gemm's B) and b, in float64. */
  theta: Float64Array;
  objective: number;
  iterations: number;
  converged: boolean;
}

/**
 * Adds the L2 penalty ||W||² / (2·C·n) (the first `weights` entries of theta; the biases are not penalised) to a
 * data term that is a mean over n rows: sklearn's C on the 1/n scale.
 */
export function withPenalty(data: Objective, weights: number, C: number, n: number): Objective {
  if (!(C > 0 && Number.isFinite(C))) throw new GraftError('USAGE', `C must be a positive number, got ${C}`);
  const reg = 1 / (C * n);
  return async (theta, grad) => {
    let f = await data(theta, grad);
    for (let i = 0; i < weights; i++) {
      const w = theta[i]!;
      f += 0.5 * reg * w * w;
      grad[i]! += reg * w;
    }
    return f;
  };
}

const HISTORY = 10;

/** Minimises a smooth convex objective of `size` variables by L-BFGS (two-loop recursion, backtracking Armijo line search). */
export async function minimize(objective: Objective, size: number, options: LogisticOptions = {}): Promise<LogisticSolution> {
  const tol = options.gradientTolerance ?? 1e-5;
  const maxIterations = options.maxIterations ?? 500;
  const x = options.init ? options.init.slice() : new Float64Array(size);
  if (x.length !== size) throw new GraftError('TRAIN', `warm start of ${x.length} values for a problem of ${size}`);
  let g = new Float64Array(size);
  let f = await objective(x, g);
  const S: Float64Array[] = [];
  const Y: Float64Array[] = [];
  const rho: number[] = [];
  const alpha = new Float64Array(HISTORY);
  const d = new Float64Array(size);
  const xNew = new Float64Array(size);
  let gNew = new Float64Array(size);
  let iterations = 0;
  let converged = maxAbs(g) < tol;
  while (!converged && iterations < maxIterations) {
    // d = −H·g by the two-loop recursion; H0 = γI with γ from the newest pair.
    for (let i = 0; i < size; i++) d[i] = -g[i]!;
    for (let m = S.length - 1; m >= 0; m--) {
      alpha[m] = rho[m]! * dot(S[m]!, d);
      axpy(-alpha[m]!, Y[m]!, d);
    }
    const gamma = S.length ? dot(S[S.length - 1]!, Y[Y.length - 1]!) / dot(Y[Y.length - 1]!, Y[Y.length - 1]!) : 1 / Math.max(Math.sqrt(dot(g, g)), 1e-12);
    for (let i = 0; i < size; i++) d[i]! *= gamma;
    for (let m = 0; m < S.length; m++) axpy(alpha[m]! - rho[m]! * dot(Y[m]!, d), S[m]!, d);
    let slope = dot(g, d);
    if (!(slope < 0)) {
      // Not a descent direction (numerical trouble): restart from steepest descent.
      S.length = Y.length = rho.length = 0;
      for (let i = 0; i < size; i++) d[i] = -g[i]! / Math.max(Math.sqrt(dot(g, g)), 1e-12);
      slope = dot(g, d);
    }
    let step = 1;
    let fNew = Infinity;
    for (let tries = 0; tries < 40; tries++) {
      for (let i = 0; i < size; i++) xNew[i] = x[i]! + step * d[i]!;
      fNew = await objective(xNew, gNew);
      if (fNew <= f + 1e-4 * step * slope) break;
      step *= 0.5;
    }
    iterations++;
    if (!(fNew < f)) break; // no decrease possible at float precision: as good as it gets
    const s = new Float64Array(size);
    const yv = new Float64Array(size);
    for (let i = 0; i < size; i++) {
      s[i] = xNew[i]! - x[i]!;
      yv[i] = gNew[i]! - g[i]!;
    }
    const sy = dot(s, yv);
    if (sy > 1e-12 * dot(yv, yv)) {
      if (S.length === HISTORY) {
        S.shift();
        Y.shift();
        rho.shift();
      }
      S.push(s);
      Y.push(yv);
      rho.push(1 / sy);
    }
    const decrease = f - fNew;
    x.set(xNew);
    [g, gNew] = [gNew, g];
    f = fNew;
    converged = maxAbs(g) < tol || decrease <= 1e-14 * Math.max(Math.abs(f), 1);
  }
  return { theta: x, objective: f, iterations, converged };
}

/** The solution as the `linear` head's parameters (fc.weight [dim, K], fc.bias [K]). */
export function logisticParams(solution: LogisticSolution, dim: number, numClasses: number): HeadParams {
  const WK = dim * numClasses;
  return [
    { name: 'fc.weight', dims: [dim, numClasses], data: Float32Array.from(solution.theta.subarray(0, WK)), decay: true },
    { name: 'fc.bias', dims: [numClasses], data: Float32Array.from(solution.theta.subarray(WK)), decay: false },
  ];
}

function dot(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

function axpy(a: number, x: Float64Array, y: Float64Array): void {
  for (let i = 0; i < y.length; i++) y[i]! += a * x[i]!;
}

function maxAbs(a: Float64Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}

/**
 * The data term of the objective over rows with weights (summing to 1 over the rows that train; 0 leaves a row
 * out, e.g. a held-out fold), and every row's logits:
 *   inputs  x [N, D] raw features, mean [D], inv_std [D] (the standardiser), w [D, K], b [K],
 *           onehot [N, K] labels, weight [N, 1]
 *   outputs loss = −Σ weight·log softmax(z w + b)[y], grad_w [D, K], grad_b [K], logits [N, K]
 * Gradients written out by hand (G = (softmax − onehot)·weight, grad_w = zᵀG, grad_b = Σ G): no autodiff needed.
 */
export function buildLogisticGraph(dim: number, numClasses: number): ModelProto {
  const b = new GraphBuilder('logistic_objective');
  const x = b.input('x', DataType.FLOAT, ['N', dim]);
  const mean = b.input('mean', DataType.FLOAT, [dim]);
  const invStd = b.input('inv_std', DataType.FLOAT, [dim]);
  const w = b.input('w', DataType.FLOAT, [dim, numClasses]);
  const bias = b.input('b', DataType.FLOAT, [numClasses]);
  const onehot = b.input('onehot', DataType.FLOAT, ['N', numClasses]);
  const weight = b.input('weight', DataType.FLOAT, ['N', 1]);
  const z = b.op('Mul', [b.op('Sub', [x, mean]), invStd]);
  b.op('Gemm', [z, w, bias], {}, { outputs: ['logits'] });
  const logp = b.op('LogSoftmax', ['logits'], { axis: 1 });
  const weighted = b.op('Mul', [onehot, weight]);
  b.op('Neg', [b.op('ReduceSum', [b.op('Mul', [logp, weighted])], { keepdims: 0 })], {}, { outputs: ['loss'] });
  const g = b.op('Sub', [b.op('Mul', [b.op('Exp', [logp]), weight]), weighted]);
  b.op('Gemm', [z, g], { transA: 1 }, { outputs: ['grad_w'] });
  b.op('ReduceSum', [g, b.constant('axis0', BigInt64Array.of(0n), [1])], { keepdims: 0 }, { outputs: ['grad_b'] });
  b.output('loss', DataType.FLOAT, []);
  b.output('grad_w', DataType.FLOAT, [dim, numClasses]);
  b.output('grad_b', DataType.FLOAT, [numClasses]);
  b.output('logits', DataType.FLOAT, ['N', numClasses]);
  return b.model(17);
}
