/**
 * Runs the cut backbone in a worker thread so the main thread stays free to read files, dispatch encoding
 * and report progress while ONNX Runtime (whose `run` blocks its thread) computes a batch. Feeds are named
 * and typed (an image tensor, or token ids with their mask); a float feed on shared memory is copied into
 * a private buffer, since ONNX Runtime does not accept SharedArrayBuffer-backed tensors.
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import type { Feed } from '../preprocess/pipeline.js';

export interface InferWorkerData {
  model: Uint8Array;
  outputName: string;
  threads: number;
  /** Let idle intra-op threads spin (fastest when nothing else needs the cores). */
  spin: boolean;
}
export type InferRequest = { id: number; feeds: Record<string, Feed> };
export type InferReply = { id: number; output: Float32Array; dims: number[] } | { id: number; error: string };

const data = workerData as InferWorkerData;
const port = parentPort!;
/** Private copies of shared feeds, by name, reused while big enough. */
const own = new Map<string, Float32Array>();
const session = await ort.InferenceSession.create(data.model, {
  intraOpNumThreads: data.threads,
  interOpNumThreads: 1,
  graphOptimizationLevel: 'all',
  // Encoding shares the cores: idle ONNX Runtime threads must sleep, not spin.
  ...(data.spin ? {} : { extra: { session: { intra_op: { allow_spinning: '0' } } } }),
});

function tensor(name: string, f: Feed): ort.Tensor {
  const size = f.dims.reduce((a, b) => a * b, 1);
  if (f.type === 'int64') return new ort.Tensor('int64', (f.data as BigInt64Array).subarray(0, size), [...f.dims]);
  let x = f.data as Float32Array;
  if (x.buffer instanceof SharedArrayBuffer) {
    let buf = own.get(name);
    if (!buf || buf.length < size) own.set(name, (buf = new Float32Array(size)));
    buf.set(x.subarray(0, size));
    x = buf;
  }
  return new ort.Tensor('float32', x.subarray(0, size), [...f.dims]);
}

async function handle(req: InferRequest): Promise<void> {
  try {
    const feeds: Record<string, ort.Tensor> = {};
    for (const name of session.inputNames) {
      const f = req.feeds[name];
      if (!f) throw new Error(`no feed for the model input ${name}`);
      feeds[name] = tensor(name, f);
    }
    const out = (await session.run(feeds))[data.outputName]!;
    const output = new Float32Array(out.data as Float32Array);
    port.postMessage({ id: req.id, output, dims: [...out.dims] } satisfies InferReply, [output.buffer]);
  } catch (e) {
    port.postMessage({ id: req.id, error: (e as Error).message } satisfies InferReply);
  }
}

// One batch at a time: `run` only starts on a later tick, and the next request must not overwrite a private copy first.
let queue = Promise.resolve();
port.on('message', (req: InferRequest) => {
  queue = queue.then(() => handle(req));
});
port.postMessage({ ready: true });
