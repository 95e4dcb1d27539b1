"""Markdown tables for BENCHMARKS.md from the output folder of benchmarks/benchmark_page.sh.

    python benchmarks/page_tables.py OUT_DIR > tables.md

Reads peak.txt, gemm.txt, suite.json, epochs-*.txt, compare.txt and load.log; prints each table with
the load average before and after the step that measured it. Needs only the standard library.
"""
import json
import pathlib
import re
import statistics
import sys


def load_lines(out):
    """{step: (start load, end load)} from load.log (1-minute averages)."""
    loads = {}
    path = out / "load.log"
    for line in path.read_text().splitlines() if path.exists() else []:
        match = re.match(r"(\S+) (start|end)\s+(\S+) load (\S+) (\S+) (\S+)", line)
        if match:
            name, which, clock, one = match.group(1), match.group(2), match.group(3), match.group(4)
            loads.setdefault(name, {})[which] = (clock, one)
    return loads


def load_note(loads, *names):
    parts = []
    for name in names:
        entry = loads.get(name, {})
        if "start" in entry and "end" in entry:
            parts.append(f"{entry['start'][0]}-{entry['end'][0]} UTC, load average {entry['start'][1]} -> "
                         f"{entry['end'][1]}")
    return "; ".join(parts)


def peak_table(out):
    text = (out / "peak.txt").read_text().splitlines()
    rows = [line.split() for line in text if re.match(r"\s*(avx512|avx2|generic)\s", line)]
    peaks = {}
    for isa, threads, gflops in rows:
        peaks.setdefault(isa, {})[threads] = gflops
    lines = [text[0], "", "| instruction set | 1 thread GFLOPS | 2 threads GFLOPS |", "|---|---:|---:|"]
    lines += [f"| {isa} | {t.get('1', '-')} | {t.get('2', '-')} |" for isa, t in peaks.items()]
    return "\n".join(lines)


def gemm_table(out):
    text = (out / "gemm.txt").read_text().splitlines()
    head = [line for line in text[:3] if not line.startswith(("shape", "-"))]
    lines = head + ["", "| shape M x K x N | threads | fastconv GFLOPS | % of FMA peak | numpy.matmul GFLOPS | "
                        "fastconv / numpy (best of rounds) | median of per-round ratios |",
                    "|---|---:|---:|---:|---:|---:|---:|"]
    ratios = {}
    for line in text:
        cells = line.split()
        if len(cells) == 7 and re.match(r"\d", cells[0]) and cells[3].endswith("%"):
            lines.append("| " + " | ".join(cells) + " |")
            ratios.setdefault(cells[1], []).append(float(cells[6]))
    for threads, values in ratios.items():
        lines.append(f"\nmedian of the per-round ratios over all shapes, {threads} thread(s): "
                     f"{statistics.median(values):.2f} (range {min(values):.2f}-{max(values):.2f})")
    return "\n".join(lines)


