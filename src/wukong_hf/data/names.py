"""What every person-name masker shares: tables of surnames, titles and name-like characters, jieba, span helpers,
and the scoring of a masker against labelled captions (text_filters' fast masker, name_classifier's tagger)."""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata

CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
CJK_WORD = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
# The ~130 most common Chinese surnames (by population) and the compound ones: jieba's HMM finds names
# outside its dictionary as 2-3 character words, and they nearly always start with one of these.
SURNAMES_SINGLE = set(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林高罗郑梁谢宋唐许韩邓冯曹彭曾肖田董潘袁蔡蒋余于杜叶程魏苏吕丁任卢"
    "姚沈钟姜崔谭陆范汪廖石金韦贾夏付方邹熊白孟秦邱侯江尹薛闫段雷龙黎史陶贺毛郝顾龚邵万覃武钱戴严欧莫孔向"
    "常汤康易乔赖文施洪辛柯庞樊兰殷詹聂章倪耿关岳霍齐颜葛牛温季左梅俞"
)
SURNAMES_COMPOUND = {"欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "公孙", "慕容", "长孙", "宇文", "司徒", "夏侯",
                     "令狐", "端木", "西门", "南宫", "独孤", "轩辕", "呼延", "申屠", "澹台", "太史", "赫连"}
# Words that follow a surname to address a person (王老师, 李女士): the surname alone is the name.
TITLES = frozenset(
    "先生 女士 老师 医生 教授 同学 阿姨 师傅 经理 校长 大爷 奶奶 叔叔 老板 小姐 太太 夫人 主任 局长 律师 院长 警官 "
    "大夫 老先生 爷爷 大妈 大姐 大哥 阿婆 老太 总 姐 哥 董 老 工 博士 导演 主编 同志 书记 队长 师父 掌柜 教练 护士".split()
)
# Characters used to transliterate foreign names (贝克汉姆, 乔布斯): a 3+ character name-tagged word made of
# them alone is a foreign name even without a Chinese surname.
TRANSLITERATION_CHARS = set(
    "阿埃艾爱安奥巴拜班邦鲍贝本比彼毕宾波伯博布查达戴丹道德迪蒂丁杜多厄恩尔法菲费芬弗福盖甘戈格古哈海汉豪赫亨霍"
    "基吉加贾杰金卡凯坎康考柯科克肯库拉莱兰朗劳勒雷里利莉丽连林琳卢鲁路伦罗洛马玛迈麦曼梅蒙米密莫姆穆纳娜奈内"
    "尼涅纽诺欧帕潘佩皮普奇齐乔琼丘萨塞赛桑森沙莎尚舍什史斯松苏索塔泰坦汤唐特提托瓦万威韦维温沃乌武西希谢辛休"
    "雅亚延扬伊因英尤约泽扎詹朱兹佐夫芙奎瑞乐赞琪黛露妮丝蕾芭汀伍珀"
)
# Characters (almost) never in a Chinese given name: food, cooking, objects, buildings, media. A word
# found by the HMM that holds one after its surname (黄焖, 杨枝, 石锅) is an everyday word.
NOT_IN_GIVEN_NAMES = set(
    "焖炒煮炖烤炸蒸煎卤腌锅碗盘饭面肉汤糕饼酱醋糖盐粥奶蛋虾蟹鸡鸭鹅猪菜瓜豆枝根茎藤卡欧"
    "网件型号款版图片像视频屏纸墙砖柜架床桌椅窗灯箱袋鞋袜裤裙衫帽店厂市区县镇村街楼房室厅站岛桥塔寺庙殿"
    "在了是的被把给从对着过吗呢吧啊都就才又还也腰腿脚臂肩胸背腹颈脖耳鼻嘴唇牙舌"
)
# Last characters of places, plants, animals, objects and positions, not of given names: jieba tags
# 金字塔, 胡萝卜, 石英表, 黄鹤楼 nr, and they start with a surname.
NOT_NAME_FINALS = NOT_IN_GIVEN_NAMES | set(
    "市县区镇村乡省州岛港湾湖河溪桥塔楼阁亭寺庙殿宫街巷路洞站场厂店馆院城墙门角口庄坊花草树藤叶果卜菜瓜豆"
    "犬猫狗鸭鸡鹅鱼虾蟹熊虎牛羊猪兔鼠蛇龟鸟雀鹰鹤马鹿驴骡狼豹象猴狮蝶蛙鸽鸥雁蜂蚁蚕"
    "柜架表杯壶瓶灯椅床桌锅碗盘鞋靴包裙衫裤帽伞车机器笔纸窗板砖"
    "箱盒袋镜钟锁扣链肉饭面糕饼汤粥酒奶茶糖粉酱序赋图画词诗帖经记上下里中外内旁边前后们的"
)
# One-character words that make an HMM-found 2-character word before them a dish, an animal or a place
# (白切 鸡, 周黑 鸭, 雷峰 塔), not a name.
DISH_OR_PLACE_ENDINGS = frozenset("鸡鸭鹅鱼虾蟹猪牛羊兔饭面糕饼汤粥酒茶糖粉酱肉菜瓜豆花草树果塔楼桥寺庙殿宫街路店馆")
# Last characters of product nouns (剪刀, 药膏, 吹风机, 运动服; common nouns, not events like 世界杯/nz): a
# "name" right before one is a brand (张小泉 剪刀, 马应龙 药膏), unless a photo word follows (肖战 手机 壁纸).
PRODUCT_ENDINGS = frozenset("机器仪包鞋靴服裤裙衫帽镜膏霜液油粉茶酒面刀剪锅杯壶瓶链镯戒环钻笔灯柜架床桌椅箱盒袋表车")
PHOTO_WORDS = frozenset("壁纸 图片 照片 写真 剧照 海报 头像 表情包 截图 视频 高清 签名 同款 照 图 美图 大片 街拍 素材".split())
NAME_JOINERS = ("·", "•", "・")  # 泰勒·斯威夫特: both sides of the dot are one name
JOINER_SET = frozenset(NAME_JOINERS)


