import os from 'node:os';
import { Worker } from 'node:worker_threads';
// sharp must also be loaded on the main thread, so that its native libraries stay loaded while workers come and go.
import 'sharp';
import { GraftError, invalidParameter } from '../errors.js';
import { wholeBuffer } from '../util/buffer.js';
import type { PretrainedConfig } from './config.js';
import type { Pipeline } from './pipeline.js';
import type { Encoded } from './text.js';
import type { WorkerReply, WorkerRequest } from './worker.js';
import type { AudioView, ImageView } from './augment.js';

export type LoadResult = { ok: true } | { ok: false; reason: string };
export type EncodeResult = ({ ok: true } & Encoded) | { ok: false; reason: string };
/** A decoded clip: mono samples at the pipeline's rate and scale, and the source's duration. */
export type AudioResult = { ok: true; samples: Float32Array; seconds: number } | { ok: false; reason: string };

/** A Float32Array on a SharedArrayBuffer, which ImagePool workers can write into directly. */
export function sharedFloat32(length: number): Float32Array {
  return new Float32Array(new SharedArrayBuffer(length * Float32Array.BYTES_PER_ELEMENT));
}

interface Job {
  request: WorkerRequest;
  resolve: (reply: WorkerReply) => void;
  reject: (error: unknown) => void;
}

interface Slot {
  worker: Worker;
  running: Map<number, Job>;
  /** Called once nothing is running any more (close() waits on this). */
  whenIdle: Array<() => void>;
}

/** Requests in flight per worker: one decoding, one waiting, so a worker never idles between messages. */
const PER_WORKER = 2;

/**
 * Encodes raw samples on worker threads, as the pipeline says: images are decoded and normalised straight
 * into shared memory (each worker writes one image's tensor into the caller's SharedArrayBuffer-backed
 * array, so the main thread allocates nothing per image); texts are tokenised, a chunk per message; audio
 * files are decoded and resampled, one clip per message (its samples transferred, not copied).
 */
export class EncodePool {
  private readonly slots: Slot[] = [];
  private readonly queue: Job[] = [];
  private nextId = 0;
  private closed = false;

  constructor(
    private readonly pipeline: Pipeline,
    options: { threads?: number } = {},
  ) {
    const threads = options.threads ?? Math.min(4, Math.max(1, os.availableParallelism()));
    if (!Number.isInteger(threads) || threads < 1) throw invalidParameter('threads', 'a positive integer', threads);
    for (let i = 0; i < threads; i++) this.slots.push(this.spawn());
  }

  /** Number of worker threads. */
  get size(): number {
    return this.slots.length;
  }

  /** Decodes `input` into `target` at `offset` (3·H·W floats); a bad or blank image gives `{ ok: false, reason }`. */
  loadInto(input: { file: string; bytes?: Uint8Array }, target: Float32Array, offset: number, view?: ImageView): Promise<LoadResult> {
    if (this.pipeline.kind !== 'image') return Promise.reject(new GraftError('USAGE', `loadInto decodes images; this pool encodes ${this.pipeline.kind}`));
    if (!(target.buffer instanceof SharedArrayBuffer)) {
      return Promise.reject(new GraftError('USAGE', 'EncodePool.loadInto needs a target on a SharedArrayBuffer (see sharedFloat32)'));
    }
    const request: WorkerRequest = { kind: 'image', id: this.nextId++, file: input.file, target, offset, ...(view ? { view } : {}) };
    const bytes = input.bytes;
    if (bytes) request.bytes = wholeBuffer(bytes);
    return this.submit(request).then((r) => (r.ok ? { ok: true } : { ok: false, reason: r.reason }));
  }

  /** Tokenises texts (cut to `maxLength` tokens) on a worker, one message for the whole chunk. */
  async encodeTexts(texts: readonly string[], maxLength: number): Promise<EncodeResult[]> {
    if (this.pipeline.kind !== 'text') throw new GraftError('USAGE', `encodeTexts tokenises texts; this pool encodes ${this.pipeline.kind}`);
    if (texts.length === 0) return [];
    const reply = await this.submit({ kind: 'text', id: this.nextId++, texts: [...texts], maxLength });
    if (!reply.ok) return texts.map(() => ({ ok: false, reason: reply.reason }));
    if (!('lengths' in reply)) throw new GraftError('USAGE', 'the encoding worker answered a text request with an image reply');
    const out: EncodeResult[] = [];
    let at = 0;
    for (let i = 0; i < texts.length; i++) {
      const n = reply.lengths[i]!;
      out.push({ ok: true, ids: reply.ids.slice(at, at + n), tokens: reply.tokens[i]! });
      at += n;
    }
    return out;
  }

