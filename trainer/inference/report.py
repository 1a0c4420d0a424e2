"""`fusionrec report RUN_DIR [RUN_DIR ...] --out DIR`: one self-contained HTML page for a run or a comparison.

    DIR/index.html   learning curves, the metric table (validation at the best epoch by the monitored metric, test
                     when logged), throughput, per-source gates (TensorBoard gates/* over training; per-user spread
                     from predictions), a comparison bar chart (several runs), popularity bias (catalog coverage,
                     long-tail share) when the run has predictions/rank-*.parquet
    DIR/*.png        the same figures as files; the page embeds them (base64), so it can be mailed on its own

Reads only what the run folders hold (trainer/inference/run_data.py); never loads a model.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
from datetime import datetime
from pathlib import Path

import numpy as np

from trainer.inference.run_data import HEAD_SHARE, RunData, find_runs, labels, read_run

PERF = {"perf/examples_per_s": "examples/s", "perf/data_stall_fraction": "data stall fraction",
        "perf/peak_memory_mb": "peak memory (MB)", "perf/text_tokens_per_s": "text tokens/s"}


def build_report(run_dirs: list[str | Path], out: str | Path, dataset_dir: str | Path | None = None,
                 title: str | None = None) -> Path:
    """Write `out`/index.html (+ PNGs) for the runs under `run_dirs` (see find_runs); returns the page's path."""
    import matplotlib

    matplotlib.use("Agg")  # no display: figures are files
    paths = find_runs(list(run_dirs))
    runs = [read_run(p, lab, dataset_dir) for p, lab in zip(paths, labels(paths))]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    title = title or ("fusionrec run " + runs[0].label if len(runs) == 1 else f"fusionrec: {len(runs)} runs compared")
    sections = [_runs_section(runs), _metrics_section(runs)]
    curves, panels = _curves(runs)
    figures = [("curves.png", curves, "Learning curves",
                "Training loss per step, and each validation metric per validation; the circle marks the best "
                "validation by the monitored metric. Panels: " + ", ".join(panels) + ".")]
    if len(runs) > 1:
        figures.append(("comparison.png", _comparison(runs), "Comparison",
                        "Validation at each run's best epoch and test (where logged), per metric."))
    gates = _gates(runs)
    if gates is not None:
        figures.append(("gates.png", gates, "Per-source gates",
                        "Mean fusion gate per source at each validation (TensorBoard gates/user_*, gates/item_*); "
                        "where the run has predictions, the spread of each user's gates over the predicted users."))
    pop = _popularity(runs)
    body = "\n".join(sections)
    for name, fig, head, caption in figures:
        body += _figure(out, name, fig, head, caption)
    if pop is not None:
        body += _popularity_section(runs) + _figure(out, "popularity.png", pop, "",
                                                    "Share of recommended slots per item-popularity decile of the "
                                                    "catalog (most popular first), against training interactions.")
    body += _perf_section(runs)
    page = out / "index.html"
    page.write_text(_PAGE.format(title=html.escape(title), body=body,
                                 when=datetime.now().strftime("%Y-%m-%d %H:%M")))
    return page