@functools.cache  # read once: the tagger masker asks for every candidate span
def load_two_character_names() -> frozenset[str]:
    from importlib import resources

    text = (resources.files("wukong_hf") / "resources" / "two_character_names.txt").read_text(encoding="utf-8")
    return frozenset(word for line in text.splitlines() if not line.startswith("#") for word in line.split())


def is_word(token: str) -> bool:
    return any(unicodedata.category(ch)[0] in "LN" for ch in token)


def load_jieba():
    import jieba
    import jieba.posseg

    jieba.setLogLevel(60)
    jieba.initialize()
    return jieba, jieba.posseg


def posseg_spans(pairs) -> list[tuple[int, int]]:
    pairs = list(pairs)  # (word, flag) pairs, possibly a generator
    offsets = token_offsets([word for word, _ in pairs])
    return [(start, start + len(word)) for start, (word, flag) in zip(offsets, pairs) if flag.startswith("nr")]


def token_offsets(tokens: list[str]) -> list[int]:
    """Start character of each token in "".join(tokens)."""
    return [0, *itertools.accumulate(map(len, tokens))][: len(tokens)]


def merge_joined(spans, caption: str) -> list[tuple[int, int]]:
    """Sorted name spans with two names joined by one "·" merged: 泰勒·斯威夫特 is one name, one "<人名>"."""
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start == merged[-1][1] + 1 and caption[start - 1] in NAME_JOINERS:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def labelled_name_spans(caption: str, names: list[str]) -> list[tuple[int, int]]:
    """The (start, end) spans of names, found in caption in the given order; ValueError if one is missing."""
    spans, position = [], 0
    for name in names:
        start = caption.find(name, position)
        if start < 0:
            raise ValueError(f"labelled name {name!r} is not in caption {caption!r} (after position {position})")
        spans.append((start, start + len(name)))
        position = start + len(name)
    return spans


def name_masking_scores(examples, find_spans) -> dict:
    """Span precision and recall of a name finder on labelled captions.

    examples: dicts {"caption", "names": [names in caption order]}; find_spans: caption -> [(start, end)].
    A found span is correct when it lies inside one labelled name (masking 王 of 王老师 is right, masking
    王老师 whole is not); a labelled name is found when its letters are all inside found spans (a "·"
    between its parts may stay). Returns {"precision", "recall", "spans_found", "spans_correct",
    "names", "names_found", "false_positives": [[text, caption]], "missed": [[name, caption]]}.
    """
    found = correct = names = names_found = 0
    false_positives, missed = [], []
    for example in examples:
        caption = example["caption"]
        gold = labelled_name_spans(caption, example["names"])
        predicted = find_spans(caption)
        covered = {position for start, end in predicted for position in range(start, end)}
        for start, end in predicted:
            found += 1
            if any(g_start <= start and end <= g_end for g_start, g_end in gold):
                correct += 1
            else:
                false_positives.append([caption[start:end], caption])
        for start, end in gold:
            names += 1
            if all(i in covered for i in range(start, end) if is_word(caption[i])):
                names_found += 1
            else:
                missed.append([caption[start:end], caption])
    return {
        "precision": round(correct / found, 4) if found else 1.0,
        "recall": round(names_found / names, 4) if names else 1.0,
        "spans_found": found,
        "spans_correct": correct,
        "names": names,
        "names_found": names_found,
        "false_positives": false_positives,
        "missed": missed,
    }
