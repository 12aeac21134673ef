/**
 * RemoteSession: an ONNX Runtime session on a worker thread. Same results as a session on the main thread,
 * a main thread that stays responsive during a long run, ONNX Runtime's errors, order, and a clean exit.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Worker } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import { GraftError } from '../src/errors.js';
import { GraphBuilder } from '../src/onnx/builder.js';
import { DataType, encodeModel } from '../src/onnx/proto.js';
import { RemoteSession, type Feed } from '../src/train/remote-session.js';
import { Random } from '../src/util/random.js';

/** y = x·w + 1 (float32), z = float(idx²) (int64 in), s = sum(x) (float32). */
function smallModel(): Uint8Array {
  const b = new GraphBuilder('small');
  b.input('x', DataType.FLOAT, ['N', 3]);
  b.input('w', DataType.FLOAT, [3, 2]);
  b.input('idx', DataType.INT64, ['M']);
  const one = b.constant('one', Float32Array.of(1), []);
  b.node('Add', [b.op('MatMul', ['x', 'w']), one], {}, { outputs: ['y'] });
  b.node('Cast', [b.op('Mul', ['idx', 'idx'])], { to: DataType.FLOAT }, { outputs: ['z'] });
  b.node('ReduceSum', ['x'], { keepdims: 0 }, { outputs: ['s'] });
  b.output('y', DataType.FLOAT, ['N', 2]);
  b.output('z', DataType.FLOAT, ['M']);
  b.output('s', DataType.FLOAT, []);
  return encodeModel(b.model(13));
}

/** A chain of `k` [S,S]·[S,S] MatMuls: a run long enough to block a thread for a good while. */
function heavyModel(S: number, k: number): Uint8Array {
  const rng = new Random(1);
  const b = new GraphBuilder('heavy');
  b.input('x', DataType.FLOAT, [S, S]);
  const w = b.constant('w', Float32Array.from({ length: S * S }, () => rng.normal() / Math.sqrt(S)), [S, S]);
  let h = 'x';
  for (let i = 0; i < k; i++) h = b.op('MatMul', [h, w]);
  b.node('Identity', [h], {}, { outputs: ['y'] });
  b.output('y', DataType.FLOAT, [S, S]);
  return encodeModel(b.model(13));
}

function toOrt(feeds: Record<string, Feed>): Record<string, ort.Tensor> {
  const out: Record<string, ort.Tensor> = {};
  for (const [name, f] of Object.entries(feeds)) out[name] = new ort.Tensor(f.type, f.data, f.dims);
  return out;
}

const feedsFor = (x: number[], idx: bigint[]): Record<string, Feed> => ({
  x: { type: 'float32', data: Float32Array.from(x), dims: [x.length / 3, 3] },
  w: { type: 'float32', data: Float32Array.of(0.5, -1, 2, 0.25, -3, 1.5), dims: [3, 2] },
  idx: { type: 'int64', data: BigInt64Array.from(idx), dims: [idx.length] },
});

/** Largest gap between ticks of a 5 ms interval while `work` runs, and the number of ticks meanwhile. */
async function timerGaps(work: () => Promise<unknown>): Promise<{ maxGap: number; ticks: number; ms: number }> {
  let last = performance.now();
  let maxGap = 0;
  let ticks = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    maxGap = Math.max(maxGap, now - last);
    last = now;
    ticks++;
  }, 5);
  try {
    await new Promise((resolve) => setTimeout(resolve, 20));
    const started = performance.now();
    [last, maxGap, ticks] = [started, 0, 0];
    await work();
    const ms = performance.now() - started;
    maxGap = Math.max(maxGap, performance.now() - last);
    return { maxGap, ticks, ms };
  } finally {
    clearInterval(timer);
  }
}

