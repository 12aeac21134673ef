/**
 * `view` if it spans its whole buffer, else a copy that does: posting a view to a worker copies (or transferring
 * it moves) its entire underlying buffer, not just the view's bytes.
 */
export function wholeBuffer<T extends Uint8Array | Float32Array>(view: T): T {
  return view.byteLength === view.buffer.byteLength ? view : (view.slice() as T);
}
