/** Reading ONNX Runtime's profiler output (a JSON trace) for the benchmarks. */
import { readFileSync } from 'node:fs';

export interface KernelTimes {
  /** Each node's median kernel time over the profiled steps (µs), labelled `op node`. */
  medians: Array<{ node: string; op: string; t: number }>;
  /** Sum of the medians: the kernel time of one step. */
  sum: number;
  /** The medians summed by op type, costliest first. */
  byOp: Array<[op: string, t: number]>;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** Per-node medians, not sums: the first steps touch fresh memory and would dominate a sum. */
export function kernelTimes(file: string): KernelTimes {
  const events = JSON.parse(readFileSync(file, 'utf8')) as Array<{ cat: string; name: string; dur: number; args?: { op_name?: string } }>;
  const byNode = new Map<string, { op: string; times: number[] }>();
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time')) continue;
    const node = e.name.replace(/_kernel_time$/, '');
    const entry = byNode.get(node) ?? byNode.set(node, { op: e.args?.op_name ?? '?', times: [] }).get(node)!;
    entry.times.push(e.dur);
  }
  const medians = [...byNode].map(([node, { op, times }]) => ({ node: `${op} ${node}`, op, t: median(times) }));
  const sum = medians.reduce((a, m) => a + m.t, 0);
  const byOp = new Map<string, number>();
  for (const m of medians) byOp.set(m.op, (byOp.get(m.op) ?? 0) + m.t);
  return { medians, sum, byOp: [...byOp].sort((a, b) => b[1] - a[1]) };
}
