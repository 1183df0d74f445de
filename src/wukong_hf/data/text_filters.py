"""The paper's caption filters (section 3.2), each switchable and counted.

Chain, in order (a caption is dropped by the first filter that rejects it):
meaningless (file names, bare URLs, digits/punctuation only) -> sensitive words (Aho-Corasick over a
user-supplied list) -> frequent captions (> max_occurrences in the whole corpus; counts from
`caption_counts`) -> word count (jieba, 1..31 words) -> person names replaced with "<人名>".
Person names are found by one of NAME_MASKERS: "tagger" (LAC, the BiGRU-CRF tagger bundled with jieba; the
default), "fast" (jieba's dictionary + surname tables + rules) or "posseg" (every jieba.posseg nr token).
"""

from __future__ import annotations

import itertools
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .caption_counts import caption_hash
from .names import (
    CJK, CJK_WORD, DISH_OR_PLACE_ENDINGS, JOINER_SET, NAME_JOINERS, NOT_IN_GIVEN_NAMES, NOT_NAME_FINALS, PHOTO_WORDS,
    PRODUCT_ENDINGS, SURNAMES_COMPOUND, SURNAMES_SINGLE, TITLES, TRANSLITERATION_CHARS, is_word, labelled_name_spans,
    load_jieba, load_two_character_names, merge_joined, name_masking_scores, posseg_spans, token_offsets,
)

__all__ = [
    "NAME_TOKEN",
    "NAME_MASKERS",
    "TaggerNameMasker",
    "find_name_spans",
    "FilterReport",
    "TextFilterConfig",
    "CaptionFilter",
    "filter_captions",
    "filter_table",
    "is_meaningless",
    "load_sensitive_words",
    "mask_names_posseg",
    "NameMasker",
    "name_spans",
    "apply_name_spans",
    "name_masking_scores",
    "labelled_name_spans",
]

NAME_TOKEN = "<人名>"
NAME_MASKERS = ("tagger", "fast", "posseg")  # the first is the default
DROP_REASONS = ("meaningless", "sensitive_word", "frequent_caption", "too_few_words", "too_many_words")

_FILE_NAME = re.compile(r"^[\w\-. ()\[\]]*\.(jpe?g|png|gif|webp|bmp|tiff?|heic|svg)$", re.IGNORECASE)
_BARE_URL = re.compile(r"^(https?://|ftp://|www\.)\S*$", re.IGNORECASE)
_JOINERS_AND_TITLES = JOINER_SET | TITLES


# Common last characters of given names that jieba's dictionary also ends many everyday words with.
_GIVEN_NAME_FINALS = set("力歌音来日华明英杰军伟强平文")


def _everyday_finals(word_tags: dict) -> frozenset[str]:
    """Characters that end >= 30 three-character dictionary words not tagged nr and at least 8 times as
    many of them as surname-led nr words (县, 证, 界, 井): a 3-character "name" ending with one is a word."""
    words, names = Counter(), Counter()
    for word, tag in word_tags.items():
        if len(word) == 3:
            if not tag.startswith("nr"):
                words[word[2]] += 1
            elif word[0] in SURNAMES_SINGLE:
                names[word[2]] += 1
    return frozenset(ch for ch, n in words.items() if n >= 30 and n >= 8 * (names[ch] + 1) and ch not in _GIVEN_NAME_FINALS)


def is_meaningless(caption: str) -> bool:
    """True for captions that say nothing about the image: file names ("000.jpg"), bare URLs,
    and captions without a single letter or CJK character (digits/punctuation only)."""
    text = caption.strip()
    if not text or _FILE_NAME.match(text) or _BARE_URL.match(text):
        return True
    return not any(unicodedata.category(ch)[0] == "L" for ch in text)


