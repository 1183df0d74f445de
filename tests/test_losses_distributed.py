"""ContrastiveLoss across two real gloo processes equals one process on the concatenated batch."""

import socket

import pytest
import torch
import torch.nn.functional as F

from wukong_hf import SimilarityRule, WukongImageFeatures, WukongTextFeatures
from wukong_hf.losses import ContrastiveLoss

WORLD, LOCAL_BATCH, DIM_IN, DIM = 2, 3, 6, 5
# (kind, token-wise padding rule): the paper's rules and the released code's zero padding.
RULES = {"global": ("global", "ignore"), "token_wise": ("token_wise", "ignore"), "token_wise_zero": ("token_wise", "zero")}
CASES = [(similarity, layout) for similarity in RULES for layout in ("local", "lit")]


def global_batch():
    """Raw inputs, masks and the linear layers before the features, identical on every process."""
    g = torch.Generator().manual_seed(0)
    batch = WORLD * LOCAL_BATCH
    data = {
        "image_raw": torch.randn(batch, 4, DIM_IN, generator=g, dtype=torch.float64),
        "text_raw": torch.randn(batch, 5, DIM_IN, generator=g, dtype=torch.float64),
        "image_mask": torch.rand(batch, 4, generator=g) > 0.3,
        "text_mask": torch.arange(5)[None] < torch.randint(1, 6, (batch,), generator=g)[:, None],
        "image_proj": torch.randn(DIM, DIM_IN, generator=g, dtype=torch.float64),
        "text_proj": torch.randn(DIM, DIM_IN, generator=g, dtype=torch.float64),
    }
    data["text_mask"][4] = False  # an all-padding caption on the second process
    return data


def loss_and_grads(similarity, layout, rows):
    """Loss and gradients (raw inputs, projections, scale) for the batch rows `rows`."""
    data = global_batch()
    image_raw = data["image_raw"][rows].clone().requires_grad_()
    text_raw = data["text_raw"][rows].clone().requires_grad_()
    image_proj, text_proj = data["image_proj"].requires_grad_(), data["text_proj"].requires_grad_()
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)

    def tokens_of(raw, proj):
        tokens = F.normalize(raw @ proj.t(), dim=-1)
        return F.normalize(tokens.mean(1), dim=-1), tokens

    image = WukongImageFeatures(*tokens_of(image_raw, image_proj), data["image_mask"][rows])
    text_mask = data["text_mask"][rows]
    # has_padding: texts shorter than the 5 positions (the zero rule lets their padding offer 0)
    text = WukongTextFeatures(*tokens_of(text_raw, text_proj), text_mask, has_padding=text_mask.sum(-1) < 5)
    loss = ContrastiveLoss(SimilarityRule(*RULES[similarity]), layout, block_size=2)(image, text, scale)
    loss.backward()
    grads = [image_raw.grad, text_raw.grad, image_proj.grad, text_proj.grad, scale.grad]
    return loss.detach(), grads


def worker(rank, port, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        results = {}
        for similarity, layout in CASES:
            loss, grads = loss_and_grads(similarity, layout, rows)
            # What DDP does: average the parameter gradients (here also the loss, for the check).
            averaged = [loss.clone(), grads[2], grads[3], grads[4]]
            for tensor in averaged:
                torch.distributed.all_reduce(tensor)
                tensor /= WORLD
            results[f"{similarity}-{layout}"] = [grads[0], grads[1]] + averaged
        try:
            ContrastiveLoss(SimilarityRule("global"))(
                WukongImageFeatures(embeds=torch.randn(2 + rank, 4)), WukongTextFeatures(embeds=torch.randn(2 + rank, 4)),
                torch.tensor(1.0),
            )
            results["error"] = "no error"
        except ValueError as error:
            results["error"] = str(error)
        torch.save({k: v for k, v in results.items() if k != "error"}, f"{out_dir}/rank{rank}.pt")
        with open(f"{out_dir}/rank{rank}.txt", "w") as handle:
            handle.write(results["error"])
    finally:
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.spawn(worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=True)
    results = [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]
    errors = [(out_dir / f"rank{rank}.txt").read_text() for rank in range(WORLD)]
    return results, errors


@pytest.mark.parametrize("similarity,layout", CASES)
def test_two_processes_equal_one_process_on_concatenated_batch(two_process_results, similarity, layout):
    results, _ = two_process_results
    loss, grads = loss_and_grads(similarity, layout, slice(None))
    for rank, result in enumerate(results):
        image_grad, text_grad, rank_loss, image_proj_grad, text_proj_grad, scale_grad = result[f"{similarity}-{layout}"]
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        torch.testing.assert_close(rank_loss, loss)
        # Feature gradients on a process are W times the one-process ones: DDP divides by W later.
        torch.testing.assert_close(image_grad / WORLD, grads[0][rows])
        torch.testing.assert_close(text_grad / WORLD, grads[1][rows])
        torch.testing.assert_close(image_proj_grad, grads[2])
        torch.testing.assert_close(text_proj_grad, grads[3])
        torch.testing.assert_close(scale_grad, grads[4])
    assert grads[2].abs().sum() > 0 and grads[4].abs() > 0  # the check is not vacuous


def test_unequal_local_batches_give_clear_error(two_process_results):
    _, errors = two_process_results
    for message in errors:
        assert "Every process must score the same local batch size, got [2, 3]" in message
