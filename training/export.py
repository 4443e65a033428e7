"""ONNX export: a trained checkpoint becomes a servable model folder, or export fails.

The only module that calls ``torch.onnx``. :func:`export_graph` exports one module with the
dynamo exporter and a dynamic batch axis into a single self-contained .onnx file (weights
inside, no external-data sidecar: the manifest's sha256 must cover everything the server
loads). :func:`export_model` runs four steps: :func:`export_graphs` writes encoder.onnx and
decoder.onnx; :func:`check_graphs` refuses them unless onnxruntime matches PyTorch within
1e-4 on held-out test images at several batch sizes; :func:`provenance` records where the
model came from; then the graphs are measured on the test set and model.json (validated by
``latentserve.manifest``) is written once, with the sampling priors fitted to the training
latents.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import onnxscript
import torch
from torch import nn

from latentserve.manifest import (
    AE_ENCODER_OUTPUTS,
    DECODER_INPUT,
    DECODER_OUTPUT,
    ENCODER_INPUT,
    VAE_ENCODER_OUTPUTS,
    BoundingBox,
    FittedGaussian,
    GraphSpec,
    Kind,
    LatentSpec,
    ModelManifest,
    PriorSpec,
    sha256_of,
    write_manifest,
)
from latentserve.priors import PriorName
from training.data import Mnist, to_float
from training.graphs import ModelGraphs, open_session, run_batched
from training.models import AnyAutoencoder, VariationalAutoencoder
from training.train import library_versions, load_checkpoint

PARITY_ATOL = 1e-4
PARITY_BATCH_SIZES = (1, 7, 64)
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"


class ExportError(RuntimeError):
    """An export that must not be shipped (parity failure, external data, invalid graph)."""


class _EncoderGraph(nn.Module):
    def __init__(self, model: AnyAutoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> Any:
        return self.model.encode(images)


class _DecoderGraph(nn.Module):
    def __init__(self, model: AnyAutoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latents)


def export_graph(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    output_names: list[str],
) -> int:
    """Export module(example) to one self-contained ONNX file with a dynamic batch axis; returns the opset."""
    module.eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    # The example batch must be > 1, or torch.export specialises the batch size to 1.
    assert example.shape[0] > 1, "use an example batch of at least 2"
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=True,
            input_names=[input_name],
            output_names=output_names,
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )
    sidecars = [p for p in path.parent.glob(path.name + "*") if p != path]
    if sidecars:
        raise ExportError(f"{path}: exporter wrote external data {[p.name for p in sidecars]}")
    proto = onnx.load(str(path), load_external_data=False)
    external = [
        t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if external:
        raise ExportError(f"{path}: weights stored outside the file: {external[:5]}")
    if _strip_stack_traces(proto):
        onnx.save(proto, str(path))
    onnx.checker.check_model(proto, full_check=True)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


# The exporter records, on every node, the Python stack that created it: absolute paths of
# the build machine's checkout and virtualenv. They would ship inside every model, and make
# the same weights give different files when built in another folder.
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


def _strip_stack_traces(proto: onnx.ModelProto) -> int:
    """Remove the exporter's per-node stack traces; returns how many were removed."""
    removed = 0
    nodes = [*proto.graph.node, *(n for f in proto.functions for n in f.node)]
    for node in nodes:
        keep = [m for m in node.metadata_props if m.key != STACK_TRACE_KEY]
        removed += len(node.metadata_props) - len(keep)
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    return removed


def check_parity(
    module: nn.Module, path: Path, inputs: np.ndarray, *, atol: float = PARITY_ATOL
) -> float:
    """Largest |onnxruntime - torch| over the given batch sizes; raises ExportError above atol."""
    session = open_session(path)
    worst = 0.0
    start = 0
    for size in PARITY_BATCH_SIZES:
        batch = inputs[start : start + size]
        start += size
        with torch.no_grad():
            expected = module(torch.from_numpy(batch))
        expected_list = list(expected) if isinstance(expected, tuple) else [expected]
        got = run_batched(session, batch, batch_size=size)
        for name, want in zip((o.name for o in session.get_outputs()), expected_list, strict=True):
            if got[name].shape != tuple(want.shape):
                raise ExportError(
                    f"{path}: output {name} shape {got[name].shape} != torch {tuple(want.shape)}"
                )
            diff = float(np.abs(got[name] - want.numpy()).max())
            worst = max(worst, diff)
            if diff > atol:
                raise ExportError(
                    f"{path}: onnxruntime differs from torch by {diff:.2e} on {name!r} "
                    f"(batch {size}); allowed {atol:.0e}"
                )
    return worst


