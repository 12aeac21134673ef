/**
 * `graft serve` under load, two measurements in one run on this machine (a real server in a child process):
 *
 * (a) responsiveness while a fine-tuning job trains: a bounded local load loop — /v1/health every 20 ms and a
 *     single-image predict every 100 ms, each waiting for its answer — reports p50/p99/max latency, idle first,
 *     then while the job runs (target: p99 < 100 ms);
 * (b) throughput with dynamic batching: 32 concurrent clients each sending single images, against raw
 *     onnxruntime-node on batches of 32 preprocessed images of the same exported model, in this process
 *     (target: ≥ 0.8×). Also shown: the in-process pipeline (GraftModel: decode + infer, batches of 32), the
 *     ceiling for anything that has to decode the images it receives.
 *
 *   node dist/bench/serve.js [--seconds 30] [--clients 32] [--ft-epochs 8] [--unfreeze 3]
 */
import { spawn } from 'node:child_process';
import { Agent, request } from 'node:http';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { GraftModel } from '../src/artifact/model.js';
import { cpuModel, flag } from './cli.js';

const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const SHARED = resolve(ROOT, '../shared');
const MODEL = join(SHARED, 'models/mobilenetv2-12-int8/model.onnx');
const HYM = join(SHARED, 'data/hymenoptera');
const seconds = flag('--seconds', 30);
const clients = flag('--clients', 32);
const ftEpochs = flag('--ft-epochs', 8);
const unfreeze = flag('--unfreeze', 3);
const cores = availableParallelism();

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const agent = new Agent({ keepAlive: true, maxSockets: 64 });

interface Reply {
  status: number;
  body: Buffer;
  headers: Record<string, string | string[] | undefined>;
}

function send(base: string, method: string, path: string, body?: Buffer, type?: string): Promise<Reply> {
  const u = new URL(path, base);
  return new Promise((done, fail) => {
    const req = request({ host: u.hostname, port: u.port, path: u.pathname + u.search, method, agent, headers: body ? { 'content-type': type!, 'content-length': body.length } : {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => done({ status: res.statusCode!, body: Buffer.concat(chunks), headers: res.headers }));
    });
    req.on('error', fail);
    req.end(body);
  });
}

async function api<T>(base: string, method: string, path: string, json?: unknown): Promise<T> {
  const r = await send(base, method, path, json === undefined ? undefined : Buffer.from(JSON.stringify(json)), 'application/json');
  if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${r.body.toString()}`);
  return JSON.parse(r.body.toString()) as T;
}

/** A multipart/form-data body holding `files`. */
function multipart(files: Array<{ name: string; bytes: Buffer }>): { body: Buffer; type: string } {
  const boundary = `----graftbench${Math.random().toString(16).slice(2)}`;
  const parts: Buffer[] = [];
  for (const f of files) {
    parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${f.name}"\r\nContent-Type: application/octet-stream\r\n\r\n`), f.bytes, Buffer.from('\r\n'));
  }
  parts.push(Buffer.from(`--${boundary}--\r\n`));
  return { body: Buffer.concat(parts), type: `multipart/form-data; boundary=${boundary}` };
}

async function images(split: string, cls: string): Promise<string[]> {
  return (await readdir(join(HYM, split, cls))).filter((f) => f.endsWith('.jpg')).sort().map((f) => join(HYM, split, cls, f));
}

const quantile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]! : NaN;
};
const summary = (xs: number[]) => ({ n: xs.length, p50: +quantile(xs, 0.5).toFixed(1), p99: +quantile(xs, 0.99).toFixed(1), max: +Math.max(...xs).toFixed(1) });

interface Job {
  id: string;
  state: string;
  phase?: string;
  modelId?: string;
  error?: string;
  memory?: { rssBytes: number; peakRssBytes: number };
}

async function waitJob(base: string, id: string): Promise<Job> {
  for (;;) {
    const j = await api<Job>(base, 'GET', `/v1/jobs/${id}`);
    if (j.state === 'succeeded' || j.state === 'failed' || j.state === 'cancelled') return j;
    await sleep(250);
  }
}

/** Paced closed loops: health every 20 ms and one predict every 100 ms, until `stop()` says so. */
async function loadLoop(base: string, mid: string, bodies: Array<{ body: Buffer; type: string }>, stop: () => boolean): Promise<{ health: number[]; predict: number[]; errors: number }> {
  const health: number[] = [];
  const predict: number[] = [];
  let errors = 0;
  const paced = async (period: number, call: (i: number) => Promise<Reply>, into: number[]) => {
    for (let i = 0; !stop(); i++) {
      const t0 = performance.now();
      const r = await call(i);
      const ms = performance.now() - t0;
      if (r.status === 200) into.push(ms);
      else errors++;
      await sleep(Math.max(0, period - ms));
    }
  };
  await Promise.all([
    paced(20, () => send(base, 'GET', '/v1/health'), health),
    paced(100, (i) => send(base, 'POST', `/v1/models/${mid}/predict`, bodies[i % bodies.length]!.body, bodies[i % bodies.length]!.type), predict),
  ]);
  return { health, predict, errors };
}

