"""Person names from LAC, the lexical-analysis model (character BiGRU + CRF, Baidu) that ships inside jieba.

jieba's wheel carries LAC's small model (jieba/lac_small/model_baseline, 12 MB of Paddle "fluid" tensors,
57 labels including PER/LOC/ORG) for `jieba.cut(use_paddle=True)`. That mode needs `paddle.fluid`, which
Paddle removed in 2.6, so the model cannot run through jieba any more: this module reads the same weights and
runs the same network in torch (a batched forward pass: embedding -> 2 x bidirectional GRU -> linear -> CRF
Viterbi). Nothing is downloaded; the only dependencies are jieba and torch.

The network, as jieba/lac_small/nets.py builds it: word_emb (vocab x 128); per layer fc -> GRU forward and
fc -> GRU reverse (hidden 128, Paddle's `dynamic_gru`), concatenated; fc to 57 emission scores; CRF weights
`crfw` of shape (57 + 2, 57): row 0 start scores, row 1 end scores, rows 2.. transitions from -> to.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["LacAnalysis", "LacTagger", "lac_model_dir", "lac_words", "person_spans", "read_fluid_tensor"]

_FLUID_FP32 = 5  # paddle VarType.FP32 in the tensor description


def lac_model_dir() -> str:
    """The folder of the LAC model bundled with the installed jieba (jieba/lac_small)."""
    import jieba

    return os.path.join(os.path.dirname(jieba.__file__), "lac_small")


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def read_fluid_tensor(path: str) -> np.ndarray:
    """One tensor saved by Paddle's fluid.io.save_vars -> float32 array.

    Layout: uint32 version, uint64 LoD level count and each level (uint64 byte size + data), uint32 tensor version,
    int32 size of a TensorDesc protobuf (field 1 data type, field 2 dims), then the raw little-endian data.
    Written here because the only reader is Paddle's removed fluid API.
    """
    with open(path, "rb") as fh:
        buf = fh.read()
    offset = 4
    (lod_levels,) = struct.unpack_from("<Q", buf, offset)
    offset += 8
    for _ in range(lod_levels):
        (size,) = struct.unpack_from("<Q", buf, offset)
        offset += 8 + size
    offset += 4
    (desc_size,) = struct.unpack_from("<i", buf, offset)
    offset += 4
    desc, offset = buf[offset:offset + desc_size], offset + desc_size
    dtype, dims, i = None, [], 0
    while i < len(desc):
        key, i = _varint(desc, i)
        if key & 7 == 0:  # varint: data type (field 1) or one unpacked dim (field 2)
            value, i = _varint(desc, i)
            if key >> 3 == 1:
                dtype = value
            else:
                dims.append(value)
        elif key & 7 == 2:  # packed dims
            length, i = _varint(desc, i)
            end = i + length
            while i < end:
                value, i = _varint(desc, i)
                dims.append(value)
        else:
            raise ValueError(f"{path}: unexpected field in the tensor description; is it a Paddle fluid tensor file?")
    if dtype != _FLUID_FP32 or not dims:
        raise ValueError(f"{path}: expected a float32 Paddle fluid tensor, found data type {dtype} with dims {dims}")
    count = int(np.prod(dims))
    if len(buf) - offset < 4 * count:
        raise ValueError(f"{path}: truncated ({len(buf) - offset} bytes of data for {count} floats); reinstall jieba")
    return np.frombuffer(buf, dtype="<f4", count=count, offset=offset).reshape(dims).copy()


def _read_dict(path: str) -> dict[int, str]:
    """word.dic / tag.dic: 'id<TAB>entry' lines -> {id: entry}."""
    table = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 2:
                table[int(parts[0])] = parts[1]
    return table


class LacTagger:
    """LAC's character labels for captions, batched on the CPU.

    `labels(captions)` -> one list of labels per caption, one per character ("PER-B", "PER-I", "n-B", "O", ...);
    `person_spans(captions)` -> (start, end) character spans of the words LAC labels PER.
    """

    def __init__(self, model_dir: str | None = None, batch_size: int = 256):
        model_dir = model_dir or lac_model_dir()
        weights_dir = os.path.join(model_dir, "model_baseline")
        if not os.path.isdir(weights_dir):
            raise FileNotFoundError(
                f"the LAC model is not at {weights_dir!r}; it ships with jieba 0.42 (pip install 'jieba>=0.42'), "
                "or use --name-masker fast"
            )
        load = lambda name: torch.from_numpy(read_fluid_tensor(os.path.join(weights_dir, name)))  # noqa: E731
        self.embedding = load("word_emb")
        self.input_projections = [(load(f"fc_{i}.w_0"), load(f"fc_{i}.b_0").reshape(-1)) for i in range(4)]
        self.grus = [(load(f"gru_{i}.w_0"), load(f"gru_{i}.b_0").reshape(-1)) for i in range(4)]
        self.emission = (load("fc_4.w_0"), load("fc_4.b_0").reshape(-1))
        crf = load("crfw")
        self.start, self.end, self.transitions = crf[0], crf[1], crf[2:]
        words = _read_dict(os.path.join(model_dir, "word.dic"))
        self.char_ids = {char: index for index, char in words.items()}
        self.oov = self.char_ids["OOV"]
        self.label_names = _read_dict(os.path.join(model_dir, "tag.dic"))
        label_ids = {name: index for index, name in self.label_names.items()}
        self.person_labels = (label_ids["PER-B"], label_ids["PER-I"])
        self.transitions_np, self.end_np = self.transitions.numpy(), self.end.numpy()
        self.batch_size = batch_size

    def _gru(self, x: torch.Tensor, lengths: torch.Tensor, layer: int, reverse: bool) -> torch.Tensor:
        """Paddle's dynamic_gru (origin_mode=False) over (B, T, 3H) projected inputs -> (B, T, H).

        u, r = sigmoid(x_ur + h @ W_ur + b_ur); c = tanh(x_c + (r * h) @ W_c + b_c); h = (1 - u) * h + u * c.
        The weight buffer holds W_ur (H x 2H) then W_c (H x H). torch.nn.GRU applies r after the matmul, so it
        cannot be used. reverse: each sequence runs from its own last character (padding stays at the end).
        """
        weight, bias = self.grus[layer]
        hidden = weight.shape[0]
        flat = weight.reshape(-1)
        gate_weight, state_weight = flat[: 2 * hidden * hidden].reshape(hidden, 2 * hidden), flat[2 * hidden * hidden:].reshape(hidden, hidden)
        batch, steps, _ = x.shape
        x = x + bias
        if reverse:
            x = x[torch.arange(batch)[:, None], self._reverse_index(lengths, steps)]
        h = x.new_zeros(batch, hidden)
        outputs = []
        for t in range(steps):
            gates = torch.sigmoid(x[:, t, : 2 * hidden] + h @ gate_weight)
            update, reset = gates[:, :hidden], gates[:, hidden:]
            candidate = torch.tanh(x[:, t, 2 * hidden:] + (reset * h) @ state_weight)
            h = h + update * (candidate - h)
            outputs.append(h)
        out = torch.stack(outputs, 1)
        if reverse:
            out = out[torch.arange(batch)[:, None], self._reverse_index(lengths, steps)]
        return out

    @staticmethod
    def _reverse_index(lengths: torch.Tensor, steps: int) -> torch.Tensor:
        """(B, T) gather index reversing each row's first length positions and leaving its padding in place."""
        positions = torch.arange(steps)[None, :]
        return torch.where(positions < lengths[:, None], lengths[:, None] - 1 - positions, positions)

    def _viterbi(self, emissions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, L) emission scores, (B,) lengths -> (B, T) best label paths (CRF with start/end scores);
        positions past a row's length hold that row's last label."""
        batch, steps, _ = emissions.shape
        score = self.start + emissions[:, 0]
        backpointers = [None]
        for t in range(1, steps):
            best, index = (score[:, :, None] + self.transitions).max(1)
            backpointers.append(index)
            score = torch.where((t < lengths)[:, None], best + emissions[:, t], score)
        current = (score + self.end).argmax(1)
        path = torch.empty(batch, steps, dtype=torch.long)
        for t in range(steps - 1, -1, -1):
            if t < steps - 1:
                previous = backpointers[t + 1].gather(1, current[:, None]).squeeze(1)
                current = torch.where(t < lengths - 1, previous, current)
            path[:, t] = current
        return path

    def labels(self, captions: list[str]) -> list[list[str]]:
        """captions -> per-character LAC labels (empty list for an empty caption). Runs on one thread: the
        per-character matmuls are tiny (batch x 128 x 384), and intra-op threads only spin on them (50x slower on
        a loaded 2-core machine); run several processes for more throughput."""
        return self._on_one_thread(self._run, captions, False)

    def analyse(self, captions: list[str]) -> list[LacAnalysis]:
        """captions -> per caption, LAC's labels, its last BiGRU layer's states and the CRF's span probabilities
        (what the name-span classifier reads). One thread, as labels()."""
        return self._on_one_thread(self._run, captions, True)

    @staticmethod
    def _on_one_thread(function, *args):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return function(*args)
        finally:
            torch.set_num_threads(threads)

    @torch.no_grad()
    def _run(self, captions: list[str], analyse: bool):
        """captions -> labels per caption, or (analyse) one LacAnalysis per caption."""
        hidden = self.input_projections[0][0].shape[1] // 3 * 2
        results: list = [LacAnalysis(c, [], torch.zeros(0, hidden), None) if analyse else [] for c in captions]
        order = sorted((i for i, c in enumerate(captions) if c), key=lambda i: len(captions[i]))
        for first in range(0, len(order), self.batch_size):
            chunk = order[first:first + self.batch_size]
            lengths = torch.tensor([len(captions[i]) for i in chunk])
            ids = torch.full((len(chunk), int(lengths.max())), self.oov, dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, : len(captions[i])] = torch.tensor([self.char_ids.get(ch, self.oov) for ch in captions[i]])
            states = self._states(ids, lengths)
            emissions = states @ self.emission[0] + self.emission[1]
            paths = self._viterbi(emissions, lengths).tolist()
            if analyse:
                alpha, beta, log_partition = self._forward_backward(emissions, lengths)
                emissions_np, alpha, beta = emissions.numpy(), alpha.numpy(), beta.numpy()
            for row, i in enumerate(chunk):
                length = len(captions[i])
                labels = [self.label_names[k] for k in paths[row][:length]]
                if analyse:
                    probability = self._span_marginal_function(emissions_np[row], alpha[row], beta[row], float(log_partition[row]), length)
                    results[i] = LacAnalysis(captions[i], labels, states[row, :length].clone(), probability)
                else:
                    results[i] = labels
        return results

    def _states(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T) character ids, (B,) lengths -> (B, T, 256) states of the last BiGRU layer."""
        x = self.embedding[ids]
        for layer in range(2):
            forward = self._gru(x @ self.input_projections[2 * layer][0] + self.input_projections[2 * layer][1], lengths, 2 * layer, False)
            backward = self._gru(x @ self.input_projections[2 * layer + 1][0] + self.input_projections[2 * layer + 1][1], lengths, 2 * layer + 1, True)
            x = torch.cat([forward, backward], -1)
        return x

    def _forward_backward(self, emissions: torch.Tensor, lengths: torch.Tensor):
        """CRF forward and backward log scores: (B, T, L) emissions -> alpha (B, T, L) (start .. t, emission at t
        included), beta (B, T, L) (t+1 .. end, end score included), log partition (B,). Positions past a row's
        length repeat its last alpha and hold the end scores in beta. Computed in scaled probability space (one
        (B, L) x (L, L) matmul per step, each step renormalised, its log scale kept) because a log-space
        logsumexp over (B, L, L) per step costs more than the whole BiGRU."""
        batch, steps, _ = emissions.shape
        emission_max = emissions.max(-1, keepdim=True).values
        emission_exp = torch.exp(emissions - emission_max)
        transition_max = self.transitions.max()
        transition_exp = torch.exp(self.transitions - transition_max)
        start_max, end_max = self.start.max(), self.end.max()
        probability = torch.exp(self.start - start_max) * emission_exp[:, 0]
        total = probability.sum(-1, keepdim=True)
        probability, log_scale = probability / total, torch.log(total) + start_max + emission_max[:, 0]
        alpha = [torch.log(probability) + log_scale]
        for t in range(1, steps):
            step = (probability @ transition_exp) * emission_exp[:, t]
            total = step.sum(-1, keepdim=True)
            live = (t < lengths)[:, None]
            probability = torch.where(live, step / total, probability)
            log_scale = torch.where(live, log_scale + torch.log(total) + transition_max + emission_max[:, t], log_scale)
            alpha.append(torch.log(probability) + log_scale)
        end_probability = torch.exp(self.end - end_max).expand(batch, -1)
        probability, log_scale = end_probability, end_max.expand(batch, 1)
        beta = [torch.log(probability) + log_scale]
        for t in range(steps - 2, -1, -1):
            step = (emission_exp[:, t + 1] * probability) @ transition_exp.T
            total = step.sum(-1, keepdim=True)
            live = (t < lengths - 1)[:, None]
            probability = torch.where(live, step / total, end_probability)
            log_scale = torch.where(live, log_scale + torch.log(total) + transition_max + emission_max[:, t + 1], end_max.expand(batch, 1))
            beta.append(torch.log(probability) + log_scale)
        alpha, beta = torch.stack(alpha, 1), torch.stack(beta[::-1], 1)
        last = alpha[torch.arange(batch), lengths - 1]
        return alpha, beta, torch.logsumexp(last + self.end, 1)

    def _span_marginal_function(self, emissions: np.ndarray, alpha: np.ndarray, beta: np.ndarray, log_partition: float, length: int):
        """One caption's CRF scores -> (start, end) -> P(PER-B at start, PER-I up to end - 1, no PER-I at end)."""
        begin, inside = self.person_labels
        transitions, end_scores = self.transitions_np, self.end_np
        not_inside = np.arange(emissions.shape[1]) != inside

        def marginal(start: int, end: int) -> float:
            score, previous = alpha[start, begin], begin
            for t in range(start + 1, end):
                score += transitions[previous, inside] + emissions[t, inside]
                previous = inside
            if end < length:
                tail = (transitions[previous] + emissions[end] + beta[end])[not_inside]
                score += np.logaddexp.reduce(tail)
            else:
                score += end_scores[previous]
            return float(np.exp(min(0.0, score - log_partition)))

        return marginal

    def words(self, caption: str, labels: list[str] | None = None) -> list[tuple[str, str]]:
        """LAC's words with their tag ("PER", "LOC", "n", "O", ...); see lac_words."""
        return lac_words(caption, self.labels([caption])[0] if labels is None else labels)

    def person_spans(self, captions: list[str]) -> list[list[tuple[int, int]]]:
        """captions -> per caption, the (start, end) character spans of the words LAC tags PER."""
        return [person_spans(caption, labels) for caption, labels in zip(captions, self.labels(captions))]


