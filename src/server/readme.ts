/** The README.md of a downloaded model: what it is, its files, and how to run it from graft, Node, Python and a browser. */
import type { Manifest } from '../artifact/artifact.js';
import type { Model } from './models.js';

const KERNEL = { nearest: 'nearest', bilinear: 'linear', bicubic: 'cubic', lanczos3: 'lanczos3' } as const;

const PIL_FILTER = { nearest: 'Image.NEAREST', bilinear: 'Image.BILINEAR', bicubic: 'Image.BICUBIC', lanczos3: 'Image.LANCZOS' } as const;
const fence = (lang: string, code: string) => `\`\`\`${lang}\n${code.trim()}\n\`\`\``;

function imageSnippets(m: Extract<Manifest, { task: 'image-classification' }>): string[] {
  const c = m.config;
  const [h, w] = c.inputSize;
  const nchw = c.layout === 'NCHW';
  const resize =
    c.resize === 'squash'
      ? `squashed to ${w}×${h}`
      : `resized so that its shorter side is round(${h} / ${c.cropPct}) = ${Math.round(h / c.cropPct)} px (${c.interpolation}), then its centre ${w}×${h} cropped`;
  const shape = nchw ? `[1, 3, ${h}, ${w}]` : `[1, ${h}, ${w}, 3]`;
  const kernel = KERNEL[c.interpolation];
  const nodeResize =
    c.resize === 'squash'
      ? `const pixels = await sharp('photo.jpg', { autoOrient: true }).flatten({ background: '#ffffff' }).toColourspace('srgb')
  .resize(w, h, { fit: 'fill', kernel: '${kernel}' }).removeAlpha().raw().toBuffer();`
      : `const { width: iw, height: ih } = (await sharp('photo.jpg', { autoOrient: true }).metadata()).autoOrient;
const s = Math.max(Math.round(h / cropPct) / ih, Math.round(w / cropPct) / iw);
const rh = Math.max(h, Math.round(ih * s)), rw = Math.max(w, Math.round(iw * s));
const pixels = await sharp('photo.jpg', { autoOrient: true }).flatten({ background: '#ffffff' }).toColourspace('srgb')
  .resize(rw, rh, { fit: 'fill', kernel: '${kernel}' })
  .extract({ left: Math.floor((rw - w) / 2), top: Math.floor((rh - h) / 2), width: w, height: h })
  .removeAlpha().raw().toBuffer();`;
  const pyResize =
    c.resize === 'squash'
      ? `x = np.asarray(img.resize((w, h), ${PIL_FILTER[c.interpolation]}), dtype=np.float32) * c["scale"]`
      : `s = max(round(h / c["cropPct"]) / img.height, round(w / c["cropPct"]) / img.width)
rw, rh = max(w, round(img.width * s)), max(h, round(img.height * s))
img = img.resize((rw, rh), ${PIL_FILTER[c.interpolation]})
left, top = (rw - w) // 2, (rh - h) // 2
x = np.asarray(img.crop((left, top, left + w, top + h)), dtype=np.float32) * c["scale"]`;
  return [
    `## Input\n\nOne ${c.channelOrder} image, upright (EXIF orientation applied), ${resize}; each channel value v in 0-255 becomes ` +
      `(v × ${c.scale} − mean) / std with mean ${JSON.stringify(c.mean)} and std ${JSON.stringify(c.std)}, laid out ${c.layout} ` +
      `as a float32 tensor \`${m.model.input}\` of shape ${shape} (any batch size N). The output \`${m.model.output}\` holds one probability per label, in the order of \`labels\` in graft.json.`,
    `## graft\n\n${fence('sh', 'graft predict . photo.jpg --top-k 3')}`,
    `## Node (onnxruntime-node + sharp)\n\n${fence(
      'js',
      `
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { readFileSync } from 'node:fs';

const manifest = JSON.parse(readFileSync('graft.json', 'utf8'));
const session = await ort.InferenceSession.create('model.onnx');
const { mean, std, scale${c.resize === 'squash' ? '' : ', cropPct'} } = manifest.config;
const [h, w] = manifest.config.inputSize;
${nodeResize}
const x = new Float32Array(3 * h * w);
for (let i = 0; i < h * w; i++)
  for (let ch = 0; ch < 3; ch++) x[${nchw ? 'ch * h * w + i' : 'i * 3 + ch'}] = (pixels[i * 3 + ch] * scale - mean[ch]) / std[ch];
const out = await session.run({ [manifest.model.input]: new ort.Tensor('float32', x, ${nchw ? '[1, 3, h, w]' : '[1, h, w, 3]'}) });
const probs = out[manifest.model.output].data;
console.log(manifest.labels.map((label, i) => [label, probs[i]]).sort((a, b) => b[1] - a[1]));
`,
    )}`,
    `## Python (onnxruntime + Pillow + numpy)\n\n${fence(
      'python',
      `
import json, numpy as np, onnxruntime as ort
from PIL import Image, ImageOps

m = json.load(open("graft.json"))
c = m["config"]
h, w = c["inputSize"]
img = ImageOps.exif_transpose(Image.open("photo.jpg")).convert("RGB")
${pyResize}
x = (x - np.array(c["mean"], np.float32)) / np.array(c["std"], np.float32)
x = ${nchw ? 'x.transpose(2, 0, 1)[None]' : 'x[None]'}
session = ort.InferenceSession("model.onnx")
probs = session.run([m["model"]["output"]], {m["model"]["input"]: x})[0][0]
print(sorted(zip(m["labels"], probs.tolist()), key=lambda p: -p[1]))
`,
    )}\n\nPillow's resampling filters are close to, not identical with, libvips': expect probabilities within about 1e-2 of graft's.`,
    `## Browser (onnxruntime-web)\n\n${fence(
      'js',
      `
import * as ort from 'onnxruntime-web';

const manifest = await (await fetch('graft.json')).json();
const session = await ort.InferenceSession.create('model.onnx');
// x: a Float32Array of ${nchw ? '3 × H × W (NCHW)' : 'H × W × 3 (NHWC)'} values, prepared as described under Input
// (draw the image on a canvas at the resized size, take the centre crop with getImageData, normalise).
const out = await session.run({ [manifest.model.input]: new ort.Tensor('float32', x, ${nchw ? `[1, 3, ${h}, ${w}]` : `[1, ${h}, ${w}, 3]`}) });
const probs = out[manifest.model.output].data;
`,
    )}`,
  ];
}

