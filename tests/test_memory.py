"""Large output buffers (``tradens.kernels.memory``): huge-page mappings act like plain tensors."""

import gc

import numpy as np
import pytest
import torch

from tradens.kernels import memory as _memory


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_large_buffers_are_zeroed_writable_and_outlive_their_mapping(dtype):
    shape = (1000, 3, 1500)  # 36 / 18 MB: above the threshold
    out = _memory.zeros(*shape, dtype=dtype)
    assert out.shape == shape and out.dtype == dtype and out.is_contiguous()
    assert out.data_ptr() % (2 * 2**20) == 0  # starts on a huge-page boundary
    assert float(out.abs().sum()) == 0.0
    out[7, 1, 3] = 2.5
    array = out.numpy()  # shares the memory
    del out
    gc.collect()
    assert array[7, 1, 3] == 2.5 and float(np.abs(array).sum()) == 2.5
    empty = _memory.empty(*shape, dtype=dtype)
    empty.fill_(1.0)
    assert float(empty.sum()) == np.prod(shape)


def test_small_buffers_and_other_devices_use_the_ordinary_allocator():
    small = _memory.zeros(10, 3, dtype=torch.float64)
    assert small.shape == (10, 3) and float(small.abs().sum()) == 0.0
    assert _memory.empty(4, dtype=torch.float32, device="cpu").shape == (4,)
    assert _memory.zeros(0, 5, dtype=torch.float64).shape == (0, 5)
