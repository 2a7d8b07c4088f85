"""The evolutionary search of one fold (supplementary Alg. 1 part 2, lines 5-14).

A candidate is a selection vector (one branch index per searchable block). Per fold:

1. ``P_0``: ``population`` uniformly random candidates (``Initialize_population``);
2. for ``i = 1..iterations``: evaluate ``P_{i-1}`` (``Inference``), keep the ``parents`` best candidates
   seen so far (``Update_topn``: elitist, a stable sort by accuracy, earlier candidates first on ties),
   then build ``P_i`` from ``crossover`` children (each gene from one of two parents drawn from the
   top-n), ``mutation`` children (a top-n parent, each gene redrawn uniformly with probability
   ``mutation_prob``) and uniformly random candidates up to ``population``;
3. evaluate ``P_T``, update the top-n; the fold's answer is its best candidate (``Top1_k``).

Every candidate is evaluated once per fold: a child equal to any candidate evaluated earlier in the fold
(parents included) is rejected and another is drawn (official); each operator stops after
``max_draws`` draws (official: 10 x the number wanted), so a population can come out smaller in a
small search space, and random filling stops when the space is exhausted or after
``100 x population`` draws. ``operator_order``: ``"paper"`` draws the crossover children first (the
order of Alg. 1), ``"official"`` the mutation children first.

With the defaults (45 per population, 20 iterations) a fold evaluates up to 21 x 45 = 945 candidates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from core.errors import ConfigError

Candidate = tuple[int, ...]


@dataclass
class EvolutionSettings:
    """Alg. 1 part 2 hyper-parameters (defaults: the paper's / official values)."""

    population: int = 45  # p
    iterations: int = 20  # T
    parents: int = 10  # top-n kept as parents (official select_num)
    crossover: int = 15  # c
    mutation: int = 15  # m
    mutation_prob: float = 0.1  # prob
    max_draws_factor: int = 10  # each operator stops after factor x (number wanted) draws (official 10)
    operator_order: Literal["paper", "official"] = "paper"

    def validate(self) -> None:
        from core.config import require, require_range

        require_range(self, ["population", "parents", "max_draws_factor"], ge=1)
        require_range(self, ["iterations", "crossover", "mutation"], ge=0)
        require_range(self, "mutation_prob", ge=0, le=1)
        require(self.crossover + self.mutation <= self.population, "crossover",
                f"crossover + mutation ({self.crossover} + {self.mutation}) must not exceed the population "
                f"({self.population})")


@dataclass
class EvolutionResult:
    """``best``: the fold's Top1_k; ``history``: one record per generation (``best_so_far`` never
    decreases); ``evaluated``: every candidate with its fitness, in evaluation order."""

    best: Candidate
    best_fitness: float
    history: list[dict] = field(default_factory=list)
    evaluated: list[tuple[Candidate, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def best_so_far(self) -> list[float]:
        return [h["best_so_far"] for h in self.history]


class EvolutionSearch:
    """One fold's search: ``fitness(candidates) -> [accuracy, ...]`` (higher is better; a whole
    population at once, so an implementation may evaluate the candidates together) over ``space`` (the
    number of branches of each block; empty: a model without searchable blocks has the one candidate
    ``()``); ``rng`` a seeded ``numpy.random.Generator``.

    A population's candidates are all drawn (each operator's children depend on the top-n only, and a
    child is rejected when it was drawn before, whatever its fitness), then evaluated together; the
    result is the same as evaluating each on its draw, as the official code does."""

    def __init__(self, space: Sequence[int], fitness: Callable[[list[Candidate]], list[float]],
                 settings: EvolutionSettings, rng: np.random.Generator) -> None:
        if any(int(n) < 1 for n in space):
            raise ConfigError(f"evolution: every block needs at least one branch, got {list(space)}")
        settings.validate()
        self.space = tuple(int(n) for n in space)
        self.size = math.prod(self.space)
        self.fitness, self.s, self.rng = fitness, settings, rng
        self.cache: dict[Candidate, float] = {}
        self.pending: dict[Candidate, None] = {}  # drawn, not yet evaluated (insertion-ordered)
        self.order: list[Candidate] = []
        self.top: list[Candidate] = []

    # ----------------------------------------------------------------------------- candidates
    def random_candidate(self) -> Candidate:
        return tuple(int(self.rng.integers(n)) for n in self.space)

    def crossover_child(self) -> Candidate:
        """Each gene from one of two parents drawn uniformly from the top-n."""
        p1, p2 = self._parent(), self._parent()
        return tuple(a if self.rng.random() < 0.5 else b for a, b in zip(p1, p2))

    def mutation_child(self) -> Candidate:
        """A top-n parent with each gene redrawn uniformly (it may keep its value) with ``mutation_prob``."""
        child = list(self._parent())
        for i, n in enumerate(self.space):
            if self.rng.random() < self.s.mutation_prob:
                child[i] = int(self.rng.integers(n))
        return tuple(child)

    def _parent(self) -> Candidate:
        return self.top[int(self.rng.integers(len(self.top)))]

    def accept(self, candidate: Candidate) -> bool:
        """Take ``candidate`` for evaluation unless it was drawn before in this fold (then ``False``:
        rejected, official ``is_legal``)."""
        if candidate in self.cache or candidate in self.pending:
            return False
        self.pending[candidate] = None
        return True

    def evaluate_pending(self) -> None:
        """Evaluate every accepted candidate not evaluated yet (one ``fitness`` call)."""
        if not self.pending:
            return
        candidates = list(self.pending)
        values = self.fitness(candidates)
        if len(values) != len(candidates):
            raise ConfigError(f"evolution: fitness returned {len(values)} values for {len(candidates)} "
                              "candidates")
        for cand, value in zip(candidates, values):
            self.cache[cand] = float(value)
        self.order.extend(candidates)
        self.pending.clear()

    def _draw(self, make: Callable[[], Candidate], wanted: int, max_draws: int) -> list[Candidate]:
        out: list[Candidate] = []
        for _ in range(max_draws):
            if len(out) >= wanted or len(self.cache) + len(self.pending) >= self.size:
                break
            cand = make()
            if self.accept(cand):
                out.append(cand)
        return out

    def fill_random(self, population: list[Candidate]) -> list[Candidate]:
        """``population`` filled up with random candidates, then every new candidate evaluated."""
        need = self.s.population - len(population)
        population = population + self._draw(self.random_candidate, need, 100 * self.s.population)
        self.evaluate_pending()
        return population

    def update_top(self, population: list[Candidate]) -> None:
        """Elitist top-n: the previous top-n then the new candidates, stably sorted by fitness."""
        pool = self.top + [c for c in population if c not in self.top]
        self.top = sorted(pool, key=lambda c: -self.cache[c])[: self.s.parents]

    def next_population(self) -> list[Candidate]:
        factor = self.s.max_draws_factor
        ops = [(self.crossover_child, self.s.crossover), (self.mutation_child, self.s.mutation)]
        if self.s.operator_order == "official":
            ops.reverse()
        children = [c for make, n in ops for c in self._draw(make, n, factor * n)]
        return self.fill_random(children)

    # ----------------------------------------------------------------------------- the loop
    def run(self, log: Callable[[str], None] | None = None) -> EvolutionResult:
        t0 = time.perf_counter()
        history: list[dict] = []
        population = self.fill_random([])
        for generation in range(self.s.iterations + 1):
            self.update_top(population)
            best = self.cache[self.top[0]]
            history.append({"generation": generation, "population": len(population),
                            "population_best": max(self.cache[c] for c in population) if population else None,
                            "population_mean": float(np.mean([self.cache[c] for c in population]))
                            if population else None,
                            "best_so_far": best, "evaluated": len(self.cache)})
            if log is not None:
                log(f"generation {generation}: {len(population)} candidates, best so far {best:.3f} "
                    f"({len(self.cache)} evaluated)")
            if generation == self.s.iterations:
                break
            population = self.next_population()
        return EvolutionResult(self.top[0], self.cache[self.top[0]], history,
                               [(c, self.cache[c]) for c in self.order], time.perf_counter() - t0)
