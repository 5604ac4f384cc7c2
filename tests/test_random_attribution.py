import pytest
import torch
from captum.attr import Attribution

from captum_saco.attr import RandomAttribution


def _forward(x: torch.Tensor) -> torch.Tensor:
    raise AssertionError("RandomAttribution must not call the model")


def test_is_a_captum_attribution_that_never_calls_the_model() -> None:
    method = RandomAttribution(_forward)
    assert isinstance(method, Attribution)
    attr = method.attribute(torch.ones(2, 3), target=1, additional_forward_args=None)
    assert attr.shape == (2, 3)


def test_values_are_uniform_on_the_unit_interval() -> None:
    attr = RandomAttribution(_forward).attribute(
        torch.zeros(4, 1, 50, 50), generator=torch.Generator().manual_seed(0)
    )
    assert attr.min() >= 0 and attr.max() < 1
    assert abs(attr.mean().item() - 0.5) < 0.02
    assert abs(attr.var().item() - 1 / 12) < 0.005
    # i.i.d.: neighbouring pixels are uncorrelated.
    flat = attr.flatten()
    corr = torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1]
    assert abs(corr.item()) < 0.03


def test_same_seed_gives_same_map_and_different_seeds_differ() -> None:
    method = RandomAttribution(_forward)
    x = torch.zeros(2, 3, 4, 4)
    a = method.attribute(x, generator=torch.Generator().manual_seed(7))
    b = method.attribute(x, generator=torch.Generator().manual_seed(7))
    c = method.attribute(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_tuple_inputs_give_a_tuple_of_input_shaped_maps() -> None:
    inputs = (torch.zeros(2, 3), torch.zeros(2, 4, 5, dtype=torch.float64))
    attr = RandomAttribution(_forward).attribute(inputs)
    assert isinstance(attr, tuple) and len(attr) == 2
    assert attr[0].shape == (2, 3) and attr[0].dtype == torch.float32
    assert attr[1].shape == (2, 4, 5) and attr[1].dtype == torch.float64


def test_integer_inputs_get_float_salience() -> None:
    attr = RandomAttribution(_forward).attribute(torch.zeros(2, 5, dtype=torch.long))
    assert attr.dtype == torch.float32


def test_per_example_generators_make_maps_independent_of_batching() -> None:
    method = RandomAttribution(_forward)
    inputs = (torch.zeros(4, 1, 3, 3), torch.zeros(4, 2))

    def gens(indices):
        return [torch.Generator().manual_seed(100 + i) for i in indices]

    whole = method.attribute(inputs, generator=gens(range(4)))
    first = method.attribute(tuple(x[:1] for x in inputs), generator=gens([0]))
    rest = method.attribute(tuple(x[1:] for x in inputs), generator=gens([1, 2, 3]))
    for w, f, r in zip(whole, first, rest):
        assert torch.equal(w, torch.cat([f, r]))


def test_does_not_modify_the_inputs() -> None:
    x = torch.randn(2, 3)
    before = x.clone()
    RandomAttribution(_forward).attribute(x)
    assert torch.equal(x, before)


def test_wrong_number_of_per_example_generators_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="generator: expected one generator per example"):
        RandomAttribution(_forward).attribute(torch.zeros(3, 2), generator=[torch.Generator()] * 2)


def test_generator_of_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="generator"):
        RandomAttribution(_forward).attribute(torch.zeros(3, 2), generator=42)
    with pytest.raises(TypeError, match="generator"):
        RandomAttribution(_forward).attribute(torch.zeros(2, 2), generator=[1, 2])


def test_inputs_are_checked_by_the_shared_formatter_and_named() -> None:
    with pytest.raises(TypeError, match="inputs: expected a tensor"):
        RandomAttribution(_forward).attribute([torch.zeros(2, 2)])
    with pytest.raises(ValueError, match="inputs: all inputs must share the batch size"):
        RandomAttribution(_forward).attribute((torch.zeros(2, 2), torch.zeros(3, 2)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_maps_lie_on_the_inputs_device_even_with_a_cpu_generator() -> None:
    x = torch.zeros(2, 3, device="cuda")
    g = torch.Generator().manual_seed(0)
    attr = RandomAttribution(_forward).attribute(x, generator=g)
    assert attr.device == x.device
    expected = torch.rand(2, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(attr.cpu(), expected)
