/**
 * graft at scale: feature extraction + head training over the 70,000 Fashion-MNIST images (Debian's
 * `dataset-fashion-mnist`: `apt-get install dataset-fashion-mnist`), written out once by this bench as PNG class
 * folders (train = the 60k training images, val = the 10k test images).
 *
 *   node dist/bench/scale.js [--dir /tmp/graft-scale] [--model M] [--epochs 5] [--limit N] [--skip-clean] [--skip-resume]
 *
 * 1. clean run: a fresh cache, the library path `graft train` takes (Learner.create → fit → evaluate) in a child
 *    process; RSS (VmRSS of that process) and throughput reported every 10k images.
 * 2. kill -9 at 50%: a second fresh cache; the child is killed with SIGKILL once half the images are extracted,
 *    then run again: it must read the first half from the cache, extract the rest, and train to the same result.
 *
 * Run it alone on the machine (`flock /tmp/graft-cpu.lock node dist/bench/scale.js`): timings share the cores.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import sharp from 'sharp';
import { Learner } from '../src/learner.js';
import { mapLimit } from '../src/util/async.js';

const args = process.argv.slice(2);
const option = (name: string, fallback: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1]! : fallback;
};
const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const SOURCE = '/usr/share/datasets/fashion-mnist';
const CLASSES = ['t-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'ankle-boot'];
const dir = resolve(option('--dir', '/tmp/graft-scale'));
const model = resolve(option('--model', join(root, '../shared/models/mobilenetv2-12-int8/model.onnx')));
const epochs = Number(option('--epochs', '5'));
const limit = Number(option('--limit', '70000'));
const log = (m: string) => process.stderr.write(`${m}\n`);
const MB = 1024 * 1024;

/** Writes `dir/data/{train,val}/<class>/<n>.png` from the IDX files (once; a marker file says it is complete). */
async function writeDataset(): Promise<string> {
  const data = join(dir, 'data');
  const marker = join(data, `.complete-${limit}`);
  if (existsSync(marker)) return data;
  rmSync(data, { recursive: true, force: true });
  for (const split of ['train', 'val']) for (const c of CLASSES) mkdirSync(join(data, split, c), { recursive: true });
  let written = 0;
  for (const [split, prefix] of [['train', 'train'], ['val', 't10k']] as const) {
    if (!existsSync(join(SOURCE, `${prefix}-images-idx3-ubyte.gz`))) throw new Error(`${SOURCE} missing: apt-get install dataset-fashion-mnist`);
    const images = gunzipSync(readFileSync(join(SOURCE, `${prefix}-images-idx3-ubyte.gz`)));
    const labels = gunzipSync(readFileSync(join(SOURCE, `${prefix}-labels-idx1-ubyte.gz`)));
    const n = Math.min(images.readUInt32BE(4), Math.round((limit * (split === 'train' ? 6 : 1)) / 7));
    await mapLimit(Array.from({ length: n }, (_, i) => i), 8, async (i) => {
      const pixels = images.subarray(16 + i * 784, 16 + (i + 1) * 784);
      const png = await sharp(pixels, { raw: { width: 28, height: 28, channels: 1 } }).png().toBuffer();
      writeFileSync(join(data, split, CLASSES[labels[8 + i]!]!, `${i}.png`), png);
    });
    written += n;
    log(`wrote ${n} ${split} images`);
  }
  writeFileSync(marker, String(written));
  return data;
}

/** The child: what `graft train DATA --model M --cache-dir C --epochs E` does, with progress lines on stdout. */
async function child(data: string, cacheDir: string): Promise<void> {
  const t0 = performance.now();
  const say = (o: Record<string, unknown>) => process.stdout.write(`${JSON.stringify({ t: +((performance.now() - t0) / 1000).toFixed(2), ...o })}\n`);
  let next = 0;
  const learn = await Learner.create({
    data,
    model,
    cacheDir,
    onProgress: (p) => {
      if (p.done >= next || p.done === p.total) {
        say({ done: p.done, total: p.total, cached: p.cached, skipped: p.skipped });
        next = p.done + 1000;
      }
    },
  });
  const extraction = learn.data.extraction;
  say({ extracted: extraction.extracted, cached: extraction.cached, extractionSeconds: extraction.seconds });
  const fit = await learn.fit({ epochs });
  const metrics = await learn.evaluate();
  say({ final: true, accuracy: metrics.accuracy, macroF1: metrics.macroF1, epochs: fit.history.length, trainRows: learn.data.trainRows.length, valRows: learn.data.valRows.length });
  await learn.close();
}

