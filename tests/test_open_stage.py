"""Opening a stage of a run: --resume keeps the run's identifier; one drift module serves both stages."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade_booth.config import Config
from cascade_booth.drift import check_resume, stage_settings
from cascade_booth.errors import RunError
from cascade_booth.session import TrainRequest, pick_identifier


def test_resume_reuses_the_recorded_identifier_whatever_the_picking_rule(tmp_path: Path):
    req = TrainRequest(subject=tmp_path, class_noun="clock", run=tmp_path, config=Config(), resume=True)
    # no tokenizer is consulted: a later change of the rule cannot turn the resume into drift
    assert pick_identifier(req, None, {"identifier": "qzx"}) == "qzx"


def test_stage_two_drift_is_the_stage_one_rule_on_its_record():
    config = Config().to_dict()["sr"]
    record = {"seed": 0, "model": "tiny", "subject_files": {"a.jpg": "1"}, "config": config}
    longer = record | {"config": config | {"steps": config["steps"] + 5, "checkpoint_every": 1}}
    check_resume(stage_settings(record, "sr"), stage_settings(longer, "sr"), "sr", False)  # more steps: no drift
    with pytest.raises(RunError, match="noise_level"):
        changed = record | {"config": config | {"noise_level": 7}}
        check_resume(stage_settings(record, "sr"), stage_settings(changed, "sr"), "sr", False)