function textSnippets(m: Extract<Manifest, { task: 'text-classification' }>): string[] {
  const c = m.config;
  const inputs = [c.inputs.ids, c.inputs.mask, c.inputs.typeIds].filter(Boolean).map((n) => `\`${n}\``).join(', ');
  return [
    `## Input\n\nTexts tokenised with \`${c.tokenizer.file}\` (${c.tokenizer.model}${c.tokenizer.lowercase ? ', lower-cased' : ''}), cut to ${c.maxLength} tokens ` +
      `with the special tokens kept, padded with id ${c.padId}; int64 inputs ${inputs} of shape [N, T]. The output \`${m.model.output}\` holds one probability per label, in the order of \`labels\` in graft.json.`,
    `## graft\n\n${fence('sh', 'graft predict . --text "the text to classify" --top-k 3')}`,
    `## Node (onnxruntime-node + @huggingface/tokenizers)\n\n${fence(
      'js',
      `
import * as ort from 'onnxruntime-node';
import { Tokenizer } from '@huggingface/tokenizers';
import { readFileSync } from 'node:fs';

const manifest = JSON.parse(readFileSync('graft.json', 'utf8'));
const c = manifest.config;
const tokenizer = new Tokenizer(JSON.parse(readFileSync(c.tokenizer.file, 'utf8')), {});
let ids = tokenizer.encode('the text to classify').ids;
if (ids.length > c.maxLength) ids = [...ids.slice(0, c.maxLength - 1), ids[ids.length - 1]];
const feeds = { [c.inputs.ids]: new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [1, ids.length]) };
if (c.inputs.mask) feeds[c.inputs.mask] = new ort.Tensor('int64', new BigInt64Array(ids.length).fill(1n), [1, ids.length]);
if (c.inputs.typeIds) feeds[c.inputs.typeIds] = new ort.Tensor('int64', new BigInt64Array(ids.length), [1, ids.length]);
const session = await ort.InferenceSession.create('model.onnx');
const probs = (await session.run(feeds))[manifest.model.output].data;
`,
    )}`,
    `## Python (onnxruntime + tokenizers)\n\n${fence(
      'python',
      `
import json, numpy as np, onnxruntime as ort
from tokenizers import Tokenizer

m = json.load(open("graft.json"))
c = m["config"]
tok = Tokenizer.from_file(c["tokenizer"]["file"])
ids = tok.encode("the text to classify").ids[: c["maxLength"]]
feeds = {c["inputs"]["ids"]: np.array([ids], np.int64)}
if c["inputs"].get("mask"): feeds[c["inputs"]["mask"]] = np.ones((1, len(ids)), np.int64)
if c["inputs"].get("typeIds"): feeds[c["inputs"]["typeIds"]] = np.zeros((1, len(ids)), np.int64)
probs = ort.InferenceSession("model.onnx").run([m["model"]["output"]], feeds)[0][0]
print(sorted(zip(m["labels"], probs.tolist()), key=lambda p: -p[1]))
`,
    )}`,
    `## Browser (onnxruntime-web)\n\nAs in Node: tokenise with transformers.js or @huggingface/tokenizers, then \`new ort.Tensor('int64', ...)\` feeds for ${inputs}.`,
  ];
}

