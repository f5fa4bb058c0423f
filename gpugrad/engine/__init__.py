"""The lecture's engine: the computational graph and its generic forward and backward passes
(``graph``), one vector-Jacobian product per operation (``ops``), the gradient check (``gradient_check``),
the fused mini-batch losses (``fused``), the compiled training step (``compiled``), their input checks
(``_validation``) and sparse inputs (``sparse``)."""
