"""Progress for long work: a redrawn bar on a terminal, a few plain lines in a log.

tqdm redraws with carriage returns, which in a file or a CI log become one line per update
(a training run printed a line per epoch). Off a terminal we print a line at most every
``every`` seconds and one summary line when the phase ends.
"""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


class Progress:
    """``with Progress(total, desc="training", unit="epoch") as bar: bar.update(1, loss="0.12")``.

    Args:
        total: units of work expected (the bar may close early, e.g. on early stopping).
        desc: what is being done; unit: what is counted.
        enabled: False shows nothing.
        initial: units already done (a resumed simulation).
        leave: keep the finished bar on a terminal.
        every: seconds between lines off a terminal.
    """

    def __init__(self, total: int, *, desc: str, unit: str, enabled: bool = True, initial: int = 0, leave: bool = True, every: float = 30.0):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n, self.postfix = initial, {}
        self.enabled = enabled
        self.stream = sys.stderr
        self.terminal = enabled and self.stream.isatty()
        self.start = self.last = time.perf_counter()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=self.stream) if self.terminal else None

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        self.postfix = postfix
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
        elif self.enabled and time.perf_counter() - self.last >= self.every:
            self.last = time.perf_counter()
            self._line()

    def _line(self, summary: str = "") -> None:
        seconds = time.perf_counter() - self.start
        details = ", ".join(f"{k} {v}" for k, v in self.postfix.items())
        text = f"{self.desc}: {self.n}/{self.total} {self.unit}s in {seconds:.1f} s" + (f" ({details})" if details else "")
        print(text + (f"; {summary}" if summary else ""), file=self.stream, flush=True)

    def close(self, summary: str = "") -> None:
        """End the phase; off a terminal print one line (with ``summary`` appended)."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._line(summary)
        self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Progress"]
