/** Small helpers the ONNX-level tests share: run a model once, expose extra outputs, compare, expect errors. */
import assert from 'node:assert/strict';
import * as ort from 'onnxruntime-node';
import { GraftError } from '../../src/errors.js';
import { encodeModel, type ModelProto } from '../../src/onnx/proto.js';

export type Feeds = Record<string, { data: Float32Array; dims: number[] }>;

/** Runs a model once on float32 feeds; returns the requested outputs (all graph outputs by default). */
export async function runModel(
  model: ModelProto | Uint8Array,
  feeds: Feeds,
  outputs?: string[],
  options: ort.InferenceSession.SessionOptions = {},
): Promise<Record<string, ort.Tensor>> {
  const session = await ort.InferenceSession.create(model instanceof Uint8Array ? model : encodeModel(model), options);
  try {
    const inputs: Record<string, ort.Tensor> = {};
    for (const [k, v] of Object.entries(feeds)) inputs[k] = new ort.Tensor('float32', v.data, v.dims);
    return await (outputs ? session.run(inputs, outputs) : session.run(inputs));
  } finally {
    await session.release();
  }
}

/** The model with `extra` tensors added as graph outputs (shapes left open; ones already outputs kept once). */
export function withOutputs(model: ModelProto, extra: string[]): ModelProto {
  const outputs = model.graph!.output ?? [];
  const have = new Set(outputs.map((o) => o.name!));
  return { ...model, graph: { ...model.graph!, output: [...outputs, ...extra.filter((e) => !have.has(e)).map((name) => ({ name }))] } } as ModelProto;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'lengths differ');
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** `fn` throws a GraftError with this code whose message matches every pattern. */
export function assertGraftError(fn: () => unknown, code: string, ...patterns: RegExp[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof GraftError, `expected a GraftError, got ${String(e)}`);
    assert.equal(e.code, code);
    for (const p of patterns) assert.match(e.message, p);
    return true;
  });
}
