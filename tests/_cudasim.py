"""A block scheduler for Numba's CUDA simulator that runs one thread at a time (tests only).

The simulator runs each CUDA thread of a block as a Python thread. Its BlockManager finds out
when every thread has reached syncthreads (or finished) by looping over the threads, calling
is_alive() on each, with no pause, and a barrier then wakes every thread of the block at once:
dozens of threads fight for the GIL (strace of two local2d tests: 2.1 M futex calls, as much
system time as user time). Here the manager hands a baton: it lets one thread run until that
thread reaches syncthreads or finishes, then the next; when every live thread waits at the
barrier, it starts the next round, in thread order and then reversed, alternately (so a missing
barrier shows up as a wrong result, as in the CUDA C emulator). Only two threads are ever awake:
each turn is one futex wake and one wait. Everything else is the simulator's own: its threads,
their abort flags and exception reporting.

The replacement is installed only over the code it was written against (a hash of the two
methods' source); any other numba-cuda keeps its own scheduler.
"""
import hashlib
import inspect
import threading

import numpy as np

# sha1 of inspect.getsource(BlockManager.run) + inspect.getsource(BlockThread.syncthreads)
KNOWN = {"ef13585177b487c4feaab73d56940ba92edebd5d"}    # numba-cuda 0.30.4


def _source_hash(kernel):
    src = inspect.getsource(kernel.BlockManager.run) + inspect.getsource(
        kernel.BlockThread.syncthreads)
    return hashlib.sha1(src.encode()).hexdigest()


def install():
    """Patch the simulator's scheduler if it is the known one; returns whether it did."""
    from numba.cuda.simulator import kernel

    if getattr(kernel.BlockManager, "_sharenet_baton", False):
        return True
    if _source_hash(kernel) not in KNOWN:
        return False
    thread_run = kernel.BlockThread.run

    def syncthreads(self):
        if self.abort:
            raise RuntimeError("abort flag set on syncthreads call")
        self._manager._turn_over.release()       # the baton back to the manager
        self._go.acquire()                       # until the next round reaches this thread
        if self.abort:
            raise RuntimeError("abort flag set on syncthreads clear")

    def run_thread(self):
        self._go.acquire()                       # its first turn
        try:
            if not self.abort:
                thread_run(self)                 # stores an exception in self.exception
        finally:
            self.finished = True
            self._manager._turn_over.release()

    def run(self, grid_point, *args):
        self._turn_over = threading.Semaphore(0)
        threads = []
        for block_point in np.ndindex(*self._block_dim):
            def target():
                self._f(*args)
            t = kernel.BlockThread(target, self, grid_point, block_point, self._debug)
            t._go, t.finished = threading.Semaphore(0), False
            threads.append(t)
        for t in threads:
            t.start()
        live, forward = threads, True
        while live:
            # one round: each live thread runs to its next syncthreads or to its end
            for t in (live if forward else live[::-1]):
                t._go.release()
                self._turn_over.acquire()
                if t.exception:
                    # the others wait for their turn: let them leave (not joined, as the
                    # simulator does, for debugging)
                    for other in threads:
                        other.abort = True
                        if not other.finished:
                            other._go.release()
                    raise t.exception[0].with_traceback(t.exception[1])
            live = [t for t in live if not t.finished]
            forward = not forward

    kernel.BlockThread.syncthreads = syncthreads
    kernel.BlockThread.run = run_thread
    kernel.BlockManager.run = run
    kernel.BlockManager._sharenet_baton = True
    return True
