/**
 * An ONNX Runtime session that runs in a worker thread. onnxruntime-node's `run` blocks the thread that calls
 * it for the whole run (100-400 ms per fine-tuning step), which would freeze progress output and any server on
 * the main thread; here the main thread only copies the feeds and waits.
 *
 * Feeds are copied into one shared staging buffer per feed name, allocated once and reused, which the worker
 * copies into private buffers of its own (ONNX Runtime rejects SharedArrayBuffer-backed tensors). That
 * measured as fast as or faster than posting the arrays (structured clone) for both a fine-tuning step
 * (~50 feeds, ~10 MB) and a head step (6 feeds, ~3 MB), and allocates nothing per step. A run called while
 * the staging buffers still hold an earlier request's feeds posts private copies instead. Outputs come back
 * transferred (no copy).
 *
 * The worker costs about 1 ms per run (the two copies and two thread hand-offs): nothing next to a
 * fine-tuning step, but as much as a whole head step. With `inlineBelowMs`, a session whose first runs prove
 * shorter than that moves to the calling thread, where blocking for so short a time is harmless.
 *
 * Starting a worker and loading ONNX Runtime into it costs 100-150 ms, as much as a whole head fit, so
 * released sessions leave their worker to a small pool that the next session takes it from. Idle workers do
 * not keep the process alive.
 */
import { Worker } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import { GraftError, invalidParameter } from '../errors.js';
import { wholeBuffer } from '../util/buffer.js';
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
  /**
   * Move the session to the calling thread when one of its first three runs takes less than this many
   * milliseconds on the worker (default 0: never).
   */
  inlineBelowMs?: number;
}

interface Pending {
  resolve: (outputs: Record<string, Output>) => void;
  reject: (error: Error) => void;
}

/** Runs measured on the worker before deciding to stay there (the first ones are the slowest). */
const INLINE_PROBES = 3;

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

function sessionOptions(options: RemoteSessionOptions): ort.InferenceSession.SessionOptions {
  return {
    ...(options.threads ? { intraOpNumThreads: options.threads } : {}),
    ...(options.spin === undefined ? {} : { extra: { session: { intra_op: { allow_spinning: options.spin ? '1' : '0' } } } }),
  };
}

const runFailed = (message: string) => new GraftError('TRAIN', `ONNX Runtime run failed: ${message}`, { error: message });

export class RemoteSession {
  private readonly pending = new Map<number, Pending>();
  /** Every run not yet settled, wherever it runs (release waits for them). */
  private readonly inflight = new Set<Promise<unknown>>();
  /** Staging buffer by feed name, and whether the worker already holds it. */
  private readonly stages = new Map<string, { buffer: SharedArrayBuffer; posted: boolean }>();
  /** The request whose feeds are in the staging buffers until the worker has taken them (its reply). */
  private staged: number | undefined;
  private nextId = 0;
  /** Why runs are refused: the worker is gone, or the session was released. */
  private closed: GraftError | undefined;
  private released: Promise<void> | undefined;
  private readonly listeners: { message: (m: SessionReply) => void; error: (e: Error) => void; exit: (code: number) => void };
  /** Runs measured on the worker, while deciding whether to go inline. */
  private probes = 0;
  /** Resolves once the session has moved to the calling thread (runs called meanwhile wait for it). */
  private moving: Promise<void> | undefined;
  private local: ort.InferenceSession | undefined;

  private constructor(
    private readonly worker: Worker,
    /** Kept until it is decided where the session runs. */
    private model: Uint8Array | undefined,
    private readonly options: RemoteSessionOptions,
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
    const bytes = wholeBuffer(model);
    const created = nextReply(worker);
    worker.postMessage({ kind: 'create', model: bytes, options: sessionOptions(options) } satisfies SessionRequest);
    const first = await created;
    if (first.kind !== 'ready') {
      // The worker holds no session: it can serve the next one.
      await giveBack(worker);
      const error = first.kind === 'failed' ? first.error : `unexpected reply ${first.kind}`;
      throw new GraftError('TRAIN', `ONNX Runtime could not create a session: ${error}`, { error });
    }
    return new RemoteSession(worker, options.inlineBelowMs ? bytes : undefined, options, first.inputNames, first.outputNames);
  }

  /** Whether the session has moved to the calling thread (see `inlineBelowMs`). */
  get inline(): boolean {
    return this.local !== undefined;
  }

