"""hypercert.benchmarks: runnable scripts (``python -m benchmarks.<name>``), not library code.

* :mod:`benchmarks.ibp_speed`: time and peak memory of interval bound propagation against plain
  forward/backward passes on reference architectures.
* :mod:`benchmarks.digits_demo`: train a small MLP on scikit-learn's 8x8 digits and certify its
  test set against L-infinity perturbations.
"""
