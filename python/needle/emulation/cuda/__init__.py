"""The CUDA emulation: needle's CUDA host table and kernels compiled as C++ and run on the CPU.

See harness.py and cuda_emulation.h."""
