"""`wukong space`: start the Space's Gradio app for a model, or write it as a Space folder (--export)."""

from __future__ import annotations

__all__ = ["register"]


def _cmd_space(args) -> int:
    if args.export:
        from .export import write_space_folder

        out = write_space_folder(args.export, args.model, images=args.images, title=args.title)
        print(f"wrote the Space folder {out}: app.py, requirements.txt, README.md, the wukong_hf package"
              f"{', the model' if (out / 'model').is_dir() else ''}{', the images' if (out / 'images').is_dir() else ''}")
        print(f"run it: cd {out} && pip install -r requirements.txt && python app.py   (or upload it as a Gradio Space)")
        return 0
    try:
        import gradio  # noqa: F401
    except ModuleNotFoundError:
        raise ValueError("the Space needs gradio: pip install 'wukong-hf[space]' (or the [dev] extra).") from None
    from .app import build_app, launch_options
    from .handlers import load_session

    _check_port_free(args.host, args.port)  # before the (slow) model load
    session = load_session(args.model, images=args.images, cache_dir=args.cache_dir or "default")
    demo = build_app(session)
    print(f"wukong space: {session.describe()}")
    try:
        demo.launch(server_name=args.host, server_port=args.port, **launch_options(session))
    except OSError as err:  # gradio: "Cannot find empty port in range ..."
        raise ValueError(f"cannot serve on {args.host}:{args.port} ({str(err).split('.')[0]}); pass another --port.") from None
    return 0


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ValueError(f"cannot serve on {host}:{port} ({err.strerror or err}); pass another --port.") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "space", help="a Gradio app for a model: zero-shot, Chinese text-to-image search over a folder, "
                      "word-patch alignment (or --export it as a Hugging Face Space folder)")
    p.add_argument("--model", required=True, help="model folder or Hub id, e.g. wukong-demo/train/final")
    p.add_argument("--images", help="folder of images for the search tab (e.g. wukong-demo/held_out)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--cache-dir", help="where search features are cached (default ~/.cache/wukong-hf/space-index)")
    p.add_argument("--export", metavar="DIR", help="write a Space folder (app.py, requirements.txt, README.md) instead "
                                                   "of starting the app; a local --model and --images are copied in")
    p.add_argument("--title", help="the Space's title with --export (default: from the model's name)")
    p.set_defaults(func=_cmd_space)
