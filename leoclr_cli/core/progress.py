"""Progress of the long loops (training steps, feature extraction), wherever the output goes.

* stderr is a terminal: a rich bar with throughput and ETA (:class:`Reporter` updates its text).
* stderr is a file or a pipe (``> run.log 2>&1``, a batch scheduler): one plain line every
  ``--log-every`` steps, by default about every :data:`INTERVAL_S` seconds, from the first minute,
  e.g. ``pretrain leoclr: epoch 1/200 step 30/5004 loss 9.8812 lr 0.03 412 samples/s ETA 2d 3:04:05``.
* ``--quiet``: nothing (warnings and the command's final summary are printed elsewhere).

The step interval is a process-wide setting (:func:`configure`, called once by the CLI), like a
logging level, so the runners need no extra argument.

    with Reporter("features", total=len(loader), console=console, quiet=False) as rep:
        for batch in loader:
            ...
            rep.advance()
            if rep.due():
                rep.show(f"batch {rep.done}/{rep.total} {rate:.0f} images/s")
"""

from __future__ import annotations

import time
from typing import Any, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

#: seconds between progress lines in a log when no step interval is set
INTERVAL_S = 30.0
_every_steps: Optional[int] = None


def configure(log_every: Optional[int]) -> None:
    """Progress lines every ``log_every`` steps (None: every :data:`INTERVAL_S` seconds)."""
    global _every_steps
    _every_steps = log_every


def eta_text(seconds: float) -> str:
    """``1:02:03``, or ``2d 1:02:03`` beyond a day."""
    s = max(0, int(round(seconds)))
    days, s = divmod(s, 86400)
    clock = f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days}d {clock}" if days else clock


class Reporter:
    """``total`` steps of the loop ``desc``: a bar, plain lines or nothing (see the module docstring)."""

    def __init__(self, desc: str, total: int, *, console: Optional[Console], quiet: bool = False,
                 clock: Any = time.monotonic):
        self.desc, self.total, self.done, self.clock = desc, total, 0, clock
        self.console = console
        if quiet or console is None:
            self.mode = "off"
        else:
            self.mode = "bar" if console.is_terminal else "lines"
        self.every_steps = _every_steps
        self._bar: Optional[Progress] = None
        self._task: Any = None

    def __enter__(self) -> "Reporter":
        self.started = self.last = self.clock()
        if self.mode == "bar":
            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console, transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.desc, total=self.total, info="")
        elif self.mode == "lines":
            every = f"every {self.every_steps} steps" if self.every_steps else f"about every {INTERVAL_S:.0f} s"
            self.line(f"{self.total} steps to go; progress {every}")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def due(self) -> bool:
        """Whether :meth:`show` prints a line now (a log, and the step or time interval has passed)."""
        if self.mode != "lines":
            return False
        if self.every_steps:
            return self.done % self.every_steps == 0
        return self.clock() - self.last >= INTERVAL_S

    def show(self, text: str) -> None:
        """The bar's text; in a log, one line with ``text`` and the ETA when :meth:`due`."""
        if self._bar is not None:
            self._bar.update(self._task, info=text)
        elif self.due():
            self.last = self.clock()
            rate = self.done / max(self.last - self.started, 1e-9)
            self.line(f"{text} ETA {eta_text((self.total - self.done) / max(rate, 1e-9))}")

    def line(self, text: str) -> None:
        """One plain line in a log (nothing on a terminal, where the bar is, or when quiet)."""
        if self.mode == "lines":
            self.console.print(f"{self.desc}: {text}", highlight=False, markup=False, soft_wrap=True)
