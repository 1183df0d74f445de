"""Token-wise (FILIP) and global similarity: values and gradients against the paper's formula."""

import pytest
import torch
import torch.nn.functional as F

from wukong_hf import global_similarity, select_top_image_tokens, token_wise_similarity


def loop_reference(image, text, image_mask, text_mask):
    """The paper's formula with plain Python loops (max over the other side, mean over own tokens)."""
    i2t = [[None] * text.shape[0] for _ in range(image.shape[0])]
    t2i = [[None] * image.shape[0] for _ in range(text.shape[0])]
    for i in range(image.shape[0]):
        for j in range(text.shape[0]):
            dots = [[image[i, k] @ text[j, r] for r in range(text.shape[1])] for k in range(image.shape[1])]
            image_tokens = [k for k in range(image.shape[1]) if image_mask[i, k]]
            text_tokens = [r for r in range(text.shape[1]) if text_mask[j, r]]
            zero = image.new_zeros(())
            total = zero
            for k in image_tokens:
                total = total + (max((dots[k][r] for r in text_tokens), key=lambda t: float(t.detach())) if text_tokens else zero)
            i2t[i][j] = total / max(len(image_tokens), 1)
            total = zero
            for r in text_tokens:
                total = total + (max((dots[k][r] for k in image_tokens), key=lambda t: float(t.detach())) if image_tokens else zero)
            t2i[j][i] = total / max(len(text_tokens), 1)
    return torch.stack([torch.stack(row) for row in i2t]), torch.stack([torch.stack(row) for row in t2i])


def naive_reference(image, text, image_mask, text_mask):
    """The former implementation: materialises (I, T, n1, n2) and lets autograd handle it."""
    sim = torch.einsum("ikd,jrd->ijkr", image, text)

    def masked_max_mean(sim, max_mask, mean_mask):
        sim = sim.masked_fill(~max_mask[None, :, None, :], float("-inf"))
        best = sim.amax(dim=-1)
        best = torch.where(torch.isfinite(best), best, torch.zeros_like(best))
        best = best * mean_mask[:, None, :].to(best.dtype)
        return best.sum(-1) / mean_mask.sum(-1).clamp(min=1).to(best.dtype)[:, None]

    return masked_max_mean(sim, text_mask, image_mask), masked_max_mean(sim.permute(1, 0, 3, 2), image_mask, text_mask)


def random_case(num_images, num_texts, n1, n2, d, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(num_images, n1, d, generator=g, dtype=dtype), dim=-1)
    text = F.normalize(torch.randn(num_texts, n2, d, generator=g, dtype=dtype), dim=-1)
    image_mask = torch.rand(num_images, n1, generator=g) > 0.3
    text_lengths = torch.randint(1, n2 + 1, (num_texts,), generator=g)
    text_mask = torch.arange(n2)[None] < text_lengths[:, None]  # padding at the end, like the tokenizer
    return image.requires_grad_(), text.requires_grad_(), image_mask, text_mask


def grads_of(fn, image, text, image_mask, text_mask, seed=1):
    """Scores and gradients of a random linear function of both score matrices."""
    i2t, t2i = fn(image, text, image_mask, text_mask)
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(i2t.shape, generator=g, dtype=i2t.dtype), torch.randn(t2i.shape, generator=g, dtype=t2i.dtype)
    grads = torch.autograd.grad((i2t * weights[0]).sum() + (t2i * weights[1]).sum(), (image, text))
    return i2t.detach(), t2i.detach(), grads


def assert_same(result, expected, rtol=1e-7, atol=1e-9):
    for got, want in zip(result[:2] + tuple(result[2]), expected[:2] + tuple(expected[2])):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


def tiled(image_block, text_block):
    return lambda *args: token_wise_similarity(*args, image_block_size=image_block, text_block_size=text_block)


@pytest.mark.parametrize("blocks", [(2, 3), (1, 1), (None, None)])
def test_matches_loop_reference_with_padding_and_empty_rows(blocks):
    image, text, image_mask, text_mask = random_case(5, 4, 6, 7, 8)
    image_mask[1] = False  # an image with no counted token
    text_mask[2] = False  # an all-padding text
    expected = grads_of(loop_reference, image, text, image_mask, text_mask)
    result = grads_of(tiled(*blocks), image, text, image_mask, text_mask)
    assert_same(result, expected)
    assert torch.all(result[0][1] == 0) and torch.all(result[1][:, 1] == 0)  # empty image row scores 0
    assert torch.all(result[0][:, 2] == 0) and torch.all(result[1][2] == 0)  # empty text row scores 0
    assert all(torch.isfinite(g).all() for g in result[2])


