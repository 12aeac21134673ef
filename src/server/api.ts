/** The /v1 API: one handler per endpoint of the contract, on the stores, the job queue and the predictor. */
import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { endianness } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import type { Manifest } from '../artifact/artifact.js';
import { mapLimit } from '../util/async.js';
import { VERSION } from '../version.js';
import {
  badRequest,
  baseHeaders,
  drain,
  bearerMatches,
  HttpError,
  intParam,
  mediaType,
  readBody,
  readJson,
  Router,
  sendBytes,
  sendError,
  sendJson,
  sendNoContent,
  toHttpError,
  type Context,
} from './http.js';
import type { JobManager } from './jobs.js';
import type { ModelStore } from './models.js';
import { readMultipart, type UploadedFile } from './multipart.js';
import type { Predictor } from './predictor.js';
import { modelReadme } from './readme.js';
import { checkClassName, checkSample, checkText, TASKS, type Task } from './samples.js';
import { serveStatic } from './static.js';
import type { NewSample, Store } from './store.js';
import { readZip, writeZip } from './zip.js';

export interface ApiOptions {
  store: Store;
  models: ModelStore;
  jobs: JobManager;
  predictor: Predictor;
  /** Largest request body, in bytes (--max-upload). */
  maxUpload: number;
  /** Most samples per project (--max-samples). */
  maxSamples: number;
  /** Bearer token every /v1 request must carry (--token). */
  token?: string;
  /** Host headers accepted when there is no token (a guard against DNS rebinding); set once listening. */
  allowedHosts?: Set<string>;
}

const REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'";
/** Most inputs one predict request may classify. */
const MAX_PREDICT_INPUTS = 1000;

type Rejected = { name: string; reason: string };

/** A one-line name for a text sample (its start). */
const textName = (text: string) => {
  const line = text.replace(/\s+/g, ' ').trim();
  return line.length > 60 ? `${line.slice(0, 59)}…` : line;
};

/** Checks uploads for a project of `task`: the accepted ones as new samples, the others with their reasons. */
async function checkFiles(task: Task, files: readonly UploadedFile[]): Promise<{ accepted: NewSample[]; rejected: Rejected[] }> {
  const checked = await mapLimit(files, 4, (f) => checkSample(task, f.bytes));
  const accepted: NewSample[] = [];
  const rejected: Rejected[] = [];
  checked.forEach((c, i) => {
    const f = files[i]!;
    if (!c.ok) rejected.push({ name: f.name, reason: c.reason });
    else accepted.push(task === 'text' ? { name: f.name, format: c.format, text: c.text! } : { name: f.name, format: c.format, bytes: f.bytes });
  });
  return { accepted, rejected };
}

/** Zip entries grouped by class folder (`ants/x.jpg`, or under one top folder: `photos/ants/x.jpg`). */
function groupEntries(entries: ReadonlyArray<{ name: string; bytes: Uint8Array }>): { groups: Map<string, UploadedFile[]>; rejected: Rejected[] } {
  const noise = (parts: string[]) => parts[0] === '__MACOSX' || parts[parts.length - 1] === '.DS_Store' || parts[parts.length - 1] === 'Thumbs.db';
  const files = entries.map((e) => ({ ...e, parts: e.name.split('/').filter((p) => p !== '' && p !== '.') })).filter((e) => !noise(e.parts));
  const top = files[0]?.parts[0];
  if (top !== undefined && files.every((f) => f.parts.length >= 3 && f.parts[0] === top)) for (const f of files) f.parts.shift();
  const groups = new Map<string, UploadedFile[]>();
  const rejected: Rejected[] = [];
  for (const f of files) {
    if (f.parts.length < 2) rejected.push({ name: f.name, reason: 'not inside a class folder (expected CLASS/FILE)' });
    else if (f.parts.some((p) => p.startsWith('.'))) rejected.push({ name: f.name, reason: 'hidden file' });
    else {
      const list = groups.get(f.parts[0]!) ?? [];
      list.push({ name: f.parts[f.parts.length - 1]!, bytes: f.bytes });
      groups.set(f.parts[0]!, list);
    }
  }
  return { groups, rejected };
}

