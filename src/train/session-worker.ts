/**
 * Worker side of RemoteSession: hosts one ONNX Runtime session at a time, whose `run` (which blocks its thread)
 * runs here so that the main thread stays responsive. Feeds arrive in per-name shared staging buffers (copied
 * here into private buffers, since ONNX Runtime rejects SharedArrayBuffer-backed tensors) or as transferred
 * private buffers; outputs go back transferred. After `release` the worker can host the next session.
 */
import { parentPort } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';

export type FeedType = 'float32' | 'int64';

/**
 * One feed of a request: either `bytes` in the staging buffer of its name (`stage` comes along when that
 * buffer is new, and is kept for later requests of the session), or its own `buffer`, transferred.
 */
export type FeedMessage = { name: string; type: FeedType; dims: number[] } & ({ bytes: number; stage?: SharedArrayBuffer } | { buffer: ArrayBuffer });

export type SessionRequest =
  | { kind: 'create'; model: Uint8Array; options: ort.InferenceSession.SessionOptions }
  | { kind: 'run'; id: number; feeds: FeedMessage[]; outputs?: string[] }
  | { kind: 'release' };

export type SessionReply =
  | { kind: 'idle' }
  | { kind: 'ready'; inputNames: string[]; outputNames: string[] }
  | { kind: 'failed'; error: string }
  /** `ms`: how long ONNX Runtime's run took. */
  | { kind: 'result'; id: number; outputs: Record<string, { data: Float32Array; dims: number[] }>; ms: number }
  | { kind: 'error'; id: number; error: string }
  | { kind: 'released' };

const port = parentPort!;
let session: ort.InferenceSession | undefined;
/** Staging buffers by feed name (shared with the main thread) and the private copies ONNX Runtime reads. */
const stages = new Map<string, SharedArrayBuffer>();
const privates = new Map<string, ArrayBuffer>();
const ownBuffers = new Set<ArrayBuffer>();

const reply = (m: SessionReply, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);

async function create(req: Extract<SessionRequest, { kind: 'create' }>): Promise<void> {
  try {
    session = await ort.InferenceSession.create(req.model, req.options);
    reply({ kind: 'ready', inputNames: [...session.inputNames], outputNames: [...session.outputNames] });
  } catch (e) {
    reply({ kind: 'failed', error: (e as Error).message });
  }
}

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

async function run(req: Extract<SessionRequest, { kind: 'run' }>): Promise<void> {
  try {
    if (!session) throw new Error('no session');
    const feeds: Record<string, ort.Tensor> = {};
    for (const f of req.feeds) feeds[f.name] = toTensor(f);
    const started = performance.now();
    const results = req.outputs ? await session.run(feeds, req.outputs) : await session.run(feeds);
    const ms = performance.now() - started;
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
    reply({ kind: 'result', id: req.id, outputs, ms }, [...transfer]);
  } catch (e) {
    reply({ kind: 'error', id: req.id, error: (e as Error).message });
  }
}

async function release(): Promise<void> {
  await session?.release();
  session = undefined;
  stages.clear();
  privates.clear();
  ownBuffers.clear();
  reply({ kind: 'released' });
}

// One request at a time: `run` starts on a later tick, and the next request must not overwrite a private
// buffer before then.
let queue = Promise.resolve();
port.on('message', (req: SessionRequest) => {
  if (req.kind === 'create') queue = queue.then(() => create(req));
  else if (req.kind === 'run') queue = queue.then(() => run(req));
  else if (req.kind === 'release') queue = queue.then(release);
  // A request this worker does not understand is a bug on the other side: end the worker (the main thread
  // then rejects whatever is pending).
  else throw new Error(`unknown session request ${JSON.stringify((req as { kind?: unknown }).kind)}`);
});
reply({ kind: 'idle' });
