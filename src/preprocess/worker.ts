import { parentPort, workerData } from 'node:worker_threads';
import sharp from 'sharp';
import { GraftError } from '../errors.js';
import { scaleSamples } from './audio.js';
import { decodeAudio } from './audio-decode.js';
import { decodeImage, decodeImageView, normalizeInto } from './image.js';
import { applyAudioView, type AudioView, type ImageView } from './augment.js';
import type { Pipeline } from './pipeline.js';
import { TextTokenizer } from './text.js';
import { FileProblem, readRegularFile } from '../util/fs.js';
import { wholeBuffer } from '../util/buffer.js';

/**
 * A request from EncodePool. image: decode `bytes` (or read `file`) and write its tensor into `target` at
 * `offset`; text: tokenise each text, cut to `maxLength` tokens; audio: decode `bytes` (or read `file`) to the
 * config's rate and scale.
 */
export type WorkerRequest =
  | { kind: 'image'; id: number; file: string; bytes?: Uint8Array; target: Float32Array; offset: number; view?: ImageView }
  | { kind: 'text'; id: number; texts: string[]; maxLength: number }
  | { kind: 'audio'; id: number; file: string; bytes?: Uint8Array; view?: AudioView };

/** Text replies concatenate the ids of the chunk's texts: `lengths[i]` ids for text i, `tokens[i]` before truncation. */
export type WorkerReply =
  | { id: number; ok: true }
  | { id: number; ok: true; ids: Int32Array; lengths: Int32Array; tokens: Int32Array }
  | { id: number; ok: true; samples: Float32Array; seconds: number }
  | { id: number; ok: false; reason: string };

// The pool already runs one image per worker in parallel; libvips threads and its cache would only compete.
sharp.concurrency(1);
sharp.cache(false);

const pipeline = (workerData as { pipeline: Pipeline }).pipeline;
const tokenizer = pipeline.kind === 'text' ? new TextTokenizer(pipeline.tokenizer) : undefined;
const port = parentPort!;

const reasonOf = (e: unknown) =>
  e instanceof FileProblem ? e.problem : e instanceof GraftError && typeof e.context.reason === 'string' ? e.context.reason : e instanceof Error ? e.message : String(e);

port.on('message', async (req: WorkerRequest) => {
  let reply: WorkerReply;
  try {
    if (req.kind === 'image') {
      if (pipeline.kind !== 'image') throw new Error(`an image request reached a ${pipeline.kind} worker`);
      const source = req.bytes ?? req.file;
      const pixels = req.view ? await decodeImageView(source, pipeline.config, req.view, req.file) : await decodeImage(source, pipeline.config, req.file);
      normalizeInto(pixels, pipeline.config, req.target, req.offset);
      reply = { id: req.id, ok: true };
    } else if (req.kind === 'audio') {
      if (pipeline.kind !== 'audio') throw new Error(`an audio request reached a ${pipeline.kind} worker`);
      const bytes = req.bytes ?? (await readRegularFile(req.file));
      const clip = await decodeAudio(bytes, req.file, { maxSeconds: pipeline.config.maxSeconds, targetRate: pipeline.config.sampleRate });
      const samples = scaleSamples(req.view ? applyAudioView(clip.samples, req.view) : clip.samples, pipeline.config);
      const own = wholeBuffer(samples);
      reply = { id: req.id, ok: true, samples: own, seconds: clip.seconds };
      port.postMessage(reply, [own.buffer as ArrayBuffer]);
      return;
    } else {
      if (!tokenizer) throw new Error(`a text request reached a ${pipeline.kind} worker`);
      const encoded = req.texts.map((t) => tokenizer.encode(t, req.maxLength));
      const ids = new Int32Array(encoded.reduce((n, e) => n + e.ids.length, 0));
      let at = 0;
      for (const e of encoded) {
        ids.set(e.ids, at);
        at += e.ids.length;
      }
      const lengths = Int32Array.from(encoded, (e) => e.ids.length);
      const tokens = Int32Array.from(encoded, (e) => e.tokens);
      reply = { id: req.id, ok: true, ids, lengths, tokens };
      port.postMessage(reply, [ids.buffer, lengths.buffer, tokens.buffer] as ArrayBuffer[]);
      return;
    }
  } catch (e) {
    // The caller knows the file: report the reason alone.
    reply = { id: req.id, ok: false, reason: reasonOf(e) };
  }
  port.postMessage(reply);
});
