"""The CUDA determinism switch: on for CUDA calls only, and always restored."""

from __future__ import annotations

import pytest
import torch
import torch.utils.deterministic as settings

from tradens.kernels.determinism import deterministic


def test_cpu_calls_leave_torch_alone():
    with deterministic("cpu"):
        assert not torch.are_deterministic_algorithms_enabled()
    with deterministic(None):
        assert not torch.are_deterministic_algorithms_enabled()


def test_cuda_calls_switch_on_and_restore(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    fill = settings.fill_uninitialized_memory
    with pytest.raises(KeyError):  # the state is restored after an exception too
        with deterministic(torch.device("cuda", 0)):
            assert torch.are_deterministic_algorithms_enabled()
            assert settings.fill_uninitialized_memory is False
            import os

            assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
            raise KeyError("inside")
    assert not torch.are_deterministic_algorithms_enabled()
    assert settings.fill_uninitialized_memory == fill


def test_a_callers_own_setting_is_kept():
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with deterministic("cuda"):
            assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
