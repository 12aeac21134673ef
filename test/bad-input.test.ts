/**
 * The bad-input corpus (issue 11): one image folder holding every kind of file that has stopped or hung a run
 * before, made here, next to real hymenoptera photos and good images in every format graft reads. `graft train`
 * must finish, name each bad file exactly once with a one-line reason, and train on every good file (the
 * artifact's split.json records the digest of each sample it trained or validated on).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { crc32 } from 'node:zlib';
import sharp from 'sharp';
import { graft, type Run } from './support/cli.js';
import { SHARED } from './support/paths.js';

const MODEL = join(SHARED, 'models/mobilenetv2-12-int8/model.onnx');
const HYM = join(SHARED, 'data/hymenoptera');
const digest = (b: Uint8Array) => createHash('sha256').update(b).digest('hex').slice(0, 16);

/** A PNG whose header claims `width`×`height` (no pixel data follows): a decompression bomb's first bytes. */
function pngHeader(width: number, height: number): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc32(body), 8 + data.length);
    return out;
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', Buffer.alloc(0)), chunk('IEND', Buffer.alloc(0))]);
}

describe('the bad-input corpus', () => {
  let tmp: string;
  let data: string;
  let run: Run;
  const bad = new Map<string, RegExp>(); // path relative to data → expected reason
  const good = new Map<string, Buffer>(); // path relative to data → bytes

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'graft-bad-input-'));
    data = join(tmp, 'data');
    for (const cls of ['ants', 'bees']) {
      await mkdir(join(data, cls), { recursive: true });
      const photos = (await readdir(join(HYM, 'train', cls))).filter((f) => f.endsWith('.jpg')).sort().slice(0, 12);
      for (const f of photos) {
        await symlink(join(HYM, 'train', cls, f), join(data, cls, f));
        good.set(`${cls}/${f}`, await readFile(join(HYM, 'train', cls, f)));
      }
    }
    const photo = good.get([...good.keys()][0]!)!;
    const put = async (name: string, bytes: Buffer, expect?: RegExp) => {
      await writeFile(join(data, name), bytes);
      if (expect) bad.set(name, expect);
      else good.set(name, bytes);
    };
    // Good files in every format and oddity graft must read.
    const base = sharp(photo).resize(160, 120);
    await put('ants/sixteen-bit.png', await base.clone().toColourspace('rgb16').png().toBuffer());
    await put('ants/cmyk.jpg', await base.clone().toColourspace('cmyk').jpeg().toBuffer());
    await put('ants/exif-rotated.jpg', await base.clone().withMetadata({ orientation: 6 }).jpeg().toBuffer());
    await put('bees/photo.avif', await base.clone().avif().toBuffer());
    await put('bees/photo.webp', await base.clone().webp().toBuffer());
    await put('bees/photo.gif', await base.clone().gif().toBuffer());
    await put('bees/é漢字 🐝.png', await base.clone().png().toBuffer());
    await put('bees/new\nline.jpg', await base.clone().jpeg({ quality: 70 }).toBuffer());
    // Bad files: each must be named once, with this reason.
    await put('ants/zero.jpg', Buffer.alloc(0), /^empty file \(0 bytes\)$/);
    await put('ants/two\nlines.jpg', Buffer.alloc(0), /^empty file \(0 bytes\)$/);
    await put('ants/truncated.jpg', photo.subarray(0, photo.length >> 1), /^cannot decode image \(.+\)$/);
    await put('ants/notes.jpg', Buffer.from('these are not pixels\n'), /^not an image/);
    await put('bees/huge.png', pngHeader(20000, 20000), /^cannot decode image \(.*pixel limit.*\)$/);
    const heic = Buffer.from(await base.clone().avif().toBuffer());
    heic.write('heic', heic.indexOf('avif'));
    for (let j = heic.indexOf('av01'); j >= 0; j = heic.indexOf('av01', j + 1)) heic.write('hvc1', j);
    await put('bees/photo.heic', heic, /^cannot decode image \(.*heif.*\)$/);
    await symlink(join(HYM, 'train/ants/imageNotFound.gif'), join(data, 'ants/imageNotFound.gif'));
    bad.set('ants/imageNotFound.gif', /^blank or placeholder image \(matches a known placeholder/);
    await put('bees/flat.png', await sharp({ create: { width: 64, height: 64, channels: 3, background: '#808080' } }).png().toBuffer(), /^blank or placeholder image \(flat/);
    execFileSync('mkfifo', [join(data, 'bees/pipe.jpg')]);
    bad.set('bees/pipe.jpg', /^not a regular file: a named pipe \(FIFO\)$/);
    await symlink('loop.jpg', join(data, 'ants/loop.jpg'));
    bad.set('ants/loop.jpg', /link/);
    await symlink(join(tmp, 'nowhere.jpg'), join(data, 'ants/dangling.jpg'));
    bad.set('ants/dangling.jpg', /link/);
    await symlink('.', join(data, 'bees/cycle'));
    bad.set('bees/cycle', /folder/);
    if (process.getuid?.() !== 0) {
      await put('bees/locked.jpg', photo, /permission|EACCES|cannot be read/);
      await chmod(join(data, 'bees/locked.jpg'), 0);
    }
    run = await graft(['train', data, '--model', MODEL, '--out', join(tmp, 'out'), '--cache-dir', join(tmp, 'cache'), '--epochs', '3', '--json']);
  });
  after(() => rm(tmp, { recursive: true, force: true }));

  it('finishes, and names every bad file exactly once with a one-line reason', () => {
    assert.equal(run.code, 0, run.stderr);
    const doc = JSON.parse(run.stdout) as { skipped: Array<{ file: string; reason: string }> };
    const named = doc.skipped.map((s) => relative(data, s.file));
    assert.deepEqual([...named].sort(), [...bad.keys()].sort(), 'the skipped files are exactly the bad ones');
    for (const s of doc.skipped) {
      const name = relative(data, s.file);
      assert.match(s.reason, bad.get(name)!, `${name}: ${s.reason}`);
      assert.ok(!/[\r\n]/.test(s.reason), `${name}: one-line reason: ${JSON.stringify(s.reason)}`);
    }
  });

  it('lists them on stderr without --json: one line each, names escaped', async () => {
    const plain = await graft(['train', data, '--model', MODEL, '--out', join(tmp, 'out2'), '--cache-dir', join(tmp, 'cache'), '--epochs', '1']);
    assert.equal(plain.code, 0, plain.stderr);
    const lines = plain.stderr.split('\n');
    assert.ok(lines.includes(`skipped ${bad.size} files:`), plain.stderr);
    for (const name of bad.keys()) assert.equal(lines.filter((l) => l.includes(`/${name.replace(/\n/g, '\\n')}: `)).length, 1, `${name} on stderr once`);
  });

  it('trains on every good file, the odd formats and names included', async () => {
    const split = JSON.parse(await readFile(join(tmp, 'out/split.json'), 'utf8')) as { train: string[]; val: string[] };
    const used = new Set([...split.train, ...split.val]);
    for (const [name, bytes] of good) assert.ok(used.has(digest(bytes)), `${JSON.stringify(name)} was trained or validated on`);
    assert.equal(used.size, new Set([...good.values()].map(digest)).size, 'and nothing else');
  });
});
