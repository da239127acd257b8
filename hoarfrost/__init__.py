"""hoarfrost: trained ONNX networks to bit-exact, synthesizable DNN accelerators.

The subpackages live in the repository's top-level folders:
``hoarfrost.gen`` (gen/), ``hoarfrost.hw`` (hw/), ``hoarfrost.sim`` (sim/) and
``hoarfrost.firmware`` (firmware/).
"""

__version__ = "0.1.0"
