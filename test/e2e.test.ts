/**
 * End to end through the `graft` command: train on real hymenoptera images (a subset, linked in place),
 * with broken files mixed in; then eval and predict from the exported directory; then a second run that
 * must read every feature from the cache.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { graft, linkSubset, type Run } from './support/cli.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const shared = resolve(root, '../shared');
const MODEL = join(shared, 'models/mobilenetv2-12-int8/model.onnx');
const HYM = join(shared, 'data/hymenoptera');


describe('graft CLI end to end (hymenoptera subset)', () => {
  let tmp: string;
  let data: string;
  let out: string;
  let cache: string;
  let first: Run;
  let firstDoc: {
    metrics: { accuracy: number; perClass: Record<string, { precision: number; recall: number; f1: number; support: number }>; confusion: number[][] };
    skipped: Array<{ file: string; reason: string }>;
    out: string;
    features: { cached: number; extracted: number };
  };

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'graft-e2e-'));
    data = join(tmp, 'data');
    out = join(tmp, 'out');
    cache = join(tmp, 'cache');
    await linkSubset(data, 'train', 30);
    await linkSubset(data, 'val', 20);
    // The real broken sample of the original set, and broken files made here.
    await symlink(join(HYM, 'train/ants/imageNotFound.gif'), join(data, 'train/ants/imageNotFound.gif'));
    await writeFile(join(data, 'train/bees/empty.jpg'), new Uint8Array(0));
    const jpeg = await readFile(join(HYM, 'train/bees', (await readdir(join(HYM, 'train/bees')))[0]!));
    await writeFile(join(data, 'train/bees/truncated.jpg'), jpeg.subarray(0, jpeg.length >> 1));
    await writeFile(join(data, 'train/ants/notes.jpg'), 'these are not pixels\n');
    first = await graft(['train', data, '--model', MODEL, '--out', out, '--cache-dir', cache, '--epochs', '30', '--json']);
    firstDoc = JSON.parse(first.stdout);
  });

  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it('trains well above chance and prints one JSON document', () => {
    assert.equal(first.code, 0, first.stderr);
    assert.ok(firstDoc.metrics.accuracy >= 0.8, `accuracy ${firstDoc.metrics.accuracy}`);
    assert.deepEqual(Object.keys(firstDoc.metrics.perClass).sort(), ['ants', 'bees']);
    const total = firstDoc.metrics.confusion.flat().reduce((a, b) => a + b, 0);
    assert.equal(total, 40);
    assert.equal(firstDoc.features.extracted, 100);
    assert.equal(firstDoc.out, out);
  });

  it('skips and names every broken file with a reason', () => {
    const byName = new Map(firstDoc.skipped.map((s) => [s.file.split('/').pop(), s.reason]));
    assert.deepEqual([...byName.keys()].sort(), ['empty.jpg', 'imageNotFound.gif', 'notes.jpg', 'truncated.jpg']);
    assert.match(byName.get('imageNotFound.gif')!, /blank or placeholder/);
    assert.match(byName.get('empty.jpg')!, /empty/);
    assert.match(byName.get('notes.jpg')!, /not an image/);
    assert.match(byName.get('truncated.jpg')!, /decode|truncat|premature/i);
    assert.match(first.stderr, /features/); // progress went to stderr
  });

  it('writes model.onnx and graft.json with labels, config and provenance', async () => {
    const manifest = JSON.parse(await readFile(join(out, 'graft.json'), 'utf8'));
    assert.deepEqual(manifest.labels, ['ants', 'bees']);
    assert.equal(manifest.config.cut, '627');
    assert.equal(manifest.config.featureDim, 1280);
    assert.deepEqual(manifest.config.mean, [0.485, 0.456, 0.406]);
    assert.equal(manifest.backbone.sha256, createHash('sha256').update(await readFile(MODEL)).digest('hex'));
    assert.equal(manifest.model.sha256, createHash('sha256').update(await readFile(join(out, 'model.onnx'))).digest('hex'));
    assert.equal(manifest.training.seed, 0);
    assert.equal(typeof manifest.graftVersion, 'string');
    assert.equal(manifest.metrics.accuracy, firstDoc.metrics.accuracy);
  });

  it('eval on the same folder reproduces the validation metrics from the artifact alone', async () => {
    const run = await graft(['eval', out, data, '--json']);
    assert.equal(run.code, 0, run.stderr);
    const doc = JSON.parse(run.stdout);
    assert.equal(doc.metrics.accuracy, firstDoc.metrics.accuracy);
    assert.deepEqual(doc.metrics.confusion, firstDoc.metrics.confusion);
  });

  it('predict ranks labels per image and reports unreadable ones', async () => {
    const ant = join(data, 'val/ants', (await readdir(join(data, 'val/ants')))[0]!);
    const bee = join(data, 'val/bees', (await readdir(join(data, 'val/bees')))[0]!);
    const run = await graft(['predict', out, ant, bee, join(data, 'train/bees/empty.jpg'), '--top-k', '2', '--json']);
    assert.equal(run.code, 1, 'a failed image makes the exit status 1');
    const doc = JSON.parse(run.stdout) as Array<{ file: string; predictions?: Array<{ label: string; probability: number }>; error?: string }>;
    assert.equal(doc.length, 3);
    for (const entry of doc.slice(0, 2)) {
      assert.equal(entry.predictions!.length, 2);
      const [a, b] = entry.predictions!;
      assert.ok(a!.probability >= b!.probability);
      assert.ok(Math.abs(a!.probability + b!.probability - 1) < 1e-4);
    }
    assert.match(doc[2]!.error!, /empty/);
  });

  it('eval on a flat folder mixing training and validation images leaves out the 60 it was trained on (split.json), and says so', async () => {
    const flat = join(tmp, 'flat');
    for (const cls of ['ants', 'bees']) {
      await mkdir(join(flat, cls), { recursive: true });
      for (const split of ['train', 'val']) {
        for (const f of await readdir(join(data, split, cls))) {
          if (/^(empty|truncated|notes|imageNotFound)\./.test(f)) continue;
          await symlink(join(data, split, cls, f), join(flat, cls, `${split}-${f}`));
        }
      }
    }
    const run = await graft(['eval', out, flat, '--json']);
    assert.equal(run.code, 0, run.stderr);
    const doc = JSON.parse(run.stdout);
    assert.deepEqual(doc.trainingSamples, { excluded: 60, known: true });
    assert.match(run.stderr, /left out 60 of 100 images the model was trained on/);
    assert.equal(doc.metrics.confusion.flat().reduce((a: number, b: number) => a + b, 0), 40);
    assert.equal(doc.metrics.accuracy, firstDoc.metrics.accuracy, 'exactly the validation images remain');
    const split = JSON.parse(await readFile(join(out, 'split.json'), 'utf8'));
    assert.equal(split.train.length, 60);
    assert.equal(split.val.length, 40);
  });

  it('predict takes 450 file arguments (34 KB of argv: onnxruntime-node alone segfaults there), a folder, and --files-from', async () => {
    const bee = join(data, 'val/bees', (await readdir(join(data, 'val/bees')))[0]!);
    const many = join(tmp, 'many');
    await mkdir(join(many, 'deeper'), { recursive: true });
    const files: string[] = [];
    for (let i = 0; i < 450; i++) {
      const f = join(many, i % 2 ? 'deeper' : '', `a-rather-long-file-name-of-a-bee-photo-number-${String(i).padStart(4, '0')}.jpg`);
      await symlink(bee, f);
      files.push(f);
    }
    assert.ok(files.join(' ').length > 32_000);
    const direct = await graft(['predict', out, ...files, '--json']);
    assert.equal(direct.code, 0, direct.stderr);
    const doc = JSON.parse(direct.stdout) as Array<{ file: string; predictions: Array<{ label: string; probability: number }> }>;
    assert.deepEqual(doc.map((e) => e.file), files);
    const p0 = doc[0]!.predictions[0]!;
    for (const e of doc) assert.deepEqual(e.predictions[0], p0, 'the same image everywhere');

    execFileSync('mkfifo', [join(many, 'pipe.jpg')]);
    const folder = await graft(['predict', out, many, '--json']);
    assert.equal(folder.code, 1, 'the FIFO is reported (exit 1), not waited on');
    const fdoc = JSON.parse(folder.stdout) as Array<{ file: string; error?: string }>;
    assert.equal(fdoc.length, 451);
    assert.deepEqual(fdoc.filter((e) => e.error).map((e) => [e.file, e.error]), [[join(many, 'pipe.jpg'), 'not a regular file: a named pipe (FIFO)']]);

    const list = join(tmp, 'list.txt');
    await writeFile(list, `${files.slice(0, 3).join('\n')}\n\n${join(tmp, 'nowhere.jpg')}\n`);
    const listed = await graft(['predict', out, '--files-from', list, '--json']);
    const ldoc = JSON.parse(listed.stdout) as Array<{ file: string; error?: string }>;
    assert.deepEqual(ldoc.map((e) => e.file), [...files.slice(0, 3), join(tmp, 'nowhere.jpg')]);
    assert.match(ldoc[3]!.error!, /^does not exist/);
    const stdin = execFileSync(process.execPath, [join(root, 'bin/graft.js'), 'predict', out, '--files-from', '-', '--json'], { input: files.slice(0, 2).join('\n') });
    assert.deepEqual((JSON.parse(stdin.toString()) as Array<{ file: string }>).map((e) => e.file), files.slice(0, 2));
  });

  it('a second run reads every feature from the cache', async () => {
    const again = await graft(['train', data, '--model', MODEL, '--out', join(tmp, 'out2'), '--cache-dir', cache, '--epochs', '30', '--json']);
    assert.equal(again.code, 0, again.stderr);
    const doc = JSON.parse(again.stdout);
    assert.equal(doc.features.extracted, 0);
    assert.equal(doc.features.cached, 100);
    assert.equal(doc.skipped.length, 4);
    assert.equal(doc.metrics.accuracy, firstDoc.metrics.accuracy, 'same seed, same result');
  });

  it('fine-tunes the last block with --unfreeze and exports a model that eval reproduces', async () => {
    const tuned = join(tmp, 'tuned');
    const run = await graft(['train', data, '--model', MODEL, '--out', tuned, '--cache-dir', cache, '--unfreeze', '1', '--freeze-epochs', '2', '--epochs', '2', '--json']);
    assert.equal(run.code, 0, run.stderr);
    const doc = JSON.parse(run.stdout);
    assert.ok(doc.metrics.accuracy >= 0.8, `accuracy ${doc.metrics.accuracy}`);
    assert.match(run.stderr, /fine-tuned \d+ backbone nodes .* after "452"/);
    const manifest = JSON.parse(await readFile(join(tuned, 'graft.json'), 'utf8'));
    assert.equal(manifest.training.fineTuned.from, '452');
    // Timing per phase, in the JSON, the log and graft.json alike; the unfrozen epochs lie inside the fine-tune phase.
    const phases = doc.phases as { prefix: number; head: number; fineTune: number; stages: number[]; total: number };
    assert.deepEqual(Object.keys(phases), ['prefix', 'head', 'fineTune', 'stages', 'total']);
    assert.ok(phases.prefix > 0 && phases.fineTune > 0 && phases.head >= 0, JSON.stringify(phases));
    assert.deepEqual(phases.stages, [phases.fineTune]);
    assert.ok(Math.abs(phases.prefix + phases.head + phases.fineTune - phases.total) <= 0.2, JSON.stringify(phases));
    assert.ok(phases.total <= doc.seconds);
    const epochSeconds = (manifest.training.history as Array<{ seconds: number }>).reduce((a, h) => a + h.seconds, 0);
    assert.ok(epochSeconds <= phases.fineTune + 0.1, `unfrozen epochs ${epochSeconds} s within fine-tune ${phases.fineTune} s`);
    assert.deepEqual(manifest.training.fineTuned.seconds, phases);
    assert.match(run.stderr, new RegExp(`phases: frozen prefix ${phases.prefix.toFixed(1)} s, head ${phases.head.toFixed(1)} s, fine-tune ${phases.fineTune.toFixed(1)} s\n`));
    const evaluated = await graft(['eval', tuned, data, '--json']);
    assert.equal(evaluated.code, 0, evaluated.stderr);
    assert.equal(JSON.parse(evaluated.stdout).metrics.accuracy, doc.metrics.accuracy);
    const both = await graft(['train', data, '--model', MODEL, '--out', join(tmp, 'x'), '--unfreeze', '1', '--fine-tune-at', '452']);
    assert.equal(both.code, 2);
  });

  it('fails clearly on a dataset with one class, with a JSON error document', async () => {
    const one = join(tmp, 'one');
    await linkSubset(one, 'train', 3);
    await rm(join(one, 'train/bees'), { recursive: true });
    const run = await graft(['train', one, '--model', MODEL, '--out', join(tmp, 'x'), '--cache-dir', cache, '--json']);
    assert.equal(run.code, 1);
    const doc = JSON.parse(run.stdout);
    assert.equal(doc.error.code, 'DATASET');
    assert.match(doc.error.message, /class/);
    assert.match(run.stderr, /graft: error:/);
  });

  it('a usage error exits with status 2', async () => {
    const run = await graft(['train', data, '--model', MODEL, '--out', join(tmp, 'x'), '--epochs', '0']);
    assert.equal(run.code, 2);
    assert.match(run.stderr, /--epochs must be an integer ≥ 1, got "0"/);
    // The error and a one-line hint, not the whole help.
    assert.deepEqual(run.stderr.trimEnd().split('\n'), [`error: option '--epochs <n>' argument '0' is invalid. --epochs must be an integer ≥ 1, got "0"`, '(graft train --help lists its options)']);
    const unknown = await graft(['frobnicate']);
    assert.equal(unknown.code, 2);
    assert.deepEqual(unknown.stderr.trimEnd().split('\n'), ["error: unknown command 'frobnicate'", '(graft --help lists the commands)']);
    const help = await graft(['train', '--help']);
    assert.equal(help.code, 0);
    for (const flag of ['--lr', '--batch-size', '--weight-decay', '--patience', '--epochs', '--val-split', '--lr-mult', '--encoder-dropout', '--freeze-epochs']) {
      const line = help.stdout.replace(/\n {20,}/g, ' ').split('\n').find((l) => l.trimStart().startsWith(flag));
      assert.match(line ?? '', /default/, `train --help states ${flag}'s default`);
    }
  });

  it('graft cache ls / prune, and a training run keeps the cache within GRAFT_CACHE_MAX_SIZE, least recently used first', async () => {
    // Two stale folders of another backbone (2 and 3 MB, unused for 40 and 10 days), next to this run's.
    const stale = [['aaaa', 2, 40], ['bbbb', 3, 10]] as const;
    for (const [key, mb, days] of stale) {
      const dir = join(cache, 'features', key.repeat(16));
      await mkdir(join(dir, 'packs'), { recursive: true });
      await writeFile(join(dir, 'packs', 'old.pack'), new Uint8Array(mb << 20));
      await writeFile(join(dir, 'meta.json'), JSON.stringify({ backbone: { name: `old-${key}` }, dim: 8 }));
      const when = new Date(Date.now() - days * 86_400_000);
      await utimes(join(dir, 'meta.json'), when, when);
      await utimes(join(dir, 'packs', 'old.pack'), when, when);
    }
    const ls = await graft(['cache', 'ls', '--cache-dir', cache, '--json']);
    assert.equal(ls.code, 0, ls.stderr);
    const listed = JSON.parse(ls.stdout) as { bytes: number; folders: Array<{ key: string; bytes: number; backbone: string | null; lastUsed: string }> };
    assert.deepEqual(listed.folders.slice(-2).map((f) => [f.backbone, f.bytes > (2 << 20)]), [['old-bbbb', true], ['old-aaaa', true]], 'most recently used first');
    assert.equal(listed.bytes, listed.folders.reduce((a, f) => a + f.bytes, 0));
    const dry = await graft(['cache', 'prune', '--cache-dir', cache, '--older-than', '20', '--dry-run', '--json']);
    assert.deepEqual((JSON.parse(dry.stdout) as { removed: Array<{ backbone: string }> }).removed.map((f) => f.backbone), ['old-aaaa']);
    assert.ok(existsSync(join(cache, 'features', 'aaaa'.repeat(16))), 'a dry run removes nothing');
    const usage = await graft(['cache', 'prune', '--cache-dir', cache]);
    assert.equal(usage.code, 2);

    // A run with a 1-byte budget evicts both stale folders, never the ones it used.
    const run = await graft(['train', data, '--model', MODEL, '--out', join(tmp, 'budget'), '--cache-dir', cache, '--epochs', '1'], { GRAFT_CACHE_MAX_SIZE: '1' });
    assert.equal(run.code, 0, run.stderr);
    // The stale two, and any other folder this run did not open (the fine-tuning test's token states).
    const evicted = /feature cache over 1 B \(GRAFT_CACHE_MAX_SIZE\): removed (\d+) least recently used folders \((\d+\.\d) MB\)/.exec(run.stderr);
    assert.ok(evicted && Number(evicted[1]) >= 2 && Number(evicted[2]) >= 5.2, run.stderr);
    const after = JSON.parse((await graft(['cache', 'ls', '--cache-dir', cache, '--json'])).stdout) as typeof listed;
    assert.ok(!after.folders.some((f) => f.backbone?.startsWith('old-')));
    assert.ok(after.folders.length >= 1, 'the folder this run used is kept');
    const again = await graft(['train', data, '--model', MODEL, '--out', join(tmp, 'budget2'), '--cache-dir', cache, '--epochs', '1', '--json']);
    assert.equal((JSON.parse(again.stdout) as { features: { extracted: number } }).features.extracted, 0, 'and still serves the next run');
  });

  it('says that --val-split is ignored when the data has its own split', async () => {
    const run = await graft(['train', data, '--model', MODEL, '--out', join(tmp, 'vs'), '--cache-dir', cache, '--epochs', '1', '--val-split', '0.3']);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stderr, /--val-split 0\.3 ignored: the folders \S*train and \S*val already split it/);
  });
});
