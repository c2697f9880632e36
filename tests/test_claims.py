"""The verdict rule of the claims table on constructed inputs: a clear win, a tie within noise, a loss."""

from __future__ import annotations

import math

import pytest
import torch

from valleys.app.claims import claims_markdown, demo_claims, paired, verdict
from valleys.app.stats import detectable_difference, seeds_needed, t_cdf, t_quantile


def test_verdict_rule_is_the_paired_t_test_with_n_minus_1_degrees_of_freedom():
    # 3 seeds: t_{0.975, 2} = 4.3027; 10 seeds: t_{0.975, 9} = 2.2622 (tables of Student's t)
    assert verdict(-0.01, 0.002, 3) == "holds"  # t = -5
    assert verdict(-0.01, 0.004, 3) == "within noise"  # t = -2.5: a "holds" under the normal 2-SE rule
    assert verdict(-0.01, 0.004, 10) == "holds"  # the same t with 9 degrees of freedom
    assert verdict(-0.01, 0.0045, 10) == "within noise"  # t = -2.22
    assert verdict(0.01, 0.002, 3) == "does not hold"
    assert verdict(0.0, 0.0, 3) == "within noise" and verdict(-0.01, 0.0, 3) == "holds"
    assert verdict(-0.01, math.nan, 1) == "holds (one seed: no spread)"
    assert verdict(0.01, 0.001, 1) == "does not hold (one seed: no spread)"


def test_student_t_against_closed_forms_and_tables():
    # df = 1 (Cauchy) and df = 2 have closed-form CDFs
    for t in (-3.0, -0.7, 0.0, 0.4, 1.3, 12.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)
    table = {(0.975, 1): 12.706205, (0.975, 2): 4.302653, (0.975, 9): 2.262157, (0.8, 2): 1.060660}
    for (p, df), q in table.items():
        assert t_quantile(p, df) == pytest.approx(q, abs=1e-6)
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)  # the normal limit
    assert t_quantile(0.1, 4) == pytest.approx(-t_quantile(0.9, 4), abs=1e-12)


def test_a_null_difference_is_within_noise_in_95_percent_of_3_seed_draws():
    g = torch.Generator().manual_seed(0)
    draws = torch.randn(4000, 3, generator=g, dtype=torch.float64) * 0.3  # true difference 0
    mean, se = draws.mean(1), draws.std(1) / math.sqrt(3)
    calls = [verdict(float(m), float(e), 3) for m, e in zip(mean, se, strict=True)]
    share = calls.count("within noise") / len(calls)
    # 95% +- 3 binomial standard errors (0.34 points); the normal 2-SE rule gives about 82% here
    assert abs(share - 0.95) < 3 * math.sqrt(0.95 * 0.05 / 4000), share
    old = float(((mean / se).abs() <= 2).double().mean())
    assert old < 0.86


def test_power_columns_on_constructed_inputs():
    # se = 1 over 3 seeds: (t_{0.975, 2} + t_{0.8, 2}) = 4.3027 + 1.0607
    assert detectable_difference(1.0, 3) == pytest.approx(5.363313, abs=1e-5)
    m = seeds_needed(0.1, 1.0)  # the fewest seeds whose detectable difference is at most 0.1 (sd 1)
    assert detectable_difference(1 / math.sqrt(m), m) <= 0.1 < detectable_difference(1 / math.sqrt(m - 1), m - 1)
    assert seeds_needed(1.0, 1.0) == 10 and seeds_needed(0.0, 1.0) is None and seeds_needed(1e-4, 1.0) is None
    # the detectable difference is detected about 80% of the time (the t-quantile rule is an approximation
    # of the noncentral t's power; 10 seeds, 3000 simulated studies)
    g = torch.Generator().manual_seed(1)
    sd, n = 1.0, 10
    delta = detectable_difference(sd / math.sqrt(n), n)
    draws = -delta + sd * torch.randn(3000, n, generator=g, dtype=torch.float64)
    calls = [verdict(float(d.mean()), float(d.std()) / math.sqrt(n), n) for d in draws]
    assert 0.74 < calls.count("holds") / len(calls) < 0.86
    row = paired("a beats b", "a", [0.10, 0.12, 0.11], "b", [0.20, 0.21, 0.22])
    assert row["detectable"] == pytest.approx(detectable_difference(row["se"], 3))
    assert row["seeds_needed"] == seeds_needed(row["difference"], row["se"] * math.sqrt(3)) == 2


