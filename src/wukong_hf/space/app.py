"""The Gradio page of the Space: three tabs over `handlers`, nothing computed here.

    demo = build_app(load_session("wukong-demo/train/final", images="wukong-demo/held_out"))
    demo.launch(**launch_options(session))

Events run with preprocess=False: the handlers read the uploaded file themselves, so a file that
is not an image gets a message in the page instead of Gradio's generic error.
"""

from __future__ import annotations

import os

# No analytics or version check calls from the server (the machines this runs on may be offline).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from . import handlers  # noqa: E402
from .handlers import SpaceSession  # noqa: E402

__all__ = ["build_app", "launch_options", "theme"]

# Fonts from the machine only (the default theme fetches Google Fonts); CJK-capable families first.
_FONTS = ["Noto Sans CJK SC", "Noto Sans SC", "PingFang SC", "Microsoft YaHei", "WenQuanYi Micro Hei",
          "ui-sans-serif", "system-ui", "sans-serif"]
_MONO = ["ui-monospace", "Consolas", "monospace"]
EXAMPLE_IMAGES = 4
DEFAULT_LABELS = "猫, 狗, 飞机, 汽车"


def theme() -> gr.themes.Theme:
    """Gradio's default look with local fonts only."""
    return gr.themes.Default(font=_FONTS, font_mono=_MONO)


def launch_options(session: SpaceSession) -> dict:
    """launch() arguments: the local theme, and the search folder as a path the page may show."""
    options = {"theme": theme(), "show_error": True}
    if session.index is not None:
        options["allowed_paths"] = [str(session.index.folder.resolve())]
    return options


def _example_images(session: SpaceSession) -> list[list[str]]:
    if session.index is None:
        return []
    images, _ = session.index.files()
    step = max(1, len(images) // EXAMPLE_IMAGES)
    return [[str(path)] for path in images[::step][:EXAMPLE_IMAGES]]


def build_app(session: SpaceSession) -> gr.Blocks:
    """The Blocks page for one loaded model (tabs: zero-shot, search, alignment)."""

    def run_zero_shot(image, labels, template):
        result, message = handlers.zero_shot_tab(session, image, labels, template)
        if result is None:
            return None, message
        return result.probabilities, result.explanation

    def run_search(query, top_k, shortlist, progress=gr.Progress(track_tqdm=True)):
        result, message = handlers.search_tab(session, query, top_k, shortlist)
        if result is None:
            return [], message
        gallery = [(str(path), f"{score:.3f} · {path.name}") for path, score in result.hits]  # best first
        return gallery, result.explanation

    def run_alignment(image, label):
        result, message = handlers.alignment_tab(session, image, label)
        if result is None:
            return gr.AnnotatedImage(value=None), None, message
        overlay = gr.AnnotatedImage(value=(result.image, result.annotations), color_map=result.colours)
        return overlay, result.figure, result.legend

    examples = _example_images(session)
    with gr.Blocks(title=f"Wukong · {session.name}") as demo:
        gr.Markdown(f"# 悟空 Wukong\n{session.describe()}", elem_id="header")
        with gr.Tab("Zero-shot 零样本分类", id="zero-shot"):
            with gr.Row():
                with gr.Column():
                    zs_image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"],
                                        elem_id="zs-image", height=300)
                    zs_labels = gr.Textbox(label="Labels (separate with , or ，)", value=DEFAULT_LABELS,
                                           elem_id="zs-labels")
                    zs_template = gr.Dropdown(handlers.TEMPLATE_CHOICES, value=handlers.TEMPLATE_CHOICES[0],
                                              allow_custom_value=True, elem_id="zs-template",
                                              label="Prompt ({c} = the label; or type your own)")
                    zs_run = gr.Button("Classify", variant="primary", elem_id="zs-run")
                with gr.Column():
                    zs_bars = gr.Label(label="Probabilities", num_top_classes=10, elem_id="zs-bars")
                    zs_message = gr.Markdown(elem_id="zs-message")
            if examples:
                gr.Examples(examples, inputs=[zs_image], label="Images from the search folder")
            zs_run.click(run_zero_shot, [zs_image, zs_labels, zs_template], [zs_bars, zs_message], preprocess=False)

        with gr.Tab("Search 以文搜图", id="search"):
            with gr.Row():
                se_query = gr.Textbox(label="Chinese query", placeholder="红三角", elem_id="se-query", scale=3)
                se_top_k = gr.Slider(1, 48, value=handlers.DEFAULT_TOP_K, step=1, label="Results", scale=1)
                se_shortlist = gr.Slider(8, 1024, value=handlers.DEFAULT_SHORTLIST, step=8, scale=1,
                                         label="Global shortlist (token-wise models re-rank it)",
                                         visible=session.rule.uses_tokens)
            se_run = gr.Button("Search", variant="primary", elem_id="se-run")
            se_message = gr.Markdown(
                "" if session.index else "⚠️ No image folder: start the app with --images FOLDER to search it.",
                elem_id="se-message")
            se_gallery = gr.Gallery(label="Best matches (similarity · file)", columns=6, height="auto", elem_id="se-gallery")
            for trigger in (se_run.click, se_query.submit):
                trigger(run_search, [se_query, se_top_k, se_shortlist], [se_gallery, se_message], preprocess=False)

        with gr.Tab("Alignment 词-块对齐", id="alignment"):
            problem = session.alignment_problem()
            gr.Markdown(
                f"⚠️ {problem}" if problem else
                "Paper Figure 4: each image patch is compared with the tokens of \"[CLS] label [SEP]\" and coloured by "
                "the token it matches best.", elem_id="al-note")
            with gr.Row():
                with gr.Column(scale=1):
                    al_image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"],
                                        elem_id="al-image", height=300)
                    al_label = gr.Textbox(label="Label", placeholder="蜻蜓", elem_id="al-label")
                    al_run = gr.Button("Align", variant="primary", elem_id="al-run")
                with gr.Column(scale=2):
                    with gr.Row():
                        with gr.Column():
                            gr.Markdown("**Patches coloured by their best token**")
                            al_overlay = gr.AnnotatedImage(show_label=False, elem_id="al-overlay", height=380)
                        with gr.Column():
                            gr.Markdown("**Figure 4: index of the best token per patch** (yellow: a label token)")
                            al_figure = gr.Image(show_label=False, elem_id="al-figure", height=380,
                                                 interactive=False, buttons=["download"])
                    al_legend = gr.Markdown(elem_id="al-legend")
            if examples:
                gr.Examples(examples, inputs=[al_image], label="Images from the search folder")
            al_run.click(run_alignment, [al_image, al_label], [al_overlay, al_figure, al_legend], preprocess=False)
    return demo
