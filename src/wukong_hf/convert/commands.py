"""`wukong convert original|chinese-clip|image-tower` and `wukong push`: parse arguments, call the library."""

from __future__ import annotations

from ..cli import add_output_argument
from ..configuration_wukong import SCORING_RULES, TOKEN_WISE_PADDING, ZERO_SHOT_ENSEMBLES

__all__ = ["register"]


def _cmd_original(args) -> int:
    from .original import convert_original_checkpoint, load_variant_config

    variant = args.variant if args.config is None else load_variant_config(args.config)
    rule = None if args.scoring_rule == "config" else args.scoring_rule
    report = convert_original_checkpoint(args.checkpoint, variant, args.out, vocab=args.vocab, scoring_rule=rule)
    print(report.summary())
    print(f"wrote {args.out}")
    return 0


def _cmd_set_rule(args) -> int:
    from .scoring_rule import set_scoring_rule

    config = set_scoring_rule(args.model, args.rule, token_wise_padding=args.token_wise_padding,
                              zero_shot_ensemble=args.zero_shot_ensemble)
    print(f"{args.model}: token_wise_padding={config.token_wise_padding!r}, zero-shot ensemble "
          f"{config.ensemble_method!r} (config.json rewritten; weights untouched)")
    return 0


def _cmd_chinese_clip(args) -> int:
    from .chinese_clip import convert_chinese_clip

    print(convert_chinese_clip(args.model, args.out).summary())
    print(f"wrote {args.out}")
    return 0


def _cmd_image_tower(args) -> int:
    from .image_tower import init_lit_model

    report = init_lit_model(args.preset, args.weights, args.out, revision=args.revision)
    print(report.summary())
    print(f"wrote {args.out}")
    return 0


def _cmd_push(args) -> int:
    from ..hub import push_model

    if args.space:  # check the Space's arguments before any export or upload
        from ..space.export import check_space_request, push_space

        check_space_request(args.space, args.space_images)
    result = push_model(
        args.model, args.repo_id, private=args.private, dry_run_dir=args.dry_run, results_files=args.results,
        token=args.token, variant=args.variant, license=args.license, base_model=args.base_model,
    )
    print(f"dry run: wrote {result} (nothing uploaded)" if args.dry_run else f"pushed: {result}")
    if args.space:
        space_dir = f"{str(args.dry_run).rstrip('/')}-space" if args.dry_run else None
        space = push_space(args.space, args.repo_id, args.space_images, private=args.private, token=args.token,
                           dry_run_dir=space_dir)
        print(f"dry run: wrote the Space folder {space} (nothing uploaded)" if args.dry_run else f"pushed Space: {space}")
    return 0


def register(subparsers) -> None:
    convert = subparsers.add_parser("convert", help="convert official Wukong, Chinese-CLIP or CLIP/timm image-tower weights")
    kinds = convert.add_subparsers(dest="kind", metavar="KIND", required=True)

    p = kinds.add_parser("original", help="a released Wukong checkpoint (torch file or numpy pickle) -> model folder")
    p.add_argument("--checkpoint", required=True, help="official .ckpt/.pt/.pth file or pickle of numpy arrays")
    layout = p.add_mutually_exclusive_group(required=True)
    layout.add_argument("--variant", help="preset name, e.g. wukong-vit-b-32 (see `wukong presets`)")
    layout.add_argument("--config", help="a WukongConfig JSON file or a saved model folder, for layouts not bundled")
    add_output_argument(p, required=True, help="folder for the converted model (safetensors, config, processor, conversion_report.json)")
    p.add_argument("--vocab", help="vocab.txt (default: beside the checkpoint, else the bundled BERT-Chinese one)")
    p.add_argument("--scoring-rule", choices=("official", "paper", "config"), default="official",
                   help="score as the released evaluation code (official), as the paper, or as the config says")
    p.set_defaults(func=_cmd_original)

    p = kinds.add_parser("set-rule", help="switch a saved model between the paper's and the released code's scoring rules")
    p.add_argument("model", help="saved Wukong model folder (its config.json is rewritten)")
    p.add_argument("--rule", choices=tuple(SCORING_RULES), help="both settings at once")
    p.add_argument("--token-wise-padding", choices=TOKEN_WISE_PADDING, help="padded text positions: ignored or offer 0")
    p.add_argument("--zero-shot-ensemble", choices=ZERO_SHOT_ENSEMBLES,
                   help="how zero-shot combines prompt templates")
    p.set_defaults(func=_cmd_set_rule)

    p = kinds.add_parser("chinese-clip", help="a transformers ChineseCLIPModel (folder or Hub id) -> global Wukong model")
    p.add_argument("--model", required=True, help="folder or Hub id, e.g. OFA-Sys/chinese-clip-vit-base-patch16")
    add_output_argument(p, required=True, help="folder for the converted model (safetensors, config, processor, conversion_report.json)")
    p.set_defaults(func=_cmd_chinese_clip)

    p = kinds.add_parser("image-tower", help="new model of a preset with a pretrained image tower: the start of LiT "
                         "(the training run locks the tower)")
    p.add_argument("--preset", required=True, help="preset whose image tower is a timm architecture")
    p.add_argument("--weights", required=True, help="OpenAI-CLIP or timm weights: file, folder or Hub id")
    add_output_argument(p, required=True, help="folder for the converted model (safetensors, config, processor, conversion_report.json)")
    p.add_argument("--revision", help="Hub revision when --weights is a Hub id")
    p.set_defaults(func=_cmd_image_tower)

    p = subparsers.add_parser("push", help="export a model folder with its model card and upload it to the Hub")
    p.add_argument("--model", required=True, help="saved Wukong model folder")
    p.add_argument("--repo-id", required=True, help="org/name on the Hub")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--dry-run", metavar="OUT", help="only write the folder that would be uploaded to OUT")
    p.add_argument("--results", nargs="*", default=[], help="evaluation result JSON files (model_index entries)")
    p.add_argument("--variant", help="released variant for the card template and reported numbers")
    p.add_argument("--license", default="apache-2.0", help="licence id for the card")
    p.add_argument("--base-model", help="Hub id of the model this one derives from")
    p.add_argument("--token", help="Hub token (default: the logged-in one)")
    p.add_argument("--space", metavar="ORG/NAME", help="also push a Gradio Space running `wukong space` on this model "
                   "(with --dry-run OUT: written to OUT-space)")
    p.add_argument("--space-images", metavar="FOLDER", help="images for the Space's search tab (copied into it)")
    p.set_defaults(func=_cmd_push)
