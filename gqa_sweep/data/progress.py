"""What a prepare is doing: a bar on a terminal, a log line every few seconds otherwise."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("gqa_sweep.data")
LINE_EVERY_S = 10.0


def counted(n: int, noun: str) -> str:
    """`1 document`, `2 documents`, `1,000 documents`."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


class Progress:
    def __init__(self, enabled: bool = True, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.stage, self.done, self.total, self.t0, self.last = "", 0, 0, time.perf_counter(), 0.0
        self.drawn = False

    def start(self, stage: str, total: int = 0, done: int = 0) -> None:
        self.end()
        self.stage, self.total, self.done, self.t0, self.last = stage, total, done, time.perf_counter(), 0.0
        self.note(stage + (f" ({total / 1e6:,.1f} MB)" if total else ""))

    def note(self, message: str) -> None:
        if self.enabled:
            if self.tty and self.drawn:  # end the bar's line first
                self.stream.write("\n")
                self.drawn = False
            log.info(message)
            if not logging.getLogger().handlers and not log.handlers:  # nobody configured logging: still say it
                print(message, file=self.stream, flush=True)

    def update(self, nbytes: int, extra: str = "") -> None:
        self.done += nbytes
        if not self.enabled:
            return
        now = time.perf_counter()
        elapsed = max(now - self.t0, 1e-9)
        mb, rate = self.done / 1e6, self.done / 1e6 / elapsed
        of = f" of {self.total / 1e6:,.0f}" if self.total else ""
        if self.tty:
            if now - self.last < 0.2:
                return
            frac = min(1.0, self.done / self.total) if self.total else 0.0
            bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
            self.stream.write(f"\r{self.stage} [{bar}] {mb:,.0f}{of} MB {rate:.1f} MB/s {extra}   ")
            self.stream.flush()
            self.drawn = True
        elif now - self.last >= LINE_EVERY_S:
            self.note(f"{self.stage}: {mb:,.0f}{of} MB, {rate:.1f} MB/s {extra}".rstrip())
        self.last = now

    def end(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
        self.stage, self.drawn = "", False