function audioSnippets(m: Extract<Manifest, { task: 'audio-classification' }>): string[] {
  const c = m.config;
  return [
    `## Input\n\nOne clip as a float32 waveform \`${m.model.input}\` of shape [1, samples]: mono, ${c.sampleRate} Hz, samples in [-1, 1]` +
      `${c.sampleScale !== 1 ? ` multiplied by ${c.sampleScale}` : ''}, at most ${c.maxSeconds} s (the front end is inside the graph). The output \`${m.model.output}\` holds one probability per label, in the order of \`labels\` in graft.json.`,
    `## graft\n\n${fence('sh', 'graft predict . clip.wav --top-k 3')}`,
    `## Node (onnxruntime-node)\n\n${fence(
      'js',
      `
import * as ort from 'onnxruntime-node';
import { readFileSync } from 'node:fs';

const manifest = JSON.parse(readFileSync('graft.json', 'utf8'));
const session = await ort.InferenceSession.create('model.onnx');
// samples: a Float32Array, mono at ${c.sampleRate} Hz in [-1, 1] (decode and resample with a library of your choice)
const out = await session.run({ [manifest.model.input]: new ort.Tensor('float32', samples, [1, samples.length]) });
const probs = out[manifest.model.output].data;
`,
    )}`,
    `## Python (onnxruntime + soundfile)\n\n${fence(
      'python',
      `
import json, numpy as np, onnxruntime as ort, soundfile as sf

m = json.load(open("graft.json"))
x, rate = sf.read("clip.wav", dtype="float32", always_2d=True)
x = x.mean(axis=1)  # mono; resample to ${c.sampleRate} Hz first if rate differs
probs = ort.InferenceSession("model.onnx").run([m["model"]["output"]], {m["model"]["input"]: x[None]})[0][0]
print(sorted(zip(m["labels"], probs.tolist()), key=lambda p: -p[1]))
`,
    )}`,
    `## Browser (onnxruntime-web)\n\nDecode with WebAudio at ${c.sampleRate} Hz (\`new AudioContext({ sampleRate: ${c.sampleRate} })\`), average the channels, then run as in Node.`,
  ];
}

export function modelReadme(model: Model, projectName: string, manifest: Manifest, files: string[]): string {
  const snippets = manifest.task === 'text-classification' ? textSnippets(manifest) : manifest.task === 'audio-classification' ? audioSnippets(manifest) : imageSnippets(manifest);
  const acc = model.metrics?.accuracy;
  return [
    `# ${projectName}: ${manifest.task} model ${model.id}`,
    `Trained by graft ${manifest.graftVersion} (\`graft serve\`, job ${model.jobId}) on ${model.createdAt.slice(0, 10)} from the backbone ${model.backbone}. ` +
      `Labels: ${model.labels.map((l) => `\`${l.replace(/`/g, "'")}\``).join(', ')}.${acc !== undefined ? ` Validation accuracy ${(acc * 100).toFixed(1)}% (macro-F1 ${model.metrics.macroF1.toFixed(3)}; details in metrics.json and report.html).` : ''}`,
    `## Files\n\n${files.map((f) => `- \`${f}\``).join('\n')}`,
    ...snippets,
  ].join('\n\n') + '\n';
}
