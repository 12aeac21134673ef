/**
 * Checkpoints: a training killed at any moment (kill -9, a power cut) continues from its last completed epoch
 * when the same run starts again, and ends exactly as an uninterrupted run would, bit for bit.
 *
 * A run is a sequence of trainings (phases: the head, fine-tuning, each stage of gradual unfreezing), each with
 * an id (`1-head`, `2-fine-tune`, …). After every epoch of a phase, `<dir>/<id>.ckpt` is replaced atomically and
 * durably (temp file, fsync, rename) by everything the loop needs to go on: the weights and running statistics,
 * the optimizer's moments and step counts, the scheduler's step, the shuffling/dropout generator's state, the
 * epoch order being shuffled, early stopping's best score, epoch and weights, and the history. When the phase
 * ends, its file holds just its outcome (the kept weights, history, best epoch), so a later run skips it.
 * `<dir>/index.json` says, for people and tests, how far each phase got.
 *
 * A checkpoint is resumed only by the same training: its run key hashes the data (rows, labels, the backbone's
 * identity), the training graph, the options, the starting weights (so a phase is tied to the outcome of the
 * phases before it) and the train/validation rows. A checkpoint with another key, or a damaged one (each file
 * ends with the sha256 of the rest), is reported in one line and ignored: the phase starts over and overwrites it.
 *
 * File layout: "GRAFTCK1", a u32 LE header length, the header (JSON, non-finite numbers as {"$float": "…"}),
 * zero padding to a multiple of 4, the tensors the header lists (float32 or int32, little endian), the sha256.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileProblem, oneLine, writeFileAtomic, writeFileDurable } from '../util/fs.js';
import type { Param } from '../head/head.js';
import type { Random } from '../util/random.js';
import type { Optimizer, OptimizerState, TypedOptimizerState } from './optimizer.js';
import type { EarlyStopping, EpochRecord, FitOptions, Trainable, TrainState } from './trainer.js';

/** The folder under a run's output (`graft train --out`) that holds its checkpoints. */
export const CHECKPOINT_DIR = '.graft-checkpoint';
const MAGIC = 'GRAFTCK1';
const FORMAT = 1;
const EXT = '.ckpt';
const INDEX = 'index.json';

/** Everything a training needs to continue after its last completed epoch, or (done) its outcome. */
export interface TrainingSnapshot {
  /** Epochs completed (the history's length). */
  epochs: number;
  /** Epochs the options ask for. */
  planned: number;
  /** The training ended: `weights` are the ones it kept, and the rest of its state is not needed. */
  done: boolean;
  step: number;
  stepsPerEpoch: number;
  /** The generator's state (Random.getState()). */
  rng: number;
  history: EpochRecord[];
  bestEpoch: number;
  stoppedEarly: boolean;
  /** Early stopping's best score so far. */
  best: [number, number];
  /** Weights and running statistics, by name. */
  weights: Map<string, Float32Array>;
  /** Early stopping's copy of the best epoch's weights and statistics (params, then state), while training. */
  snapshot: Float32Array[];
  /** The training rows in their current shuffled order (each epoch shuffles the previous one's), while training. */
  order?: Int32Array;
  optimizer?: TypedOptimizerState;
}

/** How a training checkpoints (train()'s `checkpoint` argument). */
export interface Checkpointing {
  store: CheckpointStore;
  /** The training's id within the run, its file name: `1-head`, `2-fine-tune`. */
  phase: string;
  /** How messages name it: `head training`. */
  label: string;
  /** Identity of the rows' source (the dataset's features, labels and the backbone), part of the run key. */
  dataKey: string;
}

/** What identifies a training: each part is hashed, the run key hashes them all; a part that differs is named when a checkpoint is ignored. */
export type RunParts = Record<string, ReadonlyArray<string | ArrayBufferView>>;

/** The parts of a training's run key. */
export function trainingParts(dataKey: string, graph: Uint8Array, trainable: Pick<Trainable, 'groups' | 'state' | 'batchSize' | 'mask'>, options: FitOptions, trainRows: readonly number[], valRows: readonly number[]): RunParts {
  const groups = trainable.groups.map((g) => ({ name: g.name, lr: g.lr, weightDecay: g.weightDecay, momentum: g.momentum, frozen: g.frozen, params: g.params.map((p) => [p.name, p.dims, p.decay]) }));
  return {
    data: [dataKey, Int32Array.from(trainRows), Int32Array.from(valRows)],
    graph: [graph],
    options: [stableJson(options), stableJson({ groups, batchSize: trainable.batchSize ?? null, mask: trainable.mask ?? null })],
    'starting weights': [...trainable.groups.flatMap((g) => g.params.map((p) => p.data)), ...(trainable.state ?? []).map((t) => t.data)],
  };
}

