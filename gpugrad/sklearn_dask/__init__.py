"""The scikit-learn and Dask layer: the drop-in estimators (``estimators``) and training on Dask arrays
(``distributed``). (Named so as not to shadow the ``sklearn`` and ``dask`` packages.)"""
