"""The injector itself: it counts the calls of a target and fails exactly the n-th."""
from __future__ import annotations

import errno

import pytest

from tests.faults.injector import count_calls, fail_nth


class _Disk:
    def __init__(self) -> None:
        self.blocks: list[int] = []

    def write(self, block: int) -> None:
        self.blocks.append(block)


def test_count_and_fail_the_nth_call():
    disk = _Disk()
    assert count_calls([(_Disk, "write")], lambda: [disk.write(i) for i in range(4)]) == 4
    for n in range(1, 5):
        disk = _Disk()
        with fail_nth([(_Disk, "write")], n, errno.EIO) as state:
            with pytest.raises(OSError) as info:
                for i in range(4):
                    disk.write(i)
        assert info.value.errno == errno.EIO and state["fired"] and state["at"] == "write"
        assert disk.blocks == list(range(n - 1))
    assert _Disk.write.__name__ == "write"  # restored
