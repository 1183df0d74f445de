"""OnnxEncoder: a WukongModel's two towers exported to ONNX and run by ONNX Runtime (opt-in, CPU).

Why: on a 2-core CPU, ONNX Runtime runs the same fp32 graph as PyTorch eager about twice as
fast (benchmarks/cpu_inference.py, docs/model.md), and its features agree with the model's to
about 1e-6. It stands in for the model wherever features are made: it has the model's
`encode_image`, `encode_text`, `config` and `similarity_rule`, so `encode_images`,
`encode_texts`, zero-shot, retrieval and `wukong embed` take it as they take the model. Scores
still come from the model's SimilarityRule, in PyTorch.

    from wukong_hf.onnx_encoder import OnnxEncoder
    encoder = OnnxEncoder.from_model(model, "model-onnx")   # export once (seconds to a minute), then load
    features = encoder.encode_image(pixel_values)           # WukongImageFeatures, as model.encode_image

Needs the `onnx` extra: `pip install 'wukong-hf[onnx]'` (onnxruntime, onnx, onnxscript).
The folder holds image.onnx, text.onnx and onnx_encoder.json (the fingerprints of the towers it
was exported from); `from_model` exports again when they do not match the model.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from .configuration_wukong import WukongConfig
from .evaluation.fingerprints import model_fingerprint
from .features import WukongImageFeatures, WukongTextFeatures
from .similarity import SimilarityRule

__all__ = ["OnnxEncoder", "onnx_available"]

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "wukong-onnx-encoder/1"
_INSTALL = "pip install 'wukong-hf[onnx]'  (onnxruntime, onnx, onnxscript)"


def onnx_available() -> bool:
    """Whether ONNX Runtime and the exporter's packages are installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def _require_onnx():
    if not onnx_available():
        raise ImportError(f"The ONNX Runtime backend needs onnxruntime, onnx and onnxscript: {_INSTALL}.")
    import onnxruntime

    return onnxruntime


class _ImageGraph(nn.Module):
    """pixel_values -> the image features' tensors (what is exported for images)."""

    def __init__(self, model, keep_tokens: bool):
        super().__init__()
        self.model, self.keep_tokens = model, keep_tokens

    def forward(self, pixel_values):
        features = self.model.encode_image(pixel_values)
        if not self.keep_tokens:
            return (features.embeds,)
        return features.embeds, features.token_embeds, features.token_mask


class _TextGraph(nn.Module):
    """input_ids, attention_mask -> the text features' tensors (what is exported for texts).

    Calls the text tower and the model's own text head directly: encode_text first checks the ids
    against the vocabulary, a data-dependent test an exported graph cannot hold (OnnxEncoder
    runs the same check in Python before each call).
    """

    def __init__(self, model, keep_tokens: bool):
        super().__init__()
        self.model, self.keep_tokens = model, keep_tokens

    def forward(self, input_ids, attention_mask):
        hidden = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        features = self.model._text_head(hidden, attention_mask)
        if not self.keep_tokens:
            return features.embeds, features.has_padding
        return features.embeds, features.has_padding, features.token_embeds, features.token_mask


def _export(graph: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_shapes) -> None:
    import contextlib
    import io
    import warnings

    tmp = path.with_suffix(".onnx.tmp")
    # The exporter prints its progress and notes on its own internals: nothing the user can act on.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph.eval(), args, dynamo=True, input_names=input_names,
                                    output_names=output_names, dynamic_shapes=dynamic_shapes, verbose=False)
        program.save(str(tmp))
    os.replace(tmp, path)  # a killed export never leaves a graph under the final name


