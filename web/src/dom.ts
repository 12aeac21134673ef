/**
 * Safe DOM helpers. Every piece of data (labels, file names, texts, messages) reaches the page as text:
 * these helpers only use createElement, textContent and setAttribute on a fixed set of attribute names,
 * never innerHTML, so a class called `<img src=x onerror=alert(1)>` is shown as exactly those characters.
 */

type Child = Node | string | number | null | undefined | false;
export type Attrs = Record<string, string | number | boolean | null | undefined>;

/** Attribute names that can never carry script. Event handlers (`on*`), `style` and `srcdoc` are refused. */
function checkAttr(name: string): void {
  const n = name.toLowerCase();
  if (n.startsWith('on') || n === 'style' || n === 'srcdoc' || n === 'formaction') throw new Error(`attribute not allowed: ${name}`);
}

function setAttrs(el: Element, attrs: Attrs | undefined): void {
  if (!attrs) return;
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    checkAttr(k);
    if ((k === 'href' || k === 'src') && typeof v === 'string' && !safeUrl(v)) throw new Error(`unsafe URL in ${k}`);
    el.setAttribute(k, v === true ? '' : String(v));
  }
}

/** Same-origin paths, blob: and data:image URLs only. */
export function safeUrl(url: string): boolean {
  return url.startsWith('/') && !url.startsWith('//') || url.startsWith('blob:') || url.startsWith('#') || url.startsWith('data:image/');
}

function append(el: Node, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
}

/** An HTML element; strings among the children become text nodes. */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs?: Attrs, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** An SVG element. */
export function s<K extends keyof SVGElementTagNameMap>(tag: K, attrs?: Attrs, ...children: Child[]): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** Replaces an element's children. */
export function replace(el: Element, ...children: Child[]): void {
  while (el.firstChild) el.removeChild(el.firstChild);
  append(el, children);
}

/** Sets an element's text (never markup). */
export function text(el: Element, value: string | number): void {
  el.textContent = String(value);
}

export function byTestId<T extends HTMLElement = HTMLElement>(root: ParentNode, id: string): T | null {
  return root.querySelector<T>(`[data-testid="${id}"]`);
}

export function formatBytes(n: number): string {
  if (!Number.isFinite(n)) return '?';
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function percent(x: number, digits = 1): string {
  return `${(x * 100).toFixed(digits)}%`;
}

/** A progress bar: a <progress> element (indeterminate while `value` is null) with a text label beside it. */
export function progressBar(testid: string): { el: HTMLElement; set(value: number | null, label: string): void } {
  const bar = h('progress', { max: 1, 'data-testid': testid });
  const label = h('span', { class: 'progress-label', 'data-testid': `${testid}-label` });
  const el = h('div', { class: 'progress' }, bar, label);
  return {
    el,
    set(value, l) {
      if (value === null) bar.removeAttribute('value');
      else bar.value = Math.max(0, Math.min(1, value));
      label.textContent = l;
    },
  };
}

/** A button that asks for a second click within a few seconds before it acts (no window.confirm). */
export function confirmButton(label: string, confirmLabel: string, attrs: Attrs, action: () => void | Promise<void>): HTMLButtonElement {
  const b = h('button', { type: 'button', ...attrs }, label);
  let armed: number | undefined;
  b.addEventListener('click', () => {
    if (armed === undefined) {
      b.textContent = confirmLabel;
      b.classList.add('armed');
      armed = window.setTimeout(() => {
        armed = undefined;
        b.textContent = label;
        b.classList.remove('armed');
      }, 4000);
      return;
    }
    window.clearTimeout(armed);
    armed = undefined;
    b.textContent = label;
    b.classList.remove('armed');
    void action();
  });
  return b;
}
