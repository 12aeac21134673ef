/**
 * What a training run reports as it goes, as `graft train --events FILE` writes it (one JSON object a line):
 * the CLI's progress writes these events and `graft serve` reads them back to relay to its clients.
 */

/** One finished epoch: `epoch` counts from 1 within its phase (`head`, `fine-tune` or `train`). */
export interface EpochEvent {
  phase: string;
  epoch: number;
  epochs: number;
  trainLoss: number;
  valLoss: number;
  valAccuracy: number;
  valMacroF1: number;
}

export type ProgressEvent =
  | { type: 'phase'; phase: string; total: number }
  /** Progress within a phase (features, augmented views, epochs): at most a few a second, and the last. */
  | { type: 'progress'; phase: string; done: number; total: number }
  | ({ type: 'epoch' } & EpochEvent)
  | { type: 'log'; message: string };
