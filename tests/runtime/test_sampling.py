"""The portable sampler: SplitMix64's reference sequence, and the draws' properties."""

import pytest
import torch

from gemma_edge.models.errors import InputError
from gemma_edge.runtime_py.sampling import Sampler, SplitMix64


def test_splitmix64_reference_sequence():
    r = SplitMix64(0)  # Vigna's splitmix64.c from state 0
    assert [r.next() for _ in range(3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_draws_follow_the_distribution_and_the_seed():
    logits = torch.tensor([0.0, 1.0, 2.0, -30.0])
    s = Sampler(temperature=1.0, seed=5)
    draws = torch.tensor([s(logits) for _ in range(4000)])
    freq = torch.bincount(draws, minlength=4).double() / 4000
    assert torch.allclose(freq, logits.double().softmax(-1), atol=0.03)
    again = Sampler(temperature=1.0, seed=5)
    assert [again(logits) for _ in range(50)] == draws[:50].tolist()
    assert all(Sampler(temperature=1.0, top_k=1, seed=s)(logits) == 2 for s in range(20))
    assert all(Sampler(temperature=1.0, top_p=0.5, seed=s)(logits) == 2 for s in range(20))
    assert {Sampler(temperature=2.0, top_k=2, seed=s)(logits) for s in range(40)} == {1, 2}


def test_seed_must_be_an_integer():
    with pytest.raises(InputError, match="seed must be an integer"):
        Sampler(temperature=1.0, seed=1.5)
