// How the page talks to latentserve: the v2 (Open Inference Protocol) REST API on the same
// HTTP port (JSON tensors in, the binary tensor data extension out), plus the explorer's own
// model-data endpoint. Paths are
// relative, so the page also works behind a reverse proxy that serves it under a prefix.
// Every call sends the bearer token when one is set, and a failed call throws an ApiError
// carrying the server's {"error": "..."} message and HTTP status.

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

export class Api {
  constructor() {
    this.token = "";
    // Round-trip times (ms) of decode calls, for the speed readout and the browser test.
    this.decodeTimes = [];
  }

  headers(extra = {}) {
    const h = { ...extra };
    if (this.token) h.Authorization = `Bearer ${this.token}`;
    return h;
  }

  async getJson(path) {
    return this.#json(await this.#fetch(path, { headers: this.headers() }));
  }

  // POST /v2/models/{model}/infer: inputs as JSON tensors, outputs back in the binary tensor
  // data extension (raw little-endian bytes after the JSON header), which spares the server
  // writing and the page parsing 784 numbers per image. Returns {outputName: {shape, data}}.
  async infer(model, inputs) {
    const response = await this.#fetch(`v2/models/${encodeURIComponent(model)}/infer`, {
      method: "POST",
      headers: this.headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ inputs, parameters: { binary_data_output: true } }),
    });
    const headerLength = response.headers.get(HEADER_LENGTH);
    const byName = {};
    if (!response.ok || headerLength === null) {
      const reply = await this.#json(response);
      for (const out of (reply && reply.outputs) || []) byName[out.name] = out;
      return byName;
    }
    const bytes = await response.arrayBuffer();
    const n = Number(headerLength);
    const reply = JSON.parse(new TextDecoder().decode(new Uint8Array(bytes, 0, n)));
    let offset = n;
    for (const out of reply.outputs || []) {
      const size = out.parameters && out.parameters.binary_data_size;
      if (size != null) {
        out.data = fromRaw(out.datatype, bytes.slice(offset, offset + size));
        offset += size;
      }
      byName[out.name] = out;
    }
    return byName;
  }

  async #fetch(path, init) {
    try {
      return await fetch(path, init);
    } catch (err) {
      throw new ApiError(`cannot reach the server (${err.message})`, 0);
    }
  }

  // The JSON body of a response; for an error status, an ApiError with the server's message.
  async #json(response) {
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    if (!response.ok) {
      const message = body && typeof body.error === "string" ? body.error : text || response.statusText;
      throw new ApiError(`${response.status}: ${message}`, response.status);
    }
    return body;
  }
}

const HEADER_LENGTH = "Inference-Header-Content-Length";
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// Raw little-endian tensor bytes as a typed array (the protocol's byte order).
function fromRaw(datatype, buffer) {
  const view = new DataView(buffer);
  if (datatype === "FP32") {
    if (LITTLE_ENDIAN) return new Float32Array(buffer);
    return Float32Array.from({ length: buffer.byteLength / 4 }, (_, i) => view.getFloat32(4 * i, true));
  }
  if (datatype === "UINT64" || datatype === "INT64") {
    const get = datatype === "UINT64" ? "getBigUint64" : "getBigInt64";
    return Array.from({ length: buffer.byteLength / 8 }, (_, i) => Number(view[get](8 * i, true)));
  }
  return new Uint8Array(buffer);
}

// One tensor in the v2 JSON form: flat row-major data with its shape.
export function tensor(name, datatype, shape, data) {
  return { name, datatype, shape, data: Array.from(data) };
}

// A v2 output as {shape, data: Float32Array}.
export function floats(output) {
  return { shape: output.shape, data: Float32Array.from(output.data) };
}

export function median(values) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}
