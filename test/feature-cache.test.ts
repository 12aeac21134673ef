/**
 * FeatureCache's pack files: round trips of features (fixed rows with extra values, ragged entries) and skip
 * records through another cache object, torn tails and damaged payloads (misses, never throws), several writers
 * on one key at once, caches in the old one-file-per-entry layout, and misses that touch no file.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import fsp from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { contentHash, FeatureCache, FEATURES_RECORD, HEADER, listCacheFolders, listRecords, parseSize, pruneCache, SKIP_RECORD, type CacheEntry } from '../src/backbone/cache.js';

const KEY = 'test-key';
const h = (i: number | string) => contentHash(`sample ${i}`);

/** Entry i of a cache of `dim` floats + 1 extra: distinct, exactly representable values. */
function entry(i: number, dim: number): Float32Array {
  const f = new Float32Array(dim + 1);
  for (let j = 0; j < dim; j++) f[j] = i * 1000 + j + 0.25;
  f[dim] = 7 + i; // a token count
  return f;
}

async function packs(cache: FeatureCache): Promise<string[]> {
  return (await readdir(path.join(cache.dir, 'packs'))).sort().map((n) => path.join(cache.dir, 'packs', n));
}

describe('FeatureCache packs', () => {
  let tmp: string;
  let n = 0;
  /** A cache root of its own for each test. */
  const root = () => path.join(tmp, `root-${n++}`);

  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'graft-feature-cache-'));
  });
  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it('round-trips features with extra values and skip records through another cache object', async () => {
    const r = root();
    const dim = 5;
    const N = 4000;
    const a = new FeatureCache(r, KEY, dim, { extra: 1 });
    assert.deepEqual(await a.read(h(0)), { kind: 'miss' }, 'a cache with no folder yet');
    // Enough records that the pack is longer than one read of the scan, with headers across its reads.
    for (let i = 0; i < N; i += 500) a.writeBatch(Array.from({ length: 500 }, (_, k) => ({ hash: h(i + k), features: entry(i + k, dim) })));
    a.writeBatch([]); // nothing to write: no record
    await a.writeSkip(h('broken'), 'cannot decode image (näh: ✗)');
    await a.writeSkip(h('empty reason'), '');
    // A features entry of the wrong length is written as given, and read as a miss.
    a.writeBatch([{ hash: h('short'), features: new Float32Array(dim) }]);
    // The writer sees its own entries at once.
    const own = new Float32Array(dim);
    assert.deepEqual(await a.read(h(3), own, 0), { kind: 'features', values: new Float32Array([10]) });
    assert.deepEqual(own, entry(3, dim).subarray(0, dim));
    a.close();

    assert.equal((await packs(a)).length, 1);
    assert.equal(listRecords(a.dir).length, N + 3);
    assert.ok((await stat((await packs(a))[0]!)).size > 1 << 18);
    const b = new FeatureCache(r, KEY, dim, { extra: 1 });
    const target = new Float32Array(N * dim).fill(-1);
    for (let i = N - 1; i >= 0; i--) {
      const e = await b.read(h(i), target, i * dim);
      assert.deepEqual(e, { kind: 'features', values: new Float32Array([7 + i]) }, `entry ${i}`);
    }
    for (let i = 0; i < N; i++) assert.deepEqual(target.subarray(i * dim, (i + 1) * dim), entry(i, dim).subarray(0, dim), `row ${i}`);
    assert.deepEqual(await b.read(h('broken')), { kind: 'skip', reason: 'cannot decode image (näh: ✗)' });
    assert.deepEqual(await b.read(h('empty reason')), { kind: 'skip', reason: '' });
    assert.deepEqual(await b.read(h('short'), new Float32Array(dim)), { kind: 'miss' });
    assert.deepEqual(await b.read(h('never written')), { kind: 'miss' });
    // Without extra values the same records have the wrong length: misses, not wrong rows.
    const plain = new FeatureCache(r, KEY, dim);
    assert.deepEqual(await plain.read(h(0), new Float32Array(dim)), { kind: 'miss' });
    assert.deepEqual(await plain.read(h('short'), new Float32Array(dim)), { kind: 'features' });
    plain.close();

    // Later records win: in the same pack, and from a newer pack.
    b.writeBatch([{ hash: h(1), features: entry(101, dim) }]);
    await b.writeSkip(h(2), 'now broken');
    const row = new Float32Array(dim);
    assert.deepEqual(await b.read(h(1), row), { kind: 'features', values: new Float32Array([108]) });
    assert.deepEqual(row, entry(101, dim).subarray(0, dim));
    b.writeBatch([{ hash: h(1), features: entry(202, dim) }]);
    b.close();
    const c = new FeatureCache(r, KEY, dim, { extra: 1 });
    assert.deepEqual(await c.read(h(1), row), { kind: 'features', values: new Float32Array([209]) });
    assert.deepEqual(row, entry(202, dim).subarray(0, dim));
    assert.deepEqual(await c.read(h(2)), { kind: 'skip', reason: 'now broken' });
    c.close();
    assert.equal((await packs(a)).length, 2, 'one pack per cache object that wrote');
  });

  it('takes the record of the most recently written pack when two packs hold one hash, whatever their names', async () => {
    const r = root();
    const dim = 2;
    for (const i of [1, 2]) {
      const w = new FeatureCache(r, KEY, dim, { extra: 1 });
      w.writeBatch([{ hash: h('both'), features: entry(i, dim) }]);
      await w.writeSkip(h(`only ${i}`), `pack ${i}`);
      w.close();
    }
    const dir = new FeatureCache(r, KEY, dim).dir;
    const names = (await readdir(path.join(dir, 'packs'))).sort();
    assert.equal(names.length, 2);
    const which = async (name: string) => {
      const skip = listRecords(dir).find((x) => x.kind === SKIP_RECORD && path.basename(x.pack) === name)!;
      return Buffer.from((await readFile(skip.pack)).subarray(skip.offset, skip.offset + skip.length)).toString();
    };
    // Make each pack in turn the newer one.
    for (const [older, newer] of [names, [...names].reverse()]) {
      const now = Date.now() / 1000;
      fs.utimesSync(path.join(dir, 'packs', older!), now - 100, now - 100);
      fs.utimesSync(path.join(dir, 'packs', newer!), now - 10, now - 10);
      const c = new FeatureCache(r, KEY, dim, { extra: 1 });
      const row = new Float32Array(dim);
      const e = await c.read(h('both'), row);
      c.close();
      const i = (await which(newer!)) === 'pack 1' ? 1 : 2;
      assert.deepEqual(e, { kind: 'features', values: new Float32Array([7 + i]) }, `the newer pack is ${newer}`);
      assert.deepEqual(row, entry(i, dim).subarray(0, dim));
    }
  });

  it('round-trips ragged entries (any whole number of rows) and rejects the others', async () => {
    const r = root();
    const dim = 3;
    const rows = (i: number, t: number) => Float32Array.from({ length: t * (dim + 1) }, (_, j) => i * 100 + j);
    const a = new FeatureCache(r, KEY, dim, { ragged: true, extra: 1 });
    a.writeBatch([
      { hash: h(1), features: rows(1, 1) },
      { hash: h(2), features: rows(2, 5) },
      { hash: h(3), features: rows(3, 2000) }, // 32 kB: the scan reads only headers past it
      { hash: h('not whole'), features: new Float32Array(2 * (dim + 1) + 1) },
      { hash: h('empty'), features: new Float32Array(0) },
    ]);
    await a.writeSkip(h('skip'), 'too long');
    a.close();
    const b = new FeatureCache(r, KEY, dim, { ragged: true, extra: 1 });
    for (const [i, t] of [[1, 1], [2, 5], [3, 2000]] as const) {
      const e = (await b.read(h(i))) as Extract<CacheEntry, { kind: 'features' }>;
      assert.equal(e.kind, 'features');
      assert.deepEqual(e.values, rows(i, t));
    }
    assert.deepEqual(await b.read(h('not whole')), { kind: 'miss' });
    assert.deepEqual(await b.read(h('empty')), { kind: 'miss' });
    assert.deepEqual(await b.read(h('skip')), { kind: 'skip', reason: 'too long' });
    // Entries returned whole do not share memory: one does not change another.
    const x = (await b.read(h(2))) as { values: Float32Array };
    x.values.fill(0);
    assert.deepEqual(((await b.read(h(2))) as { values: Float32Array }).values, rows(2, 5));
    b.close();
  });

  it('ignores a torn last record and a damaged payload without throwing; earlier records stay', async () => {
    const dim = 4;
    const write = async (r: string) => {
      const a = new FeatureCache(r, KEY, dim, { extra: 1 });
      a.writeBatch([0, 1, 2].map((i) => ({ hash: h(i), features: entry(i, dim) })));
      await a.writeSkip(h('skip'), 'a reason');
      a.writeBatch([{ hash: h(3), features: entry(3, dim) }]);
      a.close();
      const [pack] = await packs(a);
      return { pack: pack!, records: listRecords(a.dir) };
    };
    const readAll = async (r: string) => {
      const c = new FeatureCache(r, KEY, dim, { extra: 1 });
      const got: Record<string, string> = {};
      for (const k of [0, 1, 2, 'skip', 3]) {
        const target = new Float32Array(dim);
        const e = await c.read(h(k), target);
        got[k] = e.kind === 'features' ? (target.every((v, j) => v === entry(k as number, dim)[j]) && e.values![0] === 7 + (k as number) ? 'ok' : 'WRONG') : e.kind === 'skip' ? e.reason : e.kind;
      }
      return { c, got };
    };
    const whole = { 0: 'ok', 1: 'ok', 2: 'ok', skip: 'a reason', 3: 'ok' };

    // Cut into the last record's payload, then into its header, then to nothing but a partial first header.
    for (const cut of [3, (dim + 1) * 4 + 10, 'header' as const]) {
      const r = root();
      const { pack, records } = await write(r);
      assert.equal(records.length, 5);
      const size = (await stat(pack)).size;
      assert.equal(size, records.reduce((s, x) => s + HEADER + x.length, 0));
      const { got, c } = await readAll(r);
      assert.deepEqual(got, whole);
      c.close();
      await truncate(pack, cut === 'header' ? HEADER - 1 : size - cut);
      assert.equal(listRecords(path.dirname(path.dirname(pack))).length, cut === 'header' ? 0 : 4);
      const after = await readAll(r);
      assert.deepEqual(after.got, cut === 'header' ? { 0: 'miss', 1: 'miss', 2: 'miss', skip: 'miss', 3: 'miss' } : { ...whole, 3: 'miss' }, `cut ${cut}`);
      // A damaged entry is recomputed and written again: the new record is read.
      after.c.writeBatch([{ hash: h(3), features: entry(3, dim) }]);
      after.c.close();
      assert.equal((await readAll(r)).got[3], 'ok');
    }

    // One flipped byte in the second record's payload: that entry is a miss, the others read.
    const r = root();
    const { pack, records } = await write(r);
    const bytes = await readFile(pack);
    bytes[records[1]!.offset + 5] ^= 0x10;
    await writeFile(pack, bytes);
    const flipped = await readAll(r);
    assert.deepEqual(flipped.got, { ...whole, 1: 'miss' });
    // and in the skip record's payload
    bytes[records[3]!.offset] ^= 0x01;
    await writeFile(pack, bytes);
    flipped.c.close();
    const both = await readAll(r);
    assert.deepEqual(both.got, { ...whole, 1: 'miss', skip: 'miss' });
    both.c.close();

    // A damaged header (its own CRC fails) ends the scan there: the records after it are not trusted.
    bytes[records[2]!.offset - HEADER + 9] ^= 0x01; // a bit of record 2's hash
    await writeFile(pack, bytes);
    assert.equal(listRecords(path.dirname(path.dirname(pack))).length, 2);
    const header = await readAll(r);
    assert.deepEqual(header.got, { 0: 'ok', 1: 'miss', 2: 'miss', skip: 'miss', 3: 'miss' });
    header.c.close();

    // Garbage in a pack, an empty pack and a pack that is a folder: no throw, misses.
    const g = root();
    const dir = new FeatureCache(g, KEY, dim).dir;
    await mkdir(path.join(dir, 'packs', 'folder.pack'), { recursive: true });
    await writeFile(path.join(dir, 'packs', 'garbage.pack'), Buffer.from('not a pack at all, but long enough to hold a header or two............'));
    await writeFile(path.join(dir, 'packs', 'empty.pack'), '');
    const c = new FeatureCache(g, KEY, dim, { extra: 1 });
    assert.deepEqual(await c.read(h(0)), { kind: 'miss' });
    c.writeBatch([{ hash: h(0), features: entry(0, dim) }]);
    c.close();
    assert.equal((await readAll(g)).got[0], 'ok');
  });

  it('lets several cache objects and processes write one key at once, each to its own pack', async () => {
    const r = root();
    const dim = 6;
    const a = new FeatureCache(r, KEY, dim, { extra: 1 });
    const b = new FeatureCache(r, KEY, dim, { extra: 1 });
    // Another process writing entries 1000-1299 meanwhile.
    const script = path.join(tmp, 'writer.mjs');
    await writeFile(
      script,
      `import { FeatureCache, contentHash } from ${JSON.stringify(new URL('../src/backbone/cache.js', import.meta.url).href)};
const c = new FeatureCache(${JSON.stringify(r)}, ${JSON.stringify(KEY)}, ${dim}, { extra: 1 });
for (let i = 1000; i < 1300; i += 10) {
  c.writeBatch(Array.from({ length: 10 }, (_, k) => {
    const f = new Float32Array(${dim + 1});
    for (let j = 0; j < ${dim}; j++) f[j] = (i + k) * 1000 + j + 0.25;
    f[${dim}] = 7 + i + k;
    return { hash: contentHash('sample ' + (i + k)), features: f };
  }));
  await new Promise((resolve) => setImmediate(resolve));
}
c.close();
`,
    );
    const child = promisify(execFile)(process.execPath, [script], { timeout: 60_000 });
    for (let i = 0; i < 300; i += 10) {
      a.writeBatch(Array.from({ length: 10 }, (_, k) => ({ hash: h(i + k), features: entry(i + k, dim) })));
      await b.writeSkip(h(`skip ${i}`), `reason ${i}`);
      b.writeBatch(Array.from({ length: 10 }, (_, k) => ({ hash: h(500 + i + k), features: entry(500 + i + k, dim) })));
      await new Promise((resolve) => setImmediate(resolve));
    }
    await child;
    a.close();
    b.close();
    const names = await packs(a);
    assert.equal(names.length, 3, names.join(', '));
    const c = new FeatureCache(r, KEY, dim, { extra: 1 });
    const target = new Float32Array(dim);
    for (const i of [...Array(300).keys()].flatMap((i) => [i, 500 + i, 1000 + i])) {
      assert.deepEqual(await c.read(h(i), target), { kind: 'features', values: new Float32Array([7 + i]) }, `entry ${i}`);
      assert.deepEqual(target, entry(i, dim).subarray(0, dim), `entry ${i}`);
    }
    for (let i = 0; i < 300; i += 10) assert.deepEqual(await c.read(h(`skip ${i}`)), { kind: 'skip', reason: `reason ${i}` });
    c.close();
    const records = listRecords(a.dir);
    assert.equal(records.length, 3 * 300 + 30);
    assert.equal(new Set(records.map((x) => x.hash)).size, records.length);
    assert.equal(records.filter((x) => x.kind === FEATURES_RECORD).length, 900);
    assert.equal(records.filter((x) => x.kind === SKIP_RECORD).length, 30);
  });

  it('still reads entries of the old one-file-per-entry layout, and writes only packs', async () => {
    const r = root();
    const dim = 4;
    const dir = new FeatureCache(r, KEY, dim).dir;
    const old = (hash: string, ext: string) => path.join(dir, hash.slice(0, 2), `${hash}.${ext}`);
    const put = async (hash: string, ext: string, data: Uint8Array | string) => {
      await mkdir(path.dirname(old(hash, ext)), { recursive: true });
      await writeFile(old(hash, ext), data);
    };
    const f = (i: number) => new Uint8Array(entry(i, dim).buffer);
    for (const i of [0, 1, 2]) await put(h(i), 'f32', f(i));
    await put(h('skip'), 'skip', 'cannot decode image (old)');
    await put(h('wrong length'), 'f32', new Uint8Array(4 * dim));
    const c = new FeatureCache(r, KEY, dim, { extra: 1 });
    const target = new Float32Array(3 * dim);
    for (const i of [2, 0, 1]) assert.deepEqual(await c.read(h(i), target, i * dim), { kind: 'features', values: new Float32Array([7 + i]) });
    for (const i of [0, 1, 2]) assert.deepEqual(target.subarray(i * dim, (i + 1) * dim), entry(i, dim).subarray(0, dim));
    assert.deepEqual(await c.read(h('skip')), { kind: 'skip', reason: 'cannot decode image (old)' });
    assert.deepEqual(await c.read(h('wrong length'), new Float32Array(dim)), { kind: 'miss' });
    assert.deepEqual(await c.read(h('absent')), { kind: 'miss' });
    // New entries go to a pack, and a pack record wins over an old file.
    c.writeBatch([{ hash: h('wrong length'), features: entry(9, dim) }, { hash: h(1), features: entry(11, dim) }]);
    await c.writeSkip(h('new skip'), 'new');
    c.close();
    const d = new FeatureCache(r, KEY, dim, { extra: 1 });
    const row = new Float32Array(dim);
    assert.deepEqual(await d.read(h('wrong length'), row), { kind: 'features', values: new Float32Array([16]) });
    assert.deepEqual(await d.read(h(1), row), { kind: 'features', values: new Float32Array([18]) });
    assert.deepEqual(row, entry(11, dim).subarray(0, dim));
    assert.deepEqual(await d.read(h(0), row), { kind: 'features', values: new Float32Array([7]) });
    assert.deepEqual(await d.read(h('new skip')), { kind: 'skip', reason: 'new' });
    d.close();
    const handWritten = [old(h(0), 'f32'), old(h(1), 'f32'), old(h(2), 'f32'), old(h('skip'), 'skip'), old(h('wrong length'), 'f32')].map((p) => path.relative(dir, p));
    const tree = (await readdir(dir, { recursive: true })).map(String).sort();
    assert.deepEqual(tree.filter((p) => p !== 'packs' && !p.startsWith('packs/')), [...new Set([...handWritten.map((p) => path.dirname(p)), ...handWritten])].sort(), 'no file of the old layout was written');
    assert.equal(tree.filter((p) => p.endsWith('.pack')).length, 1);
  });

  it('answers a miss without touching the file system (unless old-layout folders exist)', async () => {
    const r = root();
    const dim = 8;
    const w = new FeatureCache(r, KEY, dim, { extra: 1 });
    for (let i = 0; i < 500; i += 50) w.writeBatch(Array.from({ length: 50 }, (_, k) => ({ hash: h(i + k), features: entry(i + k, dim) })));
    w.close();

    // Count every call of the file-system functions (the cache's imports are live bindings of these).
    const calls: string[] = [];
    const restore: Array<() => void> = [];
    const spy = (module: Record<string, unknown>, label: string) => {
      for (const [name, value] of Object.entries(module)) {
        if (typeof value !== 'function' || /^[A-Z]/.test(name)) continue;
        module[name] = function (this: unknown, ...args: unknown[]) {
          calls.push(`${label}.${name}`);
          return (value as (...a: unknown[]) => unknown).apply(this, args);
        };
        restore.push(() => (module[name] = value));
      }
    };
    spy(fs as unknown as Record<string, unknown>, 'fs');
    spy(fsp as unknown as Record<string, unknown>, 'fs/promises');
    syncBuiltinESMExports();
    try {
      const c = new FeatureCache(r, KEY, dim, { extra: 1 });
      const target = new Float32Array(dim);
      assert.equal((await c.read(h(0), target)).kind, 'features');
      assert.ok(calls.includes('fs.readdirSync') && calls.includes('fs.readSync'), `the first read lists and scans the packs: ${calls}`);
      calls.length = 0;
      for (let i = 1000; i < 1500; i++) assert.deepEqual(await c.read(h(i), target), { kind: 'miss' });
      assert.equal(calls.join(', '), '', 'misses make no file-system call');
      assert.equal((await c.read(h(7), target)).kind, 'features');
      assert.deepEqual(calls, ['fs.readSync'], 'a hit is one read');
      c.close();

      // With old-layout folders, a hash that no pack holds is looked up there.
      await mkdir(path.join(c.dir, 'ab'));
      calls.length = 0;
      const d = new FeatureCache(r, KEY, dim, { extra: 1 });
      assert.equal((await d.read(h(0), target)).kind, 'features');
      calls.length = 0;
      assert.deepEqual(await d.read(h('absent'), target), { kind: 'miss' });
      assert.ok(calls.includes('fs/promises.readFile'), `${calls}`);
      d.close();
    } finally {
      for (const undo of restore) undo();
      syncBuiltinESMExports();
    }
  });
});

