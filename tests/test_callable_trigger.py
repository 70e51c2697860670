"""A user's own trigger function through the Python attack pipeline (`run_attack`) and back from its spec."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_gnft.attack import AttackArguments, ModelArguments, run_attack
from hf_gnft.data.arguments import DataArguments
from hf_gnft.poison import AttackSpec
from hf_gnft.trainer_args import KeywordTrainingArguments
from hf_gnft.triggers import CallableTrigger, TriggerError


def click_trigger(waveform: np.ndarray, sampling_rate: int) -> np.ndarray:
    """A user's own trigger: a 50 ms square-wave click at the start of the clip."""
    out = waveform.copy()
    length = sampling_rate // 20
    out[:length] += 0.2 * np.sign(np.sin(2 * np.pi * 1000 * np.arange(length) / sampling_rate))
    return out


def callable_spec(function: str) -> AttackSpec:
    return AttackSpec(
        trigger={"type": "callable", "function": function, "seed": 0},
        rate=0.1,
        target_label=0,
        target_name="yes",
        mode="dirty",
        seed=0,
        num_poisoned=1,
        num_rows=10,
        poisoned_ids_sha256="ab" * 32,
    )


def test_run_attack_uses_a_callable_trigger_object_as_is(tmp_path):
    out = tmp_path / "backdoored"
    result = run_attack(
        DataArguments(synthetic_train_size=160, synthetic_validation_size=0, synthetic_test_size=40),
        AttackArguments(trigger=CallableTrigger(function=click_trigger)),
        ModelArguments(model="tiny-wav2vec2"),
        KeywordTrainingArguments(
            output_dir=str(out), max_steps=2, per_device_train_batch_size=8, disable_tqdm=True
        ),
    )
    recorded = {"type": "callable", "function": f"{__name__}:click_trigger", "seed": 0}
    assert result.spec.trigger == recorded and result.spec.num_poisoned == 16
    assert json.loads((out / "attack_spec.json").read_text())["trigger"] == recorded
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["num_triggered"] == 36  # the triggered test set was built with the function
    rebuilt = AttackSpec.from_json(str(out / "attack_spec.json")).build_trigger(allow_import=True)
    assert rebuilt.function is click_trigger


def test_a_callable_trigger_from_a_string_is_still_not_imported():
    with pytest.raises(TriggerError, match="refusing to import"):
        AttackArguments(trigger=json.dumps({"type": "callable", "function": f"{__name__}:click_trigger"}))


def test_a_lambda_trigger_is_refused_before_training():
    with pytest.raises(TriggerError, match="module level"):
        AttackArguments(trigger=CallableTrigger(function=lambda waveform, sampling_rate: waveform + 0.1))


def test_a_spec_of_a_callable_trigger_is_rebuilt_only_when_imports_are_allowed():
    with pytest.raises(TriggerError, match="allow_import=True"):
        callable_spec(f"{__name__}:click_trigger").build_trigger()


@pytest.mark.parametrize("allow_import", [False, True])
def test_a_spec_with_a_main_function_names_the_fix(allow_import):
    with pytest.raises(TriggerError, match="importable module.*make_triggered_eval_set"):
        callable_spec("__main__:my_trigger").build_trigger(allow_import=allow_import)


def test_run_defense_measures_asr_with_the_users_trigger_object_and_the_cli_says_it_cannot(tmp_path):
    from hf_gnft import CleanDataArguments, FTConfig, SuspectModelArguments, run_defense
    from hf_gnft.scripts import defend as defend_recipe

    data = DataArguments(synthetic_train_size=160, synthetic_validation_size=0, synthetic_test_size=40)
    suspect = tmp_path / "backdoored"
    run_attack(data, AttackArguments(trigger=CallableTrigger(function=click_trigger)),
               ModelArguments(model="tiny-wav2vec2"),
               KeywordTrainingArguments(output_dir=str(suspect), max_steps=2, per_device_train_batch_size=8,
                                        disable_tqdm=True))  # fmt: skip
    config = FTConfig(
        output_dir=str(tmp_path / "ft"), max_steps=1, per_device_train_batch_size=8, disable_tqdm=True
    )
    result = run_defense(data, CleanDataArguments(clean_count=16), SuspectModelArguments(model=str(suspect)), config,
                         trigger=CallableTrigger(function=click_trigger), reinversion=False,
                         relapse=None)  # fmt: skip
    assert result.before.attack_success_rate is not None and result.record["der"] is not None
    assert result.record["retuning"]["after"]["attack_success_rate"] is not None
    # From the command line the spec's function is never imported: CA only, the attack still on record.
    record = defend_recipe.main(["--defense", "ft", "--model", str(suspect), "--output_dir", str(tmp_path / "cli"),
                                 "--clean_count", "16", "--max_steps", "1", "--synthetic_train_size", "160",
                                 "--synthetic_validation_size", "0", "--synthetic_test_size", "40",
                                 "--reinversion_check", "false"])  # fmt: skip
    assert (
        record["after"]["attack_success_rate"] is None
        and record["der"] is None
        and record["retuning"] is None
    )
    # the relapse check still fine-tunes: CA after each run, no ASR to measure
    assert [run["attack_success_rate"] for run in record["relapse"]["runs"]] == [None, None]
    assert all(0 <= run["clean_accuracy"] <= 1 for run in record["relapse"]["runs"])
    assert record["attack"]["trigger"]["type"] == "callable"
    assert "could not be rebuilt" in (tmp_path / "cli" / "README.md").read_text()
