import os
import sys
from pathlib import Path

import pytest
import torch

ENGINE_DIR = Path(__file__).resolve().parents[1]
if str(ENGINE_DIR) not in sys.path:
    sys.path.insert(0, str(ENGINE_DIR))

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from trajstore_engine.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_vl_model_dir(tmp_path_factory) -> Path:
    from trajstore_engine.tiny_vl import make_tiny_vl_model

    return make_tiny_vl_model(tmp_path_factory.mktemp("models") / "tiny-vl", seed=0)


def pytest_collection_modifyitems(config, items):
    """GPU tests are deselected (not skipped) on machines without CUDA: they run on the GPU host
    (engine/scripts/gpu-bench.sh), and a CPU run then reports them as deselected, never as
    skipped tests that could hide a failure."""
    if torch.cuda.is_available():
        return
    gpu = [item for item in items if "gpu" in item.keywords]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if "gpu" not in item.keywords]
