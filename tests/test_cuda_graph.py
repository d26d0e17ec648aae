"""fastgan.GraphedStep's argument checks (everywhere) and its warm-up / capture / replay order
(GPU only; the captured training step itself is checked in test_mlp_step_capture.py)."""
from __future__ import annotations

import pytest
import torch

import fastgan


@pytest.mark.parametrize("kwargs, match", [
    (dict(train_step=None), "train_step must be callable"),
    (dict(phases=0), "phases must be a positive integer"),
    (dict(phases=2.0), "phases must be a positive integer"),
    (dict(phases=4, warmup=3), r"warmup must be an integer >= phases \(4\)"),
    (dict(warmup=-1), "warmup must be an integer >= phases"),
])
def test_bad_arguments_are_named(kwargs, match):
    args = {"train_step": lambda: None, **kwargs}
    with pytest.raises((TypeError, ValueError), match=match):
        fastgan.GraphedStep(args.pop("train_step"), **args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a CUDA device")
def test_without_cuda_it_says_so():
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        fastgan.GraphedStep(lambda: None)


@pytest.mark.gpu
def test_warm_up_then_one_replay_per_call_cycling_phases():
    """Eager calls during warm-up, recording runs nothing, then replays cycle through the phases'
    graphs: a step that adds its phase's number to a device counter shows the order."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    counter = torch.zeros((), device="cuda")
    calls = {"n": 0}

    def step():
        counter.add_(1 + calls["n"] % 3)  # phase k adds k + 1
        calls["n"] += 1

    replay = fastgan.GraphedStep(step, phases=3, warmup=3)
    for _ in range(3):
        replay()
    torch.cuda.synchronize()
    assert counter.item() == 1 + 2 + 3 and not replay.captured
    replay.capture()
    torch.cuda.synchronize()
    assert counter.item() == 6 and len(replay.graphs) == 3  # recording ran nothing
    for _ in range(4):
        replay()
    torch.cuda.synchronize()
    assert counter.item() == 6 + (1 + 2 + 3) + 1
