"""The CUDA side of the CuPy backend: compiling and loading ``kernels/*.cu``
(:mod:`.compile`), the launchers with their checks (:class:`.launchers.CudaOps`), GEMM
through cuBLAS (:class:`.blas.CublasGemm`), the outer-product choice (:mod:`.outer`) and
CUDA Graph capture of a whole step (:class:`.graph.GraphedStep`).

Nothing here imports CuPy or :mod:`rnn_gpu.backend`: every object is handed its array
module, kernel loader and cuBLAS binding; :func:`rnn_gpu.backend.get_backend` assembles
them.
"""
