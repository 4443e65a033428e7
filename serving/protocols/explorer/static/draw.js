// The drawing pad and the MNIST-style preprocessing of what is drawn (or dropped) on it:
// crop the ink, scale it so its longer side is 20 px (keeping the aspect ratio) by area
// averaging, place it in a 28 x 28 field with its centre of mass at the centre, as the
// MNIST images were made. Values are quantised to k/255, so the 28 x 28 preview shows
// exactly the tensor that is sent. For any other model (`colour` mode) the pad is the image:
// a dropped file is drawn as it is (transparency on white, as the server does), and the
// pad is scaled to the model's C x H x W as sent (`imageInput`).

import { PIXELS, SIDE } from "./digits.js";

const BOX = 20;
const INK_THRESHOLD = 0.05;

export class DrawPad {
  constructor(canvas, onChange) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { willReadFrequently: true });
    this.onChange = onChange;
    this.drawing = false;
    // false: MNIST-style white ink on black (inverting dark-on-light drops); true: as is.
    this.colour = false;
    this.clear();
    canvas.addEventListener("pointerdown", (e) => this.#down(e));
    canvas.addEventListener("pointermove", (e) => this.#move(e));
    for (const type of ["pointerup", "pointercancel"]) {
      canvas.addEventListener(type, (e) => this.#up(e));
    }
    canvas.addEventListener("dragover", (e) => e.preventDefault());
    canvas.addEventListener("drop", (e) => this.#drop(e));
  }

  clear() {
    this.ctx.fillStyle = "#000";
    this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
  }

  #point(e) {
    const rect = this.canvas.getBoundingClientRect();
    return [
      ((e.clientX - rect.left) * this.canvas.width) / rect.width,
      ((e.clientY - rect.top) * this.canvas.height) / rect.height,
    ];
  }

  #down(e) {
    this.drawing = true;
    this.canvas.setPointerCapture(e.pointerId);
    this.last = this.#point(e);
    this.#stroke(this.last, this.last);
  }

  #move(e) {
    if (!this.drawing) return;
    const p = this.#point(e);
    this.#stroke(this.last, p);
    this.last = p;
    this.onChange(false);
  }

  #up() {
    if (!this.drawing) return;
    this.drawing = false;
    this.onChange(true);
  }

  #stroke(a, b) {
    const ctx = this.ctx;
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = this.canvas.width / 14;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...a);
    ctx.lineTo(...b);
    ctx.stroke();
  }

  async #drop(e) {
    e.preventDefault();
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) await this.loadImage(file);
  }

  // Put an image file on the pad as white ink on black (dark-on-light images are inverted,
  // transparent ones use their alpha as ink), then report the change.
  async loadImage(blob) {
    const bitmap = await createImageBitmap(blob);
    const { width, height } = this.canvas;
    if (this.colour) {
      this.ctx.fillStyle = "#fff";
      this.ctx.fillRect(0, 0, width, height);
      this.ctx.drawImage(bitmap, 0, 0, width, height);
      this.onChange(true);
      return;
    }
    const tmp = document.createElement("canvas");
    tmp.width = width;
    tmp.height = height;
    const t = tmp.getContext("2d", { willReadFrequently: true });
    const s = Math.min(width / bitmap.width, height / bitmap.height);
    const w = bitmap.width * s, h = bitmap.height * s;
    t.drawImage(bitmap, (width - w) / 2, (height - h) / 2, w, h);
    const px = t.getImageData(0, 0, width, height);
    const n = width * height;
    let alpha = 0, lum = 0;
    const luminance = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const a = px.data[4 * i + 3] / 255;
      const l = (0.299 * px.data[4 * i] + 0.587 * px.data[4 * i + 1] + 0.114 * px.data[4 * i + 2]) / 255;
      luminance[i] = a * l + (1 - a); // composited over white
      alpha += a;
      lum += luminance[i];
    }
    const useAlpha = alpha / n < 0.5;
    const invert = lum / n > 0.5;
    for (let i = 0; i < n; i++) {
      const ink = useAlpha ? px.data[4 * i + 3] / 255 : invert ? 1 - luminance[i] : luminance[i];
      const g = Math.round(ink * 255);
      px.data[4 * i] = g;
      px.data[4 * i + 1] = g;
      px.data[4 * i + 2] = g;
      px.data[4 * i + 3] = 255;
    }
    this.ctx.putImageData(px, 0, 0);
    this.onChange(true);
  }

  // The pad scaled to H x W (the browser's smoothing), C channels (grey: the luminance), as
  // a Float32Array of C * H * W values k/255 in [0, 1].
  imageInput([c, h, w]) {
    const tmp = document.createElement("canvas");
    tmp.width = w;
    tmp.height = h;
    const t = tmp.getContext("2d", { willReadFrequently: true });
    t.imageSmoothingQuality = "high";
    t.drawImage(this.canvas, 0, 0, w, h);
    const px = t.getImageData(0, 0, w, h).data;
    const out = new Float32Array(c * h * w);
    for (let i = 0; i < h * w; i++) {
      const [r, g, b] = [px[4 * i], px[4 * i + 1], px[4 * i + 2]];
      if (c === 1) out[i] = Math.round(0.299 * r + 0.587 * g + 0.114 * b) / 255;
      else [r, g, b].forEach((v, k) => { out[k * h * w + i] = v / 255; });
    }
    return out;
  }

  // The pad as one MNIST-style 28 x 28 image (Float32Array of 784 in [0, 1]), or null if blank.
  mnistInput() {
    const { width, height } = this.canvas;
    const px = this.ctx.getImageData(0, 0, width, height).data;
    const ink = new Float32Array(width * height);
    let x0 = width, x1 = -1, y0 = height, y1 = -1;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const v = px[4 * (y * width + x)] / 255;
        ink[y * width + x] = v;
        if (v > INK_THRESHOLD) {
          x0 = Math.min(x0, x); x1 = Math.max(x1, x);
          y0 = Math.min(y0, y); y1 = Math.max(y1, y);
        }
      }
    }
    if (x1 < 0) return null;
    const bw = x1 - x0 + 1, bh = y1 - y0 + 1;
    const s = BOX / Math.max(bw, bh);
    const tw = Math.max(1, Math.round(bw * s)), th = Math.max(1, Math.round(bh * s));
    // Area average: each target pixel is the mean of the source pixels whose centres fall in it.
    const patch = new Float32Array(tw * th);
    const sums = new Float32Array(tw * th);
    const counts = new Uint32Array(tw * th);
    for (let y = y0; y <= y1; y++) {
      const ty = Math.min(th - 1, Math.floor(((y - y0 + 0.5) * th) / bh));
      for (let x = x0; x <= x1; x++) {
        const tx = Math.min(tw - 1, Math.floor(((x - x0 + 0.5) * tw) / bw));
        sums[ty * tw + tx] += ink[y * width + x];
        counts[ty * tw + tx] += 1;
      }
    }
    let mass = 0, mx = 0, my = 0;
    for (let i = 0; i < tw * th; i++) {
      patch[i] = counts[i] ? sums[i] / counts[i] : 0;
      mass += patch[i];
      mx += (i % tw) * patch[i];
      my += Math.floor(i / tw) * patch[i];
    }
    const centre = (SIDE - 1) / 2;
    const ox = clamp(Math.round(centre - mx / mass), 0, SIDE - tw);
    const oy = clamp(Math.round(centre - my / mass), 0, SIDE - th);
    const out = new Float32Array(PIXELS);
    for (let y = 0; y < th; y++) {
      for (let x = 0; x < tw; x++) {
        out[(y + oy) * SIDE + x + ox] = Math.round(Math.min(1, patch[y * tw + x]) * 255) / 255;
      }
    }
    return out;
  }
}

function clamp(x, lo, hi) {
  return Math.max(lo, Math.min(hi, x));
}
