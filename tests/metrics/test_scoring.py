"""score_attributions gives what the single metrics give, from shared passes."""

import warnings
from typing import Callable, List, Tuple

import pytest
import torch
from torch import Tensor, nn

from captum_saco.metrics import aopc, auc, comprehensiveness, lodds, saco, score_attributions

SINGLE = {
    "saco": saco,
    "aopc": aopc,
    "lodds": lodds,
    "auc": auc,
    "comprehensiveness": comprehensiveness,
}


Forward = Callable[[Tensor], Tensor]


def counting_rows(model: Forward) -> Tuple[Forward, List[int]]:
    """``model`` as a forward function, and the list of the rows of its calls."""
    calls: List[int] = []

    def counting(x: Tensor) -> Tensor:
        calls.append(x.shape[0])
        return model(x)

    return counting, calls


def _separately(model, images, maps, n_groups, **kwargs):
    fractions = tuple(k / n_groups for k in range(1, n_groups))
    out = {}
    for method, a in maps.items():
        out[method] = {}
        for name, metric in SINGLE.items():
            extra = {"n_groups": n_groups} if name == "saco" else {"fractions": fractions}
            out[method][name] = metric(model, images, a, **extra, **kwargs)
    return out


@pytest.mark.parametrize("n_groups", [10, 7])
def test_scores_equal_the_single_metrics_called_one_by_one(cnn, images, n_groups):
    torch.manual_seed(40)
    maps = {
        "pixels": torch.randn(4, 8, 8),
        "input": torch.randn(4, 3, 8, 8),
        "grid": torch.rand(4, 2, 2),
    }
    scores = score_attributions(cnn, images, maps, n_groups=n_groups, target=2)
    expected = _separately(cnn, images, maps, n_groups, target=2)
    assert scores.keys() == maps.keys()
    for method in maps:
        assert list(scores[method]) == list(SINGLE)
        for name in SINGLE:
            assert torch.allclose(scores[method][name], expected[method][name], atol=1e-6), (
                method,
                name,
            )


def test_every_method_reads_each_examples_own_baseline_arguments_and_target(cnn, images):
    # The methods' rankings reach the forward passes stacked (row r explains
    # example r % N): each row must get its example's baseline, forward
    # arguments and target, also in chunks that cross from method to method.
    torch.manual_seed(47)

    def shifted(x: Tensor, shift: Tensor) -> Tensor:
        return cnn(x) + shift

    kwargs = dict(
        baselines=torch.rand(4, 3, 8, 8),
        additional_forward_args=(3 * torch.randn(4, 5),),
        target=[0, 3, 1, 4],
        max_examples_per_batch=7,
    )
    maps = {m: torch.randn(4, 8, 8) for m in "abc"}
    scores = score_attributions(shifted, images, maps, n_groups=5, **kwargs)
    expected = _separately(shifted, images, maps, 5, **kwargs)
    for method in maps:
        for name in SINGLE:
            torch.testing.assert_close(scores[method][name], expected[method][name])


def test_the_clean_pass_runs_once_and_shares_batches_with_the_perturbed_passes(cnn, images):
    counting, calls = counting_rows(cnn)
    maps = {"a": torch.rand(4, 8, 8), "b": torch.rand(4, 8, 8)}
    score_attributions(counting, images, maps, n_groups=4, max_examples_per_batch=1000)
    # 64 pixels, K = 4: groups [0,16) [16,32) [32,48) [48,64); MoRF 16, 32, 48; LeRF 16, 32, 48.
    # Shared per map: MoRF 16 = group 1 and LeRF 16 = group 4: 4 + 3 + 3 - 2 = 8 inputs.
    assert calls == [4 + 2 * 4 * 8]


def test_a_given_clean_output_is_not_forwarded_again_and_gives_the_same_scores(cnn, images):
    counting, calls = counting_rows(cnn)
    maps = {"a": torch.rand(4, 8, 8), "b": torch.rand(4, 8, 8)}
    expected = score_attributions(cnn, images, maps, n_groups=4, max_examples_per_batch=1000)
    with torch.no_grad():
        logits = cnn(images)
    scores = score_attributions(
        counting, images, maps, n_groups=4, max_examples_per_batch=1000, clean_output=logits
    )
    assert calls == [2 * 4 * 8]  # 2 maps x 4 images x 8 distinct perturbed inputs, no clean row
    for method in maps:
        for name in SINGLE:
            torch.testing.assert_close(scores[method][name], expected[method][name])
    with pytest.raises(ValueError, match=r"clean_output: expected forward_func's output on the 4"):
        score_attributions(cnn, images, maps, clean_output=logits[:3])
    with pytest.raises(TypeError, match="clean_output: expected the model's output, a Tensor"):
        score_attributions(cnn, images, maps, clean_output=logits.tolist())


