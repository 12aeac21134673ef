/**
 * `graft serve` end to end: a real server in a child process on a temporary data folder, driven over HTTP with
 * real hymenoptera photos and the int8 MobileNetV2 backbone: projects and uploads (multipart, zip), the checks
 * on content, names and limits, training jobs with their event streams, cancel, predictions against
 * GraftModel, the model download, a restart on the same folder, and the token.
 */
import { after, before, describe, it, mock } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { unzipSync, zipSync } from 'fflate';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { GraftModel } from '../src/artifact/model.js';
import { bearerMatches } from '../src/server/http.js';
import { readEvents, serve, serveFails, type Served, type SseEvent } from './support/serve.js';
import { requireShared, SHARED } from './support/paths.js';

const [MODEL, HYM, FSDD] = requireShared(join(SHARED, 'models/mobilenetv2-12-int8/model.onnx'), join(SHARED, 'data/hymenoptera'), join(SHARED, 'data/fsdd/recordings'));

interface Project {
  id: string;
  name: string;
  task: string;
  classes: Array<{ id: string; name: string; count: number }>;
  sampleCount: number;
}
interface Job {
  id: string;
  state: string;
  history: Array<{ phase: string; epoch: number }>;
  modelId?: string;
  metrics?: { accuracy: number; labels: string[] };
  memory?: { rssBytes: number; peakRssBytes: number };
  error?: string;
}
interface PredictResponse {
  predictions: Array<{ input: string; predictions: Array<{ label: string; probability: number }>; probabilities: number[] }>;
  skipped: Array<{ name: string; reason: string }>;
}

async function images(split: string, cls: string, n: number, skip = 0): Promise<string[]> {
  const dir = join(HYM, split, cls);
  return (await readdir(dir)).filter((f) => f.endsWith('.jpg')).sort().slice(skip, skip + n).map((f) => join(dir, f));
}

async function form(files: Array<{ name: string; bytes: Uint8Array }>): Promise<FormData> {
  const f = new FormData();
  for (const file of files) f.append('file', new Blob([new Uint8Array(file.bytes)]), file.name);
  return f;
}

const filesOf = async (paths: string[]) => Promise.all(paths.map(async (p) => ({ name: p.split('/').pop()!, bytes: await readFile(p) })));

