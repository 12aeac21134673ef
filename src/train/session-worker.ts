/**
 * Worker side of RemoteSession: one ONNX Runtime session whose `run` (which blocks its thread) runs here, so
 * the main thread stays responsive. Feeds arrive in per-name shared staging buffers (copied here into private
 * buffers, since ONNX Runtime rejects SharedArrayBuffer-backed tensors) or as transferred private buffers;
 * outputs go back transferred.
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';

export type FeedType = 'float32' | 'int64';

export interface SessionWorkerData {
  model: Uint8Array;
  threads?: number;
  spin?: boolean;
}

/**
 * One feed of a request: either `bytes` in the staging buffer of its name (`stage` comes along when that
 * buffer is new, and is kept for later requests), or its own `buffer`, transferred.
 */
export type FeedMessage = { name: string; type: FeedType; dims: number[] } & ({ bytes: number; stage?: SharedArrayBuffer } | { buffer: ArrayBuffer });

export type SessionRequest = { kind: 'run'; id: number; feeds: FeedMessage[]; outputs?: string[] } | { kind: 'release' };

export type SessionReply =
  | { kind: 'ready'; inputNames: string[]; outputNames: string[] }
  | { kind: 'failed'; error: string }
  | { kind: 'result'; id: number; outputs: Record<string, { data: Float32Array; dims: number[] }> }
  | { kind: 'error'; id: number; error: string }
  | { kind: 'released' };

const port = parentPort!;
const data = workerData as SessionWorkerData;

const session = await ort.InferenceSession.create(data.model, {
  ...(data.threads ? { intraOpNumThreads: data.threads } : {}),
  ...(data.spin === false ? { extra: { session: { intra_op: { allow_spinning: '0' } } } } : {}),
}).catch((e: Error) => {
  port.postMessage({ kind: 'failed', error: e.message } satisfies SessionReply);
  return undefined;
});

/** Staging buffers by feed name (shared with the main thread) and the private copies ONNX Runtime reads. */
const stages = new Map<string, SharedArrayBuffer>();
const privates = new Map<string, ArrayBuffer>();
const ownBuffers = new Set<ArrayBuffer>();

function privateBuffer(name: string, bytes: number): ArrayBuffer {
  let buffer = privates.get(name);
  if (!buffer || buffer.byteLength < bytes) {
    if (buffer) ownBuffers.delete(buffer);
    buffer = new ArrayBuffer(bytes);
    privates.set(name, buffer);
    ownBuffers.add(buffer);
  }
  return buffer;
}

function toTensor(feed: FeedMessage): ort.Tensor {
  let buffer: ArrayBuffer;
  let bytes: number;
  if ('buffer' in feed) {
    buffer = feed.buffer;
    bytes = buffer.byteLength;
  } else {
    if (feed.stage) stages.set(feed.name, feed.stage);
    const stage = stages.get(feed.name);
    if (!stage) throw new Error(`no staging buffer for feed ${feed.name}`);
    bytes = feed.bytes;
    buffer = privateBuffer(feed.name, bytes);
    new Uint8Array(buffer, 0, bytes).set(new Uint8Array(stage, 0, bytes));
  }
  return feed.type === 'int64'
    ? new ort.Tensor('int64', new BigInt64Array(buffer, 0, bytes / 8), feed.dims)
    : new ort.Tensor('float32', new Float32Array(buffer, 0, bytes / 4), feed.dims);
}

async function run(session: ort.InferenceSession, req: Extract<SessionRequest, { kind: 'run' }>): Promise<void> {
  try {
    const feeds: Record<string, ort.Tensor> = {};
    for (const f of req.feeds) feeds[f.name] = toTensor(f);
    const results = req.outputs ? await session.run(feeds, req.outputs) : await session.run(feeds);
    const outputs: Record<string, { data: Float32Array; dims: number[] }> = {};
    const transfer = new Set<ArrayBuffer>();
    for (const [name, t] of Object.entries(results)) {
      if (t.type !== 'float32') throw new Error(`output ${name} is ${t.type}; only float32 outputs are returned`);
      let out = t.data as Float32Array;
      // Never hand away a buffer this worker reuses (an output could alias a feed).
      if (ownBuffers.has(out.buffer as ArrayBuffer) || out.buffer instanceof SharedArrayBuffer) out = out.slice();
      transfer.add(out.buffer as ArrayBuffer);
      outputs[name] = { data: out, dims: [...t.dims] };
    }
    port.postMessage({ kind: 'result', id: req.id, outputs } satisfies SessionReply, [...transfer]);
  } catch (e) {
    port.postMessage({ kind: 'error', id: req.id, error: (e as Error).message } satisfies SessionReply);
  }
}

// One request at a time: `run` starts on a later tick, and the next request must not overwrite a private
// buffer before then.
function serve(session: ort.InferenceSession): void {
  let queue = Promise.resolve();
  port.on('message', (req: SessionRequest) => {
    if (req.kind === 'run') queue = queue.then(() => run(session, req));
    else if (req.kind === 'release')
      queue = queue.then(async () => {
        await session.release();
        port.postMessage({ kind: 'released' } satisfies SessionReply);
      });
    // A request this worker does not understand is a bug on the other side: end the worker (the main thread
    // then rejects whatever is pending).
    else throw new Error(`unknown session request ${JSON.stringify((req as { kind?: unknown }).kind)}`);
  });
  port.postMessage({ kind: 'ready', inputNames: [...session.inputNames], outputNames: [...session.outputNames] } satisfies SessionReply);
}

// Without a session no listener is installed, and the worker ends once 'failed' is posted.
if (session) serve(session);
