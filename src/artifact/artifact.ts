/**
 * The exported model directory: `model.onnx` (cut backbone + trained head as ONE graph: the pipeline's inputs
 * in — an image tensor, token ids and their mask, or a waveform — class probabilities out), `graft.json` (task, labels,
 * the pipeline config, metrics, provenance) and the pipeline's side files (a text model's `tokenizer.json`).
 * Every file is written atomically; graft.json records each file's sha256, so a half-updated directory is
 * detected, and loading never reads outside the directory.
 *
 * Format versions: 1 (graft 0.1: image models only, one `model.input`), 2 (`task` for every modality,
 * `model.inputs` named and typed, `files`; `audio-classification` since graft 0.2, with no change of format).
 * Version 1 directories still load.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { writeFileAtomic } from '../util/fs.js';
import { killPoint } from '../train/checkpoint.js';
import { GraftError } from '../errors.js';
import type { Metrics } from '../evaluate/metrics.js';
import type { HeadSpec } from '../head/head.js';
import { decodeModel, encodeModel, toNumber, type ModelProto } from '../onnx/proto.js';
import { validateConfig, type PretrainedConfig } from '../preprocess/config.js';
import type { FeedSpec } from '../preprocess/pipeline.js';
import { validateTextConfig, type TextConfig } from '../preprocess/text.js';
import { validateAudioConfig, type AudioConfig } from '../preprocess/audio.js';
import { VERSION } from '../version.js';

export const MODEL_FILE = 'model.onnx';
export const MANIFEST_FILE = 'graft.json';
export const FORMAT = 'graft-model';
export const FORMAT_VERSION = 2;

export type Task = 'image-classification' | 'text-classification' | 'audio-classification';
const TASKS: readonly Task[] = ['image-classification', 'text-classification', 'audio-classification'];

type Cut = { cut: string; featureDim: number };

interface ManifestBase {
  format: typeof FORMAT;
  formatVersion: number;
  graftVersion: string;
  createdAt: string;
  labels: string[];
  model: {
    file: string;
    sha256: string;
    /** The first input (format 1's only one). */
    input: string;
    /** Every input the graph takes, with its type and shape ('N': batch, 'T': tokens). */
    inputs: Array<{ name: string; type: FeedSpec['type']; shape: Array<number | string> }>;
    output: string;
    /** Shape of the first input (format 1). */
    inputShape: Array<number | string>;
  };
  /** Side files of the pipeline (a tokenizer), by name, with their sha256. */
  files?: Record<string, { sha256: string }>;
  backbone: { name?: string; file: string; sha256: string; cut: string; cutReason: string };
  head: HeadSpec;
  training: Record<string, unknown> & { seed: number };
  metrics?: Metrics;
  data?: Record<string, unknown>;
  /**
   * How predictions are made from the graph (absent: one run per input). `tta: 'flip'`: the mean of the
   * probabilities of the preprocessed image and of its mirror (left-right) — what the validation metrics measured.
   */
  inference?: { tta?: 'flip' };
}

/** graft.json. `config` is the pipeline's: image preprocessing, or the text config; apply it exactly (predict and load() do). */
export type Manifest =
  | (ManifestBase & { task: 'image-classification'; config: PretrainedConfig & Cut })
  | (ManifestBase & { task: 'text-classification'; config: TextConfig & Cut })
  /** A waveform at `config.sampleRate` (scaled by `config.sampleScale`) in; the front end is inside the graph. */
  | (ManifestBase & { task: 'audio-classification'; config: AudioConfig & Cut });

export type ManifestDraft = Omit<Manifest, 'format' | 'formatVersion' | 'graftVersion' | 'createdAt' | 'model' | 'files'> & {
  model: Omit<Manifest['model'], 'sha256' | 'file'>;
};

/** Writes model.onnx, the side files and graft.json (last, so a complete graft.json means a complete directory). */
export async function writeArtifact(dir: string, model: ModelProto, manifest: ManifestDraft, sideFiles: Record<string, Uint8Array | string> = {}): Promise<Manifest> {
  const out = resolve(dir);
  await mkdir(out, { recursive: true });
  const bytes = encodeModel(model);
  const sha = (b: Uint8Array | string) => createHash('sha256').update(b).digest('hex');
  const files: Record<string, { sha256: string }> = {};
  for (const [name, content] of Object.entries(sideFiles)) {
    if (basename(name) !== name || name === MODEL_FILE || name === MANIFEST_FILE) throw new GraftError('ARTIFACT', `side file name "${name}" must be a plain file name`, { name });
    await writeFileAtomic(join(out, name), content);
    files[name] = { sha256: sha(content) };
  }
  const full = {
    format: FORMAT,
    formatVersion: FORMAT_VERSION,
    graftVersion: VERSION,
    createdAt: new Date().toISOString(),
    ...manifest,
    model: { file: MODEL_FILE, sha256: sha(bytes), ...manifest.model },
    ...(Object.keys(files).length ? { files } : {}),
  } as Manifest;
  await writeFileAtomic(join(out, MODEL_FILE), bytes);
  killPoint('export');
  await writeFileAtomic(join(out, MANIFEST_FILE), JSON.stringify(full, null, 2) + '\n');
  return full;
}

export interface Artifact {
  manifest: Manifest;
  modelBytes: Uint8Array;
  dir: string;
  /** Side files, read and verified. */
  files: Record<string, Uint8Array>;
}

