"""BASQ's search pieces: evolution operators, dedupe and caching, best-so-far, fold splits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.errors import ConfigError
from papers.basq.evolution import EvolutionSearch, EvolutionSettings
from papers.basq.folds import dataset_targets, fold_indices, make_splits

SPACE = (7,) * 6


def _search(fitness, settings=None, seed=0, space=SPACE):
    """A search with a per-candidate ``fitness`` (the search calls it with a population at once)."""
    return EvolutionSearch(space, lambda cands: [fitness(c) for c in cands], settings or EvolutionSettings(),
                           np.random.default_rng(seed))


def test_crossover_takes_each_gene_from_one_of_two_top_parents():
    s = _search(lambda c: 0.0)
    s.top = [(0,) * 6, (1,) * 6, (2,) * 6]
    for _ in range(200):
        child = s.crossover_child()
        assert len(set(child)) <= 2 and set(child) <= {0, 1, 2}
    children = {s.crossover_child() for _ in range(200)}
    assert any(len(set(c)) == 2 for c in children)  # genes mix


def test_mutation_redraws_genes_with_the_given_probability():
    s = _search(lambda c: 0.0, EvolutionSettings(mutation_prob=0.0))
    s.top = [(3,) * 6]
    assert s.mutation_child() == (3,) * 6
    s = _search(lambda c: 0.0, EvolutionSettings(mutation_prob=0.5))
    s.top = [(3,) * 6]
    changed = np.mean([[g != 3 for g in s.mutation_child()] for _ in range(2000)])
    assert changed == pytest.approx(0.5 * 6 / 7, abs=0.03)  # a redrawn gene keeps its value 1/7 of the time


def test_duplicates_are_rejected_and_every_candidate_is_evaluated_once():
    calls = []

    def fitness(c):
        calls.append(c)
        return float(sum(c))

    result = _search(fitness).run()
    assert len(calls) == len(set(calls)) == len(result.evaluated)
    assert len(calls) <= 21 * 45 and len(calls) > 20 * 30
    s = _search(fitness)
    assert s.accept((0,) * 6) and not s.accept((0,) * 6)  # drawn twice before its evaluation
    s.evaluate_pending()
    assert not s.accept((0,) * 6) and s.cache[(0,) * 6] == 0.0


def test_best_so_far_never_decreases_and_the_search_improves_on_random():
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(6, 7))

    def fitness(c):
        return float(sum(weights[i, g] for i, g in enumerate(c)) + rng.normal() * 0.1)

    result = _search(fitness).run()
    curve = result.best_so_far
    assert len(curve) == 21 and all(b >= a for a, b in zip(curve, curve[1:]))
    assert result.best_fitness == curve[-1] == max(f for _, f in result.evaluated)
    optimum = weights.max(1).sum()
    first_population = [f for _, f in result.evaluated[:45]]
    assert curve[-1] > max(first_population) and curve[-1] > optimum - 0.5


def test_elitist_top_n_keeps_earlier_candidates_on_ties():
    s = _search(lambda c: 1.0, EvolutionSettings(parents=2))
    for c in [(0,) * 6, (1,) * 6, (2,) * 6]:
        s.accept(c)
    s.evaluate_pending()
    s.update_top([(0,) * 6, (1,) * 6])
    s.update_top([(2,) * 6])
    assert s.top == [(0,) * 6, (1,) * 6]


def test_small_space_is_exhausted_without_looping_forever():
    result = _search(lambda c: float(c[0] * 3 + c[1]), space=(3, 3)).run()
    assert len(result.evaluated) == 9 and result.best == (2, 2)
    empty = _search(lambda c: 50.0, space=()).run()
    assert empty.best == () and len(empty.evaluated) == 1


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="must not exceed the population"):
        _search(lambda c: 0.0, EvolutionSettings(population=20, crossover=15, mutation=15))


# ------------------------------------------------------------------------------------------ folds
@pytest.mark.parametrize("split", ["contiguous", "class_balanced"])
@pytest.mark.parametrize("n", [100, 397, 1003])
def test_fold_splits_are_disjoint_and_cover_the_set(split, n):
    targets = np.repeat(np.arange(10), math.ceil(n / 10))[:n]
    folds = fold_indices(targets, 10, split, seed=3)
    everything = np.concatenate(folds)
    assert len(everything) == n and set(everything.tolist()) == set(range(n))
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1


def test_contiguous_folds_hold_whole_classes_of_a_class_sorted_set_and_balanced_ones_every_class():
    targets = np.repeat(np.arange(20), 50)  # class-sorted, like ImageNet's validation folder
    contiguous = fold_indices(targets, 10, "contiguous")
    assert [sorted(set(targets[f])) for f in contiguous][:2] == [[0, 1], [2, 3]]
    assert contiguous[1].tolist() == list(range(100, 200))
    balanced = fold_indices(targets, 10, "class_balanced", seed=0)
    for f in balanced:
        assert np.bincount(targets[f], minlength=20).tolist() == [5] * 20


def test_kfold_and_spos_protocols():
    targets = np.arange(100) % 7
    splits = make_splits(targets, "kfold", 10, "contiguous")
    assert len(splits) == 10
    for s in splits:
        assert not set(s.search) & set(s.heldout) and len(s.search) + len(s.heldout) == 100
    spos = make_splits(targets, "spos", spos_fraction=0.16, seed=0)
    assert len(spos) == 1 and len(spos[0].search) == 16 and len(spos[0].heldout) == 100
    with pytest.raises(ConfigError, match="folds"):
        make_splits(targets, "kfold", 1)
    with pytest.raises(ConfigError, match="200 folds"):
        fold_indices(targets, 200)


def test_dataset_targets_reads_through_subsets():
    from torch.utils.data import Subset

    from core.data import DigitsDataset

    val = DigitsDataset("val", image_size=8)
    assert dataset_targets(Subset(val, [3, 1])).tolist() == [int(val.targets[3]), int(val.targets[1])]
