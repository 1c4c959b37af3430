"""Weight-only quantization of the language model's linears: W4A16 / W8A16.

``types.QuantizedWeight`` is the one layout the kernels read; ``formats`` converts GPTQ and AWQ
checkpoint tensors to and from it; ``reference`` dequantizes in torch (the oracle);
``gptq`` and ``awq`` are the quantization algorithms, ``calibration`` their activation statistics;
``triton_gemm`` is the GPU kernel; ``linear.QuantLinear`` the layer; ``quantize`` the built-in
quantizer (``python -m valora.quantize``).
"""
