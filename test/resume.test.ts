/**
 * Checkpoints and resuming: the checkpoint file (round trip, another run's key, damage), the training loop
 * resumed in process, and real `graft train` runs killed with SIGKILL at several points (feature extraction,
 * head training, both fine-tuning phases, export), then run again: the metrics and the exported model must equal
 * an uninterrupted seeded run's, bit for bit.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CHECKPOINT_DIR, CheckpointStore, type TrainingSnapshot } from '../src/train/checkpoint.js';
import { fitStandardizer, type HeadSpec } from '../src/head/head.js';
import { DEFAULT_FIT, trainHead, type FeatureSet, type FitOptions } from '../src/train/trainer.js';
import { Random } from '../src/util/random.js';
import { linkSubset } from './support/cli.js';
import { ROOT, SHARED, requireShared } from './support/paths.js';

const [MODEL] = requireShared(join(SHARED, 'models/mobilenetv2-12-int8/model.onnx'), join(SHARED, 'data/hymenoptera'));
const BIN = join(ROOT, 'bin/graft.js');

let tmp: string;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'graft-resume-'));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

function snapshot(): TrainingSnapshot {
  return {
    epochs: 2,
    planned: 5,
    done: false,
    step: 6,
    stepsPerEpoch: 3,
    rng: 0xdeadbeef,
    history: [
      { epoch: 0, lr: 1e-3, trainLoss: 0.7, valLoss: 0.6, valAccuracy: 0.5, valMacroF1: NaN, seconds: 0.01 },
      { epoch: 1, lr: 9e-4, trainLoss: 0.5, valLoss: 0.4, valAccuracy: 0.75, valMacroF1: 0.7, seconds: 0.01 },
    ],
    bestEpoch: 1,
    stoppedEarly: false,
    best: [-0.4, -Infinity],
    weights: new Map([
      ['w', Float32Array.of(1.5, -2, 3.25)],
      ['b', Float32Array.of(0.125)],
    ]),
    snapshot: [Float32Array.of(1, 2, 3), Float32Array.of(4)],
    order: Int32Array.of(3, 1, 0, 2),
    optimizer: {
      kind: 'adamw',
      groups: [{ name: 'head', lr: 9e-4, weightDecay: 0.3, momentum: 0.9, frozen: false }],
      params: [
        { name: 'w', step: 6, buffers: [Float32Array.of(0.1, 0.2, 0.3), Float32Array.of(0.01, 0.02, 0.03)] },
        { name: 'b', step: 0, buffers: null },
      ],
    },
  };
}

const PARTS = { data: ['rows'], options: ['{"epochs":5}'], 'starting weights': [Float32Array.of(1, 2)] };

describe('checkpoint files', () => {
  it('round-trips a training snapshot: weights, moments, generator, order, early stopping, history', async () => {
    const dir = join(tmp, 'roundtrip');
    const phase = await new CheckpointStore(dir).open({ phase: '1-head', label: 'head training' }, PARTS);
    assert.equal(phase.saved, undefined);
    await phase.save(snapshot());
    const notices: string[] = [];
    const again = await new CheckpointStore(dir, (m) => notices.push(m)).open({ phase: '1-head', label: 'head training' }, PARTS);
    assert.deepEqual(again.saved, snapshot());
    assert.match(notices.join('\n'), /resuming head training after epoch 2 of 5/);
    const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as Record<string, { epochs: number; done: boolean }>;
    assert.deepEqual([index['1-head']!.epochs, index['1-head']!.done], [2, false]);
    assert.ok(await CheckpointStore.exists(dir));
    await CheckpointStore.remove(dir);
    assert.ok(!(await CheckpointStore.exists(dir)));
  });

  it('ignores a checkpoint another run wrote, saying which part differs, and overwrites it', async () => {
    const dir = join(tmp, 'other-run');
    await (await new CheckpointStore(dir).open({ phase: '1-head', label: 'head training' }, PARTS)).save(snapshot());
    const notices: string[] = [];
    const changed = { ...PARTS, options: ['{"epochs":6}'] };
    const phase = await new CheckpointStore(dir, (m) => notices.push(m)).open({ phase: '1-head', label: 'head training' }, changed);
    assert.equal(phase.saved, undefined);
    assert.match(notices[0]!, /1-head\.ckpt ignored: it was written by a different run \(its options differ\); head training starts over/);
    await phase.save({ ...snapshot(), epochs: 1 });
    const reopened = await new CheckpointStore(dir).open({ phase: '1-head', label: 'head training' }, changed);
    assert.equal(reopened.saved?.epochs, 1);
  });

  it('reports a truncated, damaged or foreign checkpoint and starts over instead of failing', async () => {
    const dir = join(tmp, 'damaged');
    const file = join(dir, '1-head.ckpt');
    const open = async () => {
      const notices: string[] = [];
      const phase = await new CheckpointStore(dir, (m) => notices.push(m)).open({ phase: '1-head', label: 'head training' }, PARTS);
      return { saved: phase.saved, notices };
    };
    await (await new CheckpointStore(dir).open({ phase: '1-head', label: 'head training' }, PARTS)).save(snapshot());
    const bytes = await readFile(file);
    await truncate(file, bytes.length - 100);
    let r = await open();
    assert.equal(r.saved, undefined);
    assert.match(r.notices[0]!, /1-head\.ckpt is unusable \(checksum mismatch: the file is truncated or damaged\); head training starts over/);
    const flipped = Buffer.from(bytes);
    flipped[bytes.length >> 1] ^= 0x40;
    await writeFile(file, flipped);
    r = await open();
    assert.equal(r.saved, undefined);
    assert.match(r.notices[0]!, /checksum mismatch/);
    await writeFile(file, 'not a checkpoint at all\n');
    r = await open();
    assert.equal(r.saved, undefined);
    assert.match(r.notices[0]!, /not a graft checkpoint/);
  });

  it('Random continues the same sequence from a saved state', () => {
    const a = new Random(7);
    for (let i = 0; i < 5; i++) a.next();
    const b = new Random(99);
    b.setState(a.getState());
    assert.deepEqual(Array.from({ length: 10 }, () => b.next()), Array.from({ length: 10 }, () => a.next()));
    assert.throws(() => b.setState(-1), RangeError);
  });
});

/** Two noisy Gaussian blobs in 16 dimensions. */
function blobs(): { data: FeatureSet; train: number[]; val: number[] } {
  const rng = new Random(5);
  const dim = 16;
  const n = 90;
  const features = new Float32Array(n * dim);
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    labels[i] = i % 3 === 0 ? 1 : 0; // imbalanced: balanced sampling draws from the generator too
    for (let j = 0; j < dim; j++) features[i * dim + j] = 2 * rng.normal() + (labels[i] ? 0.7 : -0.7) * (j < 4 ? 1 : 0);
  }
  const rows = [...Array(n).keys()];
  return { data: { features, dim, labels }, train: rows.slice(0, 60), val: rows.slice(60) };
}

