"""cocotb testbenches, run inside the simulator by :func:`hoarfrost.sim.verilator.cocotb_run`.

Each module reads its stimulus and expected results from a ``.npz`` file named in the
``HOARFROST_VECTORS`` environment variable, written by the pytest test that launches it.
"""
