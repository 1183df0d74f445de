"""The inference-only text feature memo in WukongModel.forward: the zero-shot pipeline's labels are
encoded once for many images; scores are bit for bit those of the memo turned off; any change of
weights, dtype, mode, labels or settings encodes again; training and autograd never see it."""

import copy
import pickle

import pytest
import torch
from conftest import make_tiny, random_images
from transformers import pipeline

LABELS = ["猫", "狗", "飞机", "红色的三角形"]
OTHER_LABELS = ["蓝色的正方形", "鸟"]
TEMPLATE = "{}的照片。"


def counting(model):
    """Count the text tower's calls. (A forward hook would turn the memo off: hooks must run, so the
    memo bypasses any model whose text side has one; patching forward counts without a hook.)"""
    calls = {"n": 0}
    forward = model.text_model.forward

    def counted(*args, **kwargs):
        calls["n"] += 1
        return forward(*args, **kwargs)

    model.text_model.forward = counted
    return calls


def inputs_for(processor, labels, n_images=3, seed=0):
    return processor(text=[TEMPLATE.format(x) for x in labels], images=random_images(n_images, seed=seed))


def logits(model, inputs, memo=True, **kwargs):
    model.text_feature_memo.enabled = memo
    with torch.no_grad():
        return model(**inputs, **kwargs).logits_per_image


@pytest.mark.parametrize("preset", ["tiny-global", "tiny-token-wise"])
def test_pipeline_scores_are_bit_for_bit_those_of_the_memo_off_and_labels_encode_once(preset):
    model, processor = make_tiny(preset)
    classifier = pipeline("zero-shot-image-classification", model=model, tokenizer=processor.tokenizer,
                          image_processor=processor.image_processor)
    images = random_images(5, seed=3)
    calls = counting(model)
    model.text_feature_memo.enabled = False
    off = classifier(images, candidate_labels=LABELS, hypothesis_template=TEMPLATE)
    assert calls["n"] == 5
    model.text_feature_memo.enabled = True
    on = classifier(images, candidate_labels=LABELS, hypothesis_template=TEMPLATE)
    assert calls["n"] == 5 + 1  # one text tower run for five images
    assert on == off  # the same labels in the same order with the same float scores
    # The pipeline's scores are still the softmax of the model's logits (the memo off).
    with torch.no_grad():
        expected = logits(model, processor(text=[TEMPLATE.format(x) for x in LABELS], images=images), memo=False)
    for row, result in zip(expected.softmax(-1), on):
        assert {r["label"]: r["score"] for r in result} == pytest.approx(dict(zip(LABELS, row.tolist())), abs=1e-6)


@pytest.mark.parametrize("preset", ["tiny-global", "tiny-token-wise"])
def test_forward_with_the_memo_equals_the_memo_off_for_batches_of_different_lengths(preset):
    model, processor = make_tiny(preset)
    for labels in (LABELS, OTHER_LABELS, ["猫"], LABELS + OTHER_LABELS):
        inputs = inputs_for(processor, labels)
        reference = logits(model, inputs, memo=False)
        first, second = logits(model, inputs), logits(model, inputs)
        assert torch.equal(first, reference) and torch.equal(second, reference)
        model.text_feature_memo.enabled = True
        with torch.no_grad():
            out, out_off = model(**inputs), None
            model.text_feature_memo.enabled = False
            out_off = model(**inputs)
        for name in ("logits_per_text", "text_embeds", "text_token_embeds", "text_token_mask"):
            assert torch.equal(getattr(out, name), getattr(out_off, name)), name
        assert torch.equal(out.text_model_output.last_hidden_state, out_off.text_model_output.last_hidden_state)
    assert model.text_feature_memo.hits >= 4


def test_the_memo_serves_each_batch_once_per_weights_and_encodes_again_after_every_change():
    model, processor = make_tiny("tiny-token-wise")
    inputs = inputs_for(processor, LABELS)
    calls = counting(model)

    def run_twice_and_check(expected_calls):
        on = [logits(model, inputs), logits(model, inputs)]
        assert calls["n"] == expected_calls, f"text tower ran {calls['n']} times, expected {expected_calls}"
        off = logits(model, inputs, memo=False)
        calls["n"] -= 1  # the memo-off reference call
        assert torch.equal(on[0], off) and torch.equal(on[1], off)
        return off

    first = run_twice_and_check(1)
    with torch.no_grad():  # in-place edit of a tower weight
        model.text_model.encoder.layer[0].attention.self.query.weight.mul_(1.5)
    edited = run_twice_and_check(2)
    assert not torch.equal(edited, first)
    with torch.no_grad():  # the text head's projection
        model.text_projection.weight.add_(0.01)
    run_twice_and_check(3)
    other, _ = make_tiny("tiny-token-wise", seed=1)
    model.load_state_dict(other.state_dict())
    loaded = run_twice_and_check(4)
    assert torch.equal(loaded, logits(other, inputs, memo=False))
    model.train()
    model.eval()
    run_twice_and_check(5)
    model.text_model.embeddings.word_embeddings.weight.data = (  # new storage, same values
        model.text_model.embeddings.word_embeddings.weight.data.clone())
    run_twice_and_check(6)
    model.config.token_wise_text_sep = not model.config.token_wise_text_sep  # the head reads the config
    other_mask = run_twice_and_check(7)
    assert not torch.equal(other_mask, loaded)
    model.config.token_wise_text_sep = not model.config.token_wise_text_sep
    run_twice_and_check(8)
    other_inputs = inputs_for(processor, OTHER_LABELS)
    logits(model, other_inputs), logits(model, other_inputs)
    assert calls["n"] == 9  # different labels: one more run, then served
    padded = dict(processor.tokenizer([TEMPLATE.format(x) for x in LABELS], padding=True, return_tensors="pt"),
                  pixel_values=inputs["pixel_values"])  # padded to the longest label, as the pipeline does
    assert padded["input_ids"].shape[1] < inputs["input_ids"].shape[1]
    logits(model, padded), logits(model, padded)
    assert calls["n"] == 10  # the same labels padded differently are another batch