@torch.no_grad()
def _latent_points(model: AnyAutoencoder, images: np.ndarray) -> np.ndarray:
    """Deterministic latent per image (AE latent / VAE mean), N x D float64."""
    points = []
    for start in range(0, len(images), 1000):
        out = model.encode(torch.from_numpy(images[start : start + 1000]))
        points.append((out[0] if isinstance(out, tuple) else out).numpy())
    return np.concatenate(points).astype(np.float64)


def fit_priors(points: np.ndarray, default: PriorName) -> PriorSpec:
    """The Gaussian fitted to the training latents and their per-axis bounding box."""
    covariance = np.atleast_2d(np.cov(points, rowvar=False))
    return PriorSpec(
        default=default,
        fitted_gaussian=FittedGaussian(
            mean=points.mean(axis=0).tolist(), covariance=covariance.tolist()
        ),
        bounding_box=BoundingBox(low=points.min(axis=0).tolist(), high=points.max(axis=0).tolist()),
    )


def test_metrics(graphs: ModelGraphs, images: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Reconstruction quality of the exported graphs on the test images (N x 1 x 28 x 28).

    Reconstruction decodes the deterministic latent (the VAE mean), as an Encode -> Decode
    round trip through the server does. The VAE's ELBO uses one reparameterised sample per image.
    """
    encoded = graphs.encode(images)
    points = encoded["latents"] if graphs.kind == "ae" else encoded["mean"]
    recon = graphs.decode(points.astype(np.float32)).astype(np.float64)
    x = images.astype(np.float64)
    eps = 1e-7
    clipped = np.clip(recon, eps, 1 - eps)
    bce = -(x * np.log(clipped) + (1 - x) * np.log(1 - clipped)).reshape(len(x), -1).sum(1)
    metrics = {
        "test_images": float(len(images)),
        "test_mse_per_pixel": float(((recon - x) ** 2).mean()),
        "test_bce_per_image": float(bce.mean()),
    }
    if graphs.kind == "vae":
        mean, log_var = encoded["mean"].astype(np.float64), encoded["log_var"].astype(np.float64)
        kl = -0.5 * (1 + log_var - mean**2 - np.exp(log_var)).sum(1)
        rng = np.random.default_rng(seed)
        z = mean + np.exp(0.5 * log_var) * rng.standard_normal(mean.shape)
        sampled = np.clip(graphs.decode(z.astype(np.float32)).astype(np.float64), eps, 1 - eps)
        bce_z = -(x * np.log(sampled) + (1 - x) * np.log(1 - sampled)).reshape(len(x), -1).sum(1)
        metrics["test_kl_per_image"] = float(kl.mean())
        metrics["test_elbo_per_image"] = float(-(bce_z + kl).mean())
    return metrics


DEFAULT_PRIOR: dict[Kind, PriorName] = {"vae": "standard_normal", "ae": "fitted_gaussian"}


def export_model(
    checkpoint: Path,
    folder: Path,
    data: Mnist,
    *,
    name: str,
    description: str = "",
    prior: PriorName | None = None,
) -> Path:
    """Write folder/{encoder.onnx, decoder.onnx, model.json} from a training checkpoint."""
    model, state = load_checkpoint(checkpoint)
    kind: Kind = "vae" if isinstance(model, VariationalAutoencoder) else "ae"
    folder.mkdir(parents=True, exist_ok=True)
    test_images = to_float(data.test_images)
    encoder, decoder = export_graphs(model, kind, folder, test_images[:4])
    parity = check_graphs(model, folder, test_images)
    train_points = _latent_points(model, to_float(data.train_images))
    manifest = ModelManifest(
        name=name,
        kind=kind,
        description=description,
        latent=LatentSpec(shape=(model.config.latent_dim,)),
        encoder=encoder,
        decoder=decoder,
        prior=fit_priors(train_points, prior or DEFAULT_PRIOR[kind]),
        provenance=provenance(checkpoint, state, kind, parity),
        metrics={},
    )
    # Metrics come from the written graphs through onnxruntime: what the server will compute.
    metrics = test_metrics(ModelGraphs(folder, manifest=manifest), test_images)
    write_manifest(folder, manifest.model_copy(update={"metrics": metrics}))
    return folder


def export_graphs(
    model: AnyAutoencoder, kind: Kind, folder: Path, example_images: np.ndarray
) -> tuple[GraphSpec, GraphSpec]:
    """Write encoder.onnx and decoder.onnx; returns their specs for model.json."""
    encoder_outputs = list(VAE_ENCODER_OUTPUTS if kind == "vae" else AE_ENCODER_OUTPUTS)
    encoder = _export_spec(
        _EncoderGraph(model),
        torch.from_numpy(example_images),
        folder / ENCODER_FILE,
        ENCODER_INPUT,
        encoder_outputs,
    )
    decoder = _export_spec(
        _DecoderGraph(model),
        torch.zeros(len(example_images), model.config.latent_dim),
        folder / DECODER_FILE,
        DECODER_INPUT,
        [DECODER_OUTPUT],
    )
    return encoder, decoder


def _export_spec(
    module: nn.Module, example: torch.Tensor, path: Path, input_name: str, outputs: list[str]
) -> GraphSpec:
    opset = export_graph(module, example, path, input_name, outputs)
    return GraphSpec(
        file=path.name, sha256=sha256_of(path), inputs=[input_name], outputs=outputs, opset=opset
    )


def check_graphs(model: AnyAutoencoder, folder: Path, test_images: np.ndarray) -> dict[str, float]:
    """Parity of both written graphs with the PyTorch model; raises ExportError beyond 1e-4.

    Held-out inputs: test images for the encoder; for the decoder both the latents of those
    images and wider random points, since serving decodes arbitrary prior samples.
    """
    parity_images = test_images[: sum(PARITY_BATCH_SIZES)]
    encoder_diff = check_parity(_EncoderGraph(model), folder / ENCODER_FILE, parity_images)
    points = _latent_points(model, parity_images).astype(np.float32)
    wide = (3 * np.random.default_rng(0).standard_normal(points.shape)).astype(np.float32)
    decoder = _DecoderGraph(model)
    decoder_diff = max(
        check_parity(decoder, folder / DECODER_FILE, points),
        check_parity(decoder, folder / DECODER_FILE, wide),
    )
    return {"encoder_max_abs_diff": encoder_diff, "decoder_max_abs_diff": decoder_diff}


def provenance(
    checkpoint: Path, state: dict[str, Any], kind: Kind, parity: dict[str, float]
) -> dict[str, Any]:
    """Where the model came from: data, training run, export checks, library versions."""
    fit_config = state["fit_config"]
    return {
        "data": state["data"],
        "training": {
            "epochs": state["epoch"],
            "seed": fit_config["seed"],
            "config": fit_config,
            # Per-epoch learning rate and losses: shows any resume with a changed schedule.
            "history": state["history"],
            "loss": f"{fit_config.get('recon_loss', 'bce').upper()} summed over pixels"
            + (" + beta * KL(q(z|x) || N(0, I))" if kind == "vae" else ""),
            "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        },
        "export": {
            "parity_atol": PARITY_ATOL,
            "parity_batch_sizes": list(PARITY_BATCH_SIZES),
            **parity,
        },
        "versions": {
            **state["versions"],
            "export_torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "prior_note": "fitted_gaussian and bounding_box describe the training-set latents"
        + (" (the encoder means)" if kind == "vae" else ""),
    }


__all__ = [
    "ExportError",
    "check_graphs",
    "check_parity",
    "export_graph",
    "export_graphs",
    "export_model",
    "fit_priors",
    "library_versions",
    "provenance",
]
