"""TrainConfig parsing and validation, the recipe's weight-decay groups and optimiser, the CLI's errors."""

import pytest
import torch
from conftest import make_tiny

from wukong_hf.cli import main as cli_main
from wukong_hf.training import TrainConfig, TrainConfigError, build_optimizer, weight_decay_groups
from wukong_hf.training.config import OptimSection
from wukong_hf.training.step import freeze_image_tower

GOOD = """
model:
  preset: tiny-global
data:
  dataset: some-user/some-dataset
optim:
  lr: 1
loop:
  batch_size: 4
"""


def _write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_and_overrides_parse_into_typed_sections(tmp_path):
    config = TrainConfig.from_yaml(
        _write(tmp_path, GOOD),
        ["optim.lr=1e-3", "loop.max_steps=7", "model.overrides.text_config.hidden_dropout_prob=0.0",
         "eval.class_names=[猫, 狗]"],
    ).validate()
    assert config.optim.lr == 1e-3 and isinstance(config.optim.lr, float)
    assert config.loop.max_steps == 7 and config.loop.batch_size == 4
    assert config.model.overrides == {"text_config.hidden_dropout_prob": 0.0}
    assert config.eval.class_names == ["猫", "狗"]
    assert (config.optim.beta1, config.optim.beta2, config.optim.eps) == (0.9, 0.999, 1e-2)  # paper Table 4
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_yaml_int_for_float_field_is_stored_as_float(tmp_path):
    assert TrainConfig.from_yaml(_write(tmp_path, GOOD)).optim.lr == 1.0


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        (GOOD, ["optim.learning_rate=1e-3"], "Unknown config key optim.learning_rate"),
        (GOOD, ["loop.batch_size=eight"], "loop.batch_size must be int"),
        (GOOD, ["model.lock_image_tower=3"], "model.lock_image_tower must be bool"),
        (GOOD + "trainer: {}\n", [], "Unknown config section(s) trainer"),
        (GOOD, ["optim.lr"], "must look like section.key=value"),
        (GOOD, ["data.dataset=null"], "No training data"),
        (GOOD, ["data.dataset=./no/such/folder"], "data.dataset path ./no/such/folder does not exist"),
        (GOOD, ["model.preset=tiny-nothing"], "Unknown model.preset 'tiny-nothing'"),
        (GOOD, ["model.name_or_path=/x"], "Set exactly one of model.preset"),
        (GOOD, ["loop.accumulation_steps=0"], "loop.accumulation_steps must be at least 1"),
        (GOOD, ["loop.cache_image_features=true"], "needs a locked image tower and data.augment=false"),
        (GOOD, ["eval.dataset=x/y"], "needs eval.class_names"),
        (GOOD, ["eval.templates=[照片]"], "needs a '{c}'"),
        (GOOD, ["hub.push=true"], "hub.push=true needs hub.repo_id"),
        (GOOD, ["loop.mixed_precision=fp64"], "loop.mixed_precision must be"),
        (GOOD, ["data.shards=/no/such/*.tar"], "Set one of data.dataset"),
        (GOOD, ["data.dataset=null", "data.shards=/no/such/*.tar"], "matches no .tar shards"),
    ],
)
def test_config_errors_name_the_key_and_the_fix(tmp_path, text, overrides, message):
    with pytest.raises((TrainConfigError, FileNotFoundError)) as err:
        TrainConfig.from_yaml(_write(tmp_path, text), overrides).validate()
    assert message in str(err.value)


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; see configs/"):
        TrainConfig.from_yaml(tmp_path / "nothing.yaml")
    with pytest.raises(TrainConfigError, match="not valid YAML"):
        TrainConfig.from_yaml(_write(tmp_path, "model: [unclosed"))


def test_cli_reports_config_errors_before_any_work(tmp_path, capsys):
    code = cli_main(["train", str(_write(tmp_path, GOOD)), "optim.lr=-1"])
    assert code == 2
    assert "optim.lr must be positive" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_shipped_example_configs_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.glob("*.yaml"))
    assert len(files) >= 7
    for path in files:
        config = TrainConfig.from_yaml(path, ["eval.class_names=[猫]"])
        config.validate(has_train_dataset=True, has_eval_dataset=True)


def test_weight_decay_skips_bias_norm_embeddings_temperature_and_frozen_tower():
    model, _ = make_tiny("tiny-reduced")
    freeze_image_tower(model)
    decay, no_decay = weight_decay_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    assert "logit_scale" in skipped
    assert not any(n.startswith("vision_model.") for n in decayed | skipped)  # locked: not in the optimiser
    for name in skipped:
        assert ("bias" in name or "norm" in name.lower() or "embedding" in name or name == "logit_scale"), name
    for name in decayed:
        assert not ("bias" in name or "LayerNorm" in name or "embeddings" in name), name
    assert "text_projection.weight" in decayed and "token_reduction.feat_conv.weight" in decayed
    assert any("token_embedding" in n for n in skipped) and any("position_embedding" in n for n in skipped)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decayed | skipped == trainable