/** What the training loop keeps between epochs, for capture and restore. */
export interface LoopState {
  params: readonly Param[];
  stateParams: readonly Param[];
  order: number[];
  opt: Optimizer;
  rng: Random;
  stopper: EarlyStopping;
  state: TrainState;
}

/** The loop's state after a completed epoch (or, done, its outcome). */
export function captureTraining(loop: LoopState, result?: { bestEpoch: number; stoppedEarly: boolean }): TrainingSnapshot {
  const { params, stateParams, state, stopper } = loop;
  const weights = new Map([...params, ...stateParams].map((p) => [p.name, p.data] as const));
  const kept = stopper.checkpoint();
  const base = {
    epochs: state.history.length,
    planned: state.options.epochs,
    step: state.step,
    stepsPerEpoch: state.stepsPerEpoch,
    rng: loop.rng.getState(),
    history: state.history,
    best: kept.best,
    weights,
  };
  if (result) return { ...base, done: true, bestEpoch: result.bestEpoch, stoppedEarly: result.stoppedEarly, snapshot: [] };
  return { ...base, done: false, bestEpoch: kept.bestEpoch, stoppedEarly: false, snapshot: kept.snapshot, order: Int32Array.from(loop.order), optimizer: loop.opt.typedState() };
}

/** Puts a snapshot's weights and running statistics into the training's own arrays. */
export function restoreWeights(saved: TrainingSnapshot, tensors: readonly Param[]): void {
  for (const p of tensors) {
    const data = saved.weights.get(p.name);
    if (!data || data.length !== p.data.length) throw new Error(`checkpoint has no ${p.data.length} values for "${p.name}"`);
    p.data.set(data);
  }
}

/** Restores a snapshot taken mid-training into the loop; returns the first epoch still to train. */
export function restoreTraining(saved: TrainingSnapshot, loop: LoopState): number {
  restoreWeights(saved, [...loop.params, ...loop.stateParams]);
  if (!saved.optimizer || !saved.order || saved.order.length !== loop.order.length) throw new Error('checkpoint lacks the optimizer state or the epoch order');
  // After the Scheduler was made (it reads the base rates from the groups, which the state overwrites).
  loop.opt.loadState(saved.optimizer);
  loop.rng.setState(saved.rng);
  loop.order.splice(0, loop.order.length, ...saved.order);
  loop.stopper.restore({ best: saved.best, bestEpoch: saved.bestEpoch, snapshot: saved.snapshot });
  loop.state.step = saved.step;
  loop.state.history.push(...saved.history);
  return saved.epochs;
}

/** One phase's checkpoint file, opened for a training: what it held for this run, and how to replace it. */
export interface PhaseCheckpoint {
  /** The state to continue from (undefined: start over). */
  readonly saved: TrainingSnapshot | undefined;
  save(snapshot: TrainingSnapshot): Promise<void>;
}

/** A checkpoint file's JSON header: the snapshot's scalar state, and what its tensors are. */
type Header = Pick<TrainingSnapshot, 'epochs' | 'planned' | 'done' | 'step' | 'stepsPerEpoch' | 'rng' | 'history' | 'bestEpoch' | 'stoppedEarly' | 'best'> & {
  format: number;
  phase: string;
  label: string;
  key: string;
  parts: Record<string, string>;
  /** How many early-stopping copies follow (tensors `s:<i>`). */
  snapshot: number;
  optimizer: { kind: string; groups: OptimizerState['groups']; params: Array<{ name: string; step: number; buffers: number }> } | null;
  tensors: Array<{ name: string; type: 'f32' | 'i32'; length: number }>;
};

/**
 * A checkpoint file as header + tensors (named: `w:<weight>`, `s:<i>` early stopping's copies, `m:<param>:<b>`
 * moments, `order`), in pieces that are written one after the other: the tensors' own memory, not a copy (fresh
 * memory is slow on small machines: copying 10 MB into a new buffer cost 40 ms here, as much as writing it).
 */
export function encodeCheckpoint(header: Omit<Header, 'tensors' | 'format'>, tensors: ReadonlyArray<readonly [string, Float32Array | Int32Array]>): Uint8Array[] {
  const full: Header = { format: FORMAT, ...header, tensors: tensors.map(([name, t]) => ({ name, type: t instanceof Int32Array ? 'i32' : 'f32', length: t.length })) };
  const json = Buffer.from(JSON.stringify(full, (_, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? { $float: String(v) } : v)));
  const head = Buffer.alloc(align4(MAGIC.length + 4 + json.length));
  head.write(MAGIC, 0, 'latin1');
  head.writeUInt32LE(json.length, MAGIC.length);
  json.copy(head, MAGIC.length + 4);
  const pieces: Uint8Array[] = [head, ...tensors.map(([, t]) => new Uint8Array(t.buffer, t.byteOffset, t.byteLength))];
  const sha = createHash('sha256');
  for (const p of pieces) sha.update(p);
  pieces.push(sha.digest());
  return pieces;
}

