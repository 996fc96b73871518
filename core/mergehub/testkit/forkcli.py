"""Run ``python -m mergehub`` for the tests without paying torch's import on every run.

Most of a tiny test merge's time is Python importing torch (about 1.5 s of CPU per CLI run, and
the suite runs the CLI hundreds of times). A fork server imports the heavy third-party libraries
once and forks one child per CLI run. The child is still a real, separate process running the real
entry point, with its own arguments, working directory, environment, output streams and exit
status, and it imports mergehub itself fresh (the server never imports mergehub, so no plugin
registry, console or cache is shared between runs).

Only libraries that read nothing from the environment when imported are preloaded; a run whose
environment changes a variable those libraries or their native runtimes do read at load time
(``OMP_*``, ``MKL_*``, ``TORCH_*``, ``PYTHON*`` except ``PYTHONPATH``, …), or that puts a
``sitecustomize`` module on ``PYTHONPATH``, is started as an ordinary subprocess instead, as is every run where ``fork`` is not available or ``MERGEHUB_TEST_FORK=0``.

This file is also the server: ``python forkcli.py`` (run as a script, so it does not import the
``mergehub`` package) reads one JSON request per line on stdin and answers with the exit status.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

#: Imported once by the server: large, and nothing in them depends on the run's environment.
PRELOAD = ("torch", "numpy", "safetensors.torch", "yaml", "jsonschema", "rich.console", "pluggy")
#: Environment variables read when those libraries load: a run that changes one gets a fresh interpreter.
LOAD_TIME_PREFIXES = ("OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "TORCH", "PYTORCH_", "ATEN_", "CUDA", "LD_",
                      "MALLOC_", "NUMPY_", "PYTHON")
#: Seconds a CLI run may take (as the subprocess fallback's timeout).
TIMEOUT = 600


def needs_fresh_interpreter(env: dict[str, str], baseline: dict[str, str]) -> bool:
    """True when ``env`` differs from ``baseline`` in a variable read when the preloaded libraries load,
    or puts a ``sitecustomize``/``usercustomize`` module on the path (run only when an interpreter starts)."""
    changed = {k for k in env.keys() | baseline.keys() if env.get(k) != baseline.get(k)}
    if any(k.startswith(LOAD_TIME_PREFIXES) and k != "PYTHONPATH" for k in changed):
        return True
    entries = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return any((Path(p) / f"{name}.py").exists() for p in entries for name in ("sitecustomize", "usercustomize"))


class ForkClient:
    """The test process's handle on one fork server, started on first use and stopped at exit."""

    def __init__(self) -> None:
        self.env = dict(os.environ)
        self.lock = threading.Lock()
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=self.env)
        ready = self.proc.stdout.readline()  # type: ignore[union-attr]
        if ready.strip() != "ready":
            raise RuntimeError(f"the CLI fork server did not start: {ready!r}")
        atexit.register(self.close)

    def run(self, args: list[str], cwd: str, env: dict[str, str], stdout: Path, stderr: Path) -> int:
        request = {"args": args, "cwd": cwd, "env": env, "stdout": str(stdout), "stderr": str(stderr)}
        with self.lock:
            self.proc.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            answer = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not answer:
            raise RuntimeError("the CLI fork server stopped")
        return int(json.loads(answer)["returncode"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=30)


_client: ForkClient | None = None
_client_lock = threading.Lock()


def fork_available(env: dict[str, str]) -> bool:
    return hasattr(os, "fork") and os.environ.get("MERGEHUB_TEST_FORK", "1") != "0" and \
        env.get("MERGEHUB_TEST_FORK", "1") != "0"


def run_mergehub(args: list[str], cwd: Path | None, env: dict[str, str], workdir: Path) -> tuple[int, str, str]:
    """``python -m mergehub *args`` in ``cwd`` with exactly ``env``: (exit status, stdout, stderr).

    ``workdir`` holds the two output files of a forked run (deleted afterwards).
    """
    global _client
    where = str(cwd) if cwd is not None else os.getcwd()
    with _client_lock:
        if _client is None and fork_available(env):
            _client = ForkClient()
    if _client is None or not fork_available(env) or needs_fresh_interpreter(env, _client.env):
        proc = subprocess.run([sys.executable, "-m", "mergehub", *args], capture_output=True, text=True, cwd=where,
                              env=env, timeout=TIMEOUT, check=False)
        return proc.returncode, proc.stdout, proc.stderr
    stem = workdir / f"cli-{os.getpid()}-{threading.get_ident()}"
    out, err = stem.with_suffix(".out"), stem.with_suffix(".err")
    try:
        code = _client.run(args, where, env, out, err)
        return code, out.read_text(encoding="utf-8"), err.read_text(encoding="utf-8")
    finally:
        out.unlink(missing_ok=True)
        err.unlink(missing_ok=True)


# -- the server ---------------------------------------------------------------------------------------------------------
def _serve() -> None:
    import importlib

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as mergehub's main() sets it before torch loads OpenMP
    for name in PRELOAD:
        importlib.import_module(name)
    base_path = list(sys.path[1:])  # without this script's folder, which `python -m` would not have
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    print("ready", file=protocol, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request, base_path)
        print(json.dumps({"returncode": _wait(pid)}), file=protocol, flush=True)


def _wait(pid: int) -> int:
    """The child's exit status as subprocess reports it (minus the signal number when killed); killed after TIMEOUT."""
    import time

    deadline = time.monotonic() + TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
        time.sleep(0.005)


def _child(request: dict, base_path: list[str]) -> None:
    """In the forked child: become ``python -m mergehub ARGS`` in the requested directory and environment."""
    import atexit as child_atexit
    import importlib
    import io
    import runpy
    import traceback

    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [request["cwd"], *extra, *base_path]
        importlib.invalidate_caches()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                      line_buffering=True)
        sys.argv = [str(Path(request["cwd"]) / "-m"), *request["args"]]
        try:
            runpy.run_module("mergehub", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as stop:
            code = _exit_code(stop.code)
        except BaseException:  # as the interpreter does with an uncaught exception
            traceback.print_exc()
            code = 1
        child_atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


if __name__ == "__main__":
    _serve()
