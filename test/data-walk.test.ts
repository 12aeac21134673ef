/**
 * Nothing on disk stops or hangs a dataset scan (issue 11 #2, #3): named pipes, sockets, dangling and looping
 * symbolic links, links into a sibling class, unreadable files and folders are each skipped once with a
 * one-line reason, a symlinked folder is read once, and the good files are all there. A FIFO given to the image
 * decoder or the extractor is refused without blocking.
 *
 * Permission errors cannot happen to root: when the suite runs as root, the EACCES cases run in a child process
 * whose uid is `nobody` (65534).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { scanImageFolder } from '../src/data/dataset.js';
import { scanTextData } from '../src/data/text.js';
import { decodeImage } from '../src/preprocess/image.js';
import { fileProblem, readRegularFile, FileProblem } from '../src/util/fs.js';
import { IMAGENET_DEFAULTS } from '../src/preprocess/config.js';

const png = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#3060a0' } }).png().toBuffer();

/** Runs `fn` with a promise that fails after `ms`: a scan that blocks on a FIFO must fail, not hang the suite. */
async function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} still running after ${ms} ms (blocked?)`)), ms)));
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function hostile(root: string): { good: string[]; bad: Record<string, RegExp> } {
  for (const c of ['ant', 'bee']) mkdirSync(join(root, c, 'sub'), { recursive: true });
  const good: string[] = [];
  for (const [c, n] of [['ant', 3], ['bee', 3]] as const) {
    for (let i = 0; i < n; i++) {
      const f = join(root, c, `${c}${i}.png`);
      writeFileSync(f, png);
      good.push(f);
    }
    const nested = join(root, c, 'sub', `${c}-nested.png`);
    writeFileSync(nested, png);
    good.push(nested);
  }
  execFileSync('mkfifo', [join(root, 'ant', 'pipe.png')]);
  symlinkSync('.', join(root, 'ant', 'loop'));
  symlinkSync('self.png', join(root, 'ant', 'self.png'));
  symlinkSync('missing.png', join(root, 'ant', 'dangling.png'));
  symlinkSync('../bee/bee0.png', join(root, 'ant', 'stolen.png'));
  symlinkSync('../bee', join(root, 'ant', 'bees'));
  // A link inside the class to its own file, and a link to a folder outside the dataset: both fine.
  symlinkSync('ant0.png', join(root, 'ant', 'alias.png'));
  good.push(join(root, 'ant', 'alias.png'));
  const outside = mkdtempSync(join(tmpdir(), 'graft-outside-'));
  writeFileSync(join(outside, 'far.png'), png);
  symlinkSync(outside, join(root, 'bee', 'far'));
  good.push(join(root, 'bee', 'far', 'far.png'));
  const bad: Record<string, RegExp> = {
    [join(root, 'ant', 'pipe.png')]: /^not a regular file: a named pipe \(FIFO\)$/,
    [join(root, 'ant', 'loop')]: /^symbolic link to a folder already read \(a loop\)$/,
    [join(root, 'ant', 'self.png')]: /^symbolic link loop$/,
    [join(root, 'ant', 'dangling.png')]: /^dangling symbolic link/,
    [join(root, 'ant', 'stolen.png')]: /^symbolic link into another folder of the dataset$/,
    [join(root, 'ant', 'bees')]: /^symbolic link into another folder of the dataset$/,
  };
  return { good: good.sort(), bad };
}

test('an image folder with a FIFO, link loops, dangling links and links into a sibling class: each skipped once, the rest read', async () => {
  const root = mkdtempSync(join(tmpdir(), 'graft-walk-'));
  try {
    const { good, bad } = hostile(root);
    // A socket too.
    const server = createServer();
    await new Promise<void>((r) => server.listen(join(root, 'bee', 'sock.png'), r));
    bad[join(root, 'bee', 'sock.png')] = /^not a regular file: a socket$/;
    try {
      const d = await within(10_000, 'scanImageFolder', scanImageFolder(root, { valSplit: 0.25, seed: 1 }));
      assert.deepEqual(d.classes, ['ant', 'bee']);
      assert.deepEqual([...d.train, ...d.val].map((s) => s.file).sort(), good);
      const byFile = new Map<string, string[]>();
      for (const s of d.skipped) byFile.set(s.file, [...(byFile.get(s.file) ?? []), s.reason]);
      assert.deepEqual([...byFile.keys()].sort(), Object.keys(bad).sort());
      for (const [file, reasons] of byFile) {
        assert.equal(reasons.length, 1, `${file} reported once: ${reasons.join(' | ')}`);
        assert.match(reasons[0]!, bad[file]!, file);
        assert.ok(!reasons[0]!.includes('\n') && !reasons[0]!.includes(root), `one line without the path: ${reasons[0]}`);
      }
    } finally {
      server.close();
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('class folders of .txt documents get the same treatment (a FIFO named .txt never blocks)', async () => {
  const root = mkdtempSync(join(tmpdir(), 'graft-walk-text-'));
  try {
    for (const c of ['ham', 'spam']) {
      mkdirSync(join(root, c));
      for (let i = 0; i < 3; i++) writeFileSync(join(root, c, `${i}.txt`), `${c} document ${i}`);
    }
    execFileSync('mkfifo', [join(root, 'ham', 'pipe.txt')]);
    symlinkSync('.', join(root, 'spam', 'loop'));
    symlinkSync('../spam/0.txt', join(root, 'ham', 'stolen.txt'));
    const d = await within(10_000, 'scanTextData', scanTextData(root, { seed: 0 }));
    assert.equal(d.train.length + d.val.length, 6);
    assert.deepEqual(
      d.skipped.map((s) => [s.file.slice(root.length + 1), s.reason]).sort(),
      [
        ['ham/pipe.txt', 'not a regular file: a named pipe (FIFO)'],
        ['ham/stolen.txt', 'symbolic link into another folder of the dataset'],
        ['spam/loop', 'symbolic link to a folder already read (a loop)'],
      ],
    );
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('readRegularFile and the image decoder refuse a FIFO at once instead of waiting for a writer', async () => {
  const root = mkdtempSync(join(tmpdir(), 'graft-fifo-'));
  try {
    const fifo = join(root, 'x.jpg');
    execFileSync('mkfifo', [fifo]);
    await assert.rejects(within(5_000, 'readRegularFile', readRegularFile(fifo)), (e: unknown) => e instanceof FileProblem && e.problem === 'not a regular file: a named pipe (FIFO)');
    await assert.rejects(within(5_000, 'decodeImage', decodeImage(fifo, IMAGENET_DEFAULTS)), /x\.jpg: not a regular file: a named pipe \(FIFO\)/);
    await assert.rejects(readRegularFile(root), (e: unknown) => e instanceof FileProblem && e.problem === 'not a regular file: a folder');
    await assert.rejects(readRegularFile(join(root, 'none.jpg')), (e: unknown) => e instanceof FileProblem && /^does not exist/.test(e.problem));
    writeFileSync(join(root, 'a.bin'), Uint8Array.from([1, 2, 3, 4, 5]));
    assert.deepEqual([...(await readRegularFile(join(root, 'a.bin'), 3))], [1, 2, 3]);
    assert.deepEqual([...(await readRegularFile(join(root, 'a.bin')))], [1, 2, 3, 4, 5]);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('fileProblem: errno codes become a few words, never raw errno text', () => {
  const err = (code: string) => Object.assign(new Error(`${code}: raw message with /a/very/long/path`), { code });
  assert.equal(fileProblem(err('EACCES')), 'permission denied');
  assert.equal(fileProblem(err('EPERM')), 'permission denied');
  assert.equal(fileProblem(err('ELOOP')), 'symbolic link loop');
  assert.equal(fileProblem(err('EISDIR')), 'is a folder, not a file');
  assert.equal(fileProblem(err('EMFILE')), 'cannot be read (EMFILE)');
});

test('unreadable files and sub-folders (EACCES, as a non-root user) are skipped and named; the run goes on', async () => {
  const root = mkdtempSync(join(tmpdir(), 'graft-eacces-'));
  try {
    chmodSync(root, 0o755);
    for (const c of ['ant', 'bee']) {
      mkdirSync(join(root, c, 'locked'), { recursive: true });
      for (let i = 0; i < 3; i++) writeFileSync(join(root, c, `${i}.png`), png);
    }
    writeFileSync(join(root, 'ant', 'secret.png'), png);
    chmodSync(join(root, 'ant', 'secret.png'), 0o000);
    chmodSync(join(root, 'bee', 'locked'), 0o000);
    const script = `
      const { scanImageFolder } = await import(${JSON.stringify(new URL('../src/data/dataset.js', import.meta.url).href)});
      const d = await scanImageFolder(${JSON.stringify(root)}, { seed: 0, valSplit: 0.34 });
      console.log(JSON.stringify({ n: d.train.length + d.val.length, skipped: d.skipped.map((s) => [s.file, s.reason]) }));`;
    const asNobody = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {};
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', ...asNobody, timeout: 30_000 });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { n: number; skipped: Array<[string, string]> };
    assert.equal(out.n, 6);
    assert.deepEqual(out.skipped.sort(), [
      [join(root, 'ant', 'secret.png'), 'permission denied'],
      [join(root, 'bee', 'locked'), 'folder cannot be read: permission denied'],
    ]);
  } finally {
    chmodSync(join(root, 'bee', 'locked'), 0o755);
    rmSync(root, { recursive: true, force: true });
  }
});

test('class order never depends on the locale: Bee, ant, Émile in code-unit order under any LANG, in image and text datasets', async () => {
  const root = mkdtempSync(join(tmpdir(), 'graft-locale-'));
  try {
    chmodSync(root, 0o755);
    for (const c of ['ant', 'Émile', 'Bee']) {
      mkdirSync(join(root, 'img', c), { recursive: true });
      mkdirSync(join(root, 'txt', c), { recursive: true });
      for (let i = 0; i < 2; i++) {
        writeFileSync(join(root, 'img', c, `${i}.png`), png);
        writeFileSync(join(root, 'txt', c, `${i}.txt`), `${c} ${i}`);
      }
    }
    const script = `
      const { scanImageFolder } = await import(${JSON.stringify(new URL('../src/data/dataset.js', import.meta.url).href)});
      const { scanTextData } = await import(${JSON.stringify(new URL('../src/data/text.js', import.meta.url).href)});
      const img = await scanImageFolder(${JSON.stringify(join(root, 'img'))}, { valSplit: 0.5 });
      const txt = await scanTextData(${JSON.stringify(join(root, 'txt'))}, { valSplit: 0.5 });
      console.log(JSON.stringify([img.classes, txt.classes, [...'Bee ant Émile'.split(' ')].sort((a, b) => a.localeCompare(b))]));`;
    for (const lang of ['C', 'en_US.UTF-8', 'fr_FR.UTF-8', 'sv_SE.UTF-8']) {
      const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, LANG: lang, LC_ALL: lang } });
      assert.equal(r.status, 0, r.stderr);
      const [img, txt, localeSorted] = JSON.parse(r.stdout) as string[][];
      assert.deepEqual(img, ['Bee', 'ant', 'Émile'], lang);
      assert.deepEqual(txt, ['Bee', 'ant', 'Émile'], lang);
      // What a locale-aware sort would have given: the order graft must not use.
      assert.notDeepEqual(localeSorted, img);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
