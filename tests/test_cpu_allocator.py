"""augment/cpu_allocator.py: freed memory stays with the process (no page faults to get it back),
the user's own allocator settings win, and every command line applies it."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc settings exist on glibc Linux only")

# A step's pattern: 64 MiB of 8 MiB blocks written, then all freed, 12 times over; minor page faults
# per round after the first (the kernel's zero-filled pages handed out again).
CHURN = textwrap.dedent("""
    import resource, sys
    from augment.cpu_allocator import reuse_freed_memory
    applied = reuse_freed_memory()
    def round_():
        blocks = [bytearray(8 << 20) for _ in range(8)]  # malloc + zero-fill: every page written
        del blocks
    round_()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(12):
        round_()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 12
    print(applied, faults)
""")


def _run(code: str, **env) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES", "MATPLUS_MALLOC")
             and not k.startswith("MALLOC_")}
    result = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                            timeout=120, check=True)
    return result.stdout.strip()


def test_freed_blocks_are_reused_without_page_faults():
    tuned_applied, tuned = _run(CHURN).split()
    default_applied, default = _run(CHURN, MATPLUS_MALLOC="default").split()
    assert (tuned_applied, default_applied) == ("True", "False")
    pages = (64 << 20) // 4096
    # glibc's defaults trim the 64 MiB freed at the heap's top and fault it back in each round
    assert int(default) > pages // 2, default
    assert int(tuned) < pages // 20, tuned


@pytest.mark.parametrize("setting", [{"MALLOC_ARENA_MAX": "2"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"},
                                     {"MATPLUS_MALLOC": "default"}])
def test_the_users_allocator_settings_are_left_alone(setting):
    code = "from augment.cpu_allocator import reuse_freed_memory; print(reuse_freed_memory())"
    assert _run(code, **setting) == "False"
    assert _run(code) == "True"


def test_every_command_line_applies_it():
    code = textwrap.dedent("""
        import argparse
        from augment import cpu_allocator
        from augment.cli_common import run_main
        def parser():
            p = argparse.ArgumentParser()
            p.set_defaults(func=lambda args: 0)
            return p
        assert not cpu_allocator._applied
        print(run_main(parser, []), cpu_allocator._applied)
    """)
    assert _run(code) == "0 [True]"
