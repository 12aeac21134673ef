import { randomBytes } from 'node:crypto';
import { constants, type Stats } from 'node:fs';
import { open, rename, writeFile, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';

/** Writes a file so that readers see either the old content or the new, never a partial file. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(tmp, data);
  await rename(tmp, path);
}

/**
 * writeFileAtomic that also survives a power cut: the data is flushed to disk (fsync) before the rename, and the
 * folder after it, so the name never points at a file whose blocks were not written. Checkpoints use it.
 */
export async function writeFileDurable(path: string, data: string | Uint8Array | readonly Uint8Array[]): Promise<void> {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const handle = await open(tmp, 'w');
  try {
    // Pieces are written in turn (no copy into one buffer).
    for (const piece of Array.isArray(data) ? (data as readonly Uint8Array[]) : [data as string | Uint8Array]) await handle.writeFile(piece);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(tmp, path);
  // The rename itself is durable once the folder is flushed (not every platform can open a folder: best effort).
  const dir = await open(dirname(path), 'r').catch(() => undefined);
  await dir?.sync().catch(() => undefined);
  await dir?.close();
}

/** What a file-system error means for the file it names, in a few words (one line, no path). */
export function fileProblem(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  switch (code) {
    case 'ENOENT':
      return 'does not exist (or is a dangling symbolic link)';
    case 'ELOOP':
      return 'symbolic link loop';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EISDIR':
      return 'is a folder, not a file';
    case 'ENAMETOOLONG':
      return 'name too long';
    case 'EIO':
      return 'input/output error';
    default:
      return code ? `cannot be read (${code})` : `cannot be read (${oneLine((e as Error | undefined)?.message ?? String(e))})`;
  }
}

/** What kind of non-regular file a stat result describes ("a named pipe", …), or undefined for a regular file. */
export function notRegular(info: Stats): string | undefined {
  if (info.isFile()) return undefined;
  if (info.isDirectory()) return 'a folder';
  if (info.isFIFO()) return 'a named pipe (FIFO)';
  if (info.isSocket()) return 'a socket';
  if (info.isCharacterDevice() || info.isBlockDevice()) return 'a device';
  return 'not a regular file';
}

/** Thrown by readRegularFile: `problem` is one line without the path. */
export class FileProblem extends Error {
  constructor(readonly file: string, readonly problem: string, options?: { cause?: unknown }) {
    super(`${file}: ${problem}`, options);
    this.name = 'FileProblem';
  }
}

/**
 * Reads a whole regular file, or the first `limit` bytes. Anything else (a named pipe, a socket, a device, a
 * folder) is refused without blocking: the file is opened non-blocking and checked with fstat before any read,
 * so a FIFO can never hang a run.
 */
export async function readRegularFile(file: string, limit = Infinity): Promise<Uint8Array> {
  let handle: FileHandle;
  try {
    handle = await open(file, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (e) {
    throw new FileProblem(file, fileProblem(e), { cause: e });
  }
  try {
    const info = await handle.stat();
    const kind = notRegular(info);
    if (kind) throw new FileProblem(file, `not a regular file: ${kind}`);
    const size = Math.min(info.size, limit);
    const out = new Uint8Array(size);
    let got = 0;
    while (got < size) {
      const { bytesRead } = await handle.read(out, got, size - got, got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return got === size ? out : out.subarray(0, got);
  } catch (e) {
    throw e instanceof FileProblem ? e : new FileProblem(file, fileProblem(e), { cause: e });
  } finally {
    await handle.close();
  }
}

/** Newlines and other control characters escaped, so that one record prints as one line. */
export function oneLine(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u001f\u007f\u2028\u2029]/g, (c) =>
    c === '\n' ? '\\n' : c === '\t' ? '\\t' : c === '\r' ? '\\r' : c.charCodeAt(0) < 0x100 ? `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}` : `\\u${c.charCodeAt(0).toString(16)}`,
  );
}