def test_unpadded_images_with_padded_texts():
    # The benchmark's layout: every image token counts (the kernel skips the image mask), texts are padded.
    image, text, _, text_mask = random_case(4, 5, 6, 7, 8, seed=7)
    image_mask = torch.ones(4, 6, dtype=torch.bool)
    expected = grads_of(loop_reference, image, text, image_mask, text_mask)
    assert_same(grads_of(tiled(3, 2), image, text, image_mask, text_mask), expected)
    assert_same(grads_of(tiled(3, 2), image, text, None, text_mask), expected)


def test_exact_ties_give_the_whole_gradient_to_the_first_token():
    # Small half-integers make every dot product exact in any summation order, so duplicated tokens
    # tie exactly; like torch.max (not amax, which splits the gradient), the first maximal token wins.
    g = torch.Generator().manual_seed(8)
    image = torch.randint(-2, 3, (3, 5, 8), generator=g).double() / 2
    text = torch.randint(-2, 3, (4, 6, 8), generator=g).double() / 2
    image[:, 3], text[:, 2] = image[:, 1], text[:, 0]
    image, text = image.requires_grad_(), text.requires_grad_()
    image_mask, text_mask = torch.ones(3, 5, dtype=torch.bool), torch.ones(4, 6, dtype=torch.bool)
    expected = grads_of(loop_reference, image, text, image_mask, text_mask)
    result = grads_of(tiled(2, 3), image, text, image_mask, text_mask)
    assert_same(result, expected)
    split = grads_of(naive_reference, image, text, image_mask, text_mask)  # amax: ties share the gradient
    assert not torch.allclose(result[2][0], split[2][0])  # so the test does exercise ties


def test_batch_size_one_and_no_masks():
    image, text, _, _ = random_case(1, 1, 3, 4, 5, seed=3)
    ones_image, ones_text = torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)
    expected = grads_of(loop_reference, image, text, ones_image, ones_text)
    result = grads_of(lambda x, y, *_: token_wise_similarity(x, y), image, text, None, None)
    assert result[0].shape == (1, 1) and result[1].shape == (1, 1)
    assert_same(result, expected)


