"""Switch how a saved model scores (the paper's rules or the released evaluation code's), in place."""

from __future__ import annotations

from pathlib import Path

from ..configuration_wukong import SCORING_RULES, WukongConfig

__all__ = ["set_scoring_rule"]


def set_scoring_rule(
    model_dir: str | Path,
    rule: str | None = None,
    *,
    token_wise_padding: str | None = None,
    zero_shot_ensemble: str | None = None,
) -> WukongConfig:
    """Rewrite a saved model's config.json to score by `rule` ("paper" or "official"), then apply the
    single settings given (token_wise_padding "ignore"/"zero", zero_shot_ensemble "embedding"/
    "similarity"/"probability"). Weights are untouched. Returns the new config.

    The same in Python without this helper:
    ``WukongConfig.from_pretrained(folder).use_scoring_rule("official").save_pretrained(folder)``.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: not a saved Wukong model folder.")
    if rule is None and token_wise_padding is None and zero_shot_ensemble is None:
        raise ValueError(f"Nothing to set: give a rule ({', '.join(SCORING_RULES)}) or a single setting.")
    config = WukongConfig.from_pretrained(model_dir)
    if rule is not None:
        config.use_scoring_rule(rule)
    if token_wise_padding is not None:
        config.token_wise_padding = token_wise_padding
    if zero_shot_ensemble is not None:
        config.zero_shot_ensemble = zero_shot_ensemble
    config._resolve_official_ensemble()
    config._check_choices()
    config.save_pretrained(model_dir)
    return config
