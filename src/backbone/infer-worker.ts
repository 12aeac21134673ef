/**
 * Runs the cut backbone in a worker thread so the main thread stays free to read files, dispatch decoding
 * and report progress while ONNX Runtime (whose `run` blocks its thread) computes a batch.
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';

export interface InferWorkerData {
  model: Uint8Array;
  inputName: string;
  outputName: string;
  /** Shape of one image, e.g. [3, 224, 224]. */
  itemShape: number[];
  maxBatch: number;
  threads: number;
  /** Let idle intra-op threads spin (fastest when nothing else needs the cores). */
  spin: boolean;
}
export type InferRequest = { id: number; input: Float32Array; n: number };
export type InferReply = { id: number; output: Float32Array } | { id: number; error: string };

const data = workerData as InferWorkerData;
const port = parentPort!;
const stride = data.itemShape.reduce((a, b) => a * b, 1);
// ONNX Runtime does not accept SharedArrayBuffer-backed tensors; copy into one reused private buffer.
const own = new Float32Array(stride * data.maxBatch);
const session = await ort.InferenceSession.create(data.model, {
  intraOpNumThreads: data.threads,
  interOpNumThreads: 1,
  graphOptimizationLevel: 'all',
  // Decoding shares the cores: idle ONNX Runtime threads must sleep, not spin.
  ...(data.spin ? {} : { extra: { session: { intra_op: { allow_spinning: '0' } } } }),
});

async function handle(req: InferRequest): Promise<void> {
  try {
    own.set(req.input.subarray(0, req.n * stride));
    const x = new ort.Tensor('float32', own.subarray(0, req.n * stride), [req.n, ...data.itemShape]);
    const out = (await session.run({ [data.inputName]: x }))[data.outputName]!;
    const output = new Float32Array(out.data as Float32Array);
    port.postMessage({ id: req.id, output } satisfies InferReply, [output.buffer]);
  } catch (e) {
    port.postMessage({ id: req.id, error: (e as Error).message } satisfies InferReply);
  }
}

// One batch at a time: `run` only starts on a later tick, and the next request must not overwrite `own` first.
let queue = Promise.resolve();
port.on('message', (req: InferRequest) => {
  queue = queue.then(() => handle(req));
});
port.postMessage({ ready: true });