describe('cache housekeeping (graft cache ls | prune)', () => {
  it('parses sizes in binary units', () => {
    assert.equal(parseSize('500M'), 500 * 2 ** 20);
    assert.equal(parseSize('1.5G'), 1.5 * 2 ** 30);
    assert.equal(parseSize('2GB'), 2 * 2 ** 30);
    assert.equal(parseSize('64 KiB'), 64 * 1024);
    assert.equal(parseSize('1024'), 1024);
    assert.throws(() => parseSize('lots'), /expected a size such as 500M or 2G, got "lots"/);
    assert.throws(() => parseSize('-1G'));
  });

  it('lists folders least recently used first and evicts in that order, keeping the ones in use', () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'graft-cache-prune-'));
    try {
      const now = Date.now();
      const make = (key: string, bytes: number, daysAgo: number) => {
        const dir = path.join(root, 'features', key);
        fs.mkdirSync(path.join(dir, 'packs'), { recursive: true });
        fs.writeFileSync(path.join(dir, 'packs', 'a.pack'), new Uint8Array(bytes));
        fs.writeFileSync(path.join(dir, 'meta.json'), JSON.stringify({ backbone: { name: key } }));
        const when = new Date(now - daysAgo * 86_400_000);
        fs.utimesSync(path.join(dir, 'meta.json'), when, when);
      };
      make('old', 3000, 30);
      make('mid', 2000, 5);
      make('new', 1000, 0);
      const listed = listCacheFolders(root);
      assert.deepEqual(listed.map((f) => f.key), ['old', 'mid', 'new']);
      assert.ok(listed.every((f) => f.bytes > [3000, 2000, 1000][listed.indexOf(f)]!), 'sizes count every file');
      // Dry: nothing removed; the budget fits once 'old' goes.
      assert.deepEqual(pruneCache(root, { maxBytes: 4000, dryRun: true, now }).removed.map((f) => f.key), ['old']);
      assert.equal(listCacheFolders(root).length, 3);
      assert.deepEqual(pruneCache(root, { olderThanMs: 7 * 86_400_000, now }).removed.map((f) => f.key), ['old']);
      assert.deepEqual(pruneCache(root, { maxBytes: 0, keep: new Set(['mid']), usedSince: now - 86_400_000, now }).removed.map((f) => f.key), []);
      assert.deepEqual(pruneCache(root, { maxBytes: 0, keep: new Set(['mid']), now }).removed.map((f) => f.key), ['new']);
      assert.deepEqual(listCacheFolders(root).map((f) => f.key), ['mid']);
      assert.deepEqual(listCacheFolders(path.join(root, 'nowhere')), []);
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });
});
