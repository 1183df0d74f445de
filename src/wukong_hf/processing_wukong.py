"""WukongProcessor: CLIP image processing plus the BERT-Chinese WordPiece tokenizer.

Images as the released code: RGB (grayscale, palette, RGBA and CMYK are converted), short side
resized to 224 with bicubic, centre-cropped to 224, CLIP mean/std. Text: CJK characters split
one per token, "[CLS] text [SEP]", zero padding to 32 tokens, over-long text keeps its first 30
word pieces and then [SEP].
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from transformers import BertTokenizer, CLIPImageProcessor, ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

__all__ = ["WukongProcessor", "load_chinese_vocab", "build_chinese_tokenizer", "build_image_processor"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
    """
    return BertTokenizer(
        vocab=load_chinese_vocab(vocab_path), do_lower_case=True, tokenize_chinese_chars=True, model_max_length=max_length
    )


def build_image_processor(image_size: int = 224) -> CLIPImageProcessor:
    return CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        resample=3,  # PIL.Image.BICUBIC
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_convert_rgb=True,
    )


class WukongProcessor(ProcessorMixin):
    """Wraps a CLIP image processor and a BERT-Chinese tokenizer into one processor.

    `processor(text=[...], images=[...])` returns input_ids, attention_mask (padded to
    `max_length`, 32 by default) and pixel_values (B, 3, S, S).
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
        text: str | list[str] | None = None,
        images=None,
        padding: bool | str = "max_length",
        truncation: bool = True,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        if text is None and images is None:
            raise ValueError("WukongProcessor needs text, images or both.")
        data = {}
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise TypeError(f"text[{i}] is {type(t).__name__}, expected str.")
                if not t.strip():
                    raise ValueError(f"text[{i}] is empty; every caption or label needs at least one character.")
            encoded = self.tokenizer(
                texts,
                padding=padding,
                truncation=truncation,
                max_length=max_length or self.max_length,
                return_tensors=return_tensors,
                return_token_type_ids=False,
            )
            data.update(encoded)
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors, **kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]
