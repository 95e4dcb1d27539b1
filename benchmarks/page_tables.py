"""Markdown tables for BENCHMARKS.md from the output folder of benchmarks/benchmark_page.sh.

    python benchmarks/page_tables.py OUT_DIR > tables.md

Reads peak.txt, gemm.txt, suite.json, epochs-*.txt, epochs3-*.txt, compare.txt and load.log; prints each
table with the load average before and after the step (or the steps) that measured it. Needs only the
standard library.
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


def load_span(loads, names):
    """One note for a section measured by many steps: its clock range and the range of the 1-minute load
    averages at their starts and ends."""
    entries = [loads[name] for name in names if "start" in loads.get(name, {}) and "end" in loads[name]]
    if not entries:
        return ""
    values = [float(entry[which][1]) for entry in entries for which in ("start", "end")]
    return (f"{entries[0]['start'][0]}-{entries[-1]['end'][0]} UTC in {len(entries)} runs, load average "
            f"{min(values):.2f}-{max(values):.2f} at their starts and ends")


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


LIBRARIES = {"fastconv": "fastconv", "torch": "PyTorch", "keras-tf": "Keras 3 on TensorFlow"}


def epochs3_results(out):
    """What the epochs3 step measured: {"models": {model: {"batch", "images", "flops", library: [(round,
    seconds)]}}, "peak": GFLOPS the floor divides by, "peaks": the readings, "versions": {library: line},
    "stamp": fastconv's stamp line}; ValueError when there are no runs."""
    result = {"models": {}, "peaks": [], "versions": {}, "stamp": "", "threads": None}
    for path in sorted(out.glob("epochs3-floor*.txt")):
        for line in path.read_text().splitlines():
            peak = re.match(r"FMA peak (\S+): 1 thread (\S+) GFLOPS, (\d+) threads (\S+) GFLOPS", line)
            flops = re.match(r"(\S+) training FLOPs per image: (\d+)", line)
            if line.startswith("fastconv ") and "commit" in line:
                result["stamp"] = line
            elif peak:
                one, threads, many = float(peak.group(2)), int(peak.group(3)), float(peak.group(4))
                result["peaks"].append((one, many))
                result["threads"] = threads
            elif flops:
                result["models"].setdefault(flops.group(1), {})["flops"] = int(flops.group(2))
    for path in sorted(out.glob("epochs3-*-*.txt")):
        match = re.fullmatch(r"epochs3-(fastconv|torch|keras-tf)-(\d+)\.txt", path.name)
        if not match:
            continue
        library, round_ = match.group(1), int(match.group(2))
        lines = path.read_text().splitlines()
        for line in lines:
            if "threads" in line and "load average" in line and library not in result["versions"]:
                result["versions"][library] = line.rsplit(";", 1)[0]
            run = re.match(r"(\S+) (?:fastconv|torch|keras) batch (\d+): (\d+) images in (\S+) s", line)
            if run:
                model = result["models"].setdefault(run.group(1), {})
                model.update(batch=int(run.group(2)), images=int(run.group(3)))
                model.setdefault(library, []).append((round_, float(run.group(4))))
    if (out / "peak.txt").exists() and result["threads"]:  # the peak step of the same run, if it ran
        isa = re.search(r"FMA peak (\S+):", "\n".join(p.read_text() for p in out.glob("epochs3-floor*.txt")))
        cells = [line.split() for line in (out / "peak.txt").read_text().splitlines()]
        readings = {int(c[1]): float(c[2]) for c in cells if len(c) == 3 and isa and c[0] == isa.group(1)}
        if 1 in readings and result["threads"] in readings:
            result["peaks"].append((readings[1], readings[result["threads"]]))
    result["models"] = {name: m for name, m in result["models"].items() if "fastconv" in m}
    if not result["models"]:
        raise ValueError("no epochs3-fastconv-*.txt with results")
    # The FMA units are per core: threads x the one-thread reading is the cores' peak even when other
    # processes' load lowered the reading on all threads; the larger of the two keeps the floor a floor.
    threads = result["threads"] or 1
    result["peak"] = max((max(many, threads * one) for one, many in result["peaks"]), default=None)
    return result


def busy_peak_note(peaks, threads):
    """A warning when the peak readings disagree: other processes took the cores while they ran, so
    the highest reading is below the cores' peak and the floor above the true one."""
    cores = [threads * one for one, _ in peaks] + [many for _, many in peaks]
    if min(cores) >= 0.9 * max(cores):
        return ""
    return (f" The readings differ by up to {100 * (max(cores) / min(cores) - 1):.0f}%: the machine was busy, "
            "the peak may be higher than the highest reading and the floor lower than this.")


def run_load(loads, name):
    """'start/end' 1-minute load averages of one step, one decimal."""
    entry = loads.get(name, {})
    return "/".join(f"{float(entry[w][1]):.1f}" if w in entry else "?" for w in ("start", "end"))


def epochs3_table(out):
    data = epochs3_results(out)
    loads = load_lines(out)
    versions = "; ".join(data["versions"][lib] for lib in LIBRARIES if lib in data["versions"])
    lines = [data["stamp"], f"Libraries: {versions}.", "",
             "| model | batch | library | epoch s per round | best s | images/s (best) | spread of rounds | "
             "fastconv's speed-up (best / best) | per round | load average at each run's start/end |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, model in data["models"].items():
        fastconv = dict(model["fastconv"])
        for library, label in LIBRARIES.items():
            runs = sorted(model.get(library, []))
            if not runs:
                continue
            times = [seconds for _, seconds in runs]
            best = min(times)
            per_round = [seconds / fastconv[r] for r, seconds in runs if r in fastconv]
            speedup = f"{best / min(fastconv.values()):.2f}x" if library != "fastconv" else ""
            rounds = ", ".join(f"{r:.2f}x" for r in per_round) if library != "fastconv" else ""
            load = ", ".join(run_load(loads, f"epochs3-{library}-{r}") for r, _ in runs)
            lines.append(f"| {name} | {model['batch']} | {label} | {', '.join(f'{t:.3g}' for t in times)} | "
                         f"{best:.3g} | {model['images'] / best:.0f} | {100 * (max(times) / best - 1):.0f}% | "
                         f"{speedup} | {rounds} | {load} |")
    if data["peak"] and any("flops" in m for m in data["models"].values()):
        readings = ", ".join(f"{one:.1f} / {many:.1f}" for one, many in data["peaks"])
        threads = data["threads"]
        lines += ["", f"FMA peak readings (1 thread / {threads} threads, GFLOPS; before and after the runs, "
                      f"and of the peak step if it ran): {readings}. The floor divides by {data['peak']:.1f} "
                      f"GFLOPS, the larger of the {threads}-thread reading and {threads} x the 1-thread reading."
                  + busy_peak_note(data["peaks"], threads), "",
                  "| model | training MFLOP per image (direct) | FMA floor s per epoch | fastconv best s | "
                  "fastconv epoch / floor | effective % of FMA peak: fastconv | PyTorch | Keras 3 on TensorFlow |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, model in data["models"].items():
            if "flops" not in model:
                continue
            work = model["flops"] * model["images"] / 1e9  # GFLOP per epoch, direct method
            floor = work / data["peak"]
            effective = {lib: f"{100 * work / min(t for _, t in model[lib]) / data['peak']:.0f}%"
                         for lib in LIBRARIES if model.get(lib)}
            best = min(t for _, t in model["fastconv"])
            lines.append(f"| {name} | {model['flops'] / 1e6:.2f} | {floor:.3g} | {best:.3g} | {best / floor:.2f} | "
                         f"{effective['fastconv']} | {effective.get('torch', '-')} | "
                         f"{effective.get('keras-tf', '-')} |")
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


def summary_epochs3(out, loads):
    """The headline lines of the epochs3 step: fastconv's speed against the others, and against the floor."""
    try:
        data = epochs3_results(out)
    except ValueError:
        return ""
    lines = []
    for name, model in data["models"].items():
        best = {lib: min(t for _, t in model[lib]) for lib in LIBRARIES if model.get(lib)}
        parts = [f"{best[lib] / best['fastconv']:.2f}x the speed of {LIBRARIES[lib]}"
                 for lib in ("torch", "keras-tf") if lib in best]
        if data["peak"] and "flops" in model:
            floor = model["flops"] * model["images"] / 1e9 / data["peak"]
            parts.append(f"the epoch takes {best['fastconv'] / floor:.2f}x the model's FMA floor without Winograd "
                         f"({floor:.3g} s)")
        lines.append(f"- **{name} training epoch** (batch {model['batch']}, best of {len(model['fastconv'])}, "
                     f"{best['fastconv']:.3g} s): " + ", ".join(parts) + ".")
    lines.append(f"  (epochs: {load_span(loads, [k for k in loads if k.startswith('epochs3-')])})")
    return "\n".join(lines)


# name: (table, its step names, or the prefix of the names of its many steps)
SECTIONS = {"peak": (peak_table, ["peak"]), "gemm": (gemm_table, ["gemm"]), "suite": (suite_table, ["suite"]),
            "epochs": (epochs_table, "epochs-"), "epochs3": (epochs3_table, "epochs3-"),
            "compare": (compare_table, ["compare"])}


def sections(out):
    loads = load_lines(out)
    result = {"summary": summary(out, loads), "summary-epochs3": summary_epochs3(out, loads)}
    for name, (make, steps) in SECTIONS.items():
        if isinstance(steps, str):
            note = load_span(loads, [k for k in loads if k.startswith(steps)])
        else:
            note = load_note(loads, *steps)
        try:
            body = make(out)
        except (OSError, ValueError, KeyError) as exc:
            body = f"(not measured: {exc})"
        result[name] = f"_Measured {note or 'with no load record'}._\n\n{body}"
    return result


def main():
    """Prints every table; with --fill PAGE, replaces each `<!-- begin NAME -->...<!-- end NAME -->`
    block of PAGE with the table NAME instead, leaving the blocks of tables OUT_DIR has no data for (so a
    run of some of the steps refreshes only theirs; the summary is rebuilt from what OUT_DIR has)."""
    out = pathlib.Path(sys.argv[1])
    parts = sections(out)
    if len(sys.argv) > 3 and sys.argv[2] == "--fill":
        page = pathlib.Path(sys.argv[3])
        text = page.read_text()
        for name, body in parts.items():
            if "(not measured: " in body or not body.strip():
                continue
            text = re.sub(rf"(<!-- begin {name} -->\n).*?(<!-- end {name} -->)",
                          lambda m: m.group(1) + body + "\n" + m.group(2), text, flags=re.S)
        page.write_text(text)
        return
    for name, body in parts.items():
        print(f"### {name}\n\n{body}\n")


if __name__ == "__main__":
    main()
