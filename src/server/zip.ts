/**
 * Zip archives: imports are read here from the central directory up (every entry's path and type checked
 * before anything is unpacked: no `..`, no absolute path, no symbolic link or other special file), each entry
 * inflated with a hard cap on its output and its CRC-32 verified; exports are written with fflate.
 */
import { crc32, inflateRawSync } from 'node:zlib';
import { zipSync, type Zippable } from 'fflate';
import { badRequest, tooLarge } from './http.js';

export interface ZipEntry {
  /** The entry's path, `/`-separated, as stored. */
  name: string;
  bytes: Uint8Array;
}

export interface ZipLimits {
  /** Most bytes all entries may unpack to. */
  maxBytes: number;
  /** Most file entries. */
  maxEntries: number;
}

interface CentralEntry {
  name: string;
  method: number;
  flags: number;
  crc: number;
  compressedSize: number;
  size: number;
  offset: number;
  madeBy: number;
  externalAttrs: number;
}

const EOCD = 0x06054b50;
const ZIP64_LOCATOR = 0x07064b50;
const ZIP64_EOCD = 0x06064b50;
const CENTRAL = 0x02014b50;
const LOCAL = 0x04034b50;

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;

const invalidZip = (message: string) => badRequest(`not a valid zip archive: ${message}`);
const badEntry = (name: string, problem: string) => badRequest(`zip entry ${JSON.stringify(name)} refused: ${problem}; nothing was imported`, { entry: name });

function decodeName(bytes: Uint8Array): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return Buffer.from(bytes).toString('latin1');
  }
}

/** The central directory's entries (ZIP64 included). */
function centralDirectory(data: Uint8Array): CentralEntry[] {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let end = -1;
  for (let i = data.length - 22; i >= Math.max(0, data.length - 22 - 0xffff); i--) {
    if (view.getUint32(i, true) === EOCD) {
      end = i;
      break;
    }
  }
  if (end < 0) throw invalidZip('no end of central directory record');
  let count = view.getUint16(end + 10, true);
  let cdOffset = view.getUint32(end + 16, true);
  if (count === 0xffff || cdOffset === 0xffffffff) {
    const locator = end - 20;
    if (locator < 0 || view.getUint32(locator, true) !== ZIP64_LOCATOR) throw invalidZip('ZIP64 end record missing');
    const at = Number(view.getBigUint64(locator + 8, true));
    if (at + 56 > data.length || view.getUint32(at, true) !== ZIP64_EOCD) throw invalidZip('ZIP64 end record corrupt');
    count = Number(view.getBigUint64(at + 32, true));
    cdOffset = Number(view.getBigUint64(at + 48, true));
  }
  const entries: CentralEntry[] = [];
  let p = cdOffset;
  for (let i = 0; i < count; i++) {
    if (p + 46 > data.length || view.getUint32(p, true) !== CENTRAL) throw invalidZip(`central directory entry ${i + 1} is corrupt`);
    const nameLength = view.getUint16(p + 28, true);
    const extraLength = view.getUint16(p + 30, true);
    const commentLength = view.getUint16(p + 32, true);
    if (p + 46 + nameLength + extraLength > data.length) throw invalidZip(`central directory entry ${i + 1} runs past the end`);
    const e: CentralEntry = {
      madeBy: view.getUint16(p + 4, true),
      flags: view.getUint16(p + 8, true),
      method: view.getUint16(p + 10, true),
      crc: view.getUint32(p + 16, true),
      compressedSize: view.getUint32(p + 20, true),
      size: view.getUint32(p + 24, true),
      externalAttrs: view.getUint32(p + 38, true),
      offset: view.getUint32(p + 42, true),
      name: decodeName(data.subarray(p + 46, p + 46 + nameLength)),
    };
    // ZIP64 extra field: the 64-bit values of the fields set to 0xffffffff, in this order.
    let x = p + 46 + nameLength;
    const extraEnd = x + extraLength;
    while (x + 4 <= extraEnd) {
      const id = view.getUint16(x, true);
      const len = view.getUint16(x + 2, true);
      if (id === 0x0001) {
        let q = x + 4;
        const next = () => {
          if (q + 8 > x + 4 + len) throw invalidZip(`ZIP64 field of ${JSON.stringify(e.name)} is short`);
          const v = Number(view.getBigUint64(q, true));
          q += 8;
          return v;
        };
        if (e.size === 0xffffffff) e.size = next();
        if (e.compressedSize === 0xffffffff) e.compressedSize = next();
        if (e.offset === 0xffffffff) e.offset = next();
      }
      x += 4 + len;
    }
    entries.push(e);
    p = extraEnd + commentLength;
  }
  return entries;
}

