/** What every benchmark script needs: its options, CPU-and-wall timing, and the CPU model to report with a figure. */
import { execFileSync } from 'node:child_process';
import { cpus } from 'node:os';

export const args = process.argv.slice(2);

/** `--name VALUE` as a string, or the fallback. */
export function option(name: string, fallback: string): string {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1]! : fallback;
}

/** `--name N` as a number, or the fallback. */
export function flag(name: string, fallback: number): number {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : fallback;
}

/** The arguments that are neither options nor their values. */
export const positional = args.filter((a, i) => !a.startsWith('--') && !(i > 0 && args[i - 1]!.startsWith('--')));

/** CPU seconds used by this process (all threads, workers included) while `f` runs, and the wall seconds. */
export async function measure<T>(f: () => Promise<T>): Promise<{ value: T; cpu: number; wall: number }> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const value = await f();
  const c = process.cpuUsage(c0);
  return { value, cpu: (c.user + c.system) / 1e6, wall: (performance.now() - t0) / 1000 };
}

/** `lscpu`'s model name (ratios move between CPUs: report it with every figure), else Node's. */
export function cpuModel(): string {
  try {
    return /Model name:\s*(.+)/.exec(execFileSync('lscpu', { encoding: 'utf8' }))?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown';
  } catch {
    return cpus()[0]?.model ?? 'unknown';
  }
}
