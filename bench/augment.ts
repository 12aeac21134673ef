/**
 * Augmentation and fine-tuning against time on flowers5 (seeded stratified 80/20 split, int8 MobileNetV2 from
 * ../shared): each configuration trains from a cold feature cache (its own temporary folder, so every run pays
 * its extraction) and reports validation accuracy, wall time and the accuracy reached after each epoch against
 * the time spent so far (the accuracy-against-time-budget curve).
 *
 *   node dist/bench/augment.js [--data DIR] [--model FILE] [--configs fe,fe-crop1,fe-light4,...] [--seed 0]
 *
 * Configurations (name: what it trains):
 *   fe              feature extraction, the model's own preprocessing (resize 256, centre crop 224)
 *   fe-crop1        feature extraction, no centre crop (cropPct 1)
 *   fe-<policy><K>  feature extraction with K augmented views per image (e.g. fe-light4), no centre crop
 *   ft<U>           fine-tuning the last U blocks (e.g. ft2), no centre crop
 *   ft<U>-<policy><K>[-tta]  the same with K augmented views (and test-time mirroring)
 * Every configuration except fe uses cropPct 1: flowers5's images are 128×128, and a centre crop of an image
 * already smaller than the input throws away a quarter of it.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Learner } from '../src/learner.js';
import type { AugmentLevel } from '../src/preprocess/augment.js';
import type { Callback } from '../src/train/trainer.js';
import { cpuModel, option } from './cli.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const data = resolve(option('--data', join(root, '../shared/data/flowers5')));
const model = resolve(option('--model', join(root, '../shared/models/mobilenetv2-12-int8/model.onnx')));
const seed = Number(option('--seed', '0'));
const configs = option('--configs', 'fe,fe-crop1,fe-light4,ft2,ft2-light4-tta').split(',');

interface Parsed {
  unfreeze?: number;
  augment?: AugmentLevel;
  views?: number;
  tta: boolean;
  crop1: boolean;
  epochs?: number;
}

function parse(name: string): Parsed {
  const m = /^(fe|ft(\d+))(?:-(crop1))?(?:-(light|standard|strong)(\d+))?(-tta)?(?:-e(\d+))?$/.exec(name);
  if (!m) throw new Error(`unknown configuration ${name}`);
  return {
    ...(m[2] ? { unfreeze: Number(m[2]) } : {}),
    ...(m[4] ? { augment: m[4] as AugmentLevel, views: Number(m[5]) } : {}),
    tta: !!m[6],
    crop1: name !== 'fe',
    ...(m[7] ? { epochs: Number(m[7]) } : {}),
  };
}

console.log(`${data}; ${model}; seed ${seed}; CPU: ${cpuModel()}`);
const rows: string[] = [];
for (const name of configs) {
  const c = parse(name);
  const cacheDir = await mkdtemp(join(tmpdir(), 'graft-bench-augment-'));
  const t0 = performance.now();
  const curve: Array<[number, number]> = [];
  const record: Callback = { afterEpoch: (s) => curve.push([(performance.now() - t0) / 1000, s.history[s.history.length - 1]!.valAccuracy]) };
  const learn = await Learner.create({
    data,
    model,
    seed,
    cacheDir,
    hub: { offline: true },
    ...(c.crop1 ? { config: { cropPct: 1 } } : {}),
    ...(c.augment ? { augment: c.augment, views: c.views! } : {}),
    ...(c.tta ? { tta: true } : {}),
  });
  const extracted = (performance.now() - t0) / 1000;
  try {
    if (c.unfreeze) await learn.fineTune({ unfreeze: c.unfreeze, fit: { epochs: c.epochs ?? 8 } }, [record]);
    else await learn.fit({}, [record]);
    const m = await learn.evaluate();
    const wall = (performance.now() - t0) / 1000;
    const points = curve.filter((_, i) => i % Math.max(1, Math.floor(curve.length / 8)) === 0 || i === curve.length - 1);
    const row = `| ${name} | ${m.accuracy.toFixed(3)} | ${m.macroF1.toFixed(3)} | ${extracted.toFixed(0)} | ${wall.toFixed(0)} | ${points.map(([t, a]) => `${t.toFixed(0)}s:${a.toFixed(3)}`).join(' ')} |`;
    rows.push(row);
    console.log(row);
  } finally {
    await learn.close();
    await rm(cacheDir, { recursive: true, force: true });
  }
}
console.log('\n| configuration | val accuracy | macro-F1 | extraction s | total s | accuracy after epoch (s since start: accuracy) |\n| --- | --- | --- | --- | --- | --- |');
for (const r of rows) console.log(r);
