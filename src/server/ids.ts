import { randomBytes } from 'node:crypto';

const ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';

/** A server-made id: 12 characters of `[a-z0-9]`. */
export function newId(): string {
  // 252 = 7 × 36: bytes at or above it are dropped, so every character is equally likely.
  let id = '';
  while (id.length < 12) {
    for (const b of randomBytes(16)) {
      if (b < 252 && id.length < 12) id += ALPHABET[b % 36];
    }
  }
  return id;
}

export const isId = (s: string) => /^[a-z0-9]{12}$/.test(s);
