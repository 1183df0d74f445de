"""What each tab of the Space computes, without Gradio (unit tests call these directly).

`load_session` loads a model once; the three `*_tab` functions take the page's raw inputs and
return exactly what the page shows, with a message instead of a stack trace for bad input:

    zero_shot_tab(session, image, labels, template)  -> (ZeroShotResult | None, message)
    search_tab(session, query, top_k, shortlist)     -> (SearchResult | None, message)
    alignment_tab(session, image, label)             -> (AlignmentResult | None, message)

Scores come from the model's SimilarityRule (the one place a similarity is computed), prompt
ensembles from wukong_hf.evaluation.zero_shot, pictures from wukong_hf.visualize.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..evaluation.encoding import encode_texts, open_rgb
from ..evaluation.prompts import fill_template, load_templates
from ..evaluation.zero_shot import ensemble_class_scores
from ..similarity import SimilarityRule
from ..visualize import draw_alignment, highlight_mask, word_patch_alignment
from .image_index import FolderFeatures, ImageFolderIndex, default_cache_dir, model_fingerprint

__all__ = [
    "SpaceInputError",
    "SpaceSession",
    "load_model",
    "load_session",
    "parse_labels",
    "read_image",
    "ENSEMBLE_CHOICE",
    "TEMPLATE_CHOICES",
    "ZeroShotResult",
    "SearchResult",
    "AlignmentResult",
    "zero_shot",
    "search",
    "alignment",
    "zero_shot_tab",
    "search_tab",
    "alignment_tab",
]

logger = logging.getLogger(__name__)

ENSEMBLE_CHOICE = "80-prompt ensemble (ImageNet-CN templates)"
TEMPLATE_CHOICES = ["{c}", "{c}的照片。", "一张{c}的图片。", ENSEMBLE_CHOICE]
LABEL_SEPARATORS = re.compile(r"[,，、;；\n]+")  # ASCII and full-width commas, enumeration comma, semicolons
DEFAULT_TOP_K = 12
DEFAULT_SHORTLIST = 256
DISPLAY_SIDE = 448  # pixels: the longer side of the alignment pictures in the page
LABEL_COLOURS = ["#ffd700", "#ff4081", "#00e676", "#ff9100", "#18ffff", "#d500f9", "#76ff03", "#ff1744"]
SPECIAL_COLOURS = {"[CLS]": "#78909c", "[SEP]": "#3949ab"}


class SpaceInputError(ValueError):
    """Bad input from the page; the message says what was wrong and what to do, and is shown as is."""


# ----- loading ----------------------------------------------------------------------------------
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def load_model(name_or_path: str):
    """(WukongModel in eval mode on the GPU when there is one, its processor) from a saved folder or a Hub id.

    The loading is model_folders.load_model_and_processor (the one loader); this adds the Space's own
    words for a bad --model (they name the flag and the demo's folder) and the device.
    """
    from ..model_folders import NotAWukongModel, load_model_and_processor

    path = Path(name_or_path).expanduser()
    hint = ("give a folder saved by save_pretrained (e.g. wukong-demo/train/final after `wukong demo`) or a Hub id "
            "such as org/name")
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--model {name_or_path} is not a saved model folder (no config.json in it); {hint}.")
    elif not _HUB_ID.match(name_or_path):
        raise FileNotFoundError(f"--model {name_or_path}: no such folder, and not a Hub id; {hint}.")
    try:
        model, processor = load_model_and_processor(str(path) if path.exists() else name_or_path)
    except NotAWukongModel as err:
        from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

        kind = MODEL_MAPPING_NAMES.get(err.model_type) or f"{err.model_type!r} model"  # e.g. BertModel
        raise ValueError(
            f"--model {name_or_path} is a {kind}, not a Wukong model; convert it first "
            "(`wukong convert chinese-clip`, `wukong convert original`)."
        ) from None
    except OSError as err:
        if path.exists():  # a local folder's own problem (e.g. no tokenizer): model_folders' message says which
            raise
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(
            f"Cannot load --model {name_or_path}: not a local folder, and the Hub did not give it ({first_line}); "
            f"{hint}, and check the network for Hub ids."
        ) from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device), processor


@dataclass
class SpaceSession:
    """One loaded model and what the page needs about it.

    model, processor: the WukongModel (eval mode) and its WukongProcessor. name: how the page
    names the model (folder or Hub id). index: the search folder, or None. templates_source:
    where the 80 ensemble templates come from ("imagenet1k" = clip-benchmark's list, or a file).
    model_key: the model's identity for the search cache.
    """

    model: object
    processor: object
    name: str
    index: ImageFolderIndex | None = None
    templates_source: str | Path = "imagenet1k"
    model_key: str = ""

    @property
    def rule(self) -> SimilarityRule:
        return self.model.similarity_rule

    def ensemble_templates(self) -> list[str]:
        """The prompt templates of the ensemble choice (read once)."""
        if not hasattr(self, "_templates"):
            try:
                self._templates = load_templates(self.templates_source)
            except (ValueError, FileNotFoundError) as err:
                raise SpaceInputError(f"The prompt ensemble is not available here: {err}") from None
        return self._templates

    def alignment_problem(self) -> str | None:
        """Why this model cannot draw word-patch alignment (None when it can)."""
        from ..visualize import _check_token_wise

        try:
            _check_token_wise(self.model)
        except ValueError as err:
            return str(err)
        return None

    def describe(self) -> str:
        """One Markdown line about the model for the page header."""
        config = self.model.config
        head = "token-wise (FILIP late interaction)" if self.rule.uses_tokens else "global ([CLS] embedding)"
        folder = ""
        if self.index is not None:
            folder = f" · search folder `{self.index.folder}`"
        return (f"Model `{self.name}` · {head} similarity · {config.image_size} px images · zero-shot ensemble "
                f"'{config.ensemble_method}'{folder}")


def load_session(
    model: str,
    images: str | Path | None = None,
    cache_dir: str | Path | None = "default",
    templates: str | Path = "imagenet1k",
) -> SpaceSession:
    """Load the model and check the search folder (exists and holds images) once, at start.

    cache_dir: where the search features are cached ("default": ~/.cache/wukong-hf/space-index;
    None: no disk cache).
    """
    index = None
    if images is not None:
        index = ImageFolderIndex(images, default_cache_dir() if cache_dir == "default" else cache_dir)
        index.check_not_empty()
    loaded, processor = load_model(str(model))
    return SpaceSession(loaded, processor, str(model), index, templates, model_fingerprint(loaded, str(model)))


# ----- inputs -----------------------------------------------------------------------------------
def parse_labels(text: str | None) -> list[str]:
    """Labels from one string: separated by , or ， (also 、 ; ； and new lines), trimmed, duplicates dropped."""
    labels: list[str] = []
    for label in LABEL_SEPARATORS.split(text or ""):
        label = label.strip()
        if label and label not in labels:
            labels.append(label)
    if not labels:
        raise SpaceInputError("Enter at least two labels, separated by commas, e.g. 猫, 狗, 飞机 (, and ， both work).")
    if len(labels) < 2:
        raise SpaceInputError(
            f"Only one label ({labels[0]}): probabilities compare labels with each other, so give at least two, "
            "e.g. 猫, 狗."
        )
    return labels


def read_image(value) -> Image.Image:
    """An RGB image from what the page sends: a PIL image, a file path, or Gradio's file payload (dict with path)."""
    if value is None or value == "":
        raise SpaceInputError("Upload an image first (PNG, JPEG or WebP).")
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    name = None
    if isinstance(value, dict):
        name, value = value.get("orig_name"), value.get("path")
    elif hasattr(value, "path"):  # gradio FileData
        name, value = getattr(value, "orig_name", None), value.path
    if not isinstance(value, (str, Path)):
        raise SpaceInputError("Upload an image first (PNG, JPEG or WebP).")
    name = name or Path(value).name
    try:
        return open_rgb(str(value))
    except (OSError, ValueError, SyntaxError) as err:
        reason = _short_reason(str(err) or type(err).__name__)
        raise SpaceInputError(
            f"{name} is not an image this app can read ({reason}); upload a PNG, JPEG or WebP picture."
        ) from None


def _short_reason(reason: str) -> str:
    """PIL's message without the server-side file path it quotes ("cannot identify image file '/tmp/...'")."""
    return re.sub(r" '[^']*'", "", reason)


def _template(choice: str | None) -> str:
    template = (choice or "{c}").strip().replace("{}", "{c}")
    if "{c}" not in template:
        raise SpaceInputError(
            f"The prompt {template!r} has no place for the label: write {{c}} where the label goes, e.g. {{c}}的照片。"
        )
    return template


# ----- zero-shot --------------------------------------------------------------------------------
@dataclass
class ZeroShotResult:
    """probabilities: label -> value in [0, 1] (sums to 1), highest first. explanation: what the bars are."""

    probabilities: dict[str, float]
    explanation: str


@torch.no_grad()
def zero_shot(session: SpaceSession, image, labels_text: str, template: str | None) -> ZeroShotResult:
    """Probabilities of the labels for one image, with one prompt or the model's prompt ensemble."""
    picture = read_image(image)
    labels = parse_labels(labels_text)
    model, processor = session.model, session.processor
    ensemble = template == ENSEMBLE_CHOICE
    templates = session.ensemble_templates() if ensemble else [_template(template)]
    method = model.config.ensemble_method if ensemble else "similarity"  # one prompt: the plain similarity
    device = next(model.parameters()).device
    pixels = processor(images=[picture])["pixel_values"].to(device)
    image_features = model.encode_image(pixels).to("cpu", torch.float32)
    texts = [fill_template(t, label) for label in labels for t in templates]  # class-major, as the ensemble expects
    prompts = encode_texts(model, processor, texts, desc="prompts")
    scores = ensemble_class_scores(image_features, prompts, len(labels), session.rule, method)[0]
    scale = float(model.inverse_temperature)
    if method == "probability":
        probabilities = scores / scores.sum()
        explanation = (
            f"Bars: the mean over {len(templates)} prompts of the softmax over the {len(labels)} labels of the "
            "unscaled similarity (this model's 'probability' ensemble, as the released Wukong code scores); without "
            "the temperature the bars are flat, the order is the prediction."
        )
    else:
        probabilities = (scale * scores).softmax(dim=0)
        if not ensemble:
            what = f"the similarity to the prompt 「{templates[0]}」"
        elif method == "similarity":
            what = f"the mean similarity over {len(templates)} prompts ('similarity' ensemble)"
        else:
            what = f"the similarity to each label's mean prompt embedding over {len(templates)} prompts ('embedding' ensemble)"
        explanation = (f"Bars: softmax over the {len(labels)} labels of {what} × {scale:.4g} "
                       "(the model's inverse temperature).")
    order = probabilities.argsort(descending=True).tolist()
    return ZeroShotResult({labels[i]: float(probabilities[i]) for i in order}, explanation)


# ----- search -----------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """hits: [(image file, score)] best first; scores are unscaled text-to-image similarities."""

    hits: list[tuple[Path, float]]
    explanation: str


@torch.no_grad()
def search(session: SpaceSession, query: str, top_k: int = DEFAULT_TOP_K, shortlist: int = DEFAULT_SHORTLIST) -> SearchResult:
    """The folder's images best matching a Chinese query.

    Every image is scored by global embeddings; for token-wise models the best `shortlist` of
    them are re-ranked by the model's token-wise rule (text-to-image direction, as retrieval).
    """
    if session.index is None:
        raise SpaceInputError(
            "No image folder to search: start the app with --images FOLDER (e.g. wukong space --model ... "
            "--images wukong-demo/held_out)."
        )
    query = (query or "").strip()
    if not query:
        raise SpaceInputError("Type a Chinese query first, e.g. 红三角 or 一只猫.")
    top_k, shortlist = max(1, int(top_k or DEFAULT_TOP_K)), max(1, int(shortlist or DEFAULT_SHORTLIST))
    try:
        folder = session.index.features(session.model, session.processor, session.model_key)
    except (ValueError, FileNotFoundError) as err:
        raise SpaceInputError(str(err)) from None
    text = encode_texts(session.model, session.processor, [query], desc="query")
    bank = folder.features
    coarse = SimilarityRule("global").scores(bank, text)[1][0]  # (N,) the shortlist: global embeddings
    if session.rule.uses_tokens:
        candidates = coarse.topk(min(shortlist, len(bank))).indices
        fine = session.rule.scores(bank.select(candidates), text)[1][0]
        best = fine.argsort(descending=True)[:top_k]
        chosen, scores = candidates[best], fine[best]
        how = (f"token-wise similarity (text to image) of the global top {len(candidates)} of {len(bank)} images, "
               "re-ranked")
    else:
        scores, chosen = coarse.topk(min(top_k, len(bank)))
        how = f"global similarity over all {len(bank)} images"
    hits = [(folder.paths[i], float(s)) for i, s in zip(chosen.tolist(), scores.tolist())]
    return SearchResult(hits, _search_explanation(session, folder, how))


def _search_explanation(session: SpaceSession, folder: FolderFeatures, how: str) -> str:
    lines = [f"Scores: {how}."]
    if folder.from_cache:
        state = "features read from the disk cache"
    else:
        cached = "cached on disk" if session.index.cache_dir is not None else "no disk cache"
        state = f"encoded in {folder.seconds:.1f} s, {cached}"
    count = len(folder.paths)
    lines.append(f"{count} image{'' if count == 1 else 's'} of `{session.index.folder}` ({state}).")
    if folder.skipped:
        shown = "; ".join(f"{name} ({_short_reason(reason)})" for name, reason in folder.skipped[:3])
        more = f" and {len(folder.skipped) - 3} more" if len(folder.skipped) > 3 else ""
        lines.append(f"Skipped {len(folder.skipped)} unreadable image file(s): {shown}{more}.")
    if folder.ignored:
        lines.append(f"Ignored {len(folder.ignored)} file(s) that are not images (e.g. {folder.ignored[0]}).")
    return "\n\n".join(lines)


# ----- word-patch alignment (paper Figure 4) ----------------------------------------------------
@dataclass
class AlignmentResult:
    """The pictures of one image-label alignment, sized for the page.

    image: the image resized to DISPLAY_SIDE. annotations: [(mask (H, W) float in [0, 1], legend
    name)] one per token, the patches whose best token it is (the mask's value is its opacity).
    colours: legend name -> hex colour. figure: paper Figure 4's layout (label-token patches
    yellow, index of the best token in each patch). legend: the tokens and their patch shares.
    tokens: the text tokens ("[CLS]", characters..., "[SEP]"); shares: fraction of the seen patches per token.
    """

    image: Image.Image
    annotations: list[tuple[np.ndarray, str]]
    colours: dict[str, str]
    figure: Image.Image
    legend: str
    tokens: list[str]
    shares: list[float]


def _display_alignment(found, factor: float):
    """The same alignment with its pixel geometry scaled by `factor` (the picture is drawn resized)."""
    width, height = found.image_size
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return dataclasses.replace(found, crop_box=tuple(v * factor for v in found.crop_box), image_size=size)


@torch.no_grad()
def alignment(session: SpaceSession, image, label: str) -> AlignmentResult:
    """Which token of "[CLS] label [SEP]" each image patch matches best, drawn for the page."""
    problem = session.alignment_problem()
    if problem:
        raise SpaceInputError(problem)
    picture = read_image(image)
    label = (label or "").strip()
    if not label:
        raise SpaceInputError("Type a label first, e.g. 蜻蜓 or 红三角.")
    try:
        found = word_patch_alignment(session.model, session.processor, picture, label)
    except ValueError as err:
        raise SpaceInputError(str(err)) from None
    factor = DISPLAY_SIDE / max(picture.size)
    shown = _display_alignment(found, factor)
    resample = Image.NEAREST if factor > 1 else Image.BICUBIC  # enlarge small images crisply, shrink photos smoothly
    display = picture.resize(shown.image_size, resample)
    counts = torch.bincount(found.token_index.flatten(), minlength=len(found.tokens)).tolist()
    total = sum(counts)
    names, colours, annotations = [], {}, []
    for k, token in enumerate(found.tokens):
        share = counts[k] / total
        name = f"{token} · {share:.0%}"
        if name in colours:  # a repeated character: keep legend names distinct
            name = f"{token} (#{k}) · {share:.0%}"
        is_label = k in found.label_tokens
        colours[name] = LABEL_COLOURS[(k - 1) % len(LABEL_COLOURS)] if is_label else SPECIAL_COLOURS.get(token, "#9e9e9e")
        opacity = 0.6 if is_label else 0.45
        annotations.append((highlight_mask(shown, [k]).astype(np.float32) * opacity, name))
        names.append(f"**{token}** {share:.0%}" if is_label else f"{token} {share:.0%}")
    on_label = sum(counts[k] for k in found.label_tokens) / total
    index_key = ", ".join(f"{k} = {t}" for k, t in enumerate(found.tokens))
    legend = (
        f"Tokens of 「{label}」 and the share of the {total} patches whose best token each is (bold: the label's own "
        f"tokens): {' · '.join(names)}.\n\nThe label's tokens are the best match of {on_label:.0%} of the patches "
        f"(yellow in the Figure 4 picture, whose numbers are token indices: {index_key})."
    )
    if picture.size[0] != picture.size[1]:
        legend += " Grey: outside the centre crop that the model sees."
    figure = draw_alignment(display, shown)
    return AlignmentResult(display, annotations, colours, figure, legend, list(found.tokens),
                           [c / total for c in counts])


# ----- what the page calls: results or a message, never a stack trace ---------------------------
def _in_page(compute: Callable, *args):
    """(result, "") or (None, message): input problems say what to do; anything else is logged with its
    traceback on the server and named in one line on the page."""
    try:
        return compute(*args), ""
    except SpaceInputError as err:
        return None, f"⚠️ {err}"
    except Exception as err:  # noqa: BLE001  (the page shows one line; the server log keeps the traceback)
        logger.exception("the Space failed on %s", getattr(compute, "__name__", compute))
        return None, f"⚠️ Something went wrong ({type(err).__name__}: {err}); the server log has the details."


def zero_shot_tab(session: SpaceSession, image, labels_text: str, template: str | None):
    """(ZeroShotResult | None, message) for the zero-shot tab."""
    return _in_page(zero_shot, session, image, labels_text, template)


def search_tab(session: SpaceSession, query: str, top_k: int = DEFAULT_TOP_K, shortlist: int = DEFAULT_SHORTLIST):
    """(SearchResult | None, message) for the search tab."""
    return _in_page(search, session, query, top_k, shortlist)


def alignment_tab(session: SpaceSession, image, label: str):
    """(AlignmentResult | None, message) for the alignment tab."""
    return _in_page(alignment, session, image, label)
