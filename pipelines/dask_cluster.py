"""A local Dask cluster for the stages: a scheduler and N worker processes on localhost.

    python -m pipelines.dask_cluster --workers 2
    # prints: scheduler tcp://127.0.0.1:PORT  (then serves until Ctrl-C / SIGTERM)
    python -m pipelines.score ... \\
        --runner=apache_beam.runners.dask.dask_runner.DaskRunner \\
        --dask_client_address=tcp://127.0.0.1:PORT

The same cluster comes from Dask's own command lines (``dask scheduler`` and ``dask
worker tcp://...:8786 --nworkers 2 --nthreads 1``), which is how a cluster spans
several machines. Every worker must import ``rlds_lm`` and ``pipelines`` (the same
checkout or installed version as the driver): the stages ship their DoFns pickled.

:class:`LocalDaskCluster` runs this module in a child process (tests, benchmarks):
``with LocalDaskCluster(2) as cluster: ... cluster.address ...``; the cluster is always
stopped on exit, and :meth:`LocalDaskCluster.worker_pids` names the worker processes.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

READY = "scheduler "  # the line prefix that announces the scheduler's address
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def dask_flags(address: str) -> list[str]:
  """The Beam flags that run a stage on the Dask scheduler at ``address``."""
  return [f"--runner={DASK_RUNNER}", f"--dask_client_address={address}"]


def serve(workers: int, threads: int = 1, port: int = 0,
          memory_limit: str = "auto") -> None:
  """Starts the cluster, prints ``scheduler <address>`` and serves until signalled."""
  import distributed  # pylint: disable=g-import-not-at-top

  stop = threading.Event()
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())
  cluster = distributed.LocalCluster(
      n_workers=workers, threads_per_worker=threads, processes=True,
      host="127.0.0.1", scheduler_port=port, dashboard_address=None,
      memory_limit=memory_limit)
  try:
    print(f"{READY}{cluster.scheduler_address}", flush=True)
    print(f"workers: {workers} process(es) x {threads} thread(s); stop with Ctrl-C",
          flush=True)
    while not stop.wait(0.5):
      pass
  finally:
    cluster.close(timeout=20)


class LocalDaskCluster:
  """``python -m pipelines.dask_cluster`` in a child process, as a context manager.

  Args:
    workers: worker processes (one thread each).
    start_timeout: seconds to wait for the scheduler's address.
  """

  def __init__(self, workers: int = 2, start_timeout: float = 120.0):
    self.workers = workers
    self.start_timeout = start_timeout
    self.address = ""
    self._process: subprocess.Popen | None = None

  def start(self) -> "LocalDaskCluster":
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    self._process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.dask_cluster", f"--workers={self.workers}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        start_new_session=True)
    lines: list[str] = []
    found = threading.Event()

    def _read():
      for line in self._process.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if line.startswith(READY):
          self.address = line[len(READY):].strip()
          found.set()
      found.set()

    threading.Thread(target=_read, daemon=True).start()
    if not found.wait(self.start_timeout) or not self.address:
      self.stop()
      raise RuntimeError(f"the local Dask cluster did not start in {self.start_timeout}s: "
                         f"{''.join(lines)[-2000:]}")
    self.wait_for_workers()
    return self

  def wait_for_workers(self, timeout: float = 120.0) -> None:
    import distributed  # pylint: disable=g-import-not-at-top
    with distributed.Client(self.address, timeout=30) as client:
      client.wait_for_workers(self.workers, timeout=timeout)

  def worker_pids(self) -> dict[str, int]:
    """Worker address -> process id."""
    import distributed  # pylint: disable=g-import-not-at-top
    with distributed.Client(self.address, timeout=30) as client:
      return client.run(os.getpid)

  def stop(self) -> None:
    """Stops the scheduler and its workers (the whole process group), always."""
    process, self._process = self._process, None
    if process is None or process.poll() is not None:
      return
    process.terminate()
    try:
      process.wait(30)
    except subprocess.TimeoutExpired:
      pass
    try:  # anything left of the group (workers whose nanny died first)
      os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
      pass
    process.wait(10)

  def __enter__(self) -> "LocalDaskCluster":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m pipelines.dask_cluster",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--workers", type=int, default=2, help="worker processes")
  parser.add_argument("--threads", type=int, default=1, help="threads per worker")
  parser.add_argument("--port", type=int, default=0,
                      help="scheduler port (0: any free port; Dask's default is 8786)")
  parser.add_argument("--memory_limit", default="auto",
                      help="memory limit per worker (e.g. 4GiB; 'auto': a share of RAM)")
  args = parser.parse_args(argv)
  if args.workers < 1:
    parser.error(f"--workers must be >= 1, found {args.workers}")
  serve(args.workers, args.threads, args.port, args.memory_limit)
  return 0


if __name__ == "__main__":
  sys.exit(main())
