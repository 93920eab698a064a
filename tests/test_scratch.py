"""Reused CPU buffers for a search's large temporaries (stochastic_vq_core.scratch)."""

import threading

import pytest
import torch

from additive_vq import AVQ
from stochastic_vq_core import scratch as scratch_module
from stochastic_vq_core.scratch import scratch

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def keep_small_buffers(monkeypatch):
    """Buffers for the small shapes these tests ask for."""
    monkeypatch.setattr(scratch_module, "LEAST_KEPT", 1)


def test_a_name_gets_its_buffer_back_and_other_names_their_own():
    first = scratch("test a", (4, 8), torch.float32, CPU)
    again = scratch("test a", (2, 3), torch.float32, CPU)
    other = scratch("test b", (4, 8), torch.float32, CPU)
    wider = scratch("test a", (4, 8), torch.float64, CPU)
    assert first.shape == (4, 8) and again.shape == (2, 3)
    assert again.data_ptr() == first.data_ptr()
    assert other.data_ptr() != first.data_ptr()
    assert wider.dtype == torch.float64 and wider.data_ptr() != first.data_ptr()


def test_a_larger_request_grows_the_buffer():
    small = scratch("test grow", (10,), torch.float32, CPU)
    large = scratch("test grow", (1000, 10), torch.float32, CPU)
    assert large.shape == (1000, 10) and large.is_contiguous()
    large.fill_(1.0)  # all of it writable
    assert scratch("test grow", (10,), torch.float32, CPU).data_ptr() == large.data_ptr()
    assert small.numel() == 10


def test_no_buffer_off_the_cpu_or_outside_the_limits(monkeypatch):
    assert scratch("test meta", (4,), torch.float32, torch.device("meta")) is None
    monkeypatch.setattr(scratch_module, "MOST_KEPT", 100)
    assert scratch("test big", (11, 10), torch.float32, CPU) is None
    assert scratch("test big", (10, 10), torch.float32, CPU) is not None
    monkeypatch.setattr(scratch_module, "LEAST_KEPT", 10)
    assert scratch("test small", (3, 3), torch.float32, CPU) is None
    assert scratch("test small", (2, 5), torch.float32, CPU) is not None


def test_a_buffer_made_in_inference_mode_is_writable_outside_it():
    with torch.inference_mode():
        made = scratch("test modes", (3,), torch.float32, CPU)
    again = scratch("test modes", (3,), torch.float32, CPU)
    torch.add(torch.ones(3), 1.0, out=again)  # raises for an inference tensor
    assert torch.equal(made, torch.full((3,), 2.0))


def test_each_thread_has_its_own_buffers():
    here = scratch("test threads", (5,), torch.float32, CPU).data_ptr()
    there = []
    thread = threading.Thread(
        target=lambda: there.append(scratch("test threads", (5,), torch.float32, CPU).data_ptr()))
    thread.start()
    thread.join()
    assert there and there[0] != here


def test_avq_codes_do_not_depend_on_earlier_searches_sharing_the_buffers():
    torch.manual_seed(0)
    x = torch.randn(300, 16)
    small, large = AVQ(2, 3, 16, 4), AVQ(4, 5, 16, 8)
    expected = large.encode(x)
    small.encode(x)  # the same buffers, other shapes and contents
    assert torch.equal(large.encode(x), expected)
    assert torch.equal(large.encode(x.double()), expected)
    assert torch.equal(large.encode(x), expected)
