"""CAV-MAE's contrastive loss against the paper's formula, across two real gloo processes against
one process, and the retrieval recalls on cases with known ranks."""

import math
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modalmae.model import contrastive
from modalmae.model.contrastive import audio_visual_retrieval, chance_recall, contrastive_accuracy, info_nce, retrieval_recall

TAU = 0.05


def reference_losses(a, b, tau=TAU):
    """(a2v, v2a) by the paper's formula in float64 loops: -1/B sum_i log(exp(s_ii/tau) / sum_j exp(s_ij/tau))
    with s the cosine similarity; a2v normalises over the videos of one audio row, v2a over the
    audios of one video column."""
    def cos(x, y):
        return sum(p * q for p, q in zip(x, y)) / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))

    n = len(a)
    s = [[cos(a[i], b[j]) / tau for j in range(n)] for i in range(n)]

    def lse(values):
        m = max(values)
        return m + math.log(sum(math.exp(v - m) for v in values))

    a2v = -sum(s[i][i] - lse([s[i][j] for j in range(n)]) for i in range(n)) / n
    v2a = -sum(s[j][j] - lse([s[i][j] for i in range(n)]) for j in range(n)) / n
    return a2v, v2a


def test_info_nce_matches_the_formula_and_cav_mae_direction():
    a = [[1.0, 0.2, 0.0], [0.3, 1.0, -0.5], [0.9, 0.1, 0.4]]
    b = [[0.8, -0.1, 0.3], [0.0, 1.0, 0.0], [0.5, 0.5, 0.5]]
    a2v, v2a = reference_losses(a, b)
    assert abs(a2v - v2a) > 0.1  # the example tells the two directions apart
    at, bt = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    # CAV-MAE's default: one direction, log_softmax over dim 0 of audio @ video.T (video queries)
    assert info_nce(at, bt).item() == pytest.approx(v2a, rel=1e-12)
    assert info_nce(at, bt, bidirectional=True).item() == pytest.approx((a2v + v2a) / 2, rel=1e-12)
    assert info_nce(at, bt, temperature=0.5).item() == pytest.approx(reference_losses(a, b, 0.5)[1], rel=1e-12)
    # cosine: the scale of the features does not matter
    assert info_nce(3 * at, bt / 7).item() == pytest.approx(v2a, rel=1e-12)


def test_aligned_features_beat_shuffled_ones():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 32, generator=g)
    b = a + 0.1 * torch.randn(16, 32, generator=g)
    shuffled = b[torch.randperm(16, generator=g)]
    for bidirectional in (False, True):
        assert info_nce(a, b, bidirectional=bidirectional) < info_nce(a, shuffled, bidirectional=bidirectional)
    assert contrastive_accuracy(a, b).item() == 1.0
    assert contrastive_accuracy(a, b, bidirectional=True).item() == 1.0
    assert contrastive_accuracy(a, shuffled).item() < 0.5


def unit(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_recall_on_known_ranks():
    keys = torch.tensor([unit(0), unit(90), unit(180), unit(270)])
    # ranks of the match: q0 at 0 deg -> 0; q1 at 10 -> 1 (k0 closer); q2 at 10 -> 3 (k2 is the farthest); q3 at 260 -> 0
    queries = torch.tensor([unit(0), unit(10), unit(10), unit(260)])
    assert retrieval_recall(queries, keys, ks=(1, 2, 3, 4, 10)) == {1: 0.5, 2: 0.75, 3: 0.75, 4: 1.0, 10: 1.0}
    assert retrieval_recall(5 * queries, keys / 2, ks=(1, 2)) == {1: 0.5, 2: 0.75}  # cosine
    # v2a (the keys ask): k0 -> rank 0; k1 (90 deg) is 80 deg from both q1 and q2, a tie that counts
    # against it -> 1; k2 (180 deg) is 170 deg from q1 and q2 and 100 from q3 -> 2; k3 -> 0
    assert audio_visual_retrieval(queries, keys, ks=(1, 2)) == {"a2v_r1": 0.5, "a2v_r2": 0.75, "v2a_r1": 0.5, "v2a_r2": 0.75}


def test_ties_count_against_the_query():
    keys = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    queries = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    # exact ties: q0 is as close to k1 as to its k0 -> rank 1; q1 is as close to k0 and k2 as to k1 -> 2; q2 -> 0
    assert retrieval_recall(queries, keys, ks=(1, 2, 3)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}
    collapsed = torch.ones(5, 4)
    assert retrieval_recall(collapsed, collapsed, ks=(1, 4, 5)) == {1: 0.0, 4: 0.0, 5: 1.0}


def test_identical_features_are_found_and_random_ones_at_chance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 16, generator=g)
    assert audio_visual_retrieval(x, x.clone()) == {f"{d}_r{k}": 1.0 for d in ("a2v", "v2a") for k in (1, 5, 10)}
    n, trials = 20, 200
    totals = {1: 0.0, 5: 0.0}
    for _ in range(trials):
        r = retrieval_recall(torch.randn(n, 16, generator=g), torch.randn(n, 16, generator=g), ks=(1, 5))
        totals = {k: totals[k] + r[k] / trials for k in totals}
    # 4000 queries each: std about 0.0035 at k=1 and 0.007 at k=5, the bounds are ~6 std
    assert abs(totals[1] - chance_recall(n, 1)) < 0.02
    assert abs(totals[5] - chance_recall(n, 5)) < 0.04
    assert chance_recall(20, 5) == 0.25 and chance_recall(3, 10) == 1.0


