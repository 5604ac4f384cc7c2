"""Without max_examples_per_batch the forward chunk follows the documented rule."""

from typing import List

import pytest
import torch
from torch import Tensor, nn

from captum_saco.metrics import deletion_curve, saco


def recording(model: nn.Module, sizes: List[int]):
    def forward(x: Tensor) -> Tensor:
        sizes.append(x.shape[0])
        return model(x)

    return forward


def test_cpu_chunks_hold_at_most_64_rows(cnn):
    torch.manual_seed(60)
    images, maps = torch.randn(20, 3, 8, 8), torch.rand(20, 8, 8)
    sizes: List[int] = []
    result = saco(recording(cnn, sizes), images, maps)
    assert sizes == [64] * 3 + [28]  # 20 clean and 200 perturbed rows, together
    assert torch.allclose(result, saco(cnn, images, maps, max_examples_per_batch=200))


def test_cpu_chunks_hold_at_most_2_to_the_20_input_elements():
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4)).eval()
    images, maps = torch.randn(3, 3, 224, 224), torch.rand(3, 224, 224)
    sizes: List[int] = []
    deletion_curve(recording(model, sizes), images, maps)
    assert max(sizes) == (1 << 20) // (3 * 224 * 224) == 6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_default_chunk_gives_the_result_of_explicit_chunks(cnn):
    model = cnn.cuda()
    images, maps = torch.randn(16, 3, 8, 8, device="cuda"), torch.rand(16, 8, 8, device="cuda")
    reference = saco(model, images, maps, max_examples_per_batch=16)
    sizes: List[int] = []
    result = saco(recording(model, sizes), images, maps)
    assert torch.allclose(result, reference, atol=1e-6, equal_nan=True)
    assert sizes == [16, 160]  # the clean rows size the chunk of the 160 perturbed rows


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_first_call_holds_at_most_64_clean_rows(cnn):
    model = cnn.cuda()
    images, maps = torch.randn(80, 3, 8, 8, device="cuda"), torch.rand(80, 8, 8, device="cuda")
    sizes: List[int] = []
    deletion_curve(recording(model, sizes), images, maps)
    assert sizes == [64, 80 * 10 - 64]
