"""Runs the Python `k-means-constrained` package on one matrix for `cargo xtask bench cluster`.

Usage: python kmc_bench.py MATRIX.npy K SIZE_MIN N_INIT SEED N_JOBS
Prints one JSON line: {"seconds": ..., "labels": [...], "version": ...}.
The timing covers `fit` only; loading the matrix is excluded, as on the Rust side.
"""
import json
import sys
import time

import joblib
import numpy as np
import k_means_constrained
from k_means_constrained import KMeansConstrained


def main() -> None:
    path, k, size_min, n_init, seed, n_jobs = sys.argv[1:7]
    x = np.load(path)
    model = KMeansConstrained(
        n_clusters=int(k),
        size_min=int(size_min),
        n_init=int(n_init),
        random_state=int(seed),
        n_jobs=int(n_jobs),
    )
    # joblib would hand the workers a read-only memory map, which the package's Cython rejects.
    with joblib.parallel_config(max_nbytes=None):
        start = time.perf_counter()
        model.fit(x)
        seconds = time.perf_counter() - start
    print(json.dumps({
        "seconds": seconds,
        "labels": model.labels_.astype(int).tolist(),
        "version": k_means_constrained.__version__,
    }))


if __name__ == "__main__":
    main()