def test_jobs_too_many_to_pack_into_one_key_are_deduplicated_row_by_row_alike(
    cnn, images, monkeypatch
):
    from captum_saco.metrics._core import perturbation

    torch.manual_seed(41)
    maps = {"a": torch.rand(4, 8, 8), "b": torch.rand(4, 3, 8, 8)}
    packed = score_attributions(cnn, images, maps, n_groups=4)
    counting, calls = counting_rows(cnn)
    monkeypatch.setattr(perturbation, "JOB_KEY_LIMIT", 1)
    by_rows = score_attributions(counting, images, maps, n_groups=4, max_examples_per_batch=1000)
    assert calls == [4 + 2 * 4 * 8]
    for method in maps:
        for name in SINGLE:
            assert torch.equal(by_rows[method][name], packed[method][name]), (method, name)


def test_an_attribution_that_does_not_fit_is_named_by_its_method(cnn, images):
    maps = {"fits": torch.rand(4, 8, 8), "too_few": torch.rand(3, 8, 8)}
    with pytest.raises(ValueError, match=r"attributions\['too_few'\]: cannot match .*\(3, 8, 8\)"):
        score_attributions(cnn, images, maps)
    two_inputs = {"fits": (torch.rand(4, 8, 8), torch.rand(4, 5)), "bad": (torch.rand(4, 8, 8),)}
    with pytest.raises(ValueError, match=r"attributions\['bad'\]: expected one attribution per"):
        score_attributions(lambda x, b: cnn(x) + b, (images, torch.zeros(4, 5)), two_inputs)


def test_metrics_may_be_chosen_and_unknown_ones_are_refused(cnn, images):
    maps = {"a": torch.rand(4, 8, 8)}
    assert list(score_attributions(cnn, images, maps, metrics=["auc"])["a"]) == ["auc"]
    with pytest.raises(ValueError, match="metrics: expected a non-empty sequence"):
        score_attributions(cnn, images, maps, metrics=["saco", "aupc"])
    with pytest.raises(ValueError, match="metrics: expected a non-empty sequence"):
        score_attributions(cnn, images, maps, metrics=[])
    with pytest.raises(TypeError, match="attributions: expected a non-empty mapping"):
        score_attributions(cnn, images, torch.rand(4, 8, 8))


def test_a_hugging_face_style_output_and_a_per_example_target_are_accepted(cnn, images):
    class Output:
        def __init__(self, logits: Tensor) -> None:
            self.logits = logits

    model = nn.Module()
    model.forward = lambda x: Output(cnn(x))  # type: ignore[method-assign]
    target = torch.tensor([0, 1, 2, 3])
    scores = score_attributions(model, images, {"a": torch.rand(4, 8, 8)}, target=target)
    assert scores["a"]["saco"].shape == (4,)


