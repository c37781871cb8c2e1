"""Known kernel changes for the alert's tests, planted in a clone's source (the production kernel has no
knob for them): ``plant_slowdown``, the Triton forward gathers ``share`` of its tables a second time and
throws the sum away; ``plant_launch``, its host function launches one extra tiny kernel per call (an
allocation and a fill) whose result nothing reads: more launches, bytes and ops per call, next to no GPU time.

    python -m tests.plant mfbench/kernels/lookup.py 0.2
    python -m tests.plant mfbench/kernels/lookup.py launch
"""

import sys
from pathlib import Path

# The forward kernel's store of its result; the waste goes just before it.
ANCHOR = "    out = y_ptr + offs_s[:, None].to(tl.int64) * stride_ys + offs_h[None, :]\n"
WASTE = """    waste = tl.zeros((BLOCK_S, BLOCK_H), dtype=tl.float32)
    for k in range(0, (K * {percent} + 99) // 100):  # ceil(K * share) tables
        waste += _gather_rows(idx_ptr, p_ptr, t_ptr, S, H, K, k, offs_s, offs_h, mask_s, mask_h, ROWS)
    acc += waste * 0.0  # not folded away for floats: the gathers stay
"""


# lookup_forward's output buffer; the extra launch goes just after it, before any choice of kernel, so every
# forward (the gather kernel's and the decode kernel's) makes it.
LAUNCH_ANCHOR = "    y = new_buffer((s, h), x) if out is None else out\n"
LAUNCH = "    torch.empty(1, device=x.device, dtype=torch.float32).zero_()  # planted: one extra launch per call\n"


def plant_launch(source: str) -> str:
    if source.count(LAUNCH_ANCHOR) != 1:
        raise ValueError("lookup_forward's output buffer moved; update tests/plant.py")
    return source.replace(LAUNCH_ANCHOR, LAUNCH_ANCHOR + LAUNCH)


def plant_slowdown(source: str, share: float) -> str:
    if source.count(ANCHOR) != 1:
        raise ValueError("the forward kernel's store moved; update tests/plant.py")
    return source.replace(ANCHOR, WASTE.format(percent=round(share * 100)) + ANCHOR)


if __name__ == "__main__":
    path = Path(sys.argv[1])
    text = path.read_text()
    path.write_text(plant_launch(text) if sys.argv[2] == "launch" else plant_slowdown(text, float(sys.argv[2])))
