"""An audit's cells grouped by (victim, defence, attack, budget): means over seeds with 95 % intervals.

Each :class:`CellGroup` holds what the report states about one group: gain recovered and transfer
ratio on both linear probes, CKA, the honest user's utility (honest / victim, full-label probe) and its
cost in points of accuracy, the thief's dollars at the audit's price, and dollars per point of stolen
accuracy (cost / (stolen − floor full-label accuracy, in points)). A value missing from every seed
(a gain where the victim equals the floor, an honest user where no defence was on) is None.

>>> groups = cell_groups(load_audit("audit.json"))  # doctest: +SKIP
>>> groups[0].gain_full.format()  # doctest: +SKIP
'0.92 ± 0.04'
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from sslaudit.result import StealResult
from sslaudit.stats import Interval, mean_interval

DEFAULT_TRAINING_IMAGES = 60_000  # the shipped tiny victims train on Fashion-MNIST's 60,000 images
NO_DEFENSE = "none"


@dataclass(frozen=True)
class CellGroup:
    """One (victim, defence, attack, budget) over its seeds; intervals are Student-t 95 % (nan with one seed)."""

    victim: str
    defense: str
    attack: str
    budget: int
    seeds: tuple[int, ...]
    gain_1pct: Interval | None
    gain_full: Interval | None
    transfer_1pct: Interval | None
    transfer_full: Interval | None
    cka: Interval | None
    honest_utility: Interval | None  # honest / victim direct, full-label probe
    honest_cost_points: Interval | None  # 100 × (1 − honest utility)
    cost: float  # dollars for the queries sent, at the audit's price (mean over seeds)
    dollars_per_point: Interval | None  # None when a seed's stolen encoder is no better than the floor
    training_images: int  # images the victim was trained on: the yardstick of the rubric's query fraction
    honest_by_seed: tuple[tuple[int, float], ...] = ()  # (seed, honest utility) of the seeds that measured it

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def defended(self) -> bool:
        return self.defense != NO_DEFENSE

    @property
    def query_fraction(self) -> float:
        """The budget as a fraction of the victim's training images."""
        return self.budget / self.training_images


def _interval(values: Iterable[float | None]) -> Interval | None:
    """The mean interval of the finite values, or None when there are none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return mean_interval(finite) if finite else None


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def training_images(cell: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    """``victim_training_images`` from the cell's victim row, else the audit config, else 60,000."""
    victim_row = (cell.get("result") or {}).get("victim") or {}
    value = victim_row.get("victim_training_images", config.get("victim_training_images"))
    return int(value) if value else DEFAULT_TRAINING_IMAGES


def _read_result(cell: Mapping[str, Any]) -> StealResult:
    try:
        return StealResult.from_dict(cell["result"])
    except KeyError as err:
        raise ValueError(f"cell {str(cell.get('key', '?'))[:12]} has no {err.args[0]!r} in its result; "
                         "is this an sslaudit audit document?") from err


def _dollars_per_point(results: Sequence[StealResult], price_per_1k: float) -> Interval | None:
    ratios = []
    for r in results:
        points = 100 * (r.stolen.scores.linear_full - r.floor.scores.linear_full)
        if not math.isfinite(points) or points <= 0:
            return None
        ratios.append(r.queries.sent / 1000 * price_per_1k / points)
    return mean_interval(ratios)


def _group(key: tuple[str, str, str, int], cells: Sequence[Mapping[str, Any]], price_per_1k: float,
           config: Mapping[str, Any]) -> CellGroup:
    results = [_read_result(c) for c in cells]

    def over(get: Callable[[StealResult], Any]) -> Interval | None:
        return _interval(_number(get(r)) for r in results)

    by_seed = [(int(c["seed"]), float(r.honest.utility.linear_full)) for c, r in zip(cells, results)
               if r.honest is not None and r.honest.utility is not None and r.honest.utility.linear_full is not None]
    honest = [u for _, u in by_seed]
    return CellGroup(
        *key, seeds=tuple(int(c["seed"]) for c in cells),
        gain_1pct=over(lambda r: r.stolen.gain_recovered.linear_1pct),
        gain_full=over(lambda r: r.stolen.gain_recovered.linear_full),
        transfer_1pct=over(lambda r: r.stolen.transfer_ratio.linear_1pct),
        transfer_full=over(lambda r: r.stolen.transfer_ratio.linear_full),
        cka=over(lambda r: r.stolen.fidelity.cka),
        honest_utility=_interval(honest), honest_cost_points=_interval(100 * (1 - u) for u in honest),
        cost=sum(r.queries.sent for r in results) / len(results) / 1000 * price_per_1k,
        dollars_per_point=_dollars_per_point(results, price_per_1k),
        training_images=min(training_images(c, config) for c in cells), honest_by_seed=tuple(by_seed))


def cell_groups(doc: Mapping[str, Any]) -> list[CellGroup]:
    """The audit's cells grouped by (victim, defence, attack, budget), in first-seen order of victim, defence
    and attack and increasing budget; a ValueError (one line) when the document has no cells."""
    cells = doc.get("cells") or []
    if not cells:
        raise ValueError(f"the audit {doc.get('name', '')!r} has no finished cells to report")
    price = float(doc.get("price_per_1k", 1.0))
    config = doc.get("config") or {}
    by_key: dict[tuple[str, str, str, int], list[Mapping[str, Any]]] = {}
    for cell in cells:
        key = (str(cell["victim"]), str(cell.get("defense", NO_DEFENSE)), str(cell["attack"]), int(cell["budget"]))
        by_key.setdefault(key, []).append(cell)
    orders = [{name: i for i, name in enumerate(dict.fromkeys(k[part] for k in by_key))} for part in range(3)]
    keys = sorted(by_key, key=lambda k: (*(orders[part][k[part]] for part in range(3)), k[3]))
    return [_group(k, sorted(by_key[k], key=lambda c: int(c["seed"])), price, config) for k in keys]


def honest_utility(groups: Sequence[CellGroup]) -> Interval | None:
    """The honest user's utility under one defence, over seeds: each seed's cells (every attack and budget
    measure the same honest user) are averaged first, so a seed counts once."""
    per_seed: dict[int, list[float]] = {}
    for group in groups:
        for seed, utility in group.honest_by_seed:
            per_seed.setdefault(seed, []).append(utility)
    return _interval(sum(v) / len(v) for v in per_seed.values()) if per_seed else None


def honest_cost_points(groups: Sequence[CellGroup]) -> Interval | None:
    """What :func:`honest_utility` costs honest users, in points of accuracy: 100 × (1 − utility)."""
    utility = honest_utility(groups)
    if utility is None:
        return None
    return Interval(100 * (1 - utility.mean), 100 * utility.half_width, utility.n)


def defense_label(defense: str) -> str:
    """``no defence`` for ``none``, else the defence spec."""
    return "no defence" if defense == NO_DEFENSE else defense
