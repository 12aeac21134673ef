/**
 * Projects on disk: `DIR/projects/<pid>/project.json` (the project, its classes and the index of its samples,
 * rewritten atomically after each change) and `samples/<sid>` (each sample's bytes as uploaded; a text
 * project's texts live in the index). Changes to one project are serialised; everything is also held in memory.
 * A sample's bytes are written before the index names it and removed after it no longer does, so a crash
 * leaves at worst an unreferenced file, which the next start removes.
 */
import { mkdir, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { writeFileAtomic } from '../util/fs.js';
import { conflict, HttpError, notFound, tooLarge } from './http.js';
import { newId } from './ids.js';
import { checkClassName, checkProjectName, contentTypeOf, type Task } from './samples.js';

export interface ClassRecord {
  id: string;
  name: string;
}

export interface SampleRecord {
  id: string;
  classId: string;
  name: string;
  bytes: number;
  /** `jpeg`, `png`, `wav`, … as sniffed; `text` for a text. */
  format: string;
  text?: string;
}

export interface ProjectRecord {
  id: string;
  name: string;
  task: Task;
  createdAt: string;
  classes: ClassRecord[];
  samples: SampleRecord[];
}

/** The API's objects. */
export interface Project {
  id: string;
  name: string;
  task: Task;
  createdAt: string;
  classes: Class[];
  sampleCount: number;
}
export interface Class {
  id: string;
  name: string;
  count: number;
}
export interface Sample {
  id: string;
  classId: string;
  name: string;
  bytes: number;
  text?: string;
}

/** A sample to add: its display name, checked format and content (bytes, or a text). */
export interface NewSample {
  name: string;
  format: string;
  bytes?: Uint8Array;
  text?: string;
}

const PROJECT_FILE = 'project.json';

export class Store {
  private readonly projects = new Map<string, ProjectRecord>();
  private readonly locks = new Map<string, Promise<unknown>>();

  private constructor(
    private readonly root: string,
    /** Most samples one project may hold (--max-samples). */
    readonly maxSamples: number,
  ) {}

  static async open(dataDir: string, maxSamples: number): Promise<Store> {
    const store = new Store(join(dataDir, 'projects'), maxSamples);
    await mkdir(store.root, { recursive: true });
    for (const entry of await readdir(store.root, { withFileTypes: true })) {
      if (!entry.isDirectory()) continue;
      const dir = join(store.root, entry.name);
      // A project being deleted when the server stopped.
      if (entry.name.startsWith('.')) {
        await rm(dir, { recursive: true, force: true });
        continue;
      }
      let record: ProjectRecord;
      try {
        record = JSON.parse(await readFile(join(dir, PROJECT_FILE), 'utf8')) as ProjectRecord;
      } catch {
        continue; // not a complete project (created as the server stopped): ignored, left for inspection
      }
      store.projects.set(record.id, record);
      await store.removeUnreferenced(record);
    }
    return store;
  }

  private dir(pid: string): string {
    return join(this.root, pid);
  }

  samplePath(pid: string, sid: string): string {
    return join(this.dir(pid), 'samples', sid);
  }

  private thumbPath(pid: string, sid: string): string {
    return join(this.dir(pid), 'thumbs', `${sid}.jpg`);
  }

  private async removeUnreferenced(p: ProjectRecord): Promise<void> {
    const known = new Set(p.samples.map((s) => s.id));
    for (const sub of ['samples', 'thumbs']) {
      const names = await readdir(join(this.dir(p.id), sub)).catch(() => [] as string[]);
      for (const name of names) if (!known.has(name.replace(/\.jpg$/, ''))) await rm(join(this.dir(p.id), sub, name), { force: true });
    }
  }

  /** Runs `fn` after every earlier change of project `pid` has finished. */
  private locked<T>(pid: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(pid) ?? Promise.resolve();
    const next = previous.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.locks.set(pid, tail);
    void tail.then(() => {
      if (this.locks.get(pid) === tail) this.locks.delete(pid);
    });
    return next;
  }

  private save(p: ProjectRecord): Promise<void> {
    return writeFileAtomic(join(this.dir(p.id), PROJECT_FILE), JSON.stringify(p));
  }

  record(pid: string): ProjectRecord {
    const p = this.projects.get(pid);
    if (!p) throw notFound('project', pid);
    return p;
  }

  view(p: ProjectRecord): Project {
    const counts = new Map<string, number>();
    for (const s of p.samples) counts.set(s.classId, (counts.get(s.classId) ?? 0) + 1);
    return { id: p.id, name: p.name, task: p.task, createdAt: p.createdAt, classes: p.classes.map((c) => ({ id: c.id, name: c.name, count: counts.get(c.id) ?? 0 })), sampleCount: p.samples.length };
  }

  classView(p: ProjectRecord, c: ClassRecord): Class {
    return { id: c.id, name: c.name, count: p.samples.filter((s) => s.classId === c.id).length };
  }

  list(): Project[] {
    return [...this.projects.values()].sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id)).map((p) => this.view(p));
  }

  get(pid: string): Project {
    return this.view(this.record(pid));
  }

  private checkUniqueName(name: string, except?: string): void {
    for (const p of this.projects.values()) {
      if (p.id !== except && p.name.toLowerCase() === name.toLowerCase()) throw conflict(`a project named ${JSON.stringify(p.name)} already exists`, { name });
    }
  }

  async create(name: unknown, task: Task, classes: unknown[] = []): Promise<Project> {
    const n = checkProjectName(name);
    this.checkUniqueName(n);
    const names = classes.map(checkClassName);
    const dup = names.find((c, i) => names.indexOf(c) !== i);
    if (dup !== undefined) throw conflict(`class ${JSON.stringify(dup)} is given twice`, { name: dup });
    const p: ProjectRecord = { id: newId(), name: n, task, createdAt: new Date().toISOString(), classes: names.map((c) => ({ id: newId(), name: c })), samples: [] };
    await mkdir(join(this.dir(p.id), 'samples'), { recursive: true });
    await this.save(p);
    this.projects.set(p.id, p);
    return this.view(p);
  }

  rename(pid: string, name: unknown): Promise<Project> {
    return this.locked(pid, async () => {
      const p = this.record(pid);
      const n = checkProjectName(name);
      this.checkUniqueName(n, pid);
      await this.save({ ...p, name: n });
      p.name = n;
      return this.view(p);
    });
  }

  /** Removes the project and its samples (its folder is renamed away first, so it vanishes at once). */
  delete(pid: string): Promise<void> {
    return this.locked(pid, async () => {
      this.record(pid);
      const trash = join(this.root, `.deleted-${pid}-${newId()}`);
      await rename(this.dir(pid), trash);
      this.projects.delete(pid);
      await rm(trash, { recursive: true, force: true });
    });
  }

  classRecord(p: ProjectRecord, cid: string): ClassRecord {
    const c = p.classes.find((x) => x.id === cid);
    if (!c) throw notFound('class', cid);
    return c;
  }

  private checkUniqueClass(p: ProjectRecord, name: string, except?: string): void {
    if (p.classes.some((c) => c.id !== except && c.name === name)) throw conflict(`project ${JSON.stringify(p.name)} already has a class named ${JSON.stringify(name)}`, { name });
  }

  addClass(pid: string, name: unknown): Promise<Class> {
    return this.locked(pid, async () => {
      const p = this.record(pid);
      const n = checkClassName(name);
      this.checkUniqueClass(p, n);
      const c = { id: newId(), name: n };
      await this.save({ ...p, classes: [...p.classes, c] });
      p.classes.push(c);
      return this.classView(p, c);
    });
  }

  renameClass(pid: string, cid: string, name: unknown): Promise<Class> {
    return this.locked(pid, async () => {
      const p = this.record(pid);
      const c = this.classRecord(p, cid);
      const n = checkClassName(name);
      this.checkUniqueClass(p, n, cid);
      await this.save({ ...p, classes: p.classes.map((x) => (x.id === cid ? { ...x, name: n } : x)) });
      c.name = n;
      return this.classView(p, c);
    });
  }

  /** Removes a class and its samples. */
  deleteClass(pid: string, cid: string): Promise<void> {
    return this.locked(pid, async () => {
      const p = this.record(pid);
      this.classRecord(p, cid);
      const gone = p.samples.filter((s) => s.classId === cid);
      const next = { ...p, classes: p.classes.filter((c) => c.id !== cid), samples: p.samples.filter((s) => s.classId !== cid) };
      await this.save(next);
      Object.assign(p, next);
      await this.removeFiles(pid, gone);
    });
  }

  private async removeFiles(pid: string, samples: SampleRecord[]): Promise<void> {
    for (const s of samples) {
      await rm(this.samplePath(pid, s.id), { force: true });
      await rm(this.thumbPath(pid, s.id), { force: true });
    }
  }

  private checkRoom(p: ProjectRecord, adding: number): void {
    if (p.samples.length + adding > this.maxSamples) {
      throw tooLarge(
        `project ${JSON.stringify(p.name)} holds ${p.samples.length} samples; adding ${adding} would pass the limit of ${this.maxSamples} per project (--max-samples)`,
        { limit: this.maxSamples, current: p.samples.length, adding },
      );
    }
  }

  /** Fails with 413 now if `adding` more samples would not fit (a cheap check before reading uploads). */
  requireRoom(pid: string, adding: number): void {
    this.checkRoom(this.record(pid), adding);
  }

  /** Adds samples to classes by name (created as needed, for an import) or by id; all or nothing. */
  addSamples(pid: string, groups: Array<{ classId?: string; className?: string; samples: NewSample[] }>): Promise<{ added: Sample[]; classes: Class[] }> {
    return this.locked(pid, async () => {
      const p = this.record(pid);
      const total = groups.reduce((n, g) => n + g.samples.length, 0);
      this.checkRoom(p, total);
      const classes = [...p.classes];
      const records: SampleRecord[] = [];
      const written: string[] = [];
      try {
        for (const g of groups) {
          let c = g.classId !== undefined ? this.classRecord(p, g.classId) : classes.find((x) => x.name === g.className);
          if (!c) {
            c = { id: newId(), name: checkClassName(g.className) };
            classes.push(c);
          }
          for (const s of g.samples) {
            const id = newId();
            if (s.bytes) {
              await writeFileAtomic(this.samplePath(pid, id), s.bytes);
              written.push(id);
            }
            const bytes = s.bytes ? s.bytes.byteLength : Buffer.byteLength(s.text ?? '');
            records.push({ id, classId: c.id, name: s.name, bytes, format: s.format, ...(s.text !== undefined && p.task === 'text' ? { text: s.text } : {}) });
          }
        }
        await this.save({ ...p, classes, samples: [...p.samples, ...records] });
      } catch (e) {
        for (const id of written) await rm(this.samplePath(pid, id), { force: true });
        throw e;
      }
      p.classes = classes;
      p.samples.push(...records);
      const touched = new Set(records.map((r) => r.classId));
      return { added: records.map(sampleView), classes: classes.filter((c) => touched.has(c.id)).map((c) => this.classView(p, c)) };
    });
  }

  listSamples(pid: string, classId: string | undefined, offset: number, limit: number): { samples: Sample[]; total: number } {
    const p = this.record(pid);
    if (classId !== undefined) this.classRecord(p, classId);
    const all = classId === undefined ? p.samples : p.samples.filter((s) => s.classId === classId);
    return { samples: all.slice(offset, offset + limit).map(sampleView), total: all.length };
  }

  sampleRecord(pid: string, sid: string): SampleRecord {
    const s = this.record(pid).samples.find((x) => x.id === sid);
    if (!s) throw notFound('sample', sid);
    return s;
  }

  async content(pid: string, sid: string): Promise<{ bytes: Uint8Array; contentType: string }> {
    const s = this.sampleRecord(pid, sid);
    const bytes = s.text !== undefined ? Buffer.from(s.text, 'utf8') : await readFile(this.samplePath(pid, sid));
    return { bytes, contentType: contentTypeOf(s.format) };
  }

  /** A JPEG of at most 128×128 px (made once, then kept beside the sample). */
  async thumbnail(pid: string, sid: string): Promise<Uint8Array> {
    const p = this.record(pid);
    if (p.task !== 'image') throw new HttpError('NOT_FOUND', `samples of ${p.task} projects have no thumbnail`, { task: p.task });
    this.sampleRecord(pid, sid);
    const file = this.thumbPath(pid, sid);
    const cached = await readFile(file).catch(() => undefined);
    if (cached) return cached;
    let jpeg: Buffer;
    try {
      jpeg = await sharp(this.samplePath(pid, sid)).rotate().resize(128, 128, { fit: 'inside', withoutEnlargement: true }).flatten({ background: '#ffffff' }).jpeg({ quality: 75 }).toBuffer();
    } catch (e) {
      throw new HttpError('BAD_REQUEST', `sample ${sid} cannot be decoded for a thumbnail: ${(e as Error).message.split('\n')[0]}`, { sid });
    }
    await mkdir(join(this.dir(pid), 'thumbs'), { recursive: true });
    await writeFileAtomic(file, jpeg);
    return jpeg;
  }

  deleteSample(pid: string, sid: string): Promise<void> {
    return this.locked(pid, async () => {
      const p = this.record(pid);
      const s = this.sampleRecord(pid, sid);
      const samples = p.samples.filter((x) => x.id !== sid);
      await this.save({ ...p, samples });
      p.samples = samples;
      await this.removeFiles(pid, [s]);
    });
  }

  /** Runs `fn` on the project while no change can happen to it (a training job copies its samples so). */
  withProject<T>(pid: string, fn: (p: Readonly<ProjectRecord>) => Promise<T>): Promise<T> {
    return this.locked(pid, async () => fn(this.record(pid)));
  }
}

export function sampleView(s: SampleRecord): Sample {
  return { id: s.id, classId: s.classId, name: s.name, bytes: s.bytes, ...(s.text !== undefined ? { text: s.text } : {}) };
}