@pytest.mark.parametrize(
    "bad, error", [(0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_a_bad_max_examples_per_batch_is_refused_before_any_forward_pass(cnn, images, bad, error):
    counting, calls = counting_rows(cnn)
    with pytest.raises(error, match="max_examples_per_batch: expected a positive int or None"):
        score_attributions(counting, images, {"a": torch.rand(4, 8, 8)}, max_examples_per_batch=bad)
    assert calls == []


def _tensor_operations(job: Callable[[], object]) -> int:
    """The tensor operations ``job`` dispatches (deterministic, unlike its time)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counting(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counting.count += 1
            return func(*args, **(kwargs or {}))

    with Counting():
        job()
    return Counting.count


def test_the_methods_are_ranked_and_read_together_not_one_by_one(images):
    # A one-layer model, so that the count is the metrics' own work and not the forward passes'.
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    torch.manual_seed(42)

    def operations(n_methods: int) -> int:
        maps = {f"m{i}": torch.rand(4, 8, 8) for i in range(n_methods)}
        return _tensor_operations(
            lambda: score_attributions(model, images, maps, max_examples_per_batch=10_000)
        )

    per_further_method = (operations(10) - operations(2)) / 8
    # Each method's own: matching its maps to the inputs (about 25); the forward
    # passes take the methods' rankings stacked, not one view per method (that
    # was about 45). Ranking, grouping and reading each method alone took about 230.
    assert per_further_method < 35, per_further_method


def test_maps_of_different_dtypes_are_each_ranked_and_read_in_their_own(cnn, images):
    torch.manual_seed(43)
    maps = {
        "double": torch.randn(4, 8, 8, dtype=torch.float64),
        "single": torch.randn(4, 8, 8),
        "half": torch.randn(4, 8, 8).half(),
    }
    scores = score_attributions(cnn, images, maps, n_groups=5, max_examples_per_batch=1000)
    expected = _separately(cnn, images, maps, 5, max_examples_per_batch=1000)
    for method in maps:
        for name in SINGLE:
            assert scores[method][name].dtype == expected[method][name].dtype, (method, name)
            assert torch.equal(scores[method][name], expected[method][name]), (method, name)


def test_a_per_example_feature_mask_serves_every_method_as_it_serves_one(cnn, images):
    torch.manual_seed(44)
    # Example 1 uses fewer regions than the others.
    mask = torch.randint(0, 12, (4, 1, 8, 8))
    mask[1] = mask[1] % 6
    maps = {"a": torch.randn(4, 8, 8), "b": torch.randn(4, 3, 8, 8), "c": torch.rand(4, 2, 2)}
    scores = score_attributions(
        cnn, images, maps, n_groups=4, feature_mask=mask, max_examples_per_batch=1000
    )
    expected = _separately(cnn, images, maps, 4, feature_mask=mask, max_examples_per_batch=1000)
    for method in maps:
        for name in SINGLE:
            assert torch.equal(scores[method][name], expected[method][name]), (method, name)


def test_a_warning_names_the_method_and_points_at_the_callers_line(cnn, images):
    maps = {"fine": torch.rand(4, 8, 8), "broken": torch.rand(4, 8, 8)}
    maps["broken"][1, 2, 3] = torch.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        score_attributions(cnn, images, maps, metrics=["saco", "aopc"])
    messages = [str(w.message) for w in caught]
    assert messages == [
        "deletion_curve of attributions['broken']: the attributions of 1 of 4 examples "
        "(indices [1]) hold NaN or infinite values; their metrics are NaN",
        "saco of attributions['broken']: the attributions of 1 of 4 examples (indices [1]) "
        "hold NaN or infinite values; returning NaN for them",
    ]
    assert {w.filename for w in caught} == {__file__}


def test_ranking_explanations_together_ranks_each_example_as_ranking_it_alone(images):
    from captum_saco.metrics._core.perturbation import (
        match_attributions,
        rank_features,
        rank_matched,
    )

    torch.manual_seed(45)
    inputs = (images, torch.randn(4, 6))
    mask = (torch.randint(0, 9, (4, 1, 8, 8)), torch.randint(5, 12, (1, 6)))
    attributions = [(torch.randn(4, 8, 8), torch.randn(4, 6)) for _ in range(3)]
    attributions[1][0][2] = torch.nan
    together = rank_matched(
        inputs, [match_attributions(inputs, a, "attributions") for a in attributions], mask
    )
    for i, a in enumerate(attributions):
        alone = rank_features(inputs, a, mask)
        rows = slice(4 * i, 4 * (i + 1))  # method by method
        for field in ("salience", "order", "feature_counts", "constant", "finite"):
            assert torch.equal(getattr(together, field)[rows], getattr(alone, field)), (i, field)
        for r_together, r_alone in zip(together.element_ranks, alone.element_ranks):
            assert torch.equal(r_together[rows], r_alone), i
    float64 = match_attributions(inputs, (torch.randn(4, 8, 8).double(), torch.randn(4, 6)), "b")
    with pytest.raises(ValueError, match="rank_matched: expected maps of one dtype"):
        rank_matched(inputs, [match_attributions(inputs, attributions[0], "a"), float64], mask)


def test_stacks_of_methods_are_bounded_in_size_and_score_as_one_stack(cnn, images, monkeypatch):
    from captum_saco.metrics._core import scoring

    torch.manual_seed(46)
    maps = {f"m{i}": torch.rand(4, 8, 8) for i in range(5)}
    maps["m1"] = maps["m1"].double()
    maps["m3"][0, 1, 2] = torch.nan
    nan_in_m3 = r"of attributions\['m3'\]: the attributions of 1 of 4 examples \(indices \[0\]\)"
    with pytest.warns(UserWarning, match=nan_in_m3):
        one_stack = score_attributions(cnn, images, maps, n_groups=4, max_examples_per_batch=1000)
    matched = {m: scoring.match_attributions((images,), a, m) for m, a in maps.items()}
    assert scoring._stacks(matched, 4 * 64) == [["m0", "m2", "m3", "m4"], ["m1"]]
    # Two methods of 4 images of 64 pixels per stack.
    monkeypatch.setattr(scoring, "STACK_ELEMENTS", 2 * 4 * 64)
    assert scoring._stacks(matched, 4 * 64) == [["m0", "m2"], ["m3", "m4"], ["m1"]]
    with pytest.warns(UserWarning, match=nan_in_m3):
        stacked = score_attributions(cnn, images, maps, n_groups=4, max_examples_per_batch=1000)
    assert list(stacked) == list(maps)
    for method in maps:
        for name in SINGLE:
            torch.testing.assert_close(
                stacked[method][name], one_stack[method][name], rtol=0, atol=0, equal_nan=True
            )
