"""engine/settings.py: the XLA flags the engine's bits depend on are pinned before a backend starts."""
import json
import os
import subprocess
import sys

import jax
import pytest

from bws.engine import settings

PINNED = "--xla_gpu_enable_triton_gemm=false"


def test_pinned_flags_are_appended_and_others_kept():
    assert settings.with_pinned_flags("") == PINNED
    assert settings.with_pinned_flags("--xla_cpu_enable_fast_math=true") == f"--xla_cpu_enable_fast_math=true {PINNED}"


def test_a_pinned_flag_set_otherwise_is_overridden():
    flags = settings.with_pinned_flags("--xla_gpu_enable_triton_gemm=true --xla_dump_to=/tmp/x")
    assert flags == f"--xla_dump_to=/tmp/x {PINNED}"
    assert settings.has_pinned_flags(flags)


def test_has_pinned_flags_reads_the_last_occurrence():
    assert not settings.has_pinned_flags("")
    assert not settings.has_pinned_flags(f"{PINNED} --xla_gpu_enable_triton_gemm=true")
    assert settings.has_pinned_flags(f"--xla_gpu_enable_triton_gemm=true {PINNED}")


def _fresh_process(code: str, xla_flags: str = "") -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


REPORT = ("import json, os; from bws.engine import settings; settings.require_settings(); "
          "print(json.dumps({'flags': os.environ['XLA_FLAGS'], 'pinned': settings.FLAGS_PINNED_AT_START, "
          "'x64': jax.config.jax_enable_x64}))")


def test_importing_the_engine_pins_the_flags_before_jax_starts():
    result = _fresh_process("import jax; " + REPORT, xla_flags="--xla_cpu_enable_fast_math=true")
    assert result == {"flags": f"--xla_cpu_enable_fast_math=true {PINNED}", "pinned": True, "x64": True}


def test_a_backend_started_before_the_import_is_left_alone_and_known():
    result = _fresh_process("import jax; jax.devices(); " + REPORT)
    assert result == {"flags": "", "pinned": False, "x64": True}


def test_a_gpu_started_without_the_flags_is_refused(monkeypatch):
    # The real GPU path was measured on the device machines (docs/engine.md); here the backend is faked.
    monkeypatch.setattr(settings, "FLAGS_PINNED_AT_START", False)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.raises(RuntimeError, match="xla_gpu_enable_triton_gemm=false"):
        settings.require_settings()
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    settings.require_settings()
