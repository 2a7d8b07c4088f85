"""Discretisation rules of EdMIPS section 4.7 (eq. 18, 19) on plain probability vectors."""

import json
import math

import numpy as np
import pytest
import torch

from core.errors import ConfigError
from papers.edmips.discretize import choose_bits, discretize_state, edmips_avg_bits
from papers.edmips.rules import (
    multinomial_counts,
    multinomial_select,
    select,
    winner_take_all,
    winner_take_all_alpha,
)


def test_winner_take_all_picks_highest_pi_and_ignores_magnitudes():
    assert winner_take_all(torch.tensor([0.1, 0.5, 0.4])) == 1
    # only the ranking matters (eq. 18 is deterministic)
    assert winner_take_all(torch.tensor([0.34, 0.33, 0.33])) == 0
    assert winner_take_all(torch.tensor([0.0, 0.0, 1.0])) == 2


def test_winner_take_all_tie_goes_to_first_candidate():
    assert winner_take_all(torch.full((4,), 0.25)) == 0


def test_multinomial_counts_sum_to_trials_and_follow_pi():
    gen = torch.Generator().manual_seed(0)
    counts = multinomial_counts(torch.tensor([0.7, 0.2, 0.1]), 5000, gen)
    assert int(counts.sum()) == 5000
    expected = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    assert torch.allclose(counts.double() / 5000, expected, atol=0.03)


def test_multinomial_one_trial_is_a_categorical_sample():
    gen = torch.Generator().manual_seed(1)
    picks = [multinomial_select(torch.tensor([0.6, 0.4]), 1, gen) for _ in range(2000)]
    frac = sum(1 for p in picks if p == 1) / len(picks)
    assert 0.35 < frac < 0.45  # the minority candidate is chosen about 40% of the time


def test_multinomial_many_trials_converges_to_argmax():
    gen = torch.Generator().manual_seed(2)
    pi = torch.tensor([0.45, 0.55])
    few = [multinomial_select(pi, 1, gen) for _ in range(400)]
    many = [multinomial_select(pi, 2000, gen) for _ in range(50)]
    assert 0 in few and 1 in few
    assert all(p == winner_take_all(pi) for p in many)


def test_multinomial_tie_in_counts_goes_to_higher_pi():
    # n=2 over two live candidates: a 1-1 tie is broken towards the larger pi (index 2), never index 1
    pi = torch.tensor([0.0, 0.49, 0.51])
    gen_counts, gen_picks = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ties = 0
    for _ in range(200):
        counts = tuple(multinomial_counts(pi, 2, gen_counts).tolist())
        pick = multinomial_select(pi, 2, gen_picks)
        expected = {(0, 2, 0): 1, (0, 0, 2): 2, (0, 1, 1): 2}[counts]
        assert pick == expected
        ties += counts == (0, 1, 1)
    assert ties > 50


@pytest.mark.parametrize("bad", [[0.5, 0.6], [-0.1, 1.1], [[0.5, 0.5]], []])
def test_rules_reject_non_distributions(bad):
    with pytest.raises(ConfigError):
        winner_take_all(torch.tensor(bad))


def test_select_rejects_unknown_rule_and_zero_trials():
    with pytest.raises(ConfigError, match="discretize.rule"):
        select(torch.tensor([1.0]), "gumbel")
    with pytest.raises(ConfigError, match="trials"):
        select(torch.tensor([1.0]), "multinomial", trials=0)


def _layer(name: str, macs: float, pi_w: list[float], pi_a: list[float]) -> dict:
    return {"name": name, "w_candidates": [1, 2, 3, 4], "a_candidates": [2, 3, 4], "macs": macs,
            "pi_w": pi_w, "pi_a": pi_a, "alpha_w": [math.log(p) for p in pi_w],
            "alpha_a": [math.log(p) for p in pi_a]}


def _state():
    return {"model": "toy", "eta": 0.1, "complexity": "bops", "layers": [
        _layer("a", 100.0, [0.1, 0.6, 0.2, 0.1], [0.2, 0.2, 0.6]),
        _layer("b", 300.0, [0.7, 0.1, 0.1, 0.1], [0.5, 0.3, 0.2])]}


def test_argmax_is_taken_on_the_raw_alphas_where_float32_pi_ties():
    """Alphas one ulp apart: the float32 softmax stored in arch_state.json ties, the alphas do not. Eq. 18
    (and the official code, ``alpha.argmax()``) keeps the larger alpha; a JSON round trip keeps them."""
    alpha = torch.full((4,), 0.01)
    alpha[2] = torch.nextafter(alpha[2], torch.tensor(1.0))
    pi = torch.softmax(alpha, 0)
    assert torch.equal(pi, torch.full((4,), 0.25))  # the tie in float32
    layer = {"name": "l", "w_candidates": [1, 2, 3, 4], "a_candidates": [2, 3, 4], "macs": 1.0,
             "pi_w": pi.tolist(), "alpha_w": alpha.tolist(), "pi_a": [0.2, 0.3, 0.5],
             "alpha_a": [0.0, 0.1, 0.2]}
    layer = json.loads(json.dumps(layer))
    assert torch.equal(torch.tensor(layer["alpha_w"]), alpha)
    assert choose_bits([layer]) == {"l": (3, 4)}
    assert winner_take_all(torch.tensor(layer["pi_w"])) == 0  # what pi alone gives
    assert int(np.argmax(alpha.numpy())) == winner_take_all_alpha(layer["alpha_w"]) == 2


def test_choose_bits_argmax_decouples_weights_and_activations():
    assert choose_bits(_state()["layers"]) == {"a": (2, 4), "b": (1, 2)}


def test_edmips_avg_bits_is_sqrt_of_macs_weighted_bitops():
    bops, avg = edmips_avg_bits(_state()["layers"], {"a": (2, 4), "b": (1, 2)})
    assert bops == 100 * 8 + 300 * 2
    assert avg == pytest.approx(((100 * 8 + 300 * 2) / 400) ** 0.5)


def test_discretize_state_meta_and_sample_selection():
    policy, summary = discretize_state(_state())
    assert policy.meta["method"] == "edmips" and policy.meta["convention"] == "edmips"
    assert policy.meta["bops"] == 1400 and len(summary) == 1
    policy, summary = discretize_state(_state(), rule="multinomial", trials=1, samples=8,
                                       target_avg_bits=1.5, seed=0)
    assert len(summary) == 8
    best = min(summary, key=lambda s: abs(s["avg_bits"] - 1.5))
    assert policy.meta["sample"] == best["sample"]
    assert policy.meta["avg_bits"] == pytest.approx(best["avg_bits"])
    with pytest.raises(ConfigError, match="samples"):
        discretize_state(_state(), rule="argmax", samples=2)


def test_w_clip_bound_reaches_every_gaussian_quantizer():
    """``quant.w_clip_bound`` (grid by default; float64: the official bound) in search and final models."""
    from core.models import build_model
    from core.nn import quantize_model
    from core.quant.gaussian import GaussianQuantizer
    from papers.edmips.config import QuantConfig
    from papers.edmips.models import composite_spec, fixed_spec

    for clip_bound in ("grid", "float64"):
        quant = QuantConfig(w_clip_bound=clip_bound)
        for spec in (composite_spec(quant), fixed_spec(quant, 2, 2)):
            model = build_model("digits_resnet", num_classes=10, widths=[4, 8, 8], blocks=1)
            quantize_model(model, spec)
            found = [m.clip_bound for m in model.modules() if isinstance(m, GaussianQuantizer)]
            assert found and set(found) == {clip_bound}
