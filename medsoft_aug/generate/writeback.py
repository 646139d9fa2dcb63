"""Background writer: the CPU work of a finished batch runs on one thread while the next batch is generated.

``balance`` hands each finished batch (the engine's output arrays) to :class:`BackgroundWriter` as a callable that
picks the candidates, computes the evidence, writes the PNG / NIfTI / DICOM files and masks, hashes them and
appends the batch to the resume ledger. One worker thread runs these callables strictly in submission order, so
the ledger's order, the failure list and every written byte are those of the sequential loop; only the timing
changes (GPU generation of batch i+1 overlaps the writing of batch i). PNG (zlib), gzip and sha256 release the
GIL for most of their time, so the overlap is real even in CPython.

Bounded: at most ``depth`` batches wait (default 1: one being written, one queued), so memory stays
O(batch) and a slow disk slows generation instead of filling RAM. Errors: the first exception raised by a job
stops the writer (later jobs are dropped, none of them reaches the ledger) and is raised again, the same object,
in the submitting thread at the next :meth:`BackgroundWriter.submit` or at the end of the ``with`` block, so the
CLI reports it exactly as if it had been raised in the loop itself. When the submitting thread fails, the jobs
already queued are finished first (they are whole batches: their samples stay listed for resume), then its
exception propagates. A killed process loses at most the queued batches, none of which was listed in the ledger,
so resume stays exact (the ledger only ever lists files written in full).

``depth=0`` runs every job inline in :meth:`submit` (the sequential loop; used by the tests to show that the
outputs are byte-identical with and without the overlap).
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Optional

log = logging.getLogger("medsoft_aug.generate.writeback")

Job = Callable[[], None]
_STOP = object()


class BackgroundWriter:
    """Run submitted jobs in order on one background thread (see the module docstring). Use as::

        with BackgroundWriter() as writer:
            for batch in batches:
                outs = generate(batch)                    # model work, this thread
                writer.submit(lambda: write(batch, outs))  # CPU work, the writer thread
    """

    def __init__(self, depth: int = 1, name: str = "medsoft-aug-writer"):
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self.depth = depth
        self.name = name
        self.done = 0                      # jobs finished (read by the submitting thread for progress)
        self._error: Optional[BaseException] = None
        self._queue: "queue.Queue[object]" = queue.Queue(maxsize=max(1, depth))
        self._thread: Optional[threading.Thread] = None

    # -- the worker ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                if self._error is None:    # after a failure: drop the rest, list nothing more
                    job()
                    self.done += 1
            except BaseException as e:     # noqa: BLE001 - handed to the submitting thread, not swallowed
                self._error = e
            finally:
                self._queue.task_done()

    # -- the submitting side -------------------------------------------------------------------------------
    def __enter__(self) -> "BackgroundWriter":
        if self.depth > 0:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def submit(self, job: Job) -> None:
        """Queue ``job`` (blocks while ``depth`` jobs wait); raise a previous job's error first."""
        self.raise_error()
        if self._thread is None:
            if self.depth > 0:
                raise RuntimeError("BackgroundWriter used outside its with block")
            job()
            self.done += 1
            return
        self._queue.put(job)

    def raise_error(self) -> None:
        """Raise the first error of a finished job (in the submitting thread), if any."""
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Wait for every queued job (or the writer's failure) and stop the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if exc is None:
            self.raise_error()
        elif self._error is not None and self._error is not exc:
            log.warning("background writer also failed: %s", type(self._error).__name__)
