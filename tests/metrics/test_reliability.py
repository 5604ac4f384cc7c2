"""No silently wrong coefficient (issue 12): low-precision maps, saturated models,
tied drops, constant coarse maps, empty batches and inputs that must be refused."""

import warnings

import pytest
import torch
from torch import Tensor, nn

from captum_saco.metrics import (
    aopc,
    comprehensiveness,
    deletion_curve,
    saco,
    saco_coefficient,
    score_attributions,
)

FLAT = nn.Sequential(nn.Flatten(), nn.Linear(784, 3)).eval()


def linear_two_class(weight: Tensor, scale: float = 1.0):
    def forward(x: Tensor) -> Tensor:
        z = scale * (weight * x).flatten(1).sum(1)
        return torch.stack([z, torch.zeros_like(z)], dim=1)

    return forward


# --- 1. low-precision attributions --------------------------------------------


def test_float16_attributions_score_like_their_float32_values():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    a = (torch.rand(2, 28, 28) * 60).half()
    assert torch.equal(saco(FLAT, x, a), saco(FLAT, x, a.float()))
    large = a * 50  # float16 sums of these overflow to inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(saco(FLAT, x, large), saco(FLAT, x, large.float()))


# --- 2. saturated and input-blind models ---------------------------------------


def test_drops_of_a_saturated_model_keep_their_order():
    # Class-0 logit 5 * sum(w * x) = 50, and 30 to 45 with one feature removed:
    # p rounds to 1.0 in float32 for the clean and for every perturbed input.
    weight = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    model = linear_two_class(weight, scale=5.0)
    x = torch.ones(1, 4)
    assert torch.softmax(model(x * (weight != 4)), 1)[0, 0].item() == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no tied pairs left
        details = saco(model, x, weight, baselines=0.0, n_groups=4, target=0, return_details=True)
        assert details.coefficient.tolist() == [1.0]
        assert details.tied_fraction.tolist() == [0.0]
        reversed_ = saco(model, x, weight.flip(1), baselines=0.0, n_groups=4, target=0)
    assert reversed_.tolist() == [-1.0]


def test_drops_equal_the_plain_probability_difference_where_not_saturated(cnn, images):
    torch.manual_seed(30)
    attributions = torch.randn(4, 8, 8)
    details = saco(cnn, images, attributions, return_details=True)
    baseline = images.mean(dim=(2, 3), keepdim=True)
    order = attributions.flatten(1).argsort(dim=1, descending=True, stable=True)
    with torch.no_grad():
        p = torch.softmax(cnn(images), 1).gather(1, details.target[:, None])[:, 0]
        plain = []
        for k, group in enumerate(torch.tensor_split(order, 10, dim=1)):
            hit = torch.zeros(4, 64, dtype=torch.bool).scatter_(1, group, True).view(4, 1, 8, 8)
            perturbed = torch.where(hit, baseline, images)
            p_k = torch.softmax(cnn(perturbed), 1).gather(1, details.target[:, None])[:, 0]
            plain.append(p - p_k)
    plain_drop = torch.stack(plain, dim=1)
    assert torch.allclose(details.probability_drop, plain_drop, atol=1e-7)
    assert torch.equal(details.coefficient, saco_coefficient(details.group_salience, plain_drop))


def test_tied_pairs_are_reported_and_can_be_ignored():
    def blind(x: Tensor) -> Tensor:  # ignores its input
        return torch.tensor([[2.0, 0.0]]).expand(x.shape[0], 2)

    x, attributions = torch.randn(3, 12), torch.rand(3, 12)
    with pytest.warns(UserWarning, match="3 of 3 examples .* more than half of their group pairs"):
        details = saco(blind, x, attributions, n_groups=4, return_details=True)
    assert details.tied_fraction.tolist() == [1.0, 1.0, 1.0]
    assert details.coefficient.tolist() == [1.0, 1.0, 1.0]  # the paper's rule
    with pytest.warns(UserWarning, match="undefined for 3 of 3"):
        ignored = saco(blind, x, attributions, n_groups=4, ties="ignore")
    assert bool(torch.isnan(ignored).all())


def test_ties_ignore_leaves_tied_pairs_out_of_both_sums():
    salience = torch.tensor([[3.0, 2.0, 1.0]])
    drop = torch.tensor([[0.1, 0.1, 0.5]])
    # agree: (1 - 2 - 1) / (1 + 2 + 1); ignore: pair (1, 2) left out: (-2 - 1) / 3.
    assert saco_coefficient(salience, drop).tolist() == [-0.5]
    assert saco_coefficient(salience, drop, ties="ignore").tolist() == [-1.0]


def test_ties_option_is_checked(cnn, images):
    with pytest.raises(ValueError, match="ties: expected 'agree' or 'ignore'"):
        saco(cnn, images, torch.rand(4, 8, 8), ties="skip")


