"""Labelled images for zero-shot classification: ImageFolder trees, ImageNet validation folders,
and `datasets` datasets (local folder or Hub id) with image and label columns.

Images load lazily (one batch in memory at a time).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .encoding import ImageLoader, open_rgb

__all__ = ["LabelledImages", "image_files", "image_folder_images", "imagenet_val_images", "dataset_images", "hf_dataset_images"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


@dataclass
class LabelledImages:
    """loaders[i]() -> PIL image; labels[i]: class index; ids[i]: a name for reports.

    folder_classes: class names the source itself defines (folder names, ClassLabel names), or None.
    """

    loaders: list[ImageLoader]
    labels: list[int]
    ids: list[str]
    folder_classes: list[str] | None = None


def image_files(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """(image files by extension, other files) under folder, both sorted; hidden files and folders left out."""
    folder = Path(folder)
    images, others = [], []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        (images if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(path)
    return images, others


def image_folder_images(root: str | Path) -> LabelledImages:
    """An ImageFolder tree root/<class>/<image>; classes in sorted folder order (torchvision's rule)."""
    from torchvision.datasets.folder import make_dataset

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist; give a folder with one subfolder per class.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class subfolders; expected root/<class>/<image files>.")
    samples = make_dataset(
        str(root), {c: i for i, c in enumerate(classes)}, extensions=IMAGE_EXTENSIONS, allow_empty=True
    )
    if not samples:
        raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}.")
    return LabelledImages(
        [partial(open_rgb, path) for path, _ in samples],
        [label for _, label in samples],
        [str(Path(path).relative_to(root)) for path, _ in samples],
        classes,
    )


def imagenet_val_images(folder: str | Path, labels_file: str | Path) -> LabelledImages:
    """A flat ImageNet validation folder plus a label file.

    labels_file: one line per image, "FILENAME LABEL" (whitespace or comma separated) with LABEL
    the 0-based class index in the standard (sorted WordNet id) order that the Chinese
    ImageNet names follow. Lines naming a missing file raise an error that names the line.
    """
    folder, labels_file = Path(folder), Path(labels_file)
    if not folder.is_dir():
        raise FileNotFoundError(f"ImageNet validation folder {folder} does not exist.")
    if not labels_file.is_file():
        raise FileNotFoundError(f"Label file {labels_file} does not exist; give lines 'FILENAME LABEL_INDEX'.")
    loaders, labels, ids = [], [], []
    for number, line in enumerate(labels_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise ValueError(f"{labels_file} line {number}: {line!r} is not 'FILENAME LABEL_INDEX' (0-based integer).")
        path = folder / parts[0]
        if not path.is_file():
            raise FileNotFoundError(f"{labels_file} line {number}: image {path} does not exist.")
        loaders.append(partial(open_rgb, str(path)))
        labels.append(int(parts[1]))
        ids.append(parts[0])
    if not loaders:
        raise ValueError(f"Label file {labels_file} lists no images.")
    return LabelledImages(loaders, labels, ids)


def _decode_dataset_image(dataset, row: int, column: str):
    value = dataset[row][column]
    if isinstance(value, dict):  # Image(decode=False): {"bytes", "path"}
        return open_rgb(value.get("bytes") or value.get("path"))
    return value.convert("RGB")


def dataset_images(
    dataset, image_column: str = "image", label_column: str = "label", split: str = "test", source: str = "Dataset"
) -> LabelledImages:
    """A loaded `datasets.Dataset` with an image column and an integer label column.

    Class names come from the label column's ClassLabel names when it has them. source: how
    error messages name the dataset.
    """
    import datasets

    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(
                f"{source} split {split} has no column {column!r} (columns: {dataset.column_names}); "
                "pass --image-column / --label-column."
            )
    feature = dataset.features[label_column]
    classes = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    # Decode lazily per row: the loader reads the column raw and opens it itself.
    if isinstance(dataset.features[image_column], datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    labels = [int(v) for v in dataset[label_column]]
    return LabelledImages(
        [partial(_decode_dataset_image, dataset, i, image_column) for i in range(len(dataset))],
        labels,
        [f"{split}[{i}]" for i in range(len(dataset))],
        classes,
    )


def hf_dataset_images(
    path: str, split: str = "test", image_column: str = "image", label_column: str = "label", name: str | None = None
) -> LabelledImages:
    """A `datasets` dataset (local folder or Hub id) with an image column and an integer label column."""
    from ..data.dataset_source import open_dataset

    dataset = open_dataset(path, name=name, split=split)  # save_to_disk folder, dataset repository or Hub id
    return dataset_images(dataset, image_column, label_column, split, source=f"Dataset {path}")