# -- figures -----------------------------------------------------------------------------------------------------
def _curves(runs: list[RunData]):  # type: ignore[no-untyped-def]
    """(the figure, its panels' tags): train/loss, then every validation metric."""
    import matplotlib.pyplot as plt

    val_names = [m for m in _metric_order(runs) if any(f"val/{m}" in r.scalars for r in runs)]
    panels = ["train/loss", *(f"val/{m}" for m in val_names)]
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.9 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, panels):
        for i, r in enumerate(runs):
            df = r.scalars.get(tag)
            if df is None or df.empty:
                continue
            c = f"C{i}"
            ax.plot(df["step"], df["value"], color=c, marker="o" if len(df) < 30 else None, ms=3, lw=1.4,
                    label=r.label)
            if tag.startswith("val/") and r.best_step is not None:
                at = df[df["step"] == r.best_step]
                if len(at):
                    ax.plot(at["step"], at["value"], "o", color=c, ms=9, mfc="none", mew=2)
        ax.set_title(tag, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if len(runs) > 1:
        axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return fig, panels


def _comparison(runs: list[RunData]):  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    names = _metric_order(runs)
    splits = [s for s in ("valid", "test") if any(getattr(r, s) for r in runs)]
    fig, axes = plt.subplots(len(splits), 1, figsize=(max(8, 0.9 * len(names) * len(runs) ** 0.5 + 3), 3.6 * len(splits)),
                             squeeze=False)
    width = 0.8 / len(runs)
    x = np.arange(len(names))
    for ax, split in zip(axes[:, 0], splits):
        for i, r in enumerate(runs):
            vals = [getattr(r, split).get(m, np.nan) for m in names]
            ax.bar(x + (i - (len(runs) - 1) / 2) * width, vals, width, label=r.label, color=f"C{i}")
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_title("validation at the best epoch" if split == "valid" else "test", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _gates(runs: list[RunData]):  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    with_gates = [r for r in runs if any(t.startswith("gates/") for t in r.scalars)]
    if not with_gates:
        return None
    has_users = any(r.user_gates is not None for r in with_gates)
    cols = 3 if has_users else 2
    fig, axes = plt.subplots(len(with_gates), cols, figsize=(5 * cols, 3.2 * len(with_gates)), squeeze=False)
    for row, r in zip(axes, with_gates):
        for ax, tower in zip(row, ("user", "item")):
            tags = sorted(t for t in r.scalars if t.startswith(f"gates/{tower}_"))
            for j, t in enumerate(tags):
                df = r.scalars[t]
                ax.plot(df["step"], df["value"], marker="o", ms=3, color=f"C{j}", label=t.removeprefix(f"gates/{tower}_"))
            ax.set_ylim(0, 1)
            ax.set_title(f"{r.label}: {tower} tower gates (mean)", fontsize=10)
            ax.set_xlabel("step", fontsize=8)
            ax.grid(alpha=0.3)
            if tags:
                ax.legend(fontsize=8, ncol=2)
        if has_users:
            ax = row[2]
            if r.user_gates is not None:
                g = r.user_gates
                ax.boxplot([g[c].to_numpy() for c in g.columns], tick_labels=list(g.columns))
                ax.set_ylim(0, 1)
                ax.set_title(f"{r.label}: user gates over {len(g)} predicted users", fontsize=10)
                ax.grid(alpha=0.3)
            else:
                ax.axis("off")
    fig.tight_layout()
    return fig


def _popularity(runs: list[RunData]):  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    with_pop = [r for r in runs if r.popularity is not None]
    if not with_pop:
        return None
    fig, ax = plt.subplots(figsize=(9, 3.4))
    x = np.arange(10)
    width = 0.8 / (len(with_pop) + 1)
    ax.bar(x - 0.4 + width / 2, with_pop[0].popularity.train_decile_share, width, color="0.6",  # type: ignore[union-attr]
           label="training interactions")
    for i, r in enumerate(with_pop, start=1):
        ax.bar(x - 0.4 + width / 2 + i * width, r.popularity.decile_share, width, color=f"C{runs.index(r)}",  # type: ignore[union-attr]
               label=f"recommendations: {r.label}")
    ax.set_xticks(x, [f"{10 * i}-{10 * i + 10}%" for i in range(10)], fontsize=8)
    ax.set_xlabel("item popularity decile (most popular first)", fontsize=9)
    ax.set_ylabel("share", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _figure(out: Path, name: str, fig, head: str, caption: str) -> str:  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    path = out / name
    fig.savefig(path, dpi=100)
    plt.close(fig)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    h = f"<h2>{html.escape(head)}</h2>\n" if head else ""
    return (f'{h}<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}">'
            f"<figcaption>{html.escape(caption)} ({html.escape(name)})</figcaption></figure>\n")


# -- tables ------------------------------------------------------------------------------------------------------
def _metric_order(runs: list[RunData]) -> list[str]:
    """Metric names of every run: grouped by metric, then by k (ndcg@5, ndcg@10, ...), the bare alias last."""
    names = {n for r in runs for n in r.metric_names}

    def key(n: str) -> tuple[str, int]:
        base, _, k = n.partition("@")
        return base, int(k) if k.isdigit() else 10**9

    return sorted(names, key=key)


def _runs_section(runs: list[RunData]) -> str:
    rows = []
    for r in runs:
        best = f"step {r.best_step}" if r.best_step is not None else "no validation logged"
        epoch = r.scalars.get("epoch")
        if r.best_step is not None and epoch is not None:
            at = epoch[epoch["step"] <= r.best_step]
            if len(at):
                best += f" (epoch {int(at['value'].iloc[-1])})"
        notes = "<br>".join(html.escape(n) for n in r.notes)
        rows.append(f"<tr><td>{html.escape(r.label)}</td><td><code>{html.escape(str(r.path))}</code></td>"
                    f"<td>{html.escape(str(r.monitor))} ({r.mode})</td><td>{best}</td><td class=note>{notes}</td></tr>")
    return ("<h2>Runs</h2>\n<table><tr><th>run</th><th>folder</th><th>monitor</th><th>best validation</th>"
            "<th>notes</th></tr>\n" + "\n".join(rows) + "</table>\n")


def _metrics_section(runs: list[RunData]) -> str:
    """One table: a row per metric, per run a column for validation at the best epoch and one for test."""
    names = _metric_order(runs)
    out = "<h2>Metrics</h2>\n"
    if not names:
        return out + "<p>No validation or test metric was logged.</p>\n"
    splits = [s for s in ("valid", "test") if any(getattr(r, s) for r in runs)]
    head = {"valid": "val/* at the best epoch", "test": "test/*"}
    top = "<tr><th rowspan=2>metric</th>" + "".join(
        f"<th colspan={len(splits)}>{html.escape(r.label)}</th>" for r in runs) + "</tr>"
    sub = "<tr>" + "".join(f"<th>{head[s]}</th>" for _ in runs for s in splits) + "</tr>"
    rows = [top, sub]
    for m in names:
        tds = ""
        for r in runs:
            for s in splits:
                v = getattr(r, s).get(m)
                others = [x for x in (getattr(q, s).get(m) for q in runs) if x is not None]
                pick = min if m.split("@")[0] in ("rmse", "mae") else max
                best = len(runs) > 1 and v is not None and v == pick(others)
                tds += "<td>-</td>" if v is None else f"<td{' class=best' if best else ''}>{v:.4f}</td>"
        rows.append(f"<tr><td>{html.escape(m)}</td>{tds}</tr>")
    missing = "" if "test" in splits else (
        "<p>test: not logged (<code>fusionrec test</code> with <code>--trainer.logger.init_args.version N</code> "
        "logs into the same folder; or <code>fit --test_after_fit true</code>).</p>\n")
    note = "<p class=note>Bold: the best run per metric and split.</p>\n" if len(runs) > 1 else ""
    return out + "<table class=metrics>" + "\n".join(rows) + "</table>\n" + note + missing


def _popularity_section(runs: list[RunData]) -> str:
    rows = []
    for r in runs:
        p = r.popularity
        if p is None:
            continue
        rows.append(f"<tr><td>{html.escape(r.label)}</td><td>{p.users}</td><td>{p.k}</td>"
                    f"<td>{p.coverage:.1%} ({round(p.coverage * p.n_items)} / {p.n_items})</td>"
                    f"<td>{p.tail_share:.1%}</td><td>{p.catalog_tail_share:.1%}</td>"
                    f"<td>{p.mean_rec_popularity:.1f}</td></tr>")
    return ("<h2>Popularity bias</h2>\n<p>From the run's <code>predictions/rank-*.parquet</code> (top-K per user) and "
            "the prepared dataset's training popularity (<code>side/item_popularity.npy</code>). Long tail = all but "
            f"the {HEAD_SHARE:.0%} most popular items.</p>\n"
            "<table><tr><th>run</th><th>users</th><th>K</th><th>catalog coverage</th><th>long-tail share of "
            "recommendations</th><th>long-tail share of training interactions</th><th>mean training popularity of "
            "a recommended item</th></tr>\n" + "\n".join(rows) + "</table>\n")


def _perf_section(runs: list[RunData]) -> str:
    tags = [t for t in PERF if any(t in r.scalars for r in runs)]
    if not tags:
        return ""
    head = "<tr><th>run</th>" + "".join(f"<th>{PERF[t]} (median)</th>" for t in tags) + "</tr>"
    rows = []
    for r in runs:
        tds = "".join(f"<td>{_num(float(np.median(r.scalars[t]['value'])))}</td>" if t in r.scalars else "<td>-</td>"
                      for t in tags)
        rows.append(f"<tr><td>{html.escape(r.label)}</td>{tds}</tr>")
    return ("<h2>Throughput</h2>\n<p>Medians over the logged training steps (TensorBoard perf/*).</p>\n<table>" + head
            + "\n".join(rows) + "</table>\n")


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; font-size: 14px; margin: 24px; color: #222; max-width: 1280px; }}
p.note {{ color: #666; font-size: 12px; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }}
h3 {{ font-size: 15px; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 8px 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
table.metrics td + td {{ text-align: right; font-variant-numeric: tabular-nums; }}
td.best {{ font-weight: bold; background: #eef6ee; }} td.note {{ color: #666; font-size: 12px; }}
img {{ max-width: 100%; }} figure {{ margin: 8px 0; }} figcaption {{ color: #555; font-size: 12px; }}
</style></head><body>
<h1>{title}</h1>
<p>Written by <code>fusionrec report</code> on {when} from the runs' TensorBoard event files, configs and
predictions.</p>
{body}
</body></html>
"""


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fusionrec report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="Lightning log folder (.../version_N), or a folder above several of them")
    p.add_argument("--out", required=True, help="output folder (index.html + PNGs)")
    p.add_argument("--dataset", help="prepared dataset for popularity bias (default: the run config's data.dataset_dir)")
    p.add_argument("--title", help="page title")
    a = p.parse_args(argv)
    try:
        page = build_report(a.runs, a.out, a.dataset, a.title)
    except (FileNotFoundError, ValueError) as e:
        print(f"fusionrec report: error: {e}", file=sys.stderr)
        return 2
    print(f"report: {page}")
    return 0
