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
    DynamicSize,
    FittedGaussian,
    GraphSpec,
    ImageSpec,
    Kind,
    LatentSpec,
    ModelManifest,
    PriorSpec,
    sha256_of,
    write_manifest,
)
from latentserve.priors import PriorName
from training.data import to_float
from training.graphs import ModelGraphs, open_session, run_batched
from training.models import AnyAutoencoder, ModelConfig, VariationalAutoencoder
from training.train import TrainingData, library_versions, load_checkpoint

PARITY_ATOL = 1e-4
PARITY_BATCH_SIZES = (1, 7, 64)
MAX_DYNAMIC_SIDE = 1024
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
    spatial_dims: dict[int, Any] | None = None,
) -> int:
    """Export module(example) to one self-contained ONNX file with a dynamic batch axis (and
    `spatial_dims`: dynamic height and width); returns the opset."""
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
            dynamic_shapes=({0: batch, **(spatial_dims or {})},),
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
        if not len(batch):
            break
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
    """Deterministic latent per image (AE latent / VAE mean), N x D or N x C x h x w float64."""
    points = []
    for start in range(0, len(images), 1000):
        out = model.encode(torch.from_numpy(images[start : start + 1000]))
        points.append((out[0] if isinstance(out, tuple) else out).numpy())
    return np.concatenate(points).astype(np.float64)


def prior_points(latents: np.ndarray) -> np.ndarray:
    """What the priors are fitted to: N x D flat latents as they are; spatial N x C x h x w
    latents per channel, every position a point (N*h*w x C)."""
    if latents.ndim == 2:
        return latents
    return latents.transpose(0, 2, 3, 1).reshape(-1, latents.shape[1])


def fit_priors(points: np.ndarray, default: PriorName) -> PriorSpec:
    """The Gaussian fitted to the training latents (P-dimensional points, see prior_points)
    and their per-axis bounding box."""
    covariance = np.atleast_2d(np.cov(points, rowvar=False))
    return PriorSpec(
        default=default,
        fitted_gaussian=FittedGaussian(
            mean=points.mean(axis=0).tolist(), covariance=covariance.tolist()
        ),
        bounding_box=BoundingBox(low=points.min(axis=0).tolist(), high=points.max(axis=0).tolist()),
    )


