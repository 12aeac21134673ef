import { parentPort, workerData } from 'node:worker_threads';
import sharp from 'sharp';
import { GraftError } from '../errors.js';
import type { PretrainedConfig } from './config.js';
import { decodeImage, normalizeInto } from './image.js';

/** A request from ImagePool: decode `bytes` (or read `file`) and write its tensor into `target` at `offset`. */
export interface WorkerRequest {
  id: number;
  file: string;
  bytes?: Uint8Array;
  target: Float32Array;
  offset: number;
}

export type WorkerReply = { id: number; ok: true } | { id: number; ok: false; reason: string };

// The pool already runs one image per worker in parallel; libvips threads and its cache would only compete.
sharp.concurrency(1);
sharp.cache(false);

const config = (workerData as { config: PretrainedConfig }).config;
const port = parentPort!;

port.on('message', async ({ id, file, bytes, target, offset }: WorkerRequest) => {
  let reply: WorkerReply;
  try {
    normalizeInto(await decodeImage(bytes ?? file, config, file), config, target, offset);
    reply = { id, ok: true };
  } catch (e) {
    // The caller knows the file: report the reason alone.
    const reason = e instanceof GraftError && typeof e.context.reason === 'string' ? e.context.reason : e instanceof Error ? e.message : String(e);
    reply = { id, ok: false, reason };
  }
  port.postMessage(reply);
});
