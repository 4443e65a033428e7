"""The analysis measures exactly what SampleRandom serves: for the same model, prior and seed,
the latents analysis decodes and judges equal, bit for bit, those a real server returns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fixtures.servers import InProcessServer

from latentserve.client import LatentClient
from latentserve.priors import PRIOR_NAMES
from training.analyze import Measurement
from training.classifier import ClassifierGraph
from training.data import Mnist

# Analysis draws 1,000 per prior; over the client's unary limit this also goes through
# SampleRandomStream, which must give the same rows.
COUNTS = (1000, 1500)
SEED = 3


@pytest.fixture(scope="module")
def client(server: InProcessServer) -> Iterator[LatentClient]:
    with LatentClient(server.target) as running:
        yield running


@pytest.mark.parametrize("name", ["tiny-ae", "tiny-vae", "tiny-vae-8"])
@pytest.mark.parametrize("count", COUNTS)
def test_analysis_samples_equal_sample_random(
    client: LatentClient,
    tiny_models_dir: Path,
    tiny_data: Mnist,
    classifier: Path,
    name: str,
    count: int,
) -> None:
    measured = Measurement(
        tiny_models_dir / name, tiny_data, ClassifierGraph(classifier), count, SEED
    )
    assert set(measured.samples) == set(PRIOR_NAMES)
    for prior in PRIOR_NAMES:
        served = client.sample(count, model=name, seed=SEED, prior=prior, return_latents=True)
        assert served.prior == prior and served.latents is not None
        analysed = measured.samples[prior]
        np.testing.assert_array_equal(analysed["latents"], served.latents, err_msg=prior)
        # ... and the images analysis judged are the ones the server sent.
        np.testing.assert_allclose(analysed["images"], served.images, atol=1e-6, rtol=0)
        assert analysed["numbers"]["seed"] == SEED and analysed["numbers"]["count"] == count