describe('train() resumed in process', () => {
  const spec: HeadSpec = { kind: 'mlp', hidden: 8, dropout: 0.5, inputDim: 16, numClasses: 2 };
  const cases: Array<[string, Partial<FitOptions>]> = [
    ['AdamW, cosine, dropout, balanced sampling, early stopping', { optimizer: 'adamw', balance: true, patience: 3, monitor: 'accuracy' }],
    ['SGD with momentum, one-cycle, clipping', { optimizer: 'sgd', schedule: 'one-cycle', clipNorm: 0.5, lr: 0.05 }],
  ];
  for (const [name, options] of cases) {
    it(`continues to the same weights and history: ${name}`, async () => {
      const { data, train, val } = blobs();
      const std = fitStandardizer(data.features, data.dim, train);
      const fit: FitOptions = { ...DEFAULT_FIT, epochs: 10, batchSize: 16, lr: 1e-2, seed: 4, ...options };
      const dir = join(tmp, `loop-${name.slice(0, 4)}`);
      const checkpoint = (notices: string[] = []) => ({ store: new CheckpointStore(dir, (m) => notices.push(m)), phase: '1-head', label: 'head training', dataKey: 'blobs' });
      const whole = await trainHead(data, train, val, spec, std, fit);
      // A crash after epoch 4's events, before its checkpoint: the run resumes after epoch 3.
      const crash = { afterEpoch: (s: { epoch: number }) => {
        if (s.epoch === 3) throw new Error('crash');
      } };
      await assert.rejects(trainHead(data, train, val, spec, std, fit, [crash], checkpoint()), /crash/);
      const notices: string[] = [];
      const epochs: number[] = [];
      const resumed = await trainHead(data, train, val, spec, std, fit, [{ afterEpoch: (s) => epochs.push(s.epoch) }], checkpoint(notices));
      assert.match(notices.join('\n'), /resuming head training after epoch 3 of 10/);
      assert.equal(epochs[0], 3, 'the resumed run starts at the fourth epoch');
      assert.deepEqual(resumed.params.map((p) => Array.from(p.data)), whole.params.map((p) => Array.from(p.data)));
      const strip = (h: typeof whole.history) => h.map(({ seconds: _, ...r }) => r);
      assert.deepEqual(strip(resumed.history), strip(whole.history));
      assert.deepEqual([resumed.bestEpoch, resumed.stoppedEarly], [whole.bestEpoch, whole.stoppedEarly]);
      // Finished: a third run only restores the outcome.
      const finished: string[] = [];
      const again = await trainHead(data, train, val, spec, std, fit, [], checkpoint(finished));
      assert.match(finished.join('\n'), /head training finished before the restart/);
      assert.deepEqual(again.params.map((p) => Array.from(p.data)), whole.params.map((p) => Array.from(p.data)));
    });
  }
});

