"""The tools: the command line (``cli``: ``gpugrad train``, ``predict``, ``gradcheck``, ``bench``), the
benchmark workloads and peers (``bench``) and what they share in reading options (``options``)."""
