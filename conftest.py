"""Root pytest configuration (tests/ and bench/).

Without a GPU the Numba CUDA kernels run on Numba's simulator: NUMBA_ENABLE_CUDASIM=1 is set
here, before numba.cuda or sharenet_fast.config is imported (config shrinks the launch geometry
under the simulator). Set NUMBA_ENABLE_CUDASIM yourself to override either way.
"""
import os

if "NUMBA_ENABLE_CUDASIM" not in os.environ and not os.path.exists("/dev/nvidiactl"):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
