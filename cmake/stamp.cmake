# Writes OUT = SHA-256 of every kernel source in KDIR (*.cu, *.cuh) concatenated in name order:
# the digest gpugrad.backends.kernels.source_digest() computes, so the loader can tell whether a
# fatbin was built from the sources beside it.
file(GLOB srcs ${KDIR}/*.cu ${KDIR}/*.cuh)
list(SORT srcs)
set(tmp ${OUT}.concat)
file(WRITE ${tmp} "")
foreach(f IN LISTS srcs)
  file(READ ${f} part)
  file(APPEND ${tmp} "${part}")
endforeach()
file(SHA256 ${tmp} digest)
file(REMOVE ${tmp})
file(WRITE ${OUT} "${digest}\n")
