"""How much to trust the verdict: the methods' rank stability across K, and
the metrics' agreement on the methods (Kendall's tau-b)."""

import json
import math

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from captum_saco.cli import main
from captum_saco.evaluation import evaluate
from captum_saco.evaluation.statistics import agreement, kendall_tau_b, stability


def test_kendall_tau_b_matches_a_hand_computed_case_with_ties() -> None:
    # pairs of (x, y) = (1,1) (2,3) (2,2) (3,2): 3 concordant, 1 discordant,
    # 1 tied in x only, 1 tied in y only, of 6: (3 - 1) / sqrt(5 * 5) = 0.4
    x = torch.tensor([1.0, 2.0, 2.0, 3.0])
    y = torch.tensor([1.0, 3.0, 2.0, 2.0])
    assert float(kendall_tau_b(x, y)) == pytest.approx(0.4, abs=1e-15)
    scipy_stats = pytest.importorskip("scipy.stats")
    assert float(kendall_tau_b(x, y)) == pytest.approx(scipy_stats.kendalltau(x, y).statistic)


def test_kendall_tau_b_leaves_nan_items_out_and_is_nan_when_undefined() -> None:
    nan = math.nan
    x = torch.tensor([[1.0, 2.0, nan, 3.0], [1.0, 1.0, 1.0, 1.0], [1.0, nan, nan, nan]])
    y = torch.tensor([[3.0, 2.0, 0.0, 1.0], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    tau = kendall_tau_b(x, y)
    assert tau[0] == -1.0 and math.isnan(tau[1]) and math.isnan(tau[2])


def test_stability_names_the_pairs_of_methods_that_swap() -> None:
    methods = ["a", "b", "c"]
    means = {
        5: {("a", "saco"): 0.5, ("b", "saco"): 0.3, ("c", "saco"): 0.1},
        10: {("a", "saco"): 0.2, ("b", "saco"): 0.4, ("c", "saco"): 0.1},
    }
    found = stability(means, methods, ["saco"])
    # (a, b) discordant, (a, c) and (b, c) concordant: (2 - 1) / 3
    assert found[("saco", 5, 10)]["tau_b"] == pytest.approx(1 / 3)
    assert found[("saco", 5, 10)]["swaps"] == [("a", "b")]


def test_agreement_ranks_lower_is_better_metrics_negated_best_first() -> None:
    nan = math.nan
    values = {
        # three images; aopc higher is better, auc lower is better
        ("a", "aopc"): torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64),
        ("b", "aopc"): torch.tensor([0.5, 0.6, nan], dtype=torch.float64),
        ("c", "aopc"): torch.tensor([0.1, 0.9, 0.1], dtype=torch.float64),
        ("a", "auc"): torch.tensor([0.1, 0.1, 0.4], dtype=torch.float64),
        ("b", "auc"): torch.tensor([0.2, 0.1, 0.2], dtype=torch.float64),
        ("c", "auc"): torch.tensor([0.3, 0.3, 0.1], dtype=torch.float64),
    }
    found = agreement(values, ["a", "b", "c"], {"aopc": "higher is better", "auc": "lower is better"})
    pair = found[("aopc", "auc")]
    # means: aopc a .8 > b .55 > c .367; auc b .167 < a .2 < c .233 (b best):
    # (a, b) discordant, (a, c) and (b, c) concordant: 1 / 3
    assert pair["tau_b"] == pytest.approx(1 / 3)
    # image 0: the same order (1); image 1: aopc c > a > b, auc a, b tied best then c:
    # pairs (a,b) tied in auc, (a,c) discordant, (b,c) discordant: -2 / sqrt(3 * 2);
    # image 2: b left out, aopc a > c, auc c better than a: -1
    expected = (1 - 2 / math.sqrt(6) - 1) / 3
    assert pair["per_image_tau_b"] == pytest.approx(expected) and pair["n_images"] == 3


@pytest.fixture(scope="module")
def model() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=2, num_heads=2
    ).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))


METHODS = ["random", "raw_attention", "saliency"]