def load_sensitive_words(path: str | os.PathLike) -> list[str]:
    """One word per line (UTF-8, '#' comments allowed) -> list of words; errors say what is wrong with the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sensitive-word list {os.fspath(path)!r} does not exist; pass a UTF-8 text file with one word per line")
    try:
        with open(path, encoding="utf-8") as fh:
            words = [w.strip() for w in fh if w.strip() and not w.lstrip().startswith("#")]
    except UnicodeDecodeError as err:
        raise ValueError(f"sensitive-word list {os.fspath(path)!r} is not UTF-8 ({err}); re-save it as UTF-8") from err
    if not words:
        raise ValueError(f"sensitive-word list {os.fspath(path)!r} holds no words; put one word per line")
    return words


def mask_names_posseg(caption: str) -> str:
    """Reference name masking: every jieba.posseg token tagged nr* becomes "<人名>" (about 670 captions/s)."""
    _, posseg = load_jieba()
    return "".join(NAME_TOKEN if pair.flag.startswith("nr") else pair.word for pair in posseg.cut(caption))


def apply_name_spans(caption: str, spans: list[tuple[int, int]]) -> str:
    """caption with each (start, end) character span (sorted, not overlapping) replaced by "<人名>"."""
    parts, last = [], 0
    for start, end in spans:
        parts += [caption[last:start], NAME_TOKEN]
        last = end
    return "".join(parts) + caption[last:]


class NameMasker:
    """Finds person names in jieba tokens: dictionary tags, surname tables and context rules.

    jieba's dictionary tags some 79,000 words nr (person name), most of them everyday words (小狗, 高清,
    三居室, 银杏树, 王朝), and jieba.posseg masks all of them. This masker keeps jieba's segmentation
    (one `jieba.lcut`, HMM on, shared with the word count) and decides per token:
    - a dictionary word tagged nr* is a name when it is a listed two-character name (resources/
      two_character_names.txt), a surname + 1-2 characters not ending like a place or object (金字塔,
      胡萝卜 are not), a compound surname + 1-2 characters, or 3+ transliteration characters (乔布斯);
    - a word found by jieba's HMM (outside the dictionary) is a name when it is a common surname + 1-2
      characters that occur in given names (王芳, 杨幂; not 黄焖, 杨枝), or a compound-surname name;
    - context: a surname before a title (王 老师, 李女士) is masked without the title; a surname token
      followed by a short name-tagged or unknown token is one name (蔡 徐坤); names joined by "·" are one.
    Measured against a labelled caption set in benchmarks/data_name_masking.py.
    """

    def __init__(self):
        jieba, posseg = load_jieba()
        self.jieba = jieba
        self.word_tags = posseg.dt.word_tag_tab
        self.two_character_names = load_two_character_names()
        self.three_character_finals = NOT_NAME_FINALS | _everyday_finals(self.word_tags)

    @staticmethod
    def _surname_length(token: str) -> int:
        if token[:2] in SURNAMES_COMPOUND:
            return 2
        return 1 if token[:1] in SURNAMES_SINGLE else 0

    @staticmethod
    def _title_suffix(token: str) -> int:
        """Length of a title ending token after at least two other characters (居里夫人 -> 2), else 0."""
        return next((k for k in (1, 2) if len(token) - k >= 2 and token[-k:] in TITLES), 0)

    def _starts_with_word(self, token: str) -> bool:
        """A 3-character word whose first two characters are a common dictionary word (frequency >= 50) other
        than a listed name is a compound of that word (孔雀舞, 白桦林, 石狮子, 王家沙), not surname + given name;
        rare dictionary entries (韩美, 乔布) are segmentation noise."""
        return self.jieba.dt.FREQ.get(token[:2], 0) >= 50 and token[:2] not in self.two_character_names

    def is_name(self, token: str) -> bool:
        """Whether one jieba token, taken alone, is a person name (the context rules are in `spans`)."""
        if not CJK_WORD.fullmatch(token):
            return False
        surname = self._surname_length(token)
        tag = self.word_tags.get(token)
        if tag is not None:  # a dictionary word
            if not tag.startswith("nr"):
                return False
            if len(token) == 2 and token in self.two_character_names:
                return True
            if surname == 2:
                return 3 <= len(token) <= 4
            if surname == 1:
                return len(token) == 3 and token[-1] not in self.three_character_finals and not self._starts_with_word(token)
            return len(token) >= 3 and all(ch in TRANSLITERATION_CHARS for ch in token)
        if surname == 2:  # found by the HMM
            return 3 <= len(token) <= 4 and not any(ch in NOT_IN_GIVEN_NAMES for ch in token[2:])
        if surname == 1:
            finals = NOT_NAME_FINALS if len(token) == 2 else self.three_character_finals
            return 2 <= len(token) <= 3 and token[-1] not in finals and not any(ch in NOT_IN_GIVEN_NAMES for ch in token[1:])
        return len(token) >= 3 and all(ch in TRANSLITERATION_CHARS for ch in token)

    def spans(self, tokens: list[str]) -> list[tuple[int, int]]:
        """jieba tokens of one caption -> sorted (start, end) character spans of names in "".join(tokens)."""
        n = len(tokens)
        offsets = token_offsets(tokens)
        cjk = [CJK_WORD.fullmatch(token) is not None for token in tokens]
        tags = [self.word_tags.get(token) for token in tokens]
        marks: list[tuple[int, int] | None] = [None] * n
        for i, token in enumerate(tokens):
            if not cjk[i]:
                continue
            surname = self._surname_length(token)
            tag = tags[i]
            if not surname and tag is not None and not tag.startswith("nr") and not token.endswith("家"):
                continue  # most tokens: an everyday dictionary word (fast path, no rule below can apply)
            start = offsets[i]
            following = tokens[i + 1] if i + 1 < n else ""
            if surname and len(token) > surname and token[surname:] in TITLES:  # 李女士 -> 李
                marks[i] = (start, start + surname)
            elif surname and len(token) == surname and following in TITLES:  # 王 老师 -> 王
                marks[i] = (start, start + surname)
            elif cjk[i] and len(token) >= 3 and (tags[i] or "").startswith("nr") and self._title_suffix(token):
                marks[i] = (start, start + len(token) - self._title_suffix(token))  # 居里夫人 -> 居里
            elif surname and tags[i] is None and len(token) > surname + 1 and self._title_suffix(token[: surname + 2]) == 0 \
                    and any(token[surname:surname + k] in TITLES for k in (1, 2)):
                marks[i] = (start, start + surname)  # found by the HMM with the title glued on: 吴总在 -> 吴
            elif len(token) >= 3 and token.endswith("家") and self.is_name(token[:-1]):
                marks[i] = (start, start + len(token) - 1)  # 张伟家 -> 张伟
            elif self.is_name(token) and not (tags[i] is None and len(token) == 2 and following in DISH_OR_PLACE_ENDINGS):
                marks[i] = (start, start + len(token))  # (白切 鸡, 周黑 鸭: a dish or an animal, not a name)
            elif cjk[i] and len(token) >= 4 and (tags[i] or "").startswith("nr") and token[:2] in self.two_character_names:
                marks[i] = (start, start + 2)  # 鲁迅故居, 武松打虎 -> the name only
            elif 2 <= len(token) <= 3 and surname and following in TITLES:
                marks[i] = (start, start + len(token))  # any surname-led word before a title: 高峰 老师
        if not any(marks) and not any(token[:1] in SURNAMES_SINGLE or token in SURNAMES_COMPOUND for token in tokens) \
                and not _JOINERS_AND_TITLES.intersection(tokens):
            return []  # no name, surname, title or joiner: nothing below can apply (fast path)
        for i in range(n - 1):  # a brand before its product: 马应龙 药膏, 戴森 吹风机
            if (marks[i] and marks[i] == (offsets[i], offsets[i] + len(tokens[i])) and cjk[i + 1] and len(tokens[i + 1]) >= 2
                    and tokens[i + 1][-1] in PRODUCT_ENDINGS and tags[i + 1] in (None, "n") and not PHOTO_WORDS & set(tokens[i + 1:i + 4])):
                marks[i] = None
        i = 0
        while i < n - 1:  # names jieba cut in two
            token, nxt = tokens[i], tokens[i + 1]
            if cjk[i] and cjk[i + 1] and nxt not in TITLES:
                nxt_tag = tags[i + 1]
                if (len(token) == 1 and token in SURNAMES_SINGLE and marks[i] is None and len(nxt) <= 2
                        and (nxt_tag is None or nxt_tag.startswith("nr"))
                        and not (nxt_tag is None and nxt[-1] in NOT_NAME_FINALS)):
                    marks[i], marks[i + 1] = (offsets[i], offsets[i + 1] + len(nxt)), None  # 蔡 徐坤, 杜 海涛
                    i += 2
                    continue
                if len(token) == 2 and token in SURNAMES_COMPOUND and (len(nxt) == 1 or (len(nxt) == 2 and (nxt_tag is None or nxt_tag.startswith("nr")))):
                    marks[i], marks[i + 1] = (offsets[i], offsets[i + 1] + len(nxt)), None  # 皇甫 军, 欧阳 娜娜
                    i += 2
                    continue
                if (len(token) == 2 and token[0] in SURNAMES_SINGLE and len(nxt) == 1 and (nxt_tag or "").startswith("nr")
                        and (marks[i] is not None or tags[i] is None)):
                    marks[i], marks[i + 1] = (offsets[i], offsets[i + 1] + 1), None  # 彭于 晏
                    i += 2
                    continue
            i += 1
        for i, token in enumerate(tokens if JOINER_SET.intersection(tokens) else ()):
            if token in NAME_JOINERS and 0 < i < n - 1:  # 奥黛丽 · 赫本
                if marks[i - 1] and not marks[i + 1] and cjk[i + 1]:
                    after = tokens[i + 1]
                    length = len(after) if self.is_name(after) or len(after) <= 3 else next(
                        (k for k in range(len(after), 1, -1) if set(after[:k]) <= TRANSLITERATION_CHARS), len(after))
                    marks[i + 1] = (offsets[i + 1], offsets[i + 1] + length)  # 朱莉红毯 -> 朱莉
                if marks[i + 1] and not marks[i - 1] and cjk[i - 1]:
                    marks[i - 1] = (offsets[i - 1], offsets[i - 1] + len(tokens[i - 1]))
                if not marks[i - 1] and not marks[i + 1] and all(cjk[j] and set(tokens[j]) <= TRANSLITERATION_CHARS for j in (i - 1, i + 1)):
                    marks[i - 1] = (offsets[i - 1], offsets[i - 1] + len(tokens[i - 1]))  # 哈利 · 波特
                    marks[i + 1] = (offsets[i + 1], offsets[i + 1] + len(tokens[i + 1]))
        has_title = not TITLES.isdisjoint(tokens)
        covered = {position for mark in marks if mark for position in range(*mark)} if has_title else set()
        for i in range(n - 2 if has_title else 0):  # 孙 建华 先生: a surname, two characters, a title
            if (tokens[i + 2] in TITLES and tokens[i] in SURNAMES_SINGLE and len(tokens[i + 1]) == 2 and cjk[i + 1]
                    and offsets[i] not in covered and offsets[i + 1] not in covered):
                marks[i] = (offsets[i], offsets[i] + 3)
        return merge_joined(sorted(mark for mark in marks if mark), "".join(tokens))

    def __call__(self, caption: str) -> str:
        """caption -> caption with every person name replaced by "<人名>"."""
        return apply_name_spans(caption, self.spans(self.jieba.lcut(caption)))


class TaggerNameMasker:
    """Person names as LAC proposes them, kept or dropped by a classifier fitted on labelled captions.

    LAC is the character BiGRU-CRF lexical analyser whose small model ships inside jieba; `name_tagger.LacTagger`
    runs it in torch. Unlike jieba's dictionary it reads context, so 小狗, 高清 and 三居室 are not names while
    靳东, 豆豆 and 王鹤棣 are. LAC's PER words and jieba.posseg's nr words are candidates; `name_classifier`
    decides which are names from LAC's own confidence, its states around the span, jieba's dictionary and the
    words around (杨国福 in 杨国福麻辣烫 is a shop, 董洁 in 董洁街拍 a person); a title stays unmasked
    (王老师 -> 王), and names joined by "·" are one span. Measured in benchmarks/data_name_masking.py.
    """

    def __init__(self, batch_size: int = 256):
        from .name_classifier import NameSpanClassifier
        from .name_tagger import LacTagger

        self.tagger = LacTagger(batch_size=batch_size)
        self.classifier = NameSpanClassifier.from_file()

    def spans_batch(self, captions: list[str], tokens: list[list[str]] | None = None) -> list[list[tuple[int, int]]]:
        """captions (and their jieba tokens, computed when None) -> per caption, sorted (start, end) name spans."""
        from .name_classifier import analyse_captions, choose_spans

        described = analyse_captions(captions, self.tagger, tokens)
        flat = [candidate for candidates in described for candidate in candidates]
        inputs = self.classifier.inputs([features for _, features, _ in flat], [vector for _, _, vector in flat])
        return choose_spans(captions, described, self.classifier.probabilities(inputs).tolist(), self.classifier.threshold)

    def __call__(self, caption: str) -> str:
        """caption -> caption with every person name replaced by "<人名>"."""
        return apply_name_spans(caption, self.spans_batch([caption])[0])


_MASKERS: dict[str, object] = {}


def _masker(kind: str):
    if kind not in _MASKERS:
        _MASKERS[kind] = TaggerNameMasker() if kind == "tagger" else NameMasker()
    return _MASKERS[kind]


def find_name_spans(captions: list[str], masker: str = NAME_MASKERS[0]) -> list[list[tuple[int, int]]]:
    """captions -> per caption, the (start, end) character spans of person names as `masker` finds them
    ("tagger", "fast" or "posseg"; see NAME_MASKERS). The tagger runs in batches, so pass many captions at once."""
    if masker not in NAME_MASKERS:
        raise ValueError(f"masker must be one of {', '.join(map(repr, NAME_MASKERS))}, got {masker!r}")
    if masker == "posseg":
        _, posseg = load_jieba()
        return [posseg_spans((p.word, p.flag) for p in posseg.cut(caption)) for caption in captions]
    if masker == "tagger":
        return _masker("tagger").spans_batch(list(captions))
    fast = _masker("fast")
    return [fast.spans(fast.jieba.lcut(caption)) for caption in captions]


def name_spans(caption: str, masker: str = NAME_MASKERS[0]) -> list[tuple[int, int]]:
    """(start, end) character spans of the person names in one caption, as `masker` finds them."""
    return find_name_spans([caption], masker)[0]


@dataclass
class TextFilterConfig:
    """Switches of the caption filter chain. A switch set to False (or None) turns its filter off."""

    drop_meaningless: bool = True
    check_word_count: bool = True
    min_words: int = 1
    max_words: int = 31
    max_occurrences: int | None = 10
    mask_names: bool = True
    # "tagger" (LAC from jieba's wheel + rules; best precision and recall on unseen captions), "fast" (jieba's
    # dictionary + surname tables + rules; about 10x faster, misses names outside its tables) or "posseg" (the baseline)
    name_masker: str = NAME_MASKERS[0]
    sensitive_words: list[str] | None = None

    def __post_init__(self):
        if self.name_masker not in NAME_MASKERS:
            raise ValueError(f"name_masker must be one of {', '.join(map(repr, NAME_MASKERS))}, got {self.name_masker!r}")
        if not 0 <= self.min_words <= self.max_words:
            raise ValueError(f"need 0 <= min_words <= max_words, got {self.min_words} and {self.max_words}")


@dataclass
class FilterReport:
    """Counts of a filter run: total = kept + sum(dropped.values()); names_masked counts kept captions with a name."""

    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    names_masked: int = 0

    def merge(self, other: FilterReport) -> None:
        self.total += other.total
        self.kept += other.kept
        self.dropped.update(other.dropped)
        self.names_masked += other.names_masked

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "kept": self.kept,
            "dropped": {reason: self.dropped.get(reason, 0) for reason in DROP_REASONS},
            "names_masked": self.names_masked,
        }


class CaptionFilter:
    """Applies a `TextFilterConfig` to captions, one at a time (`__call__`) or in batches (`filter_batch`).

    `frequent_hashes`: set of `caption_hash` values of captions over the occurrence limit (from
    `caption_counts.frequent_caption_hashes`); required when `max_occurrences` is set.
    """

    def __init__(self, config: TextFilterConfig | None = None, frequent_hashes: set[int] | None = None):
        self.config = config or TextFilterConfig()
        if self.config.max_occurrences is not None and frequent_hashes is None:
            raise ValueError(
                "the frequent-caption filter needs the corpus-wide counts: run `wukong data count-captions` "
                "and pass its result, or set max_occurrences=None to switch the filter off"
            )
        self.frequent_hashes = frequent_hashes or set()
        self.jieba, self.posseg = load_jieba()
        masks = self.config.mask_names
        self.name_masker = NameMasker() if masks and self.config.name_masker == "fast" else None
        self.tagger = TaggerNameMasker() if masks and self.config.name_masker == "tagger" else None
        self.automaton = None
        if self.config.sensitive_words:
            import ahocorasick

            self.automaton = ahocorasick.Automaton()
            for word in self.config.sensitive_words:
                self.automaton.add_word(word, word)
            self.automaton.make_automaton()

    def __call__(self, caption: str) -> tuple[str | None, str | None]:
        """caption -> (filtered caption, None) when kept, or (None, drop reason) when dropped."""
        return self.filter_batch([caption])[0]

    def filter_batch(self, captions: list[str]) -> list[tuple[str | None, str | None]]:
        """captions -> per caption (filtered caption, None) when kept, or (None, drop reason) when dropped.
        The "tagger" name masker runs once over the batch's kept captions (it is much faster in batches)."""
        cfg = self.config
        results: list[tuple[str | None, str | None]] = []
        pending: list[tuple[int, str, list[str]]] = []  # kept captions that still need their names masked
        for caption in captions:
            caption = caption.strip()
            if cfg.drop_meaningless and is_meaningless(caption):
                results.append((None, "meaningless"))
                continue
            if self.automaton is not None and next(self.automaton.iter(caption), None) is not None:
                results.append((None, "sensitive_word"))
                continue
            if cfg.max_occurrences is not None and caption_hash(caption) in self.frequent_hashes:
                results.append((None, "frequent_caption"))
                continue
            if not (cfg.check_word_count or cfg.mask_names):
                results.append((caption, None))
                continue
            spans: list[tuple[int, int]] = []
            if cfg.mask_names and cfg.name_masker == "posseg":
                pairs = [(p.word, p.flag) for p in self.posseg.cut(caption)]
                tokens, spans = [word for word, _ in pairs], posseg_spans(pairs)
            else:
                tokens = self.jieba.lcut(caption)
            if cfg.check_word_count:
                n_words = sum(1 for token in tokens if is_word(token))
                if n_words < cfg.min_words or not CJK.search(caption):
                    results.append((None, "too_few_words"))
                    continue
                if n_words > cfg.max_words:
                    results.append((None, "too_many_words"))
                    continue
            if self.name_masker is not None:  # after the word count: a dropped caption needs no name spans
                spans = self.name_masker.spans(tokens)
            if self.tagger is not None:
                pending.append((len(results), caption, tokens))
            results.append((apply_name_spans(caption, spans) if spans else caption, None))
        if pending:
            found = self.tagger.spans_batch([caption for _, caption, _ in pending], [tokens for _, _, tokens in pending])
            for (index, caption, _), spans in zip(pending, found):
                results[index] = (apply_name_spans(caption, spans) if spans else caption, None)
        return results


