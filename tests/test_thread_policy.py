"""The test suite's thread policy (tests/conftest.py): one thread per test process unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from conftest import apply_thread_policy


def test_unset_variables_become_one_and_a_users_value_is_kept():
    before = torch.get_num_threads()
    try:
        env = {"MKL_NUM_THREADS": "3"}
        apply_thread_policy(env)
        assert env == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "3"} and torch.get_num_threads() == 1
        env = {"OMP_NUM_THREADS": "2,1"}  # nested OpenMP levels: torch takes the outer one
        apply_thread_policy(env)
        assert env["MKL_NUM_THREADS"] == "1" and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_this_process_and_its_subprocesses_follow_the_policy():
    """Under pytest the variables are set (to 1 unless the user set them) and torch uses OMP_NUM_THREADS threads;
    a subprocess a test starts inherits them."""
    assert {"OMP_NUM_THREADS", "MKL_NUM_THREADS"} <= set(os.environ)
    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"].split(",")[0])
    out = subprocess.run([sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == os.environ["OMP_NUM_THREADS"]
