"""A known kernel slowdown for the alert's tests, planted in a clone's source (the production kernel has
no knob for it): the Triton forward gathers ``share`` of its tables a second time and throws the sum away.

    python -m tests.plant mfbench/kernels/lookup.py 0.2
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


def plant_slowdown(source: str, share: float) -> str:
    if source.count(ANCHOR) != 1:
        raise ValueError("the forward kernel's store moved; update tests/plant.py")
    return source.replace(ANCHOR, WASTE.format(percent=round(share * 100)) + ANCHOR)


if __name__ == "__main__":
    path = Path(sys.argv[1])
    path.write_text(plant_slowdown(path.read_text(), float(sys.argv[2])))
