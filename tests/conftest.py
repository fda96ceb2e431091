import os

import pytest
import torch

# No test touches the network: the hub is "unreachable" without being asked (rtlib.preflight).
os.environ["HF_HUB_OFFLINE"] = "1"

from rtlib import models

# A ViT small enough to train in a test: 2 blocks, width 64, 16 tokens of 8x8 pixels.
TINY = dict(name="vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=64,
            num_heads=2)
TINY_CLASSES = 5


def build_tiny(num_classes: int = TINY_CLASSES, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    kwargs = {**TINY, **overrides}
    return models.build(kwargs.pop("name"), num_classes, **kwargs)


@pytest.fixture
def tiny():
    return build_tiny()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(16, 3, 32, 32, generator=g)
    labels = torch.randint(0, TINY_CLASSES, (16,), generator=g)
    return images, labels


def pytest_configure(config):
    """Under pytest-xdist each worker process takes its share of the cores: torch's default
    (one thread per core in every worker) would oversubscribe them and spin."""
    import os

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # for the tests' subprocesses
