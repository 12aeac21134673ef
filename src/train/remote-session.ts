/**
 * An ONNX Runtime session that runs in a worker thread. onnxruntime-node's `run` blocks the thread that calls
 * it for the whole run (100-400 ms per fine-tuning step), which would freeze progress output and any server on
 * the main thread; here the main thread only copies the feeds and waits.
 *
 * Feeds are copied when `run` is called, so the caller may refill its buffers as soon as `run` returns. The
 * copy goes into one shared staging buffer per feed name, allocated once and reused, which the worker copies
 * into private buffers of its own (ONNX Runtime rejects SharedArrayBuffer-backed tensors). That measured as
 * fast as or faster than posting the arrays (structured clone) for both a fine-tuning step (~50 feeds, ~10 MB)
 * and a head step (6 feeds, ~3 MB), and allocates nothing per step. A run called while the staging buffers
 * still hold an earlier request's feeds posts private copies instead. Outputs come back transferred (no copy).
 *
 * Starting a worker and loading ONNX Runtime into it costs 100-150 ms, as much as a whole head fit, so
 * released sessions leave their worker to a small pool that the next session takes it from. Idle workers do
 * not keep the process alive.
 */
import { Worker } from 'node:worker_threads';
import { GraftError, invalidParameter } from '../errors.js';
import type { FeedMessage, FeedType, SessionReply, SessionRequest } from './session-worker.js';

export type { FeedType } from './session-worker.js';

export interface Feed {
  type: FeedType;
  data: Float32Array | BigInt64Array;
  dims: readonly number[];
}

export interface Output {
  data: Float32Array;
  dims: number[];
}

export interface RemoteSessionOptions {
  /** ONNX Runtime intra-op threads (default: ONNX Runtime's). */
  threads?: number;
  /** Let idle intra-op threads spin-wait for work (default: ONNX Runtime's, which spins). */
  spin?: boolean;
}

interface Pending {
  resolve: (outputs: Record<string, Output>) => void;
  reject: (error: Error) => void;
}

/** Idle workers (ONNX Runtime loaded, no session), at most MAX_IDLE. */
const idle: Worker[] = [];
const MAX_IDLE = 2;

function spawn(): Promise<Worker> {
  const worker = new Worker(new URL('./session-worker.js', import.meta.url));
  // Whatever uses the worker listens too; this keeps an idle worker's failure from being an uncaught 'error'.
  worker.on('error', () => {});
  worker.on('exit', () => {
    const i = idle.indexOf(worker);
    if (i >= 0) idle.splice(i, 1);
  });
  return new Promise((resolve, reject) => {
    const onError = (e: Error) => reject(new GraftError('TRAIN', `the ONNX Runtime worker failed to start: ${e.message}`, {}, { cause: e }));
    const onExit = (code: number) => reject(new GraftError('TRAIN', `the ONNX Runtime worker exited before it was ready (code ${code})`, { code }));
    worker.once('message', () => {
      worker.off('error', onError);
      worker.off('exit', onExit);
      resolve(worker);
    });
    worker.once('error', onError);
    worker.once('exit', onExit);
  });
}

/** Keeps an idle worker for the next session, or ends it when enough are kept. */
async function giveBack(worker: Worker): Promise<void> {
  if (idle.length < MAX_IDLE) {
    worker.unref();
    idle.push(worker);
  } else {
    await worker.terminate();
  }
}

/** The next reply of `worker`, or a GraftError if it fails or exits first. */
function nextReply(worker: Worker): Promise<SessionReply> {
  return new Promise((resolve, reject) => {
    const onMessage = (m: SessionReply) => {
      done();
      resolve(m);
    };
    const onError = (e: Error) => {
      done();
      reject(new GraftError('TRAIN', `the ONNX Runtime worker failed: ${e.message}`, {}, { cause: e }));
    };
    const onExit = (code: number) => {
      done();
      reject(new GraftError('TRAIN', `the ONNX Runtime worker exited (code ${code})`, { code }));
    };
    const done = () => {
      worker.off('message', onMessage);
      worker.off('error', onError);
      worker.off('exit', onExit);
    };
    worker.on('message', onMessage);
    worker.on('error', onError);
    worker.on('exit', onExit);
  });
}

export class RemoteSession {
  private readonly pending = new Map<number, Pending>();
  /** Staging buffer by feed name, and whether the worker already holds it. */
  private readonly stages = new Map<string, { buffer: SharedArrayBuffer; posted: boolean }>();
  /** The request whose feeds are in the staging buffers until the worker has taken them (its reply). */
  private staged: number | undefined;
  private nextId = 0;
  /** Why runs are refused: the worker is gone, or the session was released. */
  private closed: GraftError | undefined;
  private released: Promise<void> | undefined;
  private readonly listeners: { message: (m: SessionReply) => void; error: (e: Error) => void; exit: (code: number) => void };

  private constructor(
    private readonly worker: Worker,
    readonly inputNames: readonly string[],
    readonly outputNames: readonly string[],
  ) {
    this.listeners = {
      message: (m) => this.onReply(m),
      error: (e) => this.fail(new GraftError('TRAIN', `the ONNX Runtime worker failed: ${e.message}`, {}, { cause: e })),
      exit: (code) => this.fail(new GraftError('TRAIN', `the ONNX Runtime worker exited (code ${code})`, { code })),
    };
    worker.on('message', this.listeners.message);
    worker.on('error', this.listeners.error);
    worker.on('exit', this.listeners.exit);
    // An idle session does not keep the process alive (as a session on the main thread would not).
    worker.unref();
  }

