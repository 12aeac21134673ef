/** Webcam frames as JPEG files and microphone clips as 16-bit PCM WAV files (formats graft reads). */

export async function openCamera(video: HTMLVideoElement): Promise<MediaStream> {
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
  video.srcObject = stream;
  video.muted = true;
  video.playsInline = true;
  await video.play();
  return stream;
}

export function stopStream(stream: MediaStream | null | undefined): void {
  stream?.getTracks().forEach((t) => t.stop());
}

/** The current video frame, center-cropped to a square of `size` pixels, as a JPEG File. */
export async function captureFrame(video: HTMLVideoElement, name: string, size = 256): Promise<File | null> {
  const w = video.videoWidth;
  const hgt = video.videoHeight;
  if (!w || !hgt) return null;
  const side = Math.min(w, hgt);
  const canvas = document.createElement('canvas');
  canvas.width = size;
  canvas.height = size;
  const ctx = canvas.getContext('2d');
  if (!ctx) return null;
  ctx.drawImage(video, (w - side) / 2, (hgt - side) / 2, side, side, 0, 0, size, size);
  const blob = await new Promise<Blob | null>((resolve) => canvas.toBlob(resolve, 'image/jpeg', 0.9));
  return blob ? new File([blob], name, { type: 'image/jpeg' }) : null;
}

/** 16-bit PCM mono WAV bytes for float samples in [-1, 1]. */
export function encodeWav(samples: Float32Array, sampleRate: number): Blob {
  const buf = new ArrayBuffer(44 + samples.length * 2);
  const v = new DataView(buf);
  const str = (o: number, t: string) => {
    for (let i = 0; i < t.length; i++) v.setUint8(o + i, t.charCodeAt(i));
  };
  str(0, 'RIFF');
  v.setUint32(4, 36 + samples.length * 2, true);
  str(8, 'WAVE');
  str(12, 'fmt ');
  v.setUint32(16, 16, true);
  v.setUint16(20, 1, true);
  v.setUint16(22, 1, true);
  v.setUint32(24, sampleRate, true);
  v.setUint32(28, sampleRate * 2, true);
  v.setUint16(32, 2, true);
  v.setUint16(34, 16, true);
  str(36, 'data');
  v.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const x = Math.max(-1, Math.min(1, samples[i] ?? 0));
    v.setInt16(44 + i * 2, x < 0 ? x * 0x8000 : x * 0x7fff, true);
  }
  return new Blob([buf], { type: 'audio/wav' });
}

/**
 * Records `seconds` of microphone audio as a WAV File. (MediaRecorder would give WebM/Opus, which graft does
 * not decode, so the raw samples are taken from the audio graph and written as PCM.)
 */
export async function recordClip(seconds: number, name: string, onLevel?: (rms: number) => void): Promise<File> {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false }, video: false });
  const ctx = new AudioContext();
  try {
    const src = ctx.createMediaStreamSource(stream);
    const proc = ctx.createScriptProcessor(4096, 1, 1);
    const chunks: Float32Array[] = [];
    const total = Math.round(seconds * ctx.sampleRate);
    let have = 0;
    await new Promise<void>((resolve) => {
      proc.onaudioprocess = (e) => {
        if (have >= total) return;
        const data = e.inputBuffer.getChannelData(0);
        const take = data.slice(0, Math.min(data.length, total - have));
        chunks.push(take);
        have += take.length;
        if (onLevel) {
          let sum = 0;
          for (const x of take) sum += x * x;
          onLevel(Math.sqrt(sum / Math.max(1, take.length)));
        }
        if (have >= total) resolve();
      };
      src.connect(proc);
      proc.connect(ctx.destination);
    });
    src.disconnect();
    proc.disconnect();
    const out = new Float32Array(have);
    let o = 0;
    for (const c of chunks) {
      out.set(c, o);
      o += c.length;
    }
    return new File([encodeWav(out, ctx.sampleRate)], name, { type: 'audio/wav' });
  } finally {
    stopStream(stream);
    await ctx.close();
  }
}

export function stamp(): string {
  const d = new Date();
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}-${p(d.getMilliseconds(), 3)}`;
}
