/**
 * Which backbone should `graft train DIR` use when no --model is given? Every candidate graft can run
 * offline, measured on the same split: sklearn's L2 logistic-regression probe on its features, C by 5-fold
 * cross-validation on the training rows (bench/probe.ts; the yardstick of the table), and graft's default
 * head as `graft train` trains it (`auto`: chosen by graft's own cross-validation on the training rows).
 *
 *   node dist/bench/backbones.js [DATA=../shared/data/hymenoptera]
 *
 * Candidates: the ImageNet int8 MobileNetV2 from ../shared (reference), the bundled default (nsfwjs
 * mobilenet_v2_mid, converted from its TF.js graph), nsfwjs's layers MobileNetV2 at three depths, and the
 * Teachable Machine MobileNetV2 α0.35 from ../shared (imported).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { importTfjs } from '../src/convert/import.js';
import { readNsfwjsModel } from '../src/convert/nsfwjs.js';
import { convertLayersModel } from '../src/convert/tfjs-layers.js';
import { Learner } from '../src/learner.js';
import { encodeModel } from '../src/onnx/proto.js';
import { probe } from './probe.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const shared = resolve(root, '../shared');
const data = process.argv[2] ?? join(shared, 'data/hymenoptera');
const work = join(tmpdir(), 'graft-bench-backbones');
await mkdir(work, { recursive: true });

// nsfwjs's layers MobileNetV2 (α 1.0, NSFW fine-tuned), fed like nsfwjs feeds it.
const nsfw = convertLayersModel(readNsfwjsModel('mobilenet_v2'));
const nsfwDir = join(work, 'nsfwjs-mobilenet_v2');
await mkdir(nsfwDir, { recursive: true });
await writeFile(join(nsfwDir, 'model.onnx'), encodeModel(nsfw.model));
await writeFile(
  join(nsfwDir, 'pretrained_cfg.json'),
  JSON.stringify({ inputName: nsfw.inputName, layout: 'NHWC', inputSize: [224, 224], resize: 'squash', cropPct: 1, scale: 1 / 255, mean: [0, 0, 0], std: [1, 1, 1] }),
);
const tm = await importTfjs(join(shared, 'models/tm-mobilenetv2-0.35'), join(work, 'tm'));
const cutOf = (layer: string) => nsfw.layerOutputs.get(layer) ?? layer;

const candidates: Array<{ name: string; model: string; cut?: string }> = [
  { name: 'ImageNet MobileNetV2 int8 (../shared)', model: join(shared, 'models/mobilenetv2-12-int8/model.onnx') },
  { name: 'bundled default: nsfwjs mobilenet_v2_mid', model: 'mobilenetv2-140-bundled' },
  { name: 'nsfwjs mobilenet_v2 flatten_1', model: join(nsfwDir, 'model.onnx'), cut: cutOf('flatten_1') },
  { name: 'nsfwjs mobilenet_v2 block_15_add', model: join(nsfwDir, 'model.onnx'), cut: cutOf('block_15_add') },
  { name: 'nsfwjs mobilenet_v2 block_12_add', model: join(nsfwDir, 'model.onnx'), cut: cutOf('block_12_add') },
  { name: 'Teachable Machine MobileNetV2 α0.35', model: tm.model },
];

console.log(`${data}`);
console.log('| backbone | features | probe accuracy (C) | default head accuracy (chosen) | default − probe | extraction s | head s |');
console.log('| --- | --- | --- | --- | --- | --- | --- |');
for (const c of candidates) {
  const learn = await Learner.create({ data, model: c.model, seed: 0, cacheDir: join(work, 'cache'), hub: { offline: true }, ...(c.cut ? { cut: c.cut } : {}) });
  const { features, trainRows, valRows, extraction } = learn.data;
  const p = probe(features, trainRows, valRows);
  const t0 = performance.now();
  await learn.fit();
  const seconds = (performance.now() - t0) / 1000;
  const m = await learn.evaluate();
  const chosen = learn.selection?.chosen;
  const name = chosen?.kind === 'logistic' ? `logistic C=${chosen.C}` : (chosen?.kind ?? learn.spec.kind);
  const diff = m.accuracy - p.accuracy;
  console.log(`| ${c.name} | ${features.dim} | ${p.accuracy.toFixed(3)} (${p.C}) | ${m.accuracy.toFixed(3)} (${name}) | ${diff >= 0 ? '+' : ''}${diff.toFixed(3)} | ${extraction.seconds.toFixed(1)} | ${seconds.toFixed(1)} |`);
  await learn.close();
}
