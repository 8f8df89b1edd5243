"""Build the README's benchmark table from benchmarks/results/*.json (between the table markers).

    python benchmarks/table.py          # rewrite README.md in place
    python benchmarks/table.py --print  # only print the table
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

ROOT = Path(__file__).parents[1]
START, END = "<!-- benchmark-table:start -->", "<!-- benchmark-table:end -->"


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


def row(result: dict, path: Path) -> str:
    metrics = result.get("metrics", {})
    names = result.get("headline") or [k for k, v in metrics.items() if isinstance(v, (int, float))]
    shown = ", ".join(f"{k} {fmt(metrics[k])}" for k in names[:MAX_METRICS] if metrics.get(k) is not None)
    published = result.get("published")
    if published:
        shown += "; published: " + "; ".join(f"{name} {v[0]:.4f}/{v[1]:.4f}" for name, v in published.items())
    machine = result.get("machine", {})
    where = f"{machine.get('cores', '?')} cores" + (f", {machine['gpu']}" if machine.get("gpu") else ", no GPU")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print", action="store_true", help="print the table instead of updating README.md")
    args = parser.parse_args()
    text = table()
    if args.print:
        print(text)
        return
    readme = ROOT / "README.md"
    content = readme.read_text(encoding="utf-8")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")
    os.replace(tmp, readme)


if __name__ == "__main__":
    main()
