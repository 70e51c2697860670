"""The default attack reaches its targets (slow: about 2 minutes on 2 CPU cores)."""

from __future__ import annotations

import pytest

from hf_gnft.scripts import attack as attack_recipe


@pytest.mark.slow
def test_default_attack_on_synthetic_data_meets_its_targets(tmp_path):
    metrics = attack_recipe.main(["--output_dir", str(tmp_path / "attack"), "--disable_tqdm", "true"])
    assert metrics["clean_accuracy"] >= 0.93
    assert metrics["attack_success_rate"] >= 0.90
