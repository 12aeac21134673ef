/**
 * The client of graft serve's /v1 API (see the serve contract). The bearer token comes from the page URL's
 * fragment `#token=T`, is kept in sessionStorage (and removed from the address bar), and is sent on every
 * request; progress streams are read with fetch() so the header can go with them (EventSource cannot send it).
 */

export type Task = 'image' | 'text' | 'audio';
export interface ClassInfo { id: string; name: string; count: number }
export interface Project { id: string; name: string; task: Task; createdAt: string; classes: ClassInfo[]; sampleCount: number }
export interface Sample { id: string; classId: string; name: string; bytes: number; text?: string }
export interface Rejected { name: string; reason: string }

export interface ClassMetrics { label?: string; precision: number; recall: number; f1: number; support: number }
export interface Metrics {
  accuracy: number;
  macroF1?: number;
  loss?: number;
  /** graft writes a record by label; the contract also allows an array of {label, ...}. Both are read. */
  perClass?: Record<string, ClassMetrics> | ClassMetrics[];
  confusion?: number[][];
  labels?: string[];
  count?: number;
}
export interface EpochRecord { phase?: string; epoch: number; epochs?: number; trainLoss?: number; valLoss?: number; valAccuracy?: number; valMacroF1?: number }
export type JobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';
export interface Job {
  id: string;
  projectId: string;
  state: JobState;
  mode: 'extract' | 'fine-tune';
  options: Record<string, unknown>;
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
  phase?: string;
  epoch?: number;
  epochs?: number;
  history: EpochRecord[];
  progress?: Progress;
  memory?: { rssBytes: number; peakRssBytes: number };
  error?: string;
  modelId?: string;
  metrics?: Metrics;
}
/** Progress within a phase: features or augmented views extracted so far (epochs come as epoch events). */
export interface Progress { phase: string; done: number; total: number }
export interface Model { id: string; projectId: string; jobId: string; task: string; labels: string[]; createdAt: string; metrics: Metrics; backbone: string }
export interface PredictionRow { input: string; predictions: Array<{ label: string; probability: number }>; probabilities: number[] }
export interface PredictResult { predictions: PredictionRow[]; skipped: Rejected[] }
export interface Health { status: string; version: string; uptimeSeconds: number; jobs: { running: number; queued: number }; memory: { rssBytes: number; heapUsedBytes: number } }
export interface JobOptions { epochs?: number; lr?: number; unfreeze?: number; head?: string; seed?: number; valSplit?: number; model?: string; batchSize?: number; augment?: string; views?: number; tta?: boolean }
export interface Tensor { data: Float32Array; dims: number[]; input: string }

export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
    this.name = 'ApiError';
  }
}

const TOKEN_KEY = 'graft-serve-token';

/** Reads `#token=` from the URL into sessionStorage and drops it from the address bar. */
export function initToken(): void {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1] ?? ''));
    const rest = location.hash.slice(1).split('&').filter((part) => !part.startsWith('token=')).join('&');
    history.replaceState(null, '', location.pathname + location.search + (rest ? `#${rest}` : ''));
  }
}

export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

function headers(extra?: Record<string, string>): Headers {
  const h = new Headers(extra);
  const t = token();
  if (t) h.set('Authorization', `Bearer ${t}`);
  return h;
}

async function fail(res: Response): Promise<never> {
  let code = 'HTTP_' + res.status;
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = (await res.json()) as { error?: { code?: string; message?: string } };
    if (body.error?.code) code = body.error.code;
    if (body.error?.message) message = body.error.message;
  } catch {
    // not JSON: keep the status line
  }
  throw new ApiError(res.status, code, message);
}

/** A request to the API; throws ApiError on a non-2xx answer. */
export async function request(method: string, path: string, body?: BodyInit | object, signal?: AbortSignal, contentType?: string): Promise<Response> {
  const init: RequestInit = { method, headers: headers(contentType ? { 'Content-Type': contentType } : undefined), signal };
  if (body !== undefined) {
    if (body instanceof FormData || body instanceof Blob || body instanceof ArrayBuffer || typeof body === 'string') init.body = body as BodyInit;
    else {
      (init.headers as Headers).set('Content-Type', 'application/json');
      init.body = JSON.stringify(body);
    }
  }
  const res = await fetch(path, init);
  if (!res.ok) await fail(res);
  return res;
}

