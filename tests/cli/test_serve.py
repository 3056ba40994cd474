"""server: what `exporter serve` sets up in each process before it serves (the C library's heap thresholds)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# A fresh interpreter allocates 16 MiB with malloc, writes it and frees it, then prints how much of the heap's
# free top glibc keeps (mallinfo2's keepcost) and how many bytes are mapped outside the heap.
PROBE = """
import ctypes, sys
from exporter.cli.serve import keep_freed_heap
if sys.argv[1] == "tuned":
    keep_freed_heap()
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.mallinfo2.restype = MallInfo2
block = libc.malloc(16 * 1024 * 1024)
ctypes.memset(block, 1, 16 * 1024 * 1024)
mapped = libc.mallinfo2().hblkhd
libc.free(ctypes.c_void_p(block))
print(libc.mallinfo2().keepcost, mapped)
"""


def heap_after_a_freed_block(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    keep, mapped = out.split()
    return int(keep), int(mapped)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_a_served_process_keeps_a_freed_16_mib_block_in_its_heap_instead_of_unmapping_it() -> None:
    keep, mapped = heap_after_a_freed_block("default")
    assert mapped >= 16 * 1024 * 1024 and keep < 16 * 1024 * 1024  # glibc's default: mmap, then munmap
    keep, mapped = heap_after_a_freed_block("tuned")
    assert mapped < 16 * 1024 * 1024 and keep >= 16 * 1024 * 1024  # from the heap, and still there once freed
