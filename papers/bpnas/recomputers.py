"""BP-NAS's table recomputers for ``mpq bench check`` (registered through ``papers.bpnas.PAPER``).

``bpnas_packaged_policy``: the per-block bits of a packaged policy file (``papers/bpnas/policies/``), block 0
(the first conv, fixed at 8 bits outside the policy) first, so the check compares the files that
``mpq bpnas train`` trains with the configurations printed in supp. Table 1.
"""

from __future__ import annotations

from typing import Any

from core.errors import ConfigError


def packaged_policy(ctx: Any, policy: str, blocks: list[str], first_bits: list[int] = (8, 8)
                    ) -> dict[str, Any]:
    """``{"w_bits": [...], "a_bits": [...]}`` of ``policies/<policy>.json`` over ``blocks`` (after block
    0)."""
    from core.policy import BitPolicy
    from papers.bpnas.train import POLICY_DIR, packaged_policies

    if policy not in packaged_policies():
        raise ConfigError(f"recompute bpnas_packaged_policy: no packaged policy {policy!r}; "
                          f"packaged: {packaged_policies()}")
    loaded = BitPolicy.load(POLICY_DIR / f"{policy}.json")
    w, a = [int(first_bits[0])], [int(first_bits[1])]
    for block in blocks:
        bits = {loaded[n] for n in loaded.names if n.startswith(block + ".")}
        if len(bits) != 1:
            raise ConfigError(f"recompute bpnas_packaged_policy: block {block!r} of {policy} has bits "
                              f"{bits}; one (w, a) pair per block expected")
        (wb, ab), = bits
        w.append(wb)
        a.append(ab)
    return {"w_bits": w, "a_bits": a}


RECOMPUTERS = {"bpnas_packaged_policy": packaged_policy}
