from __future__ import annotations

import os

import pytest
import torch

import chanattn

# Two cores here: keep each test process on one thread so that pytest-xdist workers do not fight.
torch.set_num_threads(int(os.environ.get("CHANATTN_TEST_THREADS", "1")))

ALL_MODULES = chanattn.list_modules()


def channels_for(name: str, wanted: int) -> int:
    """The smallest channel count >= ``wanted`` that the module accepts."""
    multiple = chanattn.module_info(name).channel_multiple
    return -(-wanted // multiple) * multiple


def min_size(name: str) -> int:
    return chanattn.module_info(name).min_size


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
