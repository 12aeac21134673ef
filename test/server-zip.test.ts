/** The zip reader of `graft serve`'s imports on hostile archives: every refusal names the entry, nothing is unpacked past its limits. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { zipSync } from 'fflate';
import { HttpError } from '../src/server/http.js';
import { readZip, writeZip } from '../src/server/zip.js';

const LIMITS = { maxBytes: 1 << 20, maxEntries: 10 };
const text = (s: string) => new TextEncoder().encode(s);

/** The offset of the first central directory entry of a zip made by fflate (one entry). */
function central(zip: Uint8Array): number {
  for (let i = 0; i < zip.length - 4; i++) if (zip[i] === 0x50 && zip[i + 1] === 0x4b && zip[i + 2] === 1 && zip[i + 3] === 2) return i;
  throw new Error('no central directory');
}

async function refused(zip: Uint8Array, status: number, pattern: RegExp): Promise<void> {
  await assert.rejects(readZip(zip, LIMITS), (e: unknown) => {
    assert.ok(e instanceof HttpError, String(e));
    assert.equal(e.status, status);
    assert.match(e.message, pattern);
    return true;
  });
}

describe('zip imports', () => {
  it('reads stored and deflated entries, folders left out', async () => {
    const entries = await readZip(zipSync({ 'a/x.txt': [text('hello'), { level: 0 }], 'a/y.txt': [text('world '.repeat(100)), { level: 9 }], 'a/': new Uint8Array(0) }), LIMITS);
    assert.deepEqual(entries.map((e) => [e.name, new TextDecoder().decode(e.bytes).length]), [['a/x.txt', 5], ['a/y.txt', 600]]);
  });

  it('refuses climbing, absolute and drive paths, with backslashes too', async () => {
    await refused(zipSync({ 'a\\..\\..\\x.txt': text('x') }), 400, /"a\\\\\.\.\\\\\.\.\\\\x\.txt".*climbs/);
    await refused(zipSync({ 'C:/x.txt': text('x') }), 400, /"C:\/x\.txt".*absolute/);
    await refused(zipSync({ '\\\\server\\x.txt': text('x') }), 400, /absolute/);
  });

  it('refuses symbolic links and other special files', async () => {
    await refused(zipSync({ 'a/l': [text('/etc'), { os: 3, attrs: (0o120777 << 16) >>> 0 }] }), 400, /"a\/l".*symbolic link/);
    await refused(zipSync({ 'a/fifo': [new Uint8Array(0), { os: 3, attrs: (0o010644 << 16) >>> 0 }] }), 400, /not a regular file/);
    // The same mode bits from an MS-DOS archive mean nothing: a plain file.
    assert.equal((await readZip(zipSync({ 'a/f': [text('x'), { os: 0, attrs: (0o120777 << 16) >>> 0 }] }), LIMITS)).length, 1);
  });

  it('never unpacks more than an entry declares (zip bomb) and checks CRCs', async () => {
    const zip = zipSync({ 'a/big.txt': [new Uint8Array(200_000), { level: 9 }] });
    const c = central(zip);
    const lying = zip.slice();
    new DataView(lying.buffer).setUint32(c + 24, 1000, true); // declared uncompressed size
    await refused(lying, 400, /"a\/big\.txt".*inflated/);
    const corrupt = zip.slice();
    new DataView(corrupt.buffer).setUint32(c + 16, 12345, true); // CRC-32
    await refused(corrupt, 400, /CRC-32/);
  });

  it('refuses archives over the limits with 413', async () => {
    const many: Record<string, Uint8Array> = {};
    for (let i = 0; i < 11; i++) many[`a/${i}.txt`] = text(String(i));
    await refused(zipSync(many), 413, /11 files.*--max-samples/);
    await refused(zipSync({ 'a/big.bin': [new Uint8Array(2 << 20), { level: 9 }] }), 413, /--max-upload/);
    await refused(text('PK not really a zip'), 400, /not a valid zip/);
  });

  it('writes archives its reader reads back', async () => {
    const files = { 'model.onnx': new Uint8Array(3 << 20).fill(7), 'README.md': text('# model\n') };
    const back = await readZip(writeZip(files), { maxBytes: 1 << 30, maxEntries: 10 });
    assert.deepEqual(Object.fromEntries(back.map((e) => [e.name, e.bytes.length])), { 'model.onnx': 3 << 20, 'README.md': 8 });
  });
});
