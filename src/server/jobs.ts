/**
 * Training jobs: a queue (at most `maxJobs` at once, the rest in order) whose jobs each run the graft CLI in a
 * child process — `graft train <manifest> --out … --events … --json` — so a job trains exactly as the command
 * line does, off the server's event loop, and cancelling is killing the child. The child appends its progress
 * to an events file (NDJSON) that is followed here and relayed to subscribers (the SSE streams); its memory is
 * read from /proc while it runs.
 *
 * On disk, per job: `DIR/jobs/<jid>/job.json` (rewritten atomically on every change), `data/` (the project's
 * samples as they were when the job was made: hard links and a manifest, or a table of texts), `events.ndjson`,
 * `stderr.log`, `out/` while training and `report.html` after it (the artifact moves to the model store).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFile, link, mkdir, open, readdir, readFile, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import { getPriority, setPriority } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Metrics } from '../evaluate/metrics.js';
import { writeFileAtomic } from '../util/fs.js';
import { badRequest, HttpError, notFound } from './http.js';
import { parseJobRequest, trainFlags, type JobMode, type JobOptions } from './job-options.js';
import { newId } from './ids.js';
import type { ModelStore } from './models.js';
import { extensionOf, type Task } from './samples.js';
import type { ProjectRecord, Store } from './store.js';
import type { EpochEvent, ProgressEvent } from '../train/events.js';

export type JobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

export interface HistoryEntry {
  phase: string;
  epoch: number;
  trainLoss: number;
  valLoss: number;
  valAccuracy: number;
  valMacroF1?: number;
}

export interface Job {
  id: string;
  projectId: string;
  state: JobState;
  mode: JobMode;
  options: JobOptions;
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
  phase?: string;
  epoch?: number;
  epochs?: number;
  history: HistoryEntry[];
  /** Within the current phase: the features or augmented views extracted so far, or the epoch's place. */
  progress?: { phase: string; done: number; total: number };
  memory?: { rssBytes: number; peakRssBytes: number };
  error?: string;
  modelId?: string;
  metrics?: Metrics;
}

/** The phases of `graft train --events` that count epochs. */
const EPOCH_PHASES = new Set(['train', 'head', 'fine-tune']);

/** What job.json holds: the Job, its project's task and the training process while one runs. */
interface JobRecord extends Job {
  task: Task;
  pid?: number;
}

export type JobEvent =
  | { event: 'job'; data: Job }
  | { event: 'epoch'; data: EpochEvent }
  | { event: 'log'; data: { message: string } }
  | { event: 'progress'; data: NonNullable<Job['progress']> }
  | { event: 'end'; data: Job };

export interface JobManagerOptions {
  dataDir: string;
  store: Store;
  models: ModelStore;
  /** Most jobs training at once (--max-jobs). */
  maxJobs: number;
  /** The feature cache the jobs share (`graft train --cache-dir`). */
  cacheDir: string;
  /** The graft executable the jobs run (default: this checkout's bin/graft.js). */
  bin?: string;
}

const FINISHED: readonly JobState[] = ['succeeded', 'failed', 'cancelled'];
const TAIL_MS = 150;
/** The training processes' nice value (Unix priority: higher is lower). */
const TRAIN_NICE = 10;
const MEMORY_MS = 1000;
/** How long a cancelled child has between SIGTERM and SIGKILL. */
const KILL_GRACE_MS = 3000;
const DEFAULT_BIN = fileURLToPath(new URL('../../../bin/graft.js', import.meta.url));

const csvField = (s: string) => `"${s.replace(/"/g, '""')}"`;

/** A file-name-safe form of a sample's name (for the report's lists), keeping letters and digits. */
const stem = (name: string) => name.replace(/\.[^.]*$/, '').replace(/[^\p{L}\p{N}._-]+/gu, '_').slice(0, 60) || 'sample';

/** The process memory of a running child, from /proc (Linux); undefined elsewhere or once it has exited. */
async function processMemory(pid: number): Promise<{ rssBytes: number; peakRssBytes: number } | undefined> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => undefined);
  if (!status) return undefined;
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)\\s+kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  const rss = kb('VmRSS');
  const peak = kb('VmHWM');
  return Number.isFinite(rss) ? { rssBytes: rss, peakRssBytes: Number.isFinite(peak) ? peak : rss } : undefined;
}