  /** Decodes one audio file (its bytes when given) to the pipeline's rate and scale; a bad file gives `{ ok: false, reason }`. */
  async encodeAudio(input: { file: string; bytes?: Uint8Array }, view?: AudioView): Promise<AudioResult> {
    if (this.pipeline.kind !== 'audio') throw new GraftError('USAGE', `encodeAudio decodes audio; this pool encodes ${this.pipeline.kind}`);
    const request: WorkerRequest = { kind: 'audio', id: this.nextId++, file: input.file, ...(view ? { view } : {}) };
    const bytes = input.bytes;
    if (bytes) request.bytes = wholeBuffer(bytes);
    const reply = await this.submit(request);
    if (!reply.ok) return { ok: false, reason: reply.reason };
    if (!('samples' in reply)) throw new GraftError('USAGE', 'the encoding worker answered an audio request with another kind of reply');
    return { ok: true, samples: reply.samples, seconds: reply.seconds };
  }

  private submit(request: WorkerRequest): Promise<WorkerReply> {
    if (this.closed) return Promise.reject(new GraftError('USAGE', 'the encoding pool is closed'));
    return new Promise((resolve, reject) => {
      this.queue.push({ request, resolve, reject });
      this.dispatch();
    });
  }

  /** Waits for the images being decoded, rejects those still queued, and stops the workers. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const job of this.queue.splice(0)) job.reject(new GraftError('USAGE', 'the encoding pool was closed before this sample was encoded'));
    // Terminating a worker in the middle of a libvips call can take the process down: let running jobs finish.
    await Promise.all(this.slots.map((slot) => this.drained(slot)));
    await Promise.all(this.slots.map((slot) => slot.worker.terminate()));
  }

  private spawn(): Slot {
    const worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: { pipeline: this.pipeline } });
    const slot: Slot = { worker, running: new Map(), whenIdle: [] };
    worker.on('message', (reply: WorkerReply) => {
      const job = slot.running.get(reply.id);
      if (!job) return;
      slot.running.delete(reply.id);
      job.resolve(reply);
      this.settled(slot);
    });
    worker.on('error', (error) => this.lost(slot, error));
    worker.on('exit', (code) => {
      if (!this.closed) this.lost(slot, new GraftError('IMAGE', `encoding worker exited unexpectedly (code ${code})`));
    });
    // After the listeners: adding a 'message' listener refs the worker's port again.
    worker.unref();
    return slot;
  }

  /** A worker died: fail what it was doing and replace it. */
  private lost(slot: Slot, error: unknown): void {
    const index = this.slots.indexOf(slot);
    if (index < 0) return;
    for (const job of slot.running.values()) job.reject(error);
    slot.running.clear();
    this.idle(slot);
    slot.worker.removeAllListeners();
    slot.worker.on('error', () => {});
    void slot.worker.terminate();
    if (this.closed) this.slots.splice(index, 1);
    else {
      this.slots[index] = this.spawn();
      this.dispatch();
    }
  }

  private settled(slot: Slot): void {
    if (slot.running.size === 0) this.idle(slot);
    this.dispatch();
  }

  private idle(slot: Slot): void {
    slot.worker.unref();
    for (const callback of slot.whenIdle.splice(0)) callback();
  }

  private drained(slot: Slot): Promise<void> {
    return slot.running.size === 0 ? Promise.resolve() : new Promise((resolve) => slot.whenIdle.push(resolve));
  }

  private dispatch(): void {
    while (this.queue.length > 0) {
      let best: Slot | undefined;
      for (const slot of this.slots) if (slot.running.size < PER_WORKER && (!best || slot.running.size < best.running.size)) best = slot;
      if (!best) return;
      const job = this.queue.shift()!;
      best.running.set(job.request.id, job);
      // A busy worker keeps the process alive until its answer arrives; an idle one does not.
      best.worker.ref();
      best.worker.postMessage(job.request);
    }
  }
}

/** The image pool of the v0 API: an EncodePool for an image config. */
export class ImagePool extends EncodePool {
  constructor(config: PretrainedConfig, options: { threads?: number } = {}) {
    super({ kind: 'image', config }, options);
  }
}