def suite_table(out):
    data = json.loads((out / "suite.json").read_text())
    peak, threads = data["fma_peak_gflops_per_core"], data["threads"]
    lines = [data.get("stamp", ""), f"isa {data['isa']}, {threads} threads, FMA peak {peak:.0f} GFLOPS per core; "
             f"PyTorch {data.get('torch') or 'not installed'}", "",
             "| op | shape | fastconv ms | NumPy ms | PyTorch ms | vs NumPy | vs PyTorch | GFLOPS (% of peak) or GB/s "
             "| fastconv path |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    train = []
    for row in data["rows"]:
        s = row["seconds"]
        fc = s["fastconv"]
        ms = {k: f"{v * 1e3:.2f}" for k, v in s.items()}
        ratio = {k: f"{v / fc:.1f}x" for k, v in s.items()}
        if row["flops"]:
            gflops = row["flops"] / fc / 1e9
            rate = f"{gflops:.0f} ({100 * gflops / (peak * threads):.0f}%)"
        elif row["bytes"]:
            rate = f"{row['bytes'] / fc / 1e9:.0f} GB/s"
        else:
            rate = ""
        lines.append(f"| {row['op']} | {row['shape']} | {ms['fastconv']} | {ms.get('numpy', '-')} | "
                     f"{ms.get('torch', '-')} | {ratio.get('numpy', '-')} | {ratio.get('torch', '-')} | {rate} | "
                     f"{row.get('path') or ''} |")
        if row["op"] == "train step":
            train.append(row)
    lines += ["", "| model | batch | fastconv images/s | PyTorch images/s | NumPy backend images/s | vs PyTorch | "
                  "vs NumPy |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in train:
        model, _, batch = row["shape"].split()
        s = row["seconds"]
        rate = {k: int(batch) / v for k, v in s.items()}
        lines.append(f"| {model} | {batch} | {rate['fastconv']:.0f} | {rate.get('torch', 0):.0f} | "
                     f"{rate.get('numpy', 0):.0f} | "
                     f"{s['torch'] / s['fastconv'] if 'torch' in s else 0:.2f}x | {s['numpy'] / s['fastconv']:.1f}x |")
    return "\n".join(lines)


def epochs_table(out):
    results = {}
    for path in sorted(out.glob("epochs-*.txt")):
        for line in path.read_text().splitlines():
            match = re.match(r"(\S+) (fastconv|torch) batch (\d+): (\d+) images in (\S+) s", line)
            if match:
                model, impl, batch, images, seconds = match.groups()
                results.setdefault(model, {"batch": batch, "images": int(images)}).setdefault(impl, []).append(
                    float(seconds))
    if not results:
        raise ValueError("no epochs-*.txt with results")
    lines = ["| model | batch | images | fastconv s (rounds) | PyTorch s (rounds) | fastconv images/s (best) | "
             "PyTorch images/s (best) | ratio per round |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for model, r in results.items():
        fc, pt = r.get("fastconv", []), r.get("torch", [])
        per_round = ", ".join(f"{t / f:.2f}x" for f, t in zip(fc, pt))
        lines.append(f"| {model} | {r['batch']} | {r['images']} | {', '.join(f'{v:.1f}' for v in fc)} | "
                     f"{', '.join(f'{v:.1f}' for v in pt)} | {r['images'] / min(fc):.0f} | "
                     f"{r['images'] / min(pt) if pt else 0:.0f} | {per_round} |")
    return "\n".join(lines)


def compare_table(out):
    lines = ["| model | variant | ms per step (best) | ratio to fit before |", "|---|---|---:|---:|"]
    for line in (out / "compare.txt").read_text().splitlines():
        match = re.match(r"(\S+)\s+(.+?)\s+(\S+) ms/step\s+x(\S+)", line)
        if match:
            lines.append("| " + " | ".join(match.groups()) + " |")
    return "\n".join(lines)


def summary(out, loads):
    """A few lines of the headline ratios, each with the load it was measured under."""
    lines = []
    try:
        text = (out / "gemm.txt").read_text().splitlines()
        by_threads = {}
        for line in text:
            cells = line.split()
            if len(cells) == 7 and re.match(r"\d", cells[0]) and cells[3].endswith("%"):
                by_threads.setdefault(cells[1], []).append((float(cells[6]), int(cells[3][:-1])))
        for threads, values in sorted(by_threads.items()):
            ratios = [r for r, _ in values]
            peaks = [p for _, p in values]
            lines.append(f"- **GEMM**, {threads} thread(s): {statistics.median(ratios):.2f}x numpy.matmul's speed "
                         f"(median over {len(ratios)} shapes, {min(ratios):.2f}-{max(ratios):.2f}x), "
                         f"{min(peaks)}-{max(peaks)}% of the FMA peak ({load_note(loads, 'gemm')}).")
    except OSError:
        pass
    try:
        data = json.loads((out / "suite.json").read_text())
        groups = {}
        for row in data["rows"]:
            s = row["seconds"]
            for impl in ("numpy", "torch"):
                if impl in s:
                    key = row["op"].split()[0] if row["op"] != "train step" else "train step"
                    groups.setdefault((key, impl), []).append(s[impl] / s["fastconv"])
        names = {"conv2d": "Conv2D forward and backward", "maxpool": "2x2 max pooling",
                 "train step": "one training step", "gemm": "GEMM rows of the suite"}
        for key in ("conv2d", "maxpool", "train step"):
            parts = []
            for impl, label in (("torch", "PyTorch"), ("numpy", "the NumPy reference")):
                values = groups.get((key, impl))
                if values:
                    parts.append(f"{min(values):.1f}-{max(values):.1f}x {label} (median {statistics.median(values):.1f}x)")
            if parts:
                lines.append(f"- **{names[key]}**: " + ", ".join(parts) + f" ({data['threads']} threads).")
        lines.append(f"  (suite: {load_note(loads, 'suite')})")
    except OSError:
        pass
    return "\n".join(lines)


SECTIONS = {"peak": (peak_table, ["peak"]), "gemm": (gemm_table, ["gemm"]), "suite": (suite_table, ["suite"]),
            "epochs": (epochs_table, None), "compare": (compare_table, ["compare"])}


def sections(out):
    loads = load_lines(out)
    result = {"summary": summary(out, loads)}
    for name, (make, steps) in SECTIONS.items():
        steps = steps or sorted(k for k in loads if k.startswith("epochs"))
        try:
            body = make(out)
        except (OSError, ValueError, KeyError) as exc:
            body = f"(not measured: {exc})"
        result[name] = f"_Measured {load_note(loads, *steps) or 'with no load record'}._\n\n{body}"
    return result


def main():
    """Prints every table; with --fill PAGE, replaces each `<!-- begin NAME -->...<!-- end NAME -->`
    block of PAGE with the table NAME instead."""
    out = pathlib.Path(sys.argv[1])
    parts = sections(out)
    if len(sys.argv) > 3 and sys.argv[2] == "--fill":
        page = pathlib.Path(sys.argv[3])
        text = page.read_text()
        for name, body in parts.items():
            text = re.sub(rf"(<!-- begin {name} -->\n).*?(<!-- end {name} -->)",
                          lambda m: m.group(1) + body + "\n" + m.group(2), text, flags=re.S)
        page.write_text(text)
        return
    for name, body in parts.items():
        print(f"### {name}\n\n{body}\n")


if __name__ == "__main__":
    main()
