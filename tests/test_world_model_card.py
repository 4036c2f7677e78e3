"""tools/pretrain_world.py's model card: each model's commands (segments included) and the acceptance beside them."""

from __future__ import annotations

import json

from helpers_tools import load_tool


def test_model_card_lists_each_segment_command_and_the_acceptance_sampling(tmp_path):
    tool = load_tool("pretrain_world")
    base = {"steps": 7400, "examples": 236800, "wall_hours": 4.61, "final_loss_mean_last_200": 0.0282,
            "segments": [3900, 7400]}
    sr = {"steps": 2300, "examples": 27600, "wall_hours": 1.25, "final_loss_mean_last_200": 0.1056}
    for name, info in (("base", base), ("sr", sr)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "pretrain.json").write_text(json.dumps(info))
    (tmp_path / "acceptance.json").write_text(json.dumps({"cascade": {"prompts": 200, "steps": 25, "guidance": 4.0,
                                                                      "cascade_128px": {"pattern": 0.56}}}))
    tool.write_model_card(tmp_path)
    card = (tmp_path / "MODEL_CARD.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in card.splitlines() if line.startswith("| base") or
            line.startswith("| sr")}
    assert "--steps N` to step 3900, then `--steps 7400 --init-from-shipped`" in rows["base"]
    assert "| 7400 | 236800 | 4.61 | 0.0282 |" in rows["base"]
    assert "to step 2300 |" in rows["sr"] and "init-from-shipped" not in rows["sr"]
    assert "200 prompts, one image each, 25 steps per stage, stage one's guidance 4," in card
    assert '"pattern": 0.56' in card


def test_model_card_names_each_segments_own_settings(tmp_path):
    tool = load_tool("pretrain_world")
    base = {"steps": 9400, "examples": 300800, "wall_hours": 5.8, "final_loss_mean_last_200": 0.03,
            "segments": [3900, 7400, 9400, 9900], "x0_weight_caps": [1.0, 1.0, 20.0, 1.0],
            "offset_noises": [0.0, 0.0, 0.0, 0.1], "emas": [0.999, 0.999, 0.999, 0.995],
            "lrs": [5e-4, 5e-4, 5e-4, 2e-3]}
    sr = {"steps": 5800, "examples": 69600, "wall_hours": 3.2, "final_loss_mean_last_200": 0.0427,
          "segments": [2300, 5800], "sr_weight_cap": 20.0}  # an older card: one cap for every segment
    for name, info in (("base", base), ("sr", sr)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "pretrain.json").write_text(json.dumps(info))
    tool.write_model_card(tmp_path)
    rows = [line for line in (tmp_path / "MODEL_CARD.md").read_text().splitlines() if line.startswith("| ")]
    base_row = next(line for line in rows if line.startswith("| base"))
    sr_row = next(line for line in rows if line.startswith("| sr"))
    assert ("--steps N` to step 3900, then `--steps 7400 --init-from-shipped`, then "
            "`--steps 9400 --init-from-shipped --x0-weight-cap 20`, then "
            "`--steps 9900 --init-from-shipped --offset-noise 0.1 --ema 0.995 --lr 0.002`") in base_row
    assert "x0-weight-cap" not in sr_row  # stage two's cap 20 is its default
    assert tool.segment_values("sr", sr, "x0_weight_cap") == [20.0, 20.0]
    assert tool.segment_values("sr", sr, "offset_noise") == [0.0, 0.0]
    assert tool.segment_values("sr", sr, "lr") == [5e-4, 5e-4]


def test_model_card_lists_the_evaluators_segments(tmp_path):
    tool = load_tool("pretrain_world")
    for name in ("base", "sr"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "pretrain.json").write_text(json.dumps({"steps": 10, "examples": 320, "wall_hours": 0.1,
                                                                   "final_loss_mean_last_200": 0.5}))
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "pretrain.json").write_text(json.dumps({
        "steps": 7000, "segments": [5000, 7000], "lrs": [5e-4, 2e-4], "wall_hours": None,
        "wall_hours_per_segment": [None, 0.24],
        "final_loss_mean_last_200": 1.23}))
    tool.write_model_card(tmp_path)
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert ("| clip | `python tools/pretrain_world_evaluators.py --model clip --steps N` to step 5000, then "
            "`--steps 7000 --init-from-shipped --lr 0.0002` | 7000 | not recorded + 0.24 | 1.23 |") in card
    assert "| dino |" not in card  # no pretrain.json: not listed