/** A JSON API call: the status and the parsed body (or the text when not JSON). */
async function call<T = Record<string, unknown>>(base: string, path: string, init: RequestInit & { json?: unknown } = {}): Promise<{ status: number; body: T; headers: Headers }> {
  const { json, ...rest } = init;
  const res = await fetch(new URL(path, base), {
    ...rest,
    ...(json !== undefined ? { method: rest.method ?? 'POST', body: JSON.stringify(json), headers: { 'content-type': 'application/json', ...(rest.headers as Record<string, string>) } } : {}),
  });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, body: body as T, headers: res.headers };
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, ms = 60_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('graft serve', () => {
  let tmp: string;
  let dataDir: string;
  let server: Served;
  let url: string;
  let project: Project;
  let ants: string;
  let bees: string;
  let job: Job;
  let events: SseEvent[];
  const fineTune = { mode: 'fine-tune', options: { epochs: 2, unfreeze: 1, model: MODEL } };

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'graft-serve-'));
    dataDir = join(tmp, 'data');
    server = await serve(['--data-dir', dataDir, '--max-upload', '6M', '--max-samples', '40']);
    url = server.url;
  });

  after(async () => {
    await server?.stop();
    await rm(tmp, { recursive: true, force: true });
  });

  it('answers health and version, with nosniff and no CORS headers', async () => {
    const health = await call<{ status: string; version: string; jobs: { running: number; queued: number }; memory: { rssBytes: number } }>(url, '/v1/health', { headers: { origin: url.replace(/\/$/, '') } });
    assert.equal(health.status, 200);
    assert.equal(health.body.status, 'ok');
    assert.deepEqual(health.body.jobs, { running: 0, queued: 0 });
    assert.ok(health.body.memory.rssBytes > 0);
    assert.equal(health.headers.get('x-content-type-options'), 'nosniff');
    const version = await call<{ version: string; onnxruntime: string; node: string }>(url, '/v1/version');
    assert.equal(version.body.version, health.body.version);
    assert.match(version.body.onnxruntime, /^\d+\.\d+/);
    const preflight = await fetch(new URL('/v1/projects', url), { method: 'OPTIONS', headers: { origin: 'https://evil.example', 'access-control-request-method': 'POST' } });
    await preflight.text();
    for (const res of [health, version, { headers: preflight.headers }]) {
      for (const [k] of res.headers) assert.ok(!k.startsWith('access-control-'), `CORS header ${k}`);
    }
    assert.notEqual(preflight.status, 200);
  });

  it('refuses cross-origin requests and foreign Host headers', async () => {
    const cross = await call(url, '/v1/projects', { json: { name: 'x', task: 'image' }, headers: { origin: 'https://evil.example' } });
    assert.equal(cross.status, 400);
    assert.match(JSON.stringify(cross.body), /cross-origin/);
    const { request } = await import('node:http');
    const status = await new Promise<number>((done, fail) => {
      const u = new URL('/v1/health', url);
      const req = request({ host: u.hostname, port: u.port, path: u.pathname, headers: { host: 'evil.example:80' } }, (res) => {
        res.resume();
        done(res.statusCode!);
      });
      req.on('error', fail);
      req.end();
    });
    assert.equal(status, 400);
  });

  it('creates projects; names with markup are refused, class names are kept as plain text', async () => {
    const bad = await call<{ error: { code: string; message: string } }>(url, '/v1/projects', { json: { name: '<script>alert(1)</script>', task: 'image' } });
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error.code, 'BAD_REQUEST');
    assert.match(bad.body.error.message, /invalid project name/);
    assert.equal((await call(url, '/v1/projects', { json: { name: 'x', task: 'video' } })).status, 400);
    const created = await call<Project>(url, '/v1/projects', { json: { name: 'hymenoptera', task: 'image', classes: ['ants', 'bees'] } });
    assert.equal(created.status, 201);
    project = created.body;
    assert.match(project.id, /^[a-z0-9]{12}$/);
    assert.deepEqual(project.classes.map((c) => [c.name, c.count]), [['ants', 0], ['bees', 0]]);
    [ants, bees] = project.classes.map((c) => c.id) as [string, string];
    assert.equal((await call(url, '/v1/projects', { json: { name: 'Hymenoptera', task: 'image' } })).status, 409);
    const markup = '<img src=x onerror=alert(1)>';
    const cls = await call<{ id: string; name: string }>(url, `/v1/projects/${project.id}/classes`, { json: { name: markup } });
    assert.equal(cls.status, 201);
    assert.equal(cls.body.name, markup);
    assert.match(cls.headers.get('content-type')!, /^application\/json/);
    assert.equal((await call(url, `/v1/projects/${project.id}/classes/${cls.body.id}`, { method: 'DELETE' })).status, 204);
    assert.equal((await call(url, `/v1/projects/${project.id}/classes`, { json: { name: '../up' } })).status, 400);
    const listed = await call<{ projects: Project[] }>(url, '/v1/projects');
    assert.deepEqual(listed.body.projects.map((p) => p.name), ['hymenoptera']);
  });

  it('uploads 15 + 15 photos as multipart files', async () => {
    for (const [cid, cls] of [[ants, 'ants'], [bees, 'bees']] as const) {
      const files = await filesOf(await images('train', cls, 15));
      const r = await call<{ added: Array<{ id: string; classId: string; name: string; bytes: number }>; rejected: unknown[] }>(url, `/v1/projects/${project.id}/classes/${cid}/samples`, { method: 'POST', body: await form(files) });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body.added.length, 15);
      assert.deepEqual(r.body.rejected, []);
      assert.deepEqual(r.body.added.map((s) => s.name), files.map((f) => f.name));
      assert.ok(r.body.added.every((s, i) => s.classId === cid && s.bytes === files[i]!.bytes.length));
    }
    const p = await call<Project>(url, `/v1/projects/${project.id}`);
    assert.equal(p.body.sampleCount, 30);
    const page = await call<{ samples: Array<{ id: string }>; total: number }>(url, `/v1/projects/${project.id}/samples?classId=${ants}&limit=10`);
    assert.equal(page.body.total, 15);
    assert.equal(page.body.samples.length, 10);
    const content = await fetch(new URL(`/v1/projects/${project.id}/samples/${page.body.samples[0]!.id}/content`, url));
    assert.equal(content.headers.get('content-type'), 'image/jpeg');
    assert.deepEqual(new Uint8Array(await content.arrayBuffer()), new Uint8Array((await filesOf(await images('train', 'ants', 1)))[0]!.bytes));
    const thumb = await fetch(new URL(`/v1/projects/${project.id}/samples/${page.body.samples[0]!.id}/thumbnail`, url));
    const meta = await sharp(Buffer.from(await thumb.arrayBuffer())).metadata();
    assert.equal(meta.format, 'jpeg');
    assert.ok(Math.max(meta.width!, meta.height!) <= 128);
  });

  it('judges uploads by their signature: a PNG named .jpg is an image, a text named .jpg is not', async () => {
    const p = (await call<Project>(url, '/v1/projects', { json: { name: 'signatures', task: 'image', classes: ['a'] } })).body;
    const png = await sharp((await filesOf(await images('val', 'ants', 1)))[0]!.bytes).png().toBuffer();
    const r = await call<{ added: Array<{ name: string }>; rejected: Array<{ name: string; reason: string }> }>(url, `/v1/projects/${p.id}/classes/${p.classes[0]!.id}/samples`, {
      method: 'POST',
      body: await form([
        { name: 'really-a-png.jpg', bytes: png },
        { name: 'notes.jpg', bytes: new TextEncoder().encode('these are not pixels\n') },
      ]),
    });
    assert.equal(r.status, 200);
    assert.deepEqual(r.body.added.map((s) => s.name), ['really-a-png.jpg']);
    assert.equal(r.body.rejected.length, 1);
    assert.equal(r.body.rejected[0]!.name, 'notes.jpg');
    assert.match(r.body.rejected[0]!.reason, /not an image.*text/);
    const sid = (await call<{ samples: Array<{ id: string }> }>(url, `/v1/projects/${p.id}/samples`)).body.samples[0]!.id;
    const content = await fetch(new URL(`/v1/projects/${p.id}/samples/${sid}/content`, url));
    assert.equal(content.headers.get('content-type'), 'image/png');
    assert.equal((await call(url, `/v1/projects/${p.id}`, { method: 'DELETE' })).status, 204);
    assert.equal((await call(url, `/v1/projects/${p.id}`)).status, 404);
  });

  it('keeps texts of a text project (JSON or text files) and refuses what is not text', async () => {
    const p = (await call<Project>(url, '/v1/projects', { json: { name: 'sms', task: 'text', classes: ['spam', 'ham'] } })).body;
    const [spam] = p.classes.map((c) => c.id);
    const r = await call<{ added: Array<{ name: string; text: string }>; rejected: Array<{ name: string; reason: string }> }>(url, `/v1/projects/${p.id}/classes/${spam}/samples`, {
      json: { texts: ['WIN a free prize, call now', '   ', 42] },
    });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual(r.body.added.map((x) => x.text), ['WIN a free prize, call now']);
    assert.deepEqual(r.body.rejected.map((x) => x.name), ['texts[1]', 'texts[2]']);
    const files = await call<{ added: Array<{ name: string; text: string }>; rejected: Array<{ name: string; reason: string }> }>(url, `/v1/projects/${p.id}/classes/${spam}/samples`, {
      method: 'POST',
      body: await form([
        { name: 'offer.txt', bytes: new TextEncoder().encode('Claim your reward\nnow') },
        { name: 'photo.txt', bytes: (await filesOf(await images('val', 'ants', 1)))[0]!.bytes },
      ]),
    });
    assert.deepEqual(files.body.added.map((x) => x.text), ['Claim your reward\nnow']);
    assert.match(files.body.rejected[0]!.reason, /not UTF-8 text.*JPEG/);
    const sid = (await call<{ samples: Array<{ id: string }> }>(url, `/v1/projects/${p.id}/samples`)).body.samples[0]!.id;
    const content = await fetch(new URL(`/v1/projects/${p.id}/samples/${sid}/content`, url));
    assert.equal(content.headers.get('content-type'), 'text/plain; charset=utf-8');
    assert.equal(await content.text(), 'WIN a free prize, call now');
    const job = await call<{ error: { message: string } }>(url, `/v1/projects/${p.id}/jobs`, { json: { mode: 'extract' } });
    assert.equal(job.status, 400);
    assert.match(job.body.error.message, /at least two classes/);
    const badOption = await call<{ error: { message: string } }>(url, `/v1/projects/${p.id}/jobs`, { json: { mode: 'extract', options: { epochs: 0 } } });
    assert.equal(badOption.status, 400);
    assert.match(badOption.body.error.message, /options\.epochs/);
    await call(url, `/v1/projects/${p.id}`, { method: 'DELETE' });
  });

  it('refuses a body over --max-upload and a project over --max-samples with 413', async () => {
    const big = new Uint8Array(7 * 2 ** 20);
    const r = await call<{ error: { code: string; message: string } }>(url, `/v1/projects/${project.id}/classes/${ants}/samples`, { method: 'POST', body: await form([{ name: 'big.jpg', bytes: big }]) });
    assert.equal(r.status, 413);
    assert.equal(r.body.error.code, 'TOO_LARGE');
    assert.match(r.body.error.message, /--max-upload/);
    const eleven = await filesOf(await images('val', 'ants', 11));
    const over = await call<{ error: { code: string; message: string } }>(url, `/v1/projects/${project.id}/classes/${ants}/samples`, { method: 'POST', body: await form(eleven) });
    assert.equal(over.status, 413);
    assert.match(over.body.error.message, /--max-samples/);
    assert.equal((await call<Project>(url, `/v1/projects/${project.id}`)).body.sampleCount, 30);
  });

  it('imports a zip of class folders (under one top folder)', async () => {
    const p = (await call<Project>(url, '/v1/projects', { json: { name: 'zipped', task: 'image' } })).body;
    const entries: Record<string, Uint8Array> = {};
    for (const cls of ['ants', 'bees']) for (const f of await filesOf(await images('val', cls, 3))) entries[`photos/${cls}/${f.name}`] = f.bytes;
    entries['photos/bees/readme.jpg'] = new TextEncoder().encode('not a photo');
    const r = await call<{ added: number; classes: Array<{ name: string; count: number }>; rejected: Array<{ name: string; reason: string }> }>(url, `/v1/projects/${p.id}/import`, {
      method: 'POST',
      body: zipSync(entries),
      headers: { 'content-type': 'application/zip' },
    });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.added, 6);
    assert.deepEqual(r.body.classes.map((c) => [c.name, c.count]), [['ants', 3], ['bees', 3]]);
    assert.deepEqual(r.body.rejected.map((x) => x.name), ['bees/readme.jpg']);
    await call(url, `/v1/projects/${p.id}`, { method: 'DELETE' });
  });

  it('refuses zip-slip entries (.., absolute, symbolic link) with a 400 naming the entry, importing nothing', async () => {
    const jpeg = (await filesOf(await images('val', 'bees', 1)))[0]!.bytes;
    const cases: Array<[string, Record<string, Uint8Array | [Uint8Array, { os?: number; attrs?: number }]>, RegExp]> = [
      ['../x.jpg', { 'ants/ok.jpg': jpeg, '../x.jpg': jpeg }, /climbs out/],
      ['/abs.jpg', { 'ants/ok.jpg': jpeg, '/abs.jpg': jpeg }, /absolute/],
      ['ants/link.jpg', { 'ants/ok.jpg': jpeg, 'ants/link.jpg': [new TextEncoder().encode('/etc/passwd'), { os: 3, attrs: (0o120777 << 16) >>> 0 }] }, /symbolic link/],
    ];
    for (const [entry, files, why] of cases) {
      const r = await call<{ error: { code: string; message: string } }>(url, `/v1/projects/${project.id}/import`, { method: 'POST', body: zipSync(files), headers: { 'content-type': 'application/zip' } });
      assert.equal(r.status, 400, entry);
      assert.equal(r.body.error.code, 'BAD_REQUEST');
      assert.ok(r.body.error.message.includes(JSON.stringify(entry)), r.body.error.message);
      assert.match(r.body.error.message, why);
    }
    assert.equal((await call<Project>(url, `/v1/projects/${project.id}`)).body.sampleCount, 30);
  });

  it('trains a job to success, streaming epoch events, with metrics and memory', async () => {
    const created = await call<Job>(url, `/v1/projects/${project.id}/jobs`, { json: fineTune });
    assert.equal(created.status, 202, JSON.stringify(created.body));
    assert.equal(created.body.state, 'queued');
    events = await readEvents(new URL(`/v1/jobs/${created.body.id}/events`, url).href);
    assert.equal(events[0]!.event, 'job');
    assert.equal(events[events.length - 1]!.event, 'end');
    job = events[events.length - 1]!.data as Job;
    assert.equal(job.state, 'succeeded', job.error);
    const epochs = events.filter((e) => e.event === 'epoch').map((e) => e.data as { phase: string; epoch: number; epochs: number; valAccuracy: number });
    assert.ok(epochs.some((e) => e.phase === 'fine-tune'), JSON.stringify(epochs));
    assert.ok(epochs.every((e) => e.epoch >= 1 && e.epoch <= e.epochs && e.valAccuracy >= 0 && e.valAccuracy <= 1));
    assert.equal(job.history.length, epochs.length);
    assert.ok(events.some((e) => e.event === 'log'));
    // Feature extraction reports its progress in samples, ending at the total.
    const extraction = events.filter((e) => e.event === 'progress').map((e) => e.data as { phase: string; done: number; total: number }).filter((p) => p.phase === 'features');
    assert.ok(extraction.length > 0, 'progress events while features are extracted');
    assert.ok(extraction.every((p) => p.done <= p.total && p.total > 0));
    assert.equal(extraction[extraction.length - 1]!.done, extraction[extraction.length - 1]!.total);
    assert.ok(job.metrics && job.metrics.accuracy >= 0 && job.metrics.accuracy <= 1);
    assert.deepEqual(job.metrics.labels, ['ants', 'bees']);
    assert.ok(job.memory && job.memory.peakRssBytes > 50 * 2 ** 20, JSON.stringify(job.memory));
    const models = await call<{ models: Array<{ id: string; labels: string[]; jobId: string; task: string }> }>(url, `/v1/models?projectId=${project.id}`);
    assert.deepEqual(models.body.models.map((m) => [m.id, m.jobId, m.task]), [[job.modelId, job.id, 'image']]);
    const report = await fetch(new URL(`/v1/jobs/${job.id}/report`, url));
    assert.match(report.headers.get('content-type')!, /^text\/html/);
    assert.match(report.headers.get('content-security-policy')!, /default-src 'none'/);
    assert.match(await report.text(), /<html/i);
    // A finished job's stream: the job, then end.
    const replay = await readEvents(new URL(`/v1/jobs/${job.id}/events`, url).href);
    assert.deepEqual(replay.map((e) => e.event), ['job', 'end']);
  });

  it('predicts images exactly as GraftModel does, batching concurrent requests', async () => {
    const files = [...(await images('val', 'ants', 3)), ...(await images('val', 'bees', 3))];
    const model = await GraftModel.load(join(dataDir, 'models', job.modelId!, 'artifact'));
    try {
      const reference = await model.probabilities(files);
      const fromBytes = await model.probabilitiesOf(await filesOf(files));
      for (let i = 0; i < reference.probabilities.length; i++) assert.ok(Math.abs(reference.probabilities[i]! - fromBytes.probabilities[i]!) < 1e-6);
      const uploads = await filesOf(files);
      // Six requests at once, one image each, then one request holding two images and a text file.
      const singles = await Promise.all(uploads.map(async (f) => call<PredictResponse>(url, `/v1/models/${job.modelId}/predict?topK=1`, { method: 'POST', body: await form([f]) })));
      singles.forEach((r, i) => {
        assert.equal(r.status, 200, JSON.stringify(r.body));
        const [p] = r.body.predictions;
        assert.equal(p!.input, uploads[i]!.name);
        assert.equal(p!.predictions.length, 1);
        assert.ok(Math.abs(p!.probabilities.reduce((a, b) => a + b, 0) - 1) < 1e-5);
        p!.probabilities.forEach((q, c) => assert.ok(Math.abs(q - reference.probabilities[i * 2 + c]!) < 1e-5, `${files[i]} class ${c}: ${q} vs ${reference.probabilities[i * 2 + c]}`));
        assert.equal(p!.predictions[0]!.label, p!.probabilities[0]! >= p!.probabilities[1]! ? 'ants' : 'bees');
      });
      const mixed = await call<PredictResponse>(url, `/v1/models/${job.modelId}/predict`, { method: 'POST', body: await form([uploads[0]!, { name: 'notes.txt', bytes: new TextEncoder().encode('hello') }, uploads[5]!]) });
      assert.deepEqual(mixed.body.predictions.map((p) => p.input), [uploads[0]!.name, uploads[5]!.name]);
      assert.deepEqual(mixed.body.predictions[0]!.predictions.map((p) => p.label).sort(), ['ants', 'bees']);
      assert.equal(mixed.body.skipped[0]!.name, 'notes.txt');
      assert.equal((await call(url, `/v1/models/${job.modelId}/predict`, { json: { texts: ['an ant'] } })).status, 400);
      // preprocess gives exactly the tensor predict feeds: the exported graph on it reproduces the probabilities.
      const pre = await fetch(new URL(`/v1/models/${job.modelId}/preprocess`, url), { method: 'POST', body: await form([uploads[0]!]) });
      assert.equal(pre.headers.get('x-tensor-dims'), '1,3,224,224');
      const tensor = new Float32Array(await pre.arrayBuffer());
      const session = await ort.InferenceSession.create(join(dataDir, 'models', job.modelId!, 'artifact', 'model.onnx'));
      const out = await session.run({ [pre.headers.get('x-tensor-input')!]: new ort.Tensor('float32', tensor, [1, 3, 224, 224]) });
      const probs = out[session.outputNames[0]!]!.data as Float32Array;
      for (let c = 0; c < 2; c++) assert.ok(Math.abs(probs[c]! - reference.probabilities[c]!) < 1e-5);
      await session.release();
    } finally {
      await model.close();
    }
  });

  it('trains and predicts audio clips and texts (JSON), as GraftModel does', async () => {
    // Audio: spoken zeros and ones from FSDD, the bundled speech embedding.
    const audio = (await call<Project>(url, '/v1/projects', { json: { name: 'digits', task: 'audio', classes: ['zero', 'one'] } })).body;
    const clips = async (digit: number, n: number, skip = 0) =>
      (await readdir(FSDD)).filter((f) => f.startsWith(`${digit}_`)).sort().slice(skip, skip + n).map((f) => join(FSDD, f));
    for (const [i, c] of audio.classes.entries()) {
      const r = await call<{ added: unknown[] }>(url, `/v1/projects/${audio.id}/classes/${c.id}/samples`, { method: 'POST', body: await form(await filesOf(await clips(i, 10))) });
      assert.equal(r.body.added.length, 10);
    }
    const audioJob = await call<Job>(url, `/v1/projects/${audio.id}/jobs`, { json: { mode: 'extract', options: { epochs: 5 } } });
    const audioEnd = (await readEvents(new URL(`/v1/jobs/${audioJob.body.id}/events`, url).href)).pop()!.data as Job;
    assert.equal(audioEnd.state, 'succeeded', audioEnd.error);
    const held = [...(await clips(0, 1, 50)), ...(await clips(1, 1, 50))];
    const predicted = await call<PredictResponse>(url, `/v1/models/${audioEnd.modelId}/predict`, { method: 'POST', body: await form(await filesOf(held)) });
    const audioModel = await GraftModel.load(join(dataDir, 'models', audioEnd.modelId!, 'artifact'));
    try {
      const reference = await audioModel.probabilities(held);
      const labels = audioModel.labels;
      predicted.body.predictions.forEach((p, i) => p.probabilities.forEach((q, c) => assert.ok(Math.abs(q - reference.probabilities[i * labels.length + c]!) < 1e-5)));
      assert.equal(predicted.body.predictions.length, 2);
    } finally {
      await audioModel.close();
    }
    // Texts with commas, quotes and newlines survive the table the job trains on.
    const texts = (await call<Project>(url, '/v1/projects', { json: { name: 'notes', task: 'text', classes: ['food', 'weather'] } })).body;
    const food = ['pasta, "al dente", with basil', 'a bowl of rice\nand beans', 'fresh bread from the bakery', 'apple pie with cream', 'grilled fish and lemon', 'cheese on toast', 'tomato soup, hot', 'pancakes with syrup', 'a salad of greens', 'chocolate cake'];
    const weather = ['rain all afternoon', 'a cold, windy morning', 'sunny and "warm"\nall week', 'snow on the hills', 'thunderstorms tonight', 'fog by the river', 'clear skies at dawn', 'a light drizzle', 'heat wave ahead', 'frost overnight'];
    for (const [c, list] of [[texts.classes[0]!.id, food], [texts.classes[1]!.id, weather]] as const) {
      assert.equal((await call<{ added: unknown[] }>(url, `/v1/projects/${texts.id}/classes/${c}/samples`, { json: { texts: list } })).body.added.length, 10);
    }
    const textJob = await call<Job>(url, `/v1/projects/${texts.id}/jobs`, { json: { mode: 'extract', options: { epochs: 20, valSplit: 0.3 } } });
    const textEnd = (await readEvents(new URL(`/v1/jobs/${textJob.body.id}/events`, url).href)).pop()!.data as Job;
    assert.equal(textEnd.state, 'succeeded', textEnd.error);
    assert.equal(textEnd.metrics!.labels.length, 2);
    const asked = ['hot soup and bread', 'a stormy night'];
    const answer = await call<PredictResponse>(url, `/v1/models/${textEnd.modelId}/predict?topK=2`, { json: { texts: asked } });
    const textModel = await GraftModel.load(join(dataDir, 'models', textEnd.modelId!, 'artifact'));
    try {
      const reference = await textModel.probabilities(asked);
      answer.body.predictions.forEach((p, i) => {
        assert.equal(p.input, asked[i]);
        assert.equal(p.predictions.length, 2);
        p.probabilities.forEach((q, c) => assert.ok(Math.abs(q - reference.probabilities[i * 2 + c]!) < 1e-5));
      });
    } finally {
      await textModel.close();
    }
    const zip = unzipSync(new Uint8Array(await (await fetch(new URL(`/v1/models/${textEnd.modelId}/download`, url))).arrayBuffer()));
    assert.ok(zip['tokenizer.json']?.length, 'the tokenizer is in the download');
    for (const p of [audio, texts]) assert.equal((await call(url, `/v1/projects/${p.id}`, { method: 'DELETE' })).status, 204);
    assert.equal((await call(url, `/v1/models/${textEnd.modelId}`)).status, 404, 'a deleted project takes its models along');
  });

  it('downloads the model as a zip with its files and a README', async () => {
    const res = await fetch(new URL(`/v1/models/${job.modelId}/download`, url));
    assert.equal(res.headers.get('content-type'), 'application/zip');
    assert.match(res.headers.get('content-disposition')!, new RegExp(`^attachment; filename="hymenoptera-${job.modelId}\\.zip"`));
    const zip = unzipSync(new Uint8Array(await res.arrayBuffer()));
    for (const name of ['model.onnx', 'graft.json', 'report.html', 'metrics.json', 'README.md']) assert.ok(zip[name]?.length, name);
    const onDisk = await readFile(join(dataDir, 'models', job.modelId!, 'artifact', 'model.onnx'));
    assert.deepEqual(zip['model.onnx'], new Uint8Array(onDisk));
    const readme = new TextDecoder().decode(zip['README.md']);
    for (const section of ['## graft', '## Node', '## Python', '## Browser']) assert.ok(readme.includes(section), section);
    const graftJson = await fetch(new URL(`/v1/models/${job.modelId}/files/graft.json`, url));
    assert.deepEqual((await graftJson.json() as { labels: string[] }).labels, ['ants', 'bees']);
    assert.equal((await call(url, `/v1/models/${job.modelId}/files/split.json`)).status, 404);
  });

  it('queues jobs beyond --max-jobs and cancels a queued and a running job (its process stopped)', async () => {
    const long = { mode: 'fine-tune', options: { epochs: 500, unfreeze: 1, model: MODEL } };
    const first = (await call<Job>(url, `/v1/projects/${project.id}/jobs`, { json: long })).body;
    const second = (await call<Job>(url, `/v1/projects/${project.id}/jobs`, { json: long })).body;
    await readEvents(new URL(`/v1/jobs/${first.id}/events`, url).href, {}, (e) => e.event === 'epoch');
    assert.equal((await call<Job>(url, `/v1/jobs/${second.id}`)).body.state, 'queued');
    const health = await call<{ jobs: { running: number; queued: number } }>(url, '/v1/health');
    assert.deepEqual(health.body.jobs, { running: 1, queued: 1 });
    const { pid } = JSON.parse(await readFile(join(dataDir, 'jobs', first.id, 'job.json'), 'utf8')) as { pid: number };
    assert.ok(alive(pid));
    const queuedCancel = await call<Job>(url, `/v1/jobs/${second.id}/cancel`, { method: 'POST' });
    assert.equal(queuedCancel.body.state, 'cancelled');
    const cancelled = await call<Job>(url, `/v1/jobs/${first.id}/cancel`, { method: 'POST' });
    assert.equal(cancelled.body.state, 'cancelled');
    assert.ok(!alive(pid), 'the training process is gone');
    const listed = await call<{ jobs: Job[] }>(url, `/v1/jobs?projectId=${project.id}`);
    assert.deepEqual(listed.body.jobs.map((j) => j.state), ['succeeded', 'cancelled', 'cancelled']);
    assert.equal((await call<Job>(url, `/v1/jobs/${first.id}/report`)).status, 404);
  });

  it('after a crash and restart, lists the same projects and models and marks the interrupted job failed', async () => {
    const long = { mode: 'fine-tune', options: { epochs: 500, unfreeze: 1, model: MODEL } };
    const running = (await call<Job>(url, `/v1/projects/${project.id}/jobs`, { json: long })).body;
    await waitFor('the job to run', async () => ((await call<Job>(url, `/v1/jobs/${running.id}`)).body.state === 'running' ? true : undefined));
    const { pid } = await waitFor('its pid', async () => {
      const j = JSON.parse(await readFile(join(dataDir, 'jobs', running.id, 'job.json'), 'utf8')) as { pid?: number };
      return j.pid ? { pid: j.pid } : undefined;
    });
    const before = await call<{ projects: Project[] }>(url, '/v1/projects');
    await server.stop('SIGKILL');
    server = await serve(['--data-dir', dataDir, '--max-upload', '6M', '--max-samples', '40']);
    url = server.url;
    assert.deepEqual((await call<{ projects: Project[] }>(url, '/v1/projects')).body, before.body);
    assert.deepEqual((await call<{ models: Array<{ id: string }> }>(url, '/v1/models')).body.models.map((m) => m.id), [job.modelId]);
    const after = (await call<Job>(url, `/v1/jobs/${running.id}`)).body;
    assert.equal(after.state, 'failed');
    assert.match(after.error!, /interrupted/);
    await waitFor('the orphaned training process to end', async () => (alive(pid) ? undefined : true), 5000);
    // The model still predicts after the restart.
    const upload = (await filesOf(await images('val', 'bees', 1)))[0]!;
    const r = await call<PredictResponse>(url, `/v1/models/${job.modelId}/predict`, { method: 'POST', body: await form([upload]) });
    assert.equal(r.body.predictions.length, 1);
  });
});