async function main(): Promise<void> {
  const tmp = await mkdtemp(join(tmpdir(), 'graft-bench-serve-'));
  const child = spawn(process.execPath, [join(ROOT, 'bin/graft.js'), 'serve', '--port', '0', '--data-dir', join(tmp, 'data'), '--max-upload', '500M'], {
    env: { ...process.env, HF_HUB_OFFLINE: '1', GRAFT_CACHE: join(tmp, 'cache') },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const base = await new Promise<string>((done, fail) => {
    let out = '';
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /listening on (\S+)\n/.exec(out);
      if (m) done(m[1]!);
    });
    child.once('exit', (code) => fail(new Error(`graft serve exited (${code})`)));
  });
  try {
    console.log(`CPU: ${cpuModel()} (${cores} cores); load average before: ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
    const project = await api<{ id: string; classes: Array<{ id: string; name: string }> }>(base, 'POST', '/v1/projects', { name: 'bench', task: 'image', classes: ['ants', 'bees'] });
    for (const c of project.classes) {
      const files = await Promise.all((await images('train', c.name)).map(async (f) => ({ name: f.split('/').pop()!, bytes: await readFile(f) })));
      for (let i = 0; i < files.length; i += 50) {
        const { body, type } = multipart(files.slice(i, i + 50));
        const r = await send(base, 'POST', `/v1/projects/${project.id}/classes/${c.id}/samples`, body, type);
        if (r.status !== 200) throw new Error(`upload: ${r.status} ${r.body.toString()}`);
      }
    }
    const extract = await api<Job>(base, 'POST', `/v1/projects/${project.id}/jobs`, { mode: 'extract', options: { model: MODEL, epochs: 20 } });
    const m1 = await waitJob(base, extract.id);
    if (m1.state !== 'succeeded') throw new Error(`extract job ${m1.state}: ${m1.error}`);
    const valFiles = [...(await images('val', 'ants')), ...(await images('val', 'bees'))];
    const valBytes = await Promise.all(valFiles.map(async (f) => ({ name: f.split('/').pop()!, bytes: await readFile(f) })));
    const singles = valBytes.map((f) => multipart([f]));
    // Warm: the model loaded, its pools started.
    for (const b of singles.slice(0, 4)) await send(base, 'POST', `/v1/models/${m1.modelId}/predict`, b.body, b.type);

    // (a) Latency, idle then while a fine-tuning job trains.
    const idleEnd = performance.now() + 5000;
    const idle = await loadLoop(base, m1.modelId!, singles, () => performance.now() > idleEnd);
    const ft = await api<Job>(base, 'POST', `/v1/projects/${project.id}/jobs`, { mode: 'fine-tune', options: { model: MODEL, epochs: ftEpochs, unfreeze } });
    let ftState: Job = ft;
    while (ftState.state === 'queued') ftState = await api<Job>(base, 'GET', `/v1/jobs/${ft.id}`).then(async (j) => (await sleep(50), j));
    const busyEnd = performance.now() + seconds * 1000;
    let jobDone = false;
    let peak = 0;
    const watcher = (async () => {
      while (!jobDone && performance.now() < busyEnd) {
        const j = await api<Job>(base, 'GET', `/v1/jobs/${ft.id}`);
        peak = Math.max(peak, j.memory?.peakRssBytes ?? 0);
        if (j.state !== 'running') jobDone = true;
        await sleep(250);
      }
    })();
    const t0 = performance.now();
    const busy = await loadLoop(base, m1.modelId!, singles, () => jobDone || performance.now() > busyEnd);
    const busySeconds = (performance.now() - t0) / 1000;
    await watcher;
    const ftJob = await waitJob(base, ft.id);
    const a = { idle: { health: summary(idle.health), predict: summary(idle.predict) }, training: { seconds: +busySeconds.toFixed(1), health: summary(busy.health), predict: summary(busy.predict), errors: busy.errors, jobPeakRssMB: Math.round(peak / 2 ** 20) } };
    console.log(`(a) idle:      health p50 ${a.idle.health.p50} ms p99 ${a.idle.health.p99} ms (n ${a.idle.health.n}); predict p50 ${a.idle.predict.p50} ms p99 ${a.idle.predict.p99} ms (n ${a.idle.predict.n})`);
    console.log(`(a) training:  health p50 ${a.training.health.p50} ms p99 ${a.training.health.p99} ms max ${a.training.health.max} (n ${a.training.health.n}); predict p50 ${a.training.predict.p50} ms p99 ${a.training.predict.p99} ms max ${a.training.predict.max} (n ${a.training.predict.n}); over ${a.training.seconds} s of fine-tuning (job peak RSS ${a.training.jobPeakRssMB} MB, ended ${ftJob.state})`);

    // (b) Throughput: the fine-tuned model when it finished, else the extracted one.
    const mid = ftJob.state === 'succeeded' ? ftJob.modelId! : m1.modelId!;
    const artifact = join(tmp, 'data', 'models', mid, 'artifact');
    const batchFiles = valBytes.slice(0, 32);
    const tensors: Float32Array[] = [];
    let inputName = '';
    for (const f of batchFiles) {
      const { body, type } = multipart([f]);
      const r = await send(base, 'POST', `/v1/models/${mid}/preprocess`, body, type);
      inputName = String(r.headers['x-tensor-input']);
      tensors.push(new Float32Array(r.body.buffer.slice(r.body.byteOffset, r.body.byteOffset + r.body.byteLength)));
    }
    const stride = tensors[0]!.length;
    const batch = new Float32Array(32 * stride);
    tensors.forEach((t, i) => batch.set(t, i * stride));
    const session = await ort.InferenceSession.create(join(artifact, 'model.onnx'), { intraOpNumThreads: cores });
    const feed = { [inputName]: new ort.Tensor('float32', batch, [32, 3, 224, 224]) };
    for (let i = 0; i < 3; i++) await session.run(feed);
    let runs = 0;
    const r0 = performance.now();
    while (performance.now() - r0 < 8000) {
      await session.run(feed);
      runs++;
    }
    const raw = (runs * 32) / ((performance.now() - r0) / 1000);
    await session.release();

    const model = await GraftModel.load(artifact, { threads: cores });
    const files = valFiles.slice(0, 96);
    await model.probabilities(files.slice(0, 32), 32);
    const p0 = performance.now();
    await model.probabilities(files, 32);
    const pipeline = files.length / ((performance.now() - p0) / 1000);
    // Decoding alone (the same worker pool, every image at once): with inference it shares the cores, so the
    // best any decoding server can do is limit = raw × t_infer / (t_infer + t_decode).
    const d0 = performance.now();
    await Promise.all(valBytes.slice(0, 96).map((f) => model.preprocessImage(f)));
    const decodeRate = 96 / ((performance.now() - d0) / 1000);
    await model.close();
    const limit = 1 / (1 / raw + 1 / decodeRate); // = raw × t_infer / (t_infer + t_decode), t = cores / rate

    const modelSingles = batchFiles.map((f) => multipart([f]));
    for (const b of modelSingles.slice(0, 4)) await send(base, 'POST', `/v1/models/${mid}/predict`, b.body, b.type);
    const latencies: number[] = [];
    let done = 0;
    let failed = 0;
    const s0 = performance.now();
    const end = s0 + seconds * 1000 * 0.5;
    await Promise.all(
      Array.from({ length: clients }, async (_, c) => {
        for (let i = c; performance.now() < end; i += clients) {
          const b = modelSingles[i % modelSingles.length]!;
          const t = performance.now();
          const r = await send(base, 'POST', `/v1/models/${mid}/predict`, b.body, b.type);
          if (r.status === 200) {
            done++;
            latencies.push(performance.now() - t);
          } else failed++;
        }
      }),
    );
    const served = done / ((performance.now() - s0) / 1000);
    const b = {
      model: mid === m1.modelId ? 'extract (int8 backbone + head)' : 'fine-tuned (float)',
      rawOrtBatch32: +raw.toFixed(1),
      inProcessPipeline: +pipeline.toFixed(1),
      decodeOnly: +decodeRate.toFixed(1),
      decodingLimit: +limit.toFixed(1),
      server: +served.toFixed(1),
      ratioToRaw: +(served / raw).toFixed(2),
      ratioToPipeline: +(served / pipeline).toFixed(2),
      ratioToLimit: +(served / limit).toFixed(2),
      latency: summary(latencies),
      failed,
    };
    console.log(
      `(b) ${clients} clients, single images, ${b.model} model: server ${b.server} images/s; raw onnxruntime-node batch 32: ${b.rawOrtBatch32} images/s (ratio ${b.ratioToRaw}); ` +
        `in-process decode + infer (GraftModel, batch 32): ${b.inProcessPipeline} images/s (ratio ${b.ratioToPipeline}); decoding alone ${b.decodeOnly} images/s, so ` +
        `the limit with decoding is ${b.decodingLimit} images/s (ratio ${b.ratioToLimit}); request latency p50 ${b.latency.p50} ms p99 ${b.latency.p99} ms`,
    );
    console.log(`load average after: ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
    console.log(JSON.stringify({ cpu: cpuModel(), cores, a, b }));
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    agent.destroy();
    await rm(tmp, { recursive: true, force: true });
  }
}

await main();