def test_paired_differences_over_seeds():
    win = paired("a beats b", "a", [0.10, 0.12, 0.11], "b", [0.20, 0.21, 0.22])
    # differences -0.10, -0.09, -0.11: mean -0.1, sample std 0.01, standard error 0.01 / sqrt(3)
    assert win["difference"] == pytest.approx(-0.1) and win["se"] == pytest.approx(0.01 / math.sqrt(3))
    assert win["verdict"] == "holds"
    tie = paired("a beats b", "a", [0.10, 0.30, 0.20], "b", [0.20, 0.20, 0.21])
    assert tie["verdict"] == "within noise"
    loss = paired("a beats b", "a", [0.30, 0.31, 0.32], "b", [0.20, 0.21, 0.22])
    assert loss["verdict"] == "does not hold" and loss["difference"] == pytest.approx(0.1)
    higher = paired("a detects better", "a", [0.8, 0.82], "b", [0.7, 0.71], lower_is_better=False)
    assert higher["verdict"] == "holds" and higher["difference"] == pytest.approx(-0.105)
    with pytest.raises(ValueError, match="same non-empty number"):
        paired("x", "a", [0.1], "b", [0.1, 0.2])


def test_demo_claims_read_the_demo_results():
    def runs(errors, nlls, eces):
        return [
            {"metrics": {"test": {"accuracy": 1 - e, "nll": n, "ece": c}}}
            for e, n, c in zip(errors, nlls, eces, strict=True)
        ]

    per_row = {
        "SGD": runs([0.05, 0.052, 0.051], [0.16, 0.17, 0.165], [0.02, 0.02, 0.021]),
        "SWA": runs([0.045, 0.046, 0.047], [0.14, 0.141, 0.139], [0.018, 0.017, 0.019]),
        "SWAG": runs([0.045, 0.046, 0.047], [0.138, 0.139, 0.140], [0.016, 0.017, 0.018]),
        "FGE": runs([0.056, 0.057, 0.058], [0.15, 0.15, 0.15], [0.02, 0.02, 0.02]),
    }
    rows = demo_claims(
        per_row,
        {"SGD": [0.70, 0.71, 0.72], "SWAG": [0.75, 0.76, 0.77]},
        {"ensemble_test_accuracy": [0.947, 0.946, 0.948], "best_member_test_accuracy": [0.951, 0.950, 0.952]},
        {"pairs": [{"curve_max_test_error": 0.06, "segment_max_test_error": 0.6}]},
        {
            "per_seed": [
                {"eig_SWA": 1.0, "eig_SGD": 1.9, "width_SWA": 4.6, "width_SGD": 4.1},
                {"eig_SWA": 0.9, "eig_SGD": 1.8, "width_SWA": 4.7, "width_SGD": 4.2},
            ]
        },
    )
    verdicts = {r["claim"]: r["verdict"] for r in rows}
    assert verdicts["SWA has lower test error than SGD at the same budget"] == "holds"
    assert verdicts["SWAG has lower test NLL than SWA"] == "within noise"
    assert verdicts["SWAG detects out-of-distribution inputs at least as well as SGD"] == "holds"
    assert verdicts["FGE has lower test error than one network of the same budget"] == "does not hold"
    assert verdicts["FGE's ensemble beats its best snapshot"] == "does not hold"
    assert verdicts["the curve's barrier is below the straight segment's"] == "holds (one seed: no spread)"
    assert verdicts["SWA is flatter than SGD"] == "holds" and verdicts["SWA sits in a wider valley than SGD"] == "holds"
    table = "\n".join(claims_markdown(rows))
    assert (
        "| SWA has lower test error than SGD at the same budget | test error | SWA 4.60% | SGD 5.10% "
        "| -0.50 ± 0.06 | 3 | holds | 0.31 | 3 |" in table  # detectable (4.3027 + 1.0607) x 0.0577; 3 seeds
    )


