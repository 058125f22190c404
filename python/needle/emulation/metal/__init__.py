"""The MSL emulation: needle's .metal kernels compiled as C++ and run on the CPU.

See tests/README.md."""
