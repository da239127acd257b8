# The two commands of README.md. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo bitstream test test-fast clean

$(STAMP): pyproject.toml
	@command -v g++ >/dev/null || { echo "make: g++ is needed (Verilator compiles C++)"; exit 2; }
	@command -v perl >/dev/null || { echo "make: perl is needed (Verilator is a perl script)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

EX := examples
DIGITS := --inputs $(EX)/digits_test_x.npy --labels $(EX)/digits_test_y.npy

# The main job on the bundled example: look at the CNN, measure its float accuracy, quantize it
# (8 and 4-bit weights) and run the integer golden model against onnxruntime on the test split;
# then compile the CNN for the ULX3S configuration (8x8 array), run 100 test images through the
# accelerator's RTL in Verilator (every output checked against the golden model), build the
# ULX3S bitstream (yosys + nextpnr from PyPI's YoWASP: about 20 minutes on 2 cores) and write
# the HTML report with the simulation's and the build's figures.
demo: $(STAMP)
	@mkdir -p out
	$(BIN)/hoarfrost inspect $(EX)/digits_cnn.onnx
	$(BIN)/hoarfrost predict $(EX)/digits_cnn.onnx $(DIGITS)
	$(BIN)/hoarfrost quantize $(EX)/digits_cnn.onnx --calib $(EX)/digits_calib.npy -o out/digits_cnn_q8.onnx
	$(BIN)/hoarfrost predict out/digits_cnn_q8.onnx $(DIGITS) --check-onnxruntime
	$(BIN)/hoarfrost quantize $(EX)/digits_cnn.onnx --calib $(EX)/digits_calib.npy --weight-bits 4 -o out/digits_cnn_q4.onnx
	$(BIN)/hoarfrost predict out/digits_cnn_q4.onnx $(DIGITS) --check-onnxruntime
	$(BIN)/hoarfrost inspect $(EX)/digits_mlp.onnx
	$(BIN)/hoarfrost predict $(EX)/digits_mlp.onnx $(DIGITS) --calib $(EX)/digits_calib.npy --check-onnxruntime
	$(BIN)/hoarfrost compile $(EX)/digits_cnn.onnx --calib $(EX)/digits_calib.npy --config ulx3s-85f -o out/digits_cnn_hw --force
	$(BIN)/hoarfrost sim out/digits_cnn_hw $(DIGITS) --limit 100
	$(BIN)/hoarfrost build out/digits_cnn_hw --board ulx3s-85f
	$(BIN)/hoarfrost report out/digits_cnn_hw

# Only the ULX3S bitstream of the demo's compile (again), e.g. with another --seed.
bitstream: $(STAMP)
	@test -f out/digits_cnn_hw/manifest.json || $(MAKE) demo
	$(BIN)/hoarfrost build out/digits_cnn_hw --board ulx3s-85f
	$(BIN)/hoarfrost report out/digits_cnn_hw

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m "not cosim"

clean:
	rm -rf $(VENV) .cache build out *.egg-info