def test_budget_multiples_are_checked():
    from valleys.app.demo import check_budgets

    assert check_budgets([1.5]) == [1.0, 1.5] and check_budgets([1, 1.25, 1.5]) == [1.0, 1.25, 1.5]
    for bad, msg in (([0.5], ">= 1"), ([1.5, 1.5], "twice"), ([float("nan")], ">= 1")):
        with pytest.raises(ValueError, match=msg):
            check_budgets(bad)


def test_demo_refuses_a_budget_below_one_before_any_work(tmp_path, capsys):
    from cli_harness import refused

    refused(["demo", "--quick", "--budgets", "0.5", "--out", tmp_path / "demo"], capsys, names=["--budgets", ">= 1"])
    assert not (tmp_path / "demo").exists()


def test_preset_registry_names_every_configuration_in_one_place():
    from valleys.app.demo import DEMO_CONFIG, preset_config
    from valleys.app.presets import DEFAULT_PRESET, PRESETS, get_preset, presets_help

    assert DEFAULT_PRESET in PRESETS and preset_config(DEFAULT_PRESET) == DEMO_CONFIG
    for name, p in PRESETS.items():
        assert p.name == name and get_preset(name) is p and name in presets_help() and p.chosen
        cfg = preset_config(name).resolved()  # every preset is a valid configuration
        assert cfg.epochs == p.train["epochs"] and cfg.dataset == p.train["dataset"]
    with pytest.raises(ValueError) as e:
        get_preset("cifar10")
    assert "'cifar10'" in str(e.value) and all(n in str(e.value) for n in PRESETS)


def test_an_unknown_preset_is_refused_listing_the_valid_ones(tmp_path, capsys):
    from cli_harness import refused
    from valleys.app.cli import _parser
    from valleys.app.presets import PRESETS

    refused(
        ["demo", "--preset", "cifar10", "--out", tmp_path / "demo"], capsys, names=["--preset", "cifar10", *PRESETS]
    )
    assert not (tmp_path / "demo").exists()
    demo = _parser()._subparsers._group_actions[0].choices["demo"]
    assert all(n in demo.format_help() for n in PRESETS)  # --help lists them