def test_several_n_groups_give_the_result_of_each_and_their_rank_stability(model, images) -> None:
    result = evaluate(model, images, methods=METHODS, metrics=["saco", "aopc"], n_groups=[2, 4])
    assert sorted(result.by_n_groups) == [2, 4] and result.by_n_groups[2] is result
    for k, part in result.by_n_groups.items():
        alone = evaluate(model, images, methods=METHODS, metrics=["saco", "aopc"], n_groups=k)
        assert {r.n_groups for r in part.rows} == {k}
        assert [(r.method, r.metric, r.mean) for r in part.rows] == [
            (r.method, r.metric, r.mean) for r in alone.rows
        ]
    assert sorted(result.stability) == [("aopc", 2, 4), ("saco", 2, 4)]
    means = {
        k: {(r.method, r.metric): r.mean for r in part.rows}
        for k, part in result.by_n_groups.items()
    }
    assert result.stability == stability(means, METHODS, ["saco", "aopc"])
    data = json.loads(result.to_json())
    assert data["n_groups"] == [2, 4] and len(data["results"]) == 12
    assert {(s["metric"], s["a"], s["b"]) for s in data["stability"]} == {
        ("saco", 2, 4),
        ("aopc", 2, 4),
    }
    text = str(result)
    assert "K = 2" in text and "K = 4" in text and "Rank stability across K" in text
    assert "Metric agreement" in text


def test_the_cli_takes_several_n_groups_and_writes_the_stability(capsys, tmp_path) -> None:
    path = tmp_path / "table.json"
    rc = main(
        [
            "--limit", "3", "--methods", "random", "saliency", "--metrics", "saco",
            "--n-groups", "5,10", "--no-progress", "--device", "cpu", "--output", str(path),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "Rank stability across K" in out
    data = json.loads(path.read_text())
    assert data["n_groups"] == [5, 10]
    assert [(r["method"], r["n_groups"]) for r in data["results"]] == [
        ("random", 5),
        ("saliency", 5),
        ("random", 10),
        ("saliency", 10),
    ]
    assert [(s["metric"], s["a"], s["b"]) for s in data["stability"]] == [("saco", 5, 10)]


def test_several_perturbations_give_a_result_each_and_their_rank_stability(model, images) -> None:
    # token_drop's features are the 4 patches
    both = ["baseline", "token_drop"]
    result = evaluate(model, images, methods=METHODS, metrics=["saco"], n_groups=4, perturbation=both)
    assert sorted(result.by_perturbation) == ["baseline", "token_drop"]
    assert result.by_n_groups == {} and result.perturbation == "baseline"
    dropped = evaluate(
        model, images, methods=METHODS, metrics=["saco"], n_groups=4, perturbation="token_drop"
    )
    assert [r.mean for r in result.by_perturbation["token_drop"].rows] == [
        r.mean for r in dropped.rows
    ]
    assert {r.perturbation for r in dropped.rows} == {"token_drop"}
    assert list(result.stability) == [("saco", "baseline", "token_drop")]
    data = json.loads(result.to_json())
    assert data["perturbation"] == ["baseline", "token_drop"]
    assert data["stability"][0]["setting"] == "perturbation"
    with pytest.raises(ValueError, match="perturbation: expected distinct names of"):
        evaluate(model, images, methods=METHODS, perturbation="blurr")


def test_the_cli_takes_several_perturbations(capsys, tmp_path) -> None:
    path = tmp_path / "table.json"
    rc = main(
        [
            "--limit", "3", "--methods", "random", "raw_attention", "--metrics", "saco",
            "--perturbation", "baseline,token_drop", "--no-progress", "--device", "cpu",
            "--output", str(path),
        ]
    )  # fmt: skip
    assert rc == 0 and "token_drop" in capsys.readouterr().out
    data = json.loads(path.read_text())
    assert [(r["method"], r["perturbation"]) for r in data["results"]] == [
        ("random", "baseline"),
        ("raw_attention", "baseline"),
        ("random", "token_drop"),
        ("raw_attention", "token_drop"),
    ]