  /** Loads `model` into an ONNX Runtime session on a worker thread. */
  static async create(model: Uint8Array, options: RemoteSessionOptions = {}): Promise<RemoteSession> {
    if (options.threads !== undefined && !(Number.isInteger(options.threads) && options.threads > 0)) {
      throw invalidParameter('threads', 'a positive integer', options.threads);
    }
    const worker = idle.pop() ?? (await spawn());
    worker.ref();
    // Posting a view copies its whole buffer: cut the model out when it is part of a larger one.
    const bytes = model.byteOffset === 0 && model.byteLength === model.buffer.byteLength ? model : model.slice();
    const request: SessionRequest = { kind: 'create', model: bytes, ...options };
    const created = nextReply(worker);
    worker.postMessage(request);
    const first = await created;
    if (first.kind !== 'ready') {
      // The worker holds no session: it can serve the next one.
      await giveBack(worker);
      const error = first.kind === 'failed' ? first.error : `unexpected reply ${first.kind}`;
      throw new GraftError('TRAIN', `ONNX Runtime could not create a session: ${error}`, { error });
    }
    return new RemoteSession(worker, first.inputNames, first.outputNames);
  }

  /**
   * Runs the session on `feeds` (copied before this returns) and resolves with the requested outputs (all by
   * default; float32 only). Runs are processed in the order they are called; a failed run rejects with a
   * GraftError ('TRAIN') carrying ONNX Runtime's message.
   */
  run(feeds: Record<string, Feed>, outputs?: readonly string[]): Promise<Record<string, Output>> {
    if (this.closed) return Promise.reject(this.closed);
    if (this.released) return Promise.reject(new GraftError('TRAIN', 'the session was released'));
    const id = this.nextId++;
    const useStage = this.staged === undefined;
    const messages: FeedMessage[] = [];
    const transfer: ArrayBuffer[] = [];
    try {
      for (const [name, feed] of Object.entries(feeds)) {
        const { type, data } = feed;
        const ok = (type === 'float32' && data instanceof Float32Array) || (type === 'int64' && data instanceof BigInt64Array);
        if (!ok) throw invalidParameter(`feed ${name}`, 'a float32 (Float32Array) or int64 (BigInt64Array) tensor', `${String(type)} ${data?.constructor?.name}`);
        const dims = [...feed.dims];
        const src = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
        if (useStage) {
          let stage = this.stages.get(name);
          if (!stage || stage.buffer.byteLength < data.byteLength) {
            stage = { buffer: new SharedArrayBuffer(data.byteLength), posted: false };
            this.stages.set(name, stage);
          }
          new Uint8Array(stage.buffer, 0, data.byteLength).set(src);
          messages.push({ name, type, dims, bytes: data.byteLength, ...(stage.posted ? {} : { stage: stage.buffer }) });
          stage.posted = true;
        } else {
          const copy = src.slice();
          transfer.push(copy.buffer);
          messages.push({ name, type, dims, buffer: copy.buffer });
        }
      }
    } catch (e) {
      return Promise.reject(e);
    }
    if (useStage) this.staged = id;
    const result = new Promise<Record<string, Output>>((resolve, reject) => this.pending.set(id, { resolve, reject }));
    // Keep the process alive while a run is pending.
    if (this.pending.size === 1) this.worker.ref();
    const request: SessionRequest = { kind: 'run', id, feeds: messages, ...(outputs ? { outputs: [...outputs] } : {}) };
    this.worker.postMessage(request, transfer);
    return result;
  }

  /** Waits for the runs already called, then releases the session (its worker goes back to the pool). */
  release(): Promise<void> {
    this.released ??= (async () => {
      await Promise.all([...this.pending.keys()].map((id) => new Promise<void>((resolve) => this.whenSettled(id, resolve))));
      if (this.closed) return;
      this.closed = new GraftError('TRAIN', 'the session was released');
      this.worker.off('message', this.listeners.message);
      this.worker.off('error', this.listeners.error);
      this.worker.off('exit', this.listeners.exit);
      // Ending a worker while ONNX Runtime runs aborts the process: the session is released in the worker.
      this.worker.ref();
      const released = nextReply(this.worker);
      this.worker.postMessage({ kind: 'release' } satisfies SessionRequest);
      const reply = await released.catch(() => undefined);
      if (reply?.kind === 'released') await giveBack(this.worker);
      else await this.worker.terminate();
    })();
    return this.released;
  }

  /** Calls `then` once request `id` is no longer pending. */
  private whenSettled(id: number, then: () => void): void {
    const p = this.pending.get(id);
    if (!p) return then();
    this.pending.set(id, {
      resolve: (o) => {
        p.resolve(o);
        then();
      },
      reject: (e) => {
        p.reject(e);
        then();
      },
    });
  }

  private onReply(m: SessionReply): void {
    if (m.kind !== 'result' && m.kind !== 'error') return;
    if (m.id === this.staged) this.staged = undefined;
    const p = this.pending.get(m.id);
    this.pending.delete(m.id);
    if (this.pending.size === 0) this.worker.unref();
    if (!p) return;
    if (m.kind === 'result') p.resolve(m.outputs);
    else p.reject(new GraftError('TRAIN', `ONNX Runtime run failed: ${m.error}`, { error: m.error }));
  }

  /** The worker is gone: every pending and later run rejects with `error`. */
  private fail(error: GraftError): void {
    this.closed ??= error;
    this.staged = undefined;
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) p.reject(this.closed);
  }
}
