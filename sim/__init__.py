"""Integer golden model, Verilator runner and cocotb testbenches."""
