"""The one comparator: run an artifact on the bundle's golden inputs (or any real images) in its
own runtime with the settings a check needs, compare with a reference by the precision's gate,
return a report. Export, quantize, eval, validate, TensorRT engine gates and bench all use it.
numpy + runtimes only: no torch."""
