/** graft's public library API. */
export { learner, Learner, type LearnerOptions, type LearnerData } from './learner.js';
export { GraftModel, type Prediction, type ProbabilityResult } from './artifact/model.js';
export { readArtifact, type Manifest } from './artifact/artifact.js';
export { loadBackbone, type Backbone, type LoadBackboneOptions } from './backbone/backbone.js';
export { FeatureExtractor, type ExtractOptions, type ExtractResult, type ExtractProgress } from './backbone/extractor.js';
export { scanImageFolder, scanLabelledFolder, type ImageFolderDataset, type Sample, type Skipped } from './data/dataset.js';
export { resolveConfig, IMAGENET_DEFAULTS, type PretrainedConfig } from './preprocess/config.js';
export { computeMetrics, type Metrics, type ClassMetrics } from './evaluate/metrics.js';
export { formatMetrics } from './evaluate/report.js';
export { CancelFit, EarlyStopping, EVENTS, type Callback, type FitOptions, type TrainEvent, type TrainResult, type EpochRecord } from './train/trainer.js';
export type { HeadKind, HeadSpec } from './head/head.js';
export { GraftError, type GraftErrorCode } from './errors.js';
export { VERSION } from './version.js';
