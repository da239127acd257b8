"""Model to hardware: ONNX import, IR, quantizer, command line."""
