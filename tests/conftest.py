"""Test set-up shared by every test module.

* Outputs are poisoned with NaN before every launch (``NUMBA_FLASH_POISON``), so an element a kernel
  forgets to write fails the comparison instead of passing on leftover memory.
* Two Hypothesis profiles, chosen by backend (override with ``HYPOTHESIS_PROFILE``):
  ``simulator``: tiny shapes, 4 examples per (dtype, causal) pair, no deadline (fits CI on 2 cores);
  ``gpu``: 100 examples per (dtype, causal) pair (400 per test), sequences up to 2048, head_dim up to 128.
"""

import os

os.environ.setdefault("NUMBA_FLASH_POISON", "1")
# A tuning cache in the home folder must not change which config the tests run with.
os.environ.setdefault("NUMBA_FLASH_TUNING_CACHE", "off")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import numba_flash  # noqa: E402
from numba_flash import api, backend  # noqa: E402

api.POISON_OUTPUTS = True
ON_GPU = backend.BACKEND == backend.GPU

settings.register_profile(
    "simulator", max_examples=4, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "gpu", max_examples=100, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gpu" if ON_GPU else "simulator"))


def pytest_report_header(config):
    return f"numba_flash backend: {backend.BACKEND} ({backend.device_name()}); hypothesis profile: {settings._current_profile}"


@pytest.fixture
def rng():
    # Fresh inputs on every run: the seed is drawn, and printed if a test fails.
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"rng seed: {seed}")
    return np.random.default_rng(seed)
