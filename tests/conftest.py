"""Test configuration: few threads (CI has 2 cores) and hypothesis profiles."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

torch.set_num_threads(1)

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
# "ci" draws the same examples on every run (a red CI must mean a real regression, not a new
# random draw); "deep" and "thorough" explore with fresh random examples each time.
settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=_SLOW_OK, derandomize=True)
settings.register_profile("deep", max_examples=300, deadline=None, suppress_health_check=_SLOW_OK)
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=_SLOW_OK)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
