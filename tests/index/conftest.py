"""Index tests run FAISS single-threaded: the machine is small and shared, and OpenMP spin-waiting under
contention makes 2 threads slower than 1 for these tiny indexes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

faiss = pytest.importorskip("faiss")


@pytest.fixture(autouse=True)
def _one_faiss_thread() -> Iterator[None]:
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
