"""The CUDA path: same numbers as on the CPU, deterministic, float32 available.

Skipped where no CUDA device is visible (CI has none); run on a GPU machine
with ``python -m pytest -q tests/test_cuda.py``. Every comparison is against
the CPU result of the same call, which the rest of the suite validates against
finite differences, autograd and quippy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _models_helpers import alloy, label, small_soap
from conftest import SPECIES, make_alloy

from tradens import SOAP
from tradens.gradients import descriptor_gradients, energy_forces_stress
from tradens.models import LearnedPotential
from tradens.representations.ace import ACE

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SOAP_VARIANTS = {
    "full": {},
    "rz-tensor": dict(mixing={"channels": 4}),
    "rz-elementwise": dict(mixing={"channels": 5}, coupling="elementwise"),
    "element-asym": dict(mixing={"mode": "element", "channels": 2, "symmetric": False}),
    "gap-weights-sigma0": dict(mixing={"channels": 3, "weights": "gap"}, covariance_sigma0=0.3),
    "average": dict(mixing={"channels": 4}, average=True),
}


def soap_of(variant: str) -> SOAP:
    return SOAP(
        cutoff=4.0, l_max=4, radial={"n_max": 4}, species=list(SPECIES), **SOAP_VARIANTS[variant]
    )


def ace() -> ACE:
    return ACE(
        cutoff=4.5,
        species=list(SPECIES),
        nu_max=4,
        l_max=(0, 4, 3, 2),
        channels=5,
        radial={"n_max": 4},
    )


def frames():
    return [make_alloy(seed=1), make_alloy(seed=2, repeat=(1, 1, 1), rattle=0.2)]


def model_fn_of(n_features: int, device):
    w = torch.randn(n_features, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(
        device
    )

    def model_fn(values, numbers):
        linear = values @ w.to(values.dtype)
        return linear + 0.3 * linear**2 - 0.1 * numbers.to(values.dtype)

    return model_fn


@pytest.mark.parametrize("variant", sorted(SOAP_VARIANTS))
def test_soap_values_equal_the_cpu(variant):
    rep = soap_of(variant)
    cpu = rep.compute(frames(), output="torch").values
    gpu = rep.compute(frames(), output="torch", device="cuda").values
    assert gpu.device.type == "cuda"
    assert torch.linalg.norm(cpu) > 1.0
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-12)
    gpu32 = rep.compute(frames(), output="torch", device="cuda", dtype=torch.float32).values
    assert gpu32.dtype == torch.float32
    torch.testing.assert_close(gpu32.cpu().double(), cpu, rtol=0, atol=2e-5)


def test_ace_values_equal_the_cpu():
    rep = ace()
    cpu = rep.compute(frames(), output="torch").values
    gpu = rep.compute(frames(), output="torch", device="cuda").values
    assert torch.linalg.norm(cpu) > 0.1
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-10, atol=1e-13)


def test_repeated_gpu_runs_are_bitwise_equal():
    for rep in (soap_of("rz-tensor"), soap_of("full"), ace()):
        first = rep.compute(frames(), output="torch", device="cuda").values
        second = rep.compute(frames(), output="torch", device="cuda").values
        assert torch.equal(first, second), type(rep).__name__
    rep = soap_of("rz-elementwise")
    model_fn = model_fn_of(rep.n_features, "cuda")
    a = energy_forces_stress(rep, model_fn, frames(), device="cuda")
    b = energy_forces_stress(rep, model_fn, frames(), device="cuda")
    assert np.array_equal(a.forces, b.forces) and np.array_equal(a.virial, b.virial)
    g1 = descriptor_gradients(soap_of("rz-tensor"), frames(), device="cuda")
    g2 = descriptor_gradients(soap_of("rz-tensor"), frames(), device="cuda")
    assert torch.equal(g1.positions, g2.positions) and torch.equal(g1.strain, g2.strain)


@pytest.mark.parametrize("variant", ["full", "rz-tensor", "rz-elementwise", "average"])
def test_soap_jacobians_equal_the_cpu(variant):
    rep = soap_of(variant)
    cpu = descriptor_gradients(rep, frames())
    gpu = descriptor_gradients(rep, frames(), device="cuda")
    assert gpu.positions.device.type == "cuda"
    assert torch.equal(gpu.index.cpu(), cpu.index)
    assert torch.linalg.norm(cpu.positions) > 1e-2
    torch.testing.assert_close(gpu.positions.cpu(), cpu.positions, rtol=0, atol=1e-11)
    torch.testing.assert_close(gpu.strain.cpu(), cpu.strain, rtol=0, atol=1e-11)


def test_ace_jacobian_equals_the_cpu():
    rep = ace()
    structures = [make_alloy(seed=2, repeat=(1, 1, 1), rattle=0.2)]
    cpu = descriptor_gradients(rep, structures)
    gpu = descriptor_gradients(rep, structures, device="cuda")
    assert torch.equal(gpu.index.cpu(), cpu.index)
    torch.testing.assert_close(gpu.positions.cpu(), cpu.positions, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gpu.strain.cpu(), cpu.strain, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variant", ["full", "rz-tensor", "rz-elementwise", "gap-weights-sigma0"])
def test_forces_and_stress_equal_the_cpu_and_autograd(variant):
    rep = soap_of(variant)
    cpu = energy_forces_stress(rep, model_fn_of(rep.n_features, "cpu"), frames(), method="analytic")
    gpu_fn = model_fn_of(rep.n_features, "cuda")
    gpu = energy_forces_stress(rep, gpu_fn, frames(), device="cuda", method="analytic")
    reference = energy_forces_stress(rep, gpu_fn, frames(), device="cuda", method="autograd")
    assert np.abs(cpu.forces).max() > 1e-2
    for out in (gpu, reference):
        np.testing.assert_allclose(out.energy, cpu.energy, rtol=1e-11)
        np.testing.assert_allclose(out.forces, cpu.forces, rtol=0, atol=1e-10)
        np.testing.assert_allclose(out.virial, cpu.virial, rtol=0, atol=1e-10)


def test_learned_potential_trains_on_the_gpu_deterministically():
    teacher = small_soap(mixing={"channels": 3, "seed": 11})
    theta = torch.as_tensor(np.random.default_rng(0).normal(size=teacher.n_features))
    data = label(
        [alloy(seed, repeat=(1, 1, 2), rattle=0.15) for seed in range(8)],
        teacher,
        lambda values, numbers: values @ theta - 4.0,
    )

    def train(device):
        return LearnedPotential(
            small_soap(mixing={"channels": 3, "seed": 5}),
            hidden=(8,),
            max_epochs=3,
            batch_size=4,
            validation_fraction=0.25,
            forces_weight=1.0,
            device=device,
            seed=2,
        ).fit(data)

    torch.cuda.reset_peak_memory_stats()
    first = train("cuda")
    assert (
        torch.cuda.max_memory_allocated() > 0
    )  # it trained on the GPU (the model ends on the CPU)
    second, cpu = train("cuda"), train("cpu")
    a, b, c = (m.predict(data[:2]) for m in (first, second, cpu))
    assert np.array_equal(a["energy"], b["energy"]) and np.array_equal(a["forces"], b["forces"])
    np.testing.assert_allclose(a["energy"], c["energy"], rtol=1e-8)
    np.testing.assert_allclose(a["forces"], c["forces"], rtol=0, atol=1e-8)