/** Reads a checkpoint file; throws an Error saying what is wrong with it (truncated, damaged, another format). */
export function decodeCheckpoint(bytes: Uint8Array): { header: Header; tensors: Map<string, Float32Array | Int32Array> } {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (b.length < MAGIC.length + 4 + 32 || b.toString('latin1', 0, MAGIC.length) !== MAGIC) throw new Error('not a graft checkpoint (or cut short)');
  const size = b.length - 32;
  if (!createHash('sha256').update(b.subarray(0, size)).digest().equals(b.subarray(size))) throw new Error('checksum mismatch: the file is truncated or damaged');
  const length = b.readUInt32LE(MAGIC.length);
  const header = JSON.parse(b.toString('utf8', MAGIC.length + 4, MAGIC.length + 4 + length), (_, v: unknown) =>
    v !== null && typeof v === 'object' && '$float' in v ? Number((v as { $float: string }).$float) : v,
  ) as Header;
  if (header.format !== FORMAT) throw new Error(`checkpoint format ${header.format}, this graft reads ${FORMAT}`);
  const tensors = new Map<string, Float32Array | Int32Array>();
  let at = align4(MAGIC.length + 4 + length);
  for (const t of header.tensors) {
    const end = at + t.length * 4;
    if (end > size) throw new Error('tensors run past the end of the file');
    const copy = b.buffer.slice(b.byteOffset + at, b.byteOffset + end);
    tensors.set(t.name, t.type === 'i32' ? new Int32Array(copy) : new Float32Array(copy));
    at = end;
  }
  return { header, tensors };
}

/**
 * The checkpoints of one run, in a folder. Messages (resuming, a checkpoint ignored and why) go to `notice`.
 * Writing failures (a full disk) are reported once and end checkpointing, not the training.
 */
export class CheckpointStore {
  private index: Record<string, unknown> | undefined;
  private broken = false;

  constructor(
    readonly dir: string,
    private readonly notice: (message: string) => void = () => {},
  ) {}

  /** Whether `dir` holds any checkpoint file. */
  static async exists(dir: string): Promise<boolean> {
    const names = await readdir(dir).catch(() => [] as string[]);
    return names.some((n) => n.endsWith(EXT));
  }

  /** Removes the folder and everything in it (after the run's outputs are written). */
  static async remove(dir: string): Promise<void> {
    await rm(dir, { recursive: true, force: true });
  }

  /** Opens a training's checkpoint: its saved state when the file was written by this same training (run key), else nothing (and one line why). */
  async open(c: Pick<Checkpointing, 'phase' | 'label'>, parts: RunParts): Promise<PhaseCheckpoint> {
    const hashes = Object.fromEntries(Object.entries(parts).map(([name, items]) => [name, hashOf(items)]));
    const key = hashOf([stableJson(hashes)]);
    const file = join(this.dir, `${c.phase}${EXT}`);
    const saved = await this.read(file, c.label, key, hashes);
    return { saved, save: (s) => this.write(file, { phase: c.phase, label: c.label, key, parts: hashes }, s) };
  }

