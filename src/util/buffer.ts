/**
 * `view` if it spans its whole buffer, else a copy that does: posting a view to a worker copies (or transferring
 * it moves) its entire underlying buffer, not just the view's bytes.
 */
export function wholeBuffer<T extends Uint8Array | Float32Array>(view: T): T {
  return view.byteLength === view.buffer.byteLength ? view : (view.slice() as T);
}

/** `parts` one after the other, in one new array made by `Type`. */
export function concatArrays<T extends Uint8Array | Float32Array>(parts: readonly T[], Type: new (length: number) => T): T {
  const out = new Type(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
