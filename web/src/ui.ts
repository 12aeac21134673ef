/** Page-wide bits: toasts for errors and notices, and a helper that runs an action and reports its failure. */
import { h } from './dom.js';
import { ApiError } from './api.js';

export function toast(message: string, kind: 'error' | 'info' = 'info'): void {
  const box = document.getElementById('toasts');
  if (!box) return;
  const t = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status', 'data-testid': kind === 'error' ? 'toast-error' : 'toast-info' }, message);
  const close = h('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss' }, '×');
  close.addEventListener('click', () => t.remove());
  t.appendChild(close);
  box.appendChild(t);
  while (box.children.length > 5) box.firstElementChild?.remove();
  window.setTimeout(() => t.remove(), kind === 'error' ? 12000 : 4000);
}

export function errorMessage(err: unknown): string {
  if (err instanceof ApiError) return `${err.message} (${err.code})`;
  if (err instanceof Error) return err.message;
  return String(err);
}

/** Runs an async action; a failure becomes an error toast (never an unhandled rejection). */
export async function attempt<T>(what: string, fn: () => Promise<T>): Promise<T | undefined> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof DOMException && err.name === 'AbortError') return undefined;
    toast(`${what}: ${errorMessage(err)}`, 'error');
    return undefined;
  }
}

/** A labelled form field. */
export function field(label: string, control: HTMLElement, hint?: string): HTMLLabelElement {
  return h('label', { class: 'field' }, h('span', { class: 'field-label' }, label), control, hint ? h('small', { class: 'hint' }, hint) : null);
}

/** Saves a Blob as a file through a temporary object URL. */
export function saveBlob(blob: Blob, filename: string): void {
  const url = URL.createObjectURL(blob);
  const a = h('a', { href: url, download: filename, class: 'hidden' });
  document.body.appendChild(a);
  a.click();
  a.remove();
  window.setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** The file name of a Content-Disposition header, else the fallback. */
export function dispositionName(header: string | null, fallback: string): string {
  if (!header) return fallback;
  const star = /filename\*=UTF-8''([^;]+)/i.exec(header);
  if (star?.[1]) {
    try {
      return decodeURIComponent(star[1]);
    } catch {
      // fall through
    }
  }
  const plain = /filename="?([^";]+)"?/i.exec(header);
  return plain?.[1]?.replace(/[\\/]/g, '_') ?? fallback;
}
