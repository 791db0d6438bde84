import os

# Headless MuJoCo rendering for DMC pixel tests (Mesa llvmpipe on CPU-only machines).
os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

# Tests run in parallel workers (pytest -n 2) on 2 cores; one intra-op thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