# --- two real CPU processes (gloo) ---

WORLD, LOCAL_B, DIM = 2, 4, 6


def global_batch():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(WORLD * LOCAL_B, DIM, generator=g, dtype=torch.float64)
    return a, a + 0.5 * torch.randn(WORLD * LOCAL_B, DIM, generator=g, dtype=torch.float64)


def plain_gather(x):
    """The regression to catch: a gather without gradients, with the usual patch of splicing the
    local rows back in so that at least they keep theirs."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def _worker(rank, port, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        a_all, b_all = global_batch()
        rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        result = {"acc": contrastive_accuracy(a_all[rows], b_all[rows])}
        for name in ("gather", "plain"):
            if name == "plain":
                contrastive.gather_with_grad = plain_gather  # this child process only
            for bidirectional in (False, True):
                a, b = a_all[rows].clone().requires_grad_(), b_all[rows].clone().requires_grad_()
                loss = info_nce(a, b, bidirectional=bidirectional)
                loss.backward()
                result[name, bidirectional] = (loss.detach(), a.grad, b.grad)
        torch.save(result, f"{out}/rank{rank}.pt")
        # Neither leaves while the other may still be talking to it: gloo aborts a process
        # ("terminate called without an active exception") whose peer closed the connection first.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_processes_give_the_single_process_gradients(tmp_path):
    context = mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 60
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.terminate()
            pytest.fail("the two gloo processes did not finish in 60 s")
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    a_all, b_all = global_batch()
    for bidirectional in (False, True):
        a, b = a_all.clone().requires_grad_(), b_all.clone().requires_grad_()
        loss = info_nce(a, b, bidirectional=bidirectional)
        loss.backward()
        # Each process's loss is the mean over its B queries against all W*B keys, so the
        # single-process loss (mean over W*B queries) is the mean of the W local losses:
        # L = (1/W) sum_r L_r. The gather's backward sums over processes, so process r's rows get
        # sum_s dL_s/dx_r = W * dL/dx_r. DDP then averages parameter gradients over processes
        # (x 1/W), which gives back exactly dL/dtheta of the single process.
        assert torch.stack([res["gather", bidirectional][0] for res in results]).mean().item() == pytest.approx(loss.item(), rel=1e-12)
        for rank, res in enumerate(results):
            rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
            _, grad_a, grad_b = res["gather", bidirectional]
            torch.testing.assert_close(grad_a, WORLD * a.grad[rows], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(grad_b, WORLD * b.grad[rows], rtol=1e-10, atol=1e-12)
            # the same losses, but the keys lose the gradients of the other processes' losses; the
            # video rows are gathered (as keys) only in the bidirectional loss
            plain_loss, plain_a, plain_b = res["plain", bidirectional]
            assert plain_loss.item() == pytest.approx(res["gather", bidirectional][0].item(), rel=1e-12)
            assert not torch.allclose(plain_a, grad_a, rtol=1e-3, atol=1e-6)
            assert torch.allclose(plain_b, grad_b, rtol=1e-3, atol=1e-6) != bidirectional
    # accuracy over every process's keys: the two local fractions average to the single-process one
    assert (results[0]["acc"] + results[1]["acc"]).item() / 2 == pytest.approx(contrastive_accuracy(a_all, b_all).item())


@pytest.mark.parametrize("bidirectional", [False, True])
def test_pairs_marked_invalid_are_neither_queries_nor_keys(bidirectional):
    """A clip without sound: the loss over the valid pairs alone, finite gradients everywhere."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([True, False, True, True, False, True])
    loss = info_nce(a, b, valid=valid, bidirectional=bidirectional)
    subset = info_nce(a[valid].detach(), b[valid].detach(), bidirectional=bidirectional)
    assert loss.item() == pytest.approx(subset.item(), rel=1e-9)
    loss.backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    assert a.grad[~valid].abs().max() < 1e-6 and b.grad[~valid].abs().max() < 1e-6  # absent pairs take no part
    none = info_nce(a, b, valid=torch.zeros(6, dtype=torch.bool), bidirectional=bidirectional)
    assert none.item() == 0.0
