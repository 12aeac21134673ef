/**
 * Trained models on disk: `DIR/models/<mid>/artifact/` (what `graft train --out` wrote: model.onnx, graft.json,
 * side files, metrics.json, report.html) and `DIR/models/<mid>/model.json` (the API's record, written last:
 * a folder without it is an unfinished move and is removed at start).
 */
import { mkdir, readdir, readFile, rename, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { Manifest } from '../artifact/artifact.js';
import type { Metrics } from '../evaluate/metrics.js';
import { writeFileAtomic } from '../util/fs.js';
import { notFound } from './http.js';
import { newId } from './ids.js';
import type { Task } from './samples.js';

export interface Model {
  id: string;
  projectId: string;
  jobId: string;
  task: Task;
  labels: string[];
  createdAt: string;
  metrics: Metrics;
  backbone: string;
}

const RECORD = 'model.json';

export class ModelStore {
  private readonly models = new Map<string, Model>();

  private constructor(private readonly root: string) {}

  static async open(dataDir: string): Promise<ModelStore> {
    const store = new ModelStore(join(dataDir, 'models'));
    await mkdir(store.root, { recursive: true });
    for (const name of await readdir(store.root)) {
      const dir = join(store.root, name);
      const record = await readFile(join(dir, RECORD), 'utf8').catch(() => undefined);
      if (record === undefined) await rm(dir, { recursive: true, force: true });
      else {
        const m = JSON.parse(record) as Model;
        store.models.set(m.id, m);
      }
    }
    return store;
  }

  /** The folder holding the model's artifact (model.onnx, graft.json, …). */
  artifactDir(mid: string): string {
    return join(this.root, mid, 'artifact');
  }

  list(projectId?: string): Model[] {
    return [...this.models.values()].filter((m) => projectId === undefined || m.projectId === projectId).sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
  }

  get(mid: string): Model {
    const m = this.models.get(mid);
    if (!m) throw notFound('model', mid);
    return m;
  }

  /** Takes over a finished training run's output folder (moved, not copied) as a new model. */
  async add(from: string, owner: { projectId: string; jobId: string; task: Task }): Promise<Model> {
    const id = newId();
    const manifest = JSON.parse(await readFile(join(from, 'graft.json'), 'utf8')) as Manifest;
    const metricsDoc = JSON.parse(await readFile(join(from, 'metrics.json'), 'utf8')) as { metrics: Metrics };
    await mkdir(join(this.root, id), { recursive: true });
    await rename(from, this.artifactDir(id));
    const model: Model = {
      id,
      projectId: owner.projectId,
      jobId: owner.jobId,
      task: owner.task,
      labels: manifest.labels,
      createdAt: new Date().toISOString(),
      metrics: metricsDoc.metrics,
      backbone: manifest.backbone.name ?? basename(manifest.backbone.file),
    };
    await writeFileAtomic(join(this.root, id, RECORD), JSON.stringify(model, null, 2) + '\n');
    this.models.set(id, model);
    return model;
  }

  async delete(mid: string): Promise<void> {
    this.get(mid);
    this.models.delete(mid);
    // The record first: a crash halfway leaves a folder without it, removed at the next start.
    await rm(join(this.root, mid, RECORD), { force: true });
    await rm(join(this.root, mid), { recursive: true, force: true });
  }
}
