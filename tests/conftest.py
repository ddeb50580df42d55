"""Where a test can run: ``gpu``-marked tests need a CUDA GPU (``make gpu`` runs them); ``no_gpu``-marked
tests check what a machine without one is told."""

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_gpu = torch.cuda.is_available()
    for item in items:
        # Markers, not keywords: a parameter id such as [gpu] is a keyword too.
        if item.get_closest_marker("gpu") and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (run by `make gpu`)"))
        if item.get_closest_marker("no_gpu") and has_gpu:
            item.add_marker(pytest.mark.skip(reason="checks what a machine without a GPU is told"))
