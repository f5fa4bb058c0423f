"""Training: the models, optimisers and schedules, the mini-batch trainer, data sets, saving and reading
files, plots, and SGD on sparse inputs (``sparse_sgd``)."""
