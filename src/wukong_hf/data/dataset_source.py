"""Open a dataset given as a `save_to_disk` folder, a dataset repository folder or a Hub id: the one
function training (`data.dataset`, `eval.dataset`) and evaluation (`wukong eval ... --dataset`) use."""

from __future__ import annotations

from pathlib import Path

__all__ = ["open_dataset", "is_save_to_disk_folder"]


def is_save_to_disk_folder(path: str | Path) -> bool:
    """True for a folder written by `Dataset.save_to_disk` (state.json) or `DatasetDict.save_to_disk`
    (dataset_dict.json); a dataset repository (README/YAML configs over data files) is not one."""
    folder = Path(path).expanduser()
    return folder.is_dir() and ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file())


def open_dataset(source: str, *, name: str | None = None, split: str = "train", streaming: bool = False):
    """The `split` of a dataset: a save_to_disk folder, a dataset repository folder or a Hub id.

    Args:
        source: folder path or Hub id ("org/name").
        name: configuration of a dataset repository or Hub dataset (ignored for save_to_disk folders).
        split: split to return; a save_to_disk folder of a single Dataset is returned whatever the split.
        streaming: return a datasets.IterableDataset (a save_to_disk folder is streamed from its Arrow files).

    Returns:
        datasets.Dataset, or datasets.IterableDataset when streaming.

    Raises:
        FileNotFoundError: a path (starting with ".", "/" or "~") that does not exist, or an id that is neither
            a local folder nor loadable from the Hub (offline, no such dataset).
        ValueError: the split is not in a saved DatasetDict (the message lists the splits it has).
    """
    import datasets

    folder = Path(source).expanduser()
    if str(source).startswith((".", "/", "~")) and not folder.exists():
        raise FileNotFoundError(f"Dataset folder {source} does not exist; give a save_to_disk folder, a dataset "
                                "repository folder or a Hub id.")
    if is_save_to_disk_folder(folder):
        loaded = datasets.load_from_disk(str(folder))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"Dataset folder {source} has no split {split!r} (splits: {', '.join(loaded)}); "
                                 "choose one of them.")
            loaded = loaded[split]
        return loaded.to_iterable_dataset() if streaming else loaded
    if folder.is_dir():
        return datasets.load_dataset(str(folder), name=name, split=split, streaming=streaming)
    try:
        return datasets.load_dataset(source, name=name, split=split, streaming=streaming)
    except (ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:  # not a folder, and not on the Hub
        raise FileNotFoundError(f"Dataset {source} is not a local folder and could not be loaded from the Hub "
                                f"({err}); give a save_to_disk folder, a dataset repository folder or a reachable "
                                "Hub id.") from err