def test_a_model_with_one_output_needs_apply_softmax_false():
    def one_logit(x: Tensor) -> Tensor:
        return x.sum(1, keepdim=True)

    x, attributions = torch.randn(2, 6), torch.rand(2, 6)
    with pytest.raises(ValueError, match="forward_func: the model has one output.*apply_softmax"):
        saco(one_logit, x, attributions, n_groups=3)
    probability = saco(
        lambda z: torch.sigmoid(one_logit(z)),
        x,
        attributions,
        n_groups=3,
        apply_softmax=False,
        target=0,
    )
    assert bool(torch.isfinite(probability).all())


# --- 3. constant maps -----------------------------------------------------------


def test_a_constant_coarse_map_is_undefined_before_upsampling(cnn, images):
    with pytest.warns(UserWarning, match="undefined for 4 of 4"):
        result = saco(cnn, images, torch.full((4, 1, 1), 0.7))
    assert bool(torch.isnan(result).all())


def test_a_constant_map_over_regions_of_different_sizes_is_undefined(cnn, images):
    mask = torch.arange(64).reshape(1, 1, 8, 8).clamp(max=20)  # one large region
    with pytest.warns(UserWarning, match="undefined for 4 of 4"):
        result = saco(cnn, images, torch.ones(4, 8, 8), feature_mask=mask)
    assert bool(torch.isnan(result).all())


# --- 6. empty batches -----------------------------------------------------------


def test_an_empty_batch_gives_empty_results_without_calling_the_model():
    def never(x: Tensor) -> Tensor:
        raise AssertionError("called")

    x, attributions = torch.randn(0, 3, 8, 8), torch.rand(0, 8, 8)
    assert saco(never, x, attributions).shape == (0,)
    details = saco(never, x, attributions, return_details=True)
    assert details.probability_drop.shape == (0, 10) and details.tied_fraction.shape == (0,)
    curve = deletion_curve(never, x, attributions)
    assert curve.probabilities.shape == (0, 10) and curve.n_removed.shape == (0, 10)
    assert aopc(never, x, attributions).shape == (0,)


# --- 8. inputs refused with the argument's name ----------------------------------


@pytest.mark.parametrize(
    "target, message",
    [
        ([0.5, 1.7, 0.0, 1.0], "list target must hold ints"),
        (torch.tensor([True, False, True, False]), "integer tensor, got dtype torch.bool"),
    ],
)
def test_float_and_bool_targets_are_refused(cnn, images, target, message):
    with pytest.raises(ValueError, match=f"target: .*{message}"):
        saco(cnn, images, torch.rand(4, 8, 8), target=target)


@pytest.mark.parametrize("position", [(-1, 0), (7, 0), (0.5, 0)])
def test_tuple_target_positions_outside_the_output_are_refused(cnn, images, position):
    def per_position(x: Tensor) -> Tensor:  # (N, 2, 5)
        return torch.stack([cnn(x), -cnn(x)], dim=1)

    with pytest.raises(ValueError, match="target: every position of a tuple target"):
        saco(per_position, images, torch.rand(4, 8, 8), target=position)


def test_complex_attributions_are_refused(cnn, images):
    with pytest.raises(TypeError, match="attributions: expected real values"):
        saco(cnn, images, torch.rand(4, 8, 8, dtype=torch.complex64))


@pytest.mark.parametrize("baseline", [-1, 256, 0.5, torch.tensor(3.5)])
def test_baselines_an_integer_input_cannot_hold_are_refused(baseline):
    def on_bytes(x: Tensor) -> Tensor:
        return x.float().flatten(1)[:, :3]

    x = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"baselines: an input of dtype torch.uint8 needs integer"):
        saco(on_bytes, x, torch.rand(2, 4, 4), baselines=baseline, n_groups=2)


def test_whole_number_baselines_of_an_integer_input_are_accepted():
    def on_bytes(x: Tensor) -> Tensor:
        return x.float().flatten(1)[:, :3]

    x = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    assert saco(on_bytes, x, torch.rand(2, 4, 4), baselines=255.0, n_groups=2).shape == (2,)


@pytest.mark.parametrize("flag", ["apply_softmax", "return_details"])
def test_flags_must_be_bools(cnn, images, flag):
    with pytest.raises(TypeError, match=f"{flag}: expected True or False, got 'no'"):
        saco(cnn, images, torch.rand(4, 8, 8), **{flag: "no"})


def test_meta_and_sparse_tensors_are_refused_by_name(cnn, images):
    with pytest.raises(ValueError, match="inputs: got a tensor on the meta device"):
        saco(cnn, images.to("meta"), torch.rand(4, 8, 8))
    with pytest.raises(ValueError, match="attributions: got a tensor on the meta device"):
        saco(cnn, images, torch.rand(4, 8, 8, device="meta"))
    with pytest.raises(ValueError, match="attributions: expected a dense tensor"):
        saco(cnn, images, torch.rand(4, 8, 8).to_sparse())


