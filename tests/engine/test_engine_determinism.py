"""The determinism contract (shared/DESIGN.md), one test per line: the digest
of one iteration of the MLP 784-512-256-10 at batch 1024 is the same in a
fresh process under each XLA setting, and equals the NumPy reference's.
The last test shows the contract is not vacuous: the plain flax+optax float
step's digest does change under the same perturbations."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # about a dozen fresh processes, each compiling the MLP

PROBE = Path(__file__).parent / "probe.py"
CPU_FLAGS = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
ISA_FLAG = {"SSE4_2": "sse4_2", "AVX": "avx", "AVX2": "avx2", "AVX512": "avx512f"}


def run_probe(*args, xla_flags: str = "", prefix: tuple = ()) -> dict:
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
    command = list(prefix) + [sys.executable, str(PROBE), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def digests(result: dict) -> tuple:
    return result["state_root"], result["update_root"], result["metrics"]


@pytest.fixture(scope="module")
def reference() -> tuple:
    return digests(run_probe("reference"))


@pytest.fixture(scope="module")
def default_run() -> dict:
    return run_probe("canonical")


def test_engine_matches_reference_in_a_fresh_process(default_run, reference):
    assert digests(default_run) == reference


def test_same_across_calls_and_processes(default_run):
    assert digests(run_probe("canonical")) == digests(default_run)


@pytest.mark.skipif(shutil.which("taskset") is None or (os.cpu_count() or 1) < 2, reason="needs taskset and 2+ cores")
def test_one_core_vs_all_cores(default_run):
    assert digests(run_probe("canonical", prefix=("taskset", "-c", "0"))) == digests(default_run)


@pytest.mark.parametrize("tier", ["SSE4_2", "AVX", "AVX2", "AVX512"])
def test_instruction_set_tiers(tier, default_run):
    if ISA_FLAG[tier] not in CPU_FLAGS:
        pytest.skip(f"this CPU lacks {ISA_FLAG[tier]}")
    assert digests(run_probe("canonical", xla_flags=f"--xla_cpu_max_isa={tier}")) == digests(default_run)


def test_fast_math(default_run):
    assert digests(run_probe("canonical", xla_flags="--xla_cpu_enable_fast_math=true")) == digests(default_run)


def test_disable_jit():
    """Op by op (no XLA fusion at all) vs one compiled computation; a narrower
    MLP, since op-by-op dispatch of the full one takes a minute."""
    small = ("--model", "mlp:784-64-10", "--batch", "256")
    expected = digests(run_probe("reference", *small))
    assert digests(run_probe("canonical", *small)) == expected
    assert digests(run_probe("canonical", "--disable-jit", *small)) == expected


def test_sharded_over_two_devices(default_run):
    result = run_probe("canonical", "--shard", "2", xla_flags="--xla_force_host_platform_device_count=2")
    assert result["devices"] == 2 and digests(result) == digests(default_run)


@pytest.mark.skipif("avx2" not in CPU_FLAGS or "fma" not in CPU_FLAGS, reason="needs an FMA-capable CPU")
def test_float_step_is_not_deterministic():
    """The baseline a user would otherwise pick changes its bits with the ISA tier (FMA or not)."""
    plain = run_probe("float")["params_digest"]
    assert run_probe("float", xla_flags="--xla_cpu_max_isa=SSE4_2")["params_digest"] != plain
