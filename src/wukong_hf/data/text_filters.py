"""The paper's caption filters (section 3.2), each switchable and counted.

Chain, in order (a caption is dropped by the first filter that rejects it):
meaningless (file names, bare URLs, digits/punctuation only) -> sensitive words (Aho-Corasick over a
user-supplied list) -> frequent captions (> max_occurrences in the whole corpus; counts from
`caption_counts`) -> word count (jieba, 1..31 words) -> person names replaced with "<人名>".
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .caption_counts import caption_hash

__all__ = [
    "NAME_TOKEN",
    "FilterReport",
    "TextFilterConfig",
    "CaptionFilter",
    "filter_captions",
    "filter_table",
    "is_meaningless",
    "load_sensitive_words",
    "mask_names_posseg",
]

NAME_TOKEN = "<人名>"
DROP_REASONS = ("meaningless", "sensitive_word", "frequent_caption", "too_few_words", "too_many_words")

_FILE_NAME = re.compile(r"^[\w\-. ()\[\]]*\.(jpe?g|png|gif|webp|bmp|tiff?|heic|svg)$", re.IGNORECASE)
_BARE_URL = re.compile(r"^(https?://|ftp://|www\.)\S*$", re.IGNORECASE)
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# The 100 most common Chinese surnames plus the common compound ones: a name found by jieba's HMM
# (out of its dictionary) nearly always starts with one of these.
_SURNAMES_SINGLE = set(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
_SURNAMES_COMPOUND = {"欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "公孙", "慕容", "长孙", "宇文", "司徒", "夏侯", "令狐"}


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


def _is_word(token: str) -> bool:
    return any(unicodedata.category(ch)[0] in "LN" for ch in token)


def _jieba():
    import jieba
    import jieba.posseg

    jieba.setLogLevel(60)
    jieba.initialize()
    return jieba, jieba.posseg


def mask_names_posseg(caption: str) -> str:
    """Reference name masking: every jieba.posseg token tagged nr* becomes "<人名>" (about 670 captions/s)."""
    _, posseg = _jieba()
    return "".join(NAME_TOKEN if pair.flag.startswith("nr") else pair.word for pair in posseg.cut(caption))


@dataclass
class TextFilterConfig:
    """Switches of the caption filter chain. A switch set to False (or None) turns its filter off."""

    drop_meaningless: bool = True
    check_word_count: bool = True
    min_words: int = 1
    max_words: int = 31
    max_occurrences: int | None = 10
    mask_names: bool = True
    name_masker: str = "fast"  # "fast" (lcut + dictionary tags + surname rule) or "posseg" (reference, slow)
    sensitive_words: list[str] | None = None

    def __post_init__(self):
        if self.name_masker not in ("fast", "posseg"):
            raise ValueError(f"name_masker must be 'fast' or 'posseg', got {self.name_masker!r}")
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
    """Applies a `TextFilterConfig` to one caption at a time.

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
        self.jieba, self.posseg = _jieba()
        self.word_tags = self.posseg.dt.word_tag_tab
        self.automaton = None
        if self.config.sensitive_words:
            import ahocorasick

            self.automaton = ahocorasick.Automaton()
            for word in self.config.sensitive_words:
                self.automaton.add_word(word, word)
            self.automaton.make_automaton()

    def _is_name(self, token: str) -> bool:
        tag = self.word_tags.get(token)
        if tag is not None:
            return tag.startswith("nr")
        # Out-of-dictionary token from jieba's HMM: a 2-4 character CJK token led by a surname.
        if not 2 <= len(token) <= 4 or not all(_CJK.match(ch) for ch in token):
            return False
        return token[:2] in _SURNAMES_COMPOUND or (token[0] in _SURNAMES_SINGLE and len(token) <= 3)

    def __call__(self, caption: str) -> tuple[str | None, str | None]:
        """caption -> (filtered caption, None) when kept, or (None, drop reason) when dropped."""
        cfg = self.config
        caption = caption.strip()
        if cfg.drop_meaningless and is_meaningless(caption):
            return None, "meaningless"
        if self.automaton is not None and next(self.automaton.iter(caption), None) is not None:
            return None, "sensitive_word"
        if cfg.max_occurrences is not None and caption_hash(caption) in self.frequent_hashes:
            return None, "frequent_caption"
        if not (cfg.check_word_count or cfg.mask_names):
            return caption, None
        if cfg.mask_names and cfg.name_masker == "posseg":
            pairs = [(p.word, p.flag.startswith("nr")) for p in self.posseg.cut(caption)]
        else:
            tokens = self.jieba.lcut(caption)
            pairs = [(t, cfg.mask_names and self._is_name(t)) for t in tokens]
        if cfg.check_word_count:
            n_words = sum(1 for token, _ in pairs if _is_word(token))
            if n_words < cfg.min_words or not _CJK.search(caption):
                return None, "too_few_words"
            if n_words > cfg.max_words:
                return None, "too_many_words"
        if cfg.mask_names:
            caption = "".join(NAME_TOKEN if is_name else token for token, is_name in pairs)
        return caption, None


def filter_captions(
    rows: Iterable[dict],
    config: TextFilterConfig | None = None,
    frequent_hashes: set[int] | None = None,
    report: FilterReport | None = None,
) -> Iterator[dict]:
    """Rows {caption, ...} -> kept rows with the filtered caption (other fields untouched).

    Counts go into `report` (pass one in to read them afterwards).
    """
    caption_filter = CaptionFilter(config, frequent_hashes)
    report = report if report is not None else FilterReport()
    for row in rows:
        report.total += 1
        caption, reason = caption_filter(row["caption"])
        if reason is not None:
            report.dropped[reason] += 1
            continue
        report.kept += 1
        if NAME_TOKEN in caption and NAME_TOKEN not in row["caption"]:
            report.names_masked += 1
        yield {**row, "caption": caption}


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
