"""Issue 15, rows 5-10 and 12: each fault is one ``error:`` line naming the culprit, never a traceback.

The CLI runs in-process (click's CliRunner) on the tiny cascade. Tests run as root, and root ignores
file permissions, so a read-only filesystem is simulated where the kernel would refuse: ``os.open``
and ``os.mkdir`` fail with EROFS for anything under the folders a test marks read-only (as on a
read-only mount, which refuses root too).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from transformers import T5Tokenizer

from cascade_booth.cli import main
from cascade_booth.errors import InputError
from cascade_booth.identifier import check_identifier, choose_identifier

UNET = "unet/diffusion_pytorch_model.safetensors"
TEXT_ENCODER = "text_encoder/model.safetensors"
READ_ONLY = os.strerror(errno.EROFS)  # "Read-only file system"


def _cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _refused(result: Result, *culprits: object) -> str:
    """The command failed cleanly: no traceback, exactly one ``error:`` line, naming every culprit."""
    assert result.exit_code not in (0, 1), result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(errors) == 1, result.output
    for culprit in culprits:
        assert str(culprit) in errors[0], errors[0]
    return errors[0]


def _train(subject: Path, run: Path, *extra: object) -> Result:
    return _cli("train-base", "--config", "tiny", "--subject", subject, "--class-noun", "clock", "--run", run,
                "--steps", "1", "--class-images", "2", "--checkpoint-every", "0", *extra)


@pytest.fixture
def model_copy(tmp_path: Path, tiny_paths: dict[str, Path]) -> Path:
    """A private copy of the tiny stage-one model, free to damage."""
    return Path(shutil.copytree(tiny_paths["base"], tmp_path / "model"))


@pytest.fixture
def run_copy(tmp_path: Path, stage_one: Path) -> Path:
    """A private copy of a finished tiny stage one."""
    return Path(shutil.copytree(stage_one, tmp_path / "run-copy"))


# --- row 5: the identifier search works from the tokenizer's real vocabulary ----------------------

_PIECES = ["<pad>", "</s>", "<unk>", "▁", "▁a", "▁clock", "▁the", "▁of", "▁in", "▁on", "▁and", "▁is", "▁it",
           "▁to", "▁c", "▁l", "▁o", "▁k", "c", "k"]


def _small_tokenizer(pieces: list[str] = _PIECES, extra_ids: int = 100) -> T5Tokenizer:
    """A 20-piece sentencepiece vocabulary (ids in score order), with or without T5's sentinels."""
    return T5Tokenizer(vocab=[(p, -float(i)) for i, p in enumerate(pieces)], extra_ids=extra_ids)


@pytest.mark.parametrize("extra_ids", [0, 100])
def test_small_vocabulary_without_a_rare_piece_is_refused_clearly(extra_ids: int) -> None:
    with pytest.raises(InputError, match="--identifier") as info:
        choose_identifier(_small_tokenizer(extra_ids=extra_ids), "clock", 0)
    assert "20 pieces" in str(info.value)


def test_search_never_returns_a_common_word_or_a_word_of_the_prompt() -> None:
    pieces = _PIECES[:3] + ["▁the", "▁clock", "▁zq"] + _PIECES[6:]  # ranks 3-5 are the scaled rare range
    tokenizer = _small_tokenizer(pieces[:20])
    assert {choose_identifier(tokenizer, "clock", seed) for seed in range(20)} == {"zq"}


def test_model_with_a_tiny_vocabulary(tmp_path: Path, clock_subject: Path, model_copy: Path) -> None:
    _small_tokenizer().save_pretrained(model_copy / "tokenizer")
    _refused(_train(clock_subject, tmp_path / "run", "--model", model_copy), "vocabulary", "--identifier")
    assert not (tmp_path / "run" / "run.json").exists()


def test_bad_identifier_hint_offers_only_what_works(tmp_path: Path, clock_subject: Path, model_copy: Path) -> None:
    assert "omit --identifier" in _refused(_train(clock_subject, tmp_path / "a", "--identifier", "zq xj"))
    _small_tokenizer().save_pretrained(model_copy / "tokenizer")
    line = _refused(_train(clock_subject, tmp_path / "b", "--model", model_copy, "--identifier", "zq xj"),
                    "zq xj")
    assert "omit" not in line  # the automatic search fails on this vocabulary


# --- rows 6-8: damaged weight files ---------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # the JSON header's first byte destroyed
        path.write_bytes(data[:8] + b"#" + data[9:])


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
@pytest.mark.parametrize(("part", "prior"), [(UNET, "--prior"), (UNET, "--no-prior"), (TEXT_ENCODER, "--prior")])
def test_damaged_model_weights(tmp_path: Path, clock_subject: Path, model_copy: Path, part: str, prior: str,
                               how: str) -> None:
    _damage(model_copy / part, how)
    _refused(_train(clock_subject, tmp_path / "run", "--model", model_copy, prior), model_copy / part)


