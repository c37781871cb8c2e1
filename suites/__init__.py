"""The asv suites: thin declarations of what to track, over the pipeline's machinery in
``mfbench.shells.suite``. asv's benchmark processes start here, so here they choose the Triton cache
every mfbench process shares (``mfbench.config.triton_cache_env``)."""

import os

from mfbench.config import triton_cache_env

os.environ.update(triton_cache_env())