def test_metrics(graphs: ModelGraphs, images: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Reconstruction quality of the exported graphs on the test images (N x C x H x W).

    Reconstruction decodes the deterministic latent (the VAE mean), as an Encode -> Decode
    round trip through the server does. The VAE's ELBO uses one reparameterised sample per image.
    """
    points = graphs.encode_points(images)
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
        mean, log_var = (t.astype(np.float64) for t in graphs.encode_mean_log_var(images))
        kl = -0.5 * (1 + log_var - mean**2 - np.exp(log_var)).reshape(len(x), -1).sum(1)
        rng = np.random.default_rng(seed)
        z = mean + np.exp(0.5 * log_var) * rng.standard_normal(mean.shape)
        sampled = np.clip(graphs.decode(z.astype(np.float32)).astype(np.float64), eps, 1 - eps)
        bce_z = -(x * np.log(sampled) + (1 - x) * np.log(1 - sampled)).reshape(len(x), -1).sum(1)
        metrics["test_kl_per_image"] = float(kl.mean())
        metrics["test_elbo_per_image"] = float(-(bce_z + kl).mean())
    return metrics


DEFAULT_PRIOR: dict[Kind, PriorName] = {"vae": "standard_normal", "ae": "fitted_gaussian"}


def image_spec(model: AnyAutoencoder, dynamic: DynamicSize | None = None) -> ImageSpec:
    c, h, w = model.config.image_shape
    return ImageSpec(channels=c, height=h, width=w, dynamic=dynamic)  # type: ignore[arg-type]


def check_other_size(model: AnyAutoencoder, folder: Path, dynamic: DynamicSize) -> dict[str, Any]:
    """Parity of a dynamic model's graphs at a size other than the one exported with."""
    _, height, width = model.config.image_shape
    m = dynamic.multiple
    size = (min(height + m, dynamic.max), min(width + 2 * m, dynamic.max))
    rng = np.random.default_rng(1)
    images = rng.random((sum(PARITY_BATCH_SIZES), model.config.channels, *size), np.float32)
    encoder_diff = check_parity(_EncoderGraph(model), folder / ENCODER_FILE, images)
    points = _latent_points(model, images).astype(np.float32)
    decoder_diff = check_parity(_DecoderGraph(model), folder / DECODER_FILE, points)
    return {"other_size": list(size), "other_size_max_abs_diff": max(encoder_diff, decoder_diff)}


def export_model(
    checkpoint: Path,
    folder: Path,
    data: TrainingData,
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
    dynamic = dynamic_size(model.config)
    encoder, decoder = export_graphs(model, kind, folder, test_images[:4], dynamic)
    # Held-out images first; a small image folder's test set is topped up from training images.
    wanted = sum(PARITY_BATCH_SIZES)
    parity_images = test_images[:wanted]
    if len(parity_images) < wanted:
        extra = to_float(data.train_images[: wanted - len(parity_images)])
        parity_images = np.concatenate([parity_images, extra])
    parity: dict[str, Any] = dict(check_graphs(model, folder, parity_images))
    if dynamic is not None:
        parity |= check_other_size(model, folder, dynamic)
    train_points = _latent_points(model, to_float(data.train_images))
    manifest = ModelManifest(
        name=name,
        kind=kind,
        description=description,
        image=image_spec(model, dynamic),
        latent=LatentSpec(shape=model.config.latent_shape),
        encoder=encoder,
        decoder=decoder,
        prior=fit_priors(prior_points(train_points), prior or DEFAULT_PRIOR[kind]),
        provenance=provenance(checkpoint, state, kind, parity),
        metrics={},
    )
    # Metrics come from the written graphs through onnxruntime: what the server will compute.
    metrics = test_metrics(ModelGraphs(folder, manifest=manifest), test_images)
    write_manifest(folder, manifest.model_copy(update={"metrics": metrics}))
    return folder


def dynamic_size(config: ModelConfig) -> DynamicSize | None:
    """The sizes a fully convolutional model takes: multiples of 2**halvings from twice that
    up to MAX_DYNAMIC_SIDE (a latent side of 1 would let torch.export specialise it)."""
    if not config.is_spatial or min(config.feature_size) < 2:
        return None
    multiple = 2**config.halvings
    return DynamicSize(
        multiple=multiple, min=2 * multiple, max=multiple * (MAX_DYNAMIC_SIDE // multiple)
    )


def _spatial_dims(dynamic: DynamicSize | None) -> tuple[dict[int, Any], dict[int, Any]] | None:
    """torch.export dims for (image, latent): height and width free, images a multiple of
    the latent's size."""
    if dynamic is None:
        return None
    m = dynamic.multiple
    h = torch.export.Dim("h", min=dynamic.min // m, max=dynamic.max // m)
    w = torch.export.Dim("w", min=dynamic.min // m, max=dynamic.max // m)
    if m == 1:
        return {2: h, 3: w}, {2: h, 3: w}
    return {2: m * h, 3: m * w}, {2: h, 3: w}


def export_graphs(
    model: AnyAutoencoder,
    kind: Kind,
    folder: Path,
    example_images: np.ndarray,
    dynamic: DynamicSize | None = None,
) -> tuple[GraphSpec, GraphSpec]:
    """Write encoder.onnx and decoder.onnx; returns their specs for model.json."""
    encoder_outputs = list(VAE_ENCODER_OUTPUTS if kind == "vae" else AE_ENCODER_OUTPUTS)
    dims = _spatial_dims(dynamic)
    encoder = _export_spec(
        _EncoderGraph(model),
        torch.from_numpy(example_images),
        folder / ENCODER_FILE,
        ENCODER_INPUT,
        encoder_outputs,
        dims[0] if dims else None,
    )
    decoder = _export_spec(
        _DecoderGraph(model),
        torch.zeros(len(example_images), *model.config.latent_shape),
        folder / DECODER_FILE,
        DECODER_INPUT,
        [DECODER_OUTPUT],
        dims[1] if dims else None,
    )
    return encoder, decoder


def _export_spec(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    outputs: list[str],
    spatial_dims: dict[int, Any] | None,
) -> GraphSpec:
    opset = export_graph(module, example, path, input_name, outputs, spatial_dims)
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
    checkpoint: Path, state: dict[str, Any], kind: Kind, parity: dict[str, Any]
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
