/** Running the real `graft` command in tests, on datasets made of links to the real hymenoptera images. */
import { execFile } from 'node:child_process';
import { mkdir, readdir, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { ROOT, SHARED } from './paths.js';

const BIN = join(ROOT, 'bin/graft.js');
const HYM = join(SHARED, 'data/hymenoptera');

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** `graft ...args` in a child process with `env` added to this one's; never rejects. */
export function graft(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((done) => {
    execFile(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, maxBuffer: 64 << 20 }, (error, stdout, stderr) => {
      done({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/** `dir/split/{ants,bees}/` holding symlinks to the first `n` real images of each class of that split. */
export async function linkSubset(dir: string, split: string, n: number): Promise<void> {
  for (const cls of ['ants', 'bees']) {
    const src = join(HYM, split, cls);
    const files = (await readdir(src)).filter((f) => f.endsWith('.jpg')).sort().slice(0, n);
    await mkdir(join(dir, split, cls), { recursive: true });
    for (const f of files) await symlink(join(src, f), join(dir, split, cls, f));
  }
}
