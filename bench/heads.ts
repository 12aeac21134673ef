/**
 * Head selection study: trains each candidate head on cached features of one dataset and prints validation
 * accuracy and loss, so the defaults are measured rather than assumed.
 *   node dist/bench/heads.js DATA MODEL ['{"cropPct": 1}' (PretrainedConfig overrides)]
 */
import { Learner } from '../src/learner.js';
import type { FitOptions } from '../src/train/trainer.js';
import type { HeadSpec } from '../src/head/head.js';

const [data, model, configJson] = process.argv.slice(2);
const config = configJson ? (JSON.parse(configJson) as Record<string, unknown>) : undefined;
if (!data || !model) throw new Error('usage: heads.js DATA MODEL');
const candidates: Array<{ name: string; head: Partial<HeadSpec>; fit: Partial<FitOptions> }> = [
  { name: 'linear lr1e-3', head: { kind: 'linear' }, fit: { lr: 1e-3 } },
  { name: 'linear lr3e-4', head: { kind: 'linear' }, fit: { lr: 3e-4 } },
  { name: 'mlp256 d0.2 lr1e-3', head: { kind: 'mlp', hidden: 256, dropout: 0.2 }, fit: { lr: 1e-3 } },
  { name: 'mlp256 d0.5 lr1e-4', head: { kind: 'mlp', hidden: 256, dropout: 0.5 }, fit: { lr: 1e-4 } },
  { name: 'mlp256 d0.5 lr3e-4', head: { kind: 'mlp', hidden: 256, dropout: 0.5 }, fit: { lr: 3e-4 } },
  { name: 'mlp256 d0.5 lr3e-4 wd0.3', head: { kind: 'mlp', hidden: 256, dropout: 0.5 }, fit: { lr: 3e-4, weightDecay: 0.3 } },
  { name: 'mlp256 d0.5 lr1e-4 bs64', head: { kind: 'mlp', hidden: 256, dropout: 0.5 }, fit: { lr: 1e-4, batchSize: 64 } },
];
for (const c of candidates) {
  for (const seed of [0, 1]) {
    const learn = await Learner.create({ data, model, head: c.head, seed, ...(config ? { config } : {}) });
    const t0 = performance.now();
    const r = await learn.fit({ ...c.fit, seed });
    const m = await learn.evaluate();
    console.log(`${c.name.padEnd(28)} seed ${seed}: acc ${m.accuracy.toFixed(4)} loss ${m.loss!.toFixed(4)} epochs ${r.history.length} best ${r.bestEpoch + 1} ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
}
