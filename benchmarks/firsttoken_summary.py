"""Summary tables of an analysed first-token suite (the README's and docs/first-token.md's).

    python benchmarks/firsttoken_summary.py results/firsttoken-reference

Per model at its last checkpoint: per layer top1/median, the kind (madyn.measure.kinds), top1
position and channel, the ratio with the top1 token left out, the attention mass on position
0; the effect table's rows for the extreme-token quantities; the AICc winners; the curve
predictors against the mean curve; and the growth trend of the largest position-0 entry of
the base design (steps to reach x100 if it kept its measured log-linear rate).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def per_model(res: Path) -> None:
    print("| model | layer: top1/median (kind, position, channel) | excl. top1 token | "
          "sink mass (per layer) |")
    print("|---|---|---|---|")
    for f in sorted((res / "series").glob("*.parquet")):
        s = pd.read_parquet(f)
        last = s[s["step"] == s.loc[~s["flagged"], "step"].max()]

        def stat(name: str, s=last) -> pd.Series:
            return s[s["statistic"] == name].set_index("layer")["mean"].sort_index()

        kinds = last.drop_duplicates("layer").set_index("layer").sort_index()
        ratio, excl, sink = stat("ratio"), stat("ratio_excl_token"), stat("sink_mass")
        short = {"first_token": "FIRST", "feature": "feat", "none": "-", "unknown": "?"}
        cells = [f"{ratio[i]:.1f} ({short[kinds.loc[i, 'kind']]}, {kinds.loc[i, 'kind_position']}"
                 f", {kinds.loc[i, 'kind_channel']})" for i in ratio.index]
        print(f"| {f.stem} | {'; '.join(cells)} | "
              f"{' '.join(f'{x:.1f}' for x in excl)} | {' '.join(f'{x:.2f}' for x in sink)} |")


def effects(res: Path) -> None:
    p = res / "report" / "effects.csv"
    if not p.exists():
        return
    t = pd.read_csv(p)
    keep = t[t["quantity"].isin(["first_token_share", "max_first_peak_ratio", "max_sink_mass",
                                 "final_sink_mass", "final_ratio", "final_kurtosis"])]
    print("\n| design | quantity | base | design | ratio [95% interval] |")
    print("|---|---|---|---|---|")
    for _, r in keep.iterrows():
        print(f"| {r['design']} | {r['quantity']} | {r['base_mean']:.3g} | "
              f"{r['design_mean']:.3g} | {r['ratio']:.2f} [{r['ratio_lo']:.2f}, "
              f"{r['ratio_hi']:.2f}] |")


def fits_and_predictors(res: Path) -> None:
    fit = json.loads((res / "metrics" / "fit.json").read_text())["all"]
    for q in ("ratio", "top1", "median"):
        a = fit.get(q, {})
        print(f"\nfit {q}: winners {a.get('winners')}, winner R2 mean "
              f"{a.get('winner_r2_mean')}, best emlog R2 mean {a.get('best_emlog_r2_mean')}")
    pred = json.loads((res / "metrics" / "predict.json").read_text())
    cl = pred.get("curve_lomo", {})
    for m in cl.get("model_types", []):
        per = cl.get("per_model", {}).get(m, {})
        r2 = [v["r2_median"] for v in per.values() if isinstance(v, dict) and "r2_median" in v]
        if r2:
            print(f"curve lomo {m}: median over models of the per-layer median R2 "
                  f"{np.nanmedian(r2):.3f}")


def trend(res: Path, prefix: str = "base-") -> None:
    rows = []
    for f in sorted((res / "series").glob(f"{prefix}*.parquet")):
        s = pd.read_parquet(f)
        fp = s[(s["statistic"] == "first_peak_ratio") & ~s["flagged"]]
        best = fp.groupby("step")["mean"].max()
        late = best[best.index >= best.index.max() / 2]
        slope = np.polyfit(np.log(late.index), np.log(late.to_numpy()), 1)[0]
        need = (np.exp(np.log(late.index.max()) + np.log(100 / late.iloc[-1]) / slope)
                if slope > 0 else np.inf)
        rows.append((f.stem, float(late.iloc[-1]), slope, need))
    print("\n| model | largest position-0 entry / median, last step | log-log slope, "
          "second half | steps to x100 at that rate |")
    print("|---|---|---|---|")
    for m, v, sl, need in rows:
        print(f"| {m} | {v:.1f} | {sl:.2f} | {need:.3g} |")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/firsttoken_summary.py results/<suite>")
    res = Path(sys.argv[1])
    per_model(res)
    effects(res)
    fits_and_predictors(res)
    trend(res)


if __name__ == "__main__":
    main()
