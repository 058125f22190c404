"""Stand-ins for PyObjC over the MSL emulation (needle.emulation.metal), for the tests of the
Metal and MPS host modules (test_metal_host.py)."""