class OnnxEncoder:
    """ONNX Runtime sessions for both towers, with the model's encode_image / encode_text API.

    Build with `OnnxEncoder.from_model(model, folder)`; `load(folder)` reopens an export.
    threads: ONNX Runtime intra-op threads (default: torch.get_num_threads()).
    """

    def __init__(self, folder: str | os.PathLike, threads: int | None = None):
        ort = _require_onnx()
        self.folder = Path(folder)
        info_path = self.folder / "onnx_encoder.json"
        if not info_path.is_file():
            raise FileNotFoundError(f"{self.folder} holds no ONNX export (no onnx_encoder.json); make one with OnnxEncoder.from_model.")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("format") != EXPORT_FORMAT:
            raise ValueError(f"{info_path} has format {info.get('format')!r}, expected {EXPORT_FORMAT!r}; export again.")
        self.config = WukongConfig.from_dict(info["config"])
        self.fingerprints = info["fingerprints"]
        self.keep_tokens = info["keep_tokens"]
        self.grid = tuple(info["grid"]) if info["grid"] else None
        self.num_prefix_tokens = info["num_prefix_tokens"]
        self._logit_scale = torch.tensor(info["logit_scale"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        # No busy-waiting between runs: the same process reads images and scores in between.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        self.image_session = ort.InferenceSession(str(self.folder / "image.onnx"), options, providers=providers)
        self.text_session = ort.InferenceSession(str(self.folder / "text.onnx"), options, providers=providers)

    @classmethod
    def load(cls, folder: str | os.PathLike, threads: int | None = None) -> "OnnxEncoder":
        """Open an export written by `export` / `from_model`."""
        return cls(folder, threads)

    @classmethod
    def from_model(
        cls, model, folder: str | os.PathLike | None = None, threads: int | None = None, keep_tokens: bool | None = None,
        fingerprints: dict | None = None,
    ) -> "OnnxEncoder":
        """Export `model`'s towers to `folder` (a temporary folder when None) unless an export of
        the same towers is already there, then open it.

        keep_tokens: whether the graphs return token features (default: when the model's
        similarity rule reads them; a global model's graphs then skip the per-token head).
        fingerprints: the model's tower fingerprints when the caller has them (saves hashing again).
        """
        _require_onnx()
        if folder is None:
            import tempfile

            folder = tempfile.mkdtemp(prefix="wukong-onnx-")
        folder = Path(folder)
        fingerprints = fingerprints or model_fingerprint(model)
        if keep_tokens is None:
            keep_tokens = model.similarity_rule.uses_tokens
        info_path = folder / "onnx_encoder.json"
        if info_path.is_file():
            try:
                info = json.loads(info_path.read_text(encoding="utf-8"))
                if (info.get("format"), info.get("fingerprints"), info.get("keep_tokens")) == (
                    EXPORT_FORMAT, fingerprints, keep_tokens
                ):
                    return cls(folder, threads)
            except json.JSONDecodeError:
                pass
            logger.info("the ONNX export in %s is of another model; exporting again", folder)
        cls.export(model, folder, fingerprints, keep_tokens)
        return cls(folder, threads)

    @staticmethod
    def export(model, folder: str | os.PathLike, fingerprints: dict | None = None, keep_tokens: bool | None = None) -> Path:
        """Write image.onnx, text.onnx and onnx_encoder.json for `model` into `folder`."""
        _require_onnx()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model = model.eval()
        if keep_tokens is None:
            keep_tokens = model.similarity_rule.uses_tokens
        config = model.config
        size, max_len = config.image_size, config.max_text_length
        batch = torch.export.Dim("batch", min=1)
        pixels = torch.zeros(2, 3, size, size)
        with torch.no_grad():
            probe = model.encode_image(pixels)
        image_outputs = ["embeds", "token_embeds", "token_mask"] if keep_tokens else ["embeds"]
        _export(_ImageGraph(model, keep_tokens), (pixels,), folder / "image.onnx", ["pixel_values"], image_outputs,
                {"pixel_values": {0: batch}})
        length = torch.export.Dim("length", min=1, max=max_len)
        example_len = min(max_len, 5)
        ids = torch.full((2, example_len), 101, dtype=torch.long)
        mask = torch.ones_like(ids)
        text_outputs = ["embeds", "has_padding"] + (["token_embeds", "token_mask"] if keep_tokens else [])
        _export(_TextGraph(model, keep_tokens), (ids, mask), folder / "text.onnx", ["input_ids", "attention_mask"],
                text_outputs, {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}})
        info = {
            "format": EXPORT_FORMAT,
            "fingerprints": fingerprints or model_fingerprint(model),
            "keep_tokens": keep_tokens,
            "grid": list(probe.grid) if probe.grid else None,
            "num_prefix_tokens": probe.num_prefix_tokens,
            "logit_scale": float(model.logit_scale.detach()),
            "config": config.to_dict(),
        }
        (folder / "onnx_encoder.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
        return folder

    # ----- the model's API -----------------------------------------------------------------
    @property
    def similarity_rule(self) -> SimilarityRule:
        return SimilarityRule.from_config(self.config)

    @property
    def inverse_temperature(self) -> torch.Tensor:
        return self._logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def eval(self) -> "OnnxEncoder":
        return self

    def encode_image(self, pixel_values: torch.Tensor) -> WukongImageFeatures:
        """pixel_values (B, 3, S, S) -> WukongImageFeatures (token features only for token-wise models)."""
        from .modeling_wukong import WukongModel

        WukongModel._check_pixel_values(self, pixel_values)  # the model's own check reads only self.config
        outputs = self.image_session.run(None, {"pixel_values": pixel_values.detach().float().cpu().numpy()})
        tensors = [torch.from_numpy(o) for o in outputs]
        if not self.keep_tokens:
            return WukongImageFeatures(embeds=tensors[0], grid=self.grid, num_prefix_tokens=self.num_prefix_tokens)
        return WukongImageFeatures(embeds=tensors[0], token_embeds=tensors[1], token_mask=tensors[2], grid=self.grid,
                                   num_prefix_tokens=self.num_prefix_tokens)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> WukongTextFeatures:
        """input_ids, attention_mask (B, L) -> WukongTextFeatures, as WukongModel.encode_text."""
        from .modeling_wukong import WukongModel

        WukongModel._check_text(self, input_ids, attention_mask)  # same messages as the model
        if attention_mask is None:
            attention_mask = (input_ids != self.config.text_config.pad_token_id).long()
        outputs = self.text_session.run(None, {"input_ids": input_ids.cpu().long().numpy(),
                                               "attention_mask": attention_mask.cpu().long().numpy()})
        tensors = [torch.from_numpy(o) for o in outputs]
        if not self.keep_tokens:
            return WukongTextFeatures(embeds=tensors[0], has_padding=tensors[1])
        return WukongTextFeatures(embeds=tensors[0], has_padding=tensors[1], token_embeds=tensors[2], token_mask=tensors[3])
