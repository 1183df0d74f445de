"""WukongProcessor: the released image preprocessing plus the BERT-Chinese WordPiece tokenizer.

Images as the released code, bit for bit (WukongImageProcessor): RGB (grayscale, palette, RGBA and
CMYK are converted), short side resized to 224 with torchvision's bicubic on the PIL image,
centre-cropped to 224, CLIP mean/std. Text as the released tokenizer: CJK characters split one
per token, "[CLS] text [SEP]", zero padding to 32 tokens, over-long text keeps its first 30 word
pieces and then [SEP]. Text a user writes never becomes a special token ("[MASK]" in a caption is
the pieces "[", "mask", "]"), and the empty caption is "[CLS] [SEP]": a text with no content,
which scores by [CLS]/[SEP] alone (defined, but it says nothing about any image).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from PIL import Image
from transformers import BertTokenizer, ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

from .image_processing_wukong import CLIP_MEAN, CLIP_STD, WukongImageProcessor

__all__ = ["WukongProcessor", "load_chinese_vocab", "build_chinese_tokenizer", "build_image_processor",
           "CLIP_MEAN", "CLIP_STD"]


def load_chinese_vocab(path: str | Path | None = None) -> dict[str, int]:
    """Read a WordPiece vocab.txt (one token per line) into {token: id}.

    With no path, the BERT-Chinese vocabulary (21,128 entries, Apache-2.0) bundled with the package.
    """
    if path is None:
        text = resources.files("wukong_hf").joinpath("resources/vocab.txt").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    vocab = {token: i for i, token in enumerate(tokens)}
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
        if special not in vocab:
            raise ValueError(f"Vocabulary {path or 'bundled'} has no {special} token; it is not a BERT WordPiece vocab.")
    return vocab


def build_chinese_tokenizer(vocab_path: str | Path | None = None, max_length: int = 32) -> BertTokenizer:
    """The BERT-Chinese tokenizer (Rust backend) with model_max_length = max_length.

    Built from a vocab dict: BertTokenizer(vocab_file=...) silently ignores the file in transformers 5.
    split_special_tokens: text like "[MASK]" in a caption is split into ordinary pieces, as the
    released tokenizer does (saved in tokenizer_config.json, so the pipeline's direct tokenizer
    calls follow it too).
    """
    return BertTokenizer(
        vocab=load_chinese_vocab(vocab_path), do_lower_case=True, tokenize_chinese_chars=True, model_max_length=max_length,
        split_special_tokens=True,
    )


def build_image_processor(image_size: int = 224) -> WukongImageProcessor:
    """The released preprocessing (torchvision Resize/CenterCrop/ToTensor/Normalize) at `image_size` px."""
    return WukongImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def _looks_like_text(value) -> bool:
    return isinstance(value, str) or (isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) for v in value))


def _looks_like_images(value) -> bool:
    return isinstance(value, Image.Image) or (isinstance(value, (list, tuple)) and bool(value)
                                               and isinstance(value[0], Image.Image))


class WukongProcessor(ProcessorMixin):
    """Wraps an image processor (WukongImageProcessor; a converted Chinese-CLIP model keeps its own)
    and a BERT-Chinese tokenizer into one processor.

    `processor(images=[...], text=[...])` (or by position, images first, as CLIPProcessor) returns
    input_ids, attention_mask (padded to `max_length`, 32 by default) and pixel_values (B, 3, S, S).
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer)

    @classmethod
    def from_defaults(
        cls, image_size: int = 224, max_length: int = 32, vocab_path: str | Path | None = None
    ) -> "WukongProcessor":
        """The released preprocessing for `image_size` px images and `max_length` text tokens."""
        return cls(build_image_processor(image_size), build_chinese_tokenizer(vocab_path, max_length))

    @classmethod
    def from_config(cls, config, vocab_path: str | Path | None = None) -> "WukongProcessor":
        """The processor matching a WukongConfig (its image size and text length)."""
        return cls.from_defaults(config.image_size, config.max_text_length, vocab_path)

    @property
    def max_length(self) -> int:
        return self.tokenizer.model_max_length

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        padding: bool | str = "max_length",
        truncation: bool = True,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        if text is None and images is None:
            raise ValueError("WukongProcessor needs text, images or both.")
        # Older code called processor(text, images); CLIPProcessor's order is (images, text).
        if _looks_like_text(images) and (text is None or _looks_like_images(text)):
            images, text = text, images
        data = {}
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise TypeError(f"text[{i}] is {type(t).__name__}, expected str.")
            encoded = self.tokenizer(
                texts,
                padding=padding,
                truncation=truncation,
                max_length=max_length or self.max_length,
                return_tensors=return_tensors,
                return_token_type_ids=False,
                split_special_tokens=True,  # user text never becomes [MASK]/[PAD]/... (released tokenizer)
            )
            data.update(encoded)
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors, **kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]
