"""Build the README's benchmark table from benchmarks/results/*.json (between the table markers).

    python benchmarks/table.py          # rewrite README.md in place
    python benchmarks/table.py --print  # only print the table
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from recsys.durable import write_text

ROOT = Path(__file__).parents[1]
START, END = "<!-- benchmark-table:start -->", "<!-- benchmark-table:end -->"
QUALITY_START, QUALITY_END = "<!-- quality-table:start -->", "<!-- quality-table:end -->"


def fmt(value: object) -> str:
    if isinstance(value, float):
        if value == 0 or 0.001 <= abs(value) < 10_000:
            return f"{value:.4g}"
        return f"{value:.3g}"
    return str(value)


MAX_METRICS = 12


def short(text: str) -> str:
    """A label's first clause: the JSON keeps the full description."""
    for stop in (" (", ": ", ", "):
        text = text.split(stop, 1)[0]
    return text


def short_cpu(cpu: str) -> str:
    """'Intel(R) Xeon(R) Processor' -> 'Intel Xeon', 'AMD EPYC 7B13 64-Core Processor' -> 'AMD EPYC': speeds
    differ by CPU kind, so the tables say which."""
    words = [w for w in cpu.replace("(R)", "").replace("(TM)", "").split() if w.isalpha() and w != "Processor"]
    return " ".join(words[:2])


def metrics_of(result: dict) -> dict:
    """A result's metrics with best_epoch counted from 1, as recsys counts epochs now: results written
    before that (no epochs_counted_from field) counted from 0, and their files stay as they were written."""
    metrics = dict(result.get("metrics", {}))
    best = metrics.get("best_epoch")
    if isinstance(best, (int, float)) and best >= 0 and result.get("epochs_counted_from") != 1:
        metrics["best_epoch"] = best + 1
    return metrics


def row(result: dict, path: Path) -> str:
    metrics = metrics_of(result)
    names = result.get("headline") or [k for k, v in metrics.items() if isinstance(v, (int, float))]
    shown = ", ".join(f"{k} {fmt(metrics[k])}" for k in names[:MAX_METRICS] if metrics.get(k) is not None)
    published = result.get("published")
    if published:
        shown += "; published: " + "; ".join(f"{name} {v[0]:.4f}/{v[1]:.4f}" for name, v in published.items())
    machine = result.get("machine", {})
    cpu = f" ({short_cpu(machine['cpu'])})" if machine.get("cpu") else ""
    where = f"{machine.get('cores', '?')} cores{cpu}" + (f", {machine['gpu']}" if machine.get("gpu") else ", no GPU")
    dataset = result.get("dataset") or "-"
    if isinstance(dataset, dict):
        dataset = "; ".join(short(str(v)) for k, v in dataset.items() if k != "preset")
    if isinstance(result.get("preset"), str):
        dataset += f" ({result['preset']})"
    model = short(str(result.get("model") or "-"))
    seeds = ", ".join(map(str, result.get("seeds", []))) or "-"
    return (f"| [{result.get('benchmark', path.stem)}](benchmarks/results/{path.name}) | {dataset} | "
            f"{model} | {shown} | {seeds} | {where} |")


def table() -> str:
    lines = ["| benchmark | dataset | model | metrics | seeds | machine |", "|---|---|---|---|---|---|"]
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        lines.append(row(json.loads(path.read_text(encoding="utf-8")), path))
    return "\n".join(lines)


def quality_table() -> str:
    """One row per train_quality result: every model's K=10 metrics, epochs and time, published figures beside."""
    lines = ["| model | dataset | NDCG@10 | HR@10 | MRR@10 | seeds | best epoch / run | s to best epoch | s per epoch "
             "| machine | published NDCG@10 / HR@10 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        if result.get("benchmark") != "train_quality":
            continue
        m = metrics_of(result)
        machine = result.get("machine", {})
        where = machine.get("gpu") or f"{machine.get('cores', '?')} CPU cores"
        published = "; ".join(f"{v[0]:.4f} / {v[1]:.4f} ({name})" for name, v in result.get("published", {}).items())
        std = f" ± {m['ndcg@10_std']:.4f}" if m.get("ndcg@10_std") else ""
        epochs = (f"{m['best_epoch']:.0f} / {m['epochs_run']:.0f}" if m.get("epochs_run") else "fitted by counting")
        label = result["model"] + (f" ({result['variant']})" if result.get("variant") else "")
        # A time-aware model's test was scored both ways: a row per time context, the headline's first.
        contexts = ([result["time_context"], *({"none", "target"} - {result["time_context"]})]
                    if result.get("time_context") else [None])
        for n, context in enumerate(contexts):
            scores = m if context is None else {
                key: m.get(f"time_{context}_{key}") for key in ("ndcg@10", "hr@10", "mrr@10")}
            if context is not None:
                values = [r[f"time_{context}_ndcg@10"] for r in result.get("runs", []) if f"time_{context}_ndcg@10" in r]
                std = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            shown = (label if context is None else
                     f"{label}, time context {context}" + (" (the same runs)" if n else ""))
            lines.append(
                f"| [{shown}](benchmarks/results/{path.name}) | {result['dataset']} ({result.get('preset', '-')}) "
                f"| {scores['ndcg@10']:.4f}{std} | {scores['hr@10']:.4f} | {scores['mrr@10']:.4f} "
                f"| {len(result.get('seeds', []))} | {epochs} | {fmt_or_dash(m.get('fit_s_to_best_epoch'))} "
                f"| {fmt_or_dash(m.get('epoch_s'))} | {where} | {published or '-'} |")
    return "\n".join(lines)


def fmt_or_dash(value: object) -> str:
    return fmt(round(value)) if isinstance(value, float) and value >= 10 else (fmt(value) if value is not None else "-")


def replace_between(content: str, start: str, end: str, text: str) -> str:
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{text}\n{end}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print", action="store_true", help="print the table instead of updating README.md")
    args = parser.parse_args()
    text, quality = table(), quality_table()
    if args.print:
        print(f"{quality}\n\n{text}")
        return
    readme = ROOT / "README.md"
    content = replace_between(readme.read_text(encoding="utf-8"), START, END, text)
    content = replace_between(content, QUALITY_START, QUALITY_END, quality)
    write_text(readme, content)


if __name__ == "__main__":
    main()
