/** Every failure graft reports on purpose is a GraftError with a stable code and the context it concerns. */
export type GraftErrorCode =
  | 'USAGE' // bad arguments or options
  | 'DATASET' // dataset folder missing, malformed or too small
  | 'IMAGE' // one image could not be used (normally skipped and reported, not thrown)
  | 'AUDIO' // one audio file could not be used (normally skipped and reported, not thrown)
  | 'MODEL' // an ONNX model could not be read, cut or run
  | 'CONFIG' // a PretrainedConfig that does not fit its model
  | 'ARTIFACT' // an exported model directory that is missing or inconsistent
  | 'TRAIN' // training could not proceed
  | 'HUB' // a hub file could not be found, fetched or verified (or offline mode forbids fetching it)
  | 'IO'; // a working file could not be written or read back (disk full, permissions)

export class GraftError extends Error {
  readonly code: GraftErrorCode;
  /** What the error is about: a file, a tensor name, a received value. */
  readonly context: Readonly<Record<string, unknown>>;

  constructor(code: GraftErrorCode, message: string, context: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'GraftError';
    this.code = code;
    this.context = context;
  }
}

/** A config field (of a PretrainedConfig, TextConfig, AudioConfig read from JSON) that is not what it must be. */
export function invalidConfig(source: string, field: string, expected: string, actual: unknown): GraftError {
  return new GraftError('CONFIG', invalidParameter(`${source}.${field}`, expected, JSON.stringify(actual)).message, { source, field, actual });
}

/** "Expected <what> for <name> but received <value>": one wording for every invalid parameter. */
export function invalidParameter(name: string, expected: string, actual: unknown): GraftError {
  const shown = typeof actual === 'string' ? JSON.stringify(actual) : String(actual);
  return new GraftError('USAGE', `Expected ${expected} for ${name} but received ${shown}`, { name, actual });
}
