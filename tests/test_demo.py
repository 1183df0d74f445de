"""`wukong demo` end to end at reduced size: trains through train(), evaluates, exports, reloads, draws."""

import json

import pytest
from PIL import Image

from wukong_hf.cli import main
from wukong_hf.data.synthetic import BACKGROUND_COLOURS, SyntheticShapes
from wukong_hf.demo import DemoResult, DemoSettings, _retrieval_set, format_summary


def test_demo_runs_end_to_end_at_reduced_size(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2", "--train-size", "64", "--eval-size", "8"]) == 0
    printed = capsys.readouterr().out
    assert "zero-shot top-1" in printed and "word-patch alignment" in printed and str(out / "alignment.png") in printed
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["settings"]["steps"] == 2
    assert summary["zero_shot"]["classes"] == 20 and summary["zero_shot"]["chance"] == pytest.approx(5.0)
    assert 0 <= summary["zero_shot"]["top1"] <= 100
    assert {"i2t_R@1", "t2i_R@1", "MR"} <= set(summary["retrieval"])
    assert 0 <= summary["alignment"]["share_on_object"] <= 1
    assert 0 < summary["alignment"]["object_area_fraction"] < 1
    backgrounds = summary["alignment"]["background_patch_tokens"]
    assert backgrounds and set(backgrounds) <= set(BACKGROUND_COLOURS)
    for roles in backgrounds.values():
        assert sum(roles.values()) == pytest.approx(1.0, abs=1e-3)
        assert set(roles) <= {"[CLS]", "[SEP]"} | {f"label {k}" for k in range(1, 6)}
    assert "background patches" in printed
    assert len(summary["pipeline"]) == 4
    assert (out / "train" / "final" / "model.safetensors").is_file()
    assert len(list((out / "held_out").glob("*.png"))) == 8  # the search folder of `wukong space`
    from safetensors import safe_open

    with safe_open(str(out / "train" / "final" / "model.safetensors"), "pt") as weights:
        # The real training loop left the frozen text positions at zero (text_position_embeddings=False).
        assert not weights.get_tensor("text_model.embeddings.position_embeddings.weight").any()
    assert (out / "train" / "history.json").is_file()  # written by the real training loop
    assert "slow_note" in summary  # the slow-run check rode along (None unless the machine was 3x slower)
    grid = Image.open(out / "alignment.png")
    assert grid.size[0] > 4 * 64 * 3  # four panels at 4x
    details = json.loads((out / "alignment.json").read_text(encoding="utf-8"))
    assert len(details["images"]) == 8 and details["images"][0]["tokens"][0] == "[CLS]"


def test_summary_of_a_global_run_says_why_alignment_is_skipped():
    result = DemoResult(
        settings={"similarity": "global", "steps": 1},
        seconds={"total": 1.0, "train": 0.5},
        zero_shot={"top1": 20.0, "chance": 5.0, "classes": 20, "held_out_only_top1": 50.0,
                   "held_out_only_classes": 4, "held_out_only_chance": 25.0},
        retrieval={"i2t_R@1": 10.0, "t2i_R@1": 12.0, "MR": 30.0},
        pipeline=[{"true": "红三角", "predicted": "红三角", "score": 0.9}],
        paths={"model": "m"},
        final_loss=1.0,
    )
    text = format_summary(result)
    assert "skipped: needs the token-wise head" in text and "4.0x" in text and "1/1 images right" in text


def test_bad_demo_settings_explain_themselves():
    with pytest.raises(ValueError, match="--similarity must be"):
        DemoSettings(similarity="cosine").check()
    with pytest.raises(ValueError, match="--steps must be at least 1"):
        DemoSettings(steps=0).check()
    with pytest.raises(ValueError, match="smaller than one batch"):
        DemoSettings(train_size=10).check()


def test_demo_command_reports_bad_arguments(capsys):
    assert main(["demo", "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err


def test_retrieval_truth_follows_what_each_caption_names():
    examples = SyntheticShapes(image_size=32, seed=0).examples("held_out", 60)
    retrieval = _retrieval_set(examples, "synthetic-shapes")
    named = [i for i, e in enumerate(examples) if e.names_background]
    unnamed = [i for i, e in enumerate(examples) if not e.names_background]
    assert named and unnamed
    for t, caption in enumerate(examples):
        described = set(retrieval.text_images[t])
        assert t in described  # a caption always describes its own image
        for i, image in enumerate(examples):
            same_object = (image.colour, image.shape) == (caption.colour, caption.shape)
            same_background = image.background == caption.background
            # "一个红三角" fits a red triangle on any background; "雪地上的一个红三角" only on snow.
            assert (i in described) == (same_object and (same_background or not caption.names_background))
    # Some caption without a background describes images on more than one background.
    assert any(len({examples[i].background for i in retrieval.text_images[t]}) > 1 for t in unnamed)


def test_reference_ranges_match_the_benchmark_and_the_docs():
    """The ranges the demo prints = benchmarks/results/demo_run.json's "reference" block = what docs/demo.md quotes."""
    from pathlib import Path

    from wukong_hf.demo import REFERENCE

    root = Path(__file__).resolve().parents[1]
    measured = json.loads((root / "benchmarks" / "results" / "demo_run.json").read_text(encoding="utf-8"))
    runs = measured["runs"]
    assert measured["reference"]["seeds"] == REFERENCE["seeds"] == f"{runs[0]['seed']}-{runs[-1]['seed']}"
    for key, value in measured["reference"].items():
        assert (list(REFERENCE[key]) if isinstance(REFERENCE[key], tuple) else REFERENCE[key]) == value, key
    assert REFERENCE["zero_shot_top1"] == (min(r["zero_shot_top1"] for r in runs), max(r["zero_shot_top1"] for r in runs))
    docs = (root / "docs" / "demo.md").read_text(encoding="utf-8")
    for key in ("zero_shot_top1", "held_out_only_top1", "alignment_share_on_object"):
        low, high = REFERENCE[key]
        assert f"{low:.1f}-{high:.1f}%" in docs, key
    assert f"{REFERENCE['total_seconds'][0]}-{REFERENCE['total_seconds'][1]} s" in docs


def _result_at(settings: dict) -> DemoResult:
    return DemoResult(settings=settings, seconds={"total": 50.0, "train": 40.0},
                      zero_shot={"top1": 20.0, "chance": 5.0, "classes": 20, "held_out_only_top1": 99.0,
                                 "held_out_only_classes": 4, "held_out_only_chance": 25.0},
                      retrieval={"i2t_R@1": 95.0, "t2i_R@1": 99.0, "MR": 98.0}, pipeline=[], paths={}, final_loss=2.0)


def test_summary_states_the_reference_ranges_only_at_the_default_settings():
    from dataclasses import asdict

    from wukong_hf.demo import REFERENCE

    text = format_summary(_result_at(asdict(DemoSettings())))
    low, high = REFERENCE["zero_shot_top1"]
    assert f"seeds {REFERENCE['seeds']} printed" in text and f"zero-shot top-1 {low:.1f}-{high:.1f}%" in text
    assert REFERENCE["machine"] in text and "one seed's numbers vary between machines" in text
    assert "printed" not in format_summary(_result_at(asdict(DemoSettings(steps=2))))


def test_a_slow_run_is_told_how_slow_and_how_long_it_will_take():
    from wukong_hf.demo import REFERENCE, SlowRunNote

    written = []
    note = SlowRunNote(write=written.append)
    reference = REFERENCE["train_seconds_per_step"][1]
    for step in range(1, 401):  # a quiet machine: reference speed, no note
        note(step, 400, step * reference)
    assert written == [] and note.message is None
    for step in range(1, 401):  # 6x slower: one note at step 10, with the time left
        note(step, 400, step * 6 * reference)
    assert len(written) == 1 and "6x slower than on" in written[0] and REFERENCE["machine"] in written[0]
    assert f"about {6 * reference * 390 / 60:.0f} min left" in written[0] and "--steps 100" in written[0]