describe('RemoteSession', () => {
  const model = smallModel();
  let direct: ort.InferenceSession;
  let remote: RemoteSession;

  before(async () => {
    direct = await ort.InferenceSession.create(model);
    remote = await RemoteSession.create(model);
  });

  after(async () => {
    await remote.release();
    await direct.release();
  });

  it('gives the results of a session on the main thread, for float32 and int64 feeds', async () => {
    assert.deepEqual([...remote.inputNames], ['x', 'w', 'idx']);
    assert.deepEqual([...remote.outputNames], ['y', 'z', 's']);
    for (const [x, idx] of [
      [[1, 2, 3, -4, 5.5, 6], [3n, -2n, 40000n]],
      [[0.1, 0.2, 0.3], [7n]],
      [[1, 2, 3, 4, 5, 6, 7, 8, 9], [1n, 2n]],
    ] as const) {
      const feeds = feedsFor([...x], [...idx]);
      const expected = await direct.run(toOrt(feeds));
      const got = await remote.run(feeds);
      assert.deepEqual(Object.keys(got).sort(), ['s', 'y', 'z']);
      for (const name of ['y', 'z', 's']) {
        assert.ok(got[name]!.data instanceof Float32Array);
        assert.deepEqual(got[name]!.data, expected[name]!.data, name);
        assert.deepEqual(got[name]!.dims, [...expected[name]!.dims], name);
      }
    }
    // Only the outputs asked for.
    const some = await remote.run(feedsFor([1, 2, 3], [5n]), ['z']);
    assert.deepEqual(Object.keys(some), ['z']);
    assert.deepEqual([...some.z!.data], [25]);
  });

  it('processes runs in order', async () => {
    // Ten runs in flight at once (the first through the staging buffers, the others as private copies while
    // those are in use), then ten more after they settle.
    for (let round = 0; round < 2; round++) {
      const settled: number[] = [];
      const runs = Array.from({ length: 10 }, (_, i) =>
        remote.run(feedsFor(Array(6).fill(i + 10 * round), [BigInt(i), BigInt(i)])).then((out) => {
          settled.push(i);
          return out;
        }),
      );
      const outs = await Promise.all(runs);
      assert.deepEqual(settled, [...Array(10).keys()]);
      outs.forEach((out, i) => {
        assert.deepEqual([...out.s!.data], [6 * (i + 10 * round)]);
        assert.deepEqual([...out.z!.data], [i * i, i * i]);
      });
    }
  });

  it('moves a session whose runs are short to the calling thread, and keeps the others on their worker', async () => {
    const short = await RemoteSession.create(model, { inlineBelowMs: 1000 });
    const long = await RemoteSession.create(model, { inlineBelowMs: 1e-6 });
    try {
      // The first short run on the worker moves `short`; `long` stays after three runs.
      for (let i = 0; i < 4; i++) await Promise.all([short.run(feedsFor([1, 2, 3], [1n])), long.run(feedsFor([1, 2, 3], [1n]))]);
      const settled: number[] = [];
      const runs = Array.from({ length: 5 }, (_, i) =>
        short.run(feedsFor([i, 2 * i, 3, 4, 5, 6], [BigInt(i)])).then((out) => {
          settled.push(i);
          return out;
        }),
      );
      const outs = await Promise.all(runs);
      assert.equal(short.inline, true);
      assert.deepEqual(settled, [0, 1, 2, 3, 4]);
      for (let i = 0; i < 5; i++) {
        const expected = await direct.run(toOrt(feedsFor([i, 2 * i, 3, 4, 5, 6], [BigInt(i)])));
        for (const name of ['y', 'z', 's']) assert.deepEqual(outs[i]![name]!.data, expected[name]!.data, name);
      }
      const bad = { ...feedsFor([1, 2, 3], [1n]), x: { type: 'float32', data: Float32Array.of(1, 2, 3, 4), dims: [1, 4] } } satisfies Record<string, Feed>;
      const message = await direct.run(toOrt(bad)).then(() => '', (e: Error) => e.message);
      assert.match(message, /dimension/i);
      await assert.rejects(short.run(bad), (e: unknown) => e instanceof GraftError && e.code === 'TRAIN' && e.message.includes(message));
      await long.run(feedsFor([1, 2, 3], [1n]));
      assert.equal(long.inline, false);
    } finally {
      await short.release();
      await long.release();
    }
    await assert.rejects(short.run(feedsFor([1, 2, 3], [1n])), (e: unknown) => e instanceof GraftError && /released/.test(e.message));
  });

  it("rejects a failed run with a GraftError carrying ONNX Runtime's message, and keeps working", async () => {
    const bad = { ...feedsFor([1, 2, 3], [1n]), x: { type: 'float32', data: Float32Array.of(1, 2, 3, 4), dims: [1, 4] } } satisfies Record<string, Feed>;
    const message = await direct.run(toOrt(bad)).then(
      () => assert.fail('the direct session accepted a bad feed'),
      (e: Error) => e.message,
    );
    assert.match(message, /dimension/i);
    await assert.rejects(remote.run(bad), (e: unknown) => e instanceof GraftError && e.code === 'TRAIN' && e.message.includes(message));
    const { idx: _, ...missing } = feedsFor([1, 2, 3], [1n]);
    await assert.rejects(remote.run(missing), (e: unknown) => e instanceof GraftError && e.code === 'TRAIN' && /idx/.test(e.message));
    await assert.rejects(remote.run(feedsFor([1, 2, 3], [1n]), ['nope']), (e: unknown) => e instanceof GraftError && /nope/.test(e.message));
    // A feed whose array does not match its type is refused before it reaches the worker.
    await assert.rejects(
      remote.run({ ...feedsFor([1, 2, 3], [1n]), idx: { type: 'int64', data: Float32Array.of(1), dims: [1] } }),
      (e: unknown) => e instanceof GraftError && e.code === 'USAGE',
    );
    const ok = await remote.run(feedsFor([1, 2, 3], [4n]));
    assert.deepEqual([...ok.z!.data], [16]);
  });

  it('rejects a model ONNX Runtime cannot load', async () => {
    await assert.rejects(RemoteSession.create(Uint8Array.of(1, 2, 3, 4)), (e: unknown) => e instanceof GraftError && e.code === 'TRAIN' && /session/.test(e.message));
  });

  it('keeps the event loop responsive during a long run, where a direct run blocks it', async (t) => {
    const x: Feed = { type: 'float32', data: new Float32Array(512 * 512).fill(0.01), dims: [512, 512] };
    const feeds = { x: new ort.Tensor('float32', x.data, x.dims) };
    // Long enough to matter (~300 ms) on this machine, whatever its speed.
    const probe = await ort.InferenceSession.create(heavyModel(512, 8));
    await probe.run(feeds);
    let probeMs = performance.now();
    await probe.run(feeds);
    probeMs = performance.now() - probeMs;
    await probe.release();
    const heavy = heavyModel(512, Math.min(2000, Math.ceil((8 * 300) / Math.max(probeMs, 1))));
    const session = await ort.InferenceSession.create(heavy);
    const worker = await RemoteSession.create(heavy);
    try {
      const blocked = await timerGaps(() => session.run(feeds));
      const free = await timerGaps(() => worker.run({ x }));
      t.diagnostic(`direct: ${blocked.ms.toFixed(0)} ms, longest tick gap ${blocked.maxGap.toFixed(0)} ms, ${blocked.ticks} ticks`);
      t.diagnostic(`worker: ${free.ms.toFixed(0)} ms, longest tick gap ${free.maxGap.toFixed(0)} ms, ${free.ticks} ticks`);
      // The direct run holds the main thread for (almost) all of its duration: no tick gets through.
      assert.ok(blocked.maxGap > 0.7 * blocked.ms, `direct: ${JSON.stringify(blocked)}`);
      // On the worker the interval keeps ticking.
      assert.ok(free.ms > 50, `the remote run took only ${free.ms} ms`);
      assert.ok(free.maxGap < Math.max(30, 0.3 * free.ms), `remote: ${JSON.stringify(free)}`);
      assert.ok(free.ticks >= Math.min(10, free.ms / 20), `remote: ${JSON.stringify(free)}`);
    } finally {
      await session.release();
      await worker.release();
    }
  });

  it('rejects pending and later runs when the worker dies', async () => {
    const session = await RemoteSession.create(model);
    // A request the worker does not understand throws there, which ends the worker.
    (session as unknown as { worker: Worker }).worker.postMessage({ kind: 'bogus' });
    const pending = session.run(feedsFor([1, 2, 3], [1n]));
    await assert.rejects(pending, (e: unknown) => e instanceof GraftError && e.code === 'TRAIN' && /worker/.test(e.message));
    await assert.rejects(session.run(feedsFor([1, 2, 3], [1n])), (e: unknown) => e instanceof GraftError && /worker/.test(e.message));
    await session.release();
  });

  it('waits for the runs in flight on release, then refuses new ones', async () => {
    const session = await RemoteSession.create(model);
    const runs = [session.run(feedsFor([1, 2, 3], [2n])), session.run(feedsFor([1, 2, 3], [3n]))];
    await session.release();
    const outs = await Promise.all(runs);
    assert.deepEqual(outs.map((o) => o.z!.data[0]), [4, 9]);
    await assert.rejects(session.run(feedsFor([1, 2, 3], [1n])), (e: unknown) => e instanceof GraftError && /released/.test(e.message));
    await session.release();
  });

  it('hands the worker of a released session to the next one, which starts afresh', async () => {
    const workerOf = (s: RemoteSession) => (s as unknown as { worker: Worker }).worker;
    const first = await RemoteSession.create(model);
    await first.run(feedsFor([1, 2, 3, 4, 5, 6], [1n, 2n]));
    const used = workerOf(first);
    await first.release();
    // Same feed name, another shape and size: the staging and private buffers of the first session are gone.
    const b = new GraphBuilder('other');
    b.input('x', DataType.FLOAT, [2, 5]);
    b.node('ReduceSum', ['x'], { keepdims: 0 }, { outputs: ['s'] });
    b.output('s', DataType.FLOAT, []);
    const second = await RemoteSession.create(encodeModel(b.model(13)));
    try {
      assert.equal(workerOf(second), used);
      const out = await second.run({ x: { type: 'float32', data: Float32Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), dims: [2, 5] } });
      assert.deepEqual([...out.s!.data], [55]);
    } finally {
      await second.release();
    }
  });

  it('lets the process exit after release (and an idle session does not hold it either)', async () => {
    const url = JSON.stringify(new URL('../src/train/remote-session.js', import.meta.url).href);
    const bytes = JSON.stringify([...model]);
    const script = (release: boolean) => `import { RemoteSession } from ${url};
const s = await RemoteSession.create(Uint8Array.from(${bytes}));
const out = await s.run({
  x: { type: 'float32', data: Float32Array.of(1, 2, 3), dims: [1, 3] },
  w: { type: 'float32', data: new Float32Array(6), dims: [3, 2] },
  idx: { type: 'int64', data: BigInt64Array.of(3n), dims: [1] },
});
${release ? 'await s.release();' : ''}
console.log(out.z.data[0]);
`;
    const tmp = await mkdtemp(join(tmpdir(), 'graft-remote-'));
    try {
      for (const release of [true, false]) {
        const file = join(tmp, `exit-${release}.mjs`);
        await writeFile(file, script(release));
        // A worker that held the process would run into the timeout.
        const { stdout } = await promisify(execFile)(process.execPath, [file], { timeout: 30_000 });
        assert.equal(stdout.trim(), '9');
      }
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  });
});
