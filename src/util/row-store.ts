/**
 * Rows of float32 values (one sample's activations each, of any length), kept in memory up to a byte budget
 * and past it in one spill file, read back a row at a time. Fine-tuning from an early layer holds megabytes
 * per sample (flowers5 at MobileNetV2's first blocks: ~8 GB in all); with a store the process holds at most
 * the budget plus the rows of the batch being fed.
 *
 * The spill file is created exclusively under a unique name and unlinked at once where the system allows
 * (POSIX), so a killed process leaves nothing behind; elsewhere it is removed by close().
 */
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { threadId } from 'node:worker_threads';
import { GraftError } from '../errors.js';

export interface RowStoreOptions {
  /** Bytes of rows kept in memory; rows put past it go to the spill file. */
  memoryBytes: number;
  /** Folder of the spill file (made on the first spilled row; it must exist). */
  spillDir: string;
}

/** The default budget when neither `LearnerOptions.memoryBudget` nor `$GRAFT_MEMORY_BUDGET` sets one. */
export const DEFAULT_ROW_MEMORY = 1 << 30;

export class RowStore {
  private readonly memory = new Map<number, Float32Array>();
  private readonly disk = new Map<number, { at: number; length: number }>();
  private memoryUsed = 0;
  private spill: { fd: number; path: string; unlinked: boolean; end: number } | undefined;
  private closed = false;

  constructor(readonly options: RowStoreOptions) {}

  /** Stores a copy of `values` as row `row` (replacing any earlier one). */
  put(row: number, values: Float32Array): void {
    if (this.closed) throw new GraftError('TRAIN', 'the row store is closed');
    this.forget(row);
    if (this.memoryUsed + values.byteLength <= this.options.memoryBytes) {
      this.memory.set(row, values.slice());
      this.memoryUsed += values.byteLength;
      return;
    }
    const spill = this.openSpill();
    const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
    let done = 0;
    try {
      while (done < bytes.byteLength) done += writeSync(spill.fd, bytes, done, bytes.byteLength - done, spill.end + done);
    } catch (e) {
      throw new GraftError('IO', `${spill.path}: cannot write activations to disk (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, { file: spill.path });
    }
    this.disk.set(row, { at: spill.end, length: values.length });
    spill.end += bytes.byteLength;
  }

  has(row: number): boolean {
    return this.memory.has(row) || this.disk.has(row);
  }

  /** Row `row`'s number of values (0 when it was never put). */
  length(row: number): number {
    return this.memory.get(row)?.length ?? this.disk.get(row)?.length ?? 0;
  }

  /** Copies row `row` into `target` at `offset`; returns its length. */
  read(row: number, target: Float32Array, offset = 0): number {
    const inMemory = this.memory.get(row);
    if (inMemory) {
      target.set(inMemory, offset);
      return inMemory.length;
    }
    const loc = this.disk.get(row);
    if (!loc) throw new GraftError('TRAIN', `row ${row} was never stored`);
    if (offset + loc.length > target.length) throw new RangeError(`row ${row} (${loc.length} values) does not fit at ${offset} of ${target.length}`);
    const bytes = new Uint8Array(target.buffer, target.byteOffset + offset * 4, loc.length * 4);
    let done = 0;
    while (done < bytes.byteLength) {
      const got = readSync(this.spill!.fd, bytes, done, bytes.byteLength - done, loc.at + done);
      if (got === 0) throw new GraftError('IO', `${this.spill!.path}: the spill file ended early`, { file: this.spill!.path });
      done += got;
    }
    return loc.length;
  }

  /** Row `row` as an array of its own (a copy when it lies on disk; do not modify one from memory). */
  get(row: number): Float32Array {
    const inMemory = this.memory.get(row);
    if (inMemory) return inMemory;
    const out = new Float32Array(this.length(row));
    this.read(row, out);
    return out;
  }

  get bytesInMemory(): number {
    return this.memoryUsed;
  }

  get bytesOnDisk(): number {
    return this.spill?.end ?? 0;
  }

  /** Frees the memory and removes the spill file; reads fail afterwards. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.memory.clear();
    this.disk.clear();
    this.memoryUsed = 0;
    if (!this.spill) return;
    try {
      closeSync(this.spill.fd);
    } catch {
      // already closed
    }
    if (!this.spill.unlinked) {
      try {
        unlinkSync(this.spill.path);
      } catch {
        // gone already
      }
    }
  }

  private forget(row: number): void {
    const old = this.memory.get(row);
    if (old) {
      this.memoryUsed -= old.byteLength;
      this.memory.delete(row);
    }
    this.disk.delete(row); // its bytes stay in the file until close()
  }

  private openSpill(): NonNullable<RowStore['spill']> {
    if (this.spill) return this.spill;
    const path = join(this.options.spillDir, `graft-rows-${process.pid}-${threadId}-${randomBytes(6).toString('hex')}.tmp`);
    let fd: number;
    try {
      fd = openSync(path, 'wx+', 0o600);
    } catch (e) {
      throw new GraftError('IO', `${path}: cannot create a file for activations that do not fit in memory (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, { file: path });
    }
    let unlinked = false;
    try {
      unlinkSync(path);
      unlinked = true;
    } catch {
      // Windows: an open file cannot be unlinked; close() removes it.
    }
    this.spill = { fd, path, unlinked, end: 0 };
    return this.spill;
  }
}