def test_a_dtype_change_encodes_again_in_the_new_dtype():
    model, processor = make_tiny("tiny-global")
    inputs = inputs_for(processor, LABELS)
    calls = counting(model)
    logits(model, inputs), logits(model, inputs)
    assert calls["n"] == 1
    model.to(torch.float64)
    wide = dict(inputs, pixel_values=inputs["pixel_values"].double())
    on = [logits(model, wide), logits(model, wide)]
    assert calls["n"] == 2 and on[0].dtype == torch.float64
    assert torch.equal(on[0], logits(model, wide, memo=False)) and torch.equal(on[1], on[0])
    model.to(torch.float32)
    logits(model, inputs)
    assert calls["n"] == 4


def test_no_memo_in_training_mode_or_with_autograd_and_a_training_step_is_unchanged():
    model, processor = make_tiny("tiny-token-wise")
    reference = copy.deepcopy(model)
    reference.text_feature_memo.enabled = False
    inputs = processor(text=["猫的照片", "狗的照片"], images=random_images(2))
    logits(model, inputs), logits(model, inputs)  # fills the memo
    calls = counting(model)
    model.text_feature_memo.enabled = True
    for m in (model, reference):
        m.train()
        m.zero_grad()
        torch.manual_seed(0)  # the same dropout stream
        m(**inputs, return_loss=True).loss.backward()
    assert calls["n"] == 1
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad), name
    assert model.text_model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    # Eval mode with autograd on (e.g. gradients for attribution): the tower runs every call, with grads.
    model.eval()
    for _ in range(2):
        model(**inputs).logits_per_image.sum().backward()
    assert calls["n"] == 3 and len(model.text_feature_memo) == 0


def test_asking_for_the_text_towers_hidden_states_bypasses_the_memo():
    model, processor = make_tiny("tiny-global")
    inputs = inputs_for(processor, LABELS)
    logits(model, inputs)
    calls = counting(model)
    hits = model.text_feature_memo.hits
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    assert calls["n"] == 1 and model.text_feature_memo.hits == hits
    assert len(out.text_model_output.hidden_states) == model.config.text_config.num_hidden_layers + 1
    model.text_model.config.output_hidden_states = True  # asked through the tower's own config
    with torch.no_grad():
        out = model(**inputs)
    assert calls["n"] == 2 and out.text_model_output.hidden_states is not None
    model.text_model.config.output_hidden_states = False
    logits(model, inputs)
    assert calls["n"] == 2 and model.text_feature_memo.hits == hits + 1


def test_a_hook_on_the_text_side_runs_so_the_memo_steps_aside():
    model, processor = make_tiny("tiny-global")
    inputs = inputs_for(processor, LABELS)
    before = logits(model, inputs)
    handle = model.text_projection.register_forward_hook(lambda module, args, output: output * -1)
    hooked = logits(model, inputs)
    assert torch.equal(hooked, logits(model, inputs, memo=False)) and not torch.equal(hooked, before)
    handle.remove()
    assert torch.equal(logits(model, inputs), before)


def test_callers_editing_returned_tensors_in_place_cannot_reach_the_memo():
    model, processor = make_tiny("tiny-token-wise")
    inputs = inputs_for(processor, LABELS)
    reference = logits(model, inputs, memo=False)
    model.text_feature_memo.enabled = True
    for context in (torch.inference_mode, torch.no_grad, torch.no_grad):  # inference tensors stored, then served
        with context():
            out = model(**inputs)
            for tensor in (out.text_embeds, out.text_token_embeds, out.text_model_output.last_hidden_state):
                tensor.zero_()
            out.text_token_mask.fill_(False)
    assert torch.equal(logits(model, inputs), reference)


def test_the_memo_keeps_at_most_max_entries_and_max_bytes_and_copies_start_empty():
    model, processor = make_tiny("tiny-global")
    memo = model.text_feature_memo
    memo.max_entries = 3
    batches = [processor(text=[f"{c}的照片"], images=random_images(1)) for c in "猫狗鸟鱼马"]
    for inputs in batches:
        logits(model, inputs)
    assert len(memo) == 3
    calls = counting(model)
    logits(model, batches[0])  # the oldest was evicted
    logits(model, batches[-1])  # the newest was kept
    assert calls["n"] == 1
    memo.max_bytes = 1  # nothing fits
    memo.clear()
    logits(model, batches[0])
    assert len(memo) == 0
    memo.max_bytes = 2**20
    logits(model, batches[0])
    assert len(copy.deepcopy(model).text_feature_memo) == 0 and len(memo) == 1
    assert len(pickle.loads(pickle.dumps(memo))) == 0


def test_text_sides_it_cannot_fingerprint_are_never_served_from_the_memo():
    """Quantized text towers keep weights in packed objects, and weights made under inference_mode have
    no version counter: in-place changes would go unseen, so every call runs the tower."""
    import warnings

    model, processor = make_tiny("tiny-global")
    inputs = inputs_for(processor, LABELS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    with torch.inference_mode():
        made_in_inference, _ = make_tiny("tiny-global")
    for m in (quantized, made_in_inference):
        calls = counting(m)
        first, second = logits(m, inputs), logits(m, inputs)
        assert calls["n"] == 2 and torch.equal(first, second) and len(m.text_feature_memo) == 0