def test_damaged_tokenizer(tmp_path: Path, clock_subject: Path, model_copy: Path) -> None:
    _damage(model_copy / "tokenizer" / "tokenizer.json", "truncated")
    _refused(_train(clock_subject, tmp_path / "run", "--model", model_copy), model_copy / "tokenizer")


def test_one_loader_checks_pipelines_and_skips_unloaded_parts(model_copy: Path) -> None:
    from diffusers import IFPipeline

    from cascade_booth.safeload import load_pretrained

    _damage(model_copy / TEXT_ENCODER, "truncated")
    with pytest.raises(InputError, match=str(model_copy / TEXT_ENCODER)):
        load_pretrained(IFPipeline, model_copy)
    pipe = load_pretrained(IFPipeline, model_copy, text_encoder=None, safety_checker=None, watermarker=None,
                           feature_extractor=None, requires_safety_checker=False)
    assert pipe.text_encoder is None


def test_damaged_embedding_in_the_cache_is_encoded_again(tiny_paths: dict[str, Path], tmp_path: Path) -> None:
    from cascade_booth.text import TextEmbeddings

    texts = TextEmbeddings(tiny_paths["base"], tmp_path / "cache")
    first = texts.get("a clock").clone()  # the loaded tensor maps the file that is damaged next
    _damage(texts._file("a clock"), "truncated")
    again = TextEmbeddings(tiny_paths["base"], tmp_path / "cache").get("a clock")
    assert torch.equal(first, again)


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_damaged_lora_file_of_a_run(run_copy: Path, how: str) -> None:
    lora = run_copy / "base" / "pytorch_lora_weights.safetensors"
    _damage(lora, how)
    _refused(_cli("render", "a [V] clock", "--run", run_copy, "--no-sr", "--num-images", "1", "--steps", "1"), lora)


def _generated(folder: Path) -> Path:
    """Two PNGs with their prompt in a text chunk, as ``evaluate --generated`` reads them."""
    from PIL import Image, PngImagePlugin

    folder.mkdir(parents=True)
    for i, prompt in enumerate(["a xjy clock in the jungle", "a clock in the jungle"]):
        info = PngImagePlugin.PngInfo()
        info.add_text("cascade_booth", json.dumps({"prompt": prompt, "seed": i}))
        Image.new("RGB", (48, 48), (40 * i, 90, 200)).save(folder / f"{i:03d}.png", pnginfo=info)
    return folder


def test_damaged_evaluator_weights(tmp_path: Path, clock_subject: Path) -> None:
    from cascade_booth.evaluation.tiny import build_tiny_models

    tiny = build_tiny_models(tmp_path / "evaluators")
    weights = next(Path(tiny["dino"]).glob("*.safetensors"))
    _damage(weights, "truncated")
    generated = _generated(tmp_path / "generated")
    _refused(_cli("evaluate", "--generated", generated, "--subject", clock_subject, "--out", tmp_path / "eval",
                  "--dino-model", tiny["dino"], "--clip-model", tiny["clip"], "--device", "cpu"), weights)