/**
 * Training is background work: at a lower priority it takes whatever CPU the requests leave, and they stay fast.
 * Linux sets priorities per thread and a thread inherits its creator's: every thread of the process is lowered
 * (called again while it runs, for threads made meanwhile by one that was not yet lowered).
 */
async function lowerPriority(pid: number): Promise<void> {
  const threads = await readdir(`/proc/${pid}/task`).catch(() => [String(pid)]);
  for (const tid of threads) {
    try {
      if (getPriority(Number(tid)) < TRAIN_NICE) setPriority(Number(tid), TRAIN_NICE);
    } catch {
      // gone, or not permitted: that thread keeps the server's priority
    }
  }
}

interface Running {
  child: ChildProcess;
  /** Resolves once the job's end has been recorded (after the process exited). */
  done: Promise<void>;
  events: FileHandle;
  /** The events file's reads, one after another. */
  tailing: Promise<void>;
  offset: number;
  partial: string;
  timers: NodeJS.Timeout[];
  stdout: Buffer[];
  stderrTail: string;
}

export class JobManager {
  private readonly jobs = new Map<string, JobRecord>();
  private readonly running = new Map<string, Running>();
  /** Jobs holding one of the maxJobs places: starting or running. */
  private readonly active = new Set<string>();
  private readonly listeners = new Map<string, Set<(e: JobEvent) => void>>();
  private readonly saving = new Map<string, Promise<void>>();
  private readonly root: string;
  private readonly bin: string;
  private stopping = false;

  private constructor(private readonly o: JobManagerOptions) {
    this.root = join(o.dataDir, 'jobs');
    this.bin = o.bin ?? DEFAULT_BIN;
  }

  /** Loads the jobs on disk: a job that was running when the server stopped is marked failed (its process ended); queued jobs wait again. */
  static async open(o: JobManagerOptions): Promise<JobManager> {
    const m = new JobManager(o);
    await mkdir(m.root, { recursive: true });
    for (const name of await readdir(m.root)) {
      const text = await readFile(join(m.root, name, 'job.json'), 'utf8').catch(() => undefined);
      if (text === undefined) {
        await rm(join(m.root, name), { recursive: true, force: true });
        continue;
      }
      const job = JSON.parse(text) as JobRecord;
      m.jobs.set(job.id, job);
      if (job.state === 'running') {
        if (job.pid !== undefined) await m.killOrphan(job);
        delete job.pid;
        Object.assign(job, { state: 'failed', finishedAt: new Date().toISOString(), error: 'interrupted: the server stopped while this job was running' });
        await m.save(job);
      }
    }
    m.pump();
    return m;
  }

