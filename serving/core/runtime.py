"""onnxruntime sessions and execution-provider choice; the only module importing onnxruntime.

One :class:`GraphSession` per ONNX graph. :func:`choose_providers` turns the configured
device (auto | cpu | cuda) into a provider list: CUDA with CPU fallback when onnxruntime
reports the CUDA provider available, otherwise CPU (with a warning when CUDA was asked
for). The providers a session actually uses are read back from the session, because
onnxruntime may silently drop one it cannot initialise.

Session options were chosen by measurement (latentbench/session_options.py; numbers in
docs/performance.md): intra-op worker threads do not spin while waiting (on a small,
shared CPU a spinning worker steals the core the event loop and the other session need),
full graph optimisation, and the CPU memory arena on (it saves page faults on every run).
On CPU a batch runs in slices of at most `max_run_rows` rows, which costs nothing per image
and bounds the arena: warm-up (model.py) runs one full slice, so resident memory is at its
steady size before serving starts and stays there for requests of any size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

Float32Array = npt.NDArray[np.float32]
# onnxruntime's type names for the graph float types a model spec allows.
GRAPH_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}
# A static dimension is an int; a dynamic one is a name (str) or None.
Dim = int | str | None


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def choose_providers(device: str, available: Sequence[str] | None = None) -> list[str]:
    """Providers in priority order for `device`; CPU is always the last resort."""
    available = available_providers() if available is None else list(available)
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        log.warning(
            "CUDA requested but not available (onnxruntime providers: %s); "
            "falling back to CPU. Install the gpu extra (onnxruntime-gpu) and CUDA to use a GPU.",
            ", ".join(available),
        )
    return [CPU]


# On CPU, onnxruntime is given at most this many rows per run; larger batches run in
# slices of this size. The cost per image is flat from about 16 rows up (measured: see
# docs/performance.md), while the memory a run needs grows with its rows: slicing keeps the
# memory arena at the size of one slice (~20 MB per graph for the shipped models) for any
# request size, so it never needs page faults for fresh memory or a shrink afterwards.
CPU_RUN_ROWS = 64
# For larger images fewer rows make a slice: at most this many bytes of float32 images
# (about 5 rows of 3 x 512 x 512), so the arena stays bounded for any model's size. The
# shipped 1 x 28 x 28 models and a 3 x 64 x 64 one keep CPU_RUN_ROWS.
CPU_RUN_IMAGE_BYTES = 16 << 20


def cpu_run_rows(image_values: int) -> int:
    """Rows per onnxruntime run on CPU for images of `image_values` values each."""
    return max(1, min(CPU_RUN_ROWS, CPU_RUN_IMAGE_BYTES // (4 * max(image_values, 1))))


def session_options(intra_op_threads: int = 0, spinning: bool = False) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if intra_op_threads > 0:
        options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = True
    # Log only real problems; onnxruntime's default prints warnings about unused
    # initializers from exporters that are harmless here.
    options.log_severity_level = 3
    return options


class GraphSession:
    """One loaded ONNX graph: named single input, named outputs, thread-safe `run`."""

    def __init__(
        self,
        path: Path,
        providers: Sequence[str],
        intra_op_threads: int = 0,
        *,
        spinning: bool = False,
        max_run_rows: int = CPU_RUN_ROWS,
    ) -> None:
        self.path = path
        self._session = ort.InferenceSession(
            str(path),
            sess_options=session_options(intra_op_threads, spinning),
            providers=list(providers),
        )
        # A GPU wants whole batches; slicing is for CPU caches and memory.
        self.max_run_rows = max_run_rows if self.providers[0] == CPU else 1 << 30
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{path.name}: expected one input, found {len(inputs)}")
        self.input_name: str = inputs[0].name
        self.input_shape: list[Dim] = list(inputs[0].shape)
        if self.input_shape and self.input_shape[0] == 1:
            # Exported with a fixed batch of one (some exporters do): run row by row.
            self.max_run_rows = 1
        # "float32" or "float16" (None for any other type: the registry refuses it). Arrays
        # stay float32 outside this class; a float16 graph's input and outputs are cast here.
        self.input_dtype: str | None = GRAPH_DTYPES.get(inputs[0].type)
        self.output_dtypes: dict[str, str | None] = {
            o.name: GRAPH_DTYPES.get(o.type) for o in self._session.get_outputs()
        }
        self._feed_dtype = np.float16 if self.input_dtype == "float16" else np.float32
        self.output_names: list[str] = [o.name for o in self._session.get_outputs()]
        self.output_shapes: dict[str, list[Dim]] = {
            o.name: list(o.shape) for o in self._session.get_outputs()
        }

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def run(self, batch: Float32Array) -> tuple[Float32Array, ...]:
        """Run on one input batch (N x ...), returning the outputs in `output_names` order.

        onnxruntime's `run` releases the GIL and may be called from several threads.
        """
        n, step = int(batch.shape[0]), self.max_run_rows
        if n <= step:
            return self._run(batch)
        first = self._run(batch[:step])
        # One output buffer per name, filled slice by slice: a single copy of the results.
        outputs = tuple(np.empty((n, *o.shape[1:]), dtype=np.float32) for o in first)
        for out, part in zip(outputs, first, strict=True):
            out[:step] = part
        for start in range(step, n, step):
            for out, part in zip(outputs, self._run(batch[start : start + step]), strict=True):
                out[start : start + step] = part
        return outputs

    def _run(self, batch: Float32Array) -> tuple[Float32Array, ...]:
        feed = batch if batch.dtype == self._feed_dtype else batch.astype(self._feed_dtype)
        outputs = self._session.run(self.output_names, {self.input_name: feed})
        return tuple(np.asarray(o, dtype=np.float32) for o in outputs)