/** Reads and checks an artifact directory; returns its manifest, model bytes and side files. */
export async function readArtifact(dir: string): Promise<Artifact> {
  const root = resolve(dir);
  const manifestPath = join(root, MANIFEST_FILE);
  const fail = (message: string, context: Record<string, unknown> = {}, cause?: unknown): never => {
    throw new GraftError('ARTIFACT', `${manifestPath}: ${message}`, { file: manifestPath, ...context }, { cause });
  };
  let text: string;
  try {
    text = await readFile(manifestPath, 'utf8');
  } catch (cause) {
    throw new GraftError('ARTIFACT', `${manifestPath}: not found; is ${root} a directory written by \`graft train --out\`?`, { file: manifestPath }, { cause });
  }
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(text) as Record<string, unknown>;
  } catch (cause) {
    return fail(`not valid JSON (${(cause as Error).message})`, {}, cause);
  }
  if (typeof raw !== 'object' || raw === null || raw.format !== FORMAT) return fail(`not a graft model (format ${JSON.stringify(raw?.format)})`);
  const version = raw.formatVersion;
  if (typeof version !== 'number' || !Number.isInteger(version) || version < 1) return fail(`formatVersion ${JSON.stringify(version)} is not a version number`);
  if (version > FORMAT_VERSION) return fail(`format version ${version} is newer than this graft understands (${FORMAT_VERSION}); upgrade graft`);
  const manifest = upgrade(raw, manifestPath);

  const labels = manifest.labels as unknown;
  if (!Array.isArray(labels) || labels.length < 2 || !labels.every((l) => typeof l === 'string' && l.length > 0)) return fail('labels must list at least 2 class names (non-empty strings)');
  if (new Set(labels).size !== labels.length) return fail('labels must be distinct');

  const readContained = async (name: unknown, what: string, sha256: unknown): Promise<Uint8Array> => {
    if (typeof name !== 'string' || !name || basename(name) !== name || name === '.' || name === '..') return fail(`${what} "${String(name)}" must be a file name inside ${root}`);
    if (typeof sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(sha256)) return fail(`${what} ${name} has no sha256; the directory cannot be verified, export again`);
    const path = join(root, name);
    let bytes: Uint8Array;
    try {
      bytes = await readFile(path);
    } catch (cause) {
      throw new GraftError('ARTIFACT', `${path}: cannot read the ${what} (${(cause as NodeJS.ErrnoException).code ?? (cause as Error).message})`, { file: path }, { cause });
    }
    const sha = createHash('sha256').update(bytes).digest('hex');
    if (sha !== sha256) {
      throw new GraftError('ARTIFACT', `${path}: sha256 ${sha.slice(0, 12)}… does not match ${MANIFEST_FILE} (${sha256.slice(0, 12)}…); the directory is inconsistent, export again`, { file: path });
    }
    return bytes;
  };
  const modelBytes = await readContained(manifest.model?.file ?? MODEL_FILE, 'model', manifest.model?.sha256);
  const files: Record<string, Uint8Array> = {};
  for (const [name, entry] of Object.entries(manifest.files ?? {})) files[name] = await readContained(name, 'file', entry?.sha256);

  // The graph's output must have one probability per label.
  const model = decodeModel(modelBytes, join(root, manifest.model.file));
  const output = model.graph!.output?.find((o) => o.name === manifest.model.output);
  if (!output) return fail(`model has no output "${manifest.model.output}"`);
  const dims = output.type?.tensorType?.shape?.dim ?? [];
  const classes = dims.length === 2 && dims[1]!.dimValue !== undefined && dims[1]!.dimValue !== null ? toNumber(dims[1]!.dimValue as number) : undefined;
  if (classes !== undefined && classes > 0 && classes !== labels.length) return fail(`${labels.length} labels, but the model outputs ${classes} probabilities`);
  if (manifest.task === 'text-classification') {
    const tokenizer = manifest.config.tokenizer.file;
    if (!files[tokenizer]) return fail(`the text model's tokenizer ${tokenizer} is not among its files`);
    if (manifest.files![tokenizer]!.sha256 !== manifest.config.tokenizer.sha256) return fail(`${tokenizer}'s sha256 differs from the text config's`);
  }
  return { manifest, modelBytes, dir: root, files };
}

/** A manifest of any known version as the current shape, its config validated. */
function upgrade(raw: Record<string, unknown>, source: string): Manifest {
  const m = raw as unknown as Manifest & { model: Partial<Manifest['model']> };
  const task = (m.task ?? 'image-classification') as Task;
  if (!TASKS.includes(task)) {
    throw new GraftError('ARTIFACT', `${source}: task "${String(task)}" is not one this graft can run (${TASKS.join(', ')})`, { file: source });
  }
  if (!m.model || typeof m.model !== 'object') throw new GraftError('ARTIFACT', `${source}: no "model" section`, { file: source });
  if (task === 'image-classification') {
    const config = validateConfig(m.config, `${source} config`) as PretrainedConfig & Cut;
    const input = m.model.input ?? config.inputName;
    const inputShape = m.model.inputShape ?? ['N', ...(config.layout === 'NCHW' ? [3, ...config.inputSize] : [...config.inputSize, 3])];
    const inputs = m.model.inputs ?? [{ name: input, type: 'float32' as const, shape: inputShape }];
    return { ...m, task, config, model: { ...m.model, input, inputShape, inputs } } as Manifest;
  }
  if (!Array.isArray(m.model.inputs) || m.model.inputs.length === 0) throw new GraftError('ARTIFACT', `${source}: a ${task.split('-')[0]} model must list its inputs`, { file: source });
  if (task === 'audio-classification') return { ...m, task, config: validateAudioConfig(m.config, `${source} config`) as AudioConfig & Cut } as Manifest;
  const config = validateTextConfig(m.config, `${source} config`) as TextConfig & Cut;
  return { ...m, task, config } as Manifest;
}
