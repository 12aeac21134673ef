/**
 * The exported model directory: `model.onnx` (cut backbone + trained head as ONE graph: image tensor in,
 * class probabilities out) and `graft.json` (labels, PretrainedConfig, metrics, provenance). Both files are
 * written atomically; graft.json records model.onnx's sha256 so a half-updated directory is detected.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { writeFileAtomic } from '../util/fs.js';
import { GraftError } from '../errors.js';
import type { Metrics } from '../evaluate/metrics.js';
import type { HeadSpec } from '../head/head.js';
import { encodeModel, type ModelProto } from '../onnx/proto.js';
import { validateConfig, type PretrainedConfig } from '../preprocess/config.js';
import { VERSION } from '../version.js';

export const MODEL_FILE = 'model.onnx';
export const MANIFEST_FILE = 'graft.json';
export const FORMAT = 'graft-model';
export const FORMAT_VERSION = 1;

export interface Manifest {
  format: typeof FORMAT;
  formatVersion: number;
  graftVersion: string;
  createdAt: string;
  task: 'image-classification';
  labels: string[];
  /** Preprocessing the model expects; apply it exactly (predict and load() do). */
  config: PretrainedConfig & { cut: string; featureDim: number };
  model: { file: string; sha256: string; input: string; output: string; inputShape: Array<number | string> };
  backbone: { name?: string; file: string; sha256: string; cut: string; cutReason: string };
  head: HeadSpec;
  training: Record<string, unknown> & { seed: number };
  metrics?: Metrics;
  data?: Record<string, unknown>;
}

export async function writeArtifact(dir: string, model: ModelProto, manifest: Omit<Manifest, 'format' | 'formatVersion' | 'graftVersion' | 'createdAt' | 'model'> & { model: Omit<Manifest['model'], 'sha256' | 'file'> }): Promise<Manifest> {
  const out = resolve(dir);
  await mkdir(out, { recursive: true });
  const bytes = encodeModel(model);
  const full: Manifest = {
    format: FORMAT,
    formatVersion: FORMAT_VERSION,
    graftVersion: VERSION,
    createdAt: new Date().toISOString(),
    ...manifest,
    model: { file: MODEL_FILE, sha256: createHash('sha256').update(bytes).digest('hex'), ...manifest.model },
  };
  await writeFileAtomic(join(out, MODEL_FILE), bytes);
  await writeFileAtomic(join(out, MANIFEST_FILE), JSON.stringify(full, null, 2) + '\n');
  return full;
}

/** Reads and checks an artifact directory; returns its manifest and model bytes. */
export async function readArtifact(dir: string): Promise<{ manifest: Manifest; modelBytes: Uint8Array; dir: string }> {
  const root = resolve(dir);
  const manifestPath = join(root, MANIFEST_FILE);
  let text: string;
  try {
    text = await readFile(manifestPath, 'utf8');
  } catch (cause) {
    throw new GraftError('ARTIFACT', `${manifestPath}: not found; is ${root} a directory written by \`graft train --out\`?`, { file: manifestPath }, { cause });
  }
  let manifest: Manifest;
  try {
    manifest = JSON.parse(text) as Manifest;
  } catch (cause) {
    throw new GraftError('ARTIFACT', `${manifestPath}: not valid JSON (${(cause as Error).message})`, { file: manifestPath }, { cause });
  }
  if (manifest.format !== FORMAT) throw new GraftError('ARTIFACT', `${manifestPath}: not a graft model (format ${JSON.stringify(manifest.format)})`, { file: manifestPath });
  if (manifest.formatVersion > FORMAT_VERSION) {
    throw new GraftError('ARTIFACT', `${manifestPath}: format version ${manifest.formatVersion} is newer than this graft understands (${FORMAT_VERSION}); upgrade graft`, { file: manifestPath });
  }
  if (!Array.isArray(manifest.labels) || manifest.labels.length < 2) throw new GraftError('ARTIFACT', `${manifestPath}: labels must list at least 2 classes`, { file: manifestPath });
  manifest.config = validateConfig(manifest.config, `${manifestPath} config`) as Manifest['config'];
  const modelPath = join(root, manifest.model?.file ?? MODEL_FILE);
  let modelBytes: Uint8Array;
  try {
    modelBytes = await readFile(modelPath);
  } catch (cause) {
    throw new GraftError('ARTIFACT', `${modelPath}: cannot read the model (${(cause as NodeJS.ErrnoException).code ?? (cause as Error).message})`, { file: modelPath }, { cause });
  }
  const sha = createHash('sha256').update(modelBytes).digest('hex');
  if (manifest.model?.sha256 && sha !== manifest.model.sha256) {
    throw new GraftError('ARTIFACT', `${modelPath}: sha256 ${sha.slice(0, 12)}… does not match ${MANIFEST_FILE} (${manifest.model.sha256.slice(0, 12)}…); the directory is inconsistent, export again`, { file: modelPath });
  }
  return { manifest, modelBytes, dir: root };
}
