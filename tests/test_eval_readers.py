"""Retrieval-set readers on generated files in every format, bad rows included, and the dataset-folder form."""

import base64
import io
import json

import pytest
from datasets import load_dataset
from PIL import Image

from wukong_hf.evaluation import image_folder_images, imagenet_val_images, load_classnames, load_templates
from wukong_hf.evaluation.retrieval_sets import read_aic_icc, read_chinese_clip, read_hash_captions
from wukong_hf.evaluation.retrieval_sets import read_retrieval_dataset, read_retrieval_set, write_retrieval_dataset

COLOURS = {"红": (255, 0, 0), "绿": (0, 255, 0), "蓝": (0, 0, 255)}


def jpeg_bytes(rgb, size=(20, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="JPEG")
    return buf.getvalue()


def write_chinese_clip(folder, split="valid", bad_rows=False):
    """Three colour images; MUGE-like texts (text 102 describes two images)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{i}\t{base64.b64encode(jpeg_bytes(rgb)).decode()}" for i, rgb in enumerate(COLOURS.values())]
    texts = [
        {"text_id": 100, "text": "一张红色的图片", "image_ids": [0]},
        {"text_id": 101, "text": "绿色的草地", "image_ids": [1]},
        {"text_id": 102, "text": "蓝色的天空", "image_ids": [2, 0]},
    ]
    jsonl = [json.dumps(t, ensure_ascii=False) for t in texts]
    if bad_rows:
        lines.append("7\tthis is not base64!!")
        jsonl += ['{"text_id": 103, "text": "缺图"}', '{"text_id": 104, "text": "找不到", "image_ids": [99]}', "{broken", '{"text_id": 105, "text": "  ", "image_ids": [0]}']
    (folder / f"{split}_imgs.tsv").write_text("\n".join(lines) + "\n")
    (folder / f"{split}_texts.jsonl").write_text("\n".join(jsonl) + "\n", encoding="utf-8")
    return folder


def test_chinese_clip_reader_reads_images_texts_and_several_images_per_text(tmp_path):
    rs = read_chinese_clip(write_chinese_clip(tmp_path / "muge"), "valid", name="muge")
    assert rs.image_ids == ["0", "1", "2"] and rs.text_ids == ["100", "101", "102"]
    assert rs.text_images == [[0], [1], [2, 0]] and rs.directions == ("t2i",) and rs.skipped == []
    assert Image.open(io.BytesIO(rs.image_bytes[1]())).convert("RGB").getpixel((3, 3))[1] > 200
    assert rs.image_texts() == [[0, 2], [1], [2]]


def test_chinese_clip_reader_counts_bad_rows_or_stops_in_strict_mode(tmp_path):
    folder = write_chinese_clip(tmp_path / "bad", bad_rows=True)
    rs = read_chinese_clip(folder, "valid")
    reasons = [s["reason"] for s in rs.skipped]
    assert len(rs.image_ids) == 3 and len(rs.texts) == 3 and len(reasons) == 5 and "empty text" in reasons
    assert "broken base64" in reasons[0]
    assert any("not a JSON object with text_id, text, image_ids" in r for r in reasons)
    assert any("image ids ['99'] are not in valid_imgs.tsv" in r for r in reasons)
    with pytest.raises(ValueError, match=r"valid_imgs.tsv line 4: broken base64 .*run without --strict"):
        read_chinese_clip(folder, "valid", strict=True)


def noise_jpeg(seed, size=(24, 24)) -> bytes:
    """A random-pixel JPEG: its base64 is long and varied enough to hold every alphabet character."""
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.parametrize("padding", [True, False])
def test_chinese_clip_reader_accepts_url_safe_base64(tmp_path, padding):
    """Regression (issue 15): Chinese-CLIP writes its TSVs with base64.urlsafe_b64encode (and its reader
    decodes with urlsafe_b64decode); those rows were all rejected as broken base64."""
    images = [noise_jpeg(seed) for seed in range(20)]
    encoded = [base64.urlsafe_b64encode(data).decode() for data in images]
    if not padding:
        encoded = [e.rstrip("=") for e in encoded]
        assert any(len(e) % 4 for e in encoded)
    assert any("-" in e for e in encoded) and any("_" in e for e in encoded)
    (tmp_path / "valid_imgs.tsv").write_text("".join(f"{i}\t{e}\n" for i, e in enumerate(encoded)))
    texts = [json.dumps({"text_id": 100 + i, "text": f"第{i}张", "image_ids": [i]}, ensure_ascii=False) for i in range(20)]
    (tmp_path / "valid_texts.jsonl").write_text("\n".join(texts) + "\n", encoding="utf-8")
    rs = read_chinese_clip(tmp_path, "valid", strict=True)
    assert rs.skipped == [] and len(rs.image_ids) == 20 and len(rs.texts) == 20
    assert [rs.image_bytes[i]() for i in range(20)] == images


def test_chinese_clip_reader_accepts_standard_base64_without_padding(tmp_path):
    images = [noise_jpeg(seed) for seed in range(8)]
    encoded = [base64.b64encode(data).decode().rstrip("=") for data in images]
    assert any("+" in e for e in encoded) and any("/" in e for e in encoded)
    (tmp_path / "valid_imgs.tsv").write_text("".join(f"{i}\t{e}\n" for i, e in enumerate(encoded)))
    (tmp_path / "valid_texts.jsonl").write_text(json.dumps({"text_id": 1, "text": "图", "image_ids": list(range(8))}) + "\n")
    rs = read_chinese_clip(tmp_path, "valid", strict=True)
    assert [rs.image_bytes[i]() for i in range(8)] == images


def test_chinese_clip_reader_says_why_rows_were_skipped_without_strict(tmp_path, caplog):
    """Regression (issue 15): 'no usable images or texts were read (40 rows skipped)' gave no reason."""
    lines = [f"{i}\tnot*base64*{i}" for i in range(20)]
    (tmp_path / "valid_imgs.tsv").write_text("\n".join(lines) + "\n")
    texts = [json.dumps({"text_id": 100 + i, "text": "图", "image_ids": [i]}) for i in range(20)]
    (tmp_path / "valid_texts.jsonl").write_text("\n".join(texts) + "\n")
    with pytest.raises(ValueError) as err:
        read_chinese_clip(tmp_path, "valid")
    message = str(err.value)
    assert "no usable images or texts were read (40 rows skipped: broken base64 20, images not in the image file 20; " in message
    assert "first: valid_imgs.tsv line 1 (id '0'): broken base64" in message and "\n" not in message
    # Some rows usable: the warning names every reason with its count and the first example.
    write_chinese_clip(tmp_path / "some", bad_rows=True)
    with caplog.at_level("WARNING", logger="wukong_hf.evaluation.retrieval_sets"):
        read_chinese_clip(tmp_path / "some", "valid")
    warning = caplog.records[-1].getMessage()
    assert warning.startswith("chinese-clip valid: skipped 5 row(s): ")
    for part in ("broken base64 1", "not a JSON text row 2", "images not in the image file 1", "empty text 1",
                 "first: valid_imgs.tsv line 4 (id '7'): broken base64"):
        assert part in warning


def test_chinese_clip_reader_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="test_imgs.tsv does not exist"):
        read_chinese_clip(tmp_path, "test")


def test_hash_captions_reader_with_split_list_and_missing_image(tmp_path):
    (tmp_path / "img").mkdir()
    for name, rgb in zip(("a", "b", "c"), COLOURS.values()):
        Image.new("RGB", (8, 8), rgb).save(tmp_path / "img" / f"{name}.jpg")
    captions = ["a.jpg#zhc#0 红色 图片", "a.jpg#zhc#1\t一片红", "b.jpg#zhc#0 绿色", "c.jpg#zhc#0 不在划分里",
                "gone.jpg#zhc#0 没有这张图", "no hash here"]
    (tmp_path / "caps.txt").write_text("\n".join(captions), encoding="utf-8")
    (tmp_path / "test.txt").write_text("a.jpg\nb\ngone.jpg\n")
    rs = read_hash_captions(tmp_path / "caps.txt", tmp_path / "img", tmp_path / "test.txt", name="flickr8k-cn")
    assert rs.image_ids == ["a.jpg", "b.jpg"] and rs.texts == ["红色 图片", "一片红", "绿色"]
    assert rs.text_images == [[0], [0], [1]]
    assert [s["reason"] for s in rs.skipped] == [f"image gone.jpg is not in {tmp_path / 'img'}", "expected 'IMAGE#K<TAB>caption'"]


def test_aic_icc_reader_keeps_first_images_wenlan_style(tmp_path):
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(tmp_path / "img" / f"{i}.jpg")
        rows.append({"url": "", "image_id": f"{i}.jpg", "caption": [f"第{i}张图的描述{k}" for k in range(5)]})
    (tmp_path / "ann.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    rs = read_aic_icc(tmp_path / "ann.json", tmp_path / "img", max_images=3)
    assert len(rs.image_ids) == 3 and len(rs.texts) == 15 and rs.text_images[14] == [2]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_aic_icc(tmp_path / "bad.json", tmp_path / "img")


def test_dataset_folder_round_trip_loads_with_load_dataset(tmp_path):
    rs = read_chinese_clip(write_chinese_clip(tmp_path / "src"), "valid", name="muge")
    folder = write_retrieval_dataset(rs, tmp_path / "muge-ds", rows_per_shard=2)
    ds = load_dataset(str(folder), split="valid", cache_dir=str(tmp_path / "cache"))
    assert ds.column_names == ["image_id", "image", "captions", "text_ids"] and len(ds) == 3
    assert ds[0]["captions"] == ["一张红色的图片", "蓝色的天空"] and ds[0]["image"].size == (20, 16)
    back = read_retrieval_dataset(str(folder), "valid")
    assert back.name == "muge" and back.directions == ("t2i",)
    assert back.text_ids == ["100", "102", "101"] and back.text_images == [[0], [0, 2], [1]]
    assert back.image_bytes[2]() == rs.image_bytes[2]()
    with pytest.raises(ValueError, match="already holds valid shards"):
        write_retrieval_dataset(rs, folder)


def test_read_retrieval_set_dispatch_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown retrieval-set format 'csv'"):
        read_retrieval_set("csv", str(tmp_path))
    with pytest.raises(ValueError, match="needs the image folder"):
        read_retrieval_set("aic-icc", str(tmp_path / "a.json"))


def test_image_sources_folder_and_imagenet_val(tmp_path):
    for cls, rgb in COLOURS.items():
        (tmp_path / "tree" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), rgb).save(tmp_path / "tree" / cls / "x.png")
    images = image_folder_images(tmp_path / "tree")
    assert images.folder_classes == sorted(COLOURS) and images.labels == [0, 1, 2]
    (tmp_path / "val").mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", format="JPEG")
    (tmp_path / "labels.txt").write_text("ILSVRC2012_val_00000001.JPEG 65\n")
    val = imagenet_val_images(tmp_path / "val", tmp_path / "labels.txt")
    assert val.labels == [65] and val.loaders[0]().size == (8, 8)
    (tmp_path / "bad.txt").write_text("ILSVRC2012_val_00000001.JPEG n01751748\n")
    with pytest.raises(ValueError, match=r"line 1: .* is not 'FILENAME LABEL_INDEX'"):
        imagenet_val_images(tmp_path / "val", tmp_path / "bad.txt")


def test_class_names_and_templates(tmp_path):
    names = load_classnames("imagenet1k")
    assert len(names) == 1000 and names[1] == "金鱼"
    templates = load_templates("imagenet1k")
    assert len(templates) == 80 and all("{c}" in t for t in templates)
    assert load_templates("none") == ["{c}"]
    (tmp_path / "t.txt").write_text("一张{}的照片\n{c}\n", encoding="utf-8")
    assert load_templates(tmp_path / "t.txt") == ["一张{c}的照片", "{c}"]
    (tmp_path / "bad.txt").write_text("没有槽位\n", encoding="utf-8")
    with pytest.raises(ValueError, match="have no class-name slot"):
        load_templates(tmp_path / "bad.txt")
    (tmp_path / "dup.txt").write_text("猫\n狗\n猫\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"repeats \['猫'\]"):
        load_classnames(tmp_path / "dup.txt")