/** A float32 tensor as little-endian bytes. */
function littleEndian(data: Float32Array): Uint8Array {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (endianness() === 'LE') return bytes;
  const out = new Uint8Array(data.byteLength);
  const view = new DataView(out.buffer);
  data.forEach((v, i) => view.setFloat32(i * 4, v, true));
  return out;
}

/** `attachment` with an ASCII fallback name and the UTF-8 one. */
const attachment = (name: string) => `attachment; filename="${name.replace(/[^\x20-\x7e]|["\\]/g, '_')}"; filename*=UTF-8''${encodeURIComponent(name)}`;

export function createApi(o: ApiOptions): (req: IncomingMessage, res: ServerResponse) => void {
  const { store, models, jobs, predictor } = o;
  const started = Date.now();
  const router = new Router();
  const json = (req: IncomingMessage) => readJson(req, o.maxUpload);

  router.add('GET', '/v1/health', ({ res }) => {
    const mem = process.memoryUsage();
    sendJson(res, 200, { status: 'ok', version: VERSION, uptimeSeconds: Math.round((Date.now() - started) / 1000), jobs: jobs.counts(), memory: { rssBytes: mem.rss, heapUsedBytes: mem.heapUsed } });
  });
  router.add('GET', '/v1/version', ({ res }) => {
    sendJson(res, 200, { version: VERSION, onnxruntime: ort.env.versions.node ?? ort.env.versions.common, node: process.versions.node });
  });

  // Projects and classes.
  router.add('GET', '/v1/projects', ({ res }) => sendJson(res, 200, { projects: store.list() }));
  router.add('POST', '/v1/projects', async ({ req, res }) => {
    const body = await json(req);
    const task = body.task;
    if (!TASKS.includes(task as Task)) throw badRequest(`"task" must be one of ${TASKS.join(', ')}, got ${JSON.stringify(task)}`, { field: 'task' });
    const classes = body.classes ?? [];
    if (!Array.isArray(classes)) throw badRequest('"classes" must be an array of names', { field: 'classes' });
    sendJson(res, 201, await store.create(body.name, task as Task, classes));
  });
  router.add('GET', '/v1/projects/:pid', ({ res, params }) => sendJson(res, 200, store.get(params.pid!)));
  router.add('PATCH', '/v1/projects/:pid', async ({ req, res, params }) => {
    store.get(params.pid!);
    sendJson(res, 200, await store.rename(params.pid!, (await json(req)).name));
  });
  router.add('DELETE', '/v1/projects/:pid', async ({ res, params }) => {
    const pid = params.pid!;
    store.get(pid);
    await jobs.deleteProject(pid);
    for (const m of models.list(pid)) {
      await predictor.unload(m.id);
      await models.delete(m.id);
    }
    await store.delete(pid);
    sendNoContent(res);
  });
  router.add('POST', '/v1/projects/:pid/classes', async ({ req, res, params }) => {
    store.get(params.pid!);
    sendJson(res, 201, await store.addClass(params.pid!, (await json(req)).name));
  });
  router.add('PATCH', '/v1/projects/:pid/classes/:cid', async ({ req, res, params }) => {
    store.classRecord(store.record(params.pid!), params.cid!);
    sendJson(res, 200, await store.renameClass(params.pid!, params.cid!, (await json(req)).name));
  });
  router.add('DELETE', '/v1/projects/:pid/classes/:cid', async ({ res, params }) => {
    await store.deleteClass(params.pid!, params.cid!);
    sendNoContent(res);
  });

  // Samples.
  router.add('POST', '/v1/projects/:pid/classes/:cid/samples', async ({ req, res, params }) => {
    const pid = params.pid!;
    const p = store.record(pid);
    store.classRecord(p, params.cid!);
    store.requireRoom(pid, 1);
    const type = mediaType(req);
    let accepted: NewSample[];
    let rejected: Rejected[];
    if (type === 'multipart/form-data') {
      const files = await readMultipart(req, { maxBytes: o.maxUpload, maxFiles: o.maxSamples, filesWhat: `--max-samples ${o.maxSamples}` });
      ({ accepted, rejected } = await checkFiles(p.task, files));
    } else if (type === 'application/json') {
      const texts = (await json(req)).texts;
      if (p.task !== 'text') throw badRequest(`JSON {texts} is for text projects; upload ${p.task} files as multipart/form-data`);
      if (!Array.isArray(texts)) throw badRequest('"texts" must be an array of strings', { field: 'texts' });
      accepted = [];
      rejected = [];
      texts.forEach((t, i) => {
        const c = checkText(t);
        if (c.ok) accepted.push({ name: textName(c.text!), format: 'text', text: c.text! });
        else rejected.push({ name: `texts[${i}]`, reason: c.reason });
      });
    } else {
      throw new HttpError('UNSUPPORTED_MEDIA', `upload samples as multipart/form-data${p.task === 'text' ? ' or JSON {texts}' : ''}, not ${type ? JSON.stringify(type) : 'an untyped body'}`, { contentType: type });
    }
    const { added } = accepted.length ? await store.addSamples(pid, [{ classId: params.cid!, samples: accepted }]) : { added: [] };
    sendJson(res, 200, { added, rejected });
  });
  router.add('POST', '/v1/projects/:pid/import', async ({ req, res, params }) => {
    const pid = params.pid!;
    const p = store.record(pid);
    store.requireRoom(pid, 1);
    const type = mediaType(req);
    if (type !== 'application/zip' && type !== 'application/x-zip-compressed') throw new HttpError('UNSUPPORTED_MEDIA', `import takes an application/zip body, not ${type ? JSON.stringify(type) : 'an untyped body'}`, { contentType: type });
    const body = await readBody(req, o.maxUpload);
    if (!(body[0] === 0x50 && body[1] === 0x4b)) throw badRequest('the body is not a zip archive (no "PK" signature)');
    const { groups, rejected } = groupEntries(await readZip(body, { maxBytes: o.maxUpload, maxEntries: o.maxSamples }));
    const toAdd: Array<{ className: string; samples: NewSample[] }> = [];
    for (const [className, files] of groups) {
      try {
        // Class names follow the same rules as the API's.
        checkClassName(className);
      } catch (e) {
        for (const f of files) rejected.push({ name: `${className}/${f.name}`, reason: (e as Error).message });
        continue;
      }
      const { accepted, rejected: bad } = await checkFiles(p.task, files);
      rejected.push(...bad.map((r) => ({ name: `${className}/${r.name}`, reason: r.reason })));
      if (accepted.length) toAdd.push({ className, samples: accepted });
    }
    const { added } = toAdd.length ? await store.addSamples(pid, toAdd) : { added: [] };
    sendJson(res, 200, { added: added.length, classes: store.get(pid).classes, rejected });
  });
  router.add('GET', '/v1/projects/:pid/samples', ({ res, url, params }) => {
    const classId = url.searchParams.get('classId') || undefined;
    const offset = intParam(url, 'offset', 0, 0, Number.MAX_SAFE_INTEGER);
    const limit = intParam(url, 'limit', 100, 1, 1000);
    sendJson(res, 200, store.listSamples(params.pid!, classId, offset, limit));
  });
  router.add('GET', '/v1/projects/:pid/samples/:sid/content', async ({ res, params }) => {
    const { bytes, contentType } = await store.content(params.pid!, params.sid!);
    sendBytes(res, bytes, contentType, { 'Content-Security-Policy': "default-src 'none'", 'Cache-Control': 'private, max-age=3600' });
  });
  router.add('GET', '/v1/projects/:pid/samples/:sid/thumbnail', async ({ res, params }) => {
    sendBytes(res, await store.thumbnail(params.pid!, params.sid!), 'image/jpeg', { 'Cache-Control': 'private, max-age=3600' });
  });
  router.add('DELETE', '/v1/projects/:pid/samples/:sid', async ({ res, params }) => {
    await store.deleteSample(params.pid!, params.sid!);
    sendNoContent(res);
  });

  // Jobs.
  router.add('POST', '/v1/projects/:pid/jobs', async ({ req, res, params }) => {
    store.get(params.pid!);
    sendJson(res, 202, await jobs.create(params.pid!, await json(req)));
  });
  router.add('GET', '/v1/jobs', ({ res, url }) => sendJson(res, 200, { jobs: jobs.list(url.searchParams.get('projectId') || undefined) }));
  router.add('GET', '/v1/jobs/:jid', ({ res, params }) => sendJson(res, 200, jobs.get(params.jid!)));
  router.add('POST', '/v1/jobs/:jid/cancel', async ({ res, params }) => sendJson(res, 200, await jobs.cancel(params.jid!)));
  router.add('GET', '/v1/jobs/:jid/report', async ({ res, params }) => {
    const html = await readFile(jobs.reportPath(params.jid!));
    sendBytes(res, html, 'text/html; charset=utf-8', { 'Content-Security-Policy': REPORT_CSP });
  });
  router.add('GET', '/v1/jobs/:jid/events', ({ req, res, params }) => events(jobs, params.jid!, req, res));

  // Models.
  router.add('GET', '/v1/models', ({ res, url }) => sendJson(res, 200, { models: models.list(url.searchParams.get('projectId') || undefined) }));
  router.add('GET', '/v1/models/:mid', ({ res, params }) => sendJson(res, 200, models.get(params.mid!)));
  router.add('DELETE', '/v1/models/:mid', async ({ res, params }) => {
    models.get(params.mid!);
    await predictor.unload(params.mid!);
    await models.delete(params.mid!);
    sendNoContent(res);
  });
  router.add('POST', '/v1/models/:mid/predict', async ({ req, res, url, params }) => {
    const mid = params.mid!;
    models.get(mid);
    const k = intParam(url, 'topK', 5, 1, 10_000);
    const type = mediaType(req);
    if (type === 'multipart/form-data') {
      const files = await readMultipart(req, { maxBytes: o.maxUpload, maxFiles: MAX_PREDICT_INPUTS, filesWhat: 'predict takes at most this many' });
      if (files.length === 0) throw badRequest('no file in the request: send the inputs as file fields of a multipart/form-data body');
      sendJson(res, 200, await predictor.predictFiles(mid, files, k));
    } else if (type === 'application/json') {
      const texts = (await json(req)).texts;
      if (!Array.isArray(texts) || texts.length === 0 || !texts.every((t) => typeof t === 'string')) throw badRequest('"texts" must be a non-empty array of strings', { field: 'texts' });
      if (texts.length > MAX_PREDICT_INPUTS) throw new HttpError('TOO_LARGE', `at most ${MAX_PREDICT_INPUTS} texts per request, got ${texts.length}`, { limit: MAX_PREDICT_INPUTS });
      sendJson(res, 200, await predictor.predictTexts(mid, texts as string[], k));
    } else {
      throw new HttpError('UNSUPPORTED_MEDIA', `predict takes multipart/form-data files or JSON {texts}, not ${type ? JSON.stringify(type) : 'an untyped body'}`, { contentType: type });
    }
  });
  router.add('POST', '/v1/models/:mid/preprocess', async ({ req, res, params }) => {
    models.get(params.mid!);
    if (mediaType(req) !== 'multipart/form-data') throw new HttpError('UNSUPPORTED_MEDIA', 'preprocess takes one image as multipart/form-data');
    const files = await readMultipart(req, { maxBytes: o.maxUpload, maxFiles: 1, filesWhat: 'preprocess takes one image' });
    if (files.length !== 1) throw badRequest('send exactly one image');
    const t = await predictor.preprocess(params.mid!, files[0]!);
    sendBytes(res, littleEndian(t.data), 'application/octet-stream', { 'X-Tensor-Dims': t.dims.join(','), 'X-Tensor-Input': t.input });
  });
  router.add('GET', '/v1/models/:mid/files/:name', async ({ res, params }) => {
    const types: Record<string, string> = { 'model.onnx': 'application/octet-stream', 'graft.json': 'application/json; charset=utf-8' };
    const type = types[params.name!];
    models.get(params.mid!);
    if (!type) throw new HttpError('NOT_FOUND', `no file ${JSON.stringify(params.name)}: model.onnx or graft.json`, { name: params.name });
    sendBytes(res, await readFile(join(models.artifactDir(params.mid!), params.name!)), type);
  });
  router.add('GET', '/v1/models/:mid/download', async ({ res, params }) => {
    const model = models.get(params.mid!);
    const dir = models.artifactDir(model.id);
    const manifestBytes = await readFile(join(dir, 'graft.json'));
    const manifest = JSON.parse(manifestBytes.toString('utf8')) as Manifest;
    const files: Record<string, Uint8Array> = { 'model.onnx': await readFile(join(dir, 'model.onnx')), 'graft.json': manifestBytes };
    for (const name of Object.keys(manifest.files ?? {})) files[name] = await readFile(join(dir, name));
    for (const name of ['tokenizer_config.json', 'report.html', 'metrics.json']) {
      const bytes = await readFile(join(dir, name)).catch(() => undefined);
      if (bytes) files[name] = bytes;
    }
    const projectName = (() => {
      try {
        return store.get(model.projectId).name;
      } catch {
        return 'model';
      }
    })();
    files['README.md'] = Buffer.from(modelReadme(model, projectName, manifest, [...Object.keys(files), 'README.md']));
    sendBytes(res, writeZip(files), 'application/zip', { 'Content-Disposition': attachment(`${projectName}-${model.id}.zip`) });
  });

  return (req, res) => {
    baseHeaders(res);
    void handle(req, res).catch((e: unknown) => {
      const error = toHttpError(e);
      if (error.api === 'INTERNAL') process.stderr.write(`graft serve: ${req.method} ${req.url}: ${(e as Error)?.stack ?? String(e)}\n`);
      sendError(res, error);
      drain(req);
    });
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://localhost');
    } catch {
      throw badRequest('malformed request URL');
    }
    guardOrigin(req);
    const method = req.method ?? 'GET';
    if (!url.pathname.startsWith('/v1/')) {
      if ((method === 'GET' || method === 'HEAD') && (await serveStatic(url.pathname, res))) return;
      throw new HttpError('NOT_FOUND', `no such page: ${url.pathname}`, { path: url.pathname });
    }
    if (o.token !== undefined && !bearerMatches(req.headers.authorization, o.token)) {
      res.setHeader('WWW-Authenticate', 'Bearer');
      throw new HttpError('UNAUTHORIZED', 'this server needs "Authorization: Bearer <token>" (the --token it was started with)');
    }
    const { handler, params } = router.match(method, url.pathname);
    await handler({ req, res, url, params } satisfies Context);
  }

  /**
   * Without a token the server trusts the machine it runs on, so a web page elsewhere must not reach it: the Host
   * header must name the server (DNS rebinding) and a request from another origin is refused (CSRF).
   */
  function guardOrigin(req: IncomingMessage): void {
    const host = (req.headers.host ?? '').toLowerCase();
    if (o.token === undefined && o.allowedHosts && !o.allowedHosts.has(host)) {
      throw badRequest(`unexpected Host header ${JSON.stringify(host)}: open the server by its own address (${[...o.allowedHosts][0]})`, { host });
    }
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== 'null') {
      let originHost: string;
      try {
        originHost = new URL(origin).host.toLowerCase();
      } catch {
        throw badRequest(`malformed Origin header ${JSON.stringify(origin)}`);
      }
      if (originHost !== host) throw badRequest(`cross-origin request from ${origin} refused`, { origin });
    } else if (origin === 'null') throw badRequest('cross-origin request from an opaque origin refused');
  }
}

/** `GET /v1/jobs/:jid/events`: the job now, then its events as they happen, then `end`. */
function events(jobs: JobManager, jid: string, req: IncomingMessage, res: ServerResponse): void {
  const job = jobs.get(jid);
  res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-store', 'X-Accel-Buffering': 'no' });
  const send = (event: string, data: unknown) => res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  send('job', job);
  if (job.state === 'succeeded' || job.state === 'failed' || job.state === 'cancelled') {
    send('end', job);
    res.end();
    return;
  }
  const heartbeat = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
  const stop = jobs.subscribe(jid, (e) => {
    send(e.event, e.data);
    if (e.event === 'end') {
      cleanup();
      res.end();
    }
  });
  const cleanup = () => {
    clearInterval(heartbeat);
    stop();
  };
  req.on('close', cleanup);
  res.on('close', cleanup);
}
