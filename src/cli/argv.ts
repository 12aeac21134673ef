/**
 * Long command lines. onnxruntime-node 1.x crashes (SIGSEGV, no message) creating a session in a process whose
 * argv is larger than ~29 KB — `graft predict MODEL photos/*.jpg` with ~420 files. The `graft` entry point
 * therefore relaunches itself when its arguments exceed ARGV_LIMIT bytes: the arguments go to a private temporary
 * file (mode 0600) read and removed by the child, whose own argv stays a few bytes; stdio, the exit code and
 * signals pass through.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Arguments (bytes, joined) above which the CLI relaunches with its arguments in a file. */
export const ARGV_LIMIT = 8192;
export const ARGV_FILE_FLAG = '--graft-argv-file';

const size = (args: readonly string[]) => args.reduce((n, a) => n + Buffer.byteLength(a) + 1, 0);

/**
 * The arguments to run with: `argv` itself when short; those of the argument file when `argv` is
 * `[node, script, ARGV_FILE_FLAG, file]` (the file is removed); undefined when the process has relaunched
 * itself (the caller should do nothing more: the child's exit ends this process).
 */
export function longArgv(argv: readonly string[], script: string): string[] | undefined {
  if (argv[2] === ARGV_FILE_FLAG && argv.length === 4) {
    const file = argv[3]!;
    const args = JSON.parse(readFileSync(file, 'utf8')) as string[];
    rmSync(join(file, '..'), { recursive: true, force: true });
    return [argv[0]!, argv[1]!, ...args];
  }
  if (size(argv.slice(2)) <= ARGV_LIMIT) return [...argv];
  const dir = mkdtempSync(join(tmpdir(), 'graft-argv-'));
  const file = join(dir, 'argv.json');
  writeFileSync(file, JSON.stringify(argv.slice(2)), { mode: 0o600 });
  const child = spawn(process.execPath, [...process.execArgv, script, ARGV_FILE_FLAG, file], { stdio: 'inherit' });
  const forward = (signal: NodeJS.Signals) => child.kill(signal);
  for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(s, forward);
  child.on('exit', (code, signal) => {
    rmSync(dir, { recursive: true, force: true });
    if (signal) {
      for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(s, forward);
      process.kill(process.pid, signal);
    } else process.exit(code ?? 1);
  });
  child.on('error', (e) => {
    rmSync(dir, { recursive: true, force: true });
    process.stderr.write(`graft: error: cannot relaunch for a long command line: ${e.message}\n`);
    process.exit(1);
  });
  return undefined;
}