def test_unlocked_tower_positional_embedding_is_not_decayed():
    model, _ = make_tiny("tiny-global")  # unlocked: a fresh model trains everything
    decay, no_decay = weight_decay_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"vision_model.timm_model.pos_embed", "vision_model.timm_model.cls_token"} <= skipped
    assert any("word_embeddings" in n for n in skipped) and any("position_embeddings" in n for n in skipped)
    assert any(names[id(p)].startswith("vision_model.") for p in decay["params"])


def test_optimizer_is_lamb_with_paper_hyperparameters():
    model, _ = make_tiny("tiny-global")
    freeze_image_tower(model)
    optimizer = build_optimizer(model, OptimSection(lr=2e-3, weight_decay=0.05))
    assert type(optimizer).__name__ == "Lamb"
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-2 and group["lr"] == 2e-3
    frozen = [p for p in model.vision_model.parameters()]
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in optimised for p in frozen)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, OptimSection())
    assert torch.is_tensor(model.logit_scale)


def test_shard_config_needs_max_steps_and_no_feature_cache(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"")
    shards = f"data.shards={tmp_path}"
    with pytest.raises(TrainConfigError, match="set loop.max_steps"):
        TrainConfig.from_yaml(_write(tmp_path, GOOD), ["data.dataset=null", shards]).validate()
    with pytest.raises(TrainConfigError, match="cache_image_features needs data.dataset"):
        TrainConfig.from_yaml(_write(tmp_path, GOOD), ["data.dataset=null", shards, "loop.max_steps=3",
                                                       "loop.cache_image_features=true"]).validate()
    TrainConfig.from_yaml(_write(tmp_path, GOOD), ["data.dataset=null", shards, "loop.max_steps=3"]).validate()


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_zero():
    from wukong_hf.training import build_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert lrs[8] == pytest.approx(0.5)  # cosine half-way through the 8 decay steps
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:])) and scheduler.get_last_lr()[0] == pytest.approx(0.0)


def test_augmentation_is_torchvision_autoaugment_on_pil_images():
    from PIL import Image
    from torchvision.transforms import AutoAugment, AutoAugmentPolicy

    from wukong_hf.training.recipe import build_augmentation

    assert build_augmentation(False) is None
    augment = build_augmentation(True)
    assert isinstance(augment, AutoAugment) and augment.policy == AutoAugmentPolicy.IMAGENET
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    torch.manual_seed(0)
    out = [augment(image) for _ in range(8)]
    assert all(o.size == (40, 30) for o in out) and any(o.tobytes() != image.tobytes() for o in out)


def test_train_py_reports_bad_input_without_a_traceback(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    import train as train_script

    assert train_script.main([str(_write(tmp_path, GOOD)), "data.dataset=./no/such/folder"]) == 2
    assert "train.py: error: data.dataset path ./no/such/folder does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    "configured, environ, value, source, message",
    [
        (None, {}, "no", "default", "default; set loop.mixed_precision or accelerate launch --mixed_precision"),
        (None, {"ACCELERATE_MIXED_PRECISION": "bf16"}, "bf16", "launcher", "from the launcher: ACCELERATE_MIXED_PRECISION=bf16, set by accelerate launch"),
        ("fp16", {"ACCELERATE_MIXED_PRECISION": "bf16"}, "fp16", "training config",
         "from the training config, loop.mixed_precision; overrides the launcher's ACCELERATE_MIXED_PRECISION=bf16"),
        ("bf16", {"ACCELERATE_MIXED_PRECISION": "bf16"}, "bf16", "training config", "from the training config"),
    ],
)
def test_launch_settings_precedence(configured, environ, value, source, message):
    from wukong_hf.training.config import LoopSection
    from wukong_hf.training.loop import resolve_launch_settings

    setting = resolve_launch_settings(LoopSection(mixed_precision=configured), environ)["mixed_precision"]
    assert (setting["value"], setting["source"]) == (value, source) and message in setting["message"]
    accumulation = resolve_launch_settings(LoopSection(), {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"})
    assert accumulation["accumulation_steps"]["value"] == 4
    assert resolve_launch_settings(LoopSection(accumulation_steps=2), {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"})[
        "accumulation_steps"]["value"] == 2
    with pytest.raises(TrainConfigError, match="ACCELERATE_GRADIENT_ACCUMULATION_STEPS='zero' from the launcher"):
        resolve_launch_settings(LoopSection(), {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "zero"})


def test_shipped_configs_leave_precision_to_the_launcher_and_are_not_named_like_presets():
    from pathlib import Path

    from wukong_hf.presets import list_presets

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert files and all(path.name.startswith("train-") for path in files)
    assert not {path.stem for path in files} & set(list_presets())
    for path in files:
        assert TrainConfig.from_yaml(path).loop.mixed_precision is None, path.name