def test_matches_naive_form_fp32_many_tiles_and_wide_index():
    # 300 image tokens exercise the int16 index path; tiles of 3 x 5 leave ragged edges.
    image, text, image_mask, text_mask = random_case(7, 11, 300, 9, 16, seed=4, dtype=torch.float32)
    expected = grads_of(naive_reference, image, text, image_mask, text_mask)
    result = grads_of(tiled(3, 5), image, text, image_mask, text_mask)
    assert_same(result, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_fp32(dtype):
    image, text, image_mask, text_mask = random_case(4, 5, 6, 7, 32, seed=5, dtype=torch.float32)
    image_half, text_half = image.detach().to(dtype).requires_grad_(), text.detach().to(dtype).requires_grad_()
    i2t, t2i, grads = grads_of(token_wise_similarity, image_half, text_half, image_mask, text_mask)
    assert i2t.dtype == torch.float32 and t2i.dtype == torch.float32
    assert grads[0].dtype == dtype and grads[1].dtype == dtype
    # Same as fp32 on the rounded inputs: the accumulation itself lost nothing.
    image_up, text_up = image_half.detach().float().requires_grad_(), text_half.detach().float().requires_grad_()
    expected = grads_of(naive_reference, image_up, text_up, image_mask, text_mask)
    torch.testing.assert_close(i2t, expected[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(t2i, expected[1], rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, expected[2]):
        torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)  # only the final cast rounds
    i2t_half, _ = token_wise_similarity(image_half, text_half, image_mask, text_mask, accumulate_fp32=False)
    assert i2t_half.dtype == dtype


def loop_top_tokens(image, text, image_mask, text_mask, fraction):
    keep = torch.zeros_like(image_mask)
    for i in range(image.shape[0]):
        counted = [k for k in range(image.shape[1]) if image_mask[i, k]]
        relevance = {
            k: max(float(image[i, k] @ text[j, r]) for j in range(text.shape[0]) for r in range(text.shape[1]) if text_mask[j, r])
            for k in counted
        }
        chosen = sorted(counted, key=lambda k: -relevance[k])[: max(1, -(-int(fraction * 100) * len(counted) // 100))]
        keep[i, chosen] = True
    return keep


def test_top_image_token_fraction_keeps_most_text_like_tokens():
    image, text, image_mask, text_mask = random_case(3, 4, 12, 5, 8, seed=6)
    image_mask[2] = False
    image_mask[2, 3] = True  # one counted token: always kept
    keep = select_top_image_tokens(image, text, image_mask, text_mask, 0.25)
    assert torch.equal(keep, loop_top_tokens(image.detach(), text.detach(), image_mask, text_mask, 0.25))
    assert keep[2].sum() == 1 and keep[2, 3]
    expected = grads_of(loop_reference, image, text, keep, text_mask)
    result = grads_of(lambda *a: token_wise_similarity(*a, image_token_fraction=0.25), image, text, image_mask, text_mask)
    assert_same(result, expected)


def test_bad_inputs_give_clear_errors():
    image, text = torch.randn(2, 3, 8), torch.randn(2, 4, 6)
    with pytest.raises(ValueError, match="Embedding dims differ: image_embeds has dim 8, text_embeds has dim 6"):
        token_wise_similarity(image, text)
    with pytest.raises(ValueError, match=r"expects \(batch, tokens, dim\)"):
        token_wise_similarity(torch.randn(2, 8), torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match=r"text_mask has shape \(2, 3\) but text_embeds has \(batch, tokens\) = \(2, 4\)"):
        token_wise_similarity(image, torch.randn(2, 4, 8), text_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 1.5"):
        token_wise_similarity(image, torch.randn(2, 4, 8), image_token_fraction=1.5)
    with pytest.raises(ValueError, match="Tile sizes must be positive"):
        token_wise_similarity(image, torch.randn(2, 4, 8), image_block_size=-1)
    with pytest.raises(ValueError, match="global_similarity expects"):
        global_similarity(torch.randn(2, 8), torch.randn(2, 6))


def test_global_similarity_is_dot_product():
    image, text = torch.randn(3, 4), torch.randn(5, 4)
    expected = torch.tensor([[float(sum(image[i, k] * text[j, k] for k in range(4))) for j in range(5)] for i in range(3)])
    torch.testing.assert_close(global_similarity(image, text), expected, rtol=1e-5, atol=1e-6)


def test_inference_path_equals_autograd_path_values():
    """Under no_grad (evaluation) the kernel takes maxima without indices; the scores must not change."""
    g = torch.Generator().manual_seed(3)
    image = F.normalize(torch.randn(5, 7, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(6, 4, 8, generator=g), dim=-1)
    image_mask = torch.rand(5, 7, generator=g) > 0.3
    text_mask = torch.arange(4)[None] < torch.tensor([[1], [4], [2], [3], [4], [2]])
    text_mask[2] = False  # an all-padding caption
    with torch.no_grad():
        fast = token_wise_similarity(image, text, image_mask, text_mask, image_block_size=2, text_block_size=4)
    slow = token_wise_similarity(image.requires_grad_(), text, image_mask, text_mask, image_block_size=2, text_block_size=4)
    assert slow[0].requires_grad and not fast[0].requires_grad
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


def official_zero_padding_reference(image, text, image_mask, text_mask):
    """The released code's image->text rule, naively and differentiably: padded text rows are zero
    vectors and every image token's max runs over all positions (a padded position offers 0)."""
    has_padding = ~text_mask.all(-1)
    sim = torch.einsum("ikd,jrd->ijkr", image, text)
    real = sim.masked_fill(~text_mask[None, :, None, :], float("-inf")).amax(-1)
    floor = torch.where(has_padding, 0.0, float("-inf")).to(sim.dtype)[None, :, None]
    best = torch.maximum(real, floor)
    best = torch.where(torch.isfinite(best), best, torch.zeros_like(best)) * image_mask[:, None, :].to(sim.dtype)
    i2t = best.sum(-1) / image_mask.sum(-1).clamp(min=1).to(sim.dtype)[:, None]
    return i2t, naive_reference(image, text, image_mask, text_mask)[1]


@pytest.mark.parametrize("blocks", [(2, 3), (1, 1), (None, None)])
def test_zero_padding_rule_values_and_gradients_match_the_naive_form(blocks):
    # Tokens pointing away from each other make many image tokens see only negative real similarities,
    # so the 0 of a padded position wins often and the rule's gradient path (no token gets it) is used.
    image, text, image_mask, text_mask = random_case(5, 6, 6, 7, 8, seed=4)
    with torch.no_grad():
        text[:, :, 0] = -text[:, :, 0].abs() - 1.0
        image[:, :, 0] = image[:, :, 0].abs() + 1.0
    text_mask[0] = True  # a text that fills the whole layout: no padding, no 0 on offer
    padded = ~text_mask.all(-1)

    def ours(image, text, image_mask, text_mask):
        return token_wise_similarity(image, text, image_mask, text_mask, zero_padded_texts=padded,
                                     image_block_size=blocks[0], text_block_size=blocks[1])

    expected = grads_of(official_zero_padding_reference, image, text, image_mask, text_mask)
    result = grads_of(ours, image, text, image_mask, text_mask)
    assert_same(result, expected)
    paper = token_wise_similarity(image.detach(), text.detach(), image_mask, text_mask)[0]
    floor_won = (paper - result[0]).abs() > 1e-6
    assert floor_won[:, 1:].any() and not floor_won[:, 0].any()  # the unpadded text never gets the 0
    assert (result[0][:, 1:] >= -1e-12).all()  # a padded text's image->text score never falls below 0
    with pytest.raises(ValueError, match="zero_padded_texts has shape \\(2,\\) but there are 6 texts"):
        token_wise_similarity(image, text, image_mask, text_mask, zero_padded_texts=padded[:2])