  /** A training process left by a server that was killed, still running: recognised by its job folder in its command line. */
  private async killOrphan(job: JobRecord): Promise<void> {
    const cmdline = await readFile(`/proc/${job.pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes(this.dir(job.id))) {
      try {
        process.kill(job.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }

  private dir(jid: string): string {
    return join(this.root, jid);
  }

  private view(j: JobRecord): Job {
    const { pid: _pid, task: _task, ...job } = j;
    return structuredClone(job);
  }

  private record(jid: string): JobRecord {
    const j = this.jobs.get(jid);
    if (!j) throw notFound('job', jid);
    return j;
  }

  list(projectId?: string): Job[] {
    return [...this.jobs.values()].filter((j) => projectId === undefined || j.projectId === projectId).sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id)).map((j) => this.view(j));
  }

  get(jid: string): Job {
    return this.view(this.record(jid));
  }

  counts(): { running: number; queued: number } {
    let running = 0;
    let queued = 0;
    for (const j of this.jobs.values()) {
      if (j.state === 'running') running++;
      else if (j.state === 'queued') queued++;
    }
    return { running, queued };
  }

  reportPath(jid: string): string {
    const j = this.record(jid);
    if (j.state !== 'succeeded') throw new HttpError('NOT_FOUND', `job ${jid} has no report (${j.state})`, { id: jid, state: j.state });
    return join(this.dir(jid), 'report.html');
  }

  /** Queues a training job on the project's samples as they are now. */
  async create(projectId: string, body: Record<string, unknown>): Promise<Job> {
    const { mode, options } = parseJobRequest(body);
    const id = newId();
    const dir = this.dir(id);
    await mkdir(dir, { recursive: true });
    let task: Task;
    try {
      task = await this.o.store.withProject(projectId, (p) => this.materialise(p, join(dir, 'data')));
    } catch (e) {
      await rm(dir, { recursive: true, force: true });
      throw e;
    }
    const job: JobRecord = { id, projectId, state: 'queued', mode, options, createdAt: new Date().toISOString(), history: [], task };
    await this.save(job);
    this.jobs.set(id, job);
    this.pump();
    return this.view(job);
  }

  /**
   * Writes the dataset `graft train` reads: for images and audio a manifest (path, label) over hard links to the
   * samples (a deleted sample stays in the job), for texts a table (text, label).
   */
  private async materialise(p: Readonly<ProjectRecord>, data: string): Promise<Task> {
    const names = new Map(p.classes.map((c) => [c.id, c.name]));
    const used = p.classes.filter((c) => p.samples.some((s) => s.classId === c.id));
    if (used.length < 2) throw badRequest(`project ${JSON.stringify(p.name)} needs samples in at least two classes to train (it has ${used.length})`, { classes: used.length });
    await mkdir(join(data, 'files'), { recursive: true });
    const lines: string[] = [];
    if (p.task === 'text') {
      lines.push('text,label');
      for (const s of p.samples) lines.push(`${csvField(s.text ?? '')},${csvField(names.get(s.classId)!)}`);
    } else {
      lines.push('path,label');
      for (const s of p.samples) {
        const file = `files/${s.id}-${stem(s.name)}.${extensionOf(s.format)}`;
        const source = this.o.store.samplePath(p.id, s.id);
        await link(source, join(data, file)).catch((e: NodeJS.ErrnoException) => (e.code === 'EXDEV' || e.code === 'EPERM' ? copyFile(source, join(data, file)) : Promise.reject(e)));
        lines.push(`${csvField(file)},${csvField(names.get(s.classId)!)}`);
      }
    }
    await writeFileAtomic(join(data, `${p.name}.csv`), lines.join('\n') + '\n');
    return p.task;
  }

  /** Starts queued jobs, oldest first, while fewer than maxJobs run. */
  private pump(): void {
    if (this.stopping) return;
    for (const j of [...this.jobs.values()].sort((a, b) => a.createdAt.localeCompare(b.createdAt))) {
      if (this.active.size >= this.o.maxJobs) return;
      if (j.state === 'queued' && !this.active.has(j.id)) {
        this.active.add(j.id);
        this.start(j).catch(async (e: unknown) => {
          this.active.delete(j.id);
          if (j.state === 'queued' || j.state === 'running') {
            Object.assign(j, { state: 'failed', finishedAt: new Date().toISOString(), error: `the training process could not be started: ${(e as Error).message}` });
            delete j.pid;
            await this.save(j);
            this.end(j);
          }
          this.pump();
        });
      }
    }
  }

  private async start(job: JobRecord): Promise<void> {
    const dir = this.dir(job.id);
    const data = join(dir, 'data');
    const manifest = (await readdir(data)).find((f) => f.endsWith('.csv'));
    if (!manifest) throw new Error(`no dataset in ${data}`);
    const eventsFile = join(dir, 'events.ndjson');
    await writeFile(eventsFile, '');
    await rm(join(dir, 'out'), { recursive: true, force: true });
    const events = await open(eventsFile, 'r');
    // Cancelled (or the server stopping) while this was getting ready.
    if (job.state !== 'queued' || this.stopping) {
      await events.close();
      this.active.delete(job.id);
      this.pump();
      return;
    }
    const args = [this.bin, 'train', join(data, manifest), '--task', job.task, '--out', join(dir, 'out'), '--cache-dir', resolve(this.o.cacheDir), '--events', eventsFile, '--json', ...trainFlags(job.options)];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, GRAFT_DEBUG: '' } });
    if (child.pid !== undefined) void lowerPriority(child.pid);
    const stderrLog = createWriteStream(join(dir, 'stderr.log'));
    let markDone!: () => void;
    const run: Running = {
      child,
      events,
      tailing: Promise.resolve(),
      offset: 0,
      partial: '',
      timers: [],
      stdout: [],
      stderrTail: '',
      done: new Promise((r) => (markDone = r)),
    };
    this.running.set(job.id, run);
    child.stdout!.on('data', (c: Buffer) => run.stdout.push(c));
    child.stderr!.on('data', (c: Buffer) => {
      stderrLog.write(c);
      run.stderrTail = (run.stderrTail + c.toString('utf8')).slice(-4000);
    });
    let ended = false;
    const end = (code: number | null, signal: NodeJS.Signals | null) => {
      if (ended) return;
      ended = true;
      stderrLog.end();
      void this.finished(job, run, code, signal).finally(markDone);
    };
    child.once('error', (e) => {
      run.stderrTail += `\n${e.message}`;
      if (child.pid === undefined) end(null, null); // it never started: no 'close' follows
    });
    child.once('close', end);
    Object.assign(job, { state: 'running', startedAt: new Date().toISOString(), pid: child.pid });
    this.emit(job.id, { event: 'job', data: this.view(job) });
    run.timers.push(setInterval(() => void this.tail(job, run), TAIL_MS));
    run.timers.push(setInterval(() => void this.sampleMemory(job), MEMORY_MS));
    void this.sampleMemory(job);
    await this.save(job);
  }

  private async sampleMemory(job: JobRecord): Promise<void> {
    if (job.pid === undefined) return;
    await lowerPriority(job.pid);
    const m = await processMemory(job.pid);
    if (m) job.memory = { rssBytes: m.rssBytes, peakRssBytes: Math.max(m.peakRssBytes, job.memory?.peakRssBytes ?? 0) };
  }

  /** Reads what the child appended to its events file since the last look (one read at a time). */
  private tail(job: JobRecord, run: Running): Promise<void> {
    run.tailing = run.tailing.then(() => this.readEvents(job, run)).catch((e: unknown) => void process.stderr.write(`graft serve: job ${job.id}: events: ${(e as Error).message}\n`));
    return run.tailing;
  }

  private async readEvents(job: JobRecord, run: Running): Promise<void> {
    const buffer = Buffer.alloc(64 << 10);
    for (;;) {
      const { bytesRead } = await run.events.read(buffer, 0, buffer.length, run.offset).catch(() => ({ bytesRead: 0 }));
      if (bytesRead === 0) break;
      run.offset += bytesRead;
      run.partial += buffer.subarray(0, bytesRead).toString('utf8');
      const lines = run.partial.split('\n');
      run.partial = lines.pop()!;
      for (const line of lines) if (line.trim()) this.onEvent(job, line);
    }
  }

  private onEvent(job: JobRecord, line: string): void {
    let e: ProgressEvent;
    try {
      e = JSON.parse(line) as ProgressEvent;
    } catch {
      return;
    }
    if (job.state !== 'running') return;
    if (e.type === 'phase') {
      job.phase = e.phase;
      // Training phases count epochs; the others (features, augmented views) report samples as progress events.
      if (EPOCH_PHASES.has(e.phase)) Object.assign(job, { epoch: 0, epochs: e.total });
      this.emit(job.id, { event: 'job', data: this.view(job) });
    } else if (e.type === 'epoch') {
      const { type: _type, ...epoch } = e;
      Object.assign(job, { phase: epoch.phase, epoch: epoch.epoch, epochs: epoch.epochs });
      job.history.push({ phase: epoch.phase, epoch: epoch.epoch, trainLoss: epoch.trainLoss, valLoss: epoch.valLoss, valAccuracy: epoch.valAccuracy, valMacroF1: epoch.valMacroF1 });
      void this.save(job);
      this.emit(job.id, { event: 'epoch', data: epoch });
    } else if (e.type === 'progress') {
      // Within a phase: the features and augmented views being extracted (epochs come as their own events).
      job.progress = { phase: e.phase, done: e.done, total: e.total };
      this.emit(job.id, { event: 'progress', data: job.progress });
    } else if (e.type === 'log') {
      this.emit(job.id, { event: 'log', data: { message: e.message } });
    }
  }

  private async finished(job: JobRecord, run: Running, code: number | null, signal: NodeJS.Signals | null): Promise<void> {
    for (const t of run.timers) clearInterval(t);
    await this.tail(job, run);
    await run.events.close().catch(() => undefined);
    this.running.delete(job.id);
    this.active.delete(job.id);
    delete job.pid;
    if (job.state === 'running') {
      const dir = this.dir(job.id);
      if (code === 0) {
        try {
          await copyFile(join(dir, 'out', 'report.html'), join(dir, 'report.html'));
          const model = await this.o.models.add(join(dir, 'out'), { projectId: job.projectId, jobId: job.id, task: job.task });
          Object.assign(job, { state: 'succeeded', modelId: model.id, metrics: model.metrics });
        } catch (e) {
          Object.assign(job, { state: 'failed', error: `training finished but its output could not be kept: ${(e as Error).message}` });
        }
      } else {
        Object.assign(job, { state: 'failed', error: this.failure(run, code, signal) });
      }
      job.finishedAt = new Date().toISOString();
    }
    await this.save(job);
    this.end(job);
    this.pump();
  }

  /** Why a training process failed: graft's JSON error, else the last line it printed, else how it ended. */
  private failure(run: Running, code: number | null, signal: NodeJS.Signals | null): string {
    const stdout = Buffer.concat(run.stdout).toString('utf8');
    try {
      const doc = JSON.parse(stdout) as { error?: { message?: string } };
      if (doc.error?.message) return doc.error.message;
    } catch {
      // not JSON: fall through
    }
    const last = run.stderrTail.split('\n').map((l) => l.trim()).filter(Boolean).pop();
    const how = signal ? `killed by ${signal}` : `exit code ${code}`;
    return last ? `${last.replace(/^graft: error: /, '')} (${how})` : `the training process ended with ${how}`;
  }

  /** Sends the final job and `end` to subscribers and drops them. */
  private end(job: JobRecord): void {
    const view = this.view(job);
    this.emit(job.id, { event: 'job', data: view });
    this.emit(job.id, { event: 'end', data: view });
    this.listeners.delete(job.id);
  }

  /** Cancels a queued or running job (a running one's process is stopped before this returns). */
  async cancel(jid: string): Promise<Job> {
    const job = this.record(jid);
    if (FINISHED.includes(job.state)) return this.view(job);
    const run = this.running.get(jid);
    Object.assign(job, { state: 'cancelled', finishedAt: new Date().toISOString() });
    if (run) {
      await this.stop(run);
    } else {
      await this.save(job);
      this.end(job);
    }
    return this.view(job);
  }

  /** SIGTERM, then SIGKILL if the process is still there after a grace period; resolves once it has exited. */
  private async stop(run: Running): Promise<void> {
    if (run.child.exitCode === null && run.child.signalCode === null) run.child.kill('SIGTERM');
    const timer = setTimeout(() => run.child.kill('SIGKILL'), KILL_GRACE_MS);
    await run.done;
    clearTimeout(timer);
  }

  /** Cancels and removes the project's jobs (their folders too). */
  async deleteProject(projectId: string): Promise<void> {
    // Queued ones first, so that none starts when a running one is stopped.
    const mine = [...this.jobs.values()].filter((x) => x.projectId === projectId).sort((a, b) => Number(b.state === 'queued') - Number(a.state === 'queued'));
    for (const j of mine) {
      await this.cancel(j.id);
      await this.saving.get(j.id);
      this.jobs.delete(j.id);
      await rm(this.dir(j.id), { recursive: true, force: true });
    }
  }

  /** Receives the job's events until it ends; returns the unsubscribe function. */
  subscribe(jid: string, fn: (e: JobEvent) => void): () => void {
    this.record(jid);
    let set = this.listeners.get(jid);
    if (!set) this.listeners.set(jid, (set = new Set()));
    set.add(fn);
    return () => {
      set.delete(fn);
    };
  }

  private emit(jid: string, e: JobEvent): void {
    for (const fn of [...(this.listeners.get(jid) ?? [])]) fn(e);
  }

  /** Writes job.json; writes of one job happen in order. */
  private save(job: JobRecord): Promise<void> {
    const text = JSON.stringify(job, null, 2) + '\n';
    const previous = this.saving.get(job.id) ?? Promise.resolve();
    const next = previous
      .then(() => writeFileAtomic(join(this.dir(job.id), 'job.json'), text))
      .catch((e: unknown) => void process.stderr.write(`graft serve: job ${job.id}: cannot write job.json: ${(e as Error).message}\n`));
    this.saving.set(job.id, next);
    return next;
  }

  /** Stops every training process (their jobs are marked failed) and waits for them to exit. */
  async shutdown(): Promise<void> {
    this.stopping = true;
    const runs = [...this.running.entries()];
    for (const [jid] of runs) {
      const job = this.jobs.get(jid)!;
      Object.assign(job, { state: 'failed', finishedAt: new Date().toISOString(), error: 'interrupted: the server stopped while this job was running' });
    }
    await Promise.all(runs.map(([, run]) => this.stop(run)));
    await Promise.all([...this.saving.values()]);
  }
}
