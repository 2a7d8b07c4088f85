"""Run identity: what makes two runs the same run, so that a run directory is resumed only by its own run
and a stage consumes only the output of the run it belongs to.

The identity of a run is its resolved config as a flat mapping of dotted keys (``optim.lr``) minus
:data:`NON_IDENTITY_KEYS`, the keys that say how and where a run executes or what it logs, never which
model is trained on which data with which hyper-parameters. Two runs that differ only in those keys are
the same experiment, up to floating-point rounding and the random stream of data-loader workers: the same
kind of difference as the number of DDP processes, which no config records. A stage may narrow its
identity to the sections it depends on (``config_identity(cfg, exclude=["train"])`` for a search that
a later training stage follows), so changing a later stage's keys does not disown an earlier stage.
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from core.config import config_to_dict

__all__ = ["NON_IDENTITY_KEYS", "config_identity", "identity_diff", "format_diff", "code_version"]

#: Keys (dotted, matched as a suffix so a nested ``teacher.data.workers`` counts too) left out of a run's
#: identity. Kept in identity on purpose: ``data.root`` (another root may hold another dataset: a subset,
#: another version; a moved dataset is resumed with ``run.resume=force``), ``run.seed``, ``run.sync_bn``,
#: ``data.fast_decode`` (another decoder gives other pixels).
NON_IDENTITY_KEYS: tuple[str, ...] = (
    "run.out_dir",  # where the run is written
    "run.resume",  # how it starts
    "run.device",  # where it runs (like the number of processes: rounding only)
    "run.deterministic",  # kernel selection: rounding only
    "run.compile",  # compiled quantizer kernels: rounding only
    "run.log_every",  # what is logged
    "run.eval_every",  # when the model is evaluated (no_grad, eval mode: training is unchanged)
    "run.keep_checkpoints",  # how many checkpoints are kept
    "run.tensorboard",
    "run.dist_timeout_s",  # how long ranks wait for each other
    "data.workers",  # loader processes: only the augmentation random stream changes
    "data.val_batch_size",  # evaluation batch (eval-mode BatchNorm: per-sample results)
)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping) and (obj or not prefix):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _volatile(key: str) -> bool:
    return any(key == p or key.endswith("." + p) for p in NON_IDENTITY_KEYS)


def config_identity(config: Any, sections: Iterable[str] | None = None, exclude: Iterable[str] = (),
                    policy: Any = None) -> dict[str, Any]:
    """The identity of ``config`` (a config dataclass or mapping): ``{dotted key: value}`` without
    :data:`NON_IDENTITY_KEYS`; restricted to the top-level ``sections`` when given, minus the keys or
    sections in ``exclude`` (e.g. ``["train", "discretize"]`` for a search stage). ``policy``: the
    :class:`core.policy.BitPolicy` a stage trains (its input, like the data), added as one key per layer,
    ``policy.<layer>: [w_bits, a_bits]``, so a run resumes only on the same bits. Values are JSON types
    (tuples become lists), so an identity compares equal to its own copy read back from ``run.json``."""
    flat = _flatten(json.loads(json.dumps(config_to_dict(config), default=str)))
    keep = list(sections) if sections is not None else None
    exclude = list(exclude)
    out = {k: v for k, v in flat.items()
           if not _volatile(k) and not _under(k, exclude) and (keep is None or _under(k, keep))}
    if policy is not None:
        out.update({f"policy.{name}": [int(w), int(a)] for name, (w, a) in policy.items()})
    return out


def identity_diff(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``[(key, recorded value, current value)]`` for every key that differs (a missing key is
    ``"<absent>"``), sorted by key."""
    missing = "<absent>"
    keys = sorted(set(recorded) | set(current))
    return [(k, recorded.get(k, missing), current.get(k, missing)) for k in keys
            if recorded.get(k, missing) != current.get(k, missing)]


def format_diff(diff: list[tuple[str, Any, Any]], limit: int = 20) -> str:
    """One line per differing key, ``  key: old -> new``, at most ``limit`` lines."""
    show = functools.partial(json.dumps, default=str)
    lines = [f"  {k}: {show(a)} -> {show(b)}" for k, a, b in diff[:limit]]
    if len(diff) > limit:
        lines.append(f"  ... and {len(diff) - limit} more")
    return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """mpq's package version plus the git revision of the checkout when there is one (``0.1.0+abc1234``,
    with ``-dirty`` when the checkout has uncommitted changes)."""
    import core

    root = Path(__file__).resolve().parents[2]
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5,
                                  check=False).stdout.strip()

        sha = git("rev-parse", "--short", "HEAD")
        dirty = sha and git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    return f"{core.__version__}+{sha}{'-dirty' if dirty else ''}" if sha else core.__version__