# --- row 9: outputs that cannot be written ----------------------------------------------------------


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], Path]:
    """``read_only(folder)`` makes creating anything under ``folder`` fail with EROFS, as on a read-only mount."""
    roots: list[Path] = []
    real_open, real_mkdir = os.open, os.mkdir

    def blocked(path: object) -> bool:
        where = Path(os.path.abspath(os.fsdecode(path)))
        return any(where == root or root in where.parents for root in roots)

    def refuse(path: object) -> OSError:
        return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def fake_open(path, flags, mode=0o777, *, dir_fd=None):
        if dir_fd is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and blocked(path):
            raise refuse(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def fake_mkdir(path, mode=0o777, *, dir_fd=None):
        if dir_fd is None and blocked(path) and not os.path.lexists(path):
            raise refuse(path)
        return real_mkdir(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)

    def mark(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        roots.append(folder.resolve())
        return folder

    return mark


def test_run_folder_under_a_regular_file(tmp_path: Path, clock_subject: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    _refused(_train(clock_subject, tmp_path / "file" / "run"), tmp_path / "file")


def test_train_base_on_a_read_only_filesystem(tmp_path: Path, clock_subject: Path, read_only) -> None:
    run = read_only(tmp_path / "ro") / "run"
    _refused(_train(clock_subject, run), run, READ_ONLY)


def test_read_only_cache(tmp_path: Path, clock_subject: Path, read_only, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = read_only(tmp_path / "cache")
    monkeypatch.setenv("CASCADE_BOOTH_CACHE", str(cache))
    _refused(_train(clock_subject, tmp_path / "run"), cache, "CASCADE_BOOTH_CACHE")
    assert not (tmp_path / "run").exists()


def test_train_sr_on_a_read_only_run(run_copy: Path, read_only) -> None:
    read_only(run_copy)
    _refused(_cli("train-sr", "--run", run_copy, "--steps", "1"), run_copy, READ_ONLY)


@pytest.mark.parametrize("where", ["default", "--out"])
def test_render_into_a_read_only_folder(tmp_path: Path, run_copy: Path, read_only, where: str) -> None:
    args = ["render", "a [V] clock", "--run", run_copy, "--no-sr", "--num-images", "1", "--steps", "1"]
    if where == "default":
        read_only(run_copy)
        out = run_copy / "renders"
    else:
        out = read_only(tmp_path / "ro") / "renders"
        args += ["--out", out]
    _refused(_cli(*args), out, READ_ONLY)


def test_evaluate_into_a_read_only_folder(tmp_path: Path, clock_subject: Path, read_only) -> None:
    from cascade_booth.evaluation.tiny import build_tiny_models

    tiny = build_tiny_models(tmp_path / "evaluators")
    generated = _generated(tmp_path / "generated")
    out = read_only(tmp_path / "ro") / "eval"
    _refused(_cli("evaluate", "--generated", generated, "--subject", clock_subject, "--out", out,
                  "--dino-model", tiny["dino"], "--clip-model", tiny["clip"], "--device", "cpu"), out, READ_ONLY)


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_sweep_into_a_read_only_folder(tmp_path: Path, clock_subject: Path, read_only, dry_run: list[str]) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a [V] clock\n")
    out = read_only(tmp_path / "ro") / "sweep"
    _refused(_cli("sweep", "--config", "tiny", "--subject", clock_subject, "--class-noun", "clock", "--prompts",
                  prompts, "--grid", "base.lr=1e-4,2e-4", "--set", "base.steps=1", "--out", out, *dry_run),
             out, READ_ONLY)


def test_demo_in_a_read_only_working_folder(tmp_path: Path, read_only, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(read_only(tmp_path / "cwd"))
    _refused(_cli("demo"), "cascade-booth-demo", READ_ONLY)


# --- row 10: identifiers that defeat the instance prompt ---------------------------------------------


@pytest.mark.parametrize(("noun", "identifier", "culprit"),
                         [("clock", "clock", "class noun"), ("red clock", "red", "class noun"),
                          ("clock", "", "empty"), ("clock", " ", "empty"), ("clock", "a", "'a'")])
def test_identifier_that_breaks_the_prompt_is_refused(tmp_path: Path, clock_subject: Path, noun: str,
                                                      identifier: str, culprit: str) -> None:
    _refused(_train(clock_subject, tmp_path / "run", "--class-noun", noun, "--identifier", identifier),
             "--identifier", culprit)
    assert not (tmp_path / "run" / "run.json").exists()


def test_common_word_identifier_warns(tmp_path: Path, clock_subject: Path) -> None:
    result = _train(clock_subject, tmp_path / "run", "--identifier", "the")
    assert result.exit_code == 0, result.output
    assert "warning: --identifier 'the' is a common word" in result.output


def test_identifier_check_unit(tiny_paths: dict[str, Path]) -> None:
    tokenizer = T5Tokenizer.from_pretrained(tiny_paths["base"] / "tokenizer")
    for token, noun in (("clock", "clock"), ("red", "red clock"), ("", "clock")):
        with pytest.raises(InputError, match="--identifier"):
            check_identifier(tokenizer, token, noun)


# --- row 12: prompts the text encoder would cut or cannot spell ---------------------------------------


def test_overlong_class_noun_is_refused(tmp_path: Path, clock_subject: Path) -> None:
    noun = " ".join(["clock"] * 300)
    _refused(_train(clock_subject, tmp_path / "run", "--class-noun", noun), "--class-noun", "tokens", "77")
    assert not (tmp_path / "run").exists()


def test_sweep_refuses_an_overlong_class_noun_before_any_work(tmp_path: Path, clock_subject: Path) -> None:
    noun = " ".join(["clock"] * 300)
    _refused(_cli("sweep", "--config", "tiny", "--subject", clock_subject, "--class-noun", noun, "--grid",
                  "base.lr=1e-4,2e-4", "--out", tmp_path / "sweep", "--dry-run"), "--class-noun", "tokens", "77")


def test_class_noun_with_unknown_characters_warns(tmp_path: Path, clock_subject: Path) -> None:
    result = _train(clock_subject, tmp_path / "run", "--class-noun", "clöck")
    assert result.exit_code == 0, result.output
    assert "warning: --class-noun 'clöck'" in result.output and "<unk>" in result.output


def test_overlong_render_prompt_is_refused(run_copy: Path) -> None:
    prompt = "a [V] clock in the jungle" + " with a red hat" * 700  # about 10,000 characters
    _refused(_cli("render", prompt, "--run", run_copy, "--no-sr", "--num-images", "1", "--steps", "1"),
             "prompt", "tokens", "77")
    assert not (run_copy / "renders").exists()


def test_render_prompt_with_unknown_characters_warns(run_copy: Path) -> None:
    result = _cli("render", "a [V] clock in the jüngle", "--run", run_copy, "--no-sr", "--num-images", "1",
                  "--steps", "1")
    assert result.exit_code == 0, result.output
    assert "warning: prompt 'a [V] clock in the jüngle'" in result.output and "<unk>" in result.output
