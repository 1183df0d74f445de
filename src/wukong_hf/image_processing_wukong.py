"""WukongImageProcessor: the released code's image preprocessing, bit for bit.

The official evaluation prepares each PIL image with torchvision:
Resize(224, bicubic) of the short side -> CenterCrop(224) -> ToTensor -> Normalize(CLIP mean, std).
transformers' CLIPImageProcessor resizes with its own code and differs by up to 2/256 on a few
pixel values of images that are not already 224 px, so this processor runs those four torchvision
transforms themselves on the PIL image (why it is not a CLIPImageProcessor).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as TF
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

__all__ = ["WukongImageProcessor", "CLIP_MEAN", "CLIP_STD"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _as_pil(image, index: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (np.ndarray, torch.Tensor)):
        array = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image))
        if array.ndim == 3 and array.shape[-1] in (1, 3, 4) and array.shape[0] not in (1, 3, 4):
            array = array.permute(2, 0, 1)  # HWC -> CHW
        if array.ndim != 3 or array.shape[0] not in (1, 3, 4):
            raise ValueError(
                f"images[{index}] is an array of shape {tuple(image.shape)}; expected (H, W, C) or (C, H, W) with 1, 3 "
                "or 4 channels. Pass PIL images for exact reproduction of the released preprocessing."
            )
        if array.is_floating_point() and (array.min() < 0 or array.max() > 1):
            raise ValueError(
                f"images[{index}] holds floats outside [0, 1] (min {float(array.min()):.3g}, max {float(array.max()):.3g}); "
                "pass uint8 pixels or floats in [0, 1], not already normalised pixel values."
            )
        return TF.to_pil_image(array)
    raise TypeError(
        f"images[{index}] is {type(image).__name__}; expected a PIL image, a numpy array or a torch tensor. "
        "Open files with PIL.Image.open (or pass the pipeline a path or URL)."
    )


class WukongImageProcessor(BaseImageProcessor):
    r"""
    Resize the short side to `size["shortest_edge"]` (bicubic), centre-crop to `crop_size`, scale to
    [0, 1] and normalise with CLIP's mean and std, exactly as torchvision does on a PIL image.

    Args:
        size (`dict`, defaults to `{"shortest_edge": 224}`): target of the short side.
        crop_size (`dict`, defaults to `{"height": 224, "width": 224}`): centre crop.
        image_mean, image_std (`list[float]`): CLIP's normalisation.
        do_convert_rgb (`bool`, defaults to True): convert grey, palette, RGBA and CMYK images to RGB
            (PIL's convert("RGB"), as the released code).
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        size: dict | int | None = None,
        crop_size: dict | int | None = None,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        do_convert_rgb: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(size, int):
            size = {"shortest_edge": size}
        if isinstance(crop_size, int):
            crop_size = {"height": crop_size, "width": crop_size}
        self.size = dict(size or {"shortest_edge": 224})
        self.crop_size = dict(crop_size or {"height": self.size["shortest_edge"], "width": self.size["shortest_edge"]})
        self.image_mean = list(image_mean or CLIP_MEAN)
        self.image_std = list(image_std or CLIP_STD)
        self.do_convert_rgb = do_convert_rgb
        if "shortest_edge" not in self.size:
            raise ValueError(f"size must name the short side, e.g. {{'shortest_edge': 224}}, got {self.size}.")

    def _transform(self) -> transforms.Compose:
        return transforms.Compose([
            transforms.Resize(self.size["shortest_edge"], interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop((self.crop_size["height"], self.crop_size["width"])),
            transforms.ToTensor(),
            transforms.Normalize(self.image_mean, self.image_std),
        ])

    def preprocess(self, images, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """One image or a list of them -> BatchFeature with pixel_values (B, 3, H, W) float32."""
        if isinstance(images, (Image.Image, np.ndarray, torch.Tensor)) and not (
            isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4
        ):
            images = [images]
        images = list(images)
        if not images:
            raise ValueError("No images to process: pass at least one image.")
        transform = self._transform()
        pixels = []
        for n, image in enumerate(images):
            image = _as_pil(image, n)
            if self.do_convert_rgb and image.mode != "RGB":
                image = image.convert("RGB")
            pixels.append(transform(image))
        pixel_values = torch.stack(pixels)
        if return_tensors in (None, "np"):
            pixel_values = pixel_values.numpy()
        elif return_tensors != "pt":
            raise ValueError(f"return_tensors={return_tensors!r} is not supported; use 'pt' or 'np'.")
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)
