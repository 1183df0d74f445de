"""The Wukong Space: a Gradio app with three tabs for any Wukong model.

    Zero-shot   an image, Chinese labels, a prompt or the 80-prompt ensemble -> probability bars
    Search      a Chinese query against a folder of images (encoded once, cached on disk) -> gallery
    Alignment   an image and a label -> paper Figure 4: each patch coloured by its best token

Modules: `handlers` (what each tab computes, no Gradio: unit tests call it directly),
`image_index` (the folder's image features and their disk cache), `app` (the Gradio page),
`export` (the Space folder that runs the same app on the Hub), `commands` (`wukong space`).

    wukong space --model wukong-demo/train/final --images wukong-demo/held_out
"""

from .handlers import SpaceInputError, SpaceSession, load_session

__all__ = ["SpaceInputError", "SpaceSession", "load_session"]
