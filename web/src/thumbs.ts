/**
 * Lazy thumbnails: an image's bytes are fetched (with the token) only when its tile scrolls into view, a few at
 * a time, and their object URLs are revoked when the grid that showed them is cleared — so a class of thousands
 * of samples costs only the tiles on screen.
 */
import { fetchBlob } from './api.js';

const MAX_IN_FLIGHT = 4;

export class ThumbLoader {
  private readonly urls = new Set<string>();
  private readonly queue: Array<{ img: HTMLImageElement; path: string }> = [];
  private inFlight = 0;
  private readonly observer: IntersectionObserver;
  private readonly pending = new WeakMap<Element, string>();
  private controller = new AbortController();

  constructor() {
    this.observer = new IntersectionObserver((entries) => {
      for (const e of entries) {
        if (!e.isIntersecting) continue;
        const img = e.target as HTMLImageElement;
        const path = this.pending.get(img);
        this.observer.unobserve(img);
        if (path === undefined) continue;
        this.pending.delete(img);
        this.queue.push({ img, path });
      }
      this.pump();
    }, { rootMargin: '200px' });
  }

  /** Loads `path` into `img` when it becomes visible. */
  watch(img: HTMLImageElement, path: string): void {
    img.loading = 'lazy';
    img.decoding = 'async';
    this.pending.set(img, path);
    this.observer.observe(img);
  }

  private pump(): void {
    while (this.inFlight < MAX_IN_FLIGHT && this.queue.length) {
      const { img, path } = this.queue.shift()!;
      if (!img.isConnected) continue;
      this.inFlight++;
      const signal = this.controller.signal;
      fetchBlob(path, signal)
        .then(({ blob }) => {
          if (signal.aborted || !img.isConnected) return;
          const url = URL.createObjectURL(blob);
          this.urls.add(url);
          img.src = url;
        })
        .catch(() => {
          if (!signal.aborted) img.classList.add('broken');
        })
        .finally(() => {
          this.inFlight--;
          this.pump();
        });
    }
  }

  /** Forgets every tile: stops pending loads and frees the object URLs. */
  clear(): void {
    this.controller.abort();
    this.controller = new AbortController();
    this.observer.disconnect();
    this.queue.length = 0;
    for (const u of this.urls) URL.revokeObjectURL(u);
    this.urls.clear();
  }

  /** Frees one tile's URL (a deleted sample). */
  release(img: HTMLImageElement): void {
    if (img.src.startsWith('blob:') && this.urls.delete(img.src)) URL.revokeObjectURL(img.src);
    this.observer.unobserve(img);
  }
}
