"""The test suite's thread policy (tests/conftest.py): the package's policy from the first test on, so the tests and
the processes they start run on one thread unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from flwr_vproto import threads


def test_this_process_and_its_subprocesses_follow_the_policy():
    """Under pytest the thread variables are set (1 unless the user set OMP_NUM_THREADS), torch uses that many
    threads, and a subprocess a test starts inherits them."""
    users = threads.default_threads() is None  # the user's OMP_NUM_THREADS stands
    want = os.environ["OMP_NUM_THREADS"] if users else "1"
    assert all(os.environ.get(v) == want for v in (threads.THREAD_VARS if not users else ["OMP_NUM_THREADS"]))
    assert torch.get_num_threads() == int(want.split(",")[0])
    probe = "import os; print(os.environ['OMP_NUM_THREADS'], os.environ.get('MKL_NUM_THREADS'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == [want, str(os.environ.get("MKL_NUM_THREADS"))]


def test_a_test_that_changes_the_threads_changes_them_for_itself_only():
    """What ``runner.threads=2`` does inside a test (:func:`flwr_vproto.threads.bound_threads`) is undone after it."""
    before = (torch.get_num_threads(), {v: os.environ.get(v) for v in threads.THREAD_VARS})
    threads.bound_threads(before[0] + 1)
    assert torch.get_num_threads() == before[0] + 1

    test_a_test_that_changes_the_threads_changes_them_for_itself_only.before = before  # read by the next test


def test_the_previous_test_left_the_threads_as_it_found_them():
    before = getattr(test_a_test_that_changes_the_threads_changes_them_for_itself_only, "before", None)
    if before is None:  # run alone (-k): nothing to check
        return
    assert (torch.get_num_threads(), {v: os.environ.get(v) for v in threads.THREAD_VARS}) == before