interface Child {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** `graft ...args` as a child process; `killWhen` sees stderr as it comes and may SIGKILL the child. */
function run(args: string[], env: Record<string, string> = {}, killWhen?: (stderr: string) => boolean): Promise<Child> {
  return new Promise((done) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (killWhen?.(stderr)) child.kill('SIGKILL');
    });
    child.on('close', (code, signal) => done({ code, signal, stdout, stderr }));
  });
}

/** What must match between an uninterrupted run and a killed-and-resumed one: the metrics, the model's bytes, the manifest bar its timings. */
async function outcome(out: string): Promise<{ metrics: string; model: Buffer; manifest: unknown }> {
  const manifest = JSON.parse(await readFile(join(out, 'graft.json'), 'utf8')) as { createdAt?: string; training: { history: Array<{ seconds?: number }>; fineTuned?: { seconds?: unknown } } };
  delete manifest.createdAt;
  for (const h of manifest.training.history) delete h.seconds;
  delete manifest.training.fineTuned?.seconds;
  return { metrics: await readFile(join(out, 'metrics.json'), 'utf8'), model: await readFile(join(out, 'model.onnx')), manifest };
}

async function assertSame(out: string, reference: string): Promise<void> {
  const [a, b] = [await outcome(out), await outcome(reference)];
  assert.equal(a.metrics, b.metrics, 'metrics.json differs');
  assert.ok(a.model.equals(b.model), 'model.onnx differs');
  assert.deepEqual(a.manifest, b.manifest);
  assert.ok(!existsSync(join(out, CHECKPOINT_DIR)), 'the checkpoint folder is removed after a successful run');
}

const epochsDone = async (out: string, phase: string) =>
  (JSON.parse(await readFile(join(out, CHECKPOINT_DIR, 'index.json'), 'utf8')) as Record<string, { epochs: number; planned: number; done: boolean }>)[phase];

