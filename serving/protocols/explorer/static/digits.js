// Painting 28 x 28 float images (values in [0, 1]) onto canvases: gray level
// round(255 * v) in all three channels, white ink on black as in MNIST, scaled up by an
// integer factor without smoothing, so every screen pixel of a cell holds the exact value.

export const SIDE = 28;
export const PIXELS = SIDE * SIDE;

export const DIGIT_COLOURS = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
];

const scratch = document.createElement("canvas");
scratch.width = SIDE;
scratch.height = SIDE;
const scratchCtx = scratch.getContext("2d");

export function gray(v) {
  return Math.max(0, Math.min(255, Math.round(v * 255)));
}

// Paint image `index` of a flat N x 784 array onto `canvas` (any size that is a multiple of 28).
export function paintDigit(canvas, data, index = 0) {
  const pixels = scratchCtx.createImageData(SIDE, SIDE);
  const offset = index * PIXELS;
  for (let i = 0; i < PIXELS; i++) {
    const g = gray(data[offset + i]);
    pixels.data[4 * i] = g;
    pixels.data[4 * i + 1] = g;
    pixels.data[4 * i + 2] = g;
    pixels.data[4 * i + 3] = 255;
  }
  scratchCtx.putImageData(pixels, 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(scratch, 0, 0, canvas.width, canvas.height);
}

// A row/grid of `count` digit canvases of `size` px inside `container` (reusing canvases).
export function digitCanvases(container, count, size) {
  const existing = [...container.querySelectorAll("canvas")];
  for (const c of existing.slice(count)) c.remove();
  const canvases = existing.slice(0, count);
  while (canvases.length < count) {
    const c = document.createElement("canvas");
    c.className = "digit";
    container.appendChild(c);
    canvases.push(c);
  }
  for (const c of canvases) {
    if (c.width !== size) {
      c.width = size;
      c.height = size;
    }
  }
  return canvases;
}

export function clearDigit(canvas) {
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
}