def test_the_demo_runs_the_preset_it_is_given(tmp_path, monkeypatch):
    """``--preset`` picks the base settings and the quick budget; flags given change them."""
    from valleys.app import cli, demo
    from valleys.app.presets import PRESETS, Preset

    seen = {}
    monkeypatch.setitem(
        PRESETS,
        "tiny",
        Preset(
            name="tiny",
            summary="a test preset",
            chosen="by hand",
            train={"dataset": "digits", "model": "mlp", "epochs": 7, "lr": 0.05},
            quick={"epochs": 3},
            semisup=None,
            ood={"lr": 0.02, "swa_lr": 0.02},
            subspace={"samples": 4},
        ),
    )
    monkeypatch.setattr(demo, "_demo_body", lambda demo, **k: seen.update(base=demo.base, plan=demo) or {})
    from valleys.app.cli import main

    parser = cli._parser()
    assert "tiny" in parser._subparsers._group_actions[0].choices["demo"].format_help()
    assert main(["demo", "--preset", "tiny", "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert (seen["base"].dataset, seen["base"].model, seen["base"].epochs, seen["base"].lr) == (
        "digits",
        "mlp",
        7,
        0.05,
    )
    assert seen["plan"].semi is None  # semisup: the preset has none, so the section is skipped
    assert seen["plan"].preset == "tiny"
    ood, subspace = seen["plan"].ood, seen["plan"].subspace
    assert {m: (c.ood_split, c.lr, c.swa_lr, c.epochs) for m, c in ood.items()} == {
        "sgd": (True, 0.02, 0.02, 7),
        "swag": (True, 0.02, 0.02, 7),
    }  # the preset's OOD settings
    assert subspace == {"samples": 4}
    assert (
        main(
            [
                "demo",
                "--preset",
                "tiny",
                "--quick",
                "--lr",
                "0.2",
                "--out",
                str(tmp_path / "b"),
                "--overwrite",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (seen["base"].epochs, seen["base"].lr) == (3, 0.2)
    assert {c.lr for c in seen["plan"].ood.values()} == {0.2}  # the user's --lr holds for the OOD runs too
    assert seen["plan"].subspace is True  # --quick: the section's quick settings, not the preset's full ones
    # the preset's own budget keeps its SWA start; a new budget gets the default for it (half the epochs)
    monkeypatch.setitem(
        PRESETS,
        "tiny",
        Preset(
            name="tiny",
            summary="a test preset",
            chosen="by hand",
            train={"dataset": "digits", "model": "mlp", "epochs": 7, "swa_start": 2},
            semisup={"train_subset": 500},
        ),
    )
    assert main(["demo", "--preset", "tiny", "--epochs", "7", "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    assert seen["base"].swa_start == 2
    assert main(["demo", "--preset", "tiny", "--epochs", "9", "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    assert seen["base"].swa_start is None and seen["plan"].cfgs["swag"].swa_start == 4
    # a data setting the user gives wins over the preset's own semi-supervised one
    assert seen["plan"].semi.train_subset == 500
    assert (
        main(["demo", "--preset", "tiny", "--train-subset", "300", "--out", str(tmp_path / "e"), "--no-progress"]) == 0
    )
    assert seen["plan"].semi.train_subset == 300 and seen["base"].train_subset == 300


def test_ensemble_accuracy_of_the_first_k_members():
    import torch

    from valleys.app.evaluate import prefix_accuracy

    targets = torch.tensor([0, 1, 1])
    p1 = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])  # right on 1 of 3
    p2 = torch.tensor([[0.2, 0.8], [0.1, 0.9], [0.55, 0.45]])  # mean with p1: [.55 .45] [.35 .65] [.575 .425]
    p3 = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.0, 1.0]])  # mean of 3: [.667 .333] [.4 .6] [.383 .617]
    assert prefix_accuracy([p1, p2, p3], targets) == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_more_claims_snapshots_unbounded_widths_subspaces_and_semisup_rows():
    def runs(nlls):
        return [{"metrics": {"test": {"accuracy": 0.9, "nll": n, "ece": 0.01}}} for n in nlls]

    per_row = {"SWA": runs([0.30, 0.31, 0.32])}
    rows = demo_claims(
        per_row,
        None,
        {
            "ensemble_test_accuracy": [0.90, 0.91, 0.92],
            "best_member_test_accuracy": [0.89, 0.9, 0.91],
            "ensemble_prefix_test_accuracy": [[0.85, 0.88, 0.90], [0.86, 0.9, 0.91], [0.87, 0.9, 0.92]],
        },
        None,
        {
            "per_seed": [
                {
                    "eig_SWA": 1.0,
                    "eig_SGD": 2.0,
                    "width_SWA": math.inf,
                    "width_SGD": 4.0,
                    "reach": 10.0,
                    "width_floor_SWA": 8.0,
                    "width_floor_SGD": 4.0,
                },
                {"eig_SWA": 1.0, "eig_SGD": 2.0, "width_SWA": 9.0, "width_SGD": 4.0, "reach": 12.0},
            ]
        },
        {
            "per_seed": {
                "PCA + ESS": [{"test": {"nll": n}} for n in (0.28, 0.29, 0.30)],
                "random + ESS": [{"test": {"nll": n}} for n in (0.29, 0.30, 0.31)],
            }
        },
        [
            paired(
                "semi-supervised: pi beats supervised-only on the same labels",
                "pi",
                [0.1, 0.11],
                "none",
                [0.2, 0.21],
                metric="test error",
            )
        ],
    )
    by = {r["claim"]: r for r in rows}
    snap = by["FGE's accuracy rises with the number of snapshots (3 against 1)"]
    assert snap["difference"] == pytest.approx(-0.05) and snap["verdict"] == "holds"
    wide = by["SWA sits in a wider valley than SGD"]
    # seed 0: rays that never rose counted as the reach (floor 8.0); seed 1: its finite mean width 9.0
    assert wide["a_mean"] == pytest.approx(8.5) and "counted as the reach" in wide["metric"]
    assert by["subspace inference (PCA + ESS) has lower test NLL than SWA"]["difference"] == pytest.approx(-0.02)
    assert by["the PCA subspace beats a random one (ESS in both)"]["verdict"] == "holds"
    assert by["semi-supervised: pi beats supervised-only on the same labels"]["verdict"] == "holds"
    # an infinite width without a recorded floor (an older folder) leaves the claim out rather than guess
    g = {"per_seed": [{"eig_SWA": 1.0, "eig_SGD": 2.0, "width_SWA": math.inf, "width_SGD": 4.0}]}
    assert "SWA sits in a wider valley than SGD" not in {r["claim"] for r in demo_claims({}, geometry=g)}


def test_a_run_that_did_not_train_is_named(tmp_path):
    """The OOD SGD run of seed 0 at LR 0.1 once ended at chance (training accuracy 19.9% on 5 classes): the
    demo names such a run instead of letting it pass silently into the claims."""
    import json

    from valleys.app.demo import untrained_runs

    for name, acc in (("ood-sgd-seed0", 0.199), ("ood-swag-seed0", 0.97), ("sgd-seed0", 0.149)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(
            json.dumps({"epoch": 1, "train_accuracy": 0.9})
            + "\n"
            + json.dumps({"epoch": 2, "train_accuracy": acc})
            + "\n"
        )
    lines = untrained_runs(
        [(tmp_path / "ood-sgd-seed0", 5), (tmp_path / "ood-swag-seed0", 5), (tmp_path / "sgd-seed0", 10)]
    )
    # 14.9% on 10 classes is below 1.5 x chance (15%) as well; 97% on 5 classes is not
    assert len(lines) == 2 and lines[0].startswith("ood-sgd-seed0 did not train: training accuracy 19.9% at epoch 2")
    assert "chance 20.0%" in lines[0] and lines[1].startswith("sgd-seed0 did not train")


def test_demo_seeds_is_a_count_or_a_list(tmp_path, capsys):
    from cli_harness import refused
    from valleys.app.cli import _demo_seeds

    assert _demo_seeds([10]) == list(range(10)) and _demo_seeds([1]) == [0]
    assert _demo_seeds([3, 7]) == [3, 7] and _demo_seeds(None) is None
    refused(["demo", "--seeds", "0", "--out", tmp_path / "demo"], capsys, names=["--seeds 0", "at least 1"])
    refused(["demo", "--seeds", "2", "2", "--out", tmp_path / "demo"], capsys, names=["--seeds", "twice"])
    assert not (tmp_path / "demo").exists()


def test_a_claim_with_a_paper_effect_states_the_seeds_that_detect_it():
    """The seeds for the paper's effect: the fewest m whose 80%-power detectable difference
    (t_{0.975,m-1} + t_{0.8,m-1}) sd / sqrt(m) is within the effect, checked on both sides of m."""
    import math

    from valleys.app.claims import PAPER_EFFECTS, claims_markdown, paired, paper_effect
    from valleys.app.stats import t_quantile

    claim = "SWAG has lower test NLL than SWA"
    effect, source = PAPER_EFFECTS[claim]
    assert effect < 0 and "Maddox" in source and paper_effect("no such claim") is None
    a, b = [0.30, 0.31, 0.29, 0.32], [0.33, 0.32, 0.33, 0.36]
    row = paired(claim, "SWAG", a, "SWA", b, metric="test NLL")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    sd = math.sqrt(sum((d - sum(diffs) / 4) ** 2 for d in diffs) / 3)
    m = row["seeds_for_paper"]

    def detectable(k: int) -> float:
        return (t_quantile(0.975, k - 1) + t_quantile(0.8, k - 1)) * sd / math.sqrt(k)

    assert m >= 2 and detectable(m) <= abs(effect) and (m == 2 or detectable(m - 1) > abs(effect))
    assert row["paper_effect"] == effect and row["paper_source"] == source
    assert "paper_effect" not in paired("SWAG has lower ECE than SGD", "SWAG", a, "SGD", b, metric="test ECE")
    lines = claims_markdown([row])
    assert lines[0].endswith("| paper's effect | seeds for the paper's effect |")
    assert f"| {effect:+.4f} [1] | {m} |" in lines[2]
    assert any(line.startswith("[1] Maddox et al. 2019") for line in lines)