/** Why an entry's path may not be unpacked, or undefined. */
function unsafePath(name: string): string | undefined {
  if (name.includes('\0')) return 'its path contains a NUL character';
  const parts = name.split(/[/\\]/);
  if (name.startsWith('/') || name.startsWith('\\') || /^[A-Za-z]:/.test(name)) return 'absolute path';
  if (parts.includes('..')) return 'its path climbs out of the archive ("..")';
  return undefined;
}

/** The Unix file type of an entry made on Unix or macOS (0 when the archive does not say). */
function unixType(e: CentralEntry): number {
  const os = e.madeBy >> 8;
  return os === 3 || os === 19 ? (e.externalAttrs >>> 16) & S_IFMT : 0;
}

/**
 * The file entries of a zip archive (folders left out). Any entry with an unsafe path, a symbolic link or
 * another special file, encryption or an unknown compression fails the whole archive with a 400 naming it;
 * more than the limits allow is a 413.
 */
export async function readZip(data: Uint8Array, limits: ZipLimits): Promise<ZipEntry[]> {
  const central = centralDirectory(data);
  // Every entry is judged before any is unpacked.
  for (const e of central) {
    const why = unsafePath(e.name);
    if (why) throw badEntry(e.name, why);
    const type = unixType(e);
    if (type === S_IFLNK) throw badEntry(e.name, 'symbolic link');
    if (type !== 0 && type !== S_IFREG && type !== S_IFDIR) throw badEntry(e.name, 'not a regular file');
    if (e.flags & 1) throw badEntry(e.name, 'encrypted');
    if (e.method !== 0 && e.method !== 8) throw badEntry(e.name, `compression method ${e.method} is not supported (stored or deflate only)`);
  }
  const files = central.filter((e) => !e.name.endsWith('/') && !e.name.endsWith('\\') && unixType(e) !== S_IFDIR);
  if (files.length > limits.maxEntries) throw tooLarge(`the archive holds ${files.length} files, more than the limit of ${limits.maxEntries} samples (--max-samples)`, { limit: limits.maxEntries, files: files.length });
  const total = files.reduce((n, e) => n + e.size, 0);
  if (total > limits.maxBytes) throw tooLarge(`the archive unpacks to ${total} bytes, more than the upload limit of ${limits.maxBytes} bytes (--max-upload)`, { limit: limits.maxBytes, size: total });
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const out: ZipEntry[] = [];
  let sinceYield = 0;
  for (const e of files) {
    if (e.offset + 30 > data.length || view.getUint32(e.offset, true) !== LOCAL) throw badEntry(e.name, 'its local header is missing or corrupt');
    const start = e.offset + 30 + view.getUint16(e.offset + 26, true) + view.getUint16(e.offset + 28, true);
    if (start + e.compressedSize > data.length) throw badEntry(e.name, 'its data runs past the end of the archive');
    const raw = data.subarray(start, start + e.compressedSize);
    let bytes: Uint8Array;
    if (e.method === 0) bytes = raw;
    else {
      try {
        // The declared size caps the output: an entry cannot unpack to more than it says (no zip bombs).
        bytes = inflateRawSync(raw, { maxOutputLength: Math.max(1, e.size) });
      } catch (err) {
        throw badEntry(e.name, `cannot be inflated (${(err as Error).message})`);
      }
    }
    if (bytes.length !== e.size) throw badEntry(e.name, `unpacks to ${bytes.length} bytes, not the ${e.size} its header declares`);
    if ((crc32(bytes) >>> 0) !== e.crc) throw badEntry(e.name, 'CRC-32 mismatch (corrupt archive)');
    out.push({ name: e.name.replace(/\\/g, '/'), bytes });
    // Inflating is synchronous: let other requests through every few megabytes.
    sinceYield += e.size;
    if (sinceYield > 8 << 20) {
      sinceYield = 0;
      await new Promise((r) => setImmediate(r));
    }
  }
  return out;
}

/** A zip of `files` (name → bytes): large binaries stored as they are, small text files deflated. */
export function writeZip(files: Record<string, Uint8Array>): Uint8Array {
  const zippable: Zippable = {};
  for (const [name, bytes] of Object.entries(files)) zippable[name] = [bytes, { level: bytes.byteLength > 1 << 20 ? 0 : 6 }];
  return zipSync(zippable);
}
