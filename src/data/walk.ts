/**
 * Walking dataset folders so that nothing on disk can stop or hang a run: only regular files are listed, and
 * every entry that cannot be used is skipped with a one-line reason — a named pipe, socket or device; a dangling
 * symbolic link or a link loop; an unreadable file or folder; a link into another class folder of the dataset
 * (a `..` link would put one class's files under another's name). A symbolic link to a folder is followed, each
 * real folder read once at most (`ln -s . loop` is read once, not forever).
 */
import { readdir, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileProblem, notRegular } from '../util/fs.js';
import type { Skipped } from './dataset.js';

/** Names in code-unit order: the same on every machine and locale. */
export const byCodeUnit = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

const isHidden = (name: string) => name.startsWith('.');

const inside = (child: string, parent: string) => child === parent || child.startsWith(parent.endsWith(path.sep) ? parent : parent + path.sep);

/**
 * The visible entries of `dir`, sorted by name, as sub-folders and regular files (symbolic links resolved).
 * Entries of any other kind, and links that cannot be resolved, go to `skipped`; an unreadable `dir` itself
 * throws (the caller decides whether that is fatal).
 */
export async function listFolder(dir: string, skipped: Skipped[]): Promise<{ dirs: string[]; files: string[] }> {
  const dirs: string[] = [];
  const files: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (isHidden(entry.name)) continue;
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) dirs.push(entry.name);
    else if (entry.isFile()) files.push(entry.name);
    else if (entry.isSymbolicLink()) {
      const info = await stat(full).catch((e: unknown) => e as Error);
      if (info instanceof Error) skipped.push({ file: full, reason: linkProblem(info) });
      else if (info.isDirectory()) dirs.push(entry.name);
      else if (info.isFile()) files.push(entry.name);
      else skipped.push({ file: full, reason: `not a regular file: ${notRegular(info)}` });
    } else {
      skipped.push({ file: full, reason: `not a regular file: ${kindOf(entry)}` });
    }
  }
  return { dirs: dirs.sort(byCodeUnit), files: files.sort(byCodeUnit) };
}

function linkProblem(e: Error): string {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'dangling symbolic link (its target does not exist)';
  if (code === 'ELOOP') return 'symbolic link loop';
  return fileProblem(e);
}

function kindOf(entry: { isFIFO(): boolean; isSocket(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean }): string {
  if (entry.isFIFO()) return 'a named pipe (FIFO)';
  if (entry.isSocket()) return 'a socket';
  if (entry.isCharacterDevice() || entry.isBlockDevice()) return 'a device';
  return 'unknown kind';
}

/**
 * Every regular file under `root` (recursively, hidden entries ignored), sorted by path. Symbolic links are
 * followed unless they lead into `dataRoot` outside `root` (another class's folder); each real folder is read
 * once. Unreadable folders and every unusable entry are reported in `skipped`, never thrown.
 */
export async function walkFiles(root: string, skipped: Skipped[], dataRoot?: string): Promise<string[]> {
  const files: string[] = [];
  const realRoot = await realpath(root).catch(() => path.resolve(root));
  const realData = dataRoot ? await realpath(dataRoot).catch(() => path.resolve(dataRoot)) : undefined;
  const seen = new Set<string>();
  /** Why a (linked) entry whose real path is `real` may not be used, if it may not. */
  const outside = (real: string) => (realData && inside(real, realData) && !inside(real, realRoot) ? 'symbolic link into another folder of the dataset' : undefined);
  const walk = async (dir: string): Promise<void> => {
    const real = await realpath(dir).catch((e: unknown) => e as Error);
    if (real instanceof Error) {
      skipped.push({ file: dir, reason: linkProblem(real) });
      return;
    }
    if (seen.has(real)) {
      skipped.push({ file: dir, reason: 'symbolic link to a folder already read (a loop)' });
      return;
    }
    const why = outside(real);
    if (why) {
      skipped.push({ file: dir, reason: why });
      return;
    }
    seen.add(real);
    let listed: { dirs: string[]; files: string[] };
    try {
      listed = await listFolder(dir, skipped);
    } catch (e) {
      skipped.push({ file: dir, reason: `folder cannot be read: ${fileProblem(e)}` });
      return;
    }
    for (const f of listed.files) {
      const full = path.join(dir, f);
      if (realData) {
        const r = await realpath(full).catch(() => full);
        const bad = r !== full ? outside(r) : undefined;
        if (bad) {
          skipped.push({ file: full, reason: bad });
          continue;
        }
      }
      files.push(full);
    }
    for (const d of listed.dirs) await walk(path.join(dir, d));
  };
  await walk(root);
  return files.sort(byCodeUnit);
}