def lac_words(caption: str, labels: list[str]) -> list[tuple[str, str]]:
    """LAC's words with their tag: a word starts at an X-B label or at an O after another label
    (jieba/lac_small/utils.parse_result)."""
    words: list[list[str]] = []
    for i, (char, label) in enumerate(zip(caption, labels)):
        if not words or label.endswith("-B") or (label == "O" and labels[i - 1] != "O"):
            words.append([char, label.split("-")[0]])
        else:
            words[-1][0] += char
    return [(word, tag) for word, tag in words]


def person_spans(caption: str, labels: list[str]) -> list[tuple[int, int]]:
    """The (start, end) character spans of the words LAC labels PER."""
    found, position = [], 0
    for word, tag in lac_words(caption, labels):
        if tag == "PER":
            found.append((position, position + len(word)))
        position += len(word)
    return found


@dataclass
class LacAnalysis:
    """LAC's view of one caption: labels (one per character), states ((T, 256) last BiGRU layer) and
    span_probability(start, end), the CRF marginal probability that exactly characters start..end-1 form one PER
    word (forward-backward over all label paths: the model's own confidence)."""

    caption: str
    labels: list[str]
    states: torch.Tensor
    _span_probability: object

    def span_probability(self, start: int, end: int) -> float:
        return self._span_probability(start, end) if self._span_probability is not None else 0.0

    def words(self) -> list[tuple[str, str]]:
        return lac_words(self.caption, self.labels)

    def person_spans(self) -> list[tuple[int, int]]:
        return person_spans(self.caption, self.labels)