describe('graft serve access control', () => {
  let tmp: string;

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'graft-serve-token-'));
  });

  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it('refuses a non-loopback host without a token', async () => {
    const r = await serveFails(['--host', '0.0.0.0', '--port', '0', '--data-dir', join(tmp, 'refused')]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--token/);
  });

  it('needs the bearer token on /v1 but not on the page files', async () => {
    const server = await serve(['--data-dir', join(tmp, 'token'), '--token', 's3cret-token']);
    try {
      const none = await call<{ error: { code: string } }>(server.url, '/v1/health');
      assert.equal(none.status, 401);
      assert.equal(none.body.error.code, 'UNAUTHORIZED');
      assert.equal((await call(server.url, '/v1/projects', { headers: { authorization: 'Bearer s3cret-tokeN' } })).status, 401);
      assert.equal((await call(server.url, '/v1/projects', { headers: { authorization: 'Bearer s3cret-token-and-more' } })).status, 401);
      assert.equal((await call(server.url, '/v1/health', { headers: { authorization: 'Bearer s3cret-token' } })).status, 200);
      const page = await fetch(new URL('/app.css', server.url));
      await page.text();
      assert.notEqual(page.status, 401);
    } finally {
      await server.stop();
    }
  });

  it('compares tokens in constant time (crypto.timingSafeEqual on equal-length digests)', () => {
    const spy = mock.method(crypto, 'timingSafeEqual');
    try {
      assert.equal(bearerMatches('Bearer abc', 'abc'), true);
      assert.equal(bearerMatches('bearer abc', 'abc'), true);
      assert.equal(bearerMatches('Bearer abd', 'abc'), false);
      assert.equal(bearerMatches('Bearer ab', 'abc'), false);
      assert.equal(bearerMatches('Bearer abcd', 'abc'), false);
      assert.equal(bearerMatches('abc', 'abc'), false);
      assert.equal(bearerMatches(undefined, 'abc'), false);
      assert.equal(spy.mock.callCount(), 7);
      for (const c of spy.mock.calls) assert.equal((c.arguments[0] as Buffer).length, (c.arguments[1] as Buffer).length);
    } finally {
      spy.mock.restore();
    }
  });
});