interface Line { t: number; done?: number; total?: number; cached?: number; final?: boolean; accuracy?: number; extracted?: number; extractionSeconds?: number; [k: string]: unknown }

/** Runs the child, sampling its RSS every 250 ms; `killAt`: SIGKILL once this fraction is extracted. */
function runChild(data: string, cacheDir: string, killAt?: number): Promise<{ lines: Array<Line & { rssMB: number }>; killed: boolean; maxRssMB: number; code: number | null }> {
  return new Promise((done, fail) => {
    const p = spawn(process.execPath, [fileURLToPath(import.meta.url), '--child', data, cacheDir, '--model', model, '--epochs', String(epochs)], { stdio: ['ignore', 'pipe', 'inherit'] });
    const rss = () => {
      try {
        return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${p.pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;
      } catch {
        return 0;
      }
    };
    let maxRssMB = 0;
    const timer = setInterval(() => (maxRssMB = Math.max(maxRssMB, rss())), 250);
    const lines: Array<Line & { rssMB: number }> = [];
    let killed = false;
    let buffer = '';
    p.stdout.on('data', (chunk: Buffer) => {
      buffer += chunk.toString('utf8');
      let nl;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = JSON.parse(buffer.slice(0, nl)) as Line;
        buffer = buffer.slice(nl + 1);
        lines.push({ ...line, rssMB: +rss().toFixed(1) });
        if (killAt !== undefined && !killed && line.done !== undefined && line.total !== undefined && line.done >= killAt * line.total) {
          killed = true;
          p.kill('SIGKILL');
        }
      }
    });
    p.on('error', fail);
    p.on('exit', (code) => {
      clearInterval(timer);
      done({ lines, killed, maxRssMB: +maxRssMB.toFixed(1), code });
    });
  });
}

/** RSS and images/s at every 10k images. */
function every10k(lines: Array<Line & { rssMB: number }>): Array<{ done: number; t: number; rssMB: number; imagesPerSecond: number }> {
  const out: Array<{ done: number; t: number; rssMB: number; imagesPerSecond: number }> = [];
  let last = { done: 0, t: lines[0]?.t ?? 0 };
  for (const l of lines) {
    if (l.done === undefined) continue;
    if (l.done >= (out.length + 1) * 10000 || (l.done === l.total && l.done > last.done)) {
      out.push({ done: l.done, t: l.t, rssMB: l.rssMB, imagesPerSecond: +((l.done - last.done) / (l.t - last.t)).toFixed(1) });
      last = { done: l.done, t: l.t };
    }
  }
  return out;
}

if (args[0] === '--child') {
  await child(args[1]!, args[2]!);
} else {
  const cpu = readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.*)$/m)?.[1]?.trim();
  const data = await writeDataset();
  const report: Record<string, unknown> = { machine: { cpu, node: process.version }, data, model, epochs };
  if (!args.includes('--skip-clean')) {
    const cache = join(dir, 'cache-clean');
    rmSync(cache, { recursive: true, force: true });
    log('clean run');
    const r = await runChild(data, cache);
    const final = r.lines.find((l) => l.final);
    const extraction = r.lines.find((l) => l.extractionSeconds !== undefined);
    report.clean = { code: r.code, maxRssMB: r.maxRssMB, every10k: every10k(r.lines), extraction, final };
    rmSync(cache, { recursive: true, force: true });
  }
  if (!args.includes('--skip-resume')) {
    const cache = join(dir, 'cache-resume');
    rmSync(cache, { recursive: true, force: true });
    log('kill -9 at 50%, then resume');
    const killed = await runChild(data, cache, 0.5);
    const lastSeen = killed.lines.filter((l) => l.done !== undefined).at(-1);
    const resumed = await runChild(data, cache);
    const extraction = resumed.lines.find((l) => l.extractionSeconds !== undefined);
    report.resume = {
      killed: { killed: killed.killed, code: killed.code, lastProgress: lastSeen },
      resumed: { code: resumed.code, maxRssMB: resumed.maxRssMB, extraction, final: resumed.lines.find((l) => l.final), every10k: every10k(resumed.lines) },
    };
    rmSync(cache, { recursive: true, force: true });
  }
  console.log(JSON.stringify(report, null, 2));
}