def filter_captions(
    rows: Iterable[dict],
    config: TextFilterConfig | None = None,
    frequent_hashes: set[int] | None = None,
    report: FilterReport | None = None,
    batch_size: int = 256,
) -> Iterator[dict]:
    """Rows {caption, ...} -> kept rows with the filtered caption (other fields untouched), in input order.

    Counts go into `report` (pass one in to read them afterwards). Rows are filtered batch_size at a time.
    """
    caption_filter = CaptionFilter(config, frequent_hashes)
    report = report if report is not None else FilterReport()
    batch: list[dict] = []
    for row in itertools.chain(rows, [None]):  # None flushes the last batch
        if row is not None:
            batch.append(row)
            if len(batch) < batch_size:
                continue
        for row_in_batch, (caption, reason) in zip(batch, caption_filter.filter_batch([r["caption"] for r in batch])):
            report.total += 1
            if reason is not None:
                report.dropped[reason] += 1
                continue
            report.kept += 1
            if NAME_TOKEN in caption and NAME_TOKEN not in row_in_batch["caption"]:
                report.names_masked += 1
            yield {**row_in_batch, "caption": caption}
        batch = []


def filter_table(
    paths,
    out_dir: str | os.PathLike,
    config: TextFilterConfig | None = None,
    *,
    counts_dir: str | os.PathLike | None = None,
    rows_per_file: int = 1_000_000,
    progress: bool = True,
) -> FilterReport:
    """Release files or Parquet tables -> out_dir/pairs-NNNNN.parquet of kept, filtered rows + filter_report.json.

    counts_dir: output of `count_caption_hashes` + `merge_caption_counts` (needed unless max_occurrences is None).
    """
    import json

    from .caption_counts import load_frequent_hashes
    from .release import iter_release_rows, write_rows_parquet

    config = config or TextFilterConfig()
    frequent = load_frequent_hashes(counts_dir) if config.max_occurrences is not None and counts_dir else None
    report = FilterReport()
    rows = filter_captions(iter_release_rows(paths), config, frequent, report)
    write_rows_parquet(rows, out_dir, rows_per_file=rows_per_file, progress=progress, desc="filter")
    with open(os.path.join(out_dir, "filter_report.json"), "w") as fh:
        json.dump(report.as_dict(), fh, indent=2, ensure_ascii=False)
    return report
