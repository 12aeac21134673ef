/**
 * The TensorFlow.js models bundled in the npm package nsfwjs (MIT), read without TensorFlow.js. nsfwjs ships
 * each model as UMD modules under dist/models/<name>/: `model.min.js` exports the model.json object and each
 * `<shard>.min.js` exports that weight shard as a base64 string.
 *
 * nsfwjs feeds every model RGB scaled to [0, 1] (pixel / 255), resized with tf.image.resizeBilinear
 * (alignCorners) to 224×224 (299×299 for inception_v3), NHWC; mobilenet_v2_mid scales to [−1, 1] inside the graph.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { GraftError, invalidParameter } from '../errors.js';
import { decodeWeights, type TfjsModel, type TfjsModelJson } from './tfjs-weights.js';

export type NsfwjsModelName = 'mobilenet_v2' | 'mobilenet_v2_mid' | 'inception_v3';

const MODEL_NAMES: readonly NsfwjsModelName[] = ['mobilenet_v2', 'mobilenet_v2_mid', 'inception_v3'];

const require = createRequire(import.meta.url);

/** The installed package's folder, found from its entry point (its `exports` hide dist/models from require). */
function findPackage(): { root: string; version: string } | undefined {
  let entry: string;
  try {
    entry = require.resolve('nsfwjs');
  } catch {
    return undefined;
  }
  for (let dir = dirname(entry); dir !== dirname(dir); dir = dirname(dir)) {
    const file = join(dir, 'package.json');
    if (!existsSync(file)) continue;
    const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: string; version?: string };
    if (pkg.name === 'nsfwjs') return { root: dir, version: pkg.version ?? '' };
  }
  return undefined;
}

const PACKAGE = findPackage();

/** Version of the installed nsfwjs ('' when it is not installed). */
export const NSFWJS_VERSION: string = PACKAGE?.version ?? '';

export function nsfwjsAvailable(): boolean {
  return PACKAGE !== undefined;
}

/** Evaluates one of nsfwjs's UMD modules and lets it go again (the shards are megabytes of base64). */
function loadModule(file: string): unknown {
  try {
    return require(file);
  } catch (e) {
    throw new GraftError('MODEL', `${file}: cannot load this nsfwjs model file (${(e as Error).message})`, { file }, { cause: e });
  } finally {
    delete require.cache[file];
  }
}

/** Reads a model bundled in nsfwjs, weights decoded (float32, dequantized exactly as tfjs does). */
export function readNsfwjsModel(name: NsfwjsModelName): TfjsModel {
  if (!MODEL_NAMES.includes(name)) throw invalidParameter('the nsfwjs model name', `one of ${MODEL_NAMES.map((n) => `"${n}"`).join(', ')}`, name);
  if (!PACKAGE)
    throw new GraftError('MODEL', `the nsfwjs package is not installed, so its bundled model ${name} is not available (npm install nsfwjs@4.4.0)`, {
      package: 'nsfwjs',
      model: name,
    });
  const dir = join(PACKAGE.root, 'dist', 'models', name);
  const source = join(dir, 'model.min.js');
  const json = loadModule(source) as TfjsModelJson | null;
  if (typeof json !== 'object' || json === null || !json.modelTopology || !Array.isArray(json.weightsManifest))
    throw new GraftError('MODEL', `${source}: does not export a TensorFlow.js model.json (needs modelTopology and weightsManifest)`, { file: source });
  const shard = (path: string): Uint8Array => {
    const file = join(dir, `${path}.min.js`);
    const base64 = loadModule(file);
    if (typeof base64 !== 'string') throw new GraftError('MODEL', `${file}: does not export a base64 weight shard`, { file, shard: path });
    return new Uint8Array(Buffer.from(base64, 'base64'));
  };
  return { json, weights: decodeWeights(json.weightsManifest, shard, source), source };
}
