"""Hub Space entry point: evaluate's standard widget for the module in this folder."""

from pathlib import Path

import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load(str(Path(__file__).with_name("wukong_zero_shot.py")))
launch_gradio_widget(module)