  private async read(file: string, label: string, key: string, parts: Record<string, string>): Promise<TrainingSnapshot | undefined> {
    let bytes: Uint8Array;
    try {
      bytes = await readFile(file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') this.notice(`checkpoint ${file} ${fileProblem(e)}; ${label} starts over`);
      return undefined;
    }
    let decoded: ReturnType<typeof decodeCheckpoint>;
    try {
      decoded = decodeCheckpoint(bytes);
    } catch (e) {
      this.notice(`checkpoint ${file} is unusable (${oneLine((e as Error).message)}); ${label} starts over and it will be overwritten`);
      return undefined;
    }
    const { header: h, tensors } = decoded;
    if (h.key !== key) {
      const differ = Object.keys(parts).filter((p) => h.parts?.[p] !== parts[p]);
      this.notice(`checkpoint ${file} ignored: it was written by a different run (${differ.length ? `its ${differ.join(', ')} differ` : 'another key'}); ${label} starts over and it will be overwritten`);
      return undefined;
    }
    const f32 = (name: string) => {
      const t = tensors.get(name);
      if (!(t instanceof Float32Array)) throw new Error(`checkpoint ${file} lacks ${name}`);
      return t;
    };
    const weights = new Map<string, Float32Array>();
    for (const [name, t] of tensors) if (name.startsWith('w:') && t instanceof Float32Array) weights.set(name.slice(2), t);
    const order = tensors.get('order');
    const snapshot: TrainingSnapshot = {
      epochs: h.epochs,
      planned: h.planned,
      done: h.done,
      step: h.step,
      stepsPerEpoch: h.stepsPerEpoch,
      rng: h.rng,
      history: h.history,
      bestEpoch: h.bestEpoch,
      stoppedEarly: h.stoppedEarly,
      best: h.best,
      weights,
      snapshot: Array.from({ length: h.snapshot }, (_, i) => f32(`s:${i}`)),
      ...(order instanceof Int32Array ? { order } : {}),
      ...(h.optimizer
        ? {
            optimizer: {
              kind: h.optimizer.kind,
              groups: h.optimizer.groups,
              params: h.optimizer.params.map((p) => ({ name: p.name, step: p.step, buffers: p.buffers < 0 ? null : Array.from({ length: p.buffers }, (_, b) => f32(`m:${p.name}:${b}`)) })),
            },
          }
        : {}),
    };
    this.notice(
      h.done
        ? `${label} finished before the restart: restored from the checkpoint (${h.epochs} epoch${h.epochs === 1 ? '' : 's'})`
        : `resuming ${label} after epoch ${h.epochs} of ${h.planned} (checkpoint in ${this.dir})`,
    );
    return snapshot;
  }

  private async write(file: string, id: Pick<Header, 'phase' | 'label' | 'key' | 'parts'>, s: TrainingSnapshot): Promise<void> {
    if (this.broken) return;
    const tensors: Array<readonly [string, Float32Array | Int32Array]> = [...s.weights].map(([name, data]) => [`w:${name}`, data] as const);
    s.snapshot.forEach((t, i) => tensors.push([`s:${i}`, t]));
    if (s.order) tensors.push(['order', s.order]);
    const optimizer = s.optimizer
      ? {
          kind: s.optimizer.kind,
          groups: s.optimizer.groups,
          params: s.optimizer.params.map((p) => {
            p.buffers?.forEach((b, i) => tensors.push([`m:${p.name}:${i}`, b]));
            return { name: p.name, step: p.step, buffers: p.buffers ? p.buffers.length : -1 };
          }),
        }
      : null;
    const header = { ...id, epochs: s.epochs, planned: s.planned, done: s.done, step: s.step, stepsPerEpoch: s.stepsPerEpoch, rng: s.rng, history: s.history, bestEpoch: s.bestEpoch, stoppedEarly: s.stoppedEarly, best: s.best, snapshot: s.snapshot.length, optimizer };
    try {
      await mkdir(this.dir, { recursive: true });
      await writeFileDurable(file, encodeCheckpoint(header, tensors));
      this.index ??= await readFile(join(this.dir, INDEX), 'utf8').then((t) => JSON.parse(t) as Record<string, unknown>, () => ({}));
      this.index[id.phase] = { label: id.label, epochs: s.epochs, planned: s.planned, done: s.done, key: id.key };
      await writeFileAtomic(join(this.dir, INDEX), JSON.stringify(this.index, null, 2) + '\n');
    } catch (e) {
      this.broken = true;
      this.notice(`cannot write checkpoint ${file} (${fileProblem(e)}); training goes on without checkpoints`);
      return;
    }
    killPoint(`${id.phase}:${s.done ? 'done' : s.epochs}`);
  }
}

/**
 * Tests of resuming kill the process (SIGKILL, as `kill -9` does) at a named point when `GRAFT_TEST_KILL` names
 * it: `<phase>:<epoch>` right after that epoch's checkpoint is written, `<phase>:done` after a training's
 * outcome is, `export` between writing model.onnx and graft.json.
 */
export function killPoint(point: string): void {
  if (process.env.GRAFT_TEST_KILL === point) process.kill(process.pid, 'SIGKILL');
}

const align4 = (n: number) => (n + 3) & ~3;

function hashOf(items: ReadonlyArray<string | ArrayBufferView>): string {
  const h = createHash('sha256');
  for (const item of items) {
    if (typeof item === 'string') h.update(`s${item.length}:`).update(item);
    else h.update(`b${item.byteLength}:`).update(new Uint8Array(item.buffer, item.byteOffset, item.byteLength));
  }
  return h.digest('hex');
}

/** JSON with object keys sorted, so that equal values give equal text. */
export function stableJson(value: unknown): string {
  return JSON.stringify(value, (_, v: unknown) =>
    v !== null && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : typeof v === 'number' && !Number.isFinite(v) ? String(v) : v,
  );
}