@pytest.mark.parametrize("argument", ["baselines", "feature_mask", "target"])
@pytest.mark.parametrize("kind", ["meta", "sparse"])
def test_meta_and_sparse_baselines_masks_and_targets_are_refused_by_name(
    cnn, images, argument, kind
):
    dense = {
        "baselines": torch.zeros(4, 3, 8, 8),
        "feature_mask": torch.arange(64).view(1, 1, 8, 8),
        "target": torch.tensor([0, 1, 2, 3]),
    }[argument]
    value = dense.to("meta") if kind == "meta" else dense.to_sparse()
    message = "got a tensor on the meta device" if kind == "meta" else "expected a dense tensor"
    with pytest.raises(ValueError, match=f"{argument}: {message}"):
        saco(cnn, images, torch.rand(4, 8, 8), **{argument: value})


def test_a_model_without_classes_is_refused_by_name(images):
    def no_classes(x: Tensor) -> Tensor:
        return x.flatten(1)[:, :0]

    for target in (None, 0):
        with pytest.raises(ValueError, match=r"forward_func: .*at least one class, got .*\(4, 0\)"):
            saco(no_classes, images, torch.rand(4, 8, 8), target=target)


@pytest.mark.parametrize("shape", [(4, 1, 0, 4), (4, 0, 8)])
def test_attribution_grids_without_cells_are_refused_by_name(cnn, images, shape):
    with pytest.raises(ValueError, match=r"attributions: cannot match an attribution of shape"):
        saco(cnn, images, torch.rand(shape))


def test_a_channels_last_attribution_is_refused_with_the_fix(cnn, images):
    channels_last = torch.rand(4, 8, 8, 3)  # would read as an 8 x 3 grid of 8 channels
    with pytest.raises(ValueError, match=r"attributions: .* with the channels last.*movedim"):
        saco(cnn, images, channels_last)
    assert saco(cnn, images, channels_last.movedim(-1, 1)).shape == (4,)


def test_a_model_in_training_mode_is_warned_about_once_per_call(images):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.LazyLinear(3))
    model(images)  # materialise the lazy layer
    maps = torch.rand(4, 8, 8)
    for metric in (saco, aopc, lambda *a: score_attributions(a[0], a[1], {"m": a[2]})):
        with pytest.warns(UserWarning, match="forward_func: the model is in training mode") as w:
            metric(model, images, maps)
        assert sum("training mode" in str(x.message) for x in w) == 1
        assert all(x.filename == __file__ for x in w if "training mode" in str(x.message))
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        saco(model, images, maps)


def test_a_model_that_computes_alike_in_training_mode_is_not_warned_about(cnn, images):
    alike = [
        cnn.train(),  # convolutions, ReLU, pooling, linear layers
        nn.Sequential(nn.Dropout(0.0), cnn),
        nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False), cnn),
    ]
    for model in alike:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            saco(model.train(), images, torch.rand(4, 8, 8))
    with pytest.warns(UserWarning, match="training mode"):
        saco(nn.Sequential(nn.Dropout(0.1), cnn).train(), images, torch.rand(4, 8, 8))


def test_a_none_forward_func_is_refused_by_name(images):
    with pytest.raises(TypeError, match="forward_func: expected the model or a callable"):
        saco(None, images, torch.rand(4, 8, 8))


def test_coarse_maps_of_inputs_with_four_spatial_dimensions_are_refused_by_name():
    x = torch.randn(2, 1, 4, 4, 4, 4)
    with pytest.raises(ValueError, match="attributions: .*4 spatial dimensions"):
        saco(lambda z: z.flatten(1)[:, :3], x, torch.rand(2, 2, 2, 2, 2), n_groups=2)


@pytest.mark.parametrize("fractions", [0.5, None, "0.5", torch.tensor(0.5), [0.1, "a"]])
def test_fractions_that_are_not_a_sequence_of_numbers_are_refused_by_name(cnn, images, fractions):
    with pytest.raises(TypeError, match="fractions: expected a non-empty, strictly increasing"):
        deletion_curve(cnn, images, torch.rand(4, 8, 8), fractions=fractions)


@pytest.mark.parametrize(
    "salience, drop",
    [
        (torch.rand(3), torch.rand(3)),
        (torch.rand(2, 3), torch.rand(2, 4)),
        (torch.rand(4, 3), torch.rand(1, 3)),  # would broadcast silently
    ],
)
def test_saco_coefficient_needs_two_n_by_k_tensors_of_one_shape(salience, drop):
    with pytest.raises(ValueError, match="group_salience, probability_drop: expected two"):
        saco_coefficient(salience, drop)


def test_saco_coefficient_refuses_what_is_not_a_tensor():
    with pytest.raises(TypeError, match="group_salience: expected an \\(N, K\\) tensor, got list"):
        saco_coefficient([[3.0, 2.0]], torch.rand(1, 2))


@pytest.mark.parametrize("metric", [aopc, deletion_curve, comprehensiveness])
def test_warnings_of_the_curve_metrics_point_at_the_users_call(cnn, images, metric):
    maps = torch.rand(4, 8, 8)
    maps[1] = torch.nan
    with pytest.warns(UserWarning, match="hold NaN or infinite values") as caught:
        metric(cnn, images, maps)
    assert [w.filename for w in caught] == [__file__]
