"""The trial record (studies/record.py): one writer and one reader of the attributes a study stores on its trials,
under the names and encodings every stored database uses."""
import optuna
import pytest
from optuna.trial import TrialState

from search_space import PRESETS
from search_space.compact import encode
from studies import record as R
from studies.record import RecordWriter, TrialRecord
from training.budget import Budget

# The attribute names stored studies hold: renaming one would make older databases unreadable.
STORED_NAMES = {
    "spec", "spec_id", "compact", "kind", "preset", "base_preset", "rung", "budget", "candidate", "enqueued_preset",
    "promoted_from", "promoted_spec", "params_fixed", "worker_host", "worker_pid", "worker_started", "duplicate",
    "infeasible", "early_stopped", "fail_reason", "killed", "duplicate_of", "reused_from", "cached_from", "eval_key",
    "curve", "artifacts", "evaluator_seconds", "promoted_by", "environmental",
    "learned_fraction"}  # the flow evaluator's metric, which the record reads (the regime gate)
STORED_STUDY_NAMES = {"definition", "metric_names", "study_file", "rungs", "created", "workers"}


def test_the_record_keeps_the_names_of_stored_studies():
    names = {v for k, v in vars(R).items() if k.isupper() and isinstance(v, str)}
    assert names == STORED_NAMES | STORED_STUDY_NAMES


def test_what_the_writer_writes_the_reader_reads(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="r")
    trial = study.ask()
    write = RecordWriter.of(trial)
    spec = PRESETS["tiny-debug"]
    write.worker(host="h", pid=12, started=345)
    write.design(spec)
    write.claim(spec.spec_id)
    write.placement(1, Budget(steps=48), spec.spec_id)
    write.preset("tiny-debug", None)
    write.values({"val_loss": 0.5, "proxy": {"width_mult": 0.5}})
    write.curve([(10, 0.9, 0.25), (40, 0.5, 1.0)])
    write.evaluator_seconds(2.5)
    study.tell(trial, 0.5)
    t = study.trials[0]
    rec = TrialRecord.of(t)
    assert rec.spec == t.user_attrs["spec"] and rec.spec_id == spec.spec_id and rec.compact == encode(spec)
    assert (rec.rung, rec.budget, rec.candidate, rec.preset, rec.label) == (1, "48steps", spec.spec_id,
                                                                          "tiny-debug", "tiny-debug")
    assert rec.worker == ("h", 12, 345) and rec.evaluator_seconds == 2.5 and rec.get("val_loss") == 0.5
    assert rec.curve == [[10, 0.9, 0.25], [40, 0.5, 1.0]]  # stored as JSON: tuples come back as lists
    assert rec.sampled and not rec.queued and rec.reason == "" and rec.duplicate_of is None
    assert t.user_attrs["kind"] == "unet" and t.user_attrs["budget"] == "48steps"


def test_a_trial_stored_before_an_attribute_existed_reads_with_its_default():
    old = TrialRecord({"spec_id": "abc"})  # no rung, budget, candidate, curve: a single-budget study's trial
    assert (old.rung, old.budget, old.candidate, old.curve, old.evaluator_seconds) == (0, "", "abc", [], 0.0)
    assert TrialRecord({"rung": True}).rung == 0 and TrialRecord({"rung": 2.0}).rung == 2
    assert old.label == "abc" and TrialRecord({}).label == "?"
    assert TrialRecord({"eval_key": "{not json"}).evaluation == {}
    assert (old.learned_fraction, old.promoted_by) == (None, "")
    assert TrialRecord({"learned_fraction": 0.25}).learned_fraction == 0.25


def test_one_reason_per_trial_in_a_fixed_order():
    assert TrialRecord({"fail_reason": "boom", "killed": "gone"}).reason == "boom"
    assert TrialRecord({"killed": "process 1 on h is gone"}).reason == "process 1 on h is gone"
    assert TrialRecord({"duplicate": "re-sampled", "infeasible": "x"}).reason == "re-sampled"
    assert TrialRecord({"infeasible": "", "early_stopped": "stopped early"}).reason == "stopped early"


def test_queued_work_carries_its_record():
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(
        values=[1.0], params={"x": 1.0}, distributions={"x": optuna.distributions.FloatDistribution(0, 2)},
        user_attrs={"spec": {"a": 1}, "spec_id": "s1", "preset": "tiny-debug", "rung": 0}))
    promoted = R.promotion(study.trials[0], 1, "96steps")
    assert promoted == {"rung": 1, "budget": "96steps", "promoted_from": 0, "candidate": "s1",
                        "promoted_spec": {"a": 1}, "params_fixed": True, "enqueued_preset": "tiny-debug"}
    rec = TrialRecord(promoted)
    assert rec.queued and not rec.sampled and rec.rung == 1 and rec.params_fixed
    assert TrialRecord(R.enqueued("tiny-debug")).queued
    killed = {**promoted, "worker_pid": 3, "curve": [[1, 2.0, 0.5]], "fail_reason": "x", "val_loss": 1.0}
    assert R.requeued(killed) == {**promoted, "val_loss": 1.0}  # what the killed run wrote is dropped
    twin = {"spec_id": "s1", "val_loss": 1.0, "worker_pid": 3, "enqueued_preset": "p", "retried": 1, "rung": 0}
    assert R.copied_from(twin, {"spec_id": "s1", "reused_from": 0}) == {"val_loss": 1.0, "rung": 0}


@pytest.mark.parametrize("constraints, ok", [(None, True), ({"max_params_m": 0.0}, True),
                                             ({"max_params_m": -1.0, "max_latency_ms": 0.5}, False)])
def test_feasible_is_every_constraint_at_most_zero(constraints, ok):
    class Trial:
        pass
    t = Trial()
    t.constraints = constraints
    assert R.feasible(t) is ok


def test_finished_means_complete_or_pruned():
    assert set(R.FINISHED) == {TrialState.COMPLETE, TrialState.PRUNED}
