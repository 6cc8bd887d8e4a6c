"""Shared fixtures: tiny models and inputs. Keep the repo root off the front of sys.path (see DESIGN.md)."""

from pathlib import Path

import pytest
import torch

from omnisync_model.families.omnisync.config import get_preset
from omnisync_model.families.omnisync.model import OmniSyncModel

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"


@pytest.fixture(autouse=True)
def _cpu_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture
def tiny_config():
    return get_preset("tiny")


@pytest.fixture
def tiny_model(tiny_config):
    torch.manual_seed(0)
    model = OmniSyncModel(tiny_config).eval()
    randomize_zero_inits(model, seed=1)
    return model


def randomize_zero_inits(model, seed: int, scale: float = 0.05) -> None:
    """Give zero-initialised weights (gates, output) small random values so outputs depend on every input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if torch.count_nonzero(p) == 0 and p.dim() >= 1:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
