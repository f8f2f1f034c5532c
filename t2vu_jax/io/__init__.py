"""Weight and file I/O shared by every model: safetensors streaming, strict key-table transfer,
atomic writes, the eraser file format and the error types. Nothing here imports JAX at package import,
so the PyTorch-side eraser loader can use the format module on its own."""
