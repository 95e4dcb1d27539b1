"""Keras-style progress bar.

verbose=1 on a terminal redraws one line in place (throttled to `interval` seconds); when stdout is
not a terminal (a log file, a pipe, pytest's capture) it writes only the final line of each run, so
logs stay readable. verbose=2 writes one summary line at the end; verbose=0 writes nothing.
"""
import sys
import time


def _format_duration(seconds):
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    if seconds >= 60:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds}s"


def _format_per_unit(seconds, unit):
    if seconds >= 1:
        return f"{seconds:.0f}s/{unit}"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/{unit}"
    return f"{seconds * 1e6:.0f}us/{unit}"


def _format_value(value):
    return f"{value:.4f}" if abs(value) > 1e-3 or value == 0 else f"{value:.4e}"


class Progbar:
    """Progress towards `target` steps (None if unknown) with averaged metric values.

    Values named in `stateful_metrics` are shown as given; others are averaged over the steps seen.
    With `count_name` (e.g. "images"), `update(..., count=n)` reports that n of them have been
    processed so far, and the bar shows their rate ("9,271 images/s") after the timing.
    """

    def __init__(self, target, width=30, verbose=1, interval=0.05, stateful_metrics=None, unit_name="step",
                 count_name=None):
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        self.target, self.width, self.verbose, self.interval = target, width, verbose, interval
        self.stateful_metrics = set(stateful_metrics or ())
        self.unit_name = unit_name
        self.count_name = count_name
        self._count = None
        self._count_elapsed = 0.0  # seconds from the start to the last update that gave a count
        self._values = {}  # name -> [weighted sum, weight] or a stateful value
        self._seen = 0
        self._start = time.time()
        self._last_draw = 0.0
        self._drawn_width = 0
        self._dynamic = None

    def _stream(self):
        return sys.stdout

    def _is_dynamic(self):
        if self._dynamic is None:
            stream = self._stream()
            self._dynamic = hasattr(stream, "isatty") and stream.isatty()
        return self._dynamic

    def update(self, current, values=None, finalize=None, count=None):
        if count is not None:
            self._count, self._count_elapsed = count, time.time() - self._start
        if finalize is None:
            finalize = self.target is not None and current >= self.target
        for name, value in values or ():
            if name in self.stateful_metrics:
                self._values[name] = value
            else:
                steps = max(current - self._seen, 1)
                total = self._values.setdefault(name, [0.0, 0])
                total[0] += value * steps
                total[1] += steps
        self._seen = current
        if self.verbose == 0:
            return
        now = time.time()
        if self.verbose == 1 and self._is_dynamic():
            if finalize or now - self._last_draw >= self.interval:
                self._draw(current, now, finalize, redraw=True)
                self._last_draw = now
        elif finalize:
            self._draw(current, now, finalize, redraw=False)

    def add(self, n, values=None):
        self.update(self._seen + n, values)

    def _rate_text(self):
        # Over the time the counted items took, so that later work (validation) does not dilute it.
        if self.count_name is None or self._count is None or self._count_elapsed <= 0:
            return ""
        return f" - {self._count / self._count_elapsed:,.0f} {self.count_name}/s"

    def _metric_text(self):
        parts = []
        for name, value in self._values.items():
            average = value[0] / max(value[1], 1) if isinstance(value, list) else value
            parts.append(f" - {name}: {_format_value(average)}")
        return "".join(parts)

    def _draw(self, current, now, finalize, redraw):
        elapsed = now - self._start
        per_step = elapsed / current if current else 0.0
        if self.verbose == 2:
            text = (f"{current}/{self.target} - {_format_duration(elapsed)}"
                    f" - {_format_per_unit(per_step, self.unit_name)}{self._rate_text()}{self._metric_text()}\n")
            self._write(text)
            return
        count = f"{current}/{self.target}" if self.target else f"{current}/Unknown"
        if self.target:
            count = count.rjust(2 * len(str(self.target)) + 1)
            filled = int(self.width * min(current / self.target, 1))
            if filled < self.width:
                bar = "[" + "=" * filled + ">" + "." * (self.width - filled - 1) + "]"
            else:
                bar = "[" + "=" * self.width + "]"
        else:
            bar = ""
        if finalize:
            timing = f" - {_format_duration(elapsed)} {_format_per_unit(per_step, self.unit_name)}"
        else:
            eta = per_step * (self.target - current) if self.target else 0
            timing = f" - ETA: {_format_duration(eta)}"
        text = f"{count} {bar}{timing}{self._rate_text()}{self._metric_text()}"
        if redraw:
            padding = " " * max(self._drawn_width - len(text), 0)
            self._drawn_width = len(text)
            self._write("\r" + text + padding + ("\n" if finalize else ""))
        else:
            self._write(text + "\n")

    def _write(self, text):
        stream = self._stream()
        stream.write(text)
        stream.flush()
