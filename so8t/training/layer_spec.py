"""Layer selections (``--so8t_layers``, ``--lora_layers``): parsed without torch, so the VRAM preflight can use them."""

from __future__ import annotations

from collections.abc import Sequence

from so8t.errors import ModelError


def resolve_layers(spec: str | Sequence[int], n_layers: int, flag: str = "so8t_layers") -> list[int]:
    """Parse a layer spec: ``"all"``, ``"none"``, ``"0,15,29"``, ranges ``"20-29"``, ``"top:10"`` (the last
    10 layers) or a list of ints.

    Raises:
        ModelError: for an index out of range or an unparsable spec (naming ``flag``).
    """
    if isinstance(spec, str):
        s = spec.strip().lower().replace(" ", "")
        if s == "all":
            return list(range(n_layers))
        if s == "none":
            return []
        try:
            if s.startswith("top:"):
                k = int(s[4:])
                if not 1 <= k <= n_layers:
                    raise ModelError(f"{flag} {spec!r}: top:K needs 1 <= K <= {n_layers} (the model's layers)")
                return list(range(n_layers - k, n_layers))
            idx = []
            for p in (p for p in s.split(",") if p):
                lo, _, hi = p.partition("-")
                idx += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        except ValueError:
            raise ModelError(f"{flag} {spec!r} is not 'all', 'none', 'top:K' or a comma-separated list of layer "
                             "indices and ranges like '0,15,20-29'") from None
    else:
        idx = [int(i) for i in spec]
    bad = [i for i in idx if not 0 <= i < n_layers]
    if bad:
        raise ModelError(f"{flag} {bad} out of range: the model has layers 0..{n_layers - 1}")
    return sorted(set(idx))
