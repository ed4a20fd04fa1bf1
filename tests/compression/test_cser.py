"""The CSER family in one process: the invariants after every phase, the special cases, blocks and errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from netagg.host_agent.compression import cser as C  # noqa: E402

pytestmark = pytest.mark.unit

WORKERS = 4


def make_workers(method: C.Method, workers: int = WORKERS) -> tuple[list[torch.nn.Module], list[C.CSERWorker]]:
    models = []
    for _ in range(workers):
        torch.manual_seed(0)
        models.append(torch.nn.Sequential(torch.nn.Linear(6, 20), torch.nn.Tanh(), torch.nn.Linear(20, 3)))
    return models, [C.CSERWorker(list(m.parameters()), method, lr=0.1, seed=3) for m in models]


def step(models: list[torch.nn.Module], workers: list[C.CSERWorker], t: int) -> list[C.Phase]:
    for rank, model in enumerate(models):
        g = torch.Generator().manual_seed(100 * t + rank)
        model.zero_grad()
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        torch.nn.functional.cross_entropy(model(x), y).backward()
    phases = [w.local_step() for w in workers][0]
    C.simulate_step(workers, phases)
    return phases


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def on_blocks(tensors: list[torch.Tensor], blocks: list[C.Block]) -> torch.Tensor:
    return torch.cat([t.view(-1)[s] for t, b in zip(tensors, blocks, strict=True) for s in b.slices()])


METHODS = [C.cser(16, 4), C.cser_pl(16, 4), C.qsparse_local_sgd(16, 4), C.ef_sgd(16), C.local_sgd(4), C.full_sgd()]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_invariants_after_every_step(method: C.Method) -> None:
    models, workers = make_workers(method)
    drifted = False
    for t in range(12):
        phases = step(models, workers, t)
        sums = [flat([x + r for x, r in zip(w.x, w.r, strict=True)]) for w in workers]
        for s in sums[1:]:  # x_i + r_i is the same on every worker
            torch.testing.assert_close(s, sums[0], rtol=0, atol=1e-6)
        if C.Phase.MODEL in phases:
            blocks = workers[0].blocks(C.Phase.MODEL)
            for w in workers:
                assert w.blocks(C.Phase.MODEL) == blocks
                assert not on_blocks(w.r, blocks).any(), "a synchronized block keeps a residual"
                torch.testing.assert_close(on_blocks(w.x, blocks), on_blocks(workers[0].x, blocks), rtol=0, atol=1e-6)
        drifted |= not torch.equal(flat(workers[0].x), flat(workers[1].x))
    assert all(w.step == 12 for w in workers)
    # Only full SGD keeps the local models equal at every step (bit for bit).
    assert drifted == (method.name != "SGD"), method.name
    assert workers[0].compression_ratio == pytest.approx(method.nominal_ratio, rel=0.35)


def test_full_sgd_and_local_sgd_keep_no_residual() -> None:
    for method, period in ((C.full_sgd(), 1), (C.local_sgd(3), 3)):
        models, workers = make_workers(method)
        for t in range(6):
            step(models, workers, t)
            if (t + 1) % period == 0:
                for w in workers:
                    assert not flat(w.r).any(), method.name
                    assert torch.equal(flat(w.x), flat(workers[0].x)), method.name  # bit for bit


def test_error_feedback_takes_gradients_at_the_synchronized_model() -> None:
    # EF-SGD: every worker's parameters are the common model x_i + r_i after every step.
    models, workers = make_workers(C.ef_sgd(8))
    for t in range(5):
        step(models, workers, t)
        for m, w in zip(models, workers, strict=True):
            torch.testing.assert_close(flat(list(m.parameters())), flat(workers[0].x) + flat(workers[0].r),
                                       rtol=0, atol=1e-6)  # fmt: skip
            assert not torch.equal(flat(w.x), flat(list(m.parameters())))
    # QSparse-local-SGD: right after a model phase the local iterates are equal; between model phases they drift.
    models, workers = make_workers(C.qsparse_local_sgd(8, 3))
    for t in range(6):
        step(models, workers, t)
        params = [flat(list(m.parameters())) for m in models]
        if (t + 1) % 3 == 0:
            torch.testing.assert_close(params[1], params[0], rtol=0, atol=1e-6)
        else:
            assert not torch.allclose(params[1], params[0])


def test_ef_sgd_at_ratio_one_is_full_sgd() -> None:
    runs = []
    for method in (C.ef_sgd(1), C.full_sgd()):
        models, workers = make_workers(method)
        for t in range(5):
            step(models, workers, t)
        runs.append(flat(list(models[0].parameters())))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=1e-6)


def test_blocks_are_shared_contiguous_and_cover_every_coordinate() -> None:
    sizes = [10, 3, 1000]
    first = C.choose_blocks(sizes, 0.25, seed=7, step=4, phase=C.Phase.MODEL)
    assert first == C.choose_blocks(sizes, 0.25, seed=7, step=4, phase=C.Phase.MODEL)
    assert first != C.choose_blocks(sizes, 0.25, seed=8, step=4, phase=C.Phase.MODEL)
    assert [b.length for b in first] == [2, 1, 250]  # round(0.25 * n), at least one element
    covered = np.zeros(10, int)
    for t in range(200):
        (block,) = C.choose_blocks([10], 0.3, seed=1, step=t, phase=C.Phase.GRADIENT)
        index = np.concatenate([np.arange(10)[s] for s in block.slices()])
        assert len(set(index.tolist())) == block.length == 3
        assert all((b - a) % 10 == 1 for a, b in zip(index, index[1:]))  # contiguous, wrapping around
        covered[index] += 1
    assert covered.min() > 30, covered  # every coordinate is picked about equally often


def test_ratios_of_the_presets() -> None:
    assert C.cser(64, 8).nominal_ratio == pytest.approx(64)
    assert C.cser_pl(256, 8).nominal_ratio == pytest.approx(256)
    assert C.qsparse_local_sgd(1024, 8).nominal_ratio == pytest.approx(1024)
    assert C.ef_sgd(16).nominal_ratio == pytest.approx(16)
    assert C.local_sgd(16).nominal_ratio == pytest.approx(16)
    assert C.full_sgd().nominal_ratio == 1


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: C.Method("m", 1.5, 0.0), "gradient_fraction must be in"),
        (lambda: C.Method("m", 0.0, 0.5, period=0), "period must be at least 1"),
        (lambda: C.Method("m", 0.1, 0.5, error_feedback=True), "synchronize the model only"),
        (lambda: C.qsparse_local_sgd(4, 8), "ratio 4 is below the period"),
        (lambda: C.cser(64, 8, gradient_share=1.0), "gradient_share must be in"),
    ],
)
def test_bad_configurations_are_refused(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


def test_a_mean_of_the_wrong_size_is_refused() -> None:
    models, workers = make_workers(C.cser_pl(4, 1), workers=1)
    models[0](torch.randn(2, 6)).sum().backward()
    (phase,) = workers[0].local_step()
    sent = workers[0].payload(phase)
    with pytest.raises(ValueError, match="mean has 1 elements, the model phase sent"):
        workers[0].apply_mean(phase, sent[:1])


def test_full_sgd_is_momentum_sgd_on_the_mean_gradient() -> None:
    models, workers = make_workers(C.full_sgd())
    reference = make_workers(C.full_sgd(), workers=1)[0][0]
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for t in range(4):
        step(models, workers, t)
        grads = []
        for rank in range(WORKERS):  # the same batches as step(), at the reference's parameters
            g = torch.Generator().manual_seed(100 * t + rank)
            reference.zero_grad()
            x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
            torch.nn.functional.cross_entropy(reference(x), y).backward()
            grads.append([p.grad.clone() for p in reference.parameters()])
        for p, *per_worker in zip(reference.parameters(), *grads, strict=True):
            p.grad = torch.stack(per_worker).mean(0)
        opt.step()
        torch.testing.assert_close(flat(list(models[0].parameters())), flat(list(reference.parameters())),
                                   rtol=0, atol=1e-6)  # fmt: skip


def test_local_sgd_averages_the_local_models() -> None:
    models, workers = make_workers(C.local_sgd(3))
    for t in range(3):
        for rank, model in enumerate(models):
            g = torch.Generator().manual_seed(100 * t + rank)
            model.zero_grad()
            x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
            torch.nn.functional.cross_entropy(model(x), y).backward()
        phases = [w.local_step() for w in workers][0]
        local = torch.stack([flat(w.x) for w in workers])
        C.simulate_step(workers, phases)
    assert phases == [C.Phase.MODEL]
    for model in models:
        torch.testing.assert_close(flat(list(model.parameters())), local.mean(0), rtol=0, atol=1e-6)
