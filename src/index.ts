/** graft's public library API. */
export { learner, Learner, DEFAULT_FINE_TUNE, type LearnerOptions, type LearnerData, type FineTuneOptions, type FineTuneResult } from './learner.js';
export type { FreezeSpec, BatchNormPolicy } from './train/finetune.js';
export { SGD, Adam, AdamW, clipGradNorm, type Optimizer, type ParamGroup } from './train/optimizer.js';
export { GraftModel, type Prediction, type ProbabilityResult } from './artifact/model.js';
export { readArtifact, type Manifest } from './artifact/artifact.js';
export { loadBackbone, type Backbone, type LoadBackboneOptions } from './backbone/backbone.js';
export { FeatureExtractor, type ExtractOptions, type ExtractResult, type ExtractProgress } from './backbone/extractor.js';
export { scanImageFolder, scanLabelledFolder, type ImageFolderDataset, type Sample, type Skipped } from './data/dataset.js';
export { resolveConfig, IMAGENET_DEFAULTS, type PretrainedConfig } from './preprocess/config.js';
export { computeMetrics, type Metrics, type ClassMetrics } from './evaluate/metrics.js';
export { formatMetrics } from './evaluate/report.js';
export { CancelFit, EarlyStopping, EVENTS, DEFAULT_FIT, type Callback, type FitOptions, type OptimizerKind, type ScheduleKind, type TrainEvent, type TrainResult, type EpochRecord } from './train/trainer.js';
export type { HeadKind, HeadSpec } from './head/head.js';
export { GraftError, type GraftErrorCode } from './errors.js';
export { VERSION } from './version.js';
