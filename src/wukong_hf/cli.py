"""`wukong` command line: one subcommand per capability. Each parses arguments and calls a library function.

Capabilities live in their own modules; each exposes `register(subparsers)` which adds its
subcommand(s) with `set_defaults(func=...)`. Every (sub)parser is a `CommandParser`: its --help shows
defaults and it takes --debug. `main` is the one place expected failures become one line and status 2
(`failure_message`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import sys

__all__ = ["main", "run_command", "build_parser", "failure_message", "add_output_argument", "CommandParser", "EXIT_FAILURE"]

EXIT_FAILURE = 2  # argparse's status for bad usage; the docs promise it for every expected failure

# One module per capability; each defines register(subparsers).
COMMAND_MODULES = [
    "wukong_hf.commands_core",  # presets, score
    "wukong_hf.data.commands",  # data ...
    "wukong_hf.evaluation.commands",  # eval zero-shot / retrieval / make-dataset
    "wukong_hf.training.commands",  # train
    "wukong_hf.convert.commands",  # convert original / chinese-clip / image-tower, push
    "wukong_hf.demo",  # demo, visualize
    "wukong_hf.space.commands",  # space: the Gradio app
    "wukong_hf.embed_commands",  # embed images / texts
]


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Shows "(default: X)" for every option with a default its help does not already state, including
    options given without any help text."""

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        flags = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._VersionAction, argparse._HelpAction)
        return action.default not in (None, argparse.SUPPRESS, []) and not isinstance(action, flags)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if self._shows_default(action) and "default" not in text:
            text += " (default: %(default)s)"
        return text

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._shows_default(action):  # argparse prints no help line for these otherwise
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


class CommandParser(argparse.ArgumentParser):
    """ArgumentParser for `wukong` and all its subcommands: defaults in --help and a --debug flag."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.set_defaults(command_prog=self.prog)  # the innermost (sub)command's name wins: "wukong eval zero-shot"
        # SUPPRESS: a subcommand's parser must not reset a --debug given before the subcommand.
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="on an error, show the full traceback instead of the one-line message")

    def add_subparsers(self, **kwargs):
        kwargs.setdefault("parser_class", CommandParser)
        return super().add_subparsers(**kwargs)


class _DeprecatedSpellingAction(argparse._StoreAction):
    """Stores the value; warns when the option was given by its deprecated spelling."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string not in self.option_strings:
            print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.option_strings[0]}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_output_argument(parser: argparse.ArgumentParser, help: str, **kwargs) -> argparse.Action:
    """The output flag of every command: --out. The old spelling --output still parses (with a warning)
    but is left out of --help and of argparse's messages: it maps to the action without being one of
    its option_strings."""
    action = parser.add_argument("--out", action=_DeprecatedSpellingAction, help=help, **kwargs)
    parser._option_string_actions["--output"] = action  # argparse resolves option strings through this map
    return action


def _version() -> str:
    from . import __version__

    return f"wukong-hf {__version__}"


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="wukong",
        description="Wukong Chinese vision-language models: presets, scoring, data, training, evaluation, conversion.",
        epilog="Expected failures (missing file, unknown model, offline, Hub errors, bad config) end with one line "
        "and status 2; --debug shows the traceback.",
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


# ----- expected failures -> one line ---------------------------------------------------------------
def _chain(err: BaseException) -> list[BaseException]:
    """err and the exceptions it was raised from (transformers wraps huggingface_hub's errors in OSError)."""
    found = []
    while err is not None and err not in found:
        found.append(err)
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return found


