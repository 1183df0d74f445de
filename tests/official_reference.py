"""Small reference implementations of the released Wukong evaluation rules.

Written from their description in docs/wukong-facts.md ("The public releases"), not from the
released code, and kept deliberately plain (loops, einsum, the four torchvision transforms), so
the project's fast paths are checked against something they do not share:

- official_tokenize: BERT's basic + WordPiece tokenisation over the BERT-Chinese vocabulary
  (every "C*" character removed, CJK characters split, lower-cased, accents stripped, punctuation
  split), [CLS] text [SEP] with zero padding to 32, over-long text cut to 30 pieces. Text never
  becomes a special token. (One known difference, by design: the released tokenizer keeps a
  whitespace-delimited "[CLS]", "[SEP]" or "[UNK]" in a caption as that special token; here, as
  the issue asks, it is ordinary text. No caption or prompt of the evaluations contains one.)
- official_pixels: torchvision Resize(224, bicubic) -> CenterCrop(224) -> ToTensor -> Normalize.
- official_token_wise_scores: text token features times the (ids > 0) mask; image->text takes, for
  each image token, the max over ALL 32 positions (padding included: a padded position offers 0),
  then the mean over image tokens; text->image averages each real token's max over image tokens.
- official_zero_shot_probabilities: mean over prompts of the softmax over classes of the
  unscaled token-wise similarity.
"""

from __future__ import annotations

import unicodedata

import torch
from torchvision import transforms

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"


# ----- tokenizer ------------------------------------------------------------------------------------
def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    ranges = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]
    return any(lo <= cp <= hi for lo, hi in ranges)


def _basic_tokens(text: str) -> list[str]:
    cleaned = []
    for ch in text:
        if ord(ch) in (0, 0xFFFD) or _is_control(ch):
            continue
        cleaned.append(" " if _is_whitespace(ch) else ch)
    spaced = "".join(f" {ch} " if _is_cjk(ord(ch)) else ch for ch in cleaned)
    pieces = []
    for word in spaced.split():
        word = "".join(ch for ch in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(ch) != "Mn")
        current = ""
        for ch in word:
            if _is_punctuation(ch):
                if current:
                    pieces.append(current)
                pieces.append(ch)
                current = ""
            else:
                current += ch
        if current:
            pieces.append(current)
    return pieces


def _wordpieces(word: str, vocab: dict[str, int]) -> list[str]:
    if len(word) > 100:
        return [UNK]
    out, start = [], 0
    while start < len(word):
        end, found = len(word), None
        while start < end:
            piece = ("##" if start else "") + word[start:end]
            if piece in vocab:
                found = piece
                break
            end -= 1
        if found is None:
            return [UNK]
        out.append(found)
        start = end
    return out


def official_tokenize(text: str, vocab: dict[str, int], max_length: int = 32) -> list[int]:
    """Token ids of one caption: [CLS] first 30 pieces [SEP], zero-padded to max_length."""
    pieces = [p for word in _basic_tokens(text) for p in _wordpieces(word, vocab)][: max_length - 2]
    ids = [vocab[CLS]] + [vocab[p] for p in pieces] + [vocab[SEP]]
    return ids + [vocab[PAD]] * (max_length - len(ids))


# ----- images ---------------------------------------------------------------------------------------
def official_pixels(images, size: int = 224) -> torch.Tensor:
    """(B, 3, size, size) pixel values of PIL images, torchvision on the PIL image as the release does."""
    pipeline = transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])
    return torch.stack([pipeline(image.convert("RGB")) for image in images])


# ----- scores ---------------------------------------------------------------------------------------
def official_token_wise_scores(image_tokens: torch.Tensor, text_tokens: torch.Tensor, input_ids: torch.Tensor):
    """image_tokens (I, n1, D) the tokens the release scores, normalised; text_tokens (T, 32, D)
    normalised features of every position of the 32-token layout; input_ids (T, 32).
    Returns (image_to_text (I, T), text_to_image (T, I)), unscaled."""
    mask = (input_ids > 0).to(text_tokens.dtype)
    text = text_tokens * mask[..., None]  # padded rows become zero vectors
    sim = torch.einsum("ikd,jrd->ijkr", image_tokens, text)  # (I, T, n1, 32)
    image_to_text = sim.max(dim=3).values.mean(dim=2)  # every position, padding included
    text_to_image = (sim.max(dim=2).values * mask[None]).sum(dim=2) / mask.sum(dim=1).clamp(min=1)[None]
    return image_to_text, text_to_image.t()


def official_global_scores(image_embeds: torch.Tensor, text_embeds: torch.Tensor):
    """Normalised global features -> (image_to_text, text_to_image)."""
    scores = image_embeds @ text_embeds.t()
    return scores, scores.t()


def official_zero_shot_probabilities(image_tokens, prompt_tokens, prompt_ids, num_classes: int) -> torch.Tensor:
    """(N, C): mean over the P prompts of softmax over classes of the unscaled token-wise similarity.
    Prompts are class-major: prompt c * P + p is template p of class c."""
    image_to_text, _ = official_token_wise_scores(image_tokens, prompt_tokens, prompt_ids)
    per_class = image_to_text.shape[1] // num_classes
    scores = image_to_text.reshape(-1, num_classes, per_class)  # (N, C, P)
    return torch.stack([scores[:, :, p].softmax(dim=1) for p in range(per_class)]).mean(dim=0)