  /**
   * Runs the session on `feeds` and resolves with the requested outputs (all by default; float32 only). The
   * feeds must not change until the returned promise settles. Runs are processed in the order they are
   * called; a failed run rejects with a GraftError ('TRAIN') carrying ONNX Runtime's message.
   */
  run(feeds: Record<string, Feed>, outputs?: readonly string[]): Promise<Record<string, Output>> {
    if (this.released) return Promise.reject(new GraftError('TRAIN', 'the session was released'));
    for (const [name, { type, data }] of Object.entries(feeds)) {
      const ok = (type === 'float32' && data instanceof Float32Array) || (type === 'int64' && data instanceof BigInt64Array);
      if (!ok) return Promise.reject(invalidParameter(`feed ${name}`, 'a float32 (Float32Array) or int64 (BigInt64Array) tensor', `${String(type)} ${data?.constructor?.name}`));
    }
    const result =
      this.local ? this.runLocal(this.local, feeds, outputs)
      : this.moving ? this.moving.then(() => (this.local ? this.runLocal(this.local, feeds, outputs) : this.runRemote(feeds, outputs)))
      : this.runRemote(feeds, outputs);
    this.inflight.add(result);
    const settled = () => this.inflight.delete(result);
    result.then(settled, settled);
    return result;
  }

  /** Waits for the runs already called, then releases the session (its worker goes back to the pool). */
  release(): Promise<void> {
    this.released ??= (async () => {
      await Promise.allSettled([...this.inflight, this.moving]);
      if (this.local) await this.local.release();
      else await this.releaseWorker();
    })();
    return this.released;
  }

  private runRemote(feeds: Record<string, Feed>, outputs?: readonly string[]): Promise<Record<string, Output>> {
    if (this.closed) return Promise.reject(this.closed);
    const id = this.nextId++;
    const useStage = this.staged === undefined;
    const messages: FeedMessage[] = [];
    const transfer: ArrayBuffer[] = [];
    for (const [name, { type, data, dims }] of Object.entries(feeds)) {
      const src = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      if (useStage) {
        let stage = this.stages.get(name);
        if (!stage || stage.buffer.byteLength < data.byteLength) {
          stage = { buffer: new SharedArrayBuffer(data.byteLength), posted: false };
          this.stages.set(name, stage);
        }
        new Uint8Array(stage.buffer, 0, data.byteLength).set(src);
        messages.push({ name, type, dims: [...dims], bytes: data.byteLength, ...(stage.posted ? {} : { stage: stage.buffer }) });
        stage.posted = true;
      } else {
        const copy = src.slice();
        transfer.push(copy.buffer);
        messages.push({ name, type, dims: [...dims], buffer: copy.buffer });
      }
    }
    if (useStage) this.staged = id;
    const result = new Promise<Record<string, Output>>((resolve, reject) => this.pending.set(id, { resolve, reject }));
    // Keep the process alive while a run is pending.
    if (this.pending.size === 1) this.worker.ref();
    this.worker.postMessage({ kind: 'run', id, feeds: messages, ...(outputs ? { outputs: [...outputs] } : {}) } satisfies SessionRequest, transfer);
    return result;
  }

  private async runLocal(session: ort.InferenceSession, feeds: Record<string, Feed>, outputs?: readonly string[]): Promise<Record<string, Output>> {
    let results: ort.InferenceSession.ReturnType;
    try {
      const tensors: Record<string, ort.Tensor> = {};
      for (const [name, { type, data, dims }] of Object.entries(feeds)) tensors[name] = new ort.Tensor(type, data, dims);
      results = outputs ? await session.run(tensors, outputs) : await session.run(tensors);
    } catch (e) {
      throw runFailed((e as Error).message);
    }
    const out: Record<string, Output> = {};
    for (const [name, t] of Object.entries(results)) {
      if (t.type !== 'float32') throw runFailed(`output ${name} is ${t.type}; only float32 outputs are returned`);
      out[name] = { data: t.data as Float32Array, dims: [...t.dims] };
    }
    return out;
  }

  /** While the first runs on the worker are measured: the first short one moves the session inline. */
  private probe(ms: number): void {
    const threshold = this.options.inlineBelowMs ?? 0;
    const model = this.model;
    if (threshold <= 0 || !model || this.moving) return;
    if (++this.probes >= INLINE_PROBES) this.model = undefined;
    if (ms >= threshold) return;
    this.model = undefined;
    this.moving = (async () => {
      try {
        const local = await ort.InferenceSession.create(model, sessionOptions(this.options));
        // Runs already on the worker finish there; later ones wait for the move.
        await Promise.allSettled([...this.pending.keys()].map((id) => new Promise<void>((resolve) => this.whenSettled(id, resolve))));
        this.local = local;
        await this.releaseWorker();
      } catch {
        // Stay on the worker.
      }
    })();
  }

  /** Releases the worker's session and returns the worker to the pool. */
  private async releaseWorker(): Promise<void> {
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
    if (m.kind === 'result') this.probe(m.ms);
    if (!p) return;
    if (m.kind === 'result') p.resolve(m.outputs);
    else p.reject(runFailed(m.error));
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