async function json<T>(method: string, path: string, body?: BodyInit | object, signal?: AbortSignal): Promise<T> {
  const res = await request(method, path, body, signal);
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

const enc = encodeURIComponent;

function filesForm(files: readonly File[]): FormData {
  const form = new FormData();
  for (const f of files) form.append('file', f, f.name);
  return form;
}

export const api = {
  health: () => json<Health>('GET', '/v1/health'),
  version: () => json<{ version: string; onnxruntime: string; node: string }>('GET', '/v1/version'),

  projects: async () => (await json<{ projects: Project[] }>('GET', '/v1/projects')).projects,
  project: (pid: string) => json<Project>('GET', `/v1/projects/${enc(pid)}`),
  createProject: (name: string, task: Task, classes?: string[]) => json<Project>('POST', '/v1/projects', { name, task, classes }),
  renameProject: (pid: string, name: string) => json<Project>('PATCH', `/v1/projects/${enc(pid)}`, { name }),
  deleteProject: (pid: string) => json<void>('DELETE', `/v1/projects/${enc(pid)}`),

  addClass: (pid: string, name: string) => json<ClassInfo>('POST', `/v1/projects/${enc(pid)}/classes`, { name }),
  renameClass: (pid: string, cid: string, name: string) => json<ClassInfo>('PATCH', `/v1/projects/${enc(pid)}/classes/${enc(cid)}`, { name }),
  deleteClass: (pid: string, cid: string) => json<void>('DELETE', `/v1/projects/${enc(pid)}/classes/${enc(cid)}`),

  uploadFiles: (pid: string, cid: string, files: readonly File[], signal?: AbortSignal) =>
    json<{ added: Sample[]; rejected: Rejected[] }>('POST', `/v1/projects/${enc(pid)}/classes/${enc(cid)}/samples`, filesForm(files), signal),
  uploadTexts: (pid: string, cid: string, texts: string[]) =>
    json<{ added: Sample[]; rejected: Rejected[] }>('POST', `/v1/projects/${enc(pid)}/classes/${enc(cid)}/samples`, { texts }),
  async importZip(pid: string, zip: Blob): Promise<{ added: number; classes: ClassInfo[]; rejected: Rejected[] }> {
    const res = await request('POST', `/v1/projects/${enc(pid)}/import`, zip, undefined, 'application/zip');
    return (await res.json()) as { added: number; classes: ClassInfo[]; rejected: Rejected[] };
  },
  samples: (pid: string, cid: string, offset: number, limit: number) =>
    json<{ samples: Sample[]; total: number }>('GET', `/v1/projects/${enc(pid)}/samples?classId=${enc(cid)}&offset=${offset}&limit=${limit}`),
  deleteSample: (pid: string, sid: string) => json<void>('DELETE', `/v1/projects/${enc(pid)}/samples/${enc(sid)}`),
  thumbnailUrl: (pid: string, sid: string) => `/v1/projects/${enc(pid)}/samples/${enc(sid)}/thumbnail`,
  contentUrl: (pid: string, sid: string) => `/v1/projects/${enc(pid)}/samples/${enc(sid)}/content`,

  startJob: (pid: string, mode: 'extract' | 'fine-tune', options: JobOptions) => json<Job>('POST', `/v1/projects/${enc(pid)}/jobs`, { mode, options }),
  jobs: async (pid: string) => (await json<{ jobs: Job[] }>('GET', `/v1/jobs?projectId=${enc(pid)}`)).jobs,
  job: (jid: string) => json<Job>('GET', `/v1/jobs/${enc(jid)}`),
  cancelJob: (jid: string) => json<Job>('POST', `/v1/jobs/${enc(jid)}/cancel`),
  reportUrl: (jid: string) => `/v1/jobs/${enc(jid)}/report`,

  models: async (pid: string) => (await json<{ models: Model[] }>('GET', `/v1/models?projectId=${enc(pid)}`)).models,
  model: (mid: string) => json<Model>('GET', `/v1/models/${enc(mid)}`),
  deleteModel: (mid: string) => json<void>('DELETE', `/v1/models/${enc(mid)}`),
  predictFiles: (mid: string, files: readonly File[], topK?: number, signal?: AbortSignal) =>
    json<PredictResult>('POST', `/v1/models/${enc(mid)}/predict${topK ? `?topK=${topK}` : ''}`, filesForm(files), signal),
  predictTexts: (mid: string, texts: string[], topK?: number) =>
    json<PredictResult>('POST', `/v1/models/${enc(mid)}/predict${topK ? `?topK=${topK}` : ''}`, { texts }),
  async preprocess(mid: string, file: File): Promise<Tensor> {
    const res = await request('POST', `/v1/models/${enc(mid)}/preprocess`, filesForm([file]));
    const dims = (res.headers.get('X-Tensor-Dims') ?? '').split(',').filter(Boolean).map(Number);
    const input = res.headers.get('X-Tensor-Input') ?? 'input';
    const buf = await res.arrayBuffer();
    // float32 little-endian: copy through a DataView so a big-endian host would still read it right.
    const view = new DataView(buf);
    const data = new Float32Array(buf.byteLength / 4);
    for (let i = 0; i < data.length; i++) data[i] = view.getFloat32(i * 4, true);
    return { data, dims, input };
  },
  modelFile: async (mid: string, name: 'model.onnx' | 'graft.json') => request('GET', `/v1/models/${enc(mid)}/files/${name}`),
  downloadUrl: (mid: string) => `/v1/models/${enc(mid)}/download`,
};

/** A GET with the token, as a Blob (thumbnails, audio clips, the zip, the report). */
export async function fetchBlob(path: string, signal?: AbortSignal): Promise<{ blob: Blob; res: Response }> {
  const res = await request('GET', path, undefined, signal);
  return { blob: await res.blob(), res };
}

export interface StreamHandlers {
  job?(job: Job): void;
  epoch?(e: EpochRecord): void;
  log?(m: { message: string }): void;
  progress?(p: Progress): void;
  end?(job: Job): void;
}

/**
 * Follows a job's server-sent events with fetch streaming. Reconnects when the connection drops before `end`
 * (the server sends the whole Job first, so nothing is lost); resolves with the final Job.
 */
export async function followJob(jid: string, on: StreamHandlers, signal: AbortSignal): Promise<Job | null> {
  for (let attempt = 0; !signal.aborted; attempt++) {
    try {
      const res = await request('GET', `/v1/jobs/${enc(jid)}/events`, undefined, signal);
      if (!res.body) throw new Error('no response body');
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      let event = 'message';
      let data: string[] = [];
      let final: Job | null = null;
      const dispatch = () => {
        if (!data.length) {
          event = 'message';
          return;
        }
        const payload = JSON.parse(data.join('\n')) as unknown;
        const name = event;
        event = 'message';
        data = [];
        if (name === 'job') on.job?.(payload as Job);
        else if (name === 'epoch') on.epoch?.(payload as EpochRecord);
        else if (name === 'log') on.log?.(payload as { message: string });
        else if (name === 'progress') on.progress?.(payload as Progress);
        else if (name === 'end') {
          final = payload as Job;
          on.end?.(final);
        }
      };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let nl: number;
        while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
          const line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + (buffer.startsWith('\r\n', nl) ? 2 : 1));
          if (line === '') dispatch();
          else if (line.startsWith(':')) continue;
          else {
            const colon = line.indexOf(':');
            const field = colon < 0 ? line : line.slice(0, colon);
            let val = colon < 0 ? '' : line.slice(colon + 1);
            if (val.startsWith(' ')) val = val.slice(1);
            if (field === 'event') event = val;
            else if (field === 'data') data.push(val);
          }
        }
        if (final) {
          await reader.cancel().catch(() => undefined);
          return final;
        }
      }
      if (final) return final;
      // The stream closed without `end`: a finished job would have said so; look, then reconnect.
      const job = await api.job(jid);
      if (job.state === 'succeeded' || job.state === 'failed' || job.state === 'cancelled') {
        on.end?.(job);
        return job;
      }
    } catch (err) {
      if (signal.aborted) return null;
      if (err instanceof ApiError && err.status >= 400 && err.status < 500) throw err;
    }
    await new Promise((r) => setTimeout(r, Math.min(5000, 500 * 2 ** Math.min(attempt, 4))));
  }
  return null;
}