def _first_line(err: BaseException, whole_if_short: bool = True) -> str:
    """The message on one line: whole when short (a wrapped sentence), else its first line (two if it ends in ":")."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if whole_if_short and len(" ".join(lines)) <= 300:
        return " ".join(lines)
    if lines[0].endswith(":") and len(lines) > 1:  # "... one of:" reads on in the next line
        return f"{lines[0]} {lines[1]}"
    return lines[0]


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _hub_reason(err: BaseException) -> str | None:
    """One line for an error of huggingface_hub (or its HTTP client), else None."""
    from huggingface_hub import errors as hub

    if isinstance(err, hub.LocalEntryNotFoundError) and _offline():
        return ("not in the local Hugging Face cache, and offline mode (HF_HUB_OFFLINE=1) forbids downloading it: "
                "use a local folder, or unset HF_HUB_OFFLINE")
    if isinstance(err, hub.OfflineModeIsEnabled):
        return "the Hub cannot be reached in offline mode (HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE and try again"
    if isinstance(err, hub.LocalEntryNotFoundError):
        return ("not in the local Hugging Face cache and the Hub cannot be reached: check the network or "
                "HF_ENDPOINT, or use a local folder")
    if isinstance(err, hub.GatedRepoError):
        return "a gated repository: accept its terms on its Hub page, then log in with `hf auth login` or set HF_TOKEN"
    if isinstance(err, hub.RepositoryNotFoundError):
        return "no such local folder or Hub repository (a private one needs `hf auth login` or HF_TOKEN)"
    if isinstance(err, hub.RevisionNotFoundError):
        return "the Hub repository has no such revision (branch, tag or commit)"
    if isinstance(err, (hub.RemoteEntryNotFoundError, hub.EntryNotFoundError)):
        return f"the Hub repository lacks a file it needs ({_first_line(err)})"
    if isinstance(err, hub.HfHubHTTPError):
        response = getattr(err, "response", None)
        status = getattr(response, "status_code", None)
        if status == 401:
            return "the Hub refused the request (401 Unauthorized): log in with `hf auth login` or set HF_TOKEN"
        if status == 403:
            return ("the Hub refused the request (403 Forbidden): the token cannot write here; use a token with "
                    "write access to this repository")
        if status is not None and (status == 429 or status >= 500):
            return f"the Hub answered {status} (busy or down): try again later"
        return f"the Hub answered {status}: {_first_line(err)}"
    if isinstance(err, hub.HTTPError):  # the HTTP client's own errors: refused connection, DNS, timeout
        return f"cannot reach the Hugging Face Hub ({_first_line(err)}): check the network or HF_ENDPOINT"
    if isinstance(err, hub.HFValidationError):
        return "neither an existing local folder nor a Hub id of the form org/name"
    return None


def _yaml_position(chain: list[BaseException]) -> str:
    """' (problem at line L, column C)' for a YAML syntax error in the chain: its message spans several lines."""
    for err in chain:
        mark = getattr(err, "problem_mark", None)
        if type(err).__module__.startswith("yaml") and mark is not None:
            return f" ({getattr(err, 'problem', None) or 'syntax error'} at line {mark.line + 1}, column {mark.column + 1})"
    return ""


def _expected_types() -> tuple[type, ...]:
    """Exception types that mean bad input or an unreachable resource, not a bug in wukong-hf."""
    from huggingface_hub import errors as hub

    types: list[type] = [OSError, ValueError, hub.HTTPError]
    for module, name in (
        ("yaml", "YAMLError"),  # a training config that is not YAML
        ("safetensors", "SafetensorError"),  # a corrupt weights file
        ("datasets.exceptions", "DatasetsError"),  # a dataset that cannot be found or built
        ("tarfile", "TarError"),  # a broken WebDataset shard
    ):
        loaded = sys.modules.get(module)  # only where that library is already in use: no import here
        if loaded is not None and hasattr(loaded, name):
            types.append(getattr(loaded, name))
    return tuple(types)


def failure_message(err: BaseException) -> str | None:
    """The one line `wukong` prints for an expected failure (missing path, bad repo id, offline, Hub HTTP
    errors, unreadable or corrupt file, bad config); None for anything else (a bug: keep the traceback).

    Context added on the way up (exception notes, e.g. "model org/name") prefixes the reason.
    """
    if not isinstance(err, _expected_types()):
        return None
    chain = _chain(err)
    notes = [n for e in chain for n in getattr(e, "__notes__", ()) if "\n" not in n]
    reason = next((r for r in map(_hub_reason, chain) if r), None)
    if reason is not None and not notes and _first_line(err) != reason:
        reason = f"{reason} ({_first_line(err)})"  # no context was added: the library's own line names the source
    elif reason is None:
        position = _yaml_position(chain)  # a YAML message's other lines draw the position with carets
        reason = _first_line(err, whole_if_short=not position) + position
        if type(err).__module__.startswith("safetensors"):
            reason = f"corrupt or unreadable safetensors file ({reason})"
        elif type(err).__module__.startswith("yaml"):
            reason = f"not valid YAML ({reason})"
    return ": ".join([*dict.fromkeys(n for n in notes if n not in reason), reason])


def run_command(func, args: argparse.Namespace, name: str | None = None) -> int:
    """Run a command function: its status, or EXIT_FAILURE with one line "NAME: error: ..." on stderr for an
    expected failure. With args.debug, or for an unexpected error (a bug), the exception propagates."""
    name = name or getattr(args, "command_prog", "wukong")
    try:
        result = func(args)
    except KeyboardInterrupt:  # Ctrl-C: the user knows why; no traceback (a training run resumes from its checkpoint)
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`wukong presets | head`): not a failure of this command
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush cannot fail again
        return 1
    except Exception as err:
        message = None if getattr(args, "debug", False) else failure_message(err)
        if message is None:
            raise
        print(f"{name}: error: {message}", file=sys.stderr)
        return EXIT_FAILURE
    return int(result or 0)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