describe('graft train killed with SIGKILL and run again (hymenoptera subset)', () => {
  let data: string;
  let cache: string;
  before(async () => {
    data = join(tmp, 'data');
    cache = join(tmp, 'cache');
    await linkSubset(data, 'train', 20);
    await linkSubset(data, 'val', 10);
  });
  // The MLP head trains by epochs, so a kill can land inside its training (an `auto` head may be solved instead).
  const base = () => ['train', data, '--model', MODEL, '--seed', '3', '--head', 'mlp'];

  describe('head training', () => {
    // Early stopping: the best epoch is the 4th, the run stops after the 6th (patience 2).
    const head = ['--epochs', '12', '--patience', '2', '--lr', '6e-4'];
    let reference: string;
    before(async () => {
      reference = join(tmp, 'head-reference');
      const r = await run([...base(), ...head, '--cache-dir', cache, '--out', reference]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /trained 6\/12 epochs \(early stop\); best epoch 4 restored/);
    });

    it('killed during feature extraction: the rerun reads what was cached and computes the rest', async () => {
      const out = join(tmp, 'head-extraction');
      const fresh = join(tmp, 'cache-extraction');
      // The first batch of 32 is in the cache when its progress line appears; the second is still running.
      const killed = await run([...base(), ...head, '--cache-dir', fresh, '--out', out], {}, (s) => /features: (\d+)\/60/.test(s) && !/features: 60\/60/.test(s));
      assert.equal(killed.signal, 'SIGKILL', killed.stderr);
      const resumed = await run([...base(), ...head, '--cache-dir', fresh, '--out', out, '--json']);
      assert.equal(resumed.code, 0, resumed.stderr);
      const { features } = JSON.parse(resumed.stdout) as { features: { cached: number; extracted: number } };
      assert.ok(features.cached >= 32 && features.extracted > 0, `cached ${features.cached}, extracted ${features.extracted}`);
      await assertSame(out, reference);
    });

    it('killed after epoch 5 (early stopping waiting), then again during export: each rerun continues where the last stopped', async () => {
      const out = join(tmp, 'head-killed');
      const killed = await run([...base(), ...head, '--cache-dir', cache, '--out', out], { GRAFT_TEST_KILL: '1-head:5' });
      assert.equal(killed.signal, 'SIGKILL', killed.stderr);
      const entry = await epochsDone(out, '1-head');
      assert.deepEqual([entry?.epochs, entry?.done], [5, false], 'the checkpoint index says how far it got');
      // Resumes after epoch 5 with early stopping's state: stops after the 6th as the uninterrupted run did.
      const again = await run([...base(), ...head, '--cache-dir', cache, '--out', out], { GRAFT_TEST_KILL: 'export' });
      assert.equal(again.signal, 'SIGKILL', again.stderr);
      assert.match(again.stderr, /resuming head training \(phase 1\) after epoch 5 of 12/);
      assert.match(again.stderr, /trained 6\/12 epochs \(early stop\); best epoch 4 restored/);
      assert.ok(existsSync(join(out, 'model.onnx')) && !existsSync(join(out, 'graft.json')), 'killed between model.onnx and graft.json');
      const last = await run([...base(), ...head, '--cache-dir', cache, '--out', out, '--resume']);
      assert.equal(last.code, 0, last.stderr);
      assert.match(last.stderr, /head training \(phase 1\) finished before the restart: restored from the checkpoint \(6 epochs\)/);
      await assertSame(out, reference);
    });

    it('another command ignores the checkpoint and says why; --no-resume starts over; --resume without a checkpoint is an error', async () => {
      const out = join(tmp, 'head-options');
      const other = await run([...base(), '--epochs', '4', '--patience', '2', '--lr', '6e-4', '--cache-dir', cache, '--out', out], { GRAFT_TEST_KILL: '1-head:1' });
      assert.equal(other.signal, 'SIGKILL', other.stderr);
      const killed = await run([...base(), ...head, '--cache-dir', cache, '--out', out], { GRAFT_TEST_KILL: '1-head:3' });
      assert.equal(killed.signal, 'SIGKILL', killed.stderr);
      assert.match(killed.stderr, /1-head\.ckpt ignored: it was written by a different run \(its options differ\); head training \(phase 1\) starts over/);
      assert.equal((await epochsDone(out, '1-head'))?.planned, 12, 'overwritten by the new run');
      const fresh = await run([...base(), ...head, '--cache-dir', cache, '--out', out, '--no-resume']);
      assert.equal(fresh.code, 0, fresh.stderr);
      assert.doesNotMatch(fresh.stderr, /resuming|checkpoint/);
      await assertSame(out, reference);
      const none = await run([...base(), ...head, '--cache-dir', cache, '--out', out, '--resume']);
      assert.equal(none.code, 2);
      assert.match(none.stderr, /--resume: .* holds no checkpoint to resume/);
    });
  });

  describe('fine-tuning (--unfreeze 1 --freeze-epochs 3 --epochs 3)', () => {
    const tune = ['--unfreeze', '1', '--freeze-epochs', '3', '--epochs', '3'];
    let reference: string;
    before(async () => {
      reference = join(tmp, 'tune-reference');
      const r = await run([...base(), ...tune, '--cache-dir', cache, '--out', reference]);
      assert.equal(r.code, 0, r.stderr);
    });

    it('killed in phase 1, then in phase 2, then during export: each rerun continues there, and the last ends identical', async () => {
      const out = join(tmp, 'tune-killed');
      const steps: Array<[string | undefined, RegExp | undefined]> = [
        ['1-head:2', undefined],
        ['2-fine-tune:1', /resuming head training \(phase 1\) after epoch 2 of 3/],
        ['export', /head training \(phase 1\) finished before the restart[^\n]*\nresuming fine-tuning \(phase 2\) after epoch 1 of 3/],
        [undefined, /head training \(phase 1\) finished before the restart[^\n]*\nfine-tuning \(phase 2\) finished before the restart: restored from the checkpoint \(3 epochs\)/],
      ];
      for (const [point, expect] of steps) {
        const r = await run([...base(), ...tune, '--cache-dir', cache, '--out', out], point ? { GRAFT_TEST_KILL: point } : {});
        if (point) assert.equal(r.signal, 'SIGKILL', `not killed at ${point}: ${r.stderr}`);
        else assert.equal(r.code, 0, r.stderr);
        if (expect) assert.match(r.stderr, expect);
      }
      await assertSame(out, reference);
    });
  });
});
